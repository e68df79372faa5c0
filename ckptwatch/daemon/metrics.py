"""Prometheus metrics of the daemon.

Two kinds of series, following the exporter conventions in FIELD-NOTES.md:

* counters and the duration histogram are ordinary `prometheus_client` metrics, updated by the
  daemon through `DaemonMetrics.verification_finished / checkpoint_skipped / worker_restarted`
  (a watch's label sets are created by `add_watch` and dropped by `remove_watch` on reload);
* every series whose label set changes at run time (per-watch state, drift, top-K tensors,
  workers) comes from a custom collector that builds fresh metric families from the daemon's
  `Snapshot` on each scrape, so a watch that goes away leaves no stale series behind.

This module imports only the standard library, prometheus_client and ckptwatch.daemon.model.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, PlatformCollector, ProcessCollector
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ckptwatch.daemon.buildinfo import build_labels
from ckptwatch.daemon.model import SKIP_REASONS, STATE_ERROR_KINDS, VERDICTS, Snapshot, TensorDrift, WatchStatus

# From a tiny weights file read from page cache (~50 ms) to a multi-GB checkpoint streamed from
# network storage with model-aware checks on top (~30 min).
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, math.inf)

REFERENCES = ("previous", "golden")
MAX_FINDING_SERIES = 50  # ckptwatch_last_findings series per watch (check ids are a fixed vocabulary: a bound)


class DaemonMetrics:
    """All metrics of the daemon, registered on `registry`.

    `snapshot` is called once per scrape (from the HTTP thread); it must be cheap and must not
    wait on the daemon's work. `top_k` bounds `ckptwatch_tensor_drift_relative_l2` per watch and
    reference. `devices` are the configured worker devices: their restart counters and
    `ckptwatch_worker_up` are exported (as 0) even before a worker reports. `watches` are the
    configured watch names: their verification and skip counters are pre-created at 0 so that
    `increase()` / `rate()` see the first event. `version` defaults to ckptwatch.__version__.
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        snapshot: Callable[[], Snapshot],
        top_k: int = 10,
        devices: Sequence[str] = (),
        *,
        watches: Sequence[str] = (),
        version: str | None = None,
    ) -> None:
        if top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {top_k}")
        self.registry = registry
        self.verifications = Counter(
            "ckptwatch_verifications_total",
            "Verifications finished, by watch and verdict (pass, warn, fail, error).",
            ["watch", "verdict"],
            registry=registry,
        )
        self.skipped = Counter(
            "ckptwatch_checkpoints_skipped_total",
            "Checkpoints not verified, by watch and reason (vanished, coalesced, incomplete, unsupported).",
            ["watch", "reason"],
            registry=registry,
        )
        self.worker_restarts = Counter(
            "ckptwatch_worker_restarts_total",
            "Worker processes restarted after they died, hung or were killed, by device.",
            ["device"],
            registry=registry,
        )
        self.duration = Histogram(
            "ckptwatch_verification_duration_seconds",
            "Wall-clock time taken to verify one checkpoint, by watch.",
            ["watch"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.state_errors = Counter(
            "ckptwatch_state_errors_total",
            "Failed reads and writes of the state in state_dir, by kind (full, read_only, corrupt, locked, io); "
            "the daemon goes on verifying and keeps what it could not write in memory.",
            ["kind"],
            registry=registry,
        )
        for kind in STATE_ERROR_KINDS:
            self.state_errors.labels(kind=kind)
        labels = build_labels(version)
        self.build_info = Gauge(
            "ckptwatch_build_info",
            "Always 1; the running ckptwatch: version, revision (git commit, or unknown), the Python and "
            "TensorFlow versions (TensorFlow from its installed metadata; it is loaded by the workers only).",
            list(labels),
            registry=registry,
        )
        self.build_info.labels(**labels).set(1)
        # process_* (memory, CPU, open and max fds, start time) of the daemon's main process, and
        # python_info: the standard collectors, in the daemon's own registry
        ProcessCollector(registry=registry)
        PlatformCollector(registry=registry)
        for device in devices:
            self.worker_restarts.labels(device=device)
        for watch in watches:
            self.add_watch(watch)
        self.collector = SnapshotCollector(snapshot, top_k=top_k, devices=devices)
        registry.register(self.collector)

    # -- called by the daemon ------------------------------------------------------------------

    def add_watch(self, watch: str) -> None:
        """Pre-create a watch's counters and histogram at 0 (idempotent)."""
        for verdict in VERDICTS:
            self.verifications.labels(watch=watch, verdict=verdict)
        for reason in SKIP_REASONS:
            self.skipped.labels(watch=watch, reason=reason)
        self.duration.labels(watch=watch)

    def remove_watch(self, watch: str) -> None:
        """Drop a watch's series from the counters and the histogram (it left the config); the
        snapshot collector's series go with the watch's status."""
        labelled = (
            (self.verifications, ("watch", "verdict")),
            (self.skipped, ("watch", "reason")),
            (self.duration, ("watch",)),
        )
        for metric, names in labelled:
            for family in metric.collect():
                found = {tuple(s.labels[n] for n in names) for s in family.samples if s.labels.get("watch") == watch}
                for values in found:
                    metric.remove(*values)

    def verification_finished(self, watch: str, verdict: str, seconds: float | None) -> None:
        """One verification finished with `verdict`; `seconds` (if known) goes to the histogram."""
        self.verifications.labels(watch=watch, verdict=verdict).inc()
        if seconds is not None and math.isfinite(seconds) and seconds >= 0:
            self.duration.labels(watch=watch).observe(seconds)

    def checkpoint_skipped(self, watch: str, reason: str) -> None:
        self.skipped.labels(watch=watch, reason=reason).inc()

    def worker_restarted(self, device: str) -> None:
        self.worker_restarts.labels(device=device).inc()

    def state_error(self, kind: str) -> None:
        self.state_errors.labels(kind=kind).inc()


def _gauge(name: str, documentation: str, labels: Sequence[str]) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=list(labels))


def _drift_order(d: TensorDrift) -> tuple[float, str]:
    """Sort key, worst first; NaN (a broken tensor) ranks with +inf as the worst. Ties by name."""
    value = d.relative_l2
    return (-math.inf if math.isnan(value) else -value, d.tensor)


def top_tensors(drifts: Iterable[TensorDrift], k: int) -> list[TensorDrift]:
    """The `k` worst tensors per reference, worst first (references in first-seen order)."""
    by_ref: dict[str, list[TensorDrift]] = {}
    for d in drifts:
        if d.relative_l2 is None:
            continue
        by_ref.setdefault(d.reference, []).append(d)
    out: list[TensorDrift] = []
    for items in by_ref.values():
        out.extend(sorted(items, key=_drift_order)[:k])
    return out


class SnapshotCollector(Collector):
    """Custom collector: fresh metric families built from `snapshot()` on every scrape."""

    # (name, help, labels); describe() returns these without samples, so registering the
    # collector does not call snapshot().
    FAMILIES: tuple[tuple[str, str, tuple[str, ...]], ...] = (
        (
            "ckptwatch_last_verdict",
            "State set of the latest verdict per watch: 1 on the current verdict, 0 on the others; "
            "absent until the watch has a verdict.",
            ("watch", "verdict"),
        ),
        (
            "ckptwatch_last_verification_timestamp_seconds",
            "Unix time at which the latest verification of the watch finished.",
            ("watch",),
        ),
        (
            "ckptwatch_last_pass_timestamp_seconds",
            "Unix time at which the latest verification with verdict pass or warn (a usable checkpoint) finished; "
            "absent until one has.",
            ("watch",),
        ),
        (
            "ckptwatch_last_checkpoint_seen_timestamp_seconds",
            "Unix time at which the daemon last detected a new, completely written checkpoint in the watch "
            "directory (whatever became of it); absent until one is.",
            ("watch",),
        ),
        ("ckptwatch_last_checkpoint_step", "Training step of the latest verified checkpoint.", ("watch",)),
        ("ckptwatch_checkpoint_bytes", "Size on disk of the latest verified checkpoint.", ("watch",)),
        (
            "ckptwatch_drift_relative_l2",
            "Relative L2 distance ||candidate - reference|| / ||reference|| over all weights of the latest "
            "checkpoint, against the previous checkpoint (the baseline) or the golden reference; NaN when a "
            "compared tensor holds NaN or Inf.",
            ("watch", "reference"),
        ),
        (
            "ckptwatch_drift_max_abs",
            "Largest absolute element-wise difference between the latest checkpoint and the reference.",
            ("watch", "reference"),
        ),
        (
            "ckptwatch_tensor_drift_relative_l2",
            "Relative L2 drift of the tensors that moved most in the latest checkpoint (top K per watch and "
            "reference only; the tensors drift checks compare: weights, not counters or optimizer state; NaN for a "
            "tensor holding NaN or Inf).",
            ("watch", "reference", "tensor"),
        ),
        ("ckptwatch_nonfinite_values", "NaN and Inf values found in the latest checkpoint.", ("watch",)),
        (
            "ckptwatch_last_findings",
            "Findings of the latest verified checkpoint by check id and severity (fail, warn): how many tensors or "
            "references each check failed or warned on; a check that no longer applies has no series. Check ids "
            "only: the tensors are in the report (/api/v1/checkpoints/{id}), the log and the status page.",
            ("watch", "check", "severity"),
        ),
        (
            "ckptwatch_baseline_step",
            "Training step of the watch's baseline, what the next checkpoint is compared with: the last checkpoint "
            "that passed against the baseline before it, or one an operator accepted (ckptwatch accept).",
            ("watch",),
        ),
        (
            "ckptwatch_baseline_accepted_timestamp_seconds",
            "Unix time at which an operator last accepted a new baseline for the watch (ckptwatch accept); "
            "absent until one has.",
            ("watch",),
        ),
        (
            "ckptwatch_queue_depth",
            "Checkpoints waiting to be verified, per configured watch.",
            ("watch",),
        ),
        ("ckptwatch_worker_up", "1 when the worker process of the device is running, else 0.", ("device",)),
        (
            "ckptwatch_state_writable",
            "1 when the state in state_dir can be written, else 0 (disk full, read-only, I/O errors; verifying goes "
            "on, what is not written is kept in memory and written when it can be).",
            (),
        ),
        (
            "ckptwatch_state_pending_records",
            "Records (reports, skips) kept in memory because the state could not be written.",
            (),
        ),
        (
            "ckptwatch_watch_armed",
            "1 when the watch's directory is being watched, else 0 with the reason: missing (no such path), "
            "not_a_directory (the path is a file), unreadable (the daemon's user cannot list it) or error; "
            "reason is none while armed. Retired watches are left out.",
            ("watch", "reason"),
        ),
        (
            "ckptwatch_watch_retired",
            "1 for a watch retired as a finished run (config retired = true, or ckptwatch retire): it is not "
            "watched and exports no other series; its history stays in the state. 0 for the others.",
            ("watch",),
        ),
        (
            "ckptwatch_policy_threshold",
            "The watch's own limits that alert rules compare with, by threshold: max_global_golden_drift (relative L2 "
            "vs golden that fails; absent when unbounded), max_global_jump, max_abs_value, stall_intervals.",
            ("watch", "threshold"),
        ),
        (
            "ckptwatch_save_interval_seconds",
            "The run's save cadence as the daemon learnt it: the median interval between its recent checkpoints "
            "(absent until it has seen three).",
            ("watch",),
        ),
        (
            "ckptwatch_config_reload_success",
            "1 when the latest load of the config (start, SIGHUP) succeeded, 0 when the latest reload failed "
            "(the daemon runs on with the config it had).",
            (),
        ),
        (
            "ckptwatch_config_reload_timestamp_seconds",
            "Unix time of the latest successful load of the config (start or SIGHUP reload).",
            (),
        ),
        (
            "ckptwatch_functional_agreement_ratio",
            "Fraction of probe-batch outputs of the restored model that agree with the reference model.",
            ("watch", "reference"),
        ),
        (
            "ckptwatch_functional_output_max_abs_diff",
            "Largest absolute difference between probe-batch outputs of the restored model and the reference.",
            ("watch", "reference"),
        ),
        (
            "ckptwatch_restore_unmatched_objects",
            "Objects or checkpoint values left unmatched when restoring the latest checkpoint into the model.",
            ("watch",),
        ),
    )

    def __init__(self, snapshot: Callable[[], Snapshot], top_k: int = 10, devices: Sequence[str] = ()) -> None:
        self._snapshot = snapshot
        self._top_k = top_k
        self._devices = tuple(devices)

    def describe(self) -> Iterable[Metric]:
        return [_gauge(name, doc, labels) for name, doc, labels in self.FAMILIES]

    def collect(self) -> Iterator[Metric]:
        snap = self._snapshot()
        fam = {name: _gauge(name, doc, labels) for name, doc, labels in self.FAMILIES}

        def add(name: str, labels: list[str], value: float | int | None) -> None:
            if value is not None:
                fam[name].add_metric(labels, float(value))

        for w in snap.watches:
            self._collect_watch(w, add)

        seen: set[str] = set()
        for worker in snap.workers:
            if worker.device in seen:
                continue
            seen.add(worker.device)
            add("ckptwatch_worker_up", [worker.device], 1 if worker.up else 0)
        for device in self._devices:
            if device not in seen:
                add("ckptwatch_worker_up", [device], 0)

        add("ckptwatch_config_reload_success", [], 1 if snap.reload_success else 0)
        add("ckptwatch_config_reload_timestamp_seconds", [], snap.reload_time)
        if snap.state is not None:
            add("ckptwatch_state_writable", [], 1 if snap.state.problem is None else 0)
            add("ckptwatch_state_pending_records", [], snap.state.pending)

        yield from fam.values()

    def _collect_watch(self, w: WatchStatus, add: Callable[[str, list[str], float | int | None], None]) -> None:
        name = w.name
        add("ckptwatch_watch_retired", [name], 1 if w.retired else 0)
        if w.retired:  # a finished run: nothing to alert on
            return
        reason = "none" if w.armed else (w.unarmed_reason or "missing")
        add("ckptwatch_watch_armed", [name, reason], 1 if w.armed else 0)
        for threshold, value in sorted(w.thresholds.items()):
            add("ckptwatch_policy_threshold", [name, threshold], value)
        add("ckptwatch_save_interval_seconds", [name], w.save_interval)
        if w.last_verdict is not None:
            for verdict in VERDICTS:
                add("ckptwatch_last_verdict", [name, verdict], 1 if verdict == w.last_verdict else 0)
        add("ckptwatch_last_verification_timestamp_seconds", [name], w.last_time)
        add("ckptwatch_last_pass_timestamp_seconds", [name], w.last_pass_time)
        add("ckptwatch_last_checkpoint_seen_timestamp_seconds", [name], w.last_seen_time)
        add("ckptwatch_last_checkpoint_step", [name], w.last_step)
        add("ckptwatch_checkpoint_bytes", [name], w.last_bytes)
        for ref, value in w.drift_relative_l2.items():
            add("ckptwatch_drift_relative_l2", [name, ref], value)
        for ref, value in w.drift_max_abs.items():
            add("ckptwatch_drift_max_abs", [name, ref], value)
        for d in top_tensors(w.top_tensors, self._top_k):
            add("ckptwatch_tensor_drift_relative_l2", [name, d.reference, d.tensor], d.relative_l2)
        add("ckptwatch_nonfinite_values", [name], w.nonfinite)
        for (check, severity), count in sorted(w.finding_counts.items())[:MAX_FINDING_SERIES]:
            add("ckptwatch_last_findings", [name, check, severity], count)
        add("ckptwatch_baseline_step", [name], w.baseline_step)
        add("ckptwatch_baseline_accepted_timestamp_seconds", [name], w.accepted.at if w.accepted else None)
        add("ckptwatch_queue_depth", [name], w.queue_depth or 0)
        for ref, value in w.functional_agreement.items():
            add("ckptwatch_functional_agreement_ratio", [name, ref], value)
        for ref, value in w.functional_max_abs_diff.items():
            add("ckptwatch_functional_output_max_abs_diff", [name, ref], value)
        add("ckptwatch_restore_unmatched_objects", [name], w.restore_unmatched)
