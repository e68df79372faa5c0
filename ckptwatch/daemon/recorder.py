"""What becomes of the pipeline's events: the state, the metrics, the watch statuses, the log
and publish_dir.

A watch removed by SIGHUP may still have a job in flight: its end is stored and logged, but it
neither updates a status nor brings the watch's series back into /metrics.
"""

from __future__ import annotations

from typing import Any

from ckptwatch.config import Config
from ckptwatch.daemon import watch_status
from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import Candidate, WatchStatus
from ckptwatch.daemon.pipeline import Done, Event, GaveUp, Pending, Queued, Retrying, Skipped
from ckptwatch.daemon.publish import publish
from ckptwatch.daemon.state import GoodCheckpoint, State


class Recorder:
    """`recorder(event)` records one pipeline event; `statuses` are the configured watches'."""

    def __init__(self, state: State, metrics: DaemonMetrics, log: Any, config: Config):
        self.state, self.metrics, self.log = state, metrics, log
        self.statuses: dict[str, WatchStatus] = {}
        self.configure(config)

    def configure(self, config: Config) -> None:
        """At start and on SIGHUP: statuses for the configured watches (kept where they exist,
        a new one filled from the state's newest report of the watch)."""
        self.config = config
        self.statuses = watch_status.restore(
            self.statuses,
            [(w.name, w.path) for w in config.watches],
            self.state.latest(),
            self.state.last_pass_times(),
            config.daemon.top_k_tensors,
        )

    def __call__(self, event: Event) -> None:
        c: Candidate = event.job.candidate if isinstance(event, (Retrying, GaveUp)) else event.candidate
        configured = c.watch in self.statuses
        if isinstance(event, Pending):
            self.log.debug("checkpoint not complete yet", watch=c.watch, checkpoint=c.path, reason=event.reason)
        elif isinstance(event, Queued):
            if configured:
                self.statuses[c.watch].last_seen_time = event.at
        elif isinstance(event, Skipped):
            self.state.record_skip(c.watch, c.path, c.key, event.reason)
            if configured:
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
        if configured:
            top_k = self.config.daemon.top_k_tensors
            watch_status.apply_report(self.statuses[c.watch], report, done.finished, done.seconds, top_k)
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
        if done.fingerprint:  # integrity passed: this is "previous" from now on
            self.state.set_last_good(c.watch, GoodCheckpoint(c.path, c.step, c.key, done.fingerprint))
        w = self.config.watch(c.watch) if configured else None
        if w and w.publish_dir and report["verdict"] in watch_status.GOOD:
            try:
                publish(w.publish_dir, c.path)
                self.log.info("published", watch=c.watch, checkpoint=c.path, publish_dir=w.publish_dir)
            except OSError as e:
                self.log.error("cannot publish", watch=c.watch, publish_dir=w.publish_dir, error=str(e))
