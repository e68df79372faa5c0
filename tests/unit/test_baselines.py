"""Baselines in the state (daemon/baselines.py): fingerprints kept with their reports and pruned
with them, what publish_dir names, and `ckptwatch accept`'s acceptances (recorded by one process,
applied by the daemon's)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ckptwatch.daemon.state import GoodCheckpoint, State, open_existing
from ckptwatch.errors import CkptwatchError, UsageError


def verified(state: State, step: int, verdict: str = "pass", fingerprint: bool = True, watch: str = "run") -> str:
    """Record checkpoint ckpt-<step> of `watch` as the daemon does; its fingerprint file (if any)."""
    path, key = f"/ckpt/{watch}/ckpt-{step}", f"k{step}"
    state.record_report(watch, path, key, step, {"verdict": verdict, "checkpoint": {"path": path, "step": step}})
    if not fingerprint:
        return ""
    fp = state.fingerprint_path(watch, path)
    Path(fp).write_bytes(b"fp")
    state.record_fingerprint(watch, path, key, step, fp)
    return fp


def good(step: int, fp: str | None, watch: str = "run") -> GoodCheckpoint:
    return GoodCheckpoint(f"/ckpt/{watch}/ckpt-{step}", step, f"k{step}", fp)


@pytest.fixture
def state(tmp_path):
    s = State(str(tmp_path / "state"))
    yield s
    s.close()


# -- fingerprints -------------------------------------------------------------------------------------


def test_every_fingerprint_is_kept_while_its_report_is_and_goes_with_it(tmp_path):
    state = State(str(tmp_path), reports_kept=3)
    try:
        fps = [verified(state, i) for i in range(2)]
        state.set_last_good("run", good(1, fps[1]))  # the baseline outlives its report
        fps += [verified(state, i) for i in range(2, 6)]
        kept = [os.path.exists(f) for f in fps]
        assert kept == [False, True, False, True, True, True], "the 3 newest reports' and the baseline's"
        assert set(state.fingerprints("run")) == {"k1", "k3", "k4", "k5"}
        state.set_last_good("run", good(5, fps[5]))
        assert not os.path.exists(fps[1]), "no report, no longer the baseline: gone"
        assert os.path.exists(fps[3]) and os.path.exists(fps[4]), "a former baseline stays while its report does"
    finally:
        state.close()


def test_prune_keeps_a_pending_acceptance_s_fingerprint(tmp_path):
    state = State(str(tmp_path), reports_kept=2)
    try:
        fp = verified(state, 1)
        state.accept("run", "ckpt-1", "restart", "ops")
        for i in range(2, 6):
            verified(state, i)
        assert os.path.exists(fp) and state.pending_acceptances()[0].checkpoint.fingerprint == fp
    finally:
        state.close()


def test_a_baseline_from_an_older_state_without_a_fingerprint_row_is_removed_when_replaced(state):
    old = state.fingerprint_path("run", "/ckpt/run/ckpt-1")
    Path(old).write_bytes(b"fp")
    state.set_last_good("run", good(1, old))  # as before fingerprints were kept with reports
    state.set_last_good("run", good(2, verified(state, 2)))
    assert not os.path.exists(old)


def test_sweep_removes_only_the_fingerprints_nothing_refers_to(state):
    kept = [verified(state, 1), verified(state, 2)]
    baseline = state.fingerprint_path("run", "/ckpt/run/ckpt-0")
    Path(baseline).write_bytes(b"fp")
    state.set_last_good("run", good(0, baseline))
    stray = state.fingerprint_path("run", "/ckpt/run/ckpt-3")  # a worker's, for a job that never ended
    Path(stray).write_bytes(b"fp")
    other = os.path.join(state.dir, "fingerprints", "README")
    Path(other).write_text("not a fingerprint")
    assert state.sweep_fingerprints() == 1
    assert not os.path.exists(stray) and all(os.path.exists(f) for f in [*kept, baseline, other])


def test_published(state):
    assert state.published("run") is None
    state.set_published("run", good(3, "/fp"))
    assert state.published("run") == GoodCheckpoint("/ckpt/run/ckpt-3", 3, "k3", None)
    state.set_published("run", None)
    assert state.published("run") is None


# -- accept -------------------------------------------------------------------------------------------


def test_accept_the_newest_verified_checkpoint_by_default_even_a_failed_one(state):
    verified(state, 1)
    fp = verified(state, 2, verdict="fail")  # drift failed: integrity passed, it has a fingerprint
    done = state.accept("run", None, "  intended\nrestart ", "alice")
    assert (done.watch, done.checkpoint, done.by, done.reason) == ("run", good(2, fp), "alice", "intended restart")
    assert done.applied is None and done.at > 0
    assert state.pending_acceptances() == [done]
    assert state.last_good("run") is None, "the daemon applies it, not the command"


@pytest.mark.parametrize("checkpoint", ["ckpt-1", "run/ckpt-1", "/ckpt/run/ckpt-1", "/ckpt/run/ckpt-1.index"])
def test_accept_names_a_checkpoint_by_path_or_name(state, checkpoint):
    fp = verified(state, 1)
    verified(state, 11)
    assert state.accept("run", checkpoint, "why", "bob").checkpoint == good(1, fp)


def test_accept_a_relative_path(state, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = str(tmp_path / "run" / "ckpt-4")
    state.record_report("run", path, "k4", 4, {"verdict": "pass"})
    fp = state.fingerprint_path("run", path)
    Path(fp).write_bytes(b"fp")
    state.record_fingerprint("run", path, "k4", 4, fp)
    assert state.accept("run", "run/ckpt-4", "why", "bob").checkpoint.path == path


@pytest.mark.parametrize(
    ("watch", "checkpoint", "reason", "message"),
    [
        ("other", None, "why", "unknown watch 'other'"),
        ("run", "ckpt-9", "why", "ckpt-9: no verification record of it in watch 'run'"),
        ("run", "ckpt-2", "why", r"no fingerprint \(integrity failed or it could not be read\)"),
        ("run", None, "why", "verdict fail and no fingerprint"),
        ("run", "ckpt-1", " \n", "--reason is empty"),
    ],
)
def test_accept_refuses(state, watch, checkpoint, reason, message):
    verified(state, 1)
    verified(state, 2, verdict="fail", fingerprint=False)  # integrity failed: no fingerprint
    with pytest.raises(UsageError, match=message):
        state.accept(watch, checkpoint, reason, "ops")
    assert state.pending_acceptances() == []


def test_accept_refuses_a_checkpoint_whose_fingerprint_file_is_gone(state):
    os.remove(verified(state, 1))
    with pytest.raises(UsageError, match=r"its fingerprint .* is gone"):
        state.accept("run", "ckpt-1", "why", "ops")


def test_apply_makes_it_the_baseline_and_is_applied_once(state):
    fps = [verified(state, i) for i in range(3)]
    state.set_last_good("run", good(2, fps[2]))
    pending = state.accept("run", "ckpt-1", "roll back", "ops")
    applied = state.apply_acceptance(pending)
    assert applied.applied is not None and applied.id == pending.id
    assert state.last_good("run") == good(1, fps[1])
    assert state.pending_acceptances() == []
    assert state.last_acceptances() == {"run": applied}
    later = state.apply_acceptance(state.accept("run", "ckpt-2", "forward again", "ops"))
    assert state.last_acceptances()["run"] == later


def test_accept_from_another_process_s_connection_while_the_daemon_holds_the_state(tmp_path):
    daemon = State(str(tmp_path))
    try:
        verified(daemon, 1)
        cli = open_existing(str(tmp_path))  # what `ckptwatch accept` opens: its own connection
        try:
            cli.accept("run", None, "restart", "ops")
        finally:
            cli.close()
        assert [a.reason for a in daemon.pending_acceptances()] == ["restart"]
    finally:
        daemon.close()


def test_open_existing_refuses_a_directory_without_state(tmp_path):
    with pytest.raises(CkptwatchError, match="no ckptwatch state in"):
        open_existing(str(tmp_path))
    assert os.listdir(tmp_path) == [], "nothing created"
