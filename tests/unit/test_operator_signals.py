"""The signals operators and alert rules read: why a watch is not armed, the watch's thresholds,
the learnt save cadence, retired watches and reloads in /metrics, and what /readyz counts."""

from __future__ import annotations

from collections import deque
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ckptwatch.config import load_config
from ckptwatch.daemon.events import unarmed_reason
from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import UNARMED_REASONS, Snapshot, StateHealth, WorkerStatus
from ckptwatch.daemon.recorder import save_interval, written_at
from ckptwatch.daemon.watch_status import thresholds
from ckptwatch.errors import CkptwatchError
from tests.factories import watch_status


def config(tmp_path: Path, watch: str) -> object:
    path = tmp_path / "c.toml"
    path.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[[watch]]\nname = "w"\npath = "{tmp_path}/run"\n{watch}'
    )
    return load_config(str(path), env={})


# -- why a watch is not armed ----------------------------------------------------------------------


def test_unarmed_reasons_from_the_filesystem(tmp_path):
    afile = tmp_path / "model.weights.h5"
    afile.write_bytes(b"x")
    assert unarmed_reason(str(tmp_path / "nope"))[0] == "missing"
    assert unarmed_reason(str(afile / "below"))[0] == "missing"  # a path through a file
    reason, detail = unarmed_reason(str(afile))
    assert reason == "not_a_directory" and str(afile) in detail and "not a directory" in detail
    assert unarmed_reason(str(tmp_path), f"{tmp_path}: Permission denied")[0] == "unreadable"
    assert unarmed_reason(str(tmp_path), f"{tmp_path}: inotify watch limit reached")[0] == "error"
    assert {unarmed_reason(str(p))[0] for p in (tmp_path / "nope", afile)} <= set(UNARMED_REASONS)


# -- thresholds and the save cadence ------------------------------------------------------------------


def test_thresholds_follow_the_watch_policy(tmp_path):
    plain = config(tmp_path, "").watches[0]
    assert thresholds(plain) == {"max_abs_value": 1e6, "stall_intervals": 3.0, "max_global_jump": 0.5}
    bounded = config(
        tmp_path, f'golden = "{tmp_path}/g"\nstall_intervals = 5.0\n[watch.policy]\nmax_global_golden_drift = 5.0\n'
    ).watches[0]
    assert thresholds(bounded)["max_global_golden_drift"] == 5.0 and thresholds(bounded)["stall_intervals"] == 5.0
    finetune = config(tmp_path, f'golden = "{tmp_path}/g"\n[watch.policy]\ngolden_mode = "finetune"\n').watches[0]
    assert thresholds(finetune)["max_global_golden_drift"] == 1.0
    no_golden = config(tmp_path, '[watch.policy]\ngolden_mode = "finetune"\n').watches[0]
    assert "max_global_golden_drift" not in thresholds(no_golden), "no golden: nothing to bound"
    replica = config(tmp_path, f'profile = "replica"\ngolden = "{tmp_path}/g"\n').watches[0]
    assert "max_global_golden_drift" not in thresholds(replica) and "max_global_jump" not in thresholds(replica)


def test_config_keys_retired_and_stall_intervals(tmp_path):
    w = config(tmp_path, "retired = true\nstall_intervals = 2.5\n").watches[0]
    assert w.retired is True and w.stall_intervals == 2.5
    assert config(tmp_path, "").watches[0].retired is False
    with pytest.raises(CkptwatchError, match="stall_intervals"):
        config(tmp_path, "stall_intervals = 1.0\n")


def test_save_interval_is_the_median_of_recent_gaps():
    assert save_interval(deque([100.0])) is None
    assert save_interval(deque([100.0, 160.0])) is None, "one interval is not a cadence"
    assert save_interval(deque([100.0, 160.0, 220.0])) == 60.0
    assert save_interval(deque([400.0, 100.0, 160.0, 220.0, 1000.0])) == 120.0  # gaps 60 60 180 600, unordered
    assert save_interval(deque([100.0, 100.2, 100.4, 160.0])) is None, "rewrites within a second do not count"
    assert written_at("/ckpt/run/ckpt-3|1700000000123456789|4096", 5.0) == pytest.approx(1700000000.123456789)
    assert written_at("no key", 5.0) == 5.0


# -- /metrics and readiness ------------------------------------------------------------------------


def scrape(snap: Snapshot) -> tuple[CollectorRegistry, DaemonMetrics]:
    reg = CollectorRegistry()
    active = [w.name for w in snap.watches if not w.retired]  # the daemon pre-creates counters for these only
    metrics = DaemonMetrics(reg, lambda: snap, devices=["cpu"], watches=active)
    return reg, metrics


def test_armed_retired_thresholds_and_reload_series():
    armed = watch_status("armed")
    broken = watch_status("broken", armed=False, unarmed_reason="not_a_directory", unarmed_detail="/x: file")
    done = watch_status("done", retired=True)
    snap = Snapshot("1", 0.0, [armed, broken, done], [WorkerStatus("cpu", up=True)], StateHealth(), False, 1234.5)
    reg, _ = scrape(snap)
    v = reg.get_sample_value
    assert v("ckptwatch_watch_armed", {"watch": "armed", "reason": "none"}) == 1
    assert v("ckptwatch_watch_armed", {"watch": "broken", "reason": "not_a_directory"}) == 0
    assert v("ckptwatch_watch_retired", {"watch": "armed"}) == 0
    assert v("ckptwatch_watch_retired", {"watch": "done"}) == 1
    assert v("ckptwatch_policy_threshold", {"watch": "armed", "threshold": "max_global_golden_drift"}) == 1.0
    assert v("ckptwatch_save_interval_seconds", {"watch": "armed"}) == 300.0
    assert v("ckptwatch_config_reload_success", {}) == 0
    assert v("ckptwatch_config_reload_timestamp_seconds", {}) == 1234.5
    # a retired watch exports nothing but its retired marker
    for family in reg.collect():
        for s in family.samples:
            if s.labels.get("watch") == "done":
                assert s.name == "ckptwatch_watch_retired", s


def test_ready_needs_every_active_watch_armed():
    up = [WorkerStatus("cpu", up=True)]
    assert Snapshot("1", 0.0, [watch_status("a"), watch_status("b")], up).ready
    assert not Snapshot("1", 0.0, [watch_status("a"), watch_status("b", armed=False)], up).ready
    assert Snapshot("1", 0.0, [watch_status("a"), watch_status("b", armed=False, retired=True)], up).ready
    assert not Snapshot("1", 0.0, [watch_status("b", armed=False, retired=True)], up).ready, "nothing watched"


def test_check_config_names_watches_that_would_not_be_armed(tmp_path):
    from click.testing import CliRunner

    from ckptwatch.cli import main

    (tmp_path / "run").mkdir()
    (tmp_path / "model.keras").write_bytes(b"x")
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n'
        f'[[watch]]\nname = "ok"\npath = "{tmp_path / "run"}"\n'
        f'[[watch]]\nname = "file"\npath = "{tmp_path / "model.keras"}"\n'
        f'[[watch]]\nname = "later"\npath = "{tmp_path / "later"}"\n'
        f'[[watch]]\nname = "done"\npath = "{tmp_path / "gone"}"\nretired = true\n'
    )
    result = CliRunner().invoke(main, ["check-config", str(cfg)])
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 2, result.stderr
    assert "watch file would not be armed now: not_a_directory" in warnings[0]
    assert "watch later would not be armed now: missing" in warnings[1]
