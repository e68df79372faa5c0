"""What tests/e2e and tests/deploy share.

require_tool / unavailable   the external tools the tests drive (promtool, prometheus,
                             systemd-analyze, kubectl, node, hadolint): a missing one skips the
                             test on a developer's machine and fails it under CI=true, where
                             `make tools` must have installed it
log_event(raw)               one line of the daemon's JSON log as a dict
MODEL_AWARE                  the metrics only watches with [watch.model] export
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path
from typing import NoReturn

import pytest

VENV_BIN = Path(sys.executable).parent  # the venv running the tests: its ckptwatch, python, hadolint


def unavailable(message: str) -> NoReturn:
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def require_tool(name: str, hint: str) -> str:
    """The path of `name` (PATH, then the test venv's bin); skip if missing, or fail under CI."""
    found = shutil.which(name) or (str(VENV_BIN / name) if (VENV_BIN / name).exists() else None)
    if found is None:
        unavailable(f"{name} not found ({hint})")
    return found


MODEL_AWARE = {
    "ckptwatch_functional_agreement_ratio",
    "ckptwatch_functional_output_max_abs_diff",
    "ckptwatch_restore_unmatched_objects",
}


def log_event(raw: bytes) -> dict:
    """A line of the daemon's JSON log; a line that is not a JSON object is {"event": None, "raw": text}."""
    text = raw.decode("utf-8", "replace").rstrip("\n")
    try:
        event = json.loads(text)
    except ValueError:
        event = None
    return event if isinstance(event, dict) else {"event": None, "raw": text}
