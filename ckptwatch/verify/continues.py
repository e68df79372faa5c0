"""A run that continues from a checkpoint that failed keeps failing.

    rejected_record(report, fingerprint, baseline) -> dict | None   what a failed checkpoint leaves in the history
    continues_findings(history, report, prints, baseline) -> [Finding]
    next_history(history, report, fingerprint, window, baseline) -> History | None   what to write to history_out

`baseline`: the names of the checkpoint the candidate was judged against (its path, and the
fingerprint that stands in for it once CheckpointManager deletes it).

A checkpoint F fails a drift check on tensor T: T jumped by J (its change vs the baseline B).
Training may go on from F's state (a reset layer that keeps training, a restart) or from the
healthy state (F was a bad copy, a transient). The next checkpoint C is judged against B again
(a failed checkpoint is never a baseline), and against its own history C's change from B may look
acceptable: it spans two saves now, and the limit grows with the gap. What tells them apart is
where C is: if it still carries most of F's jump (change vs B >= J/2) while it is close to F
(change vs F <= J/2: a training step from F's state), the run continues from the failed state,
and C fails too, until an operator accepts a new baseline (`ckptwatch accept`). The change vs F is
estimated from C's sketch and F's fingerprint (the daemon keeps one for every checkpoint); without
F's fingerprint the rule does not apply.
"""

from __future__ import annotations

import math

from ckptwatch.formats.base import IntegrityError, TensorInfo
from ckptwatch.verify.fingerprint import FingerprintSource
from ckptwatch.verify.history import PASSING, Entry, History, with_probe
from ckptwatch.verify.report import Finding, Report
from ckptwatch.verify.sketch import TensorSketch, estimate_sums
from ckptwatch.verify.stats import TensorStats

JUMP_CHECKS = ("drift.jump", "drift.reset", "drift.norm")
Prints = list[tuple[TensorInfo, TensorStats | None, TensorSketch | None]]


def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _names(report: Report, baseline: list[str | None]) -> list[str]:
    return sorted({n for n in [report.references.get("previous"), *baseline] if n})


def rejected_record(report: Report, fingerprint: str | None, baseline: list[str | None]) -> dict | None:
    """What a failed checkpoint leaves for the next one to be compared with: the tensors that
    failed a drift check vs previous, with their change then."""
    entry = report.history_entry
    if report.verdict != "fail" or not isinstance(entry, Entry) or not report.references.get("previous"):
        return None
    if not fingerprint:
        return None
    failed = {
        f.tensor
        for f in report.findings
        if f.severity == "fail" and f.check in JUMP_CHECKS and f.reference == "previous" and f.tensor
    }
    tensors = {t: entry.tensors[t][0] for t in sorted(failed) if t in entry.tensors}
    if not tensors:
        return None
    checkpoint = report.checkpoint.get("path")
    return {
        "checkpoint": checkpoint,
        "fingerprint": fingerprint,
        "baseline": _names(report, baseline),
        "tensors": tensors,
    }


def next_history(
    history: History | None,
    report: Report,
    fingerprint: str | None,
    window: int,
    baseline: list[str | None],
    in_a_row: int = 3,
) -> History | None:
    """The history to write after this checkpoint: extended if it passed, noting it if it failed a
    drift check (the history itself unchanged), else None (nothing new)."""
    base = history or History.empty()
    if report.verdict in PASSING and isinstance(report.history_entry, Entry):
        return base.extended(with_probe(report.history_entry, report.model), window, in_a_row)
    rejected = rejected_record(report, fingerprint, baseline)
    return base.with_rejected(rejected) if rejected else None


def continues_findings(
    history: History | None, report: Report, prints: Prints, baseline: list[str | None]
) -> list[Finding]:
    """Fail the tensors that still carry the jump a failed checkpoint made, from its state."""
    rejected = history.rejected if history is not None else None
    entry = report.history_entry
    if not rejected or not isinstance(entry, Entry) or not report.references.get("previous"):
        return []
    if not set(_names(report, baseline)) & set(rejected.get("baseline") or []):
        return []  # judged against another baseline than the failed one was (an acceptance)
    jumps = {t: j for t, j in (rejected.get("tensors") or {}).items() if t in entry.tensors and j > 0}
    carried = {t: j for t, j in jumps.items() if entry.tensors[t][0] >= j / 2}
    if not carried:
        return []
    try:
        failed = FingerprintSource(str(rejected.get("fingerprint")))
    except IntegrityError:
        return []  # gone (pruned with its report) or unreadable: nothing to compare with
    where, out = rejected.get("checkpoint"), []
    sketches = {info.name: (stats, sketch) for info, stats, sketch in prints}
    for t, jump in carried.items():
        stats, sketch = sketches.get(t, (None, None))
        ref_stats, ref_sketch = failed.stats(t), failed.sketch(t)
        if stats is None or sketch is None or ref_stats is None or ref_sketch is None:
            continue
        if ref_stats.count != stats.count:
            continue
        change = entry.tensors[t][0]
        sums, _ = estimate_sums(stats, sketch, ref_stats, ref_sketch, 0.0, 0.0)
        # the same scale as the change vs previous: change / relative figure of the same tensor
        scale = _scale(entry, t, stats)
        from_failed = math.sqrt(max(sums.diff_sq, 0.0)) / scale if scale else math.inf
        if from_failed > jump / 2:
            continue  # not where the failed checkpoint was: training went on from the healthy state
        out.append(
            Finding(
                "fail",
                "drift.jump",
                f"continues from {where}, which failed on this tensor: its change vs previous is still "
                f"{_fmt(change)} ({where}'s: {_fmt(jump)}), and only {_fmt(from_failed)} from {where}: training "
                f"resumed from the failed state? (`ckptwatch accept` makes a checkpoint the new baseline)",
                t,
                "previous",
                value=change,
                limit=jump / 2,
                expected={"jump_of_failed": jump, "from_failed": from_failed},
                basis=f"failed checkpoint {where}",
            )
        )
    return out


def _scale(entry: Entry, tensor: str, stats: TensorStats) -> float:
    """The scale the tensor's change was measured against: ||candidate|| / growth."""
    growth = entry.tensors[tensor][1]
    return stats.l2 / growth if growth > 0 else 0.0
