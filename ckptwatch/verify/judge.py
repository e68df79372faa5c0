"""Drift vs previous in the training profile: each tensor's change, judged against the run's
own history of healthy changes (ckptwatch.verify.history).

    training_findings(policy, results, previous_stats, global_drift, history, steps) -> [Finding]

A tensor's change (ckptwatch.verify.change): its relative L2 vs previous, measured against its
layer's scale instead of its own norm when that is near zero.

Rules, per compared tensor (weights, floating point, not excluded):
- clear-cut, with or without history (fail): all zeros now (drift.reset); a kernel whose
  cosine with previous is below `reset_cosine` (re-initialised, replaced: drift.reset);
  change above `clear_jump` (drift.jump); norm grown or shrunk by more than
  `clear_norm_growth` (drift.norm). Moving statistics (BatchNorm means and variances follow
  the data, not the optimizer) are left to their history.
- with history (`min_history` past changes of its own; fewer: its group's, pooled): change
  above limit = median x max(min_history_ratio, exp(history_tolerance x sigma)) fails
  drift.jump; sigma is the robust spread (1.4826 x MAD) of log(past change), combined with
  1/sqrt(n) for small tensors, whose change is noisier than a sample of a few shows.
- without history: change above `max_jump` warns drift.jump, growth above `max_norm_growth`
  warns drift.norm: a run's first checkpoints move a lot, healthily.
- unchanged while others changed (drift.frozen): a tensor that changed before and is now
  identical to previous `frozen_after` checkpoints in a row fails (fewer: warn); one that
  never changed warns the first time and is reported (info) after that.
Whole checkpoint: identical to previous at the same training step fails (a duplicate save);
identical although the step advanced warns (a warm-up from 0) and fails after `frozen_after`
in a row; its relative L2 is judged like a tensor's against the global history.

Every finding carries value, limit, expected (the typical range) and basis (where it came from).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from ckptwatch.policy import Policy
from ckptwatch.verify.change import MOVING, Change, Settings, Steps, measure
from ckptwatch.verify.drift import Drift, ReferenceStats
from ckptwatch.verify.history import Expected, History
from ckptwatch.verify.report import Finding, TensorResult
from ckptwatch.verify.stats import TensorStats

SIZE_PRIOR = 1.0  # log-spread of a 1-element tensor's change: a half-normal's is about 1


def _fmt(x: float) -> str:
    return f"{x:.3g}"


# -- the rules ----------------------------------------------------------------------------------


@dataclass
class _Judge:
    policy: Policy
    history: History | None
    steps: Steps

    def limit(self, e: Expected, size: int | None) -> tuple[float, float]:
        """(limit, limit / median) for a change with these past changes."""
        sigma = e.log_mad if size is None else math.hypot(e.log_mad, SIZE_PRIOR / math.sqrt(max(size, 1)))
        ratio = max(self.policy.min_history_ratio, math.exp(self.policy.history_tolerance * sigma))
        return e.median * ratio, ratio

    def over(self, steps_text: str) -> str:
        gap = self.steps.gap
        return f" over {gap:g} steps" if gap else steps_text


def _described(c: Change) -> str:
    if c.own_scale:
        return f"relative L2 {_fmt(c.value)} vs previous"
    small = f"its own L2 {_fmt(c.previous_l2)} is small for its layer"
    return f"change {_fmt(c.value)} of its layer's scale vs previous ({small})"


def training_findings(
    policy: Policy,
    results: list[TensorResult],
    previous_stats: Mapping[str, TensorStats | ReferenceStats],
    global_drift: dict[str, Drift | None],
    history: History | None = None,
    steps: Steps | None = None,
    changes: list[Change] | None = None,
    settings: Settings | None = None,
) -> list[Finding]:
    """The training profile's findings vs previous (golden is ckptwatch.verify.rules').
    `changes`: measure()'s, when the caller has them; `settings`: the policy's per tensor."""
    settings = settings or Settings(policy)
    if changes is None:
        changes = measure(policy, results, previous_stats, settings)
    judge = _Judge(policy, history if history is not None and len(history) else None, steps or Steps())
    gap = judge.steps.gap
    expected = judge.history.expected([c.name for c in changes], gap) if judge.history else {}
    groups: dict[str, list[str]] = {}
    pools: dict[str, Expected | None] = {}
    if judge.history is not None:  # the groups pool the history of tensors with little of their own
        for c in changes:
            groups.setdefault(c.group, []).append(c.name)
    out: list[Finding] = []
    prev = global_drift.get("previous")
    # moving statistics follow the data even when the optimizer does not move (a warm-up from 0)
    trained = [c for c in changes if c.group != MOVING] or changes
    all_unchanged = bool(trained) and prev is not None and all(c.unchanged for c in trained)
    for c in changes:
        s = settings(c.name, c.result.display)
        if c.unchanged or (all_unchanged and c.group == MOVING):
            if not all_unchanged and not s["frozen"]:
                out.append(_frozen(judge, c))
            continue
        clear = _clear_cut(policy, c, previous_stats[c.name])
        if clear:
            out += clear
            if any(f.check == "drift.jump" for f in clear):
                continue
        own = expected.get(c.name)
        if own is not None and own.count >= policy.min_history:
            out += _judged(judge, c, own, "history", f"this tensor's last {own.count} changes")
            continue
        if c.group not in pools:  # computed once per group
            run_known = judge.history is not None and len(judge.history) >= policy.min_history
            pools[c.group] = judge.history.pooled(groups[c.group], gap) if run_known and judge.history else None
        pool = pools[c.group]
        if pool is not None and pool.count >= 2 * policy.min_history and len(groups[c.group]) > 1:
            what = (
                f"little history of its own ({own.count if own else 0}); its group's ({c.group}) {pool.count} changes"
            )
            out += _judged(judge, c, pool, f"group:{c.group}", what, pooled=True)
            continue
        out += _unjudged(policy, c, s["max_jump"])
    if all_unchanged:
        out.append(_all_unchanged(judge, len(trained)))
    elif prev is not None and changes:
        out += _global_jump(judge, prev, global_drift.get("golden"))
    return out


def _clear_cut(policy: Policy, c: Change, p: TensorStats | ReferenceStats) -> list[Finding]:
    stats = c.result.stats
    assert stats is not None
    name, out = c.name, []
    if stats.count and stats.zero_fraction == 1.0 and p.zero_fraction < 0.5:
        out.append(
            Finding(
                "fail",
                "drift.reset",
                "all zeros now, previous was not: reset to initializer?",
                name,
                "previous",
                value=1.0,
                limit=p.zero_fraction,
                expected={"zero_fraction": p.zero_fraction},
                basis="rule: all zeros",
            )
        )
        return out
    if c.group == MOVING:
        return out
    kernel_like = len(c.result.shape) >= 2 and stats.count >= 64 and c.own_scale and not c.drift.estimated
    if kernel_like and c.drift.cosine < policy.reset_cosine:
        out.append(
            Finding(
                "fail",
                "drift.reset",
                f"uncorrelated with previous (cosine {_fmt(c.drift.cosine)}, a training step keeps it near 1; "
                f"limit {_fmt(policy.reset_cosine)}): re-initialised, replaced or restarted from scratch?",
                name,
                "previous",
                value=c.drift.cosine,
                limit=policy.reset_cosine,
                expected={"min": policy.reset_cosine},
                basis="policy: reset_cosine",
            )
        )
    if c.value > policy.clear_jump:
        out.append(
            Finding(
                "fail",
                "drift.jump",
                f"{_described(c)} (> {_fmt(policy.clear_jump)}, far beyond any training step): explosion, "
                f"corruption or a different run?",
                name,
                "previous",
                value=c.value,
                limit=policy.clear_jump,
                expected={"max": policy.clear_jump},
                basis="policy: clear_jump",
            )
        )
    for figure, word in ((c.growth, "grew"), (c.shrink, "shrank")):
        if figure > policy.clear_norm_growth and (word == "grew" or len(c.result.shape) >= 2):
            out.append(
                Finding(
                    "fail",
                    "drift.norm",
                    f"L2 norm {word} {_fmt(figure)}x vs previous (> {_fmt(policy.clear_norm_growth)}x: orders of "
                    f"magnitude)",
                    name,
                    "previous",
                    value=figure,
                    limit=policy.clear_norm_growth,
                    expected={"max": policy.clear_norm_growth},
                    basis="policy: clear_norm_growth",
                )
            )
    return out


def _judged(judge: _Judge, c: Change, e: Expected, basis: str, what: str, pooled: bool = False) -> list[Finding]:
    limit, ratio = judge.limit(e, None if pooled else c.size)
    if not c.value > limit:
        return []
    scaled = f" (scaled to {judge.steps.gap:g} steps)" if judge.steps.gap else ""
    return [
        Finding(
            "fail",
            "drift.jump",
            f"{_described(c)}{judge.over('')}; {what}{scaled}: median {_fmt(e.median)}, max {_fmt(e.maximum)}; "
            f"limit {_fmt(limit)} ({ratio:.2g}x median): noise, a reset or a restart?",
            c.name,
            "previous",
            value=c.value,
            limit=limit,
            expected={**e.to_dict(), "limit": limit},
            basis=basis,
        )
    ]


def _unjudged(policy: Policy, c: Change, max_jump: float) -> list[Finding]:
    out = []
    why = "no history yet to judge it by: a warning, not a failure"
    if c.value > max_jump:
        out.append(
            Finding(
                "warn",
                "drift.jump",
                f"{_described(c)} (> {_fmt(max_jump)}; {why})",
                c.name,
                "previous",
                value=c.value,
                limit=max_jump,
                expected={"max": max_jump},
                basis="policy: max_jump",
            )
        )
    if c.growth > policy.max_norm_growth and c.growth <= policy.clear_norm_growth:
        out.append(
            Finding(
                "warn",
                "drift.norm",
                f"L2 norm grew {_fmt(c.growth)}x vs previous{'' if c.own_scale else ' (of its layer scale)'} "
                f"(> {_fmt(policy.max_norm_growth)}x; {why})",
                c.name,
                "previous",
                value=c.growth,
                limit=policy.max_norm_growth,
                expected={"max": policy.max_norm_growth},
                basis="policy: max_norm_growth",
            )
        )
    return out


def _frozen(judge: _Judge, c: Change) -> Finding:
    after = judge.policy.frozen_after
    run, ever = judge.history.unchanged_run(c.name) if judge.history else (0, False)
    count = run + 1
    hint = "(list it under `frozen` if intended)"
    if ever:
        severity = "fail" if count >= after and c.group != MOVING else "warn"
        message = (
            f"identical to previous while other tensors changed, {count} checkpoint(s) in a row "
            f"(fails at {after}); it changed before: frozen by mistake? {hint}"
        )
    elif run == 0:
        severity = "warn"
        message = f"identical to previous while other tensors changed: frozen by mistake? {hint}"
    else:
        severity = "info"
        message = f"unchanged in all {count} checkpoints of the run's history while the rest trains: frozen? {hint}"
    return Finding(
        severity,
        "drift.frozen",
        message,
        c.name,
        "previous",
        value=0.0,
        limit=float(after),
        expected={"changed_fraction": "> 0", "unchanged_in_a_row": count},
        basis="history" if judge.history else "previous",
    )


def _all_unchanged(judge: _Judge, n: int) -> Finding:
    steps, after = judge.steps, judge.policy.frozen_after
    identical = f"all {n} compared tensors are identical to previous"

    def finding(severity: str, message: str, limit: float, basis: str) -> Finding:
        return Finding(
            severity, "drift.unchanged", message, None, "previous", 0.0, limit, {"relative_l2": "> 0"}, basis
        )

    if steps.counted and steps.candidate is not None and steps.previous is not None:
        if steps.candidate > steps.previous:
            run, _ = judge.history.global_unchanged_run() if judge.history else (0, False)
            count = run + 1
            what = f"{identical} although the training step advanced ({steps.previous:g} -> {steps.candidate:g})"
            if count >= after:
                why = f"{count} checkpoints in a row: training is not updating the weights"
                return finding("fail", f"{what}, {why}", float(after), "history")
            why = f"a learning-rate warm-up from 0, or training is not updating the weights (fails after {after})"
            return finding("warn", f"{what}: {why}", float(after), "training step")
        if steps.candidate == steps.previous:
            message = f"{identical}, at the same training step {steps.candidate:g}: a duplicate save"
            return finding("fail", message, 0.0, "training step")
    message = f"{identical}: a duplicate save, or training is not updating the weights"
    return finding("fail", message, 0.0, "rule: identical")


def _global_jump(judge: _Judge, prev: Drift, gold: Drift | None) -> list[Finding]:
    policy, value = judge.policy, prev.relative_l2
    whole = f"whole checkpoint moved {_fmt(value)} (relative L2) vs previous{judge.over('')}"
    if value > policy.max_global_jump and gold is not None and gold.relative_l2 < 0.1 * value:
        return [
            Finding(
                "fail",
                "drift.reset",
                f"{whole}, and is now close to golden ({_fmt(gold.relative_l2)}): training restarted from golden?",
                None,
                "previous",
                value=value,
                limit=policy.max_global_jump,
                expected={"max": policy.max_global_jump, "golden_relative_l2": gold.relative_l2},
                basis="policy: max_global_jump",
            )
        ]
    e = judge.history.expected_global(judge.steps.gap) if judge.history else None
    if e is not None and e.count >= policy.min_history:
        limit, ratio = judge.limit(e, None)
        if value > limit:
            return [
                Finding(
                    "fail",
                    "drift.jump",
                    f"{whole}; the run's last {e.count} checkpoints: median {_fmt(e.median)}, max "
                    f"{_fmt(e.maximum)}; limit {_fmt(limit)} ({ratio:.2g}x median)",
                    None,
                    "previous",
                    value=value,
                    limit=limit,
                    expected={**e.to_dict(), "limit": limit},
                    basis="history",
                )
            ]
        return []
    if value > policy.max_global_jump:
        severity = "fail" if value > policy.clear_jump else "warn"
        limit = policy.clear_jump if severity == "fail" else policy.max_global_jump
        return [
            Finding(
                severity,
                "drift.jump",
                f"{whole} (> {_fmt(limit)}; no history yet to judge it by)",
                None,
                "previous",
                value=value,
                limit=limit,
                expected={"max": limit},
                basis="policy: " + ("clear_jump" if severity == "fail" else "max_global_jump"),
            )
        ]
    return []
