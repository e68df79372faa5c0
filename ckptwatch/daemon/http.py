"""The daemon's HTTP endpoints, served by serving.Server (one event-loop thread and a small pool).

    /metrics              Prometheus exposition of the registry (text 0.0.4, or OpenMetrics when
                          asked for in Accept; gzip when Accept-Encoding allows it)
    /healthz              200 "ok": the process is alive and serving
    /livez                200 "ok" while the daemon's main loop turns; 503 and how long it has not
                          (`stalled()`: no turn for liveness_timeout s), so Kubernetes restarts a
                          wedged daemon
    /readyz               200 "ok" when every watch that is not retired is armed, a worker is up and
                          the state can be written, else 503 and why (each unarmed watch: reason, path)
    /                     the status page (page.render_status_page): per watch the latest failing
                          checks and their tensors, verdicts and drift over steps, recent checkpoints
                          linking to their pages, baseline, publish_dir, acceptance; refreshes itself
    /checkpoints/{id}     one verified checkpoint (page.render_checkpoint_page): findings, drift,
                          model-aware results, every tensor worst first
    /api/v1/watches       {"watches": [...]}: each configured watch's state (the snapshot's figures,
                          its latest failing and warning findings)
    /api/v1/checkpoints   {"checkpoints": summaries}, newest first (summary.summarize: no tensors,
                          bounded findings; `id` for the full report); ?limit=1..1000 (default 50),
                          ?watch=NAME (404 for a watch neither configured nor in the state),
                          ?verdict=pass|warn|fail|error
    /api/v1/checkpoints/{id}  {"checkpoint": {id, watch, path, step, verdict, finished, duration,
                          report}}: the full report; 404 when no report has that id

Handlers only call `snapshot()` / `reports()` / `report()` / `stalled()` and render; they never wait on the
daemon's work, so the endpoints answer while a verification is running. /healthz, /livez and
404s are answered on the server's loop thread; /readyz, the pages and the API (they take the
daemon's snapshot lock or read the state) on its pool; /metrics renderings on the pool too, one at a time per content
type, shared by every request that arrived before it began (serving.Shared). A burst of requests
is held by a listen backlog of 1024 and a loop that costs little per connection
(bench/http_burst.py). Requests are logged through structlog at debug level, never to stderr.
"""

from __future__ import annotations

import functools
import json
import re
import threading
from collections.abc import Callable
from dataclasses import asdict
from http import HTTPStatus
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from ckptwatch.config import parse_listen  # the config's grammar: HOST:PORT or [V6]:PORT
from ckptwatch.daemon.model import VERDICTS, Snapshot, WatchStatus
from ckptwatch.daemon.page import TIMELINE_POINTS, render_checkpoint_page, render_status_page
from ckptwatch.daemon.serving import Offload, Rendering, Request, Response, Server, Shared
from ckptwatch.daemon.webconfig import WebSettings
from ckptwatch.verify.report import clean_floats  # JSON has no NaN/Inf: null, as in `verify --json`

log = structlog.get_logger("ckptwatch.daemon.http")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
GZIP_MIN_BYTES = 1024
_ID = re.compile(r"[1-9][0-9]{0,17}")  # a report's id: a positive SQLite row id

Reports = Callable[..., list[dict]]  # (limit, watch=None, verdict=None) -> summaries, newest first


def _text(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", text.encode(), []


def _json(status: int, obj: Any) -> Response:
    body = json.dumps(clean_floats(obj), default=str, allow_nan=False).encode()
    return status, "application/json", body, []


def _html(status: int, text: str) -> Response:
    return status, "text/html; charset=utf-8", text.encode(), []


def watch_json(w: WatchStatus) -> dict:
    """What /api/v1/watches says of a watch."""
    doc = asdict(w)
    doc["top_tensors"] = [asdict(t) for t in w.top_tensors]
    doc.pop("finding_counts", None)  # tuple keys; `findings` lists them
    return doc


class StatusServer:
    """HTTP endpoints of the daemon. `snapshot()`, `reports(limit, watch, verdict)` (summaries),
    `report(id)` (one full report, or None) and `stalled()` are called from request threads: they
    must be thread-safe and quick (copy under a lock, no waiting on work; `stalled()` takes no lock
    at all, so /livez answers while the loop is stuck)."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        snapshot: Callable[[], Snapshot],
        reports: Reports,
        stalled: Callable[[], str | None] = lambda: None,
        web_config: str | None = None,
        report: Callable[[int], dict | None] = lambda _id: None,
    ) -> None:
        self._host, self._port = parse_listen(listen)
        self.web = WebSettings(web_config)  # UsageError (one line) for a bad web config file
        self.registry = registry
        self.snapshot = snapshot
        self.reports = reports
        self.report = report
        self.stalled = stalled
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        # path -> (route, where it runs: on the loop thread (answers at once) or on the pool)
        self._routes: dict[str, tuple[Callable[[Request], Any], bool]] = {
            "/metrics": (self._metrics, True),  # a Shared rendering: on the pool
            "/healthz": (self._alive, True),
            "/livez": (self._live, True),  # stalled() takes no lock
            "/readyz": (self._ready, False),
            "/": (self._index, False),
            "/api/v1/watches": (self._watches, False),
            "/api/v1/checkpoints": (self._checkpoints, False),
        }
        # prefix -> route given the rest of the path (a report's id)
        self._prefixed: dict[str, Callable[[str], Response]] = {
            "/api/v1/checkpoints/": self._checkpoint_json,
            "/checkpoints/": self._checkpoint_page,
        }

    @property
    def address(self) -> tuple[str, int]:
        """(host, port) actually bound once started (the ephemeral port for port 0)."""
        if self._server is None:
            return self._host, self._port
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    @property
    def url(self) -> str:
        host, port = self.address
        scheme = "https" if self.web.tls else "http"
        return f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"

    def start(self) -> None:
        """Bind (OSError if the address is taken) and serve in a daemon thread."""
        if self._server is not None:
            return
        server = Server(self._host, self._port, self._dispatch, web=self.web)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="ckptwatch-http", daemon=True)
        self._thread.start()
        log.info("http listening", url=self.url, tls=self.web.tls, basic_auth=self.web.auth_required)

    def stop(self) -> None:
        server, thread = self._server, self._thread
        if server is None:
            return
        server.shutdown()
        server.server_close()
        if thread is not None:
            thread.join(timeout=5)
        self._server = self._thread = None

    # -- routes -------------------------------------------------------------------------------------

    def _dispatch(self, req: Request) -> Response | Offload | Shared:
        """On the server's loop thread: answer at once, or say where the work runs."""
        path = req.path
        route, at_once = self._routes.get(path.rstrip("/") or "/", (None, True))
        if route is None:
            for prefix, by_id in self._prefixed.items():
                rest = path[len(prefix) :].rstrip("/")
                if path.startswith(prefix) and _ID.fullmatch(rest):
                    return Offload(functools.partial(by_id, rest))
            return _text(HTTPStatus.NOT_FOUND, f"not found: {path}\n")
        if at_once:
            return route(req)
        return Offload(lambda: route(req))

    def _metrics(self, req: Request) -> Shared:
        encoder, ctype = choose_encoder(req.headers.get("Accept", ""))
        gzipped = gzip_accepted(req.headers.get("Accept-Encoding", ""))

        def finish(rendering: Rendering) -> Response:
            if len(rendering.body) >= GZIP_MIN_BYTES and gzipped:
                return HTTPStatus.OK, ctype, rendering.gzipped(), [("Content-Encoding", "gzip")]
            return HTTPStatus.OK, ctype, rendering.body, []

        return Shared(ctype, lambda: encoder(self.registry), finish)  # the content type names the encoder

    def _alive(self, _req: Request) -> Response:
        return _text(HTTPStatus.OK, "ok\n")

    def _live(self, _req: Request) -> Response:
        why = self.stalled()
        return _text(HTTPStatus.SERVICE_UNAVAILABLE, why + "\n") if why else _text(HTTPStatus.OK, "ok\n")

    def _ready(self, _req: Request) -> Response:
        snap = self.snapshot()
        if snap.ready:
            return _text(HTTPStatus.OK, "ok\n")
        reasons = []
        active = snap.active_watches
        if not any(w.armed for w in active):
            reasons.append(
                "no watch armed" if active else "no watch configured" if not snap.watches else "every watch retired"
            )
        for w in active:
            if not w.armed and w.unarmed_reason:
                reasons.append(f"watch {w.name} not armed: {w.unarmed_reason} ({w.unarmed_detail or w.path})")
        if not any(w.up for w in snap.workers):
            reasons.append("no worker up")
        if snap.state is not None and snap.state.problem is not None:
            reasons.append(f"state not writable ({snap.state.problem}; {snap.state.pending} records kept in memory)")
        return _text(HTTPStatus.SERVICE_UNAVAILABLE, "not ready: " + ("; ".join(reasons) or "starting") + "\n")

    def _checkpoints(self, req: Request) -> Response:
        query = req.query
        raw = query.get("limit", [str(DEFAULT_LIMIT)])[-1]
        try:
            limit = int(raw)
        except ValueError:
            return _json(HTTPStatus.BAD_REQUEST, {"error": f"limit must be an integer, got {raw!r}"})
        if limit < 1:
            return _json(HTTPStatus.BAD_REQUEST, {"error": f"limit must be at least 1, got {limit}"})
        limit = min(limit, MAX_LIMIT)
        verdict = query.get("verdict", [""])[-1] or None
        if verdict is not None and verdict not in VERDICTS:
            return _json(
                HTTPStatus.BAD_REQUEST, {"error": f"verdict must be one of {', '.join(VERDICTS)}, got {verdict!r}"}
            )
        watch = query.get("watch", [""])[-1] or None
        rows = self.reports(limit, watch, verdict) if verdict else self.reports(limit, watch)
        if watch is not None and not rows and watch not in {w.name for w in self.snapshot().watches}:
            return _json(HTTPStatus.NOT_FOUND, {"error": f"unknown watch {watch!r}: not configured, no reports"})
        return _json(HTTPStatus.OK, {"checkpoints": rows})

    def _watches(self, _req: Request) -> Response:
        return _json(HTTPStatus.OK, {"watches": [watch_json(w) for w in self.snapshot().watches]})

    def _checkpoint_json(self, rid: str) -> Response:
        row = self.report(int(rid))
        if row is None:
            return _json(HTTPStatus.NOT_FOUND, {"error": f"no report with id {rid}"})
        return _json(HTTPStatus.OK, {"checkpoint": row})

    def _checkpoint_page(self, rid: str) -> Response:
        row = self.report(int(rid))
        if row is None:
            return _text(HTTPStatus.NOT_FOUND, f"no report with id {rid}\n")
        return _html(HTTPStatus.OK, render_checkpoint_page(row))

    def _index(self, _req: Request) -> Response:
        snap = self.snapshot()
        history = {w.name: self.reports(TIMELINE_POINTS, w.name) for w in snap.watches}
        return _html(HTTPStatus.OK, render_status_page(snap, history=history))


__all__ = ["StatusServer", "render_checkpoint_page", "render_status_page", "watch_json"]
