"""StatusServer: a real server on an ephemeral port, real HTTP requests with urllib."""

from __future__ import annotations

import gzip
import io
import json
import logging
import math
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field

import pytest
import structlog
from prometheus_client import CollectorRegistry

from ckptwatch.config import parse_listen
from ckptwatch.daemon import http as http_module
from ckptwatch.daemon.http import StatusServer, render_status_page
from ckptwatch.daemon.logs import configure_logging
from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import AcceptedBaseline, Snapshot, WatchStatus, WorkerStatus
from tests.factories import watch_status
from tests.tools import require_tool


def a_watch(name: str = "run7", armed: bool = True) -> WatchStatus:
    return watch_status(name, armed=armed, last_verdict="pass", drift_relative_l2={"previous": 0.0123, "golden": 0.5})


@dataclass
class Daemon:
    """A stand-in for the daemon's shared state: a snapshot under a lock, and a busy-work lock."""

    snap: Snapshot
    lock: threading.Lock = field(default_factory=threading.Lock)  # guards snap
    work: threading.Lock = field(default_factory=threading.Lock)  # held while "verifying"
    report_calls: list = field(default_factory=list)
    reports_list: list = field(default_factory=list)
    full: dict = field(default_factory=dict)  # id -> State.report row

    def snapshot(self) -> Snapshot:
        with self.lock:
            return self.snap

    def reports(self, limit: int, watch: str | None, verdict: str | None = None) -> list[dict]:
        self.report_calls.append((limit, watch) if verdict is None else (limit, watch, verdict))
        rows = [r for r in self.reports_list if watch is None or r["watch"] == watch]
        return [r for r in rows if verdict is None or r["verdict"] == verdict][:limit]

    def report(self, report_id: int) -> dict | None:
        return self.full.get(report_id)


@pytest.fixture
def daemon() -> Daemon:
    return Daemon(Snapshot(version="0.1.0", started=time.time() - 3725, watches=[], workers=[]))


@pytest.fixture
def server(daemon: Daemon):
    registry = CollectorRegistry()
    metrics = DaemonMetrics(registry, daemon.snapshot, top_k=5, devices=["gpu:0"], watches=["run7"])
    srv = StatusServer("127.0.0.1:0", registry, daemon.snapshot, daemon.reports, report=daemon.report)
    srv.start()
    srv.metrics = metrics  # for tests that bump counters
    yield srv
    srv.stop()


@dataclass
class Response:
    status: int
    headers: dict
    body: bytes

    @property
    def text(self) -> str:
        return self.body.decode()

    def json(self):
        return json.loads(self.body)


def get(srv: StatusServer, path: str, headers: dict | None = None, method: str = "GET", timeout: float = 5) -> Response:
    req = urllib.request.Request(srv.url + path, headers=headers or {}, method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return Response(r.status, {k.lower(): v for k, v in r.headers.items()}, r.read())
    except urllib.error.HTTPError as e:
        return Response(e.code, {k.lower(): v for k, v in e.headers.items()}, e.read())


def test_address_is_the_bound_ephemeral_port(server: StatusServer):
    host, port = server.address
    assert host == "127.0.0.1" and port > 0
    assert server.url == f"http://127.0.0.1:{port}"


def test_healthz_livez(server: StatusServer):
    for path in ("/healthz", "/livez"):
        r = get(server, path)
        assert r.status == 200 and r.text == "ok\n"
        assert r.headers["content-type"].startswith("text/plain")


def test_readyz_follows_the_snapshot(server: StatusServer, daemon: Daemon):
    r = get(server, "/readyz")
    assert r.status == 503
    assert r.text == "not ready: no watch configured; no worker up\n"

    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [a_watch(armed=False)], [WorkerStatus("gpu:0", up=False)])
    r = get(server, "/readyz")
    assert r.status == 503 and r.text == "not ready: no watch armed; no worker up\n"

    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [a_watch()], [WorkerStatus("gpu:0", up=False)])
    r = get(server, "/readyz")
    assert r.status == 503 and r.text == "not ready: no worker up\n"
    assert len(r.text.splitlines()) == 1

    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [a_watch()], [WorkerStatus("gpu:0", up=True, pid=7)])
    r = get(server, "/readyz")
    assert r.status == 200 and r.text == "ok\n"


def test_metrics_route(server: StatusServer, daemon: Daemon):
    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [a_watch()], [WorkerStatus("gpu:0", up=True)])
    server.metrics.verification_finished("run7", "pass", 2.0)
    r = get(server, "/metrics")
    assert r.status == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    assert 'ckptwatch_verifications_total{verdict="pass",watch="run7"} 1.0' in r.text
    assert 'ckptwatch_last_verdict{verdict="pass",watch="run7"} 1.0' in r.text
    assert 'ckptwatch_worker_up{device="gpu:0"} 1.0' in r.text
    assert "ckptwatch_build_info" in r.text


def test_metrics_openmetrics_and_gzip(server: StatusServer, daemon: Daemon):
    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [a_watch()], [WorkerStatus("gpu:0", up=True)])
    plain = get(server, "/metrics").text
    r = get(server, "/metrics", headers={"Accept-Encoding": "gzip"})
    assert r.status == 200 and r.headers["content-encoding"] == "gzip"
    assert gzip.decompress(r.body).decode().splitlines()[:5] == plain.splitlines()[:5]
    r = get(server, "/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert r.headers["content-type"].startswith("application/openmetrics-text")
    assert r.text.rstrip().endswith("# EOF")


def test_metrics_do_not_wait_for_daemon_work(server: StatusServer, daemon: Daemon):
    """The daemon holds its work lock for 2 s (a verification); snapshot() does not need it."""
    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [a_watch()], [WorkerStatus("gpu:0", up=True)])
    holding = threading.Event()

    def busy():
        with daemon.work:
            holding.set()
            time.sleep(2)

    t = threading.Thread(target=busy)
    t.start()
    assert holding.wait(5)
    try:
        for path in ("/metrics", "/readyz", "/", "/api/v1/checkpoints"):
            start = time.monotonic()
            r = get(server, path, timeout=1.5)
            assert r.status == 200, path
            assert time.monotonic() - start < 1.0, path
        assert daemon.work.locked()  # still busy: we were answered during the work
    finally:
        t.join()


def test_status_page(server: StatusServer, daemon: Daemon):
    daemon.snap = Snapshot(
        "0.1.0",
        daemon.snap.started,
        [a_watch(), WatchStatus(name="fresh", path="/ckpt/fresh", armed=True)],
        [WorkerStatus("gpu:0", up=True, pid=4242, restarts=2, job="/ckpt/run7/ckpt-13")],
    )
    r = get(server, "/")
    assert r.status == 200
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert page.startswith("<!DOCTYPE html>")
    assert "version 0.1.0" in page and "up 1h 2m" in page
    assert '<a href="/metrics">' in page
    for expected in ("run7", "1200", "/ckpt/run7/ckpt-12", "2023-11-14 22:13:20 UTC", "0.0123", "0.5", "fresh"):
        assert expected in page, expected
    assert "none yet" in page  # the watch with no verdict yet
    for expected in ("gpu:0", "4242", "/ckpt/run7/ckpt-13", ">up<", ">2<"):
        assert expected in page, expected
    baselines = page.split("<h2>Baselines</h2>", 1)[1].split("<h2>Workers</h2>")[0]
    for expected in (
        "/ckpt/run7/ckpt-11 (step 1100)",  # the baseline, published
        "/ckpt/run7/ckpt-9 (step 900)",  # the last acceptance: what, by whom, when, why
        ">alice<",
        "restarted from ckpt-8 on purpose",
        "2023-11-14 19:26:40 UTC",
        "never",  # the fresh watch: never accepted
    ):
        assert expected in baselines, expected


def test_status_page_escapes_everything(server: StatusServer, daemon: Daemon):
    evil = "<script>alert(1)</script>"
    w = a_watch(name="<script>")
    w.last_checkpoint = f'/ckpt/"{evil}'
    w.last_verdict = evil  # not a real verdict, but it must still be escaped
    w.accepted = AcceptedBaseline(evil, 1, f"<b>{evil}", evil, 0.0)  # `ckptwatch accept --by --reason`: any text
    daemon.snap = Snapshot(evil, daemon.snap.started, [w], [WorkerStatus("<b>gpu</b>", up=True, gave_up=evil)])
    page = get(server, "/").text
    assert "<script>" not in page
    assert "<b>gpu</b>" not in page and "<b>&lt;" not in page
    assert "&lt;script&gt;" in page and "&lt;b&gt;gpu&lt;/b&gt;" in page
    assert "&quot;" in page


def test_checkpoints_api(server: StatusServer, daemon: Daemon):
    daemon.reports_list = [
        {"watch": "run7", "verdict": "pass", "drift": {"previous": {"relative_l2": math.nan}}},
        {"watch": "other", "verdict": "fail", "drift": {"previous": None}},
    ]
    r = get(server, "/api/v1/checkpoints")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    body = r.json()
    assert [c["watch"] for c in body["checkpoints"]] == ["run7", "other"]
    assert body["checkpoints"][0]["drift"]["previous"]["relative_l2"] is None  # NaN -> null, valid JSON
    assert daemon.report_calls[-1] == (50, None)

    r = get(server, "/api/v1/checkpoints?limit=1&watch=other")
    assert r.status == 200 and [c["watch"] for c in r.json()["checkpoints"]] == ["other"]
    assert daemon.report_calls[-1] == (1, "other")

    get(server, "/api/v1/checkpoints?limit=100000")
    assert daemon.report_calls[-1] == (1000, None)  # capped

    calls = len(daemon.report_calls)
    for bad in ("abc", "0", "-3", "1.5", ""):
        r = get(server, f"/api/v1/checkpoints?limit={bad}")
        assert r.status == 400, bad
        assert r.headers["content-type"] == "application/json"
        assert "limit" in r.json()["error"]
    assert len(daemon.report_calls) == calls


def test_unknown_paths_are_404(server: StatusServer):
    for path in ("/nope", "/metrics/extra", "/api/v1", "/api/v1/checkpoints/3", "/checkpoints/3", "/checkpoints/x",
                 "/api/v1/checkpoints/0", "/api/v1/checkpoints/-1", "/checkpoints/1/extra"):  # fmt: skip
        r = get(server, path)
        assert r.status == 404, path


def test_head(server: StatusServer):
    r = get(server, "/healthz", method="HEAD")
    assert r.status == 200 and r.body == b"" and r.headers["content-length"] == "3"


@pytest.fixture
def json_logs():
    """configure_logging at debug into a buffer; the process-wide logging state is put back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    buf = io.StringIO()
    configure_logging("json", buf, level="debug")
    yield buf
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    logging.getLogger("ckptwatch").setLevel(logging.NOTSET)
    structlog.reset_defaults()


def test_requests_go_to_structlog_not_stderr(server: StatusServer, json_logs: io.StringIO, capfd):
    get(server, "/healthz")
    get(server, "/nope")
    get(server, "/api/v1/checkpoints?limit=x")
    out, err = capfd.readouterr()
    assert err == "" and out == ""
    events = [json.loads(line) for line in json_logs.getvalue().splitlines()]
    requests = [e for e in events if e["event"] == "http request"]
    assert len(requests) == 3
    assert all(e["level"] == "debug" and e["logger"] == "ckptwatch.daemon.http" for e in requests)
    assert '"GET /nope HTTP/1.1" 404' in requests[1]["message"]


def test_handler_error_is_500_not_a_crash(daemon: Daemon, json_logs: io.StringIO, capfd):
    def broken(limit, watch):
        raise RuntimeError("database is locked")

    srv = StatusServer("127.0.0.1:0", CollectorRegistry(), daemon.snapshot, broken)
    srv.start()
    try:
        r = get(srv, "/api/v1/checkpoints")
        assert r.status == 500 and "database" not in r.text
        assert get(srv, "/healthz").status == 200  # still serving
    finally:
        srv.stop()
    assert capfd.readouterr().err == ""
    (failure,) = [json.loads(x) for x in json_logs.getvalue().splitlines() if "handler failed" in x]
    assert failure["level"] == "error" and "database is locked" in failure["exception"]


def test_stop_releases_the_port(daemon: Daemon):
    srv = StatusServer("127.0.0.1:0", CollectorRegistry(), daemon.snapshot, daemon.reports)
    srv.start()
    port = srv.address[1]
    srv.stop()
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))
    srv.stop()  # idempotent


def _ipv6_loopback() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="no IPv6 loopback here")
def test_ipv6_listen(daemon: Daemon):
    srv = StatusServer("[::1]:0", CollectorRegistry(), daemon.snapshot, daemon.reports)
    srv.start()
    try:
        host, port = srv.address
        assert host == "::1" and port > 0
        assert srv.url == f"http://[::1]:{port}"
        assert get(srv, "/healthz").status == 200
    finally:
        srv.stop()


def test_listen_address_is_parsed_by_the_config_grammar(daemon: Daemon):
    """One listen-address parser: the server takes what `[daemon] listen` validated, and refuses
    what the config refuses (":PORT" too: the host is written out, 0.0.0.0 or 127.0.0.1)."""
    assert http_module.parse_listen is parse_listen
    for good, address in (("127.0.0.1:9847", ("127.0.0.1", 9847)), ("[::1]:0", ("::1", 0))):
        assert StatusServer(good, CollectorRegistry(), daemon.snapshot, daemon.reports).address == address
    for bad in (":9847", "9847", "host:", "host:http", "::1:9847", "[::1]9847", "[::1", "h:70000"):
        with pytest.raises(ValueError, match=r"HOST|port|brackets"):
            StatusServer(bad, CollectorRegistry(), daemon.snapshot, daemon.reports)


def test_render_status_page_without_watches():
    page = render_status_page(Snapshot("0.1.0", 0.0, [], []), now=59.0)
    assert "no watches" in page and "no workers" in page and "up 0m 59s" in page and "not ready" in page


def test_promtool_check_metrics(server: StatusServer, daemon: Daemon):
    promtool = require_tool("promtool", "Debian package `prometheus`")
    daemon.snap = Snapshot(
        "0.1.0",
        daemon.snap.started,
        [a_watch("run7"), a_watch("run8"), WatchStatus(name="fresh", path="/x", armed=True)],
        [WorkerStatus("gpu:0", up=True), WorkerStatus("gpu:1", up=False, restarts=1)],
    )
    m = server.metrics
    m.verification_finished("run7", "pass", 0.3)
    m.verification_finished("run8", "fail", 700)
    m.checkpoint_skipped("run7", "vanished")
    m.worker_restarted("gpu:1")
    scrape = get(server, "/metrics").body
    assert b"ckptwatch_tensor_drift_relative_l2" in scrape
    p = subprocess.run([promtool, "check", "metrics"], input=scrape, capture_output=True, timeout=60, check=False)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b""), p.stdout.decode() + p.stderr.decode()


EVIL = '<img src=x onerror=alert(1)>"'


def a_full_report(rid: int, path: str = "/ckpt/run7/ckpt-13") -> dict:
    """A stored verification as State.report gives it: a failing NaN checkpoint."""
    tensors = [
        {"name": f"layer{j}/kernel/.ATTRIBUTES/VARIABLE_VALUE", "display": f"layer{j}/kernel", "kind": "weight",
         "dtype": "float32", "shape": [4, 4], "bytes": 64,
         "stats": {"nan": 16 if j == 2 else 0, "inf": 0, "min": -1.0, "max": 1.0},
         "drift": {"previous": {"relative_l2": 0.01 * j}, "golden": None}}
        for j in range(5)
    ]  # fmt: skip
    return {
        "id": rid, "watch": "run7", "path": path, "step": 1300, "verdict": "fail", "finished": 1_700_000_000.0,
        "duration": 2.0,
        "report": {
            "schema": "ckptwatch.report/v1",
            "checkpoint": {"path": path, "format": "tf2", "step": 1300, "tensors": 5, "bytes": 320},
            "verdict": "fail",
            "findings": [
                {"severity": "fail", "check": "nonfinite", "tensor": "layer2/kernel/.ATTRIBUTES/VARIABLE_VALUE",
                 "reference": None, "message": "16 NaN values", "value": 16, "limit": 0},
                {"severity": "warn", "check": "drift.jump", "tensor": "layer4/kernel/.ATTRIBUTES/VARIABLE_VALUE",
                 "reference": "previous", "message": "moved", "value": 0.04, "limit": 0.03,
                 "expected": {"median": 0.01, "max": 0.02}, "basis": "history"},
            ],
            "references": {"previous": "/ckpt/run7/ckpt-12", "golden": None},
            "drift": {"previous": {"relative_l2": 0.02, "max_abs": 0.1, "cosine": 0.99, "changed_fraction": 1.0},
                      "golden": None},
            "tensors": tensors,
            "model": {"device": "cpu", "restore": {"status": "consumed"}, "functional": None},
            "timings": {"total_seconds": 2.0},
        },
    }  # fmt: skip


def a_summary(rid: int | None, step: int, verdict: str, drift: float | None) -> dict:
    return {
        "id": rid, "watch": "run7", "path": f"/ckpt/run7/ckpt-{step}", "step": step, "verdict": verdict,
        "finished": 1_700_000_000.0 + step, "duration": 1.0, "counts": {"fail": int(verdict == "fail"), "warn": 0},
        "findings": [{"severity": "fail", "check": "nonfinite", "tensor": "layer2/kernel", "message": "NaN"}]
        if verdict == "fail" else [],
        "drift": {"previous": {"relative_l2": drift, "max_abs": None}, "golden": {"relative_l2": 0.5, "max_abs": None}},
        "nonfinite": 0,
    }  # fmt: skip


def test_watches_api(server: StatusServer, daemon: Daemon):
    w = a_watch()
    w.findings = [{"severity": "fail", "check": "nonfinite", "tensor": "layer2/kernel", "message": "NaN"}]
    w.finding_counts = {("nonfinite", "fail"): 1}
    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [w, WatchStatus(name="off", path="/x")], [])
    r = get(server, "/api/v1/watches")
    assert r.status == 200 and r.headers["content-type"] == "application/json"
    watches = r.json()["watches"]
    assert [x["name"] for x in watches] == ["run7", "off"]
    assert watches[0]["findings"][0]["tensor"] == "layer2/kernel" and watches[0]["last_verdict"] == "pass"
    assert watches[0]["accepted"]["by"] == "alice" and watches[0]["baseline_step"] == 1100
    assert watches[1]["armed"] is False and watches[1]["last_verdict"] is None


def test_checkpoints_api_filters_and_unknown_watch(server: StatusServer, daemon: Daemon):
    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [a_watch()], [])
    daemon.reports_list = [a_summary(3, 30, "fail", 0.2), a_summary(2, 20, "pass", 0.01)]
    r = get(server, "/api/v1/checkpoints?verdict=fail&watch=run7")
    assert r.status == 200 and [c["id"] for c in r.json()["checkpoints"]] == [3]
    assert daemon.report_calls[-1] == (50, "run7", "fail")
    r = get(server, "/api/v1/checkpoints?verdict=bogus")
    assert r.status == 400 and "verdict" in r.json()["error"]
    r = get(server, "/api/v1/checkpoints?watch=nope")
    assert r.status == 404 and "nope" in r.json()["error"]
    r = get(server, "/api/v1/checkpoints?watch=run7&verdict=error")
    assert r.status == 200 and r.json()["checkpoints"] == [], "a configured watch: an empty list, not 404"
    daemon.reports_list.append({**a_summary(1, 10, "pass", 0.01), "watch": "retired"})
    r = get(server, "/api/v1/checkpoints?watch=retired")
    assert r.status == 200 and len(r.json()["checkpoints"]) == 1, "no longer configured, but its reports are kept"


def test_checkpoint_json_and_page(server: StatusServer, daemon: Daemon):
    daemon.full[7] = a_full_report(7)
    r = get(server, "/api/v1/checkpoints/7")
    assert r.status == 200 and r.json()["checkpoint"]["report"]["findings"][0]["check"] == "nonfinite"
    r = get(server, "/checkpoints/7")
    assert r.status == 200 and r.headers["content-type"] == "text/html; charset=utf-8"
    page = r.text
    assert "<code>nonfinite</code>" in page and "<code>layer2/kernel</code>" in page
    assert "value 16; limit 0" in page and "expected median 0.01, max 0.02; basis history" in page
    tensors = page.split('<table class="tensors">', 1)[1]
    order = [tensors.index(f"layer{j}/kernel") for j in (2, 4, 3, 1, 0)]
    assert order == sorted(order), "worst first: the NaN tensor, then by drift"
    assert "consumed" in page.split("<h2>Model-aware checks</h2>", 1)[1], "model-aware results shown"
    assert '<a href="/api/v1/checkpoints/7">' in page and '<a href="/">' in page
    assert get(server, "/checkpoints/8").status == 404


def test_pages_escape_file_names(server: StatusServer, daemon: Daemon):
    path = f"/ckpt/run7/{EVIL}"
    daemon.full[9] = a_full_report(9, path)
    daemon.full[9]["report"]["findings"][0]["message"] = EVIL
    daemon.full[9]["report"]["model"] = {"restore": {"status": EVIL}}
    page = get(server, "/checkpoints/9").text
    assert "<img" not in page and "&lt;img src=x onerror=alert(1)&gt;&quot;" in page
    w = a_watch()
    w.last_checkpoint = path
    w.findings = [{"severity": "fail", "check": EVIL, "tensor": EVIL, "message": EVIL}]
    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [w], [])
    daemon.reports_list = [{**a_summary(9, 30, "fail", 0.2), "path": path, "findings": w.findings}]
    page = get(server, "/").text
    assert "<img" not in page and page.count("&lt;img") >= 4


def test_status_page_history_timeline_and_drift(server: StatusServer, daemon: Daemon):
    w = a_watch()
    w.last_verdict, w.last_checkpoint, w.last_step = "fail", "/ckpt/run7/ckpt-50", 50
    w.findings = [{"severity": "fail", "check": "nonfinite", "tensor": "layer2/kernel", "message": "NaN", "limit": 0}]
    daemon.snap = Snapshot("0.1.0", daemon.snap.started, [w], [])
    daemon.reports_list = [a_summary(i, 10 * i, "fail" if i == 5 else "pass", 0.01 * i) for i in range(5, 0, -1)]
    daemon.reports_list.insert(0, a_summary(None, 60, "pass", None))  # kept in memory: no id yet
    page = get(server, "/").text
    assert '<meta http-equiv="refresh"' in page
    section = page.split('<section class="watch" id="watch-run7">', 1)[1].split("</section>", 1)[0]
    assert "<code>nonfinite</code>" in section and "<code>layer2/kernel</code>" in section
    timeline = section.split('<svg class="timeline"', 1)[1].split("</svg>", 1)[0]
    assert timeline.count("<rect") == 6 and timeline.count('<a href="/checkpoints/') == 5
    assert timeline.index("step 10:") < timeline.index("step 50: fail — nonfinite") < timeline.index("step 60")
    chart = section.split('<svg class="drift-chart"', 1)[1].split("</svg>", 1)[0]
    assert chart.count('class="drift previous"') == 5 and chart.count('class="drift golden"') == 6
    assert "<polyline" in chart
    assert '<a href="/checkpoints/5">' in section, "recent checkpoints link to their pages"
    assert "http://" not in page.replace('xmlns="http://www.w3.org/2000/svg"', ""), "no external asset"
    assert "<script" not in page
