"""HTTP under a burst, and /livez (issue 12, break 10).

The listening socket's backlog is read back from the kernel (`ss`); a burst of connections
opened at once is answered in full, none refused, none timed out (latency figures live in
bench/http_burst.py and bench/README.md, not in a timed test); /metrics renderings are shared
by the requests of a burst without ever serving a state older than the request; /livez says
what `stalled()` says while /healthz keeps answering.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from prometheus_client import CollectorRegistry, Counter

from ckptwatch.daemon.http import StatusServer
from ckptwatch.daemon.model import Snapshot
from ckptwatch.daemon.serving import Coalesced
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


def test_metrics_renderings_are_shared_but_never_stale():
    """Requests arriving while a rendering runs wait for the next one (it began after they
    arrived) and share it; a request after an update always sees the update."""
    registry = CollectorRegistry()
    counter = Counter("bumps", "test", registry=registry)
    coalesced = Coalesced()
    renders: list[float] = []
    release = threading.Event()

    def render() -> bytes:
        value = registry.get_sample_value("bumps_total")
        renders.append(value)
        if len(renders) == 1:
            release.wait(5)  # the first rendering is slow: the others pile up behind it
        return str(value).encode()

    with ThreadPoolExecutor(20) as pool:
        first = pool.submit(coalesced.get, "k", render)
        while not renders:
            time.sleep(0.001)
        counter.inc()  # after the first rendering began: the waiters must not get its result
        waiters = [pool.submit(coalesced.get, "k", render) for _ in range(19)]
        time.sleep(0.2)
        release.set()
        assert first.result(5) == b"0.0"
        assert {w.result(5) for w in waiters} == {b"1.0"}
    assert len(renders) == 2, renders  # 20 requests, 2 renderings
    counter.inc()
    assert coalesced.get("k", render) == b"2.0"  # after an update: a fresh rendering

    def broken() -> bytes:
        raise RuntimeError("collector failed")

    with pytest.raises(RuntimeError, match="collector failed"):
        coalesced.get("k", broken)
    assert coalesced.get("k", render) == b"2.0"  # a failure is not kept


def _handler_threads() -> int:
    return sum(t.name == "ckptwatch-http-handler" for t in threading.enumerate())


def test_handler_threads_are_reused_and_idle_ones_exit(server: StatusServer):
    """A connection goes to an idle handler thread or a new one; a slow client holds its own
    thread and never delays the others; threads idle for IDLE_SECONDS exit."""
    assert server._server is not None
    server._server.IDLE_SECONDS = 0.3
    host, port = server.address
    before = _handler_threads()
    with ThreadPoolExecutor(16) as pool:
        assert set(pool.map(lambda _: _request(host, port, "/metrics"), range(200))) == {"200"}
    used = _handler_threads() - before
    assert 1 <= used <= 24, used  # reused: about one per request in flight (16), not one per request (200)
    with socket.create_connection((host, port)):  # a client that sends nothing holds one thread
        for _ in range(20):
            assert _request(host, port, "/healthz", timeout=5) == "200"
    wait_until(lambda: _handler_threads() == before, 10, what="idle handler threads exit")
    assert _request(host, port, "/livez") == "200"  # and new ones start again
