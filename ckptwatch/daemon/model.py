"""Domain types of the daemon. Plain data; behaviour lives in the modules that use them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ckptwatch.verify.request import VerifyRequest

VERDICTS = ("pass", "warn", "fail", "error")
SKIP_REASONS = ("vanished", "coalesced", "incomplete", "unsupported")
# why a watch is not armed (`ckptwatch_watch_armed{reason}`): its path does not exist, is a file (or
# anything but a directory), cannot be read or listed by the daemon's user, or could not be watched
# for another reason (e.g. the inotify watch limit); "armed" on the series of an armed watch
UNARMED_REASONS = ("missing", "not_a_directory", "unreadable", "error")


@dataclass(frozen=True)
class Touched:
    """Something changed under a watched directory (what the event handler enqueues)."""

    watch: str
    path: str  # absolute path of the file or directory the event named
    vanished: bool = False  # the event was a deletion


@dataclass(frozen=True)
class Candidate:
    """A checkpoint found in a watch directory."""

    watch: str
    path: str  # absolute: bundle prefix (".../ckpt-3"), file (".../m.keras") or SavedModel directory (".../export/3")
    kind: str  # "bundle" | "hdf5" | "keras" | "savedmodel"
    step: int | None
    key: str  # identity for "verify once": path plus the mtime_ns and size of its index, file or saved_model.pb

    @property
    def sort_key(self) -> tuple:
        return (self.step if self.step is not None else -1, self.path)


@dataclass
class Job:
    """One attempt at verifying a candidate: handed to a worker, answered by a Result (or lost)."""

    id: str
    watch: str
    candidate: Candidate
    request: VerifyRequest  # what the worker verifies
    attempts: int = 1  # this attempt's number (1 for the first)
    queued_at: float = 0.0  # monotonic time it was handed out (the duration is measured from it)


@dataclass(frozen=True)
class Completion:
    """Whether a candidate is completely written, and if not, why (for logs)."""

    complete: bool
    reason: str = ""


@dataclass
class TensorDrift:
    reference: str  # previous | golden
    tensor: str
    relative_l2: float


@dataclass(frozen=True)
class AcceptedBaseline:
    """An operator's latest `ckptwatch accept` of a watch, as shown on the status page and in metrics."""

    checkpoint: str
    step: int | None
    by: str
    reason: str
    at: float  # unix time it was recorded


@dataclass
class WatchStatus:
    """Per-watch figures the metrics and the status page show (a snapshot copy)."""

    name: str
    path: str
    armed: bool = False  # the directory exists and is being watched
    unarmed_reason: str | None = None  # one of UNARMED_REASONS while not armed (None: not known yet)
    unarmed_detail: str | None = None  # the path and the error, for /readyz and the log
    retired: bool = False  # a finished run (config `retired = true` or `ckptwatch retire`): not watched
    thresholds: dict[str, float] = field(default_factory=dict)  # name -> value the alert rules compare with
    save_interval: float | None = None  # median seconds between the run's recent checkpoints (learnt)
    last_verdict: str | None = None
    last_checkpoint: str | None = None
    last_step: int | None = None
    last_bytes: int | None = None
    last_time: float | None = None  # unix seconds of the last finished verification
    last_pass_time: float | None = None  # unix seconds of the last verification with verdict pass or warn
    last_seen_time: float | None = None  # unix seconds at which the newest complete checkpoint was detected
    last_duration: float | None = None
    drift_relative_l2: dict[str, float] = field(default_factory=dict)  # reference -> value
    drift_max_abs: dict[str, float] = field(default_factory=dict)
    top_tensors: list[TensorDrift] = field(default_factory=list)
    nonfinite: int | None = None
    # the latest report's fail and warn findings: listed (check, tensor, message, numbers; bounded,
    # summary.listed_findings) for the page and the API, counted by (check, severity) for /metrics
    findings: list[dict] = field(default_factory=list)
    finding_counts: dict[tuple[str, str], int] = field(default_factory=dict)
    queue_depth: int = 0
    functional_agreement: dict[str, float] = field(default_factory=dict)  # model-aware checks (later)
    functional_max_abs_diff: dict[str, float] = field(default_factory=dict)
    restore_unmatched: int | None = None
    # baselines: what the next checkpoint is compared with, what publish_dir names, the latest acceptance
    baseline_checkpoint: str | None = None
    baseline_step: int | None = None
    published_checkpoint: str | None = None
    published_step: int | None = None
    accepted: AcceptedBaseline | None = None


@dataclass
class WorkerStatus:
    device: str
    up: bool = False
    pid: int | None = None
    restarts: int = 0
    job: str | None = None  # candidate path being verified
    gave_up: str | None = None  # why restarting stopped (reserved exit code), if it did


STATE_ERROR_KINDS = ("full", "read_only", "corrupt", "locked", "io")  # what went wrong with the state


@dataclass(frozen=True)
class StateHealth:
    """Whether the state can be written: `problem` says why not (None: it can); `pending`: records
    kept in memory until it can."""

    problem: str | None = None
    pending: int = 0


@dataclass
class Snapshot:
    """Everything the HTTP thread may read, copied under the daemon's lock."""

    version: str
    started: float
    watches: list[WatchStatus]
    workers: list[WorkerStatus]
    state: StateHealth | None = None  # None: not known (no state behind this snapshot)
    reload_success: bool = True  # whether the latest load of the config (start, SIGHUP) succeeded
    reload_time: float | None = None  # unix time of the latest successful load

    @property
    def active_watches(self) -> list[WatchStatus]:
        """The watches that are not retired."""
        return [w for w in self.watches if not w.retired]

    @property
    def ready(self) -> bool:
        """Every watch that is not retired armed (and one at least), a worker up, the state writable."""
        state_ok = self.state is None or self.state.problem is None
        active = self.active_watches
        return bool(active) and all(w.armed for w in active) and any(w.up for w in self.workers) and state_ok
