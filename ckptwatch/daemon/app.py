"""The daemon: one loop that ties the parts together.

    filesystem event --(events.Watcher)--> Touched on a queue --> rescan that watch
    --(discovery)--> the candidates found --> Pipeline: pending, queued, in flight
    --> Supervisor hands a job to an idle worker --> result --> Pipeline: done or skipped
    --> State, metrics, watch status, log, publish_dir

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
from collections.abc import Callable

from prometheus_client import CollectorRegistry

from ckptwatch import __version__
from ckptwatch.config import Config, load_config
from ckptwatch.daemon import discovery, jobs
from ckptwatch.daemon.durable import DurableState
from ckptwatch.daemon.events import Watcher
from ckptwatch.daemon.holding import Holder
from ckptwatch.daemon.http import StatusServer
from ckptwatch.daemon.logs import configure_logging, get_logger
from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import Job, Snapshot, Touched
from ckptwatch.daemon.notify import Notifier
from ckptwatch.daemon.pipeline import Pipeline
from ckptwatch.daemon.recorder import Recorder
from ckptwatch.daemon.supervisor import Supervisor
from ckptwatch.errors import CkptwatchError, DaemonFailed, TryAgainLater
from ckptwatch.worker.protocol import Result

RECHECK_INCOMPLETE = 0.1  # seconds between completion checks of a checkpoint being written
STOP_BUDGET = 8.0  # after the drain: SIGTERM -> exit well within systemd's/Kubernetes' 10 s
TERMINATION_MESSAGE_MAX = 4096  # bytes Kubernetes keeps of a termination message


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
        self.dirty: set[str] = set()
        self.scan_problems: dict[str, str] = {}  # watch -> why its last rescan failed
        self.next_poll = self.next_recheck = self.next_watchdog = self.next_acceptances = 0.0
        self.notifier = Notifier()
        self.last_turn = time.monotonic()  # the main loop's heartbeat: /livez fails when it stops
        self.stop_signal = ""  # the signal that stopped the daemon
        self.drain_deadline: float | None = None  # SIGTERM: monotonic time the in-flight jobs must end by
        self.drained: list[str] = []  # checkpoints whose verification finished during the drain
        self.verified_this_run = 0
        self.unarmed: dict[str, tuple[str, str]] = {}  # watch -> (reason, detail) while not armed
        self.retired_by_command: dict[str, dict] = {}  # `ckptwatch retire`: watch -> {by, reason, at}
        self.reload_success, self.reload_time = True, time.time()  # the latest load of the config

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
            for name, status in self.recorder.statuses.items():
                s = copy.copy(status)
                s.retired = self.retired(name)
                s.queue_depth = 0 if s.retired else self.pipeline.depth(name)
                s.armed = not s.retired and self.watcher.armed(name) and name not in self.unarmed
                s.unarmed_reason, s.unarmed_detail = self.unarmed.get(name, (None, None))
                watches.append(s)
            return Snapshot(
                __version__,
                self.started,
                watches,
                self.supervisor.statuses(),
                self.state.health(),
                reload_success=self.reload_success,
                reload_time=self.reload_time,
            )

    def retired(self, name: str) -> bool:
        """A finished run: `retired = true` in its config, or `ckptwatch retire` recorded in the state."""
        try:
            configured = self.config.watch(name).retired
        except KeyError:
            return False
        return configured or name in self.retired_by_command

    def _active(self) -> dict[str, str]:
        """The watches to watch: name -> path of every configured watch that is not retired."""
        return {w.name: w.path for w in self.config.watches if not self.retired(w.name)}

    def reports(self, limit: int, watch: str | None = None, verdict: str | None = None) -> list[dict]:
        """Summaries of the newest reports (HTTP threads; the state's own lock)."""
        return self.state.recent_reports(limit, watch, verdict)

    def report(self, report_id: int) -> dict | None:
        """One stored verification with its full report (HTTP threads)."""
        return self.state.report(report_id)

    def stalled(self) -> str | None:
        """Why the main loop counts as wedged (no turn for liveness_timeout seconds), or None.
        Called from HTTP threads: reads two values, takes no lock."""
        age, limit = time.monotonic() - self.last_turn, self.config.daemon.liveness_timeout
        if age <= limit:
            return None
        return f"main loop stalled: no turn for {age:.1f} s (liveness_timeout {limit:g} s)"

    # -- start and stop --------------------------------------------------------------------

    def run(self) -> int:
        cfg = self.config
        self.registry = CollectorRegistry()
        self.metrics = DaemonMetrics(
            self.registry,
            self.snapshot,
            cfg.daemon.top_k_tensors,
            list(cfg.worker.devices),
            watches=[w.name for w in cfg.watches],
        )
        # never fails for a full, read-only or corrupt state (it degrades); StateUnavailable
        # (exit 75) when state_dir cannot be created
        self.state = DurableState(
            cfg.daemon.state_dir,
            reports_kept=cfg.daemon.reports_kept,
            backlog=cfg.daemon.state_backlog,
            retry_max=cfg.daemon.state_retry_max,
            log=self.log,
            on_error=self.metrics.state_error,
        )
        self.recorder = Recorder(self.state, self.metrics, self.log, cfg)
        self.recorder.retired = self.retired
        self.retired_by_command = self.state.retirements()
        for w in cfg.watches:
            if self.retired(w.name):
                self.metrics.remove_watch(w.name)
        swept = self.state.sweep_fingerprints()  # before any worker writes one
        if swept:
            self.log.info("fingerprints removed", count=swept, reason="nothing in the state refers to them")
        stability = discovery.StabilityTracker(cfg.daemon.settle_seconds)
        self.holder = Holder()
        self.pipeline = Pipeline(
            lambda c, now: discovery.check_completion(c, now, stability),
            self.state.seen,
            self.recorder,
            queue_limit=cfg.daemon.queue_limit,
            max_attempts=cfg.daemon.max_attempts,
            hold=self.holder.hold if cfg.daemon.hold_files else None,
        )
        self.supervisor = Supervisor(
            list(cfg.worker.devices),
            jobs.worker_settings(cfg),
            self.selector,
            self._on_result,
            self._on_lost,
            self.metrics.worker_restarted,
            self.log,
        )
        self.watcher = Watcher(self._active(), self._on_touch, cfg.daemon.observer, cfg.daemon.poll_interval)
        try:
            self.http = StatusServer(
                cfg.daemon.listen,
                self.registry,
                self.snapshot,
                self.reports,
                self.stalled,
                cfg.daemon.web_config_file,
                report=self.report,
            )
        except CkptwatchError:  # a bad web config file: one line, exit 2
            self.state.close()
            raise
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
            if self.retired(w.name):
                self.log.info("watch retired", watch=w.name, path=w.path)
            elif self.watcher.armed(w.name):
                self.log.info("watch armed", watch=w.name, path=w.path)
            else:
                self.log.info("watch waiting for its directory", watch=w.name, path=w.path)
        self._check_armed()
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
        self.last_turn = time.monotonic()
        try:
            self._loop()
        finally:
            self._shutdown()
        return 0

    def _shutdown(self) -> None:
        t0 = time.monotonic()
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal must not turn a clean stop into exit 143
            signal.signal(sig, signal.SIG_IGN)
        if not self.stop_signal:  # not stopped by a signal (which sent it already): an error
            self.notifier.stopping()
        aborted = []
        for job in self.supervisor.abort_jobs():
            aborted.append(job.candidate.path)
            self.log.info("verification aborted by shutdown", watch=job.watch, checkpoint=job.candidate.path)
        self.watcher.stop()
        self.supervisor.stop(timeout=min(3.0, STOP_BUDGET))
        self.pipeline.release_all()  # the files held for queued checkpoints
        self.http.stop()
        self.state.close()  # what the drain recorded is on disk before the summary says so
        self._final_summary(aborted)
        self.log.info("daemon stopped", seconds=round(time.monotonic() - t0, 3))

    def _final_summary(self, aborted: list[str]) -> None:
        """One log event, and the same in a few lines in the termination log (Kubernetes shows it in
        `kubectl describe pod` and keeps it with the pod's status after the series are gone)."""
        watches = {}
        lines = [
            f"ckptwatch {__version__} stopped ({self.stop_signal or 'exit'}): "
            f"{self.verified_this_run} verified this run, {len(self.drained)} finished during the drain, "
            f"{len(aborted)} aborted"
        ]
        for name, st in sorted(self.recorder.statuses.items()):
            watches[name] = {
                "verdict": st.last_verdict,
                "step": st.last_step,
                "checkpoint": st.last_checkpoint,
                "published": st.published_checkpoint,
            }
            step = f" at step {st.last_step}" if st.last_step is not None else ""
            where = f" ({st.last_checkpoint})" if st.last_checkpoint else ""
            published = f"; published {st.published_checkpoint}" if st.published_checkpoint else ""
            lines.append(f"watch {name}: {st.last_verdict or 'no verdict'}{step}{where}{published}")
        for path in aborted:
            lines.append(f"aborted: {path} (verified after a restart with the same state)")
        left = {w.name: self.pipeline.scheduler.depth(w.name) for w in self.config.watches}
        left = {name: n for name, n in left.items() if n}
        for name, n in left.items():
            lines.append(f"not verified: {n} queued checkpoint(s) of watch {name}")
        problem = self.state.health().problem
        if problem:
            lines.append(f"state not written: {problem}")
        self.log.info(
            "final summary",
            signal=self.stop_signal or None,
            verified=self.verified_this_run,
            drained=self.drained,
            aborted=aborted,
            queued=left,
            watches=watches,
        )
        termination_log = self.config.daemon.termination_log
        if termination_log and os.path.exists(termination_log):
            data = ("\n".join(lines) + "\n").encode("utf-8", "replace")
            if len(data) > TERMINATION_MESSAGE_MAX:
                data = data[: TERMINATION_MESSAGE_MAX - 4] + b"...\n"
            try:
                with open(termination_log, "wb") as f:
                    f.write(data)
            except OSError as e:
                self.log.warning("cannot write the termination log", path=termination_log, error=str(e))

    # -- the loop ------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            events = self.selector.select(timeout=self._timeout())
            with self.lock:
                self._read(events)  # the wake-up pipe, the workers' results
                self._handle_signals()  # stop, reload
                if self.stopping:
                    if not self._draining():
                        break
                    self._rescan_dirty()  # the last checkpoint, saved just before the trainer exited
                    self._dispatch()  # what is queued, while the budget lasts
                    self.supervisor.tick()  # timeouts, a worker that dies meanwhile
                    self._watchdog()
                    self.state.tick()
                    self.last_turn = time.monotonic()
                    continue
                self._acceptances()  # `ckptwatch accept`: new baselines, each poll_interval
                self._rescan_dirty()  # events, poll_interval, checkpoints being written
                self._dispatch()  # idle workers get the next queued checkpoints
                self.supervisor.tick()  # reap, heartbeats, timeouts, SIGTERM -> SIGKILL, restarts
                self._watchdog()  # sd_notify WATCHDOG=1
                self.state.tick()  # the state: check its file, or retry writing what is kept
            self.last_turn = time.monotonic()  # a turn done: /livez stays 200

    def _draining(self) -> bool:
        """Stopping: whether to keep turning for the verifications in flight and the complete
        checkpoints queued (at the end of a Job, the last one was saved just before the trainer
        exited). Their results are recorded as usual (state, metrics, publish_dir); checkpoints
        still being written are not waited for. Until drain_seconds, or a second SIGTERM."""
        busy = self.supervisor.busy()
        queued = sum(self.pipeline.scheduler.depth(w.name) for w in self.config.watches)
        now = time.monotonic()
        if self.drain_deadline is None:
            budget = self.config.daemon.drain_seconds
            self.drain_deadline = now + budget
            if (busy or queued) and budget > 0:
                in_flight = [w.job.candidate.path for w in busy if w.job is not None]
                self.log.info("draining", seconds=budget, checkpoints=in_flight, queued=queued)
        if not busy and not queued:
            return False
        if now >= self.drain_deadline:
            if self.config.daemon.drain_seconds > 0:
                self.log.warning(
                    "drain budget spent", seconds=self.config.daemon.drain_seconds, in_flight=len(busy), queued=queued
                )
            return False
        return True

    def _acceptances(self) -> None:
        """Apply the baselines operators accepted (`ckptwatch accept` writes them into the state
        from another process) before the next job is dispatched against the old one."""
        now = time.monotonic()
        if now < self.next_acceptances:
            return
        self.next_acceptances = now + self.config.daemon.poll_interval
        self.recorder.apply_acceptances()  # a state that cannot be read: none now (DurableState), retried
        self._retirements()

    def _retirements(self) -> None:
        """Apply `ckptwatch retire` / `--undo` recorded in the state by another process."""
        found = self.state.retirements()
        if found == self.retired_by_command:
            return
        before = {w.name for w in self.config.watches if self.retired(w.name)}
        self.retired_by_command = found
        self._retire_changes(before)

    def _retire_changes(self, before: set[str]) -> None:
        """Stop watching the watches retired since `before` (their series go, their history stays),
        and watch again those no longer retired."""
        now = {w.name for w in self.config.watches if self.retired(w.name)}
        for name in sorted(now - before):
            self.pipeline.remove_watch(name)
            self.metrics.remove_watch(name)
            self.unarmed.pop(name, None)
            self.scan_problems.pop(name, None)
            why = self.retired_by_command.get(name) or {"by": "config", "reason": "retired = true"}
            self.log.info("watch retired", watch=name, by=why["by"], reason=why["reason"])
        for name in sorted(before - now):
            if any(w.name == name for w in self.config.watches):
                self.metrics.add_watch(name)
                self.dirty.add(name)
                self.log.info("watch no longer retired", watch=name)
        if now != before:
            self.watcher.update(self._active())
            self._check_armed()

    def _check_armed(self) -> None:
        """Why each watch that is not retired is not armed (missing, not_a_directory, unreadable,
        error), logged once per new reason; an armed watch whose directory cannot be scanned counts
        as not armed too."""
        unarmed: dict[str, tuple[str, str]] = {}
        for name, path in self._active().items():
            why = self.watcher.why_not_armed(name)
            if why is None and name in self.scan_problems:
                problem = self.scan_problems[name]
                why = ("unreadable" if "PermissionError" in problem else "error", f"{path}: {problem}")
            if why is not None:
                unarmed[name] = why
                if self.unarmed.get(name, (None,))[0] != why[0]:
                    self.log.warning("watch not armed", watch=name, path=path, reason=why[0], detail=why[1])
        self.unarmed = unarmed

    def _timeout(self) -> float:
        """Until the next poll, the next re-check of a checkpoint being written or the next
        watchdog ping: whichever is first (at most a second)."""
        due = self.next_poll
        if self.pipeline.needs_recheck():
            due = min(due, self.next_recheck)
        if self.notifier.watchdog_interval():
            due = min(due, self.next_watchdog)
        return min(max(0.0, due - time.monotonic()), 1.0)

    def _read(self, events: list[tuple[selectors.SelectorKey, int]]) -> None:
        for key, _ in events:
            kind, obj = key.data
            if kind == "wake":
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            elif kind == "worker":
                self.supervisor.readable(obj)

    def _watchdog(self) -> None:
        every = self.notifier.watchdog_interval()
        if every and time.monotonic() >= self.next_watchdog:
            self.notifier.watchdog()
            self.next_watchdog = time.monotonic() + every

    def _handle_signals(self) -> None:
        while True:
            try:
                signum = self.signals.get_nowait()
            except queue.Empty:
                return
            if signum in (signal.SIGTERM, signal.SIGINT):
                if self.stopping:  # a second one: stop draining
                    self.drain_deadline = 0.0
                    continue
                self.stop_signal = signal.Signals(signum).name
                self.log.info("stopping", signal=self.stop_signal)
                self.stopping = True
                self.notifier.stopping()  # systemd: the stop (and its drain) has begun
            elif signum == signal.SIGHUP:
                self._reload()

    def _reload(self) -> None:
        try:
            new = self.overrides(load_config(self.config.source))
        except Exception as e:  # whatever the file holds, a reload never stops the daemon
            error = str(e) if isinstance(e, CkptwatchError) else f"{type(e).__name__}: {e}"
            self.log.error("config reload failed, keeping the running config", error=error)
            self.reload_success = False
            return
        self.reload_success, self.reload_time = True, time.time()
        retired_before = {w.name for w in self.config.watches if self.retired(w.name)}
        if list(new.worker.devices) != list(self.config.worker.devices):
            self.log.warning(
                "worker devices changed: takes effect at the next restart", devices=list(new.worker.devices)
            )
        removed = {w.name for w in self.config.watches} - {w.name for w in new.watches}
        for name in removed:
            self.pipeline.remove_watch(name)
            self.metrics.remove_watch(name)
            self.scan_problems.pop(name, None)
            self.unarmed.pop(name, None)
        self.config = new
        self.pipeline.configure(new.daemon.queue_limit, new.daemon.max_attempts)
        self.pipeline.hold = self.holder.hold if new.daemon.hold_files else None  # for checkpoints found from now on
        self.state.reports_kept = new.daemon.reports_kept
        self.state.backlog, self.state.retry_max = new.daemon.state_backlog, new.daemon.state_retry_max
        for w in new.watches:
            if not self.retired(w.name):
                self.metrics.add_watch(w.name)
        self.watcher.update(self._active())
        self.recorder.configure(new)
        self._retire_changes(retired_before - removed)
        self._check_armed()
        self.dirty.update(self._active())
        self.log.info("config reloaded", watches=[w.name for w in new.watches], source=new.source)

    # -- finding work ----------------------------------------------------------------------

    def _rescan_dirty(self) -> None:
        """Rescan the watches an event named, every watch each poll_interval (writes inside
        SavedModel subdirectories and other hosts' writes on NFS raise no event), and those with
        a checkpoint being written every RECHECK_INCOMPLETE."""
        while True:
            try:
                self.dirty.add(self.touched.get_nowait().watch)
            except queue.Empty:
                break
        now = time.monotonic()
        if now >= self.next_poll:
            self.next_poll = now + self.config.daemon.poll_interval  # re-read: SIGHUP may change it
            for name, armed in self.watcher.tick():
                self.log.info("watch armed" if armed else "watch disarmed", watch=name)
            self._check_armed()
            self.dirty.update(self._active())
        if now >= self.next_recheck:
            self.next_recheck = now + RECHECK_INCOMPLETE
            self.dirty.update(self.pipeline.needs_recheck())
        for name in list(self.dirty):
            self._rescan_guarded(name)
        self.dirty.clear()

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
        if self.retired(name):
            return
        found = discovery.scan(w.name, w.path, list(w.include), list(w.exclude))
        self.pipeline.rescan(name, found.candidates, exporting=bool(found.exporting))

    def _dispatch(self) -> None:
        for worker in self.supervisor.idle():
            job = self.pipeline.next_job(lambda c: jobs.verify_request(self.config, self.state, c))
            if job is None:
                return
            self.supervisor.dispatch(worker, job)
            c = job.candidate
            self.log.info(
                "verification started",
                watch=c.watch,
                checkpoint=c.path,
                step=c.step,
                device=worker.device,
                previous=job.request.previous,
            )

    # -- results -------------------------------------------------------------------------------

    def _on_result(self, job: Job, msg: Result) -> None:
        self.pipeline.result(job, msg)
        if msg.status != "vanished":
            self.verified_this_run += 1
            if self.stopping:
                self.drained.append(job.candidate.path)

    def _on_lost(self, job: Job, reason: str) -> None:
        if not self.stopping:  # shutting down: the job is verified after the restart
            self.pipeline.lost(job, reason)


def run_daemon(config_path: str, overrides: Callable[[Config], Config] | None = None) -> int:
    """`ckptwatch watch`: load and validate the config, set up logging, run until signalled."""
    import prometheus_client

    prometheus_client.disable_created_metrics()  # the *_created series would double every counter
    config = load_config(config_path)
    if overrides:
        config = overrides(config)
    configure_logging(config.daemon.log_format, level=config.daemon.log_level)
    try:
        return Daemon(config, overrides).run()
    except CkptwatchError:
        raise
    except Exception as e:  # a bug: exit 70, which systemd and Kubernetes restart (2 is for config errors)
        get_logger("ckptwatch").exception("daemon failed")
        raise DaemonFailed(f"the daemon stopped on an unexpected error: {type(e).__name__}: {e}") from e
