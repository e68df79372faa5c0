"""Policy rules: which drift is expected, which is a failure.

    evaluate(policy, results, global_drift, previous_stats) -> findings

The schema (`Policy`: thresholds only) is `ckptwatch.policy`; this module applies it.

Profile `training` (a checkpoint of a run in progress): the candidate must move
against the previous checkpoint (a duplicate save or frozen layers are flagged)
but not jump (reset to initializer, explosion); drift from golden is bounded
only where configured. Profile `replica` (a copy, conversion or export): every
element must equal golden within atol + rtol * |golden|.

Thresholds can be overridden per tensor glob; the last matching override wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from ckptwatch.policy import Policy  # schema only: the daemon validates it without numba
from ckptwatch.verify.drift import Drift, ReferenceStats
from ckptwatch.verify.report import Finding, TensorResult
from ckptwatch.verify.stats import TensorStats


def is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def evaluate(
    policy: Policy,
    results: list[TensorResult],
    global_drift: dict[str, Drift | None],
    previous_stats: Mapping[str, TensorStats | ReferenceStats],
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


def _training_findings(
    t: TensorResult, s: dict, policy: Policy, prev_stats: TensorStats | ReferenceStats | None
) -> list[Finding]:
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
