"""What tests/e2e and tests/deploy share.

require_tool / unavailable   the external tools the tests drive (promtool, prometheus,
                             systemd-analyze, kubectl, node, hadolint): a missing one skips the
                             test on a developer's machine and fails it under CI=true, where
                             `make tools` must have installed it
log_event(raw)               one line of the daemon's JSON log as a dict
MODEL_AWARE                  the metrics only watches with [watch.model] export
wait_until(predicate, ...)   poll until something is true (or fail saying what was awaited)
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn, TypeVar

import pytest

T = TypeVar("T")

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


def wait_until(
    predicate: Callable[[], T],
    timeout: float = 30.0,
    what: str = "condition",
    *,
    interval: float = 0.05,
    give_up: Callable[[], str | None] | None = None,
    context: Callable[[], str] | None = None,
) -> T:
    """Call `predicate` every `interval` seconds until it returns something truthy; return that.

    AssertionError "<what>: not true after <timeout> s" when time is up, or "<what>: <reason>"
    as soon as `give_up()` returns a reason (the process being waited on exited); `context()`
    (a log's tail, what was seen) is appended to the message."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        reason = give_up() if give_up is not None else None
        if reason is None and time.monotonic() > deadline:
            reason = f"not true after {timeout} s"
        if reason is not None:
            extra = context() if context is not None else ""
            raise AssertionError(f"{what}: {reason}" + (f"; {extra}" if extra else ""))
        time.sleep(interval)


def flip_bits(path: str | Path, offset: int, mask: int = 0x01) -> None:
    """XOR one byte of a file in place: the bit flip a bad disk or a bad copy makes."""
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def child_reading_a_shard(parent_pid: int, read_bytes: int = 4 << 20):
    """The child process of `parent_pid` that is reading a checkpoint data shard (the CLI's
    isolated reader), or None yet: it has the shard open and has read `read_bytes` more since
    (readers open every shard at the start, before the first tensor is announced)."""
    import psutil

    for child in psutil.Process(parent_pid).children():
        try:
            if not any(".data-" in f.path for f in child.open_files()):
                continue
            start = child.io_counters().read_chars
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                if child.io_counters().read_chars - start >= read_bytes:
                    return child
                time.sleep(0.001)
        except psutil.Error:
            pass
    return None


def save_scaler_model(tf, path: str | Path) -> str:
    """A tiny SavedModel (x @ w + b, seeded weights, one serving signature) written to `path`."""

    class Scaler(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([4, 3], seed=[6, 0]))
            self.b = tf.Variable(tf.random.stateless_normal([3], seed=[6, 1]))

        @tf.function(input_signature=[tf.TensorSpec([None, 4], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w) + self.b

    tf.saved_model.save(Scaler(), str(path))
    return str(path)


def skip_unless_namespaces(namespace_cmd: list[str], probe: str, what: str, tools: tuple[str, ...] = ()) -> None:
    """Skip the test unless this machine lets root run `probe` (a shell line) in new namespaces
    (`namespace_cmd`, an `unshare ... sh -c` prefix): `what` says what the probe does."""
    import subprocess

    if os.geteuid() != 0:
        pytest.skip(f"needs root to {what} in a new namespace")
    for tool in ("unshare", *tools):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} (util-linux) is not installed")
    done = subprocess.run([*namespace_cmd, probe], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot {what} here: {done.stderr.strip()}")
