"""sd_notify: tell systemd (Type=notify, WatchdogSec=) that the daemon is ready, alive, stopping.

The protocol is one AF_UNIX datagram of newline-separated ``KEY=VALUE`` lines sent to the socket
named by $NOTIFY_SOCKET (a path, or an abstract socket when it starts with '@'); see sd_notify(3).
It is implemented here with `socket` rather than the PyPI package `sdnotify` (0.3.2, 2017, sdist
only): that package connects once at construction, encodes as Latin-1 (a non-Latin-1 STATUS text
is silently dropped) and swallows every exception with a bare `except`; the protocol itself is a
few lines. Nothing here ever raises on a socket error: a lost notification must not stop the daemon.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

import structlog

log = structlog.get_logger("ckptwatch.daemon.notify")


class Notifier:
    """sd_notify sender. Reads NOTIFY_SOCKET / WATCHDOG_USEC / WATCHDOG_PID from `environ`
    (default: os.environ) once, at construction. Every method is a no-op when not `enabled`."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self._raw_address = env.get("NOTIFY_SOCKET", "")
        self._address = _socket_address(self._raw_address)
        self._watchdog_usec = env.get("WATCHDOG_USEC")
        self._watchdog_pid = env.get("WATCHDOG_PID")

    @property
    def enabled(self) -> bool:
        """NOTIFY_SOCKET names a socket this module can send to."""
        return self._address is not None

    def ready(self, status: str | None = None) -> bool:
        """READY=1 (and STATUS=... in the same datagram): start-up is complete."""
        return self.notify("READY=1", *([f"STATUS={_one_line(status)}"] if status else []))

    def status(self, text: str) -> bool:
        """STATUS=...: the one-line status `systemctl status` shows."""
        return self.notify(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: keep-alive ping; send it every watchdog_interval() seconds."""
        return self.notify("WATCHDOG=1")

    def stopping(self) -> bool:
        """STOPPING=1: shutdown has begun."""
        return self.notify("STOPPING=1")

    def watchdog_interval(self) -> float | None:
        """Seconds between watchdog pings (half of WATCHDOG_USEC), or None when systemd expects none:
        WATCHDOG_USEC unset or invalid, or WATCHDOG_PID set to another process's pid."""
        if self._watchdog_pid:
            try:
                if int(self._watchdog_pid) != os.getpid():
                    return None
            except ValueError:
                return None
        try:
            usec = int(self._watchdog_usec or "")
        except ValueError:
            return None
        if usec <= 0:
            return None
        return usec / 2 / 1_000_000

    def notify(self, *lines: str) -> bool:
        """Send `lines` as one datagram; True when it was sent. Never raises."""
        if self._address is None or not lines:
            return False
        payload = "\n".join(lines).encode("utf-8", errors="replace")
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                sock.sendto(payload, self._address)
        except OSError as exc:
            log.debug("sd_notify failed", socket=self._raw_address, error=str(exc))
            return False
        return True


def _socket_address(raw: str) -> str | None:
    """The address to sendto(): a filesystem path, or '\\0name' for an abstract socket ('@name').
    Other forms (e.g. systemd's 'vsock:CID:PORT' for VMs) are not supported: None."""
    if raw.startswith("/"):
        return raw
    if raw.startswith("@") and len(raw) > 1:
        return "\0" + raw[1:]
    return None


def _one_line(text: str) -> str:
    return " ".join(str(text).splitlines())
