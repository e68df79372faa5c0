"""Run a reading command in a child interpreter so a crash in native code
(libhdf5 on a hostile file, TensorFlow's C++ reader during model-aware checks)
becomes a `fail` verdict instead of a dead CLI.

The parent starts `python -m ckptwatch <same args>` with CKPTWATCH_CHILD set and a
pipe on which the child announces each tensor before reading it. The child's
stdout/stderr go straight to the user. If the child is killed by a signal, the
parent answers in its place, naming the tensors that were being read.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from collections import deque

CHILD_ENV = "CKPTWATCH_CHILD"
PROGRESS_FD_ENV = "CKPTWATCH_PROGRESS_FD"
DISABLE_ENV = "CKPTWATCH_NO_ISOLATION"


def in_child() -> bool:
    return bool(os.environ.get(CHILD_ENV)) or bool(os.environ.get(DISABLE_ENV))


def progress_writer():
    """In the child: a callback announcing each tensor to the parent, or None."""
    fd = os.environ.get(PROGRESS_FD_ENV)
    if not fd:
        return None
    stream = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", errors="replace")

    def announce(name: str) -> None:
        with contextlib.suppress(OSError):
            stream.write(name.replace("\n", " ") + "\n")

    return announce


def run_in_child(argv: list[str], path: str, as_json: bool, threads: int) -> int:
    """Run the command in a child; return the exit code to use."""
    read_fd, write_fd = os.pipe()
    env = {**os.environ, CHILD_ENV: "1", PROGRESS_FD_ENV: str(write_fd)}
    child = subprocess.Popen([sys.executable, "-m", "ckptwatch", *argv], env=env, pass_fds=(write_fd,))
    os.close(write_fd)
    recent: deque[str] = deque(maxlen=max(1, threads))
    try:
        with os.fdopen(read_fd, encoding="utf-8", errors="replace") as progress:
            for line in progress:
                recent.append(line.rstrip("\n"))
        code = child.wait()
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        return 130
    if code >= 0:
        return code
    return _report_crash(path, -code, list(recent), as_json)


def _report_crash(path: str, signum: int, tensors: list[str], as_json: bool) -> int:
    from ckptwatch.verify.report import Finding, unverified_report  # only now: the parent stays light

    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    where = f" while reading {' or '.join(tensors)}" if tensors else " while opening the checkpoint"
    finding = Finding(
        "fail",
        "integrity.crash",
        f"the reader process was killed by {name}{where}: the file is malformed enough to crash native code",
        tensors[-1] if tensors else None,
    )
    report = unverified_report(os.path.abspath(path), finding)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from ckptwatch.verify.render import render_verify

        print(render_verify(report))
    return 1
