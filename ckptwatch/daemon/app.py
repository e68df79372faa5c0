"""The daemon: one loop that ties the parts together.

    filesystem event --(events.Watcher)--> Touched on a queue --> rescan that watch
    --(discovery)--> complete, never-seen checkpoints --> Scheduler
    --> Supervisor hands a job to an idle worker --> result --> State, metrics, log,
    publish_dir

Signal handlers and the watchdog thread only enqueue and write a byte to a
wake-up pipe; the loop (a selector over that pipe and the workers' stdout)
does everything else. The HTTP server runs in its own thread and only reads
snapshots taken under `self.lock`. TensorFlow is never imported here.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import os
import queue
import selectors
import signal
import threading
import time
import uuid
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from ckptwatch import __version__
from ckptwatch.config import Config, load_config
from ckptwatch.daemon import discovery
from ckptwatch.daemon.events import Watcher
from ckptwatch.daemon.http import StatusServer
from ckptwatch.daemon.logs import configure_logging, get_logger
from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import Candidate, Snapshot, TensorDrift, Touched, WatchStatus
from ckptwatch.daemon.notify import Notifier
from ckptwatch.daemon.publish import publish
from ckptwatch.daemon.scheduler import Scheduler
from ckptwatch.daemon.state import GoodCheckpoint, State
from ckptwatch.daemon.supervisor import Job, Supervisor, WorkerSettings
from ckptwatch.errors import CkptwatchError, TryAgainLater
from ckptwatch.formats.layout import checkpoint_exists
from ckptwatch.verify.report import Finding, unverified_report
from ckptwatch.verify.request import ModelSpec, VerifyRequest
from ckptwatch.worker.protocol import Result

RECHECK_INCOMPLETE = 0.1  # seconds between completion checks of a checkpoint being written
STOP_BUDGET = 8.0  # SIGTERM -> exit well within systemd's/Kubernetes' 10 s


def error_report(candidate: Candidate, message: str, check: str = "integrity.worker") -> dict:
    """A report for a checkpoint that could not be verified (verdict `error`)."""
    finding = Finding("fail", check, message)
    return unverified_report(candidate.path, finding, candidate.step, verdict="error").to_dict()


def _still_holds(good: GoodCheckpoint) -> bool:
    """Whether `good.path` still holds the bytes that were verified (not a newer save to the same path)."""
    return discovery.current_key(good.path) == good.key


class Daemon:
    def __init__(self, config: Config, overrides: Callable[[Config], Config] | None = None):
        self.overrides = overrides or (lambda c: c)
        self.config = self.overrides(config)
        self.lock = threading.Lock()
        self.started = time.time()
        self.touched: queue.SimpleQueue[Touched] = queue.SimpleQueue()
        self.signals: queue.SimpleQueue[int] = queue.SimpleQueue()
        self.selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self.selector.register(self._wake_r, selectors.EVENT_READ, ("wake", None))
        self.stopping = False
        self.log = get_logger("ckptwatch")
        self.statuses: dict[str, WatchStatus] = {}
        self.dirty: set[str] = set()
        self.incomplete: dict[str, dict[str, Candidate]] = {}
        self.exporting: set[str] = set()  # watches with a SavedModel export under way (no event shows its end)
        self.scan_problems: dict[str, str] = {}  # watch -> why its last rescan failed
        self.in_flight: dict[str, Job] = {}  # watch -> job
        self.seen_keys: set[tuple[str, str]] = set()
        self.attempts: dict[str, int] = {}  # candidate key -> attempts lost so far (workers died or timed out)
        self.notifier = Notifier()

    # -- plumbing ----------------------------------------------------------------------------

    def wake(self) -> None:
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"\0")

    def _on_touch(self, touched: Touched) -> None:  # watchdog's thread
        self.touched.put(touched)
        self.wake()

    def _on_signal(self, signum: int, _frame) -> None:  # signal handlers only enqueue
        self.signals.put(signum)
        self.wake()

    def snapshot(self) -> Snapshot:
        with self.lock:
            watches = []
            for name, status in self.statuses.items():
                s = copy.copy(status)
                s.queue_depth = self.scheduler.depth(name) + (1 if name in self.in_flight else 0)
                s.armed = self.watcher.armed(name)
                watches.append(s)
            return Snapshot(__version__, self.started, watches, self.supervisor.statuses())

    def reports(self, limit: int, watch: str | None = None) -> list[dict]:
        return self.state.recent_reports(limit, watch)

    # -- start and stop --------------------------------------------------------------------

    def _settings(self) -> WorkerSettings:
        w, d = self.config.worker, self.config.daemon
        return WorkerSettings(
            heartbeat_interval=w.heartbeat_interval,
            heartbeat_timeout=w.heartbeat_timeout,
            job_timeout=d.job_timeout,
            restart_backoff=w.restart_backoff,
            restart_backoff_max=w.restart_backoff_max,
            memory_limit_mb=w.memory_limit_mb,
            tensorflow=any(watch.model is not None for watch in self.config.watches),
            tmp_dir=os.path.join(d.state_dir, "tmp"),
        )

    def _watch_statuses(self) -> None:
        latest = self.state.latest()
        passed = self.state.last_pass_times()
        fresh = {}
        for w in self.config.watches:
            status = self.statuses.get(w.name) or WatchStatus(w.name, w.path)
            status.path = w.path
            if status.last_verdict is None and w.name in latest:
                self._apply_report(status, latest[w.name]["report"], latest[w.name]["finished"], None)
            if status.last_pass_time is None:
                status.last_pass_time = passed.get(w.name)
            fresh[w.name] = status
        self.statuses = fresh

    def run(self) -> int:
        cfg = self.config
        self.state = State(cfg.daemon.state_dir)
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(
            self.registry,
            self.snapshot,
            cfg.daemon.top_k_tensors,
            list(cfg.worker.devices),
            watches=[w.name for w in cfg.watches],
        )
        self.scheduler = Scheduler(cfg.daemon.queue_limit)
        self.stability = discovery.StabilityTracker(cfg.daemon.settle_seconds)
        self.supervisor = Supervisor(
            list(cfg.worker.devices),
            self._settings(),
            self.selector,
            self._on_result,
            self._on_lost,
            self.metrics.worker_restarted,
            self.log,
        )
        self.watcher = Watcher(
            {w.name: w.path for w in cfg.watches}, self._on_touch, cfg.daemon.observer, cfg.daemon.poll_interval
        )
        self._watch_statuses()
        self.http = StatusServer(cfg.daemon.listen, self.registry, self.snapshot, self.reports)
        try:
            self.http.start()
        except OSError as e:
            self.log.error("cannot listen", listen=cfg.daemon.listen, error=str(e))
            self.state.close()
            # in use, or not assigned yet at boot: may clear by itself, so the service manager retries
            transient = e.errno in (errno.EADDRINUSE, errno.EADDRNOTAVAIL)
            raise (TryAgainLater if transient else CkptwatchError)(
                f"cannot listen on {cfg.daemon.listen}: {e.strerror or e}"
            ) from None
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        self.supervisor.start()
        self.watcher.start()
        for w in cfg.watches:
            if self.watcher.armed(w.name):
                self.log.info("watch armed", watch=w.name, path=w.path)
            else:
                self.log.info("watch waiting for its directory", watch=w.name, path=w.path)
        host, port = self.http.address
        self.log.info(
            "daemon started",
            version=__version__,
            listen=f"{host}:{port}",
            state_dir=self.state.dir,
            watches=[w.name for w in cfg.watches],
            devices=list(cfg.worker.devices),
            pid=os.getpid(),
        )
        self.notifier.ready(f"watching {len(cfg.watches)} directories")
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        t0 = time.monotonic()
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not turn a clean stop into exit 143
            signal.signal(sig, signal.SIG_IGN)
        self.notifier.stopping()
        for job in self.supervisor.abort_jobs():
            self.log.info("verification aborted by shutdown", watch=job.watch, checkpoint=job.candidate.path)
        self.watcher.stop()
        self.supervisor.stop(timeout=min(3.0, STOP_BUDGET))
        self.http.stop()
        self.state.close()
        self.log.info("daemon stopped", seconds=round(time.monotonic() - t0, 3))

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        next_tick = 0.0
        next_recheck = 0.0
        watchdog_every = self.notifier.watchdog_interval()
        next_watchdog = 0.0
        while not self.stopping:
            now = time.monotonic()
            wait = max(0.0, min(next_tick, next_recheck if self._has_incomplete() else next_tick) - now)
            if watchdog_every:
                wait = min(wait, max(0.0, next_watchdog - now))
            events = self.selector.select(timeout=min(wait, 1.0))
            with self.lock:
                for key, _ in events:
                    kind, obj = key.data
                    if kind == "wake":
                        with contextlib.suppress(BlockingIOError):
                            while os.read(self._wake_r, 4096):
                                pass
                    elif kind == "worker":
                        self.supervisor.readable(obj)
                self._handle_signals()
                if self.stopping:
                    break
                while True:
                    try:
                        t = self.touched.get_nowait()
                    except queue.Empty:
                        break
                    self.dirty.add(t.watch)
                now = time.monotonic()
                if now >= next_tick:
                    next_tick = now + self.config.daemon.poll_interval  # re-read: SIGHUP may change it
                    for name, armed in self.watcher.tick():
                        self.log.info("watch armed" if armed else "watch disarmed", watch=name)
                        self.dirty.add(name)
                    # every watch, each tick: what events do not show (writes inside SavedModel
                    # subdirectories, other hosts' writes on NFS) is found within poll_interval
                    self.dirty.update(w.name for w in self.config.watches)
                if now >= next_recheck:
                    next_recheck = now + RECHECK_INCOMPLETE
                    self.dirty.update(n for n, c in self.incomplete.items() if c)
                    self.dirty.update(self.exporting)
                for name in list(self.dirty):
                    self._rescan_guarded(name)
                self.dirty.clear()
                self._dispatch()
                self.supervisor.tick()
                if watchdog_every and time.monotonic() >= next_watchdog:
                    self.notifier.watchdog()
                    next_watchdog = time.monotonic() + watchdog_every

    def _has_incomplete(self) -> bool:
        return bool(self.exporting) or any(self.incomplete.values())

    def _handle_signals(self) -> None:
        while True:
            try:
                signum = self.signals.get_nowait()
            except queue.Empty:
                return
            if signum in (signal.SIGTERM, signal.SIGINT):
                self.log.info("stopping", signal=signal.Signals(signum).name)
                self.stopping = True
            elif signum == signal.SIGHUP:
                self._reload()

    def _reload(self) -> None:
        try:
            new = self.overrides(load_config(self.config.source))
        except CkptwatchError as e:
            self.log.error("config reload failed, keeping the running config", error=str(e))
            return
        if list(new.worker.devices) != list(self.config.worker.devices):
            self.log.warning(
                "worker devices changed: takes effect at the next restart", devices=list(new.worker.devices)
            )
        removed = {w.name for w in self.config.watches} - {w.name for w in new.watches}
        for name in removed:
            self.scheduler.discard(name)
            self.incomplete.pop(name, None)
            self.exporting.discard(name)
        self.config = new
        for w in new.watches:
            self.metrics.add_watch(w.name)
        self.watcher.update({w.name: w.path for w in new.watches})
        self._watch_statuses()
        self.dirty.update(w.name for w in new.watches)
        self.log.info("config reloaded", watches=[w.name for w in new.watches], source=new.source)

    # -- finding work ----------------------------------------------------------------------

    def _seen(self, watch: str, key: str) -> bool:
        if (watch, key) in self.seen_keys:
            return True
        if self.state.seen(watch, key):
            self.seen_keys.add((watch, key))
            return True
        return False

    def _skip(self, c: Candidate, reason: str, detail: str = "") -> None:
        self.state.record_skip(c.watch, c.path, c.key, reason)
        self.seen_keys.add((c.watch, c.key))
        self.metrics.checkpoint_skipped(c.watch, reason)
        self.log.info("checkpoint skipped", watch=c.watch, checkpoint=c.path, step=c.step, reason=reason, detail=detail)

    def _rescan_guarded(self, name: str) -> None:
        """_rescan, where one unreadable directory (or a bug) stops neither the other watches
        nor the daemon; logged once per new problem, not once per poll_interval."""
        try:
            self._rescan(name)
        except Exception as e:
            problem = f"{type(e).__name__}: {e}"
            if self.scan_problems.get(name) != problem:
                self.scan_problems[name] = problem
                if isinstance(e, OSError):
                    self.log.error("cannot scan the watch directory", watch=name, error=problem)
                else:
                    self.log.exception("rescan failed", watch=name)
            return
        if self.scan_problems.pop(name, None):
            self.log.info("watch directory scanned again", watch=name)

    def _rescan(self, name: str) -> None:
        try:
            w = self.config.watch(name)
        except KeyError:
            return
        now = time.monotonic()
        found = discovery.scan(w.name, w.path, list(w.include), list(w.exclude))
        candidates = found.candidates
        if found.exporting:
            self.exporting.add(name)
        else:
            self.exporting.discard(name)
        present = {c.key for c in candidates}
        for c in self.scheduler.discard(name, keep=present):
            self._skip(c, "vanished", "deleted before it was verified")
        pending = self.incomplete.setdefault(name, {})
        for key in [k for k in pending if k not in present]:
            del pending[key]
        in_flight = self.in_flight.get(name)
        for c in candidates:
            if (
                self._seen(name, c.key)
                or self.scheduler.queued(c.key)
                or (in_flight and in_flight.candidate.key == c.key)
            ):
                continue
            completion = discovery.check_completion(c, now, self.stability)
            if completion.complete:
                pending.pop(c.key, None)
                if name in self.statuses:
                    self.statuses[name].last_seen_time = time.time()
                for dropped in self.scheduler.offer(c):
                    self._skip(
                        dropped, "coalesced", f"a burst: {self.config.daemon.queue_limit} newer checkpoints queued"
                    )
            elif c.key not in pending:
                pending[c.key] = c
                self.log.debug("checkpoint not complete yet", watch=name, checkpoint=c.path, reason=completion.reason)

    def _dispatch(self) -> None:
        for worker in self.supervisor.idle():
            c = self.scheduler.next(set(self.in_flight))
            if c is None:
                return
            job = Job(uuid.uuid4().hex[:12], c.watch, c, self._request(c), attempts=self.attempts.get(c.key, 0))
            self.in_flight[c.watch] = job
            self.supervisor.dispatch(worker, job)
            self.log.info(
                "verification started",
                watch=c.watch,
                checkpoint=c.path,
                step=c.step,
                device=worker.device,
                previous=job.request.previous,
            )

    def _request(self, c: Candidate) -> VerifyRequest:
        w = self.config.watch(c.watch)
        good = self.state.last_good(c.watch)
        previous = fallback = None
        if good and good.key != c.key:
            fallback = good.fingerprint if checkpoint_exists(good.fingerprint) else None
            previous = good.path if _still_holds(good) else fallback
        return VerifyRequest(
            c.path,
            previous,
            previous_fingerprint=fallback,  # if CheckpointManager deletes `previous` before the worker reads it
            golden=w.golden,
            golden_required=False,  # not mounted (yet): verified without it, with a warning
            policy=w.policy_model(),
            model=ModelSpec.from_dict(w.model.spec()) if w.model else None,
            fingerprint_out=self.state.fingerprint_path(c.watch, c.path),
            threads=self.config.worker.threads,
            discovered=True,
        )

    # -- results -------------------------------------------------------------------------------

    def _on_result(self, job: Job, msg: Result) -> None:
        c = job.candidate
        self.in_flight.pop(c.watch, None)
        if msg.status == "vanished":
            self._skip(c, "vanished", msg.message)
            return
        report = msg.report if msg.status == "ok" else None
        if report is None:
            message = msg.message or "the worker could not verify it"
            report = error_report(c, message, msg.check or "integrity.unreadable")
        self._finish(c, report, time.monotonic() - job.queued_at)
        w = self.config.watch(c.watch) if c.watch in self.statuses else None
        if msg.fingerprint:  # integrity passed: this is "previous" from now on
            self.state.set_last_good(c.watch, GoodCheckpoint(c.path, c.step, c.key, msg.fingerprint))
        if w and w.publish_dir and report["verdict"] in ("pass", "warn"):
            try:
                publish(w.publish_dir, c.path)
                self.log.info("published", watch=c.watch, checkpoint=c.path, publish_dir=w.publish_dir)
            except OSError as e:
                self.log.error("cannot publish", watch=c.watch, publish_dir=w.publish_dir, error=str(e))

    def _on_lost(self, job: Job, reason: str) -> None:
        c = job.candidate
        self.in_flight.pop(c.watch, None)
        if self.stopping:
            return
        self.attempts[c.key] = job.attempts
        if job.attempts < self.config.daemon.max_attempts:
            self.log.warning(
                "verification lost, retrying", watch=c.watch, checkpoint=c.path, attempt=job.attempts, reason=reason
            )
            self.scheduler.requeue(c)
            return
        self.log.error(
            "verification failed repeatedly", watch=c.watch, checkpoint=c.path, attempts=job.attempts, reason=reason
        )
        self._finish(
            c, error_report(c, f"gave up after {job.attempts} attempts: {reason}"), time.monotonic() - job.queued_at
        )

    def _finish(self, c: Candidate, report: dict, seconds: float) -> None:
        self.attempts.pop(c.key, None)
        self.state.record_report(c.watch, c.path, c.key, c.step, report)
        self.seen_keys.add((c.watch, c.key))
        verdict = report["verdict"]
        status = self.statuses.get(c.watch)
        if status is not None:
            self._apply_report(status, report, time.time(), seconds)
        self.metrics.verification_finished(c.watch, verdict, seconds)
        display = {t["name"]: t.get("display") or t["name"] for t in report.get("tensors", [])}
        failing = [
            f"{f['check']}:{display.get(f['tensor'], f['tensor'])}" if f.get("tensor") else f["check"]
            for f in report["findings"]
            if f["severity"] == "fail"
        ]
        drift = report.get("drift") or {}
        self.log.info(
            "checkpoint verified",
            watch=c.watch,
            checkpoint=c.path,
            step=c.step,
            verdict=verdict,
            failing=failing[:20],
            warnings=sum(1 for f in report["findings"] if f["severity"] == "warn"),
            drift_previous=(drift.get("previous") or {}).get("relative_l2"),
            drift_golden=(drift.get("golden") or {}).get("relative_l2"),
            seconds=round(seconds, 3),
            read_seconds=(report.get("timings") or {}).get("read_seconds"),
        )

    def _apply_report(self, status: WatchStatus, report: dict, finished: float, seconds: float | None) -> None:
        ck = report.get("checkpoint") or {}
        status.last_verdict = report["verdict"]
        status.last_checkpoint = ck.get("path")
        status.last_step = ck.get("step")
        status.last_bytes = ck.get("bytes")
        status.last_time = finished
        if report["verdict"] in ("pass", "warn"):
            status.last_pass_time = finished
        status.last_duration = seconds
        status.drift_relative_l2, status.drift_max_abs = {}, {}
        for ref, d in (report.get("drift") or {}).items():
            if d:
                status.drift_relative_l2[ref] = d["relative_l2"]
                status.drift_max_abs[ref] = d["max_abs"]
        top: list[TensorDrift] = []
        k = self.config.daemon.top_k_tensors
        for ref in ("previous", "golden"):
            rows = [
                TensorDrift(ref, t.get("display") or t["name"], t["drift"][ref]["relative_l2"])
                for t in report.get("tensors", [])
                if (t.get("drift") or {}).get(ref) and t["drift"][ref].get("relative_l2") is not None
            ]
            top += sorted(rows, key=lambda r: -r.relative_l2)[:k]
        status.top_tensors = top
        stats = [t["stats"] for t in report.get("tensors", []) if t.get("stats")]
        status.nonfinite = sum((s.get("nan") or 0) + (s.get("inf") or 0) for s in stats) if stats else None
        model = report.get("model") or {}
        functional = model.get("functional") or {}
        ref = "golden" if functional.get("reference") else None  # stored golden outputs count as golden
        status.functional_agreement = (
            {ref: functional["agreement"]} if ref and functional.get("agreement") is not None else {}
        )
        status.functional_max_abs_diff = (
            {ref: functional["max_abs_diff"]} if ref and functional.get("max_abs_diff") is not None else {}
        )
        status.restore_unmatched = model.get("restore_unmatched")


def run_daemon(config_path: str, overrides: Callable[[Config], Config] | None = None) -> int:
    """`ckptwatch watch`: load and validate the config, set up logging, run until signalled."""
    import prometheus_client

    prometheus_client.disable_created_metrics()  # the *_created series would double every counter
    config = load_config(config_path)
    if overrides:
        config = overrides(config)
    configure_logging(config.daemon.log_format, level=config.daemon.log_level)
    return Daemon(config, overrides).run()
