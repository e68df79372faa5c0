"""Worker processes, supervised in the spirit of gunicorn's arbiter.

One worker per configured device, each a fresh interpreter (`python -m
ckptwatch.worker`, never forked: TF and CUDA are not fork-safe) pinned through
its environment. The daemon's single loop drives everything here:
`readable(worker)` when a worker's stdout has data, `tick(now)` on every turn,
which reaps exited workers, checks heartbeats and job timeouts, escalates
SIGTERM to SIGKILL and restarts with exponential backoff. A worker that exits
with a reserved code (device missing, TF import failed) is not restarted: the
same start would fail the same way.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ckptwatch.daemon.model import Job, WorkerStatus
from ckptwatch.worker import protocol
from ckptwatch.worker.protocol import RESERVED_EXITS, ProtocolError, Ready, Result, decode_message, encode

KILL_GRACE = 3.0  # seconds between SIGTERM and SIGKILL
START_TIMEOUT = 120.0  # a worker imports its libraries (TF for model checks) before its first heartbeat
HEALTHY_AFTER = 60.0  # a worker up this long gets its backoff reset


@dataclass
class WorkerSettings:
    heartbeat_interval: float = 2.0
    heartbeat_timeout: float = 30.0
    job_timeout: float = 900.0
    restart_backoff: float = 1.0
    restart_backoff_max: float = 60.0
    memory_limit_mb: int | None = None
    tensorflow: bool = False  # a watch has model-aware checks: workers import TF at start (exit 3 if they cannot)
    tmp_dir: str | None = None  # each worker's TMPDIR lives below it, emptied at each start


def worker_tmp(device: str, settings: WorkerSettings) -> str | None:
    """A worker's own TMPDIR: what a worker that exits at once (os._exit after a model check
    overran) leaves there is removed when the next one starts."""
    if settings.tmp_dir is None:
        return None
    return os.path.join(settings.tmp_dir, "worker-" + device.replace(":", "-"))


def worker_env(device: str, settings: WorkerSettings) -> dict[str, str]:
    """Pin the device: `cpu` hides every GPU; `gpu:N` shows only GPU N. TF must
    grow GPU memory on demand (or stay under a cap) so the training job keeps its memory."""
    env = dict(os.environ)
    tmp = worker_tmp(device, settings)
    if tmp is not None:
        env["TMPDIR"] = tmp
    env["CUDA_VISIBLE_DEVICES"] = "" if device == "cpu" else device.split(":", 1)[1]
    env["TF_FORCE_GPU_ALLOW_GROWTH"] = "true"
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    env["PYTHONUNBUFFERED"] = "1"
    if settings.memory_limit_mb:
        env["CKPTWATCH_GPU_MEMORY_LIMIT_MB"] = str(settings.memory_limit_mb)
    return env


class Worker:
    """One worker slot: its process (if any), its job, its restart bookkeeping."""

    def __init__(self, device: str):
        self.device = device
        self.proc: subprocess.Popen | None = None
        self.state = "stopped"  # starting | idle | busy | exiting | backoff | gave_up | stopped
        self.job: Job | None = None
        self.job_started = 0.0
        self.last_seen = 0.0
        self.started = 0.0
        self.restarts = 0
        self.backoff = 0.0
        self.next_start = 0.0
        self.buffer = b""
        self.progress: str | None = None
        self.term_sent: float | None = None
        self.stop_reason = ""
        self.gave_up: str | None = None

    def status(self) -> WorkerStatus:
        return WorkerStatus(
            device=self.device,
            up=self.state in ("idle", "busy"),
            pid=self.proc.pid if self.proc else None,
            restarts=self.restarts,
            job=self.job.candidate.path if self.job else None,
            gave_up=self.gave_up,
        )


def worker_command(device: str, settings: WorkerSettings) -> list[str]:
    """How a worker is started: a fresh interpreter running `python -m ckptwatch.worker`."""
    cmd = [sys.executable, "-m", "ckptwatch.worker", "--device", device]
    cmd += ["--heartbeat", str(settings.heartbeat_interval)]
    if settings.tensorflow:
        cmd.append("--tensorflow")
    return cmd


class Supervisor:
    """`on_result(job, result)`: a worker answered; `on_lost(job, reason)`: its worker died or was
    stopped with the job unanswered; `on_restart(device)`: a worker is restarted. `command` and
    `clock` (monotonic seconds) can be replaced, e.g. by tests."""

    def __init__(
        self,
        devices: list[str],
        settings: WorkerSettings,
        selector: selectors.BaseSelector,
        on_result: Callable[[Job, Result], None],
        on_lost: Callable[[Job, str], None],
        on_restart: Callable[[str], None],
        log: Any,
        *,
        command: Callable[[str, WorkerSettings], list[str]] = worker_command,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.settings = settings
        self.selector = selector
        self.on_result, self.on_lost, self.on_restart = on_result, on_lost, on_restart
        self.log = log
        self.command, self.clock = command, clock
        self.workers = [Worker(d) for d in devices]

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        for w in self.workers:
            self._spawn(w)

    def _spawn(self, w: Worker) -> None:
        cmd = self.command(w.device, self.settings)
        tmp = worker_tmp(w.device, self.settings)
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
            os.makedirs(tmp, mode=0o700, exist_ok=True)
        w.proc = subprocess.Popen(
            cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=worker_env(w.device, self.settings), bufsize=0
        )
        assert w.proc.stdout is not None
        os.set_blocking(w.proc.stdout.fileno(), False)
        self.selector.register(w.proc.stdout, selectors.EVENT_READ, ("worker", w))
        now = self.clock()
        w.state, w.started, w.last_seen, w.buffer, w.term_sent, w.stop_reason = "starting", now, now, b"", None, ""
        self.log.info("worker started", device=w.device, pid=w.proc.pid)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM every worker, SIGKILL what is left after `timeout`; reap all."""
        for w in self.workers:
            if w.proc and w.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    w.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout  # real time: this waits for the processes
        for w in self.workers:
            if not w.proc:
                continue
            try:
                w.proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                w.proc.kill()
                w.proc.wait()
            self._forget(w)
            w.state = "stopped"

    def _forget(self, w: Worker) -> None:
        if w.proc and w.proc.stdout:
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(w.proc.stdout)
            w.proc.stdout.close()
        if w.proc and w.proc.stdin:
            with contextlib.suppress(OSError):
                w.proc.stdin.close()

    # -- jobs ------------------------------------------------------------------------------

    def idle(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "idle"]

    def busy(self) -> list[Worker]:
        return [w for w in self.workers if w.state == "busy"]

    def dispatch(self, w: Worker, job: Job) -> None:
        assert w.state == "idle" and w.proc and w.proc.stdin
        w.job, w.state, w.job_started, w.progress = job, "busy", self.clock(), None
        try:
            w.proc.stdin.write(encode(protocol.Job(job.id, job.request)))
            w.proc.stdin.flush()
        except (BrokenPipeError, OSError):
            self._terminate(w, "stdin closed")

    def readable(self, w: Worker) -> bool:
        """Handle what the worker wrote; False when nothing more can be read now (or ever: EOF)."""
        assert w.proc and w.proc.stdout
        try:
            data = os.read(w.proc.stdout.fileno(), 1 << 20)
        except BlockingIOError:
            return False
        except OSError:
            data = b""
        if not data:  # EOF: the worker is exiting; tick() reaps it
            with contextlib.suppress(KeyError, ValueError):
                self.selector.unregister(w.proc.stdout)
            return False
        w.buffer += data
        *lines, w.buffer = w.buffer.split(b"\n")
        for line in lines:
            if line.strip():
                self._message(w, line)
        return True

    def _message(self, w: Worker, line: bytes) -> None:
        w.last_seen = self.clock()
        try:
            msg = decode_message(line)
        except ProtocolError as e:
            line_text = line[:200].decode("utf-8", "replace")
            self.log.warning("worker sent a bad line", device=w.device, error=str(e), line=line_text)
            return
        if isinstance(msg, Ready) and w.state == "starting":
            w.state = "idle"
            self.log.info("worker ready", device=w.device, pid=w.proc.pid if w.proc else None)
        elif isinstance(msg, protocol.Progress):
            w.progress = msg.tensor
        elif isinstance(msg, Result) and w.job is not None and msg.id == w.job.id:
            job, w.job, w.state = w.job, None, "idle"
            if msg.exiting:  # it leaves on its own (a model check overran): no new job for it
                w.state, w.term_sent = "exiting", self.clock()
            self.on_result(job, msg)

    # -- the arbiter's turn ----------------------------------------------------------------

    def tick(self, now: float | None = None) -> None:
        now = self.clock() if now is None else now
        for w in self.workers:
            if w.proc is not None and w.proc.poll() is not None:
                self._reaped(w, now)
            elif w.proc is not None and w.state in ("starting", "idle", "busy", "exiting"):
                if w.term_sent is not None:
                    if now - w.term_sent > KILL_GRACE:
                        what = "did not exit" if w.state == "exiting" else "ignored SIGTERM"
                        self.log.warning(f"worker {what}, killing it", device=w.device, pid=w.proc.pid)
                        with contextlib.suppress(ProcessLookupError):
                            w.proc.kill()
                elif w.state == "busy" and now - w.job_started > self.settings.job_timeout:
                    self._terminate(w, f"job timed out after {self.settings.job_timeout:g}s")
                elif w.state == "starting":
                    if now - w.started > max(START_TIMEOUT, self.settings.heartbeat_timeout):
                        self._terminate(w, f"not ready after {now - w.started:.0f}s")
                elif now - w.last_seen > self.settings.heartbeat_timeout:
                    self._terminate(w, f"no heartbeat for {self.settings.heartbeat_timeout:g}s")
                elif w.state != "busy" and w.backoff and now - w.started > HEALTHY_AFTER:
                    w.backoff = 0.0
            if w.state == "backoff" and now >= w.next_start:
                self._spawn(w)

    def _terminate(self, w: Worker, reason: str) -> None:
        if w.proc is None or w.term_sent is not None:
            return
        w.stop_reason = reason
        w.term_sent = self.clock()
        self.log.warning("stopping worker", device=w.device, pid=w.proc.pid, reason=reason, tensor=w.progress)
        with contextlib.suppress(ProcessLookupError):
            w.proc.send_signal(signal.SIGTERM)

    def _reaped(self, w: Worker, now: float) -> None:
        assert w.proc is not None
        code = w.proc.returncode
        while w.proc.stdout and not w.proc.stdout.closed and self.readable(w):
            pass  # a result written just before the exit (a model check past its timeout) still counts
        self._forget(w)
        pid, w.proc = w.proc.pid, None
        how = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit code {code}"
        reason = w.stop_reason or how
        job, w.job = w.job, None
        if job is not None:
            where = f" while reading {w.progress}" if w.progress else ""
            self.on_lost(job, f"worker on {w.device} {reason}{where}")
        if code in RESERVED_EXITS:
            w.state, w.gave_up = "gave_up", RESERVED_EXITS[code]
            self.log.error(
                "worker will not be restarted", device=w.device, pid=pid, exit_code=code, reason=RESERVED_EXITS[code]
            )
            return
        w.backoff = min(max(w.backoff * 2, self.settings.restart_backoff), self.settings.restart_backoff_max)
        w.state, w.next_start = "backoff", now + w.backoff
        w.restarts += 1
        self.on_restart(w.device)
        self.log.warning("worker exited", device=w.device, pid=pid, reason=reason, restart_in=round(w.backoff, 2))

    def abort_jobs(self) -> list[Job]:
        """On shutdown: the jobs in flight (their workers are being stopped)."""
        return [w.job for w in self.workers if w.job is not None]

    def statuses(self) -> list[WorkerStatus]:
        return [w.status() for w in self.workers]
