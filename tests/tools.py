"""External tools the tests drive (promtool, prometheus, systemd-analyze, kubectl, node, hadolint).

A missing tool skips the test on a developer's machine and fails it under CI=true, where
`make tools` must have installed it.
"""

from __future__ import annotations

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
