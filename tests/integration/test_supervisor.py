"""Supervisor with real but tiny worker processes (`python -c`, speaking the pipe protocol by
hand) and a fake clock for its timeouts: ready, results, a result written just before the exit,
reaping, SIGTERM escalated to SIGKILL, restarts with backoff, reserved exit codes."""

from __future__ import annotations

import selectors
import signal
import sys

import pytest

from ckptwatch.daemon.model import Candidate, Job
from ckptwatch.daemon.supervisor import KILL_GRACE, Supervisor, WorkerSettings
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.worker.protocol import EXIT_DEVICE_MISSING, Result
from tests.tools import wait_until

# modes: answer (a result per job), exit-after (a result with exiting=true, then exit 70),
# die (exit 1 on a job), hang (ignores SIGTERM, never answers), reserved (exit 4 at once),
# chatty (a line that is not a message, then as `answer`)
FAKE_WORKER = r"""
import json, os, signal, sys
mode = sys.argv[1]
def send(**msg):
    sys.stdout.write(json.dumps(msg) + "\n")
    sys.stdout.flush()
if mode == "reserved":
    sys.exit(4)
if mode == "hang":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
if mode == "chatty":
    print("not a protocol line", flush=True)
send(type="ready", pid=os.getpid(), device="cpu")
for line in sys.stdin:
    job = json.loads(line)
    if mode == "die":
        sys.exit(1)
    if mode == "hang":
        continue
    send(type="progress", id=job["id"], tensor="dense/kernel")
    exiting = mode == "exit-after"
    send(type="result", id=job["id"], status="ok", report={"verdict": "pass"}, exiting=exiting)
    if exiting:
        sys.exit(70)
"""

SETTINGS = WorkerSettings(heartbeat_timeout=30.0, job_timeout=5.0, restart_backoff=1.0, restart_backoff_max=3.0)


class Log:
    """Records the supervisor's log calls as (level, event, fields)."""

    def __init__(self):
        self.calls: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.calls.append((level, event, fields))

    def events(self, level: str | None = None) -> list[str]:
        return [e for lv, e, _ in self.calls if level in (None, lv)]


class Rig:
    """One supervisor over fake workers; `clock` is what its timeouts see."""

    def __init__(self, modes: dict[str, str], settings: WorkerSettings = SETTINGS):
        self.now = 1000.0
        self.results: list[tuple[Job, Result]] = []
        self.lost: list[tuple[Job, str]] = []
        self.restarted: list[str] = []
        self.log = Log()
        self.selector = selectors.DefaultSelector()
        self.sup = Supervisor(
            list(modes),
            settings,
            self.selector,
            lambda job, msg: self.results.append((job, msg)),
            lambda job, reason: self.lost.append((job, reason)),
            self.restarted.append,
            self.log,
            command=lambda device, _settings: [sys.executable, "-S", "-c", FAKE_WORKER, modes[device]],
            clock=lambda: self.now,
        )

    def pump(self, until, what: str, read: bool = True, timeout: float = 10.0):
        """Turn the loop as the daemon does (read what workers wrote, tick) until `until()`."""

        def turn():
            if read:
                for key, _ in self.selector.select(timeout=0.02):
                    self.sup.readable(key.data[1])
            self.sup.tick()
            return until()

        return wait_until(turn, timeout, what, interval=0.01, context=lambda: f"log: {self.log.calls}")

    def worker(self, device: str = "cpu"):
        return next(w for w in self.sup.workers if w.device == device)

    def job(self, step: int = 1) -> Job:
        c = Candidate("run", f"/ckpt/run/ckpt-{step}", "bundle", step, f"k{step}")
        return Job(f"job{step}", "run", c, VerifyRequest(c.path))


@pytest.fixture
def rig():
    made: list[Rig] = []

    def make(modes: dict[str, str], settings: WorkerSettings = SETTINGS) -> Rig:
        r = Rig(modes, settings)
        made.append(r)
        r.sup.start()
        return r

    yield make
    for r in made:
        r.sup.stop(timeout=2.0)
        assert all(w.proc is None or w.proc.poll() is not None for w in r.sup.workers), "a worker left behind"


def test_ready_then_a_result_then_idle_again(rig):
    r = rig({"cpu": "chatty"})
    w = r.worker()
    assert w.state == "starting" and not w.status().up
    r.pump(lambda: w.state == "idle", "ready")
    assert w.status().up and r.sup.idle() == [w]
    assert "worker sent a bad line" in r.log.events("warning"), "a stray line is logged, not fatal"
    job = r.job()
    r.sup.dispatch(w, job)
    assert w.state == "busy" and w.status().job == job.candidate.path and r.sup.busy() == [w]
    r.pump(lambda: r.results, "a result")
    ((got_job, msg),) = r.results
    assert got_job is job and msg.status == "ok" and msg.report == {"verdict": "pass"}
    assert w.progress == "dense/kernel"
    assert w.state == "idle" and w.job is None and not r.lost and not r.restarted


def test_a_result_written_just_before_the_exit_still_counts(rig):
    r = rig({"cpu": "exit-after"})
    w = r.worker()
    r.pump(lambda: w.state == "idle", "ready")
    job = r.job()
    r.sup.dispatch(w, job)
    # only tick(): the process has exited when it is reaped, its result still in the pipe
    r.pump(lambda: w.state == "backoff", "reaped", read=False)
    assert [j for j, _ in r.results] == [job] and r.lost == [], "answered, not lost"
    assert r.restarted == ["cpu"] and w.restarts == 1
    (fields,) = [f for _, e, f in r.log.calls if e == "worker exited"]
    assert fields["reason"] == "exit code 70"


def test_a_worker_dying_mid_job_loses_it_and_is_restarted_with_growing_backoff(rig):
    r = rig({"cpu": "die"})
    w = r.worker()
    backoffs = []
    for attempt in range(1, 5):
        r.pump(lambda: w.state == "idle", "ready")
        job = r.job(attempt)
        r.sup.dispatch(w, job)
        r.pump(lambda n=attempt: len(r.lost) == n, "lost")
        assert r.lost[-1] == (job, "worker on cpu exit code 1")
        assert w.state == "backoff" and w.proc is None
        backoffs.append(w.next_start - r.now)
        r.now = w.next_start - 0.001
        r.sup.tick()
        assert w.state == "backoff", "not before its backoff"
        r.now = w.next_start
        r.sup.tick()
        assert w.state == "starting"
    assert backoffs == [1.0, 2.0, 3.0, 3.0], "doubling from restart_backoff, capped at restart_backoff_max"
    assert r.restarted == ["cpu"] * 4 and w.restarts == 4


def test_a_job_timeout_escalates_sigterm_to_sigkill_and_loses_the_job(rig):
    r = rig({"cpu": "hang"})
    w = r.worker()
    r.pump(lambda: w.state == "idle", "ready")
    job = r.job()
    r.sup.dispatch(w, job)
    r.now += SETTINGS.job_timeout + 0.5
    r.sup.tick()
    assert "stopping worker" in r.log.events("warning") and w.term_sent == r.now
    r.now += KILL_GRACE / 2
    r.sup.tick()
    assert w.proc.poll() is None, "SIGTERM ignored, the grace period not over yet"
    r.now += KILL_GRACE
    r.pump(lambda: r.lost, "killed and reaped")
    assert "worker ignored SIGTERM, killing it" in r.log.events("warning")
    assert r.lost == [(job, "worker on cpu job timed out after 5s")]
    (fields,) = [f for _, e, f in r.log.calls if e == "worker exited"]
    assert fields["reason"] == "job timed out after 5s"
    assert w.state == "backoff" and r.restarted == ["cpu"]


def test_missing_heartbeats_stop_an_idle_worker(rig):
    r = rig({"cpu": "answer"})
    w = r.worker()
    r.pump(lambda: w.state == "idle", "ready")
    r.now += SETTINGS.heartbeat_timeout + 1
    r.pump(lambda: w.state == "backoff", "stopped and reaped")
    (fields,) = [f for _, e, f in r.log.calls if e == "stopping worker"]
    assert fields["reason"] == "no heartbeat for 30s"
    assert r.lost == [], "no job, nothing lost"


def test_a_reserved_exit_code_is_not_restarted(rig):
    r = rig({"cpu": "reserved", "gpu:0": "answer"})
    w, other = r.worker("cpu"), r.worker("gpu:0")
    r.pump(lambda: w.state == "gave_up", "gave up")
    assert w.status().gave_up == "the configured device is missing" and EXIT_DEVICE_MISSING == 4
    assert "worker will not be restarted" in r.log.events("error")
    r.now += 3600
    r.pump(lambda: other.state == "idle", "the other worker")
    assert w.state == "gave_up" and w.proc is None and r.restarted == []


def test_stop_terminates_and_reaps_every_worker_killing_the_stubborn(rig):
    r = rig({"cpu": "hang", "gpu:0": "answer"})
    r.pump(lambda: len(r.sup.idle()) == 2, "both ready")
    procs = [w.proc for w in r.sup.workers]
    r.sup.stop(timeout=0.5)
    assert [p.returncode for p in procs] == [-signal.SIGKILL, -signal.SIGTERM]
    assert {w.state for w in r.sup.workers} == {"stopped"}
