"""The HTTP server machinery under the daemon's endpoints (http.py has the routes).

    Server      one event-loop thread (a selector) accepts connections, reads request heads and
                writes responses without blocking; route work that may wait (a lock, a rendering)
                runs on a small pool of threads
    Request     what a route sees: method, path, query, headers
    Offload     a route's answer: "run this on the pool" (it may take a lock)
    Shared      a route's answer: "render this, shared": one rendering at a time per key, each
                request answered from the first rendering that began after it arrived
    Rendering   what a shared rendering produced (its gzip made at most once)

Why not ThreadingHTTPServer: under a burst of 2,000 connections its cost was per connection in
Python — a thread to start or wake, BaseHTTPRequestHandler's rfile/wfile and email-parser
headers, a log record — all under the GIL, shared with the daemon's main loop, about 1 ms each
on two cores: the last of the burst waited for all the others (p99 1.6 s). Here a connection
costs an accept, one recv, a split of the head and one send on the loop thread; a burst of
/metrics shares one rendering per rendering time, and a slow or silent client holds no thread,
only a socket until `READ_TIMEOUT` (the oldest silent ones are closed first when connections run
short). Responses are HTTP/1.0-style: `Connection: close`, Content-Length, one request per
connection. Measured with bench/http_burst.py (bench/README.md: HTTP under a burst).

With a web config (webconfig.py: exporter-toolkit's `--web.config.file`), accepted sockets are
wrapped in TLS and the handshake runs non-blocking on the loop thread like the reads and writes
(a silent client holds a socket until READ_TIMEOUT, no thread); basic auth is checked before a
request reaches its route: a cached answer on the loop thread, a bcrypt check on the pool.
"""

from __future__ import annotations

import contextlib
import errno
import gzip
import logging
import queue
import resource
import selectors
import socket
import ssl
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog

from ckptwatch.daemon.webconfig import WebSettings

log = structlog.get_logger("ckptwatch.daemon.http")
_stdlog = logging.getLogger("ckptwatch.daemon.http")  # to skip building debug lines nobody sees

Response = tuple[int, str, bytes, list[tuple[str, str]]]  # status, content type, body, extra headers


class Headers(dict):
    """Request headers by lower-cased name (the last one wins); get() takes any case."""

    def get(self, name: str, default: Any = None) -> Any:
        return dict.get(self, name.lower(), default)


@dataclass
class Request:
    method: str
    target: str  # as sent: path and query
    version: str
    headers: Headers
    client: str

    @property
    def requestline(self) -> str:
        return f"{self.method} {self.target} {self.version}"

    @property
    def path(self) -> str:
        return urlsplit(self.target).path

    @property
    def query(self) -> dict[str, list[str]]:
        return parse_qs(urlsplit(self.target).query, keep_blank_values=True)


@dataclass
class Offload:
    """Answer with `work()`, run on the pool (it may wait on a lock)."""

    work: Callable[[], Response]


class Rendering:
    """One shared rendering: its bytes, and their gzip made at most once (on the loop thread)."""

    __slots__ = ("_gzipped", "body")

    def __init__(self, body: bytes) -> None:
        self.body = body
        self._gzipped: bytes | None = None

    def gzipped(self) -> bytes:
        if self._gzipped is None:
            self._gzipped = gzip.compress(self.body)
        return self._gzipped


@dataclass
class Shared:
    """Answer with `finish(rendering)` where the rendering comes from `render()` on the pool,
    shared by every request for `key` that arrived before it began (never an older one)."""

    key: str
    render: Callable[[], bytes]
    finish: Callable[[Rendering], Response]


Dispatch = Callable[[Request], "Response | Offload | Shared"]

_REASONS = {s.value: s.phrase for s in HTTPStatus}


class _Conn:
    __slots__ = ("buf", "client", "handshaking", "out", "request", "sock")

    def __init__(self, sock: socket.socket, client: str, handshaking: bool = False) -> None:
        self.sock = sock
        self.client = client
        self.buf = b""
        self.out: memoryview | None = None
        self.request: Request | None = None
        self.handshaking = handshaking  # a TLS handshake still under way


class _Batch:
    """The shared rendering of one key: requests waiting for the next one, whether one runs."""

    __slots__ = ("running", "waiting")

    def __init__(self) -> None:
        self.waiting: list[tuple[_Conn, Shared]] = []
        self.running = False


class Server:
    """An HTTP server on one event-loop thread and a pool of `workers` threads (see the module
    docstring). `dispatch(request)` runs on the loop thread: it must answer at once (a Response),
    or hand over the work (Offload, Shared)."""

    READ_TIMEOUT = 30.0  # a client that stops sending (or reading) is closed after this long
    MAX_HEAD = 64 * 1024  # request line + headers
    BACKLOG = 1024  # listen(): Linux caps it at net.core.somaxconn (4096 by default since 5.4)
    ACCEPTS_PER_TURN = 256

    def __init__(
        self, host: str, port: int, dispatch: Dispatch, workers: int = 4, web: WebSettings | None = None
    ) -> None:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(self.BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.server_address = sock.getsockname()
        self._dispatch = dispatch
        self._web = web if web is not None else WebSettings(None)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ckptwatch-http-worker")
        self._selector = selectors.DefaultSelector()
        self._selector.register(sock, selectors.EVENT_READ, None)
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._posted: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle: dict[_Conn, float] = {}  # reading or writing, by deadline order: conn -> deadline
        self._open = 0
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        self._max_open = max(64, min(8192, (soft if soft > 0 else 1024) - 64))
        self._accept_paused_until = 0.0
        self._batches: dict[str, _Batch] = {}
        self._stopping = False
        self._date = (0, "")

    # -- life -------------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        sweep = time.monotonic() + 0.5
        while not self._stopping:
            now = time.monotonic()
            if self._accept_paused_until and now >= self._accept_paused_until:
                self._accept_paused_until = 0.0
                self._selector.register(self.socket, selectors.EVENT_READ, None)
            for key, mask in self._selector.select(timeout=0.5):
                if key.data is None:
                    self._accept()
                elif key.data == "wake":
                    self._drain_posted()
                else:
                    conn: _Conn = key.data
                    if conn.handshaking:
                        self._handshake(conn)
                    elif mask & selectors.EVENT_READ:
                        self._read(conn)
                    elif mask & selectors.EVENT_WRITE:
                        self._write(conn)
            if time.monotonic() >= sweep:
                self._sweep(time.monotonic())
                sweep = time.monotonic() + 0.5
        self._close_all()

    def shutdown(self) -> None:
        """Stop the loop (from another thread); serve_forever returns and closes everything."""
        self._stopping = True
        self._wake()

    def server_close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for s in (self.socket, self._wake_r, self._wake_w):
            s.close()

    def _close_all(self) -> None:
        for key in list(self._selector.get_map().values()):
            if isinstance(key.data, _Conn):
                key.data.sock.close()
        self._selector.close()

    # -- the loop thread ----------------------------------------------------------------------------

    def _wake(self) -> None:
        with contextlib.suppress(OSError):  # already woken (the pipe is full), or closed while stopping
            self._wake_w.send(b"\0")

    def _post(self, fn: Callable[[], None]) -> None:
        """Run `fn` on the loop thread (called from pool threads)."""
        self._posted.put(fn)
        self._wake()

    def _drain_posted(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass
        while True:
            try:
                fn = self._posted.get_nowait()
            except queue.Empty:
                return
            fn()

    def _accept(self) -> None:
        for _ in range(self.ACCEPTS_PER_TURN):
            if self._open >= self._max_open and not self._evict_oldest():
                self._pause_accepting()
                return
            try:
                sock, addr = self.socket.accept()
            except BlockingIOError:
                return
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.warning("http accept failed: out of descriptors", open=self._open)
                    self._pause_accepting()
                return
            sock.setblocking(False)
            context = self._web.current.context
            if context is not None:
                try:
                    sock = context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
                except (ssl.SSLError, OSError):
                    sock.close()
                    continue
            conn = _Conn(sock, str(addr[0]), handshaking=context is not None)
            self._open += 1
            self._selector.register(sock, selectors.EVENT_READ, conn)
            self._idle[conn] = time.monotonic() + self.READ_TIMEOUT

    def _pause_accepting(self) -> None:
        """Out of descriptors: leave new connections in the kernel's backlog a moment."""
        if not self._accept_paused_until:
            self._selector.unregister(self.socket)
            self._accept_paused_until = time.monotonic() + 0.1

    def _evict_oldest(self) -> bool:
        """At the connection cap: close the connection silent (or stalled) the longest."""
        for conn in self._idle:
            self._close(conn)
            return True
        return False

    def _handshake(self, conn: _Conn) -> None:
        """One step of a non-blocking TLS handshake; then the request is read as over plain TCP."""
        sock = conn.sock
        assert isinstance(sock, ssl.SSLSocket)
        try:
            sock.do_handshake()
        except ssl.SSLWantReadError:
            self._selector.modify(sock, selectors.EVENT_READ, conn)
            return
        except ssl.SSLWantWriteError:
            self._selector.modify(sock, selectors.EVENT_WRITE, conn)
            return
        except (ssl.SSLError, OSError) as e:  # a plain-HTTP client, an old TLS version, a client cert refused
            if _stdlog.isEnabledFor(logging.DEBUG):
                log.debug("tls handshake failed", client=conn.client, error=str(e))
            self._close(conn)
            return
        conn.handshaking = False
        self._selector.modify(sock, selectors.EVENT_READ, conn)
        if sock.pending():
            self._read(conn)

    def _sweep(self, now: float) -> None:
        self._web.refresh()  # a changed web config (a rotated certificate) applies to new connections
        expired = []
        for conn, deadline in self._idle.items():
            if deadline > now:
                break  # in deadline order
            expired.append(conn)
        for conn in expired:
            self._close(conn)

    def _close(self, conn: _Conn) -> None:
        self._idle.pop(conn, None)
        with contextlib.suppress(KeyError, ValueError):
            self._selector.unregister(conn.sock)
        _shut(conn.sock)
        self._open -= 1

    def _read(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
            if isinstance(conn.sock, ssl.SSLSocket):
                while conn.sock.pending():  # decrypted bytes the selector cannot see
                    data += conn.sock.recv(65536)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return
        except OSError:
            self._close(conn)
            return
        if not data:
            self._close(conn)
            return
        conn.buf += data
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            end = conn.buf.find(b"\n\n")
        if end < 0:
            if len(conn.buf) > self.MAX_HEAD:
                self._stop_reading(conn)
                self._respond(conn, _plain(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE, "request head too large\n"))
            return
        self._stop_reading(conn)
        head, conn.buf = conn.buf[:end].decode("latin-1"), b""
        lines = head.replace("\r\n", "\n").split("\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            self._respond(conn, _plain(HTTPStatus.BAD_REQUEST, "bad request line\n"))
            return
        headers = Headers()
        for line in lines[1:]:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        req = conn.request = Request(parts[0], parts[1], parts[2], headers, conn.client)
        if req.method not in ("GET", "HEAD"):
            self._respond(conn, _plain(HTTPStatus.NOT_IMPLEMENTED, f"unsupported method {req.method}\n"))
            return
        if self._web.auth_required:
            authorization = req.headers.get("Authorization")
            known = self._web.cached(authorization)
            if known is None:  # bcrypt: on the pool, then back here
                self._pool.submit(self._authenticate, conn, authorization)
                return
            if not known:
                self._respond(conn, _unauthorized())
                return
        self._route(conn)

    def _authenticate(self, conn: _Conn, authorization: str | None) -> None:
        """On the pool: the slow check, then the request goes on (or is refused) on the loop thread."""
        try:
            ok = self._web.check(authorization)
        except Exception:
            log.error("basic auth check failed", exc_info=True)
            ok = False
        self._post(lambda: self._route(conn) if ok else self._respond(conn, _unauthorized()))

    def _route(self, conn: _Conn) -> None:
        req = conn.request
        assert req is not None
        try:
            answer = self._dispatch(req)
        except Exception:
            answer = _failed(req)
        if isinstance(answer, Offload):
            self._offload(conn, answer)
        elif isinstance(answer, Shared):
            self._shared(conn, answer)
        else:
            self._respond(conn, answer)

    def _stop_reading(self, conn: _Conn) -> None:
        self._idle.pop(conn, None)
        self._selector.unregister(conn.sock)

    def _offload(self, conn: _Conn, job: Offload) -> None:
        def run() -> None:
            try:
                response = job.work()
            except Exception:
                assert conn.request is not None
                response = _failed(conn.request)
            self._post(lambda: self._respond(conn, response))

        self._pool.submit(run)

    def _shared(self, conn: _Conn, job: Shared) -> None:
        batch = self._batches.setdefault(job.key, _Batch())
        batch.waiting.append((conn, job))
        if not batch.running:
            self._start_rendering(job.key, batch, job.render)

    def _start_rendering(self, key: str, batch: _Batch, render: Callable[[], bytes]) -> None:
        served, batch.waiting, batch.running = batch.waiting, [], True

        def done(future: Future) -> None:
            self._post(lambda: self._rendered(key, batch, served, future))

        self._pool.submit(render).add_done_callback(done)

    def _rendered(self, key: str, batch: _Batch, served: list[tuple[_Conn, Shared]], future: Future) -> None:
        batch.running = False
        error = future.exception()
        if error is not None:
            log.error("http handler failed", path=served[0][0].request.path if served[0][0].request else "?",
                      exc_info=error)  # fmt: skip
        rendering = None if error is not None else Rendering(future.result())
        for conn, job in served:
            try:
                response = job.finish(rendering) if rendering is not None else _plain(500, "internal error\n")
            except Exception:
                assert conn.request is not None
                response = _failed(conn.request)
            self._respond(conn, response)
        if batch.waiting:  # arrived while this one ran: the next rendering is theirs
            self._start_rendering(key, batch, batch.waiting[-1][1].render)
        else:
            self._batches.pop(key, None)

    def _respond(self, conn: _Conn, response: Response) -> None:
        status, ctype, body, extra = response
        head_only = conn.request is not None and conn.request.method == "HEAD"
        lines = [
            f"HTTP/1.0 {status} {_REASONS.get(status, '')}",
            "Server: ckptwatch",
            f"Date: {self._http_date()}",
            f"Content-Type: {ctype}",
            f"Content-Length: {len(body)}",
            "Cache-Control: no-store",
            "Connection: close",
            *(f"{k}: {v}" for k, v in extra),
            *(f"{k}: {v}" for k, v in self._web.current.headers),
        ]
        data = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (b"" if head_only else body)
        if _stdlog.isEnabledFor(logging.DEBUG):
            line = conn.request.requestline if conn.request else "-"
            log.debug("http request", client=conn.client, message=f'"{line}" {status} {len(body)}')
        conn.out = memoryview(data)
        self._write(conn, first=True)

    def _write(self, conn: _Conn, first: bool = False) -> None:
        assert conn.out is not None
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
            sent = 0
        except OSError:  # the client went away
            if not first:
                self._selector.unregister(conn.sock)
            self._idle.pop(conn, None)
            conn.sock.close()
            self._open -= 1
            return
        conn.out = conn.out[sent:]
        if not conn.out:
            if not first:
                self._selector.unregister(conn.sock)
                self._idle.pop(conn, None)
            _shut(conn.sock)
            self._open -= 1
            return
        if first:
            self._selector.register(conn.sock, selectors.EVENT_WRITE, conn)
        self._idle.pop(conn, None)  # progress: a fresh deadline, at the end of the order
        self._idle[conn] = time.monotonic() + self.READ_TIMEOUT

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, formatdate(now, usegmt=True))
        return self._date[1]


def _shut(sock: socket.socket) -> None:
    """Close a connection after its response: TLS close_notify (not waiting for the peer's), FIN, close."""
    if isinstance(sock, ssl.SSLSocket):
        with contextlib.suppress(ssl.SSLError, OSError, ValueError):
            sock.unwrap()
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_WR)
    sock.close()


def _unauthorized() -> Response:
    return HTTPStatus.UNAUTHORIZED, "text/plain; charset=utf-8", b"Unauthorized\n", [("WWW-Authenticate", "Basic")]


def _plain(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", text.encode(), []


def _failed(req: Request) -> Response:
    log.error("http handler failed", path=req.path, exc_info=True)
    return _plain(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error\n")
