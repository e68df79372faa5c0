"""Policy rules: which drift is expected, which is a failure.

    evaluate(policy, results, global_drift, previous_stats, history=None, steps=None) -> findings

The schema (`Policy`: thresholds only) is `ckptwatch.policy`; this module applies it.

Profile `training` (a checkpoint of a run in progress): the candidate must move
against the previous checkpoint (a duplicate save or frozen layers are flagged)
but not jump (reset to initializer, explosion); how much a tensor may move is
judged against the run's own history when one is given (ckptwatch.verify.judge);
drift from golden is bounded where configured, and for the whole checkpoint when the run is a
fine-tune of the golden (`golden_mode = "finetune"`). Profile `replica` (a copy,
conversion or export): every element must equal golden within atol + rtol * |golden|.

Thresholds can be overridden per tensor glob; the last matching override wins.
"""

from __future__ import annotations

from collections.abc import Mapping

from ckptwatch.policy import Policy  # schema only: the daemon validates it without numba
from ckptwatch.verify.change import Change, Settings, Steps, is_floating
from ckptwatch.verify.drift import Drift, ReferenceStats
from ckptwatch.verify.history import History
from ckptwatch.verify.judge import training_findings
from ckptwatch.verify.report import Finding, TensorResult
from ckptwatch.verify.stats import TensorStats

__all__ = ["evaluate", "is_floating"]


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def evaluate(
    policy: Policy,
    results: list[TensorResult],
    global_drift: dict[str, Drift | None],
    previous_stats: Mapping[str, TensorStats | ReferenceStats],
    history: History | None = None,
    steps: Steps | None = None,
    changes: list[Change] | None = None,
) -> list[Finding]:
    """Findings from drift and statistics. `previous_stats` maps candidate tensor
    names to the previous checkpoint's TensorStats (for norm growth and resets);
    `history` is the run's (ckptwatch.verify.history), `steps` the training steps;
    `changes` each tensor's change vs previous (ckptwatch.verify.change.measure), when the
    caller has them already (the engine measures once, for the rules and the history)."""
    findings: list[Finding] = []
    kinds = policy.compared_kinds()
    settings = Settings(policy)
    replica, max_abs = policy.profile == "replica", policy.max_abs_value
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
                    value=t.stats.nonfinite,
                    limit=0,
                    basis="no non-finite value is allowed",
                )
            )
        if t.kind not in kinds or not is_floating(t.dtype):
            continue  # integer tensors (step counters, id tables) change by design or never
        s = settings(t.name, t.display)
        if s["exclude"]:
            continue
        peak = max(abs(t.stats.min), abs(t.stats.max))
        if peak > max_abs:
            findings.append(
                Finding(
                    "fail",
                    "drift.explosion",
                    f"|value| reaches {_fmt(peak)} (> {_fmt(policy.max_abs_value)})",
                    t.name,
                    value=peak,
                    limit=policy.max_abs_value,
                    expected={"max": policy.max_abs_value},
                    basis="policy: max_abs_value",
                )
            )
        if replica:
            findings += _replica_findings(t, s)
        elif s["max_golden_drift"] is not None:
            findings += _golden_findings(t, s)
    if policy.profile == "training":
        findings += training_findings(policy, results, previous_stats, global_drift, history, steps, changes, settings)
    findings += _global_golden(policy, global_drift.get("golden"))
    return findings


def _replica_findings(t: TensorResult, s: dict) -> list[Finding]:
    d = t.drift.get("golden")
    if d is None:
        return []
    if not d.not_close:
        if d.estimated:  # hashes differ, yet every sampled value is within tolerance: still not a copy
            return [
                Finding(
                    "fail",
                    "drift.replica",
                    "content differs from the golden fingerprint (its hash): not an exact copy; the sampled values "
                    f"are within atol={s['atol']:g} rtol={s['rtol']:g}, so the difference lies outside the sample "
                    "(compare with the full golden checkpoint to see where and by how much)",
                    t.name,
                    "golden",
                    value=d.max_abs,
                    limit=s["atol"],
                    expected={"hash": "equal"},
                    basis="fingerprint hash",
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
            value=d.max_abs,
            limit=s["atol"],
            expected={"atol": s["atol"], "rtol": s["rtol"], "not_close": 0},
            basis="policy: atol, rtol",
        )
    ]


def _golden_findings(t: TensorResult, s: dict) -> list[Finding]:
    g = t.drift.get("golden")
    if g is None or s["max_golden_drift"] is None or not g.relative_l2 > s["max_golden_drift"]:
        return []
    return [
        Finding(
            "fail",
            "drift.golden",
            f"relative L2 {_fmt(g.relative_l2)} vs golden (> {_fmt(s['max_golden_drift'])})",
            t.name,
            "golden",
            value=g.relative_l2,
            limit=s["max_golden_drift"],
            expected={"max": s["max_golden_drift"]},
            basis="policy: max_golden_drift",
        )
    ]


def _global_golden(policy: Policy, gold: Drift | None) -> list[Finding]:
    limit = policy.global_golden_bound()
    if policy.profile != "training" or gold is None or limit is None or not gold.relative_l2 > limit:
        return []
    basis = (
        "policy: max_global_golden_drift"
        if policy.max_global_golden_drift is not None
        else "policy: golden_mode = finetune (max_global_golden_drift unset)"
    )
    return [
        Finding(
            "fail",
            "drift.golden",
            f"whole checkpoint is {_fmt(gold.relative_l2)} (relative L2) from golden (> {_fmt(limit)})",
            None,
            "golden",
            value=gold.relative_l2,
            limit=limit,
            expected={"max": limit},
            basis=basis,
        )
    ]
