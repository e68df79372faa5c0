"""The daemon verifying what real TF writers put into real directories: verdicts in /metrics
and /api, directories that appear late, CheckpointManager(max_to_keep) deleting behind the
daemon, bursts, publish_dir, and the read-only promise."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from .conftest import (
    GOOD,
    Trainer,
    bundle_files,
    dir_state,
    flip_byte_in_tensor,
    install,
    outcome,
    paused,
    report_of,
)

PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def _corrupt_next(tf, trainer: Trainer, staging: Path, watch_dir: Path, name: str, variable: str = "kernel") -> str:
    """The trainer's next step written outside the watch dir, one bit flipped inside
    `variable`'s bytes, then committed into the watch dir as `name`."""
    staged = trainer.write(staging / name)
    flip_byte_in_tensor(tf, staged, trainer.key_of(variable))
    return install(staged, watch_dir, name)


def _integrity_or_structure(report: dict) -> list[dict]:
    return [f for f in report["findings"] if f["check"].startswith(("integrity.", "structure."))]


def test_pass_then_corrupt_visible_in_metrics_and_api(tf, daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run)

    good = trainer.save()
    ev = outcome(d, good)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev

    key = trainer.key_of("kernel")
    bad = _corrupt_next(tf, trainer, tmp_path / "staging", run, "ckpt-2")
    start = d.wait_for("verification started", checkpoint=bad)
    assert start["previous"] == good, "the corrupt candidate is compared with the last good checkpoint"
    ev = outcome(d, bad)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "fail", ev
    assert any(f.startswith("integrity.") for f in ev["failing"]), ev

    text = d.scrape()
    m = lambda name, **labels: d.metric(name, _text=text, **labels)  # noqa: E731
    assert m("ckptwatch_last_verdict", watch="run", verdict="fail") == 1
    assert m("ckptwatch_last_verdict", watch="run", verdict="pass") == 0
    assert m("ckptwatch_verifications_total", watch="run", verdict="pass") == 1
    assert m("ckptwatch_verifications_total", watch="run", verdict="fail") == 1
    assert m("ckptwatch_verifications_total", watch="run", verdict="error") == 0
    assert m("ckptwatch_last_checkpoint_step", watch="run") == 2
    assert m("ckptwatch_verification_duration_seconds_count", watch="run") == 2
    assert m("ckptwatch_worker_up", device="cpu") == 1
    assert m("ckptwatch_build_info") == 1

    rows = {r["path"]: r for r in d.api(watch="run")}
    assert set(rows) == {good, bad}
    assert rows[good]["verdict"] == "pass" and rows[bad]["verdict"] == "fail"
    assert rows[bad]["step"] == 2
    assert "report" not in rows[bad] and "tensors" not in rows[bad]["findings"][0], "lists hold summaries"
    assert rows[bad]["counts"]["fail"] >= 1 and rows[bad]["findings"][0]["check"].startswith("integrity.")
    bad_report = d.full_report(rows[bad])
    assert bad_report["schema"] == "ckptwatch.report/v1"
    failing = [f for f in bad_report["findings"] if f["severity"] == "fail" and f["check"].startswith("integrity.")]
    assert failing and failing[0]["tensor"] == key, bad_report["findings"]
    assert not [f for f in d.full_report(rows[good])["findings"] if f["severity"] == "fail"]

    status, page = d.get("/")
    assert status == 200 and "run" in page and ">fail<" in page, page

    if not os.path.exists(PROMTOOL):
        pytest.skip("promtool is not installed")
    lint = subprocess.run([PROMTOOL, "check", "metrics"], input=text, capture_output=True, text=True, check=False)
    assert lint.returncode == 0 and not (lint.stdout + lint.stderr).strip(), lint.stdout + lint.stderr


def test_watch_dir_created_after_start(tf, daemon_factory, tmp_path):
    run = tmp_path / "later" / "run"
    d = daemon_factory([{"name": "run", "path": str(run)}])
    status, body = d.get("/readyz")
    assert status == 503 and "no watch armed" in body, (status, body)
    assert d.get("/healthz")[0] == 200 and d.get("/livez")[0] == 200
    assert not run.exists(), "the daemon must not create a watched directory"

    mark = d.mark()
    run.mkdir(parents=True)
    d.wait_for("watch armed", timeout=10, after=mark, watch="run")
    ckpt = Trainer(tf, run).save()
    ev = outcome(d, ckpt)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev
    assert d.get("/readyz") == (200, "ok\n")


def test_watch_dir_deleted_and_recreated(tf, daemon_factory, tmp_path):
    """A training job that restarts its run from scratch: the directory goes away and comes
    back; the daemon re-arms and verifies the new run's checkpoints. Regression (66578f1): the
    new ckpt-1 was verified against itself (last_good.path exists again, other bytes)."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    first = Trainer(tf, run).save()
    assert outcome(d, first)["verdict"] == "pass"
    mark = d.mark()
    shutil.rmtree(run)
    d.wait_for("watch disarmed", timeout=10, after=mark, watch="run")
    assert d.get("/readyz")[0] == 503
    mark = d.mark()
    run.mkdir()
    d.wait_for("watch armed", timeout=10, after=mark, watch="run")
    again = Trainer(tf, run, seed=1).save()  # the same path, ckpt-1, other bytes
    assert again == first
    start = d.wait_for("verification started", after=mark, checkpoint=again)
    assert outcome(d, again, after=mark)["event"] == "checkpoint verified"
    assert start["previous"] != again, "a checkpoint is never its own previous"
    assert d.get("/readyz")[0] == 200


@pytest.mark.parametrize("kind", ["bundle", "weights.h5"])
def test_checkpoint_rewritten_in_place_is_compared_with_its_former_version(tf, daemon_factory, tmp_path, kind):
    """One fixed path rewritten every epoch: each rewrite is a new checkpoint to verify, and its
    previous is the former version (by fingerprint: the files now hold the new bytes).
    Regression (66578f1): _payload() took last_good.path whenever it existed, so every rewrite
    was compared with itself: fail drift.unchanged ('all N compared tensors are identical')."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    if kind == "bundle":
        trainer = Trainer(tf, run)
        write = lambda: trainer.write(run / "latest")  # noqa: E731
    else:
        import keras

        keras.utils.set_random_seed(0)
        dense = {"bias_initializer": "random_normal"}  # zero biases would jump by 100 % at the first step
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, **dense), keras.layers.Dense(4, **dense)])
        rng = np.random.default_rng(0)

        def write() -> str:
            for v in model.weights:
                v.assign(v.numpy() + rng.normal(scale=0.002, size=v.shape).astype("float32"))
            model.save_weights(str(run / "best.weights.h5"))
            return str(run / "best.weights.h5")

    path = write()
    assert outcome(d, path)["verdict"] in GOOD
    for n in (2, 3):
        mark = d.mark()
        assert write() == path
        start = d.wait_for("verification started", after=mark, checkpoint=path)
        ev = outcome(d, path, after=mark)
        report = d.full_report(d.api(watch="run")[0])
        assert start["previous"] != path, f"version {n} is compared with itself"
        assert ev["event"] == "checkpoint verified" and ev["verdict"] in GOOD, (n, report["findings"])
        assert report["drift"]["previous"]["relative_l2"] > 0
    assert len(d.api(watch="run")) == 3


def test_start_logs_a_watch_waiting_for_its_directory(daemon_factory, tmp_path):
    """Regression (66578f1): run() logged it only for (name, False) pairs from Watcher.start(),
    which never returns one for a directory that does not exist."""
    d = daemon_factory([{"name": "run", "path": str(tmp_path / "absent")}], ready=False)
    d.wait_for("watch waiting for its directory", timeout=5, watch="run")


def _check_outcomes(d, saved: list[str]) -> None:
    """Every checkpoint verified (pass/warn, no integrity or structure finding, drift against
    a previous after the first) or skipped "vanished"; none judged twice."""
    started = {e["checkpoint"]: e for e in d.events("verification started")}
    for path in saved:
        done = [e for e in d.events(checkpoint=path) if e["event"] in ("checkpoint verified", "checkpoint skipped")]
        assert len(done) <= 1, done
        if not done:  # deleted before the daemon ever saw it complete: nothing to verify
            assert path not in started
            continue
        ev = done[0]
        if ev["event"] == "checkpoint skipped":
            assert ev["reason"] == "vanished", ev
            continue
        report = report_of(d, path)
        assert ev["verdict"] in GOOD, (path, ev["verdict"], report["findings"])
        assert not _integrity_or_structure(report), (path, report["findings"])
        if path != saved[0]:
            assert started[path]["previous"], f"{path}: verified without a previous"
            assert report["drift"]["previous"] is not None, f"{path}: no drift against previous"


def test_max_to_keep_1_previous_gone_at_dispatch_uses_fingerprint(tf, daemon_factory, tmp_path, big_checkpoint):
    """The previous checkpoint is deleted (CheckpointManager, max_to_keep=1) before the next
    one is dispatched -- the only worker is busy with another watch meanwhile -- so its
    fingerprint in state_dir stands in for it."""
    run, busy = tmp_path / "run", tmp_path / "busy"
    run.mkdir()
    busy.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}, {"name": "busy", "path": str(busy)}])
    fingerprints = str(d.state_dir / "fingerprints")
    trainer = Trainer(tf, run, max_to_keep=1)
    saved = [trainer.save()]
    assert outcome(d, saved[0])["verdict"] == "pass"
    for n in (1, 2):
        install(big_checkpoint, busy, f"ckpt-{n}")
        d.wait_for("verification started", watch="busy", checkpoint=str(busy / f"ckpt-{n}"))
        with paused(d.workers()[0]):
            saved.append(trainer.save())
            assert not os.path.exists(saved[-2] + ".index"), "CheckpointManager deleted the previous one"
            d.wait_until(lambda: d.metric("ckptwatch_queue_depth", watch="run") == 1, timeout=10, what="queued")
        start = d.wait_for("verification started", timeout=60, checkpoint=saved[-1])
        assert start["previous"] and start["previous"].startswith(fingerprints), start
        outcome(d, saved[-1])
    _check_outcomes(d, saved)
    kept = sorted(Path(fingerprints, "run").iterdir())
    # one per verified checkpoint (an operator may accept any of them later), pruned with reports_kept
    assert len(kept) == len(saved), f"one fingerprint per verified checkpoint: {kept}"


def test_max_to_keep_1_saves_in_a_row(tf, daemon_factory, tmp_path):
    """Regression (66578f1): the previous checkpoint, deleted by CheckpointManager milliseconds
    after the next one is committed, was still there at dispatch, so the job named its path; the
    worker then found it gone: verdict `error` (previous reference unreadable: index file missing)
    or `warn` with integrity.shard_missing findings on reference previous."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run, max_to_keep=1)
    saved: list[str] = []
    for _ in range(8):  # one save at a time, as a training loop does
        saved.append(trainer.save())
        outcome(d, saved[-1])
    for _ in range(5):  # back to back
        saved.append(trainer.save())
    outcome(d, saved[-1])
    _check_outcomes(d, saved)
    assert d.metric("ckptwatch_verifications_total", watch="run", verdict="fail") == 0
    assert d.metric("ckptwatch_verifications_total", watch="run", verdict="error") == 0


def test_previous_deleted_while_the_next_is_verified(tf, daemon_factory, tmp_path):
    """The deterministic form of the race above: the worker falls back to the previous one's
    fingerprint when its files disappear during the job."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run, big=(4, 8 * 1024 * 1024))  # 4 x 32 MiB: the job lasts a while
    first = trainer.save()
    assert outcome(d, first, timeout=60)["verdict"] == "pass"
    second = trainer.save()
    d.wait_for("verification started", checkpoint=second)
    for f in sorted(bundle_files(first), key=lambda f: not f.name.endswith(".index")):  # as TF removes them
        f.unlink()
    ev = outcome(d, second, timeout=60)
    report = report_of(d, second)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] in GOOD, (ev, report["findings"])
    assert not _integrity_or_structure(report), report["findings"]
    assert report["drift"]["previous"] is not None


def test_checkpoint_deleted_while_queued_is_skipped_vanished(tf, daemon_factory, tmp_path, big_checkpoint):
    """Without holding files (hold_files = false) a checkpoint deleted while queued is skipped
    as vanished, never a failure (with it, it is verified: tests/e2e/test_daemon_held.py)."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"hold_files": False})
    big = install(big_checkpoint, run, "ckpt-100")
    d.wait_for("verification started", checkpoint=big)
    with paused(d.workers()[0]):
        small = Trainer(tf, run).save()  # queued behind the big one
        d.wait_until(lambda: d.metric("ckptwatch_queue_depth", watch="run") == 2, timeout=10, what="queued")
        for f in sorted(bundle_files(small), key=lambda f: not f.name.endswith(".index")):  # as TF removes them
            f.unlink()
        ev = outcome(d, small)
    assert ev["event"] == "checkpoint skipped" and ev["reason"] == "vanished", ev
    assert outcome(d, big, timeout=60)["verdict"] == "pass"
    assert d.metric("ckptwatch_checkpoints_skipped_total", watch="run", reason="vanished") >= 1
    assert d.metric("ckptwatch_verifications_total", watch="run", verdict="fail") == 0
    assert not d.events("verification started", checkpoint=small)


@pytest.mark.parametrize("hold", [True, False], ids=["held", "not-held"])
def test_checkpoint_deleted_while_being_read(daemon_factory, tmp_path, big_checkpoint, hold):
    """Deleted while the worker reads it: held since its commit (the default), it is verified
    all the same; not held (hold_files = false), it is skipped as vanished, never a failure."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"hold_files": hold})
    big = install(big_checkpoint, run, "ckpt-7")
    d.wait_for("verification started", checkpoint=big)
    for f in sorted(bundle_files(big), key=lambda f: not f.name.endswith(".index")):
        f.unlink()
    ev = outcome(d, big, timeout=60)
    if hold:
        assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev
        assert not d.metric("ckptwatch_checkpoints_skipped_total", watch="run", reason="vanished")
    else:
        assert ev["event"] == "checkpoint skipped" and ev["reason"] == "vanished", ev
        assert d.metric("ckptwatch_checkpoints_skipped_total", watch="run", reason="vanished") == 1
        assert d.metric("ckptwatch_verifications_total", watch="run") == 0
    assert d.get("/readyz")[0] == 200


def test_burst_of_50_checkpoints_nothing_dropped(tf, daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run, max_to_keep=None)
    saved = [trainer.save() for _ in range(50)]
    assert len(set(saved)) == 50

    def accounted() -> int:
        verified = d.metric("ckptwatch_verifications_total", watch="run") or 0
        skipped = d.metric("ckptwatch_checkpoints_skipped_total", watch="run") or 0
        return int(verified + skipped) >= 50

    d.wait_until(accounted, timeout=90, what="50 checkpoints verified or skipped")
    outcome(d, saved[-1])

    verified = d.metric("ckptwatch_verifications_total", watch="run")
    coalesced = d.metric("ckptwatch_checkpoints_skipped_total", watch="run", reason="coalesced")
    vanished = d.metric("ckptwatch_checkpoints_skipped_total", watch="run", reason="vanished")
    assert verified + coalesced + vanished == 50, (verified, coalesced, vanished)
    assert d.metric("ckptwatch_verifications_total", watch="run", verdict="fail") == 0
    assert d.metric("ckptwatch_verifications_total", watch="run", verdict="error") == 0
    assert len(d.api(watch="run")) == verified
    for path in saved:
        done = [e for e in d.events(checkpoint=path) if e["event"] in ("checkpoint verified", "checkpoint skipped")]
        assert len(done) == 1, (path, done)
        assert done[0].get("verdict", "pass") in GOOD and done[0].get("reason") in (None, "coalesced"), done
    assert outcome(d, saved[-1])["event"] == "checkpoint verified", "the newest is always verified"
    assert d.metric("ckptwatch_queue_depth", watch="run") == 0


def test_publish_dir_follows_verified_checkpoints_only(tf, daemon_factory, tmp_path):
    run, published = tmp_path / "run", tmp_path / "verified" / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run), "publish_dir": str(published)}])
    trainer = Trainer(tf, run)

    first = trainer.save()
    assert outcome(d, first)["verdict"] == "pass"
    d.wait_for("published", checkpoint=first)
    assert tf.train.latest_checkpoint(str(published)) == first

    second = trainer.save()
    assert outcome(d, second)["verdict"] in GOOD
    d.wait_for("published", checkpoint=second)
    assert tf.train.latest_checkpoint(str(published)) == second

    writer_files = set(os.listdir(run))
    bad = _corrupt_next(tf, trainer, tmp_path / "staging", run, "ckpt-3")
    writer_files |= {f.name for f in bundle_files(bad)}
    assert outcome(d, bad)["verdict"] == "fail"
    assert tf.train.latest_checkpoint(str(published)) == second, "a failing checkpoint must never be published"
    assert not d.events("published", checkpoint=bad)
    assert set(os.listdir(run)) == writer_files, "only the writer's files in the watched directory"
    assert os.listdir(published) == ["checkpoint"]


def test_daemon_never_writes_into_a_watched_directory(tf, daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    trainer = Trainer(tf, run)
    first = trainer.save()
    before = dir_state(run)
    d = daemon_factory([{"name": "run", "path": str(run)}])  # verifies what is already there
    assert outcome(d, first)["verdict"] == "pass"
    assert dir_state(run) == before

    second = trainer.save()
    bad = _corrupt_next(tf, trainer, tmp_path / "staging", run, "ckpt-3")
    before = dir_state(run)
    assert outcome(d, second)["verdict"] in GOOD
    assert outcome(d, bad)["verdict"] == "fail"
    assert d.stop() == 0
    assert dir_state(run) == before
    assert not any(p.is_relative_to(run) for p in d.state_dir.rglob("*")), "state lives outside"
