"""HTTP under a burst, and /livez (issue 12, break 10).

The listening socket's backlog is read back from the kernel (`ss`); a burst of connections
opened at once is answered in full, none refused, none timed out (latency figures live in
bench/http_burst.py and bench/README.md, not in a timed test); /metrics renderings are shared
by the requests of a burst without ever serving a state older than the request; the server's
threads are bounded and silent clients hold none; /livez says what `stalled()` says while
/healthz keeps answering.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily

from ckptwatch.daemon.http import StatusServer
from ckptwatch.daemon.model import Snapshot
from tests.tools import require_tool, wait_until

BURST = 400


def _snapshot() -> Snapshot:
    return Snapshot("0.1.0", time.time(), [], [])


@pytest.fixture
def server():
    registry = CollectorRegistry()
    srv = StatusServer("127.0.0.1:0", registry, _snapshot, lambda limit, watch: [])
    srv.start()
    yield srv
    srv.stop()


def _request(host: str, port: int, path: str, timeout: float = 10.0) -> str:
    """One HTTP/1.0 request on a fresh connection: the status code, or why there is none."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        return data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "no response"
    except TimeoutError:
        return "timeout"
    except OSError as e:
        return type(e).__name__


def test_the_listen_backlog_holds_a_burst(server: StatusServer):
    ss = require_tool("ss", "iproute2")
    _, port = server.address
    out = subprocess.run([ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    (line,) = [ln for ln in out.splitlines() if f":{port}" in ln]
    backlog = int(line.split()[2])  # Send-Q of a listening socket: its accept-queue limit
    assert backlog >= 128, f"listen backlog {backlog}: a burst of connections is dropped and retried"


@pytest.mark.parametrize("path", ["/metrics", "/livez"])
def test_a_burst_of_connections_is_answered_in_full(server: StatusServer, path: str):
    """BURST connections opened at once: every one gets 200; none is refused or times out."""
    host, port = server.address
    start = threading.Barrier(BURST)

    def one(_: int) -> str:
        start.wait()
        return _request(host, port, path)

    with ThreadPoolExecutor(BURST) as pool:
        outcomes = list(pool.map(one, range(BURST)))
    failed = {o: outcomes.count(o) for o in set(outcomes) if o != "200"}
    assert failed == {}, f"{sum(failed.values())} of {BURST} requests failed: {failed}"


def test_livez_follows_the_main_loop_and_healthz_the_process():
    stalled: list[str | None] = [None]
    srv = StatusServer("127.0.0.1:0", CollectorRegistry(), _snapshot, lambda limit, watch: [], lambda: stalled[0])
    srv.start()
    try:
        host, port = srv.address
        assert _request(host, port, "/livez") == "200"
        stalled[0] = "main loop stalled: no turn for 31.0 s (liveness_timeout 30 s)"
        with socket.create_connection((host, port), timeout=5) as s:
            s.sendall(b"GET /livez HTTP/1.0\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        assert head.startswith(b"HTTP/1.0 503 ") and body == stalled[0].encode() + b"\n"
        assert _request(host, port, "/healthz") == "200"
        stalled[0] = None
        assert _request(host, port, "/livez") == "200"
    finally:
        srv.stop()


class _SlowCollector:
    """Yields one gauge with `value`; the first collect() waits for `release` (a slow scrape)."""

    def __init__(self) -> None:
        self.value = 0.0
        self.calls: list[float] = []
        self.release = threading.Event()
        self.broken = False

    def describe(self) -> list:
        return []  # no collect() at registration

    def collect(self):
        value = self.value  # the state when the rendering began
        self.calls.append(value)
        if len(self.calls) == 1:
            self.release.wait(10)
        if self.broken:
            raise RuntimeError("collector failed")
        yield GaugeMetricFamily("value", "test", value=value)


def _get(host: str, port: int, path: str) -> tuple[str, bytes]:
    with socket.create_connection((host, port), timeout=10) as s:
        s.sendall(f"GET {path} HTTP/1.0\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return head.split(b" ", 2)[1].decode(), body


def _value(body: bytes) -> str:
    (line,) = [ln for ln in body.decode().splitlines() if ln.startswith("value ")]
    return line.split()[1]


def test_metrics_renderings_are_shared_but_never_stale():
    """Requests arriving while a rendering runs wait for the next one (it began after they
    arrived) and share it; a request after an update always sees the update; the loop keeps
    answering /livez while a rendering is slow; a failed rendering is a 500, not kept."""
    registry = CollectorRegistry()
    slow = _SlowCollector()
    registry.register(slow)
    srv = StatusServer("127.0.0.1:0", registry, _snapshot, lambda limit, watch: [])
    srv.start()
    try:
        host, port = srv.address
        assert srv._server is not None
        batches = srv._server._batches
        with ThreadPoolExecutor(20) as pool:
            first = pool.submit(_get, host, port, "/metrics")
            wait_until(lambda: len(slow.calls) == 1, 10, what="the first rendering began")
            slow.value = 1.0  # after the first rendering began: the waiters must not get its result
            waiters = [pool.submit(_get, host, port, "/metrics") for _ in range(19)]
            wait_until(lambda: sum(len(b.waiting) for b in batches.values()) == 19, 10, what="19 requests waiting")
            assert _request(host, port, "/livez", timeout=5) == "200"  # not held up by the rendering
            slow.release.set()
            assert first.result(10)[0] == "200" and _value(first.result()[1]) == "0.0"
            assert {_value(w.result(10)[1]) for w in waiters} == {"1.0"}
        assert slow.calls == [0.0, 1.0]  # 20 requests, 2 renderings
        slow.value = 2.0
        status, body = _get(host, port, "/metrics")
        assert status == "200" and _value(body) == "2.0"  # after an update: a fresh rendering
        slow.broken = True
        assert _get(host, port, "/metrics")[0] == "500"
        slow.broken = False
        status, body = _get(host, port, "/metrics")
        assert status == "200" and _value(body) == "2.0"  # a failure is not kept
    finally:
        srv.stop()


def _http_threads() -> int:
    return sum(t.name.startswith("ckptwatch-http") for t in threading.enumerate())


def test_threads_are_bounded_and_silent_clients_hold_none(server: StatusServer):
    """A burst takes no thread per connection: the loop thread and a pool of at most 4. Clients
    that send nothing hold no thread and delay nobody; past READ_TIMEOUT they are closed."""
    assert server._server is not None
    server._server.READ_TIMEOUT = 1.0
    host, port = server.address
    silent = [socket.create_connection((host, port)) for _ in range(100)]
    try:
        with ThreadPoolExecutor(32) as pool:
            paths = ["/metrics", "/readyz", "/api/v1/checkpoints", "/livez"] * 50
            assert set(pool.map(lambda p: _request(host, port, p), paths)) == {"200", "503"}
        assert 1 <= _http_threads() <= 5, [t.name for t in threading.enumerate()]
        for s in silent:  # closed by the server: the client reads the end of the stream
            s.settimeout(10)
            assert s.recv(1) == b""
    finally:
        for s in silent:
            s.close()
    assert _request(host, port, "/livez") == "200"
