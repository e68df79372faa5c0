"""A watch's status (what /metrics and the status page show) from its latest report.

    apply_report(status, report, finished, seconds, top_k, compared)   a report just finished (or restored)
    restore(statuses, watches, latest, passed, top_k, compared)        the statuses of the configured
                                                             watches, the state's newest reports filling new ones
    compared_by(policy)                                      which of a report's tensors drift checks compare
    log_fields(report)                                       the figures of "checkpoint verified"

Drift figures do not lie: a tensor holding NaN or Inf has NaN drift (the engine measures drift
over the finite positions only, so an all-NaN tensor would show 0), and so has the checkpoint's
overall drift when one of its compared tensors does; a figure the report holds as null (JSON has
no NaN) is NaN, not absent. The top-K tensors are those the drift checks compare: weights, not
counters or optimizer state (unless the watch's policy sets include_optimizer), nor excluded ones.

Pure: dicts in, WatchStatus fields out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ckptwatch.daemon.model import TensorDrift, WatchStatus
from ckptwatch.daemon.summary import finding_counts, listed_findings
from ckptwatch.formats.kinds import WEIGHT
from ckptwatch.policy import Policy

REFERENCES = ("previous", "golden")
GOOD = ("pass", "warn")

Compared = Callable[[dict], bool]  # a report's tensor row -> whether drift checks compare it


def weights_only(tensor: dict) -> bool:
    """The default policy's compared tensors: weights (a row without a kind counts as one)."""
    return tensor.get("kind", WEIGHT) == WEIGHT


def compared_by(policy: Policy) -> Compared:
    """The tensors `policy`'s drift checks compare: its kinds (weights, plus optimizer state with
    include_optimizer), less the excluded ones."""
    kinds = policy.compared_kinds()

    def compared(tensor: dict) -> bool:
        name = tensor.get("name") or ""
        return (
            tensor.get("kind", WEIGHT) in kinds
            and not policy.settings_for(name, tensor.get("display") or name)["exclude"]
        )

    return compared


def _nonfinite(tensor: dict) -> bool:
    stats = tensor.get("stats") or {}
    return bool((stats.get("nan") or 0) + (stats.get("inf") or 0))


def _figure(value: float | None, broken: bool) -> float:
    return math.nan if broken or value is None else value


def apply_report(
    status: WatchStatus,
    report: dict,
    finished: float,
    seconds: float | None,
    top_k: int,
    compared: Compared = weights_only,
) -> None:
    """`status` after `report` (finished at unix time `finished`, in `seconds` if known);
    `compared`: which tensors the watch's drift checks compare."""
    ck = report.get("checkpoint") or {}
    status.last_verdict = report["verdict"]
    status.last_checkpoint = ck.get("path")
    status.last_step = ck.get("step")
    status.last_bytes = ck.get("bytes")
    status.last_time = finished
    if report["verdict"] in GOOD:
        status.last_pass_time = finished
    status.last_duration = seconds
    status.drift_relative_l2, status.drift_max_abs = {}, {}
    tensors = [t for t in report.get("tensors", []) if compared(t)]
    for ref, d in (report.get("drift") or {}).items():
        if d:
            broken = any(_nonfinite(t) and (t.get("drift") or {}).get(ref) for t in tensors)
            status.drift_relative_l2[ref] = _figure(d.get("relative_l2"), broken)
            status.drift_max_abs[ref] = _figure(d.get("max_abs"), broken)
    status.top_tensors = top_tensors(report, top_k, compared)
    stats = [t["stats"] for t in report.get("tensors", []) if t.get("stats")]
    status.nonfinite = sum((s.get("nan") or 0) + (s.get("inf") or 0) for s in stats) if stats else None
    status.findings = listed_findings(report)
    status.finding_counts = finding_counts(report)
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


def top_tensors(report: dict, k: int, compared: Compared = weights_only) -> list[TensorDrift]:
    """The `k` compared tensors that drifted most from each reference, worst first (NaN first of all)."""
    top: list[TensorDrift] = []
    for ref in REFERENCES:
        rows = [
            TensorDrift(ref, t.get("display") or t["name"], _figure(t["drift"][ref].get("relative_l2"), _nonfinite(t)))
            for t in report.get("tensors", [])
            if (t.get("drift") or {}).get(ref) and compared(t)
        ]
        top += sorted(rows, key=lambda r: -math.inf if math.isnan(r.relative_l2) else -r.relative_l2)[:k]
    return top


def restore(
    statuses: Mapping[str, WatchStatus],
    watches: Iterable[tuple[str, str]],
    latest: Mapping[str, dict],
    passed: Mapping[str, float],
    top_k: int,
    compared: Mapping[str, Compared] | None = None,
) -> dict[str, WatchStatus]:
    """The status of each configured (name, path): kept from `statuses` where it exists, else new,
    filled from the state's newest report of the watch (`latest`: name -> {report, finished})
    and its last passing time (`passed`); watches no longer configured are left out. `compared`:
    each watch's compared tensors (default: weights)."""
    fresh = {}
    for name, path in watches:
        status = statuses.get(name) or WatchStatus(name, path)
        status.path = path
        if status.last_verdict is None and name in latest:
            which = (compared or {}).get(name, weights_only)
            apply_report(status, latest[name]["report"], latest[name]["finished"], None, top_k, which)
        if status.last_pass_time is None:
            status.last_pass_time = passed.get(name)
        fresh[name] = status
    return fresh


def thresholds(watch: Any) -> dict[str, float]:
    """The limits of a configured watch (config.Watch) that alert rules compare the metrics with
    (`ckptwatch_policy_threshold{threshold}`), so that a rule and the watch's policy agree: the whole
    checkpoint's relative L2 vs golden that fails (when bounded), the relative L2 vs previous that
    warns without history, the largest |weight| that passes, and the number of the run's own save
    intervals without a checkpoint after which it counts as stopped."""
    policy = watch.policy_model()
    out = {"max_abs_value": policy.max_abs_value, "stall_intervals": watch.stall_intervals}
    if policy.profile == "training":
        out["max_global_jump"] = policy.max_global_jump
        bound = policy.global_golden_bound()
        if bound is not None and watch.golden is not None:
            out["max_global_golden_drift"] = bound
    return out


LOGGED_FINDINGS = 20  # "check:tensor" items per log event; `failing_total` says how many there were


def log_fields(report: dict) -> dict:
    """What "checkpoint verified" says about a report: verdict, failing checks (with tensors,
    bounded; `failing_total` counts them all), the warning check ids, overall drift and read time."""
    display = {t["name"]: t.get("display") or t["name"] for t in report.get("tensors", [])}
    failing = [
        f"{f['check']}:{display.get(f['tensor'], f['tensor'])}" if f.get("tensor") else f["check"]
        for f in report["findings"]
        if f["severity"] == "fail"
    ]
    warning_checks = sorted({f["check"] for f in report["findings"] if f["severity"] == "warn"})
    drift = report.get("drift") or {}
    return {
        "verdict": report["verdict"],
        "failing": failing[:LOGGED_FINDINGS],
        "failing_total": len(failing),
        "warnings": sum(1 for f in report["findings"] if f["severity"] == "warn"),
        "warning_checks": warning_checks[:LOGGED_FINDINGS],
        "drift_previous": (drift.get("previous") or {}).get("relative_l2"),
        "drift_golden": (drift.get("golden") or {}).get("relative_l2"),
    }
