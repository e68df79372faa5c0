"""A watch's status (what /metrics and the status page show) from its latest report.

    apply_report(status, report, finished, seconds, top_k)   a report just finished (or restored)
    restore(statuses, watches, latest, passed, top_k)        the statuses of the configured watches,
                                                             the state's newest reports filling new ones
    log_fields(report)                                       the figures of "checkpoint verified"

Pure: dicts in, WatchStatus fields out.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from ckptwatch.daemon.model import TensorDrift, WatchStatus

REFERENCES = ("previous", "golden")
GOOD = ("pass", "warn")


def apply_report(status: WatchStatus, report: dict, finished: float, seconds: float | None, top_k: int) -> None:
    """`status` after `report` (finished at unix time `finished`, in `seconds` if known)."""
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
    for ref, d in (report.get("drift") or {}).items():
        if d:
            status.drift_relative_l2[ref] = d["relative_l2"]
            status.drift_max_abs[ref] = d["max_abs"]
    status.top_tensors = top_tensors(report, top_k)
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


def top_tensors(report: dict, k: int) -> list[TensorDrift]:
    """The `k` tensors that drifted most from each reference, worst first."""
    top: list[TensorDrift] = []
    for ref in REFERENCES:
        rows = [
            TensorDrift(ref, t.get("display") or t["name"], t["drift"][ref]["relative_l2"])
            for t in report.get("tensors", [])
            if (t.get("drift") or {}).get(ref) and t["drift"][ref].get("relative_l2") is not None
        ]
        top += sorted(rows, key=lambda r: -r.relative_l2)[:k]
    return top


def restore(
    statuses: Mapping[str, WatchStatus],
    watches: Iterable[tuple[str, str]],
    latest: Mapping[str, dict],
    passed: Mapping[str, float],
    top_k: int,
) -> dict[str, WatchStatus]:
    """The status of each configured (name, path): kept from `statuses` where it exists, else new,
    filled from the state's newest report of the watch (`latest`: name -> {report, finished})
    and its last passing time (`passed`); watches no longer configured are left out."""
    fresh = {}
    for name, path in watches:
        status = statuses.get(name) or WatchStatus(name, path)
        status.path = path
        if status.last_verdict is None and name in latest:
            apply_report(status, latest[name]["report"], latest[name]["finished"], None, top_k)
        if status.last_pass_time is None:
            status.last_pass_time = passed.get(name)
        fresh[name] = status
    return fresh


def log_fields(report: dict) -> dict:
    """What "checkpoint verified" says about a report: verdict, failing checks (with tensors),
    warnings, overall drift and read time."""
    display = {t["name"]: t.get("display") or t["name"] for t in report.get("tensors", [])}
    failing = [
        f"{f['check']}:{display.get(f['tensor'], f['tensor'])}" if f.get("tensor") else f["check"]
        for f in report["findings"]
        if f["severity"] == "fail"
    ]
    drift = report.get("drift") or {}
    return {
        "verdict": report["verdict"],
        "failing": failing[:20],
        "warnings": sum(1 for f in report["findings"] if f["severity"] == "warn"),
        "drift_previous": (drift.get("previous") or {}).get("relative_l2"),
        "drift_golden": (drift.get("golden") or {}).get("relative_l2"),
    }
