"""A real `ckptwatch watch` in a subprocess for the benchmarks, with its JSON log events on a queue."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import subprocess
import sys
import threading
import time


class DaemonProcess:
    """Writes `config` to `<root>/config.toml`, starts the daemon on it and reads its log.

    `events` holds the log lines as dicts, in order; `wait_for` consumes them."""

    def __init__(self, root: str, config: str) -> None:
        os.makedirs(f"{root}/run", exist_ok=True)
        with open(f"{root}/config.toml", "w") as f:
            f.write(config)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckptwatch", "watch", "--config", f"{root}/config.toml"],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.events: queue.SimpleQueue[dict] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read(self) -> None:
        assert self.proc.stdout
        for line in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.events.put(json.loads(line))

    def wait_for(self, event: str, timeout: float = 120.0, **match) -> dict:
        """The next log event named `event` whose fields match; earlier events are dropped."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                e = self.events.get(timeout=0.5)
            except queue.Empty:
                continue
            if e.get("event") == event and all(e.get(k) == v for k, v in match.items()):
                return e
        raise TimeoutError(event)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(15)
