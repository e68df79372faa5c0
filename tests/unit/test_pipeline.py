"""Pipeline: each transition of a candidate's life, fed with data (candidates, completion
answers, worker results) and a fake clock; no process, thread, sleep or filesystem."""

from __future__ import annotations

import pytest

from ckptwatch.daemon.model import Candidate, Completion
from ckptwatch.daemon.pipeline import Clock, Done, GaveUp, Pending, Pipeline, Queued, Retrying, Skipped
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.worker.protocol import Result

T0_MONO, T0_WALL = 500.0, 1_700_000_000.0


def cand(step: int, watch: str = "run", version: int = 0) -> Candidate:
    """Checkpoint `ckpt-<step>` of `watch`; another `version` is a rewrite of the same path."""
    path = f"/ckpt/{watch}/ckpt-{step}"
    return Candidate(watch, path, "bundle", step, key=f"{path}:{version}")


def report(c: Candidate, verdict: str = "pass") -> dict:
    return {"verdict": verdict, "checkpoint": {"path": c.path, "step": c.step}, "findings": []}


class Harness:
    """A pipeline with a fake clock, scripted completion answers and a fake state."""

    def __init__(self, queue_limit: int = 8, max_attempts: int = 3):
        self.mono, self.wall = T0_MONO, T0_WALL
        self.incomplete: dict[str, str] = {}  # key -> why it is not complete yet
        self.stored: set[tuple[str, str]] = set()  # (watch, key) the state has seen (earlier runs)
        self.checked: list[tuple[str, float]] = []
        self.events: list = []
        self.ids = iter(f"job{i}" for i in range(1000))
        self.p = Pipeline(
            self.check,
            lambda watch, key: (watch, key) in self.stored,
            self.events.append,
            queue_limit=queue_limit,
            max_attempts=max_attempts,
            clock=Clock(monotonic=lambda: self.mono, time=lambda: self.wall),
            job_id=lambda: next(self.ids),
        )

    def check(self, c: Candidate, now: float) -> Completion:
        self.checked.append((c.key, now))
        reason = self.incomplete.get(c.key)
        return Completion(False, reason) if reason else Completion(True)

    def advance(self, seconds: float) -> None:
        self.mono += seconds
        self.wall += seconds

    def take(self):
        self.events.clear()
        return self.p.next_job(lambda c: VerifyRequest(c.path))

    def drain(self) -> list:
        out, self.events[:] = list(self.events), []
        return out


@pytest.fixture
def h() -> Harness:
    return Harness()


def test_found_complete_is_queued(h):
    c = cand(1)
    h.p.rescan("run", [c])
    assert h.drain() == [Queued(c, T0_WALL)]
    assert h.checked == [(c.key, T0_MONO)], "completion is judged on the monotonic clock"
    assert h.p.stage(c) == "queued"
    assert h.p.depth("run") == 1
    assert h.p.needs_recheck() == set()


def test_found_incomplete_is_pending_with_its_reason_until_complete(h):
    c = cand(1)
    h.incomplete[c.key] = "index missing"
    h.p.rescan("run", [c])
    assert h.drain() == [Pending(c, "index missing")]
    assert h.p.stage(c) == "pending"
    assert h.p.needs_recheck() == {"run"}, "re-checked on a timer: its settle clock needs observations"

    h.incomplete[c.key] = "a shard is newer than the index"
    h.advance(0.25)
    h.p.rescan("run", [c])
    assert h.drain() == [], "pending is said once"
    assert h.p.pending["run"][c.key].reason == "a shard is newer than the index"
    assert h.p.pending["run"][c.key].since == T0_MONO

    del h.incomplete[c.key]
    h.advance(0.5)
    h.p.rescan("run", [c])
    assert h.drain() == [Queued(c, T0_WALL + 0.75)]
    assert h.p.stage(c) == "queued" and h.p.needs_recheck() == set()


def test_pending_that_disappears_is_forgotten_silently(h):
    c = cand(1)
    h.incomplete[c.key] = "writing"
    h.p.rescan("run", [c])
    h.drain()
    h.p.rescan("run", [])
    assert h.drain() == [] and h.p.stage(c) is None


def test_exporting_watch_needs_recheck(h):
    h.p.rescan("run", [], exporting=True)
    assert h.p.needs_recheck() == {"run"}
    h.p.rescan("run", [], exporting=False)
    assert h.p.needs_recheck() == set()


def test_in_flight_one_job_per_watch_and_not_found_again(h):
    a1, a2, b1 = cand(1), cand(2), cand(1, watch="other")
    h.p.rescan("run", [a1, a2])
    h.p.rescan("other", [b1])
    first, second = h.take(), h.take()
    assert {first.candidate, second.candidate} == {a1, b1}, "watches take turns; a busy one waits"
    job = first if first.candidate == a1 else second
    assert (job.candidate, job.attempts, job.queued_at, job.request) == (a1, 1, T0_MONO, VerifyRequest(a1.path))
    assert {first.id, second.id} == {"job0", "job1"}
    assert h.p.stage(a1) == "in flight" and h.p.depth("run") == 2
    assert h.take() is None, "a2 waits for a1: it is judged against a1's result"
    h.checked.clear()
    h.p.rescan("run", [a1, a2])
    assert h.drain() == [] and h.checked == [], "neither in flight nor queued is checked again"


def test_done_with_a_report(h):
    c = cand(3)
    h.p.rescan("run", [c])
    job = h.take()
    h.advance(2.5)
    h.p.result(job, Result(job.id, "ok", report=report(c), fingerprint="/state/fp/ckpt-3.fp"))
    assert h.drain() == [Done(c, report(c), 2.5, T0_WALL + 2.5, "/state/fp/ckpt-3.fp")]
    assert h.p.stage(c) == "seen" and h.p.depth("run") == 0
    h.checked.clear()
    h.p.rescan("run", [c])
    assert h.drain() == [] and h.checked == [], "verified once"


def test_done_says_what_the_candidate_was_judged_against(h):
    """The recorder makes a passing checkpoint the baseline only if it was judged against the
    current one (an acceptance may have replaced the baseline while the job ran)."""
    c = cand(3)
    h.p.rescan("run", [c])
    h.drain()
    job = h.p.next_job(lambda c: VerifyRequest(c.path, "/state/fp/ckpt-2.fp"))
    assert job is not None
    h.p.result(job, Result(job.id, "ok", report=report(c), fingerprint="/state/fp/ckpt-3.fp"))
    (done,) = h.drain()
    assert done.previous == "/state/fp/ckpt-2.fp"


def test_worker_error_is_done_with_an_error_report(h):
    c = cand(3)
    h.p.rescan("run", [c])
    job = h.take()
    h.p.result(job, Result(job.id, "error", message="model factory failed", check="restore.error"))
    (done,) = h.drain()
    assert isinstance(done, Done) and done.fingerprint is None
    assert done.report["verdict"] == "error"
    assert [(f["check"], f["message"]) for f in done.report["findings"]] == [("restore.error", "model factory failed")]


def test_skipped_vanished_while_being_read(h):
    c = cand(3)
    h.p.rescan("run", [c])
    job = h.take()
    h.p.result(job, Result(job.id, "vanished", message="ckpt-3.index: gone"))
    assert h.drain() == [Skipped(c, "vanished", "ckpt-3.index: gone")]
    assert h.p.stage(c) == "seen"


def test_skipped_vanished_while_queued(h):
    c1, c2 = cand(1), cand(2)
    h.p.rescan("run", [c1, c2])
    h.drain()
    h.p.rescan("run", [c2])  # CheckpointManager's max_to_keep deleted ckpt-1
    assert h.drain() == [Skipped(c1, "vanished", "deleted before it was verified")]
    assert h.p.stage(c1) == "seen" and h.p.stage(c2) == "queued"
    assert h.take().candidate == c2


def test_coalesced_under_a_burst_the_newest_kept():
    h = Harness(queue_limit=3)
    burst = [cand(s) for s in range(1, 11)]
    h.p.rescan("run", burst)
    skipped = [e for e in h.drain() if isinstance(e, Skipped)]
    assert [e.candidate.step for e in skipped] == [1, 2, 3, 4, 5, 6, 7]
    assert {e.reason for e in skipped} == {"coalesced"}
    assert skipped[0].detail == "a burst: 3 newer checkpoints queued"
    assert h.take().candidate.step == 8
    assert h.p.depth("run") == 3  # 8 in flight, 9 and 10 queued


def test_lost_then_retried_first(h):
    c1, c2 = cand(1), cand(2)
    h.p.rescan("run", [c1, c2])
    job = h.take()
    h.p.lost(job, "worker on cpu signal SIGKILL")
    assert h.drain() == [Retrying(job, "worker on cpu signal SIGKILL")]
    assert h.p.stage(c1) == "queued"
    retry = h.take()
    assert retry.candidate == c1 and retry.attempts == 2, "back at the front, the attempt counted"
    h.p.result(retry, Result(retry.id, "ok", report=report(c1)))
    assert isinstance(h.drain()[0], Done) and h.p.attempts == {}


def test_lost_max_attempts_times_is_given_up_with_an_error_report():
    h = Harness(max_attempts=2)
    c = cand(1)
    h.p.rescan("run", [c])
    first = h.take()
    h.p.lost(first, "job timed out after 5s")
    second = h.take()
    h.advance(4.0)
    h.p.lost(second, "job timed out after 5s")
    gave_up, done = h.drain()
    assert gave_up == GaveUp(second, "job timed out after 5s")
    assert isinstance(done, Done) and done.candidate == c and done.seconds == 4.0
    assert done.report["verdict"] == "error"
    assert done.report["findings"][0]["check"] == "integrity.worker"
    assert done.report["findings"][0]["message"] == "gave up after 2 attempts: job timed out after 5s"
    assert h.p.stage(c) == "seen" and h.take() is None


def test_a_rewrite_of_the_same_path_is_a_new_candidate(h):
    old, new = cand(3, version=0), cand(3, version=1)
    h.p.rescan("run", [old])
    job = h.take()
    h.p.result(job, Result(job.id, "ok", report=report(old)))
    h.drain()
    h.p.rescan("run", [new])
    assert h.drain() == [Queued(new, T0_WALL)]
    assert h.p.stage(old) == "seen" and h.p.stage(new) == "queued"


def test_seen_by_an_earlier_run_is_not_verified_again(h):
    c = cand(1)
    h.stored.add(("run", c.key))
    h.p.rescan("run", [c])
    assert h.drain() == [] and h.checked == []
    assert h.p.stage(c) == "seen"


def test_a_removed_watch_forgets_what_waits_and_its_job_still_ends(h):
    a1, a2, a3 = cand(1), cand(2), cand(3)
    h.incomplete[a3.key] = "writing"
    h.p.rescan("run", [a1, a2, a3], exporting=True)
    job = h.take()
    h.p.remove_watch("run")
    assert h.p.stage(a2) is None and h.p.stage(a3) is None and h.p.needs_recheck() == set()
    assert h.drain() == [], "nothing recorded as skipped"
    h.p.result(job, Result(job.id, "ok", report=report(a1)))
    assert [type(e) for e in h.drain()] == [Done]


def test_a_removed_watch_s_lost_job_is_not_retried_until_the_watch_is_back(h):
    c = cand(1)
    h.p.rescan("run", [c])
    job = h.take()
    h.p.remove_watch("run")
    h.p.lost(job, "worker died")
    assert h.drain() == [] and h.p.stage(c) is None and h.take() is None
    h.p.rescan("run", [c])  # configured again (SIGHUP): found again
    assert h.drain() == [Queued(c, T0_WALL)]


def test_configure_changes_the_limits(h):
    h.p.configure(queue_limit=1, max_attempts=1)
    c1, c2 = cand(1), cand(2)
    h.p.rescan("run", [c1, c2])
    assert [e.candidate for e in h.drain() if isinstance(e, Skipped)] == [c1]
    job = h.take()
    h.p.lost(job, "died")
    assert [type(e) for e in h.drain()] == [GaveUp, Done]


# -- files held from commit to verdict ---------------------------------------------------------------


class FakeHeld:
    """Stands for a candidate's held files (daemon.holding.Held): records its closing."""

    def __init__(self, c: Candidate, closed: list[str]):
        self.c, self.closed = c, closed

    def stand_ins(self) -> dict[str, str | None]:
        return {self.c.path.rsplit("/", 1)[1] + ".index": "/proc/1/fd/7"}

    def close(self) -> None:
        self.closed.append(self.c.key)


class Holding(Harness):
    def __init__(self, queue_limit: int = 8, max_attempts: int = 3, refuse: tuple[str, ...] = ()):
        super().__init__(queue_limit, max_attempts)
        self.closed: list[str] = []
        self.refuse = refuse  # keys that cannot be held (deleted before the hold, too many fds)
        self.p.hold = lambda c: None if c.key in self.refuse else FakeHeld(c, self.closed)


def test_held_candidate_deleted_while_queued_is_still_verified_through_its_held_files():
    h = Holding()
    c1, c2 = cand(1), cand(2)
    h.p.rescan("run", [c1, c2])
    h.drain()
    assert set(h.p.held) == {c1.key, c2.key}
    h.p.rescan("run", [c2])  # CheckpointManager's max_to_keep deleted ckpt-1: held, so still queued
    assert h.drain() == []
    job = h.take()
    assert job.candidate == c1 and job.request.held == {"ckpt-1.index": "/proc/1/fd/7"}
    h.p.result(job, Result(job.id, "ok", report=report(c1)))
    assert [type(e) for e in h.drain()] == [Done]
    assert h.closed == [c1.key] and set(h.p.held) == {c2.key}


def test_not_held_candidate_deleted_while_queued_is_vanished():
    """Deleted before its commit was seen (so it could not be held): vanished, as before."""
    c1, c2 = cand(1), cand(2)
    h = Holding(refuse=(c1.key,))
    h.p.rescan("run", [c1, c2])
    h.drain()
    h.p.rescan("run", [c2])
    assert h.drain() == [Skipped(c1, "vanished", "deleted before it was verified")]
    assert h.take().request.held is not None  # c2 is held


def test_held_files_released_when_coalesced_skipped_given_up_removed_or_at_shutdown():
    h = Holding(queue_limit=2, max_attempts=1)
    burst = [cand(s) for s in range(1, 6)]
    h.p.rescan("run", burst)
    assert h.closed == [burst[0].key, burst[1].key, burst[2].key]  # coalesced: released at once
    job = h.take()
    h.p.lost(job, "worker died")  # max_attempts=1: given up, an error report
    assert burst[3].key in h.closed
    job = h.take()
    h.p.result(job, Result(job.id, "vanished", message="gone"))
    assert burst[4].key in h.closed and not h.p.held
    other = [cand(s, watch="other") for s in (1, 2)]
    h.p.rescan("other", other)
    h.take()  # other/ckpt-1 in flight, other/ckpt-2 queued
    h.p.remove_watch("other")
    assert other[1].key in h.closed and other[0].key not in h.closed
    h.p.release_all()  # shutdown
    assert other[0].key in h.closed and not h.p.held
    assert len(h.closed) == len(set(h.closed)), "each closed once"


def test_a_retried_job_keeps_its_held_files():
    h = Holding()
    c = cand(1)
    h.p.rescan("run", [c])
    job = h.take()
    h.p.lost(job, "worker died")
    assert h.closed == [] and c.key in h.p.held
    assert h.take().request.held == {"ckpt-1.index": "/proc/1/fd/7"}


def test_a_hold_that_raises_is_that_candidates_alone():
    h = Harness()
    h.p.hold = lambda c: 1 / 0
    c = cand(1)
    h.p.rescan("run", [c])
    assert h.drain() == [Queued(c, T0_WALL)] and not h.p.held
