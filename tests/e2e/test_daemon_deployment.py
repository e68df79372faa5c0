"""Deployment behaviour of a real daemon: the published `checkpoint` file is readable by another
user (read as `nobody` in a child process that dropped root), and SIGTERM drains the verification
in flight within drain_seconds, records it, logs a final summary and writes it to the termination
log (Kubernetes' terminationMessagePath), or aborts it when the budget is spent.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import tempfile
import time
from pathlib import Path

import pytest

from .conftest import GOOD, Trainer, install, outcome, paused

NOBODY = 65534


def _read_as(uid: int, path: Path) -> tuple[bool, str]:
    """Open and read `path` in a forked child running as `uid` (and gid `uid`): (ok, first line or error)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: drop root for good, then try
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with open(path, encoding="utf-8") as f:
                os.write(w, b"ok " + f.readline().encode())
        except BaseException as e:
            with contextlib.suppress(BaseException):
                os.write(w, f"no {type(e).__name__}: {e}".encode())
        finally:
            os._exit(0)
    os.close(w)
    out = b""
    while chunk := os.read(r, 65536):
        out += chunk
    os.close(r)
    os.waitpid(pid, 0)
    text = out.decode()
    return text.startswith("ok "), text[3:]


@pytest.fixture
def shared_dir():
    """A directory every user may traverse (pytest's tmp_path is 0700), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="ckptwatch-shared-"))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.mark.skipif(os.geteuid() != 0, reason="reading as another user needs root to switch to it")
def test_the_published_checkpoint_file_is_readable_by_another_user(tf, daemon_factory, tmp_path, shared_dir):
    run = tmp_path / "run"
    run.mkdir()
    published = shared_dir / "verified" / "run"  # created by the daemon
    old = os.umask(0o077)  # the daemon inherits a strict umask (systemd's UMask=0027 is laxer)
    try:
        d = daemon_factory([{"name": "run", "path": str(run), "publish_dir": str(published)}])
    finally:
        os.umask(old)
    trainer = Trainer(tf, run)
    first = trainer.save()
    assert outcome(d, first, timeout=60)["verdict"] in GOOD
    d.wait_for("published", checkpoint=first)
    state_file = published / "checkpoint"
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o644
    assert stat.S_IMODE(published.stat().st_mode) == 0o755  # made by the daemon: others may look in
    ok, line = _read_as(NOBODY, state_file)
    assert ok, line
    assert line.strip() == f'model_checkpoint_path: "{first}"'

    # every later publication too (a new temp file each time)
    second = trainer.save()
    assert outcome(d, second, timeout=60)["verdict"] in GOOD
    d.wait_for("published", checkpoint=second)
    ok, line = _read_as(NOBODY, state_file)
    assert ok and second in line, line

    # publish_mode = "0640": a group's, not everyone's
    d.stop()
    d.watches[0]["publish_mode"] = "0640"
    d.write_config()
    d.start()
    third = trainer.save()
    assert outcome(d, third, timeout=60)["verdict"] in GOOD
    d.wait_for("published", checkpoint=third)
    assert stat.S_IMODE(state_file.stat().st_mode) == 0o640
    ok, why = _read_as(NOBODY, state_file)
    assert not ok and "PermissionError" in why, why


def _busy_daemon(daemon_factory, tmp_path, big_checkpoint, drain_seconds: float):
    """A daemon with `drain_seconds` and a termination log, its only worker verifying ckpt-1 (a
    large checkpoint): (daemon, run dir, termination log, ckpt-1, the worker)."""
    run = tmp_path / "run"
    run.mkdir()
    termination_log = tmp_path / "termination-log"
    termination_log.write_text("")  # the kubelet creates it; the daemon writes only to one that exists
    d = daemon_factory(
        [{"name": "run", "path": str(run)}],
        daemon={"drain_seconds": drain_seconds, "termination_log": str(termination_log)},
    )
    big = install(big_checkpoint, run, "ckpt-1")
    d.wait_for("verification started", checkpoint=big)
    (worker,) = d.workers()
    return d, run, termination_log, big, worker


def test_sigterm_drains_the_verification_in_flight_and_writes_the_termination_log(
    daemon_factory, tmp_path, big_checkpoint
):
    d, run, termination_log, big, worker = _busy_daemon(daemon_factory, tmp_path, big_checkpoint, drain_seconds=60)
    t0 = time.monotonic()
    with paused(worker):  # certainly still running when SIGTERM comes
        last = install(big_checkpoint, run, "ckpt-2")  # the last save before the trainer exited: queued
        d.wait_until(lambda: d.metric("ckptwatch_queue_depth", watch="run") == 2, 30, "ckpt-2 queued")
        d.signal(signal.SIGTERM)
        d.wait_for("draining", checkpoints=[big], queued=1)
        # still serving while it drains: Prometheus gets the last scrape
        assert d.get("/healthz")[0] == 200
    assert d.stop(timeout=60) == 0
    assert d.wait_for("checkpoint verified", checkpoint=big)["verdict"] == "pass"
    verdict = d.wait_for("checkpoint verified", checkpoint=last)["verdict"]  # a copy: fails as a duplicate save
    summary = d.wait_for("final summary")
    assert summary["drained"] == [big, last] and summary["aborted"] == [] and summary["queued"] == {}, summary
    assert summary["signal"] == "SIGTERM" and summary["verified"] == 2
    assert summary["watches"]["run"]["verdict"] == verdict and summary["watches"]["run"]["checkpoint"] == last
    assert not d.events("verification aborted by shutdown")
    assert time.monotonic() - t0 < 60
    text = termination_log.read_text()
    assert "stopped (SIGTERM)" in text and "2 finished during the drain" in text, text
    assert f"watch run: {verdict} at step 2 ({last})" in text, text

    # recorded: a restart on the same state does not verify them again, and the API has their reports
    d.start()
    time.sleep(1.5)  # several poll_intervals: they would have been queued by now
    assert not d.events("verification started")
    assert {r["path"] for r in d.api()} == {big, last}


def test_a_drain_that_runs_out_of_time_aborts_and_says_so(daemon_factory, tmp_path, big_checkpoint):
    d, _, termination_log, big, worker = _busy_daemon(daemon_factory, tmp_path, big_checkpoint, drain_seconds=1)
    t0 = time.monotonic()
    with paused(worker):  # stuck for longer than the budget
        d.signal(signal.SIGTERM)
        d.wait_for("drain budget spent", timeout=10)
    assert d.stop(timeout=10) == 0
    assert time.monotonic() - t0 < 10
    d.wait_for("verification aborted by shutdown", checkpoint=big)
    summary = d.wait_for("final summary")
    assert summary["aborted"] == [big] and summary["drained"] == [], summary
    assert f"aborted: {big}" in termination_log.read_text()


def test_no_termination_log_is_created_where_there_is_none(daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    absent = tmp_path / "no-such-dir" / "termination-log"
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"termination_log": str(absent)}, ready=False)
    assert d.stop() == 0
    d.wait_for("final summary")
    assert not absent.exists() and not absent.parent.exists()
