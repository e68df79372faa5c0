"""The verification report: findings, drift, per-tensor figures, and its JSON form.

The JSON form (`ckptwatch.report/v1`) is a contract (see DESIGN.md): top-level
keys schema, checkpoint, verdict, findings, drift, tensors, model, timings; added
since (additive): tool {name, version} and created (ISO-8601 UTC, when the report was made).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # annotations only: the daemon's main process imports this module, never numpy
    from ckptwatch.verify.drift import Drift
    from ckptwatch.verify.stats import TensorStats

SCHEMA = "ckptwatch.report/v1"
DIFF_SCHEMA = "ckptwatch.diff/v1"
ROLES = ("previous", "golden")
SEVERITY_ORDER = {"fail": 0, "warn": 1, "info": 2}
TOOL = "ckptwatch"


def utc_now() -> str:
    """Now as ISO-8601 UTC to the millisecond: `2026-11-28T13:45:07.123Z`."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def tool_info() -> dict:
    from ckptwatch import __version__

    return {"name": TOOL, "version": __version__}


@dataclass(frozen=True)
class Finding:
    severity: str  # fail | warn | info
    check: str  # integrity.* | nonfinite | structure.* | drift.* | restore.* | functional.*
    message: str
    tensor: str | None = None
    reference: str | None = None  # previous | golden | None
    # What a drift finding saw and held it to (every drift.* finding sets them; optional keys in JSON):
    value: float | None = None  # the figure measured (relative L2, norm ratio, cosine, ...)
    limit: float | None = None  # the bound it crossed
    expected: dict | None = None  # the typical range: {"median", "max", "count", "limit"} or {"max"}
    basis: str | None = None  # where that came from: "history", "group:<group>", "policy: <key>", ...

    def to_dict(self) -> dict:
        doc = {
            "severity": self.severity,
            "check": self.check,
            "tensor": self.tensor,
            "reference": self.reference,
            "message": self.message,
        }
        for key in ("value", "limit", "expected", "basis"):
            if getattr(self, key) is not None:
                doc[key] = getattr(self, key)
        return doc


@dataclass
class TensorResult:
    name: str
    display: str
    kind: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int
    stats: TensorStats | None = None
    drift: dict[str, Drift] = field(default_factory=dict)
    error: Finding | None = None  # integrity failure while reading it
    known: str = ""  # the Keras layer and variable, where the file says them (TensorInfo.known)

    @property
    def display_name(self) -> str:
        return self.known or self.display or self.name

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "display_name": self.display_name,
            "display": self.display,
            "kind": self.kind,
            "dtype": self.dtype,
            "shape": list(self.shape),
            "bytes": self.nbytes,
            "stats": self.stats.to_dict() if self.stats else None,
            "drift": {role: (self.drift[role].to_dict() if role in self.drift else None) for role in ROLES},
        }

    def worst_drift(self) -> float:
        return max((d.relative_l2 for d in self.drift.values()), default=-1.0)


def _sorted_unique(findings: list[Finding]) -> list[Finding]:
    """Worst first; a finding said twice (the object graph's bad checksum, seen when the reader
    opens the checkpoint and again when the engine reads the entry) is said once."""
    seen, out = set(), []
    for f in findings:
        key = (f.severity, f.check, f.tensor, f.reference, f.message)
        if key not in seen:
            seen.add(key)
            out.append(f)
    out.sort(key=lambda f: (SEVERITY_ORDER.get(f.severity, 3), f.check, f.tensor or ""))
    return out


@dataclass
class Report:
    checkpoint: dict  # path, format, step, tensors, bytes
    findings: list[Finding]
    tensors: list[TensorResult]
    drift: dict[str, Drift | None]
    references: dict[str, str | None]
    timings: dict[str, float]
    model: dict | None = None
    verdict: str = ""
    history: dict | None = None  # the run's history the drift was judged against: {"entries", "tensors"}
    history_entry: Any = None  # what this checkpoint adds to that history if it passes (not in the JSON)
    created: str = field(default_factory=utc_now)  # when it was made (ISO-8601 UTC)

    def __post_init__(self) -> None:
        self.findings = _sorted_unique(self.findings)
        if not self.verdict:
            self.verdict = verdict_of(self.findings)

    def add_findings(self, findings: list[Finding]) -> None:
        """More findings (model-aware checks run after the tensors): re-sort, re-judge."""
        self.findings = _sorted_unique(self.findings + findings)
        self.verdict = verdict_of(self.findings)

    def to_dict(self) -> dict:
        return clean_floats(
            {
                "schema": SCHEMA,
                "tool": tool_info(),
                "created": self.created,
                "checkpoint": self.checkpoint,
                "verdict": self.verdict,
                "findings": named_findings(self.findings, self.tensors),
                "references": self.references,
                "drift": {role: (d.to_dict() if d else None) for role, d in self.drift.items()},
                "tensors": [t.to_dict() for t in self.tensors],
                "model": self.model,
                "timings": self.timings,
                **({"history": self.history} if self.history is not None else {}),
            }
        )


def named_findings(findings: list[Finding], tensors: list[TensorResult]) -> list[dict]:
    """Findings as JSON, each naming its tensor for people too (`display_name` beside the
    exact key in `tensor`)."""
    names = {t.name: t.display_name for t in tensors}
    out = []
    for f in findings:
        doc = f.to_dict()
        if f.tensor is not None:
            doc["display_name"] = names.get(f.tensor, f.tensor)
        out.append(doc)
    return out


def unverified_report(path: str, finding: Finding, step: int | None = None, verdict: str = "") -> Report:
    """A report for a checkpoint that could not be read at all: one finding, no tensors."""
    return Report(
        checkpoint={"path": path, "format": None, "step": step, "tensors": 0, "bytes": 0},
        findings=[finding],
        tensors=[],
        drift={role: None for role in ROLES},
        references={role: None for role in ROLES},
        timings={},
        verdict=verdict,
    )


def verdict_of(findings: list[Finding]) -> str:
    severities = {f.severity for f in findings}
    if "fail" in severities:
        return "fail"
    if "warn" in severities:
        return "warn"
    return "pass"


def clean_floats(obj):
    """JSON has no NaN/Inf: such values become null."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_floats(v) for v in obj]
    return obj
