"""Each candidate's life in the daemon, and the state that goes with it.

    found      a scan lists it; seen before (in this run or an earlier one): nothing more
    pending    not completely written yet (the completion check says why); re-checked at each
               rescan; gone before it completes: forgotten
    queued     complete: its commit is seen, and its files are held open (`hold`) until its
               verdict, so CheckpointManager deleting it meanwhile does not cost it that;
               beyond queue_limit the oldest are skipped (coalesced, released); gone while
               not held (holding off, or it could not be held): skipped (vanished)
    in flight  a worker has it; one per watch at a time, in step order
    done       a report: the worker's, or an `error` one when it could not verify it
    skipped    vanished (deleted before its commit was seen, or, not held, before or while
               it was read) or coalesced
    lost       its worker died or timed out: queued again at the front, until max_attempts,
               then done with an `error` report

A candidate is known by its key (path + mtime/size of its index, file or saved_model.pb), so
a checkpoint rewritten under the same path is a new candidate. Done and skipped keys are never
verified again (the state remembers them across restarts: `seen`).

The pipeline does no I/O of its own: discovery's findings come in as data (`rescan`), the
completion check, the "seen before" lookup and the clock are injected, and every outcome is
handed to `emit` as one of the events below, which the daemon records (state, metrics, log,
watch status). So it is unit-tested without processes, threads, sleeps or a filesystem.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Protocol

from ckptwatch.daemon.model import Candidate, Completion, Job
from ckptwatch.daemon.scheduler import Scheduler
from ckptwatch.verify.report import Finding, unverified_report
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.worker.protocol import Result


@dataclass(frozen=True)
class Clock:
    """Monotonic time for intervals and durations, wall time for what is shown and stored."""

    monotonic: Callable[[], float] = time.monotonic
    time: Callable[[], float] = time.time


# -- what the pipeline emits ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Pending:
    """Found, not completely written yet (emitted once per candidate)."""

    candidate: Candidate
    reason: str


@dataclass(frozen=True)
class Queued:
    """Found complete and queued; `at`: wall time it was detected."""

    candidate: Candidate
    at: float


@dataclass(frozen=True)
class Skipped:
    """Never verified: `reason` is one of model.SKIP_REASONS."""

    candidate: Candidate
    reason: str
    detail: str = ""


@dataclass(frozen=True)
class Retrying:
    """Its worker died or timed out; queued again at the front."""

    job: Job
    reason: str


@dataclass(frozen=True)
class GaveUp:
    """Lost max_attempts times: a Done with an `error` report follows."""

    job: Job
    reason: str


@dataclass(frozen=True)
class Done:
    """Verified (or given up on): `report` is a ckptwatch.report/v1 dict."""

    candidate: Candidate
    report: dict
    seconds: float  # from dispatch to the result
    finished: float  # wall time
    fingerprint: str | None = None  # written by the worker: the candidate passed integrity
    previous: str | None = None  # what it was judged against (the job's previous: a path or a fingerprint)


Event = Pending | Queued | Skipped | Retrying | GaveUp | Done


def error_report(candidate: Candidate, message: str, check: str = "integrity.worker") -> dict:
    """A report for a checkpoint that could not be verified (verdict `error`)."""
    finding = Finding("fail", check, message)
    return unverified_report(candidate.path, finding, candidate.step, verdict="error").to_dict()


class HeldFiles(Protocol):
    """A candidate's files held open (ckptwatch.daemon.holding.Held)."""

    def stand_ins(self) -> dict[str, str | None]: ...

    def close(self) -> None: ...


def _new_job_id() -> str:
    return uuid.uuid4().hex[:12]


@dataclass
class Waiting:
    """A candidate found not completely written (pending), re-checked at each rescan."""

    candidate: Candidate
    reason: str  # the latest completion check's answer
    since: float  # monotonic time it was first found incomplete


class Pipeline:
    """The candidates of every watch, from found to done.

    check(candidate, now) -> Completion    whether it is completely written (now: monotonic)
    seen(watch, key) -> bool               verified or skipped before (the state, across restarts)
    emit(event)                            what to record: Pending, Queued, Skipped, Retrying, GaveUp, Done
    hold(candidate) -> HeldFiles | None    open its files when its commit is seen (None: not held);
                                           closed at its verdict or skip (without: nothing is held)
    """

    def __init__(
        self,
        check: Callable[[Candidate, float], Completion],
        seen: Callable[[str, str], bool],
        emit: Callable[[Event], None],
        *,
        queue_limit: int = 8,
        max_attempts: int = 3,
        clock: Clock | None = None,
        job_id: Callable[[], str] | None = None,
        hold: Callable[[Candidate], HeldFiles | None] | None = None,
    ):
        self.check, self._seen_before, self.emit = check, seen, emit
        self.hold = hold
        self.held: dict[str, HeldFiles] = {}  # candidate key -> its files, held from commit to verdict
        self.max_attempts = max_attempts
        self.clock = clock or Clock()
        self.job_id = job_id or _new_job_id
        self.scheduler = Scheduler(queue_limit)
        self.pending: dict[str, dict[str, Waiting]] = {}  # watch -> key -> incomplete candidate
        self.exporting: set[str] = set()  # watches with a SavedModel export under way (no event shows its end)
        self.in_flight: dict[str, Job] = {}  # watch -> its job (one at a time per watch)
        self.attempts: dict[str, int] = {}  # candidate key -> attempts lost so far
        self.seen_keys: set[tuple[str, str]] = set()  # (watch, key) done or skipped
        self.removed: set[str] = set()  # watches that left the config (until scanned again)

    def configure(self, queue_limit: int, max_attempts: int) -> None:
        """New limits (SIGHUP): the queue keeps its entries."""
        self.scheduler.limit = max(1, queue_limit)
        self.max_attempts = max_attempts

    # -- where a candidate is ------------------------------------------------------------------

    def stage(self, c: Candidate) -> str | None:
        """pending | queued | in flight | seen (done or skipped: never again) | None (not known)."""
        if self._in_flight(c):
            return "in flight"
        if self.scheduler.queued(c.key):
            return "queued"
        if c.key in self.pending.get(c.watch, {}):
            return "pending"
        if (c.watch, c.key) in self.seen_keys:
            return "seen"
        return None

    def _in_flight(self, c: Candidate) -> bool:
        job = self.in_flight.get(c.watch)
        return job is not None and job.candidate.key == c.key

    def depth(self, watch: str) -> int:
        """Queued plus in flight."""
        return self.scheduler.depth(watch) + (1 if watch in self.in_flight else 0)

    def needs_recheck(self) -> set[str]:
        """Watches to rescan soon without an event: a candidate is being written, or an export."""
        return {w for w, p in self.pending.items() if p} | self.exporting

    # -- found ---------------------------------------------------------------------------------

    def rescan(self, watch: str, candidates: Iterable[Candidate], exporting: bool = False) -> None:
        """What a scan of `watch` found now: every candidate present, and whether an export is
        under way. Queued candidates that are gone are skipped as vanished."""
        candidates = list(candidates)
        now = self.clock.monotonic()
        self.removed.discard(watch)
        if exporting:
            self.exporting.add(watch)
        else:
            self.exporting.discard(watch)
        present = {c.key for c in candidates}
        for c in self.scheduler.discard(watch, keep=present | set(self.held)):  # held: verified all the same
            self._skip(c, "vanished", "deleted before it was verified")
        pending = self.pending.setdefault(watch, {})
        for key in [k for k in pending if k not in present]:
            del pending[key]
        for c in candidates:
            if self._seen(c) or self.scheduler.queued(c.key) or self._in_flight(c):
                continue
            completion = self._check(c, now)
            if completion.complete:
                pending.pop(c.key, None)
                self._hold(c)
                self.emit(Queued(c, self.clock.time()))
                for dropped in self.scheduler.offer(c):
                    self._skip(dropped, "coalesced", f"a burst: {self.scheduler.limit} newer checkpoints queued")
            elif c.key in pending:
                pending[c.key].reason = completion.reason
            else:
                pending[c.key] = Waiting(c, completion.reason, now)
                self.emit(Pending(c, completion.reason))

    def _check(self, c: Candidate, now: float) -> Completion:
        """The completion check, where anything it raises is this candidate's alone: it is
        verified as it is (its verdict says what is wrong), and the others go on."""
        try:
            return self.check(c, now)
        except Exception as e:
            return Completion(True, f"could not be checked ({type(e).__name__}: {str(e)[:200]}): verified as is")

    def _hold(self, c: Candidate) -> None:
        """Its commit is seen: hold its files open until its verdict (if holding is on). Anything
        going wrong is this candidate's alone: it is then not held."""
        if self.hold is None or c.key in self.held:
            return
        try:
            held = self.hold(c)
        except Exception:
            held = None
        if held is not None:
            self.held[c.key] = held

    def release(self, key: str) -> None:
        """Close the files held for candidate `key` (if any)."""
        held = self.held.pop(key, None)
        if held is not None:
            held.close()

    def release_all(self) -> None:
        """Shutdown: close every held file."""
        for key in list(self.held):
            self.release(key)

    def remove_watch(self, watch: str) -> None:
        """The watch left the config: forget what waits (a job in flight still finishes, but
        is not retried if its worker dies)."""
        self.removed.add(watch)
        for c in self.scheduler.discard(watch):
            self.release(c.key)
        self.pending.pop(watch, None)
        self.exporting.discard(watch)

    def _seen(self, c: Candidate) -> bool:
        if (c.watch, c.key) in self.seen_keys:
            return True
        if self._seen_before(c.watch, c.key):
            self.seen_keys.add((c.watch, c.key))
            return True
        return False

    def _skip(self, c: Candidate, reason: str, detail: str = "") -> None:
        self.release(c.key)
        self.seen_keys.add((c.watch, c.key))
        self.emit(Skipped(c, reason, detail))

    # -- in flight -----------------------------------------------------------------------------

    def next_job(self, request: Callable[[Candidate], VerifyRequest]) -> Job | None:
        """The next candidate to verify (watches take turns; one job per watch at a time) as a
        Job, now in flight; `request` builds what the worker verifies. None: nothing to do."""
        c = self.scheduler.next(set(self.in_flight))
        if c is None:
            return None
        attempt = self.attempts.get(c.key, 0) + 1
        req = request(c)
        held = self.held.get(c.key)
        if held is not None:  # the worker reads the held files, whether or not the originals are still there
            req = replace(req, held=held.stand_ins())
        job = Job(self.job_id(), c.watch, c, req, attempts=attempt, queued_at=self.clock.monotonic())
        self.in_flight[c.watch] = job
        return job

    def result(self, job: Job, msg: Result) -> None:
        """The worker answered: done, or skipped as vanished (deleted while being read)."""
        c = job.candidate
        self._land(job)
        if msg.status == "vanished":
            self._skip(c, "vanished", msg.message)
            return
        report = msg.report if msg.status == "ok" else None
        if report is None:
            message = msg.message or "the worker could not verify it"
            report = error_report(c, message, msg.check or "integrity.unreadable")
        self._done(job, report, msg.fingerprint)

    def lost(self, job: Job, reason: str) -> None:
        """Its worker died or timed out: queued again at the front, or given up on."""
        c = job.candidate
        self._land(job)
        if c.watch in self.removed:
            self.release(c.key)
            return
        self.attempts[c.key] = job.attempts
        if job.attempts < self.max_attempts:
            self.emit(Retrying(job, reason))
            self.scheduler.requeue(c)
            return
        self.emit(GaveUp(job, reason))
        self._done(job, error_report(c, f"gave up after {job.attempts} attempts: {reason}"), None)

    def _land(self, job: Job) -> None:
        if self.in_flight.get(job.watch) is job:
            del self.in_flight[job.watch]

    def _done(self, job: Job, report: dict, fingerprint: str | None) -> None:
        c = job.candidate
        self.release(c.key)
        self.attempts.pop(c.key, None)
        self.seen_keys.add((c.watch, c.key))
        seconds = self.clock.monotonic() - job.queued_at
        self.emit(Done(c, report, seconds, self.clock.time(), fingerprint, job.request.previous))


__all__ = [
    "Clock",
    "Done",
    "Event",
    "GaveUp",
    "HeldFiles",
    "Pending",
    "Pipeline",
    "Queued",
    "Retrying",
    "Skipped",
    "Waiting",
    "error_report",
]
