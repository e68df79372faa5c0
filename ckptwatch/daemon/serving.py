"""The HTTP server machinery under the daemon's endpoints (http.py has the routes).

    Server, Server6   ThreadingHTTPServer with a listen backlog for bursts and reused handler threads
    Coalesced         renderings shared by the requests that wait for them (/metrics under a burst)

Measured with bench/http_burst.py (bench/README.md: HTTP under a burst).
"""

from __future__ import annotations

import queue
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import structlog

log = structlog.get_logger("ckptwatch.daemon.http")


class Server(ThreadingHTTPServer):
    """One thread per connection in flight, as ThreadingHTTPServer, but threads are reused: a
    connection goes to an idle handler thread, and a new thread starts only when none is idle (no
    cap, so slow clients hold threads of their own, never the others'). Starting a thread per
    request costs the accept loop a wait for that thread to be scheduled (Thread.start() waits for
    it): under a burst that wait, not the work, set the pace. Idle threads exit after IDLE_SECONDS."""

    IDLE_SECONDS = 30.0
    daemon_threads = True
    allow_reuse_address = True
    # listen() backlog: connections the kernel completes while the accept loop is busy. socketserver's
    # default of 5 drops SYNs under a burst (clients retry after 1 s, 3 s, 7 s...). Linux caps it at
    # net.core.somaxconn (4096 by default since 5.4).
    request_queue_size = 1024
    status: Any  # the StatusServer whose routes _Handler calls

    def __init__(self, address: tuple[str, int], handler: type[BaseHTTPRequestHandler]) -> None:
        self._work: queue.SimpleQueue[tuple[Any, Any]] = queue.SimpleQueue()
        self._idle = 0  # handler threads waiting for work, less the connections already promised to them
        self._idle_lock = threading.Lock()
        super().__init__(address, handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._idle_lock:
            self._work.put((request, client_address))
            start = self._idle == 0
            if not start:
                self._idle -= 1
        if start:
            threading.Thread(target=self._handler_thread, name="ckptwatch-http-handler", daemon=True).start()

    def _handler_thread(self) -> None:
        while True:
            try:
                request, client_address = self._work.get(timeout=self.IDLE_SECONDS)
            except queue.Empty:
                with self._idle_lock:  # puts happen under this lock: nothing arrives unseen
                    if self._work.empty():
                        self._idle -= 1
                        return
                continue
            try:
                self.finish_request(request, client_address)
            except Exception:
                self.handle_error(request, client_address)
            finally:
                with self._idle_lock:  # idle before the client sees the connection close
                    self._idle += 1
                self.shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:  # instead of a traceback on stderr
        log.debug("http connection error", client=str(client_address), exc_info=True)


class Server6(Server):
    address_family = socket.AF_INET6


class Coalesced:
    """Renderings shared by the requests that wait for them: one at a time per key, and each
    request gets the first one that began after it arrived (never an older state). A burst of
    scrapes then costs one rendering per rendering time, not one per request."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._running: set[str] = set()
        self._done: dict[str, tuple[int, bytes | BaseException]] = {}  # key -> (generation, outcome)

    def get(self, key: str, render: Callable[[], bytes]) -> bytes:
        with self._cond:
            done = self._done.get(key, (0, b""))[0]
            need = done + (2 if key in self._running else 1)  # a running one began before this request
            while True:
                gen, outcome = self._done.get(key, (0, b""))
                if gen >= need:
                    return self._unwrap(outcome)
                if key not in self._running:
                    self._running.add(key)
                    break
                self._cond.wait()
        try:
            outcome = render()
        except BaseException as e:  # handed to the waiters too
            outcome = e
        with self._cond:
            self._running.discard(key)
            self._done[key] = (gen + 1, outcome)
            self._cond.notify_all()
        return self._unwrap(outcome)

    @staticmethod
    def _unwrap(outcome: bytes | BaseException) -> bytes:
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome
