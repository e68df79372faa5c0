"""Why a checkpoint failed, where an operator looks: the findings metric, the log, the API and the
status page of a real daemon, the page rendered by a real browser (Debian's headless Chromium).

A training run writes two good checkpoints and then one whose kernel is NaN; the daemon must say
`nonfinite` on `model/kernel` in /metrics (check id only), in the "checkpoint verified" log event,
in /api/v1 (summaries in lists, the full report by id) and on the pages, escaped (the run's
directory name holds markup). The screenshot Chromium takes is kept in the test's tmp dir.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.daemon.state import State
from tests.e2e.conftest import GOOD, DaemonProc, Trainer, outcome
from tests.tools import require_tool

GOOD_BEFORE = 4  # good checkpoints before the NaN one
MARKUP = "<b>bold"  # in the run directory's name (no slash in a name): text, never an element


def chromium(*args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    exe = require_tool("chromium", "Debian package chromium; `make tools` installs it")
    cmd = [
        exe,
        "--headless",
        "--no-sandbox",  # root in containers and CI
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        "--hide-scrollbars",
        *args,
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def dump_dom(url: str, profile: Path) -> str:
    done = chromium(f"--user-data-dir={profile}", "--dump-dom", url)
    assert done.returncode == 0 and "<html" in done.stdout, done.stderr[-2000:]
    return done.stdout


def screenshot(url: str, profile: Path, target: Path, size: str = "1200,1400") -> Path:
    done = chromium(f"--user-data-dir={profile}", f"--screenshot={target}", f"--window-size={size}", url)
    assert done.returncode == 0 and target.exists(), done.stderr[-2000:]
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return target


def findings_series(d: DaemonProc, watch: str) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(d.scrape()):
        if family.name == "ckptwatch_last_findings":
            for s in family.samples:
                assert set(s.labels) == {"watch", "check", "severity"}, s.labels
                if s.labels["watch"] == watch:
                    out[(s.labels["check"], s.labels["severity"])] = s.value
    return out


def a_run_that_goes_nan(tf, daemon_factory, tmp_path: Path) -> tuple[DaemonProc, Trainer, str]:
    run = tmp_path / f"run{MARKUP}"
    run.mkdir()
    trainer = Trainer(tf, run)
    golden = trainer.write(tmp_path / "golden" / "ckpt")
    d = daemon_factory([{"name": "run", "path": str(run), "golden": golden}])
    for _ in range(GOOD_BEFORE):
        assert outcome(d, trainer.save())["verdict"] in GOOD
    trainer.step()  # every weight moves, as in training...
    kernel = trainer.net.kernel.numpy()
    trainer.net.kernel.assign(np.full(kernel.shape, np.nan, dtype="float32"))  # ...and one diverged
    bad = trainer.save(train=False)
    assert outcome(d, bad)["verdict"] == "fail"
    trainer.net.kernel.assign(kernel)  # for a later good checkpoint
    return d, trainer, bad


def test_why_a_checkpoint_failed_is_in_metrics_log_api_and_the_browser(tf, daemon_factory, tmp_path: Path):
    d, trainer, bad = a_run_that_goes_nan(tf, daemon_factory, tmp_path)
    tensor = "model/kernel"

    # metrics: the check id, never the tensor
    assert findings_series(d, "run") == {("nonfinite", "fail"): 1.0}
    assert tensor not in "".join(line for line in d.scrape().splitlines() if "last_findings" in line)

    # the log: the failing check with its tensor
    (verified,) = d.events("checkpoint verified", checkpoint=bad)
    assert verified["failing"] == [f"nonfinite:{tensor}"] and verified["failing_total"] == 1, verified

    # the API: the watch, the summaries, the full report by id
    status, body = d.get("/api/v1/watches")
    assert status == 200, body
    (watch,) = json.loads(body)["watches"]
    assert watch["name"] == "run" and watch["last_verdict"] == "fail"
    assert [(f["check"], f["tensor"]) for f in watch["findings"]] == [("nonfinite", tensor)]
    failed = d.api(watch="run", verdict="fail")
    assert [r["path"] for r in failed] == [bad] and len(d.api(watch="run", verdict="pass")) == GOOD_BEFORE
    assert failed[0]["drift"]["golden"]["relative_l2"] is None, "a NaN weight: no drift figure that understates it"
    assert "report" not in failed[0] and failed[0]["findings"][0]["tensor"] == tensor
    assert d.full_report(failed[0])["checkpoint"]["path"] == bad
    assert d.get("/api/v1/checkpoints?watch=nope")[0] == 404

    # the pages, rendered by a real browser
    profile = tmp_path / "chromium-profile"
    dom = dump_dom(d.url + "/", profile)
    section = dom.split('id="watch-run"', 1)[1]
    findings = section.split('class="findings"', 1)[1].split("</table>", 1)[0]
    assert "nonfinite" in findings and tensor in findings, findings
    assert "<b>" not in dom and "run&lt;b&gt;bold" in dom, "markup in a file name is text"
    assert dom.count('class="verdict ') == GOOD_BEFORE + 1 and 'class="drift-chart"' in dom
    chart = dom.split('class="drift-chart"', 1)[1].split("</svg>", 1)[0]
    assert chart.count('class="drift golden"') == GOOD_BEFORE, "no drift point for the NaN checkpoint"
    assert chart.count('class="failed"') == 1, "the NaN checkpoint is marked"
    link = f'href="/checkpoints/{failed[0]["id"]}"'
    assert link in section
    shot = screenshot(d.url + "/", profile, tmp_path / "status-page.png")
    assert shot.stat().st_size > 10_000  # something was drawn

    page = dump_dom(f"{d.url}/checkpoints/{failed[0]['id']}", profile)
    assert "nonfinite" in page and tensor in page and "<b>" not in page
    tensors = page.split('class="tensors"', 1)[1]
    assert tensors.index(tensor) < min(tensors.index(n) for n in ("model/bias", "model/head", "model/embedding"))
    screenshot(f"{d.url}/checkpoints/{failed[0]['id']}", profile, tmp_path / "checkpoint-page.png")

    # a later good checkpoint: the check no longer applies, its series goes
    good = trainer.save()
    assert outcome(d, good)["verdict"] in GOOD
    assert findings_series(d, "run") == {}


def rss(pid: int) -> int:
    """Resident set size of a process in bytes, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for pid {pid}")


@pytest.mark.slow
def test_main_process_memory_stays_flat_under_repeated_list_calls(tf, daemon_factory, tmp_path: Path):
    """200 calls of /api/v1/checkpoints?limit=1000 over 1,200 stored reports of a 68-tensor
    checkpoint: lists carry summaries, so the daemon's main process stays flat."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run, big=(64, 16))
    path = trainer.save()
    assert outcome(d, path)["verdict"] in GOOD
    assert d.stop() == 0
    state = State(str(d.state_dir))
    try:
        ((report,),) = state._db.execute("SELECT report FROM reports").fetchall()
        stored = json.loads(report)
        assert len(stored["tensors"]) >= 64
        for i in range(1200):
            state.record_report("run", f"{path}-copy{i}", f"copy{i}", 1000 + i, stored, finished=time.time() + i)
    finally:
        state.close()
    d.start()
    before = rss(d.pid)
    sizes = []
    for _ in range(200):
        status, body = d.get("/api/v1/checkpoints?limit=1000", timeout=30)
        assert status == 200
        sizes.append(len(body))
    after = rss(d.pid)
    rows = json.loads(body)["checkpoints"]
    assert len(rows) == 1000 and all("report" not in r for r in rows)
    assert max(sizes) < 1000 * 2048, f"{max(sizes)} bytes for 1000 summaries"
    grown = after - before
    assert grown < 30 * 2**20, f"main process grew by {grown / 2**20:.1f} MiB over 200 calls"
