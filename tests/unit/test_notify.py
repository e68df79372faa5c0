"""sd_notify over a real AF_UNIX datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

from ckptwatch.daemon.notify import Notifier


@pytest.fixture
def systemd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A bound datagram socket; NOTIFY_SOCKET points at it. Yields a function returning the next datagram."""
    path = tmp_path / "notify.sock"
    if len(str(path)) > 100:  # sun_path is 108 bytes
        pytest.skip("tmp_path too long for an AF_UNIX socket path")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    for var in ("WATCHDOG_USEC", "WATCHDOG_PID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    yield lambda: sock.recv(4096).decode()
    sock.close()


def test_exact_datagrams(systemd):
    n = Notifier()
    assert n.enabled
    assert n.ready("watching 3 directories")
    assert systemd() == "READY=1\nSTATUS=watching 3 directories"
    assert n.ready()
    assert systemd() == "READY=1"
    assert n.status("verifying run7/ckpt-12")
    assert systemd() == "STATUS=verifying run7/ckpt-12"
    assert n.watchdog()
    assert systemd() == "WATCHDOG=1"
    assert n.stopping()
    assert systemd() == "STOPPING=1"


def test_status_is_one_line_and_utf8(systemd):
    n = Notifier()
    n.status("two\nlines — ünïcode")
    assert systemd() == "STATUS=two lines — ünïcode"


def test_abstract_socket(monkeypatch: pytest.MonkeyPatch):
    name = f"ckptwatch-test-{uuid.uuid4().hex}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        n = Notifier()
        assert n.enabled
        assert n.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"


def test_noop_without_notify_socket(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    n = Notifier()
    assert not n.enabled
    assert n.ready("x") is False
    assert n.status("x") is False
    assert n.watchdog() is False
    assert n.stopping() is False


def test_never_raises_on_socket_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens.sock"))
    n = Notifier()
    assert n.enabled
    assert n.ready("x") is False  # ENOENT, swallowed
    monkeypatch.setenv("NOTIFY_SOCKET", "@")  # empty abstract name
    assert not Notifier().enabled
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")  # not supported: disabled, not an error
    assert not Notifier().enabled


def test_watchdog_interval(systemd, monkeypatch: pytest.MonkeyPatch):
    assert Notifier().watchdog_interval() is None  # WATCHDOG_USEC unset
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    assert Notifier().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert Notifier().watchdog_interval() == 15.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))  # meant for another process
    assert Notifier().watchdog_interval() is None
    monkeypatch.delenv("WATCHDOG_PID")
    for bad in ("0", "-5", "soon", ""):
        monkeypatch.setenv("WATCHDOG_USEC", bad)
        assert Notifier().watchdog_interval() is None, bad


def test_environ_argument(systemd):
    n = Notifier({"WATCHDOG_USEC": "2000000"})  # an explicit mapping, not os.environ
    assert not n.enabled
    assert n.watchdog_interval() == 1.0
