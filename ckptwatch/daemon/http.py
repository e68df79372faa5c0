"""The daemon's HTTP endpoints, served by serving.Server (one event-loop thread and a small pool).

    /metrics              Prometheus exposition of the registry (text 0.0.4, or OpenMetrics when
                          asked for in Accept; gzip when Accept-Encoding allows it)
    /healthz              200 "ok": the process is alive and serving
    /livez                200 "ok" while the daemon's main loop turns; 503 and how long it has not
                          (`stalled()`: no turn for liveness_timeout s), so Kubernetes restarts a
                          wedged daemon
    /readyz               200 "ok" when a watch is armed, a worker is up and the state can be written,
                          else 503 and why
    /                     a small HTML status page
    /api/v1/checkpoints   {"checkpoints": reports(limit, watch)}; ?limit=1..1000 (default 50), ?watch=NAME

Handlers only call `snapshot()` / `reports()` / `stalled()` and render; they never wait on the
daemon's work, so the endpoints answer while a verification is running. /healthz, /livez and
404s are answered on the server's loop thread; /readyz, / and the API (they take the daemon's
snapshot lock) on its pool; /metrics renderings on the pool too, one at a time per content
type, shared by every request that arrived before it began (serving.Shared). A burst of requests
is held by a listen backlog of 1024 and a loop that costs little per connection
(bench/http_burst.py). Requests are logged through structlog at debug level, never to stderr.
"""

from __future__ import annotations

import html
import json
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from http import HTTPStatus
from typing import Any

import structlog
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

from ckptwatch.config import parse_listen  # the config's grammar: HOST:PORT or [V6]:PORT
from ckptwatch.daemon.model import Snapshot, WatchStatus
from ckptwatch.daemon.serving import Offload, Rendering, Request, Response, Server, Shared
from ckptwatch.daemon.webconfig import WebSettings
from ckptwatch.verify.report import clean_floats  # JSON has no NaN/Inf: null, as in `verify --json`

log = structlog.get_logger("ckptwatch.daemon.http")

DEFAULT_LIMIT = 50
MAX_LIMIT = 1000
GZIP_MIN_BYTES = 1024


def _text(status: int, text: str) -> Response:
    return status, "text/plain; charset=utf-8", text.encode(), []


def _json(status: int, obj: Any) -> Response:
    body = json.dumps(clean_floats(obj), default=str, allow_nan=False).encode()
    return status, "application/json", body, []


class StatusServer:
    """HTTP endpoints of the daemon. `snapshot()`, `reports(limit, watch)` and `stalled()` are
    called from request threads: they must be thread-safe and quick (copy under a lock, no
    waiting on work; `stalled()` takes no lock at all, so /livez answers while the loop is stuck)."""

    def __init__(
        self,
        listen: str,
        registry: CollectorRegistry,
        snapshot: Callable[[], Snapshot],
        reports: Callable[[int, str | None], list[dict]],
        stalled: Callable[[], str | None] = lambda: None,
        web_config: str | None = None,
    ) -> None:
        self._host, self._port = parse_listen(listen)
        self.web = WebSettings(web_config)  # UsageError (one line) for a bad web config file
        self.registry = registry
        self.snapshot = snapshot
        self.reports = reports
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
            "/api/v1/checkpoints": (self._checkpoints, False),
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
        if not any(w.armed for w in snap.watches):
            reasons.append("no watch armed" if snap.watches else "no watch configured")
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
        watch = query.get("watch", [""])[-1] or None
        return _json(HTTPStatus.OK, {"checkpoints": self.reports(limit, watch)})

    def _index(self, _req: Request) -> Response:
        body = render_status_page(self.snapshot()).encode()
        return HTTPStatus.OK, "text/html; charset=utf-8", body, []


# -- the status page ----------------------------------------------------------------------------------

_VERDICT_CLASS = {"pass": "pass", "warn": "warn", "fail": "fail", "error": "fail"}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222}
table{border-collapse:collapse;margin-bottom:1.5em}
th,td{border:1px solid #ccc;padding:.3em .6em;text-align:left;font-size:.9em}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#dff5df}.warn{background:#fff3cd}.fail{background:#f8d7da}.muted{color:#888}
"""


def _esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _num(value: float | int | None) -> str:
    if value is None:
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4g}"


def _when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def _duration(seconds: float) -> str:
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s}s"


def _watch_row(w: WatchStatus) -> str:
    verdict = w.last_verdict
    css = _VERDICT_CLASS.get(verdict or "", "muted")
    cells = [
        f"<td>{_esc(w.name)}</td>",
        f"<td>{'yes' if w.armed else 'no'}</td>",
        f'<td class="{css}">{_esc(verdict or "none yet")}</td>',
        f'<td class="num">{_esc(_num(w.last_step))}</td>',
        f"<td>{_esc(w.last_checkpoint or '—')}</td>",
        f"<td>{_esc(_when(w.last_time))}</td>",
        f'<td class="num">{_esc(_num(w.drift_relative_l2.get("previous")))}</td>',
        f'<td class="num">{_esc(_num(w.drift_relative_l2.get("golden")))}</td>',
        f'<td class="num">{_esc(_num(w.nonfinite))}</td>',
        f'<td class="num">{_esc(w.queue_depth)}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _step(step: int | None) -> str:
    return f" (step {step})" if step is not None else ""


def _baseline_row(w: WatchStatus) -> str:
    a = w.accepted
    accepted = (
        f"<td>{_esc(_when(a.at))}</td><td>{_esc(a.by)}</td><td>{_esc(a.checkpoint + _step(a.step))}</td>"
        f"<td>{_esc(a.reason)}</td>"
        if a
        else '<td class="muted" colspan="4">never</td>'
    )
    baseline = w.baseline_checkpoint + _step(w.baseline_step) if w.baseline_checkpoint else "none yet"
    published = w.published_checkpoint + _step(w.published_step) if w.published_checkpoint else "—"
    return f"<tr><td>{_esc(w.name)}</td><td>{_esc(baseline)}</td><td>{_esc(published)}</td>{accepted}</tr>"


def render_status_page(snap: Snapshot, now: float | None = None) -> str:
    """The HTML of `/`; every value from the snapshot is escaped."""
    now = time.time() if now is None else now
    watch_rows = "\n".join(_watch_row(w) for w in snap.watches) or '<tr><td colspan="10">no watches</td></tr>'
    worker_rows = (
        "\n".join(
            "<tr>"
            f"<td>{_esc(k.device)}</td>"
            f'<td class="{"pass" if k.up else "fail"}">{"up" if k.up else "down"}</td>'
            f'<td class="num">{_esc(k.pid if k.pid is not None else "—")}</td>'
            f'<td class="num">{_esc(k.restarts)}</td>'
            f"<td>{_esc(k.job or '—')}</td>"
            f"<td>{_esc(k.gave_up or '')}</td>"
            "</tr>"
            for k in snap.workers
        )
        or '<tr><td colspan="6">no workers</td></tr>'
    )
    baseline_rows = "\n".join(_baseline_row(w) for w in snap.watches) or '<tr><td colspan="7">no watches</td></tr>'
    ready = "ready" if snap.ready else "not ready"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>ckptwatch</title><style>{_STYLE}</style></head>
<body>
<h1>ckptwatch</h1>
<p>version {_esc(snap.version)} · up {_esc(_duration(now - snap.started))} · {ready} ·
<a href="/metrics">metrics</a> · <a href="/api/v1/checkpoints">recent reports (JSON)</a></p>
<h2>Watches</h2>
<table>
<tr><th>watch</th><th>armed</th><th>latest verdict</th><th>step</th><th>checkpoint</th><th>verified at</th>
<th>drift vs previous<br>(relative L2)</th><th>drift vs golden<br>(relative L2)</th>
<th>non-finite</th><th>queued</th></tr>
{watch_rows}
</table>
<h2>Baselines</h2>
<p>Each checkpoint is compared with its watch's baseline: the last one that passed, or one an operator
accepted with <code>ckptwatch accept WATCH [CHECKPOINT] --reason TEXT</code>. A failed checkpoint never
becomes one. publish_dir names the newest baseline.</p>
<table>
<tr><th>watch</th><th>baseline</th><th>published</th><th>last accepted at</th><th>by</th><th>checkpoint</th>
<th>reason</th></tr>
{baseline_rows}
</table>
<h2>Workers</h2>
<table>
<tr><th>device</th><th>state</th><th>pid</th><th>restarts</th><th>verifying</th><th>gave up</th></tr>
{worker_rows}
</table>
</body></html>
"""
