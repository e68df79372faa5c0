"""Baselines a bad checkpoint cannot poison, through the real daemon: a Keras training run that
resets to random weights keeps failing against its last passing checkpoint, publish_dir stays
there, until an operator runs `ckptwatch accept` (a real CLI process beside the running daemon)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np

from .conftest import GOOD, daemon_env, outcome, report_of

RESET_AT = 8  # checkpoints 1..7 train normally: the run has a history before the reset


class KerasRun:
    """A small Keras model trained with Adam on synthetic data, saved by CheckpointManager
    (model and optimizer) with the step as checkpoint number."""

    def __init__(self, tf, directory: Path, max_to_keep: int = 4):
        self.tf = tf
        tf.keras.utils.set_random_seed(3)
        rng = np.random.default_rng(0)
        self.x = rng.standard_normal((256, 16)).astype("float32")
        self.y = (self.x @ rng.standard_normal((16, 4)) + 0.1 * rng.standard_normal((256, 4))).astype("float32")
        self.model = self._build()
        self.optimizer = tf.keras.optimizers.Adam(1e-3)
        self.model.compile(optimizer=self.optimizer, loss="mse")
        ckpt = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer)
        self.manager = tf.train.CheckpointManager(ckpt, str(directory), max_to_keep=max_to_keep)

    def _build(self):
        layers = self.tf.keras.layers
        dense = {"bias_initializer": "random_normal"}  # zero biases jump by 100 % at the first steps
        return self.tf.keras.Sequential(
            [self.tf.keras.Input((16,)), layers.Dense(32, activation="relu", **dense), layers.Dense(4, **dense)]
        )

    def train_and_save(self, step: int) -> str:
        self.model.fit(self.x, self.y, epochs=1, batch_size=32, verbose=0)
        return self.manager.save(checkpoint_number=step)

    def reset_to_random_weights(self) -> None:
        """What a job that lost its state does: fresh initial weights; training goes on from them."""
        self.tf.keras.utils.set_random_seed(99)
        self.model.set_weights(self._build().get_weights())


def _named(publish_dir: Path) -> str:
    """The checkpoint publish_dir's state file names (what latest_checkpoint returns while it exists)."""
    return (publish_dir / "checkpoint").read_text().splitlines()[0].split(": ", 1)[1].strip('"')


def _failing(report: dict) -> list[tuple[str, str | None]]:
    return [(f["check"], f["tensor"]) for f in report["findings"] if f["severity"] == "fail"]


def test_a_run_reset_to_random_weights_fails_until_an_operator_accepts_a_new_baseline(tf, daemon_factory, tmp_path):
    run, published = tmp_path / "run", tmp_path / "verified" / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run), "publish_dir": str(published)}])
    job = KerasRun(tf, run)  # max_to_keep=4: N-1 is still on disk when N+2 is saved
    saved: dict[int, str] = {}

    for step in range(1, RESET_AT):
        saved[step] = job.train_and_save(step)
        ev = outcome(d, saved[step], timeout=60)
        assert ev["verdict"] in GOOD, (step, _failing(report_of(d, saved[step])))
        d.wait_for("published", checkpoint=saved[step])
    last_good = saved[RESET_AT - 1]
    assert tf.train.latest_checkpoint(str(published)) == last_good

    # the reset, and two more checkpoints of the run that goes on from it: each judged against N-1
    job.reset_to_random_weights()
    fingerprints = str(d.state_dir / "fingerprints")
    for step in (RESET_AT, RESET_AT + 1, RESET_AT + 2):
        saved[step] = job.train_and_save(step)
        start = d.wait_for("verification started", timeout=60, checkpoint=saved[step])
        # by path (or by its fingerprint, had CheckpointManager deleted it)
        assert start["previous"] == last_good or start["previous"].startswith(fingerprints), start
        ev = outcome(d, saved[step], timeout=60)
        report = report_of(d, saved[step])
        assert ev["verdict"] == "fail", (step, report["findings"])
        assert any(check.startswith("drift.") for check, _ in _failing(report)), report["findings"]
        assert _named(published) == last_good, f"step {step}: publish_dir left N-1"
        assert tf.train.latest_checkpoint(str(published)) == last_good
    assert not [e for e in d.events("published") if e["checkpoint"] != last_good and e["step"] >= RESET_AT]
    assert d.metric("ckptwatch_baseline_step", watch="run") == RESET_AT - 1
    assert d.metric("ckptwatch_baseline_accepted_timestamp_seconds", watch="run") is None

    # the operator means it: the newest verified checkpoint (N+2) is the new baseline
    mark = d.mark()
    reason = "restarted from random weights on purpose"
    cli = subprocess.run(
        [sys.executable, "-m", "ckptwatch", "accept", "run", "--reason", reason, "--config", str(d.config_path)],
        env=daemon_env({"SUDO_USER": "operator-e2e"}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert cli.returncode == 0, cli.stderr
    accepted = d.wait_for("baseline accepted", timeout=10, after=mark, watch="run")
    assert (accepted["checkpoint"], accepted["step"]) == (saved[RESET_AT + 2], RESET_AT + 2)
    assert (accepted["by"], accepted["reason"]) == ("operator-e2e", reason)
    d.wait_for("published", timeout=10, after=mark, checkpoint=saved[RESET_AT + 2])
    assert tf.train.latest_checkpoint(str(published)) == saved[RESET_AT + 2]

    after = RESET_AT + 3
    saved[after] = job.train_and_save(after)
    start = d.wait_for("verification started", timeout=60, checkpoint=saved[after])
    assert start["previous"] == saved[RESET_AT + 2], "judged against the accepted baseline"
    ev = outcome(d, saved[after], timeout=60)
    assert ev["verdict"] in GOOD, _failing(report_of(d, saved[after]))
    d.wait_for("published", checkpoint=saved[after])
    assert tf.train.latest_checkpoint(str(published)) == saved[after]

    text = d.scrape()
    assert d.metric("ckptwatch_baseline_step", text, watch="run") == after
    assert d.metric("ckptwatch_baseline_accepted_timestamp_seconds", text, watch="run") is not None
    status, page = d.get("/")
    assert status == 200 and reason in page and "operator-e2e" in page
