"""Deployment artifacts (Dockerfile, systemd units, Kubernetes manifests) checked with real tools.

require_tool(name, hint)  the path of an external tool; skip when it is missing, fail under CI=true
Daemon                    `ckptwatch watch` started from an artifact's own command line (ENTRYPOINT,
                          ExecStart) and environment: JSON log lines collected, wait_for(event),
                          stop(signal) -> exit code
daemons                   fixture: start(argv, env, cwd) -> a Daemon; every one is killed at teardown
write_config(...)         a small valid TOML config (CPU worker, loopback on a free port)
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.tools import VENV_BIN, log_event, require_tool

ROOT = Path(__file__).resolve().parents[2]
__all__ = ["ROOT", "VENV_BIN", "clean_env", "require_tool", "write_config"]


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """This process's environment without what would leak into the daemon under test."""
    drop = ("CKPTWATCH_", "NOTIFY_SOCKET", "WATCHDOG_", "NUMBA_CACHE_DIR", "XDG_CACHE_HOME", "TMPDIR")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env["PYTHONUNBUFFERED"] = "1"
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.update(extra or {})
    return env


def write_config(path: Path, watch_dir: Path, state_dir: Path, listen: str = "127.0.0.1:0") -> Path:
    watch_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "[daemon]\n"
        f'listen = "{listen}"\n'
        f"state_dir = {json.dumps(str(state_dir))}\n"
        'log_format = "json"\n'
        "poll_interval = 0.2\n"
        "[worker]\n"
        'devices = ["cpu"]\n'
        "heartbeat_interval = 0.5\n"
        "[[watch]]\n"
        'name = "deploy-test"\n'
        f"path = {json.dumps(str(watch_dir))}\n"
    )
    return path


class Daemon:
    def __init__(self, argv: list[str], env: dict[str, str], cwd: Path | None = None):
        self.argv = argv
        self.proc = subprocess.Popen(
            argv, env=env, cwd=str(cwd) if cwd else None, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._threads = [
            threading.Thread(target=self._read_stdout, daemon=True),
            threading.Thread(target=self._read_stderr, daemon=True),
        ]
        for t in self._threads:
            t.start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_stdout(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            event = log_event(raw)
            with self._cond:
                self.lines.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for raw in self.proc.stderr:
            self.stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def tail(self, n: int = 30) -> str:
        with self._cond:
            lines = [json.dumps(e)[:400] for e in self.lines[-n:]]
        return "\n".join([*lines, "-- stderr --", *self.stderr[-15:]])

    def wait_for(self, name: str, timeout: float = 60.0) -> dict:
        """The first log event called `name`; AssertionError (with the log's tail) on timeout or exit."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.lines:
                    if e.get("event") == name:
                        return e
                exited = self.proc.poll() is not None and not self._threads[0].is_alive()
                left = deadline - time.monotonic()
                if exited or left <= 0:
                    why = f"exited with {self.proc.returncode}" if exited else f"not within {timeout} s"
                    raise AssertionError(f"no {name!r} event: the daemon {why}; log tail:\n{self.tail()}")
                self._cond.wait(min(left, 0.5))

    def port(self) -> int:
        return int(self.wait_for("daemon started")["listen"].rsplit(":", 1)[1])

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not exit within {timeout} s of {signal.Signals(sig).name}") from None
        for t in self._threads:
            t.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()  # its workers notice they are orphaned and exit
            self.proc.wait(10)


@pytest.fixture
def daemons() -> Iterator[Callable[..., Daemon]]:
    started: list[Daemon] = []

    def start(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> Daemon:
        d = Daemon(argv, env, cwd)
        started.append(d)
        return d

    yield start
    for d in started:
        if d.proc.poll() is None:
            with contextlib.suppress(AssertionError):
                d.stop(timeout=10)
        d.kill()
