"""Run a reading command in a child interpreter so a crash in native code
(libhdf5 on a hostile file, TensorFlow's C++ reader during model-aware checks)
becomes a `fail` verdict instead of a dead CLI.

The parent starts `python -m ckptwatch <same args>` with CKPTWATCH_CHILD set and a
pipe on which the child announces each tensor before reading it. The child's
stdout/stderr go straight to the user. If the child is killed by a signal, the
parent answers in its place, naming the tensors that were being read. If it runs past
its time limit (--timeout, CKPTWATCH_TIMEOUT, DEFAULT_TIMEOUT: our limit, not the file's
fault), the parent kills it and answers `error` (exit 2) naming the phase it was in.

Commands that print no verdict (`diff`) get `report=False`: the parent then answers with the
one line on stderr alone (exit 2 past the limit, or when the child dies by a signal).
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import time
from collections import deque

CHILD_ENV = "CKPTWATCH_CHILD"
TIMEOUT_ENV = "CKPTWATCH_TIMEOUT"
DEFAULT_TIMEOUT = 3600.0  # seconds: a large checkpoint read from network storage fits
PHASE_MARK = "\x1e"  # a progress line starting with it names a phase, not a tensor
PROGRESS_FD_ENV = "CKPTWATCH_PROGRESS_FD"
DISABLE_ENV = "CKPTWATCH_NO_ISOLATION"


def in_child() -> bool:
    return bool(os.environ.get(CHILD_ENV)) or bool(os.environ.get(DISABLE_ENV))


_stream = None  # the child's end of the progress pipe, opened once


def _progress_stream():
    global _stream
    fd = os.environ.get(PROGRESS_FD_ENV)
    if _stream is None and fd:
        _stream = os.fdopen(int(fd), "w", buffering=1, encoding="utf-8", errors="replace")
    return _stream


def progress_writer():
    """In the child: a callback announcing each tensor to the parent, or None."""
    stream = _progress_stream()
    if stream is None:
        return None

    def announce(name: str) -> None:
        with contextlib.suppress(OSError):
            stream.write(name.replace("\n", " ") + "\n")

    return announce


def announce_phase(phase: str) -> None:
    """In the child: tell the parent what it does now ("running the model checks"), for the
    message of a time limit that runs out then."""
    stream = _progress_stream()
    if stream is not None:
        with contextlib.suppress(OSError):
            stream.write(PHASE_MARK + phase.replace("\n", " ") + "\n")


def time_limit(option: float | None) -> float | None:
    """Seconds the reading child may run: the option, else CKPTWATCH_TIMEOUT, else
    DEFAULT_TIMEOUT; 0 (or less) means no limit."""
    if option is None:
        env = os.environ.get(TIMEOUT_ENV, "").strip()
        try:
            option = float(env) if env else DEFAULT_TIMEOUT
        except ValueError:
            from ckptwatch.errors import UsageError

            raise UsageError(f"{TIMEOUT_ENV}={env!r}: not a number of seconds") from None
    return option if option > 0 else None


def run_in_child(
    argv: list[str], path: str, as_json: bool, threads: int, timeout: float | None = None, report: bool = True
) -> int:
    """Run the command in a child; return the exit code to use. Past `timeout` seconds the
    child is killed and the answer is an `error` verdict naming what it was doing (exit 2);
    without `report`, only the one line on stderr."""
    return _supervise([sys.executable, "-m", "ckptwatch", *argv], path, as_json, threads, timeout, report)


def _supervise(
    command: list[str], path: str, as_json: bool, threads: int, timeout: float | None, report: bool = True
) -> int:
    read_fd, write_fd = os.pipe()
    env = {**os.environ, CHILD_ENV: "1", PROGRESS_FD_ENV: str(write_fd)}
    child = subprocess.Popen(command, env=env, pass_fds=(write_fd,))
    os.close(write_fd)
    deadline = None if timeout is None else time.monotonic() + timeout
    recent: deque[str] = deque(maxlen=max(1, threads))
    phase = ""
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as progress:
            pending = b""
            while True:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    raise subprocess.TimeoutExpired(command, timeout or 0)
                if not select.select([progress], [], [], left)[0]:
                    continue
                data = os.read(progress.fileno(), 1 << 16)
                if not data:
                    break
                *lines, pending = (pending + data).split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace")
                    if line.startswith(PHASE_MARK):
                        phase = line[len(PHASE_MARK) :]
                    else:
                        phase = ""
                        recent.append(line)
        code = child.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()
        _erase_progress()
        if not phase:
            phase = f"reading {' or '.join(recent)}" if recent else "opening the checkpoint"
        return _report_timeout(path, timeout or 0, phase, recent[-1] if recent else None, as_json, report)
    except KeyboardInterrupt:
        child.terminate()
        child.wait()
        return 130
    if code >= 0:
        return code
    _erase_progress()
    if not report:
        return _report_error(f"{path}: {_crash_message(-code, list(recent))}", as_json)
    return _report_crash(path, -code, list(recent), as_json)


def _report_timeout(
    path: str, seconds: float, phase: str, tensor: str | None, as_json: bool, report: bool = True
) -> int:
    """Our limit, not the file's fault: verdict `error`, exit 2, and the one line on stderr."""
    message = f"timed out after {seconds:g} s while {phase}"
    if report:
        from ckptwatch.verify.report import Finding, unverified_report

        finding = Finding("fail", "integrity.timeout", message, tensor if phase.startswith("reading") else None)
        _print_report(unverified_report(os.path.abspath(path), finding, verdict="error"), as_json)
        sys.stdout.flush()
        as_json = False  # the report is the JSON on stdout
    return _report_error(f"{path}: {message} (--timeout or {TIMEOUT_ENV} raises the limit)", as_json)


def _report_error(message: str, as_json: bool) -> int:
    """Exit 2 with one line on stderr, and with --json the error as a JSON object on stdout."""
    if as_json:
        print(json.dumps({"schema": "ckptwatch.error/v1", "error": message, "exit": 2}, indent=2))
        sys.stdout.flush()
    print(f"ckptwatch: error: {message}", file=sys.stderr)
    return 2


def _erase_progress() -> None:
    """The child died or was killed with its progress bar on the terminal: erase that line."""
    from ckptwatch.termui import is_tty

    if is_tty(sys.stderr):
        sys.stderr.write("\r\x1b[2K")
        sys.stderr.flush()


def _print_report(report, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        from ckptwatch.termui import color_enabled, colorize
        from ckptwatch.verify.render import render_verify

        text = render_verify(report)
        print(colorize(text) if color_enabled(sys.stdout) else text)


def _crash_message(signum: int, tensors: list[str]) -> str:
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    where = f" while reading {' or '.join(tensors)}" if tensors else " while opening the checkpoint"
    return f"the reader process was killed by {name}{where}: the file is malformed enough to crash native code"


def _report_crash(path: str, signum: int, tensors: list[str], as_json: bool) -> int:
    from ckptwatch.verify.report import Finding, unverified_report  # only now: the parent stays light

    finding = Finding("fail", "integrity.crash", _crash_message(signum, tensors), tensors[-1] if tensors else None)
    _print_report(unverified_report(os.path.abspath(path), finding), as_json)
    return 1
