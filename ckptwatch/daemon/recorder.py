"""What becomes of the pipeline's events: the state, the metrics, the watch statuses, the log
and publish_dir; and the operators' acceptances of new baselines.

Baselines (DESIGN.md): a checkpoint becomes its watch's baseline ("previous" for the next one)
only when it passed (verdict pass or warn) against the current baseline; a failed one never does,
so a run that goes on from a bad state keeps failing until an operator accepts a new baseline
(`ckptwatch accept`, applied by `apply_acceptances` at each poll). publish_dir follows the
baselines: it advances to each new one, never to a lower step than it names, and after an
acceptance the chain restarts at the accepted checkpoint.

A watch removed by SIGHUP may still have a job in flight: its end is stored and logged, but it
neither updates a status nor brings the watch's series back into /metrics.
"""

from __future__ import annotations

import itertools
import statistics
from collections import deque
from collections.abc import Callable
from typing import Any

from ckptwatch.config import Config
from ckptwatch.daemon import discovery, history, watch_status
from ckptwatch.daemon.durable import DurableState
from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import AcceptedBaseline, Candidate, WatchStatus
from ckptwatch.daemon.pipeline import Done, Event, GaveUp, Pending, Queued, Retrying, Skipped
from ckptwatch.daemon.publish import publish
from ckptwatch.daemon.state import Acceptance, GoodCheckpoint, State

SAVES_KEPT = 8  # intervals between recent checkpoints the save cadence is the median of


def written_at(key: str, default: float) -> float:
    """When a checkpoint was written: the mtime in its identity key (`path|mtime_ns|size`), else `default`."""
    try:
        return int(key.rsplit("|", 2)[1]) / 1e9
    except (IndexError, ValueError):
        return default


def save_interval(times: deque[float]) -> float | None:
    """The run's save cadence: the median of the intervals between its recent checkpoints (None
    until there are two; a checkpoint rewritten within a second of another does not count)."""
    ordered = sorted(times)
    gaps = [b - a for a, b in itertools.pairwise(ordered) if b - a >= 1.0]
    return statistics.median(gaps) if len(gaps) >= 2 else None


class Recorder:
    """`recorder(event)` records one pipeline event; `statuses` are the configured watches'."""

    def __init__(self, state: DurableState | State, metrics: DaemonMetrics, log: Any, config: Config):
        self.state, self.metrics, self.log = state, metrics, log
        self.statuses: dict[str, WatchStatus] = {}
        self.history_problem: str | None = None  # why the last change to a run's history failed
        self.retired: Callable[[str], bool] = lambda watch: False  # set by the daemon
        self.saves: dict[str, deque[float]] = {}  # watch -> times of its recent checkpoints (save cadence)
        self.configure(config)

    def configure(self, config: Config) -> None:
        """At start and on SIGHUP: statuses for the configured watches (kept where they exist,
        a new one filled from the state's newest report of the watch)."""
        self.config = config
        self.compared = {w.name: watch_status.compared_by(w.policy_model()) for w in config.watches}
        self.statuses = watch_status.restore(
            self.statuses,
            [(w.name, w.path) for w in config.watches],
            self.state.latest(),
            self.state.last_pass_times(),
            config.daemon.top_k_tensors,
            self.compared,
        )
        accepted = self.state.last_acceptances()
        latest = self.state.latest()
        for w in config.watches:
            status = self.statuses[w.name]
            status.thresholds = watch_status.thresholds(w)
            if status.last_seen_time is None and w.name in latest:  # a restart: the newest one verified
                status.last_seen_time = latest[w.name]["finished"]
            if w.name not in self.saves:
                recent = self.state.recent_reports(SAVES_KEPT + 1, w.name)
                self.saves[w.name] = deque(sorted(r["finished"] for r in recent), maxlen=SAVES_KEPT + 1)
                status.save_interval = save_interval(self.saves[w.name])
        for name in set(self.saves) - set(self.statuses):
            del self.saves[name]
        for name, status in self.statuses.items():
            baseline, published = self.state.last_good(name), self.state.published(name)
            status.baseline_checkpoint = baseline.path if baseline else None
            status.baseline_step = baseline.step if baseline else None
            status.published_checkpoint = published.path if published else None
            status.published_step = published.step if published else None
            if name in accepted:
                status.accepted = _shown(accepted[name])

    def __call__(self, event: Event) -> None:
        c: Candidate = event.job.candidate if isinstance(event, (Retrying, GaveUp)) else event.candidate
        configured = c.watch in self.statuses
        if isinstance(event, Pending):
            self.log.debug("checkpoint not complete yet", watch=c.watch, checkpoint=c.path, reason=event.reason)
        elif isinstance(event, Queued):
            if configured:
                self.statuses[c.watch].last_seen_time = event.at
                saves = self.saves.setdefault(c.watch, deque(maxlen=SAVES_KEPT + 1))
                saves.append(written_at(c.key, event.at))
                self.statuses[c.watch].save_interval = save_interval(saves)
        elif isinstance(event, Skipped):
            self.state.record_skip(c.watch, c.path, c.key, event.reason)
            if configured and not self.retired(c.watch):
                self.metrics.checkpoint_skipped(c.watch, event.reason)
            where = {"watch": c.watch, "checkpoint": c.path, "step": c.step}
            self.log.info("checkpoint skipped", **where, reason=event.reason, detail=event.detail)
        elif isinstance(event, Retrying):
            where = {"watch": c.watch, "checkpoint": c.path, "attempt": event.job.attempts}
            self.log.warning("verification lost, retrying", **where, reason=event.reason)
        elif isinstance(event, GaveUp):
            where = {"watch": c.watch, "checkpoint": c.path, "attempts": event.job.attempts}
            self.log.error("verification failed repeatedly", **where, reason=event.reason)
        elif isinstance(event, Done):
            self._done(event, configured)

    def _done(self, done: Done, configured: bool) -> None:
        c, report = done.candidate, done.report
        self.state.record_report(c.watch, c.path, c.key, c.step, report)
        if done.fingerprint:  # integrity passed: an operator may accept it as a baseline later
            self.state.record_fingerprint(c.watch, c.path, c.key, c.step, done.fingerprint)
        if configured:
            top_k = self.config.daemon.top_k_tensors
            compared = self.compared.get(c.watch, watch_status.weights_only)
            watch_status.apply_report(self.statuses[c.watch], report, done.finished, done.seconds, top_k, compared)
            if not self.retired(c.watch):
                self.metrics.verification_finished(c.watch, report["verdict"], done.seconds)
        self.log.info(
            "checkpoint verified",
            watch=c.watch,
            checkpoint=c.path,
            step=c.step,
            **watch_status.log_fields(report),
            seconds=round(done.seconds, 3),
            read_seconds=(report.get("timings") or {}).get("read_seconds"),
        )
        if report["verdict"] in watch_status.GOOD:
            self._passed(done)
        else:  # the history, noting a checkpoint that failed a drift check, still ends at the baseline
            baseline = self.state.last_good(c.watch)
            if baseline is not None:
                self._history(history.adopt, self.state.dir, c.watch, c.key, ends_at_key=baseline.key)
        self._history(history.discard, self.state.dir, c.watch)  # what a worker wrote for one that did not pass

    def _history(self, change: Callable[..., object], *args: Any, **kwargs: Any) -> None:
        """A change to a run's history file in state_dir; one that fails (a full or read-only state
        dir) is logged once per new problem and costs nothing else: the next checkpoints are
        judged without the history, and a new one starts."""
        try:
            change(*args, **kwargs)
        except OSError as e:
            problem = f"{type(e).__name__}: {e}"
            if problem != self.history_problem:
                self.log.error("cannot update the run's history", watch=args[1], error=problem)
            self.history_problem = problem
        else:
            self.history_problem = None

    def _passed(self, done: Done) -> None:
        """A passing checkpoint becomes the baseline if it was judged against the baseline (an
        acceptance may have replaced the one its job was given), then is published."""
        c = done.candidate
        where = {"watch": c.watch, "checkpoint": c.path, "step": c.step}
        baseline = self.state.last_good(c.watch)
        if baseline is not None and done.previous not in (baseline.path, baseline.fingerprint):
            if done.previous is not None:
                self.log.warning(
                    "not made the baseline", **where, judged_against=done.previous, baseline=baseline.path,
                    reason="judged against a baseline replaced meanwhile (an acceptance)",
                )  # fmt: skip
                return
            self.log.warning(
                "baseline unavailable", **where, baseline=baseline.path,
                reason="neither its files nor its fingerprint are left: the chain restarts here",
            )  # fmt: skip
        good = GoodCheckpoint(c.path, c.step, c.key, done.fingerprint)
        # the run's history, extended by this one, ends here
        self._history(history.adopt, self.state.dir, c.watch, c.key)
        self.state.set_last_good(c.watch, good)
        status = self.statuses.get(c.watch)
        if status is not None:
            status.baseline_checkpoint, status.baseline_step = good.path, good.step
        self._publish(c.watch, good, accepted=False)

    def _publish_dir(self, watch: str) -> str | None:
        """The watch's publish_dir (None: it has none, or it left the config)."""
        return self.config.watch(watch).publish_dir if watch in self.statuses else None

    def _publish(self, watch: str, good: GoodCheckpoint, accepted: bool) -> None:
        """Point the watch's publish_dir (if it has one) at the new baseline `good`: not at a step
        lower than the published one's unless an operator accepted it."""
        publish_dir = self._publish_dir(watch)
        if not publish_dir:
            return
        where = {"watch": watch, "checkpoint": good.path, "step": good.step, "publish_dir": publish_dir}
        published = self.state.published(watch)
        lower = published and published.step is not None and good.step is not None and good.step < published.step
        if lower and not accepted:
            assert published is not None
            self.log.warning(
                "not published", **where, published=published.path, published_step=published.step,
                reason="its step is lower than the published checkpoint's",
            )  # fmt: skip
            return
        try:
            publish(publish_dir, good.path, mode=self.config.watch(watch).publish_mode)
        except OSError as e:
            self.log.error("cannot publish", **where, error=str(e))
            return
        self._set_published(watch, good)
        self.log.info("published", **where)

    def _set_published(self, watch: str, good: GoodCheckpoint | None) -> None:
        self.state.set_published(watch, good)
        status = self.statuses.get(watch)
        if status is not None:
            status.published_checkpoint = good.path if good else None
            status.published_step = good.step if good else None

    # -- acceptances -----------------------------------------------------------------------------

    def apply_acceptances(self) -> None:
        """Apply the acceptances `ckptwatch accept` recorded since the last call (the daemon calls
        this each poll_interval): the accepted checkpoint is the baseline, logged, shown, and
        published if its files are still there (else publish_dir's chain restarts with the next
        passing checkpoint)."""
        for pending in self.state.pending_acceptances():
            acceptance = self.state.apply_acceptance(pending)
            good = acceptance.checkpoint
            self.log.info(
                "baseline accepted", watch=acceptance.watch, checkpoint=good.path, step=good.step,
                by=acceptance.by, reason=acceptance.reason, accepted_at=acceptance.at,
            )  # fmt: skip
            status = self.statuses.get(acceptance.watch)
            if status is not None:
                status.baseline_checkpoint, status.baseline_step = good.path, good.step
                status.accepted = _shown(acceptance)
            if discovery.current_key(good.path) == good.key:
                self._publish(acceptance.watch, good, accepted=True)
            elif self._publish_dir(acceptance.watch):
                self._set_published(acceptance.watch, None)
                self.log.info(
                    "accepted baseline not published", watch=acceptance.watch, checkpoint=good.path,
                    reason="its files are gone: publish_dir goes on with the next passing checkpoint",
                )  # fmt: skip


def _shown(acceptance: Acceptance) -> AcceptedBaseline:
    good = acceptance.checkpoint
    return AcceptedBaseline(good.path, good.step, acceptance.by, acceptance.reason, acceptance.at)
