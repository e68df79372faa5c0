"""A report's summary: what lists (the API's /api/v1/checkpoints, the status page's history) show of
one verification, small and bounded whatever the size of the checkpoint.

    summarize(report)        {format, tensors, bytes, counts, findings, drift, nonfinite}
    listed_findings(report)  the report's fail and warn findings (fail first), each with its check,
                             its tensor (the display name), reference, message and numbers; at
                             most MAX_FINDINGS, messages cut at MAX_MESSAGE characters
    finding_counts(report)   {(check, severity): count} of its fail and warn findings

The full report stays in the state and is served by /api/v1/checkpoints/{id} and the per-checkpoint
page. Pure: dicts in, dicts out; the daemon's main process imports it (no numpy).
"""

from __future__ import annotations

import math
from typing import Any

MAX_FINDINGS = 20  # findings listed per summary (the full report has all of them)
MAX_MESSAGE = 400  # characters of a finding's message in a summary
LISTED_SEVERITIES = ("fail", "warn")
NUMBERS = ("value", "limit", "expected", "basis")


def _display(report: dict) -> dict[str, str]:
    return {t["name"]: t.get("display") or t["name"] for t in report.get("tensors") or () if t.get("name")}


def _cut(text: Any, limit: int = MAX_MESSAGE) -> str:
    text = "" if text is None else str(text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def listed_findings(report: dict, limit: int = MAX_FINDINGS) -> list[dict]:
    """The fail and warn findings of `report`, fail first (the report's own order within each),
    tensor names as shown to people (`display`), bounded."""
    display = _display(report)
    out: list[dict] = []
    for severity in LISTED_SEVERITIES:
        for f in report.get("findings") or ():
            if f.get("severity") != severity:
                continue
            if len(out) >= limit:
                return out
            tensor = f.get("tensor")
            item = {
                "severity": severity,
                "check": str(f.get("check") or ""),
                "tensor": display.get(tensor, tensor) if tensor else None,
                "reference": f.get("reference"),
                "message": _cut(f.get("message")),
            }
            for key in NUMBERS:
                if f.get(key) is not None:
                    item[key] = f[key]
            out.append(item)
    return out


def finding_counts(report: dict) -> dict[tuple[str, str], int]:
    """(check, severity) -> how many findings of `report` (fail and warn only)."""
    counts: dict[tuple[str, str], int] = {}
    for f in report.get("findings") or ():
        severity = f.get("severity")
        if severity in LISTED_SEVERITIES:
            key = (str(f.get("check") or ""), str(severity))
            counts[key] = counts.get(key, 0) + 1
    return counts


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def broken_drift(report: dict, ref: str) -> bool:
    """A weight holding NaN or Inf was compared with `ref`: the overall figure (measured over the
    finite positions only) would understate it, so the summary has none (as /metrics has NaN)."""
    for t in report.get("tensors") or ():
        stats = t.get("stats") or {}
        compared = t.get("kind", "weight") == "weight" and (t.get("drift") or {}).get(ref)
        if compared and (stats.get("nan") or 0) + (stats.get("inf") or 0):
            return True
    return False


def summarize(report: dict) -> dict:
    """What a list shows of `report` (see the module's doc). An overall drift figure against a
    reference that a NaN or Inf weight was compared with is null."""
    ck = report.get("checkpoint") or {}
    drift = report.get("drift") or {}
    counts = {"fail": 0, "warn": 0}
    for (_check, severity), n in finding_counts(report).items():
        counts[severity] += n
    stats = [t["stats"] for t in report.get("tensors") or () if t.get("stats")]
    nonfinite = sum((s.get("nan") or 0) + (s.get("inf") or 0) for s in stats) if stats else None
    return {
        "format": ck.get("format"),
        "tensors": ck.get("tensors"),
        "bytes": ck.get("bytes"),
        "counts": counts,
        "findings": listed_findings(report),
        "drift": {
            ref: (
                {"relative_l2": None, "max_abs": None}
                if isinstance(d, dict) and broken_drift(report, ref)
                else {"relative_l2": _finite(d.get("relative_l2")), "max_abs": _finite(d.get("max_abs"))}
                if isinstance(d, dict)
                else None
            )
            for ref, d in ((ref, drift.get(ref)) for ref in ("previous", "golden"))
        },
        "nonfinite": nonfinite,
    }
