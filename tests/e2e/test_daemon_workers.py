"""The daemon's workers as real processes: killed mid-job, timed out, and the daemon stopped
(SIGTERM) while idle and while a job runs."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import psutil
import pytest

from .conftest import Trainer, install, outcome, paused, report_of


def test_worker_sigkilled_mid_job_is_restarted_and_the_job_retried(daemon_factory, tmp_path, big_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    (worker,) = d.workers()
    assert d.metric("ckptwatch_worker_restarts_total", device="cpu") == 0

    big = install(big_checkpoint, run, "ckpt-1")
    d.wait_for("verification started", checkpoint=big)
    mark = d.mark()
    worker.send_signal(signal.SIGSTOP)  # certainly mid-job, however fast this machine reads
    worker.send_signal(signal.SIGKILL)

    exited = d.wait_for("worker exited", after=mark, pid=worker.pid)
    assert "SIGKILL" in exited["reason"], exited
    status, body = d.get("/readyz")
    up = d.metric("ckptwatch_worker_up", device="cpu")
    if not d.events("worker ready", after=mark):  # still in its restart: not ready
        assert status == 503 and "no worker up" in body and up == 0, (status, body, up)
    d.wait_for("verification lost, retrying", after=mark, checkpoint=big)
    d.wait_for("worker ready", after=mark)
    ev = outcome(d, big, timeout=60)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev
    assert len(d.events("verification started", checkpoint=big)) == 2

    (new,) = d.workers()
    assert new.pid != worker.pid
    assert d.metric("ckptwatch_worker_restarts_total", device="cpu") >= 1
    assert d.metric("ckptwatch_worker_up", device="cpu") == 1
    assert d.metric("ckptwatch_verifications_total", watch="run", verdict="pass") == 1
    assert report_of(d, big)["verdict"] == "pass"
    assert d.get("/readyz")[0] == 200


def test_a_restarted_worker_gets_an_empty_tmpdir_of_its_own(daemon_factory, tmp_path):
    """What a worker leaves in its TMPDIR when it exits at once (os._exit after a model check
    overran: no finally runs) is gone when the next one starts."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    (worker,) = d.workers()
    tmp = Path(worker.environ()["TMPDIR"])
    assert tmp == d.state_dir / "tmp" / "worker-cpu" and tmp.is_dir() and not any(tmp.iterdir())
    (tmp / "ckptwatch-left-behind").mkdir()
    (tmp / "ckptwatch-left-behind" / "restored.weights.h5").write_bytes(b"x" * 1024)
    mark = d.mark()
    worker.kill()
    d.wait_for("worker ready", after=mark)
    (new,) = d.workers()
    assert new.pid != worker.pid and new.environ()["TMPDIR"] == str(tmp)
    assert not any(tmp.iterdir())


def test_hung_worker_is_killed_on_missing_heartbeats_and_the_job_retried(daemon_factory, tmp_path, big_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory(
        [{"name": "run", "path": str(run)}], worker={"heartbeat_interval": 0.5, "heartbeat_timeout": 3.0}
    )
    (worker,) = d.workers()
    big = install(big_checkpoint, run, "ckpt-1")
    d.wait_for("verification started", checkpoint=big)
    mark = d.mark()
    worker.send_signal(signal.SIGSTOP)  # hung: no progress, no heartbeat, SIGTERM stays pending
    try:
        stopping = d.wait_for("stopping worker", timeout=10, after=mark, pid=worker.pid)
        assert "heartbeat" in stopping["reason"], stopping
        d.wait_for("worker ignored SIGTERM, killing it", timeout=10, after=mark, pid=worker.pid)
        d.wait_for("worker exited", timeout=10, after=mark, pid=worker.pid)
    finally:
        if worker.is_running():
            worker.send_signal(signal.SIGCONT)
    d.wait_for("verification lost, retrying", after=mark, checkpoint=big)
    ev = outcome(d, big, timeout=60)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev
    assert d.metric("ckptwatch_worker_restarts_total", device="cpu") == 1
    assert d.metric("ckptwatch_worker_up", device="cpu") == 1


def test_worker_start_up_is_not_judged_by_heartbeat_timeout(daemon_factory, tmp_path):
    """Regression (66578f1): a starting worker sends its first heartbeat after warm_up() (~1 s);
    judged by heartbeat_timeout it was killed before 'worker ready', in an endless restart loop."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory(
        [{"name": "run", "path": str(run)}],
        worker={"heartbeat_interval": 0.1, "heartbeat_timeout": 0.3},
        ready=False,
    )
    d.wait_for("worker ready", timeout=15)
    assert not d.events("stopping worker"), d.events("stopping worker")


def test_job_timeout_gives_verdict_error_after_max_attempts(tf, daemon_factory, tmp_path, big_checkpoint):
    """A job that makes no progress (its worker is SIGSTOPped right after dispatch, so this
    does not depend on how fast the machine reads) is ended at job_timeout, retried, and
    recorded as verdict `error` after max_attempts; the daemon goes on verifying.
    Regression (66578f1): a requeued checkpoint got a fresh Job (attempts 0), so it was retried
    forever ('verification lost, retrying' attempt=1 every time)."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"job_timeout": 1.0, "max_attempts": 2})
    big = install(big_checkpoint, run, "ckpt-1")
    mark = 0
    for attempt in (1, 2):
        d.wait_for("verification started", after=mark, checkpoint=big)
        (worker,) = d.workers()
        worker.send_signal(signal.SIGSTOP)
        try:
            ev = d.wait_for("stopping worker", timeout=10, after=mark, pid=worker.pid)
            assert "timed out" in ev["reason"], ev
        finally:
            worker.send_signal(signal.SIGCONT)  # the pending SIGTERM ends it now
        mark = d.mark()
        d.wait_for("worker exited", after=0, pid=worker.pid)
        if attempt == 1:
            d.wait_for("verification lost, retrying", checkpoint=big)
    failed = d.wait_for("verification failed repeatedly", timeout=10, checkpoint=big)
    assert failed["attempts"] == 2, failed
    ev = outcome(d, big)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "error", ev
    assert len(d.events("verification started", checkpoint=big)) == 2
    assert report_of(d, big)["verdict"] == "error"
    assert d.metric("ckptwatch_verifications_total", watch="run", verdict="error") == 1
    assert d.metric("ckptwatch_last_verdict", watch="run", verdict="error") == 1

    # alive, and verifying the next checkpoint on a restarted worker
    small = Trainer(tf, run).save(number=2)
    ev = outcome(d, small, timeout=30)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev
    assert len(d.events("verification started", checkpoint=big)) == 2, "the failed one is not tried again"
    assert d.running() and d.get("/readyz")[0] == 200


def test_first_job_of_a_fresh_worker_starts_at_once(tf, daemon_factory, tmp_path):
    """Regression (66578f1): warm_up() did not import the engine, so the first job after every
    worker start spent ~0.7 s importing it, counted against job_timeout."""
    run = tmp_path / "run"
    run.mkdir()
    # max_attempts = 1: one try, whatever the retry bookkeeping does
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"job_timeout": 0.25, "max_attempts": 1})
    small = Trainer(tf, run).save()
    ev = outcome(d, small, timeout=30)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", (ev, d.tail())


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_while_idle(daemon_factory, tmp_path, sig):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    workers = d.workers()
    assert len(workers) == 1
    t0 = time.monotonic()
    assert d.stop(sig, timeout=10) == 0
    assert time.monotonic() - t0 < 10
    d.wait_for("stopping", signal=sig.name)
    d.wait_for("daemon stopped")
    assert not d.stray_workers(), "the worker outlived the daemon"
    assert not any(w.is_running() and w.status() != "zombie" for w in workers)


def test_sigterm_while_a_job_runs_then_restart_verifies_it(daemon_factory, tmp_path, big_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"drain_seconds": 0})  # no drain: aborted
    big = install(big_checkpoint, run, "ckpt-1")
    d.wait_for("verification started", checkpoint=big)
    (worker,) = d.workers()
    t0 = time.monotonic()
    with paused(worker):  # the job is certainly still running when the daemon gets SIGTERM
        d.signal(signal.SIGTERM)
        d.wait_for("stopping", signal="SIGTERM")
    assert d.stop(signal.SIGTERM, timeout=10) == 0
    assert time.monotonic() - t0 < 10
    d.wait_for("verification aborted by shutdown", checkpoint=big)
    d.wait_for("daemon stopped")
    assert not d.events("checkpoint verified", checkpoint=big)
    assert not d.stray_workers(), "the worker outlived the daemon"

    # nothing lost: the aborted checkpoint is verified after a restart on the same state dir
    d.start()
    ev = outcome(d, big, timeout=60)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev


def test_daemon_sigkilled_mid_job_leaves_no_worker_and_loses_nothing(daemon_factory, tmp_path, big_checkpoint):
    """A crash of the main process (OOM killer, kill -9): its worker notices and exits, and a
    restart on the same state dir verifies the checkpoint that was in flight."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], worker={"heartbeat_interval": 0.5})
    big = install(big_checkpoint, run, "ckpt-1")
    d.wait_for("verification started", checkpoint=big)
    (worker,) = d.workers()
    with paused(worker):
        d.kill()  # SIGKILL: no shutdown of any kind
    try:
        worker.wait(10)
    except psutil.TimeoutExpired:
        raise AssertionError("the worker outlived its SIGKILLed daemon by 10 s") from None
    assert not d.stray_workers()

    d.start()
    ev = outcome(d, big, timeout=60)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", ev
