"""Recorder: the baseline rule (a checkpoint becomes "previous" only when it passed against the
baseline), publish_dir following the baselines, and acceptances applied from the state -- with a
real State, real metrics and a real publish_dir, fed with pipeline events (no process, no worker)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from ckptwatch.config import load_config
from ckptwatch.daemon import discovery
from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import Candidate, Snapshot
from ckptwatch.daemon.pipeline import Done
from ckptwatch.daemon.recorder import Recorder
from ckptwatch.daemon.state import State
from tests.factories import RecordingLog as Log


class World:
    """A watch `run` with a publish_dir; checkpoints are index files (enough for their keys)."""

    def __init__(self, tmp: Path, publish: bool = True):
        self.run, self.publish_dir = tmp / "run", tmp / "verified"
        self.run.mkdir()
        text = f'[daemon]\nstate_dir = "{tmp / "state"}"\n\n[[watch]]\nname = "run"\npath = "{self.run}"\n'
        if publish:
            text += f'publish_dir = "{self.publish_dir}"\n'
        (tmp / "ckptwatch.toml").write_text(text)
        config = load_config(str(tmp / "ckptwatch.toml"), env={})
        self.state = State(config.daemon.state_dir)
        self.log = Log()
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(self.registry, self.snapshot, watches=["run"])
        self.recorder = Recorder(self.state, self.metrics, self.log, config)
        self.candidates: dict[int, Candidate] = {}

    def snapshot(self) -> Snapshot:
        return Snapshot("0", 0.0, list(self.recorder.statuses.values()), [])

    def checkpoint(self, step: int) -> Candidate:
        path = str(self.run / f"ckpt-{step}")
        Path(path + ".index").write_bytes(b"index of step %d" % step)
        key = discovery.current_key(path)
        assert key is not None
        c = self.candidates[step] = Candidate("run", path, "bundle", step, key)
        return c

    def verified(self, step: int, verdict: str, previous: int | str | None, integrity: bool = True) -> Candidate:
        """ckpt-<step> verified against `previous` (a step: that checkpoint's path) with `verdict`."""
        c = self.checkpoint(step)
        fp = None
        if integrity:
            fp = self.state.fingerprint_path("run", c.path)
            Path(fp).write_bytes(b"fp")
        against = self.candidates[previous].path if isinstance(previous, int) else previous
        report = {"verdict": verdict, "checkpoint": {"path": c.path, "step": step}, "findings": [], "drift": {}}
        self.recorder(Done(c, report, 0.5, 1000.0 + step, fp, against))
        return c

    def baseline(self) -> int | None:
        good = self.state.last_good("run")
        return int(good.path.rsplit("-", 1)[1]) if good else None

    def published(self) -> int | None:
        state_file = self.publish_dir / "checkpoint"
        text = state_file.read_text() if state_file.exists() else ""
        return int(text.split("\n")[0].rsplit("-", 1)[1].rstrip('"')) if text else None

    def metric(self, name: str) -> float | None:
        return self.registry.get_sample_value(name, {"watch": "run"})


@pytest.fixture
def world(tmp_path):
    w = World(tmp_path)
    yield w
    w.state.close()


def test_a_failed_checkpoint_never_becomes_the_baseline_and_is_never_published(world):
    world.verified(1, "pass", None)
    world.verified(2, "warn", 1)
    assert (world.baseline(), world.published()) == (2, 2)
    for step in (3, 4, 5):  # a reset at 3, training on from it: each judged against 2
        world.verified(step, "fail", 2)
        assert (world.baseline(), world.published()) == (2, 2)
    assert world.metric("ckptwatch_baseline_step") == 2
    status = world.recorder.statuses["run"]
    assert (status.baseline_checkpoint, status.published_checkpoint) == (world.candidates[2].path,) * 2
    world.verified(6, "pass", 2)  # the run recovered: judged against 2, it passes
    assert (world.baseline(), world.published()) == (6, 6)


def test_error_and_integrity_failures_are_no_baseline_either(world):
    world.verified(1, "pass", None)
    world.verified(2, "error", 1, integrity=False)
    world.verified(3, "fail", 1, integrity=False)
    assert world.baseline() == 1
    assert set(world.state.fingerprints("run")) == {world.candidates[1].key}, "integrity failed: no fingerprint"


def test_every_fingerprint_is_recorded_so_a_failed_checkpoint_can_be_accepted_later(world):
    world.verified(1, "pass", None)
    world.verified(2, "fail", 1)
    assert set(world.state.fingerprints("run")) == {world.candidates[1].key, world.candidates[2].key}


def test_an_acceptance_is_applied_logged_shown_and_published(world):
    world.verified(1, "pass", None)
    world.verified(2, "fail", 1)
    world.verified(3, "fail", 1)
    world.state.accept("run", None, "intended restart", "alice")
    assert world.baseline() == 1, "recorded, not applied yet"
    world.recorder.apply_acceptances()
    assert (world.baseline(), world.published()) == (3, 3)
    (accepted,) = world.log.events("baseline accepted")
    assert accepted["checkpoint"] == world.candidates[3].path and accepted["step"] == 3
    assert (accepted["by"], accepted["reason"]) == ("alice", "intended restart")
    status = world.recorder.statuses["run"]
    assert status.accepted is not None and (status.accepted.by, status.accepted.step) == ("alice", 3)
    assert world.metric("ckptwatch_baseline_step") == 3
    assert world.metric("ckptwatch_baseline_accepted_timestamp_seconds") == status.accepted.at
    world.recorder.apply_acceptances()
    assert len(world.log.events("baseline accepted")) == 1, "applied once"
    world.verified(4, "pass", 3)  # judged against the accepted one
    assert (world.baseline(), world.published()) == (4, 4)


def test_a_job_judged_against_the_baseline_an_acceptance_replaced_does_not_advance(world):
    world.verified(1, "pass", None)
    world.verified(2, "fail", 1)
    world.state.accept("run", "ckpt-2", "new regime", "ops")
    world.recorder.apply_acceptances()
    world.verified(3, "pass", 1)  # dispatched before the acceptance, against ckpt-1
    assert (world.baseline(), world.published()) == (2, 2)
    assert world.log.events("not made the baseline")[0]["judged_against"] == world.candidates[1].path


def test_a_baseline_given_by_its_fingerprint_counts(world):
    world.verified(1, "pass", None)
    world.verified(2, "pass", world.state.last_good("run").fingerprint)  # ckpt-1 deleted: its fingerprint stood in
    assert world.baseline() == 2


def test_publish_dir_never_goes_back_to_a_lower_step_unless_accepted(world):
    world.verified(5, "pass", None)
    world.verified(3, "pass", 5)  # a lower step passing against the baseline: the baseline, not published
    assert (world.baseline(), world.published()) == (3, 5)
    assert world.log.events("not published")[0]["published_step"] == 5
    world.verified(6, "pass", 3)
    assert world.published() == 6
    world.state.accept("run", "ckpt-3", "roll back", "ops")
    world.recorder.apply_acceptances()
    assert (world.baseline(), world.published()) == (3, 3), "accepted: published although lower"


def test_an_accepted_checkpoint_whose_files_are_gone_restarts_the_publish_chain(world):
    world.verified(7, "pass", None)
    world.verified(8, "fail", 7)
    os.remove(world.candidates[8].path + ".index")  # CheckpointManager deleted it; its fingerprint stays
    world.state.accept("run", "ckpt-8", "restart", "ops")
    world.recorder.apply_acceptances()
    assert (world.baseline(), world.published()) == (8, 7)
    assert world.log.events("accepted baseline not published")
    assert world.state.published("run") is None and world.recorder.statuses["run"].published_checkpoint is None
    world.verified(2, "pass", world.state.last_good("run").fingerprint)  # a restarted run's step 2
    assert world.published() == 2, "the chain restarted at the accepted checkpoint"


def test_baseline_unavailable_restarts_the_chain_with_a_warning(world):
    world.verified(1, "pass", None)
    world.verified(2, "pass", None)  # no previous could be given: neither files nor fingerprint left
    assert world.baseline() == 2 and world.log.events("baseline unavailable")


def test_statuses_are_restored_from_the_state(tmp_path, world):
    world.verified(1, "pass", None)
    world.verified(2, "fail", 1)
    world.state.accept("run", None, "restart", "ops")
    world.recorder.apply_acceptances()
    again = Recorder(world.state, world.metrics, Log(), world.recorder.config)  # a daemon restart
    status = again.statuses["run"]
    assert (status.baseline_step, status.published_step) == (2, 2)
    assert status.accepted is not None and status.accepted.reason == "restart"


def test_a_watch_without_publish_dir(tmp_path):
    world = World(tmp_path, publish=False)
    try:
        world.verified(1, "pass", None)
        world.verified(2, "fail", 1)
        world.state.accept("run", None, "restart", "ops")
        world.recorder.apply_acceptances()
        assert world.baseline() == 2 and not world.publish_dir.exists()
        assert not world.log.events("published") and not world.log.events("accepted baseline not published")
    finally:
        world.state.close()
