"""Policies: which drift is expected, which is a failure.

Profile `training` (a checkpoint of a run in progress): the candidate must move
against the previous checkpoint (a duplicate save or frozen layers are flagged)
but not jump (reset to initializer, explosion); drift from golden is bounded
only where configured. Profile `replica` (a copy, conversion or export): every
element must equal golden within atol + rtol * |golden|.

Thresholds can be overridden per tensor glob; the last matching override wins.
"""

from __future__ import annotations

import fnmatch
import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ckptwatch.formats.base import OPTIMIZER, WEIGHT
from ckptwatch.verify.drift import Drift
from ckptwatch.verify.report import Finding, TensorResult


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Override(_Strict):
    pattern: str = Field(description="glob on the tensor name or its display name")
    max_jump: float | None = Field(None, ge=0)
    max_golden_drift: float | None = Field(None, ge=0)
    atol: float | None = Field(None, ge=0)
    rtol: float | None = Field(None, ge=0)
    frozen: bool | None = None
    exclude: bool | None = None


class Policy(_Strict):
    profile: Literal["training", "replica"] = "training"
    include_optimizer: bool = False
    exclude: list[str] = Field(default_factory=list, description="globs: not compared at all")
    frozen: list[str] = Field(default_factory=list, description="globs: expected not to change vs previous")
    max_jump: float = Field(1.0, ge=0, description="per tensor: relative L2 vs previous above this fails")
    max_global_jump: float = Field(0.5, ge=0, description="whole checkpoint: relative L2 vs previous above this fails")
    max_norm_growth: float = Field(10.0, gt=1, description="per tensor: ||candidate|| / ||previous|| above this fails")
    max_abs_value: float = Field(1e6, gt=0, description="any |weight| above this fails (explosion)")
    min_reference_rms: float = Field(1e-6, ge=0, description="tensors smaller than this RMS skip the jump test")
    max_golden_drift: float | None = Field(None, ge=0, description="per tensor: relative L2 vs golden bound")
    max_global_golden_drift: float | None = Field(None, ge=0)
    atol: float = Field(1e-6, ge=0, description="replica: absolute tolerance")
    rtol: float = Field(1e-5, ge=0, description="replica: relative tolerance")
    overrides: list[Override] = Field(default_factory=list)

    def compared_kinds(self) -> set[str]:
        return {WEIGHT, OPTIMIZER} if self.include_optimizer else {WEIGHT}

    def settings_for(self, name: str, display: str) -> dict:
        """Effective thresholds for one tensor."""
        s = {
            "max_jump": self.max_jump,
            "max_golden_drift": self.max_golden_drift,
            "atol": self.atol,
            "rtol": self.rtol,
            "frozen": _matches(self.frozen, name, display),
            "exclude": _matches(self.exclude, name, display),
        }
        for o in self.overrides:
            if _matches([o.pattern], name, display):
                s.update({k: v for k, v in o.model_dump(exclude={"pattern"}).items() if v is not None})
        return s


def is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))


def _matches(patterns: list[str], name: str, display: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(display, p) for p in patterns)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def evaluate(
    policy: Policy,
    results: list[TensorResult],
    global_drift: dict[str, Drift | None],
    previous_stats: dict[str, object],
) -> list[Finding]:
    """Findings from drift and statistics. `previous_stats` maps candidate tensor
    names to the previous checkpoint's TensorStats (for norm growth and resets)."""
    findings: list[Finding] = []
    kinds = policy.compared_kinds()
    for t in results:
        if t.stats is None:
            continue
        if t.stats.nonfinite:
            findings.append(
                Finding(
                    "fail",
                    "nonfinite",
                    f"{t.stats.nan} NaN and {t.stats.inf} Inf of {t.stats.count} values",
                    t.name,
                )
            )
        if t.kind not in kinds or not is_floating(t.dtype):
            continue  # integer tensors (step counters, id tables) change by design or never
        s = policy.settings_for(t.name, t.display)
        if s["exclude"]:
            continue
        peak = max(abs(t.stats.min), abs(t.stats.max))
        if peak > policy.max_abs_value:
            findings.append(
                Finding(
                    "fail", "drift.explosion", f"|value| reaches {_fmt(peak)} (> {_fmt(policy.max_abs_value)})", t.name
                )
            )
        if policy.profile == "replica":
            findings += _replica_findings(t, s)
        else:
            findings += _training_findings(t, s, policy, previous_stats.get(t.name))
    findings += _global_findings(policy, results, global_drift)
    return findings


def _replica_findings(t: TensorResult, s: dict) -> list[Finding]:
    d = t.drift.get("golden")
    if d is None:
        return []
    if not d.not_close:
        if d.estimated:  # hashes differ, yet every sampled value is within tolerance
            return [
                Finding(
                    "warn",
                    "drift.replica",
                    "content differs from the golden fingerprint (hash), sampled values are within tolerance; "
                    "compare with the full golden checkpoint to be sure",
                    t.name,
                    "golden",
                )
            ]
        return []
    est = " (estimated from a fingerprint sample)" if d.estimated else ""
    return [
        Finding(
            "fail",
            "drift.replica",
            f"{d.not_close if not d.estimated else 'some'} of {t.stats.count if t.stats else '?'} values differ from "
            f"golden beyond atol={s['atol']:g} rtol={s['rtol']:g}; max abs diff {_fmt(d.max_abs)}{est}",
            t.name,
            "golden",
        )
    ]


def _training_findings(t: TensorResult, s: dict, policy: Policy, prev_stats) -> list[Finding]:
    out: list[Finding] = []
    d = t.drift.get("previous")
    stats = t.stats
    assert stats is not None
    if d is not None and prev_stats is not None:
        rms = prev_stats.l2 / math.sqrt(max(prev_stats.count, 1))
        if stats.count and stats.zero_fraction == 1.0 and prev_stats.zero_fraction < 0.5:
            out.append(
                Finding(
                    "fail", "drift.reset", "all zeros now, previous was not: reset to initializer?", t.name, "previous"
                )
            )
        elif rms > policy.min_reference_rms and d.relative_l2 > s["max_jump"]:
            out.append(
                Finding(
                    "fail",
                    "drift.jump",
                    f"relative L2 {_fmt(d.relative_l2)} vs previous (> {_fmt(s['max_jump'])}): reset, restart from "
                    f"scratch or divergence?",
                    t.name,
                    "previous",
                )
            )
        if prev_stats.l2 > 0 and stats.l2 / prev_stats.l2 > policy.max_norm_growth:
            out.append(
                Finding(
                    "fail",
                    "drift.norm",
                    f"L2 norm grew {_fmt(stats.l2 / prev_stats.l2)}x vs previous (> {_fmt(policy.max_norm_growth)}x)",
                    t.name,
                    "previous",
                )
            )
    g = t.drift.get("golden")
    if g is not None and s["max_golden_drift"] is not None and g.relative_l2 > s["max_golden_drift"]:
        out.append(
            Finding(
                "fail",
                "drift.golden",
                f"relative L2 {_fmt(g.relative_l2)} vs golden (> {_fmt(s['max_golden_drift'])})",
                t.name,
                "golden",
            )
        )
    return out


def _global_findings(
    policy: Policy, results: list[TensorResult], global_drift: dict[str, Drift | None]
) -> list[Finding]:
    out: list[Finding] = []
    prev, gold = global_drift.get("previous"), global_drift.get("golden")
    if policy.profile == "training" and prev is not None:
        compared = [
            t for t in results
            if "previous" in t.drift and t.kind in policy.compared_kinds() and is_floating(t.dtype)
            and not policy.settings_for(t.name, t.display)["exclude"]
        ]  # fmt: skip
        if compared and prev.changed_fraction == 0.0 and not prev.estimated:
            out.append(
                Finding(
                    "fail",
                    "drift.unchanged",
                    f"all {len(compared)} compared tensors are identical to previous: a duplicate save, or training "
                    f"is not updating the weights",
                    None,
                    "previous",
                )
            )
        elif compared:
            for t in compared:
                d = t.drift["previous"]
                frozen_ok = policy.settings_for(t.name, t.display)["frozen"]
                if d.changed_fraction == 0.0 and not d.estimated and not frozen_ok:
                    out.append(
                        Finding(
                            "warn",
                            "drift.frozen",
                            "identical to previous while other tensors changed: frozen by mistake? "
                            "(list it under `frozen` if intended)",
                            t.name,
                            "previous",
                        )
                    )
        if prev.relative_l2 > policy.max_global_jump:
            message = (
                f"whole checkpoint moved {_fmt(prev.relative_l2)} (relative L2) vs previous "
                f"(> {_fmt(policy.max_global_jump)})"
            )
            check = "drift.jump"
            if gold is not None and gold.relative_l2 < 0.1 * prev.relative_l2:
                check = "drift.reset"
                message += f", and is now close to golden ({_fmt(gold.relative_l2)}): training restarted from golden?"
            out.append(Finding("fail", check, message, None, "previous"))
    if (
        policy.profile == "training"
        and gold is not None
        and policy.max_global_golden_drift is not None
        and gold.relative_l2 > policy.max_global_golden_drift
    ):
        out.append(
            Finding(
                "fail",
                "drift.golden",
                f"whole checkpoint is {_fmt(gold.relative_l2)} (relative L2) from golden "
                f"(> {_fmt(policy.max_global_golden_drift)})",
                None,
                "golden",
            )
        )
    return out
