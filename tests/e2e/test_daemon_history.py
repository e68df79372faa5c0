"""The daemon judges drift against each watch's own history: built from the checkpoints that
passed, kept in state_dir, handed to the worker; a checkpoint 10x further from its previous
than the run's healthy steps fails, although it would pass a fixed threshold."""

from __future__ import annotations

import itertools

import numpy as np

from .conftest import GOOD, Trainer, install, outcome, report_of


def test_a_watch_builds_its_history_and_a_jump_beyond_it_fails(tf, daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run, max_to_keep=3)
    saved = []
    for _ in range(8):  # one at a time: a burst would be coalesced (only the newest verified)
        saved.append(trainer.save())
        assert outcome(d, saved[-1])["verdict"] in GOOD
    history = d.state_dir / "history" / "run.npz"
    assert history.is_file()
    first_reports = [report_of(d, p) for p in saved[1:3]]
    assert all(r["verdict"] == "pass" for r in first_reports), [r["findings"] for r in first_reports]

    # the next step, with noise of 10x a step on the kernel (relative L2 ~0.1: no fixed threshold sees it)
    kernel = trainer.net.kernel
    trainer.step()
    clean = kernel.numpy()
    kernel.assign(clean + np.random.default_rng(0).normal(scale=0.1, size=clean.shape).astype("float32"))
    staged = trainer.ckpt.write(str(tmp_path / "staging" / "ckpt-9"))
    kernel.assign(clean)
    bad = install(staged, run, "ckpt-9")
    assert outcome(d, bad)["verdict"] == "fail"
    findings = [f for f in report_of(d, bad)["findings"] if f["severity"] == "fail" and f["tensor"]]
    assert {(f["check"], f["tensor"]) for f in findings} == {("drift.jump", trainer.key_of("kernel"))}
    (jump,) = findings
    assert jump["basis"] == "history" and jump["value"] > jump["limit"] and jump["expected"]["count"] >= 4
    assert "this tensor's last" in jump["message"]

    # the run goes on: judged against the last checkpoint that passed, with the same history
    after = trainer.save(number=10)
    assert outcome(d, after)["verdict"] in GOOD


def test_a_run_that_continues_from_a_reset_keeps_failing(tf, daemon_factory, tmp_path):
    """A kernel reset to an early value at N, training going on from there: N fails on its jump;
    N+1 and N+2, judged against N-1 over more steps, fail because they continue from N's state."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run)
    early = None
    for i in range(16):  # one at a time: a burst would be coalesced (only the newest verified)
        assert outcome(d, trainer.save())["verdict"] in GOOD
        if i == 0:
            early = trainer.net.kernel.numpy()
    trainer.net.kernel.assign(early)  # the reset; the run trains on from it
    reset, verdicts = [], []
    for _ in range(3):
        reset.append(trainer.save())
        verdicts.append(outcome(d, reset[-1])["verdict"])
    assert verdicts == ["fail", "fail", "fail"], [report_of(d, p)["findings"] for p in reset]
    kernel = trainer.key_of("kernel")
    for failed, path in itertools.pairwise(reset):  # each continues from the one before, which failed
        (f,) = [f for f in report_of(d, path)["findings"] if f["severity"] == "fail" and f["tensor"] == kernel]
        assert f["check"] == "drift.jump" and f"continues from {failed}," in f["message"]
