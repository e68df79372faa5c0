"""DaemonMetrics: counters, histogram, and the snapshot collector, scraped from a real registry."""

from __future__ import annotations

import importlib.metadata
import math
import platform
import subprocess
from pathlib import Path

import psutil
import pytest
from prometheus_client import CollectorRegistry, generate_latest

import ckptwatch
from ckptwatch.daemon import buildinfo
from ckptwatch.daemon.metrics import DURATION_BUCKETS, DaemonMetrics
from ckptwatch.daemon.model import VERDICTS, Snapshot, TensorDrift, WatchStatus, WorkerStatus
from tests.factories import watch_status

ROOT = Path(__file__).resolve().parents[2]


class Box:
    """Holds the snapshot the collector reads; tests swap it between scrapes."""

    def __init__(self, snap: Snapshot):
        self.snap = snap
        self.calls = 0

    def __call__(self) -> Snapshot:
        self.calls += 1
        return self.snap


def snapshot(watches=(), workers=()) -> Snapshot:
    return Snapshot(version="9.9.9", started=1000.0, watches=list(watches), workers=list(workers))


def make(snap: Snapshot, **kwargs):
    reg = CollectorRegistry()
    box = Box(snap)
    return reg, box, DaemonMetrics(reg, box, **kwargs)


def val(reg: CollectorRegistry, name: str, **labels) -> float | None:
    return reg.get_sample_value(name, labels)


def tensor_val(reg: CollectorRegistry, watch: str, reference: str, tensor: str) -> float | None:
    labels = {"watch": watch, "reference": reference, "tensor": tensor}
    return reg.get_sample_value("ckptwatch_tensor_drift_relative_l2", labels)


def names_of(reg: CollectorRegistry, family: str) -> list[dict]:
    return [s.labels for m in reg.collect() if m.name == family for s in m.samples]


def test_registration_does_not_scrape():
    _, box, _ = make(snapshot([watch_status()]))
    assert box.calls == 0  # describe() answered registration


def test_every_snapshot_metric():
    w = watch_status()
    reg, _, _ = make(snapshot([w], [WorkerStatus("gpu:0", up=True, pid=42, restarts=1)]))
    assert val(reg, "ckptwatch_last_verification_timestamp_seconds", watch="run7") == 1_700_000_000.5
    assert val(reg, "ckptwatch_last_pass_timestamp_seconds", watch="run7") == 1_699_999_000.25
    assert val(reg, "ckptwatch_last_checkpoint_seen_timestamp_seconds", watch="run7") == 1_700_000_100.75
    assert val(reg, "ckptwatch_last_checkpoint_step", watch="run7") == 1200
    assert val(reg, "ckptwatch_checkpoint_bytes", watch="run7") == 123_456_789
    assert val(reg, "ckptwatch_drift_relative_l2", watch="run7", reference="previous") == 0.0125
    assert val(reg, "ckptwatch_drift_relative_l2", watch="run7", reference="golden") == 0.75
    assert val(reg, "ckptwatch_drift_max_abs", watch="run7", reference="previous") == 0.5
    assert val(reg, "ckptwatch_drift_max_abs", watch="run7", reference="golden") == 4.0
    assert tensor_val(reg, "run7", "previous", "dense/kernel") == 0.02
    assert tensor_val(reg, "run7", "golden", "dense/kernel") == 0.9
    assert val(reg, "ckptwatch_nonfinite_values", watch="run7") == 3
    assert val(reg, "ckptwatch_queue_depth", watch="run7") == 2
    assert val(reg, "ckptwatch_worker_up", device="gpu:0") == 1
    assert val(reg, "ckptwatch_functional_agreement_ratio", watch="run7", reference="golden") == 0.984375
    assert val(reg, "ckptwatch_functional_output_max_abs_diff", watch="run7", reference="golden") == 0.125
    assert val(reg, "ckptwatch_restore_unmatched_objects", watch="run7") == 1
    assert val(reg, "ckptwatch_baseline_step", watch="run7") == 1100
    assert val(reg, "ckptwatch_baseline_accepted_timestamp_seconds", watch="run7") == 1_699_990_000.0
    # absent references stay absent
    assert val(reg, "ckptwatch_functional_agreement_ratio", watch="run7", reference="previous") is None


def test_last_verdict_is_a_state_set():
    reg, box, _ = make(snapshot([watch_status()]))
    assert {v: val(reg, "ckptwatch_last_verdict", watch="run7", verdict=v) for v in VERDICTS} == {
        "pass": 0,
        "warn": 1,
        "fail": 0,
        "error": 0,
    }
    box.snap.watches[0].last_verdict = "fail"
    assert {v: val(reg, "ckptwatch_last_verdict", watch="run7", verdict=v) for v in VERDICTS} == {
        "pass": 0,
        "warn": 0,
        "fail": 1,
        "error": 0,
    }
    assert sum(s["verdict"] == "fail" for s in names_of(reg, "ckptwatch_last_verdict")) == 1


def test_fresh_watch_exports_only_queue_depth():
    fresh = WatchStatus(name="new", path="/ckpt/new", armed=True)
    reg, _, _ = make(snapshot([fresh]))
    assert val(reg, "ckptwatch_queue_depth", watch="new") == 0  # every configured watch, 0 included
    for family in (
        "ckptwatch_last_verdict",
        "ckptwatch_last_verification_timestamp_seconds",
        "ckptwatch_last_pass_timestamp_seconds",
        "ckptwatch_last_checkpoint_seen_timestamp_seconds",
        "ckptwatch_last_checkpoint_step",
        "ckptwatch_checkpoint_bytes",
        "ckptwatch_drift_relative_l2",
        "ckptwatch_drift_max_abs",
        "ckptwatch_tensor_drift_relative_l2",
        "ckptwatch_nonfinite_values",
        "ckptwatch_functional_agreement_ratio",
        "ckptwatch_functional_output_max_abs_diff",
        "ckptwatch_restore_unmatched_objects",
        "ckptwatch_baseline_step",
        "ckptwatch_baseline_accepted_timestamp_seconds",
    ):
        assert names_of(reg, family) == [], family


def test_none_values_are_omitted():
    w = watch_status()
    w.last_step = None  # e.g. a .weights.h5 file has no step
    w.nonfinite = None
    w.restore_unmatched = None
    w.accepted = None  # never accepted
    reg, _, _ = make(snapshot([w]))
    assert val(reg, "ckptwatch_last_checkpoint_step", watch="run7") is None
    assert val(reg, "ckptwatch_nonfinite_values", watch="run7") is None
    assert val(reg, "ckptwatch_restore_unmatched_objects", watch="run7") is None
    assert val(reg, "ckptwatch_baseline_accepted_timestamp_seconds", watch="run7") is None
    assert val(reg, "ckptwatch_checkpoint_bytes", watch="run7") == 123_456_789


def test_nan_drift_is_exported_as_nan():
    w = watch_status()
    w.drift_relative_l2 = {"previous": math.nan}
    reg, _, _ = make(snapshot([w]))
    assert math.isnan(val(reg, "ckptwatch_drift_relative_l2", watch="run7", reference="previous"))


def test_top_k_truncation_and_order():
    w = watch_status()
    w.top_tensors = [TensorDrift("previous", f"layer{i}/kernel", i / 100) for i in range(20)]
    w.top_tensors += [TensorDrift("golden", f"layer{i}/kernel", 1 + i) for i in range(3)]
    w.top_tensors.append(TensorDrift("previous", "broken/kernel", math.nan))
    reg, _, _ = make(snapshot([w]), top_k=5)
    samples = [
        s for m in reg.collect() if m.name == "ckptwatch_tensor_drift_relative_l2" for s in m.samples
    ]  # fmt: skip
    prev = [(s.labels["tensor"], s.value) for s in samples if s.labels["reference"] == "previous"]
    golden = [(s.labels["tensor"], s.value) for s in samples if s.labels["reference"] == "golden"]
    # worst first: NaN (a broken tensor) ranks as the worst
    assert [t for t, _ in prev] == ["broken/kernel", *(f"layer{i}/kernel" for i in (19, 18, 17, 16))]
    assert math.isnan(prev[0][1]) and prev[1][1] == 0.19
    assert [t for t, _ in golden] == ["layer2/kernel", "layer1/kernel", "layer0/kernel"]  # fewer than K: all
    assert tensor_val(reg, "run7", "previous", "layer15/kernel") is None


def test_top_k_zero_exports_no_tensor_series():
    reg, _, _ = make(snapshot([watch_status()]), top_k=0)
    assert names_of(reg, "ckptwatch_tensor_drift_relative_l2") == []


def test_removed_watch_disappears_from_next_scrape():
    reg, box, _ = make(snapshot([watch_status("a"), watch_status("b")]))
    assert val(reg, "ckptwatch_queue_depth", watch="b") == 2
    assert val(reg, "ckptwatch_last_verdict", watch="b", verdict="warn") == 1
    box.snap = snapshot([watch_status("a")])
    text = generate_latest(reg).decode()
    assert 'watch="b"' not in text
    assert 'watch="a"' in text


def test_workers_and_configured_devices():
    workers = [WorkerStatus("gpu:0", up=True), WorkerStatus("gpu:1", up=False, restarts=3)]
    reg, box, m = make(snapshot([], workers), devices=["gpu:0", "gpu:1", "gpu:2"])
    assert val(reg, "ckptwatch_worker_up", device="gpu:0") == 1
    assert val(reg, "ckptwatch_worker_up", device="gpu:1") == 0
    assert val(reg, "ckptwatch_worker_up", device="gpu:2") == 0  # configured, not reported yet
    for d in ("gpu:0", "gpu:1", "gpu:2"):  # pre-created: 0 is exported
        assert val(reg, "ckptwatch_worker_restarts_total", device=d) == 0
    m.worker_restarted("gpu:1")
    m.worker_restarted("gpu:1")
    assert val(reg, "ckptwatch_worker_restarts_total", device="gpu:1") == 2
    box.snap = snapshot([], [WorkerStatus("gpu:0", up=False)])
    assert val(reg, "ckptwatch_worker_up", device="gpu:0") == 0


def test_counters_and_histogram():
    reg, _, m = make(snapshot([watch_status()]))
    m.verification_finished("run7", "pass", 0.07)
    m.verification_finished("run7", "pass", 12.0)
    m.verification_finished("run7", "fail", 1500.0)
    m.verification_finished("other", "error", None)  # no duration known: counted, not observed
    m.checkpoint_skipped("run7", "vanished")
    m.checkpoint_skipped("run7", "coalesced")
    m.checkpoint_skipped("run7", "coalesced")

    assert val(reg, "ckptwatch_verifications_total", watch="run7", verdict="pass") == 2
    assert val(reg, "ckptwatch_verifications_total", watch="run7", verdict="fail") == 1
    assert val(reg, "ckptwatch_verifications_total", watch="other", verdict="error") == 1
    assert val(reg, "ckptwatch_checkpoints_skipped_total", watch="run7", reason="vanished") == 1
    assert val(reg, "ckptwatch_checkpoints_skipped_total", watch="run7", reason="coalesced") == 2

    h = "ckptwatch_verification_duration_seconds"
    assert val(reg, h + "_count", watch="run7") == 3
    assert val(reg, h + "_sum", watch="run7") == pytest.approx(1512.07)
    assert val(reg, h + "_bucket", watch="run7", le="0.1") == 1
    assert val(reg, h + "_bucket", watch="run7", le="30.0") == 2
    assert val(reg, h + "_bucket", watch="run7", le="1800.0") == 3
    assert val(reg, h + "_bucket", watch="run7", le="+Inf") == 3
    assert val(reg, h + "_count", watch="other") is None
    assert DURATION_BUCKETS[0] == 0.05 and DURATION_BUCKETS[-2] == 1800


def test_watches_preseed_counters_at_zero():
    reg, _, _ = make(snapshot([]), watches=["run7"])
    for verdict in VERDICTS:
        assert val(reg, "ckptwatch_verifications_total", watch="run7", verdict=verdict) == 0
    assert val(reg, "ckptwatch_checkpoints_skipped_total", watch="run7", reason="vanished") == 0
    assert val(reg, "ckptwatch_verification_duration_seconds_count", watch="run7") == 0


def test_build_info():
    reg, _, _ = make(snapshot([]))
    [labels] = names_of(reg, "ckptwatch_build_info")
    assert labels["version"] == ckptwatch.__version__
    assert labels["python"] == platform.python_version()
    # the installed TensorFlow, from its metadata (the main process never imports it)
    assert labels["tensorflow"] == importlib.metadata.version("tensorflow")
    # this test runs from a git checkout: the commit it has checked out
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True)
    assert labels["revision"] == head.stdout.strip()
    assert val(reg, "ckptwatch_build_info", **labels) == 1
    reg2, _, _ = make(snapshot([]), version="1.2.3")
    assert names_of(reg2, "ckptwatch_build_info")[0]["version"] == "1.2.3"


def test_git_revision_of_a_branch_in_packed_refs_and_of_a_detached_head(tmp_path):
    """Read from .git without running git: a loose ref, a ref only in packed-refs, a detached HEAD,
    a worktree (.git is a file); no repository: None."""
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main"]
    repo = tmp_path / "repo"
    subprocess.run([*git, "init", "-q", str(repo)], check=True)
    subprocess.run([*git, "-C", str(repo), "commit", "-q", "--allow-empty", "-m", "x"], check=True)
    head = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    (repo / "pkg").mkdir()
    assert buildinfo.git_revision(str(repo / "pkg")) == head
    subprocess.run(["git", "-C", str(repo), "pack-refs", "--all"], check=True)
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert buildinfo.git_revision(str(repo / "pkg")) == head
    subprocess.run(["git", "-C", str(repo), "worktree", "add", "-q", str(tmp_path / "wt"), "-b", "other"], check=True)
    assert buildinfo.git_revision(str(tmp_path / "wt")) == head
    subprocess.run(["git", "-C", str(repo), "checkout", "-q", "--detach"], check=True)
    assert buildinfo.git_revision(str(repo)) == head
    assert buildinfo.git_revision("/") is None


def test_process_and_platform_metrics_of_the_daemon_registry():
    reg, _, _ = make(snapshot([]))
    assert val(reg, "process_resident_memory_bytes") > 1e6
    assert val(reg, "process_open_fds") >= 3
    assert val(reg, "process_max_fds") > 0
    assert val(reg, "process_cpu_seconds_total") > 0
    assert abs(val(reg, "process_start_time_seconds") - psutil.Process().create_time()) < 2
    assert names_of(reg, "python_info")[0]["version"] == platform.python_version()


def test_every_family_has_help_and_type():
    reg, _, _ = make(snapshot([watch_status()], [WorkerStatus("cpu", up=True)]))
    text = generate_latest(reg).decode()
    for line in text.splitlines():
        if line.startswith("# HELP "):
            assert len(line.split(" ", 3)[3]) > 20, line  # a meaningful help string
    assert "# TYPE ckptwatch_last_verdict gauge" in text
    assert "# TYPE ckptwatch_verifications_total counter" in text
    assert "# TYPE ckptwatch_verification_duration_seconds histogram" in text


def test_two_instances_do_not_share_state():
    reg1, _, m1 = make(snapshot([]))
    reg2, _, _ = make(snapshot([]))
    m1.verification_finished("w", "pass", 1.0)
    assert val(reg1, "ckptwatch_verifications_total", watch="w", verdict="pass") == 1
    assert val(reg2, "ckptwatch_verifications_total", watch="w", verdict="pass") is None


def test_seen_without_any_pass_exports_seen_only():
    w = WatchStatus(name="failing", path="/ckpt/failing", armed=True, last_verdict="fail", last_time=2000.0)
    w.last_seen_time = 1990.0
    reg, _, _ = make(snapshot([w]))
    assert val(reg, "ckptwatch_last_checkpoint_seen_timestamp_seconds", watch="failing") == 1990.0
    assert val(reg, "ckptwatch_last_pass_timestamp_seconds", watch="failing") is None  # never passed: absent


def test_state_last_pass_times_ignore_fail_and_error(tmp_path):
    from ckptwatch.daemon.state import State

    state = State(str(tmp_path / "state"))
    try:
        assert state.last_pass_times() == {}
        state.record_report("a", "/a/ckpt-1", "k1", 1, {"verdict": "pass"})
        passed = state.last_pass_times()["a"]
        state.record_report("a", "/a/ckpt-2", "k2", 2, {"verdict": "fail"})
        state.record_report("b", "/b/ckpt-1", "k1", 1, {"verdict": "error"})
        state.record_report("c", "/c/ckpt-1", "k1", 1, {"verdict": "warn"})
        times = state.last_pass_times()
        assert set(times) == {"a", "c"}  # b never passed
        assert times["a"] == passed  # the later fail does not move it
    finally:
        state.close()


def test_remove_watch_drops_its_counters_and_histogram_only():
    reg, _, m = make(snapshot([]), watches=["gone", "kept"])
    for w in ("gone", "kept"):
        m.verification_finished(w, "fail", 2.0)
        m.checkpoint_skipped(w, "vanished")
    m.remove_watch("gone")
    text = generate_latest(reg).decode()
    assert 'watch="gone"' not in text
    assert val(reg, "ckptwatch_verifications_total", watch="kept", verdict="fail") == 1
    assert val(reg, "ckptwatch_verifications_total", watch="kept", verdict="pass") == 0
    assert val(reg, "ckptwatch_checkpoints_skipped_total", watch="kept", reason="vanished") == 1
    assert val(reg, "ckptwatch_verification_duration_seconds_count", watch="kept") == 1
    m.remove_watch("never")  # nothing to remove: no error
    m.add_watch("gone")  # configured again: back at 0
    assert val(reg, "ckptwatch_verifications_total", watch="gone", verdict="fail") == 0


def test_last_findings_by_check_and_severity_only():
    """The latest checkpoint's failing and warning check ids as data: one series per (check,
    severity), the count as value, never a tensor name; gone when the check no longer applies."""
    w = watch_status()
    w.findings = [{"severity": "fail", "check": "nonfinite", "tensor": "enc/secret_w", "message": "NaN"}]
    w.finding_counts = {("nonfinite", "fail"): 2, ("drift.jump", "warn"): 1}
    reg, _, _ = make(snapshot([w, WatchStatus(name="quiet", path="/ckpt/quiet", armed=True)]))
    assert val(reg, "ckptwatch_last_findings", watch="run7", check="nonfinite", severity="fail") == 2
    assert val(reg, "ckptwatch_last_findings", watch="run7", check="drift.jump", severity="warn") == 1
    series = names_of(reg, "ckptwatch_last_findings")
    assert {s["watch"] for s in series} == {"run7"}, "a watch without findings has no series"
    assert all(set(s) == {"watch", "check", "severity"} for s in series), "check ids only: no tensor label"
    assert "enc/secret_w" not in generate_latest(reg).decode()
    w.finding_counts = {("drift.jump", "warn"): 1}  # the next checkpoint: no longer non-finite
    assert val(reg, "ckptwatch_last_findings", watch="run7", check="nonfinite", severity="fail") is None
    w.finding_counts = {(f"check{i}", "fail"): 1 for i in range(500)}
    assert len(names_of(reg, "ckptwatch_last_findings")) == 50, "bounded per watch"
