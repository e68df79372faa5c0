"""A checkpoint whose step moved forward while its weights went back to an earlier checkpoint of
the run: a restart from scratch, a restore of an old checkpoint, a job that resumed from the
wrong directory.

    rewind_findings(history, report) -> [Finding]

Such a checkpoint already fails its drift checks vs previous (its change is many saves' worth);
this names the cause. The run's history keeps every kept checkpoint's per-tensor norms (and the
norms of the oldest one's baseline); the candidate's norms are compared with each. A healthy run
moves smoothly, so its candidate is nearest to its previous checkpoint; a rewound one lies on top
of an earlier one: its distance there is below REWIND_RATIO of its distance to the previous.
Norms are a summary, not the weights: the finding says "matches the norms of", and it is only
ever added to a checkpoint that already failed a jump vs previous, so it cannot raise a false
alarm of its own.
"""

from __future__ import annotations

import math

from ckptwatch.verify.history import Entry, History
from ckptwatch.verify.report import Finding, Report

REWIND_RATIO = 0.05  # the earlier checkpoint is 20x nearer than the previous one
# ...and the norms agree to 0.1%: a copy or a deterministic replay agrees to ~1e-7; a fresh
# initialisation with another seed lands ~1% from the first checkpoint's norms (measured).
MATCH = 1e-3
JUMPS = ("drift.jump", "drift.reset", "drift.norm")


def _distance(candidate: dict[str, float], place: dict[str, float]) -> float | None:
    shared = [t for t in candidate if t in place]
    if len(shared) < max(1, len(candidate) // 2):  # another structure: not comparable
        return None
    size = math.sqrt(sum(candidate[t] ** 2 for t in shared))
    diff = math.sqrt(sum((candidate[t] - place[t]) ** 2 for t in shared))
    return diff / size if size > 0 else None


def rewind_findings(history: History | None, report: Report) -> list[Finding]:
    entry = report.history_entry
    if history is None or len(history) < 1 or not isinstance(entry, Entry) or not entry.norms:
        return []
    if not any(f.severity == "fail" and f.check in JUMPS and f.reference == "previous" for f in report.findings):
        return []
    candidate = {t: c for t, (c, _) in entry.norms.items()}
    previous = {t: p for t, (_, p) in entry.norms.items()}
    to_previous = _distance(candidate, previous)
    if not to_previous:
        return []
    earlier = history.places()[:-1]  # the newest place is the previous checkpoint itself
    scored = [(d, where) for where, norms in earlier if (d := _distance(candidate, norms)) is not None]
    if not scored:
        return []
    nearest, where = min(scored)
    if not (nearest < MATCH and nearest < REWIND_RATIO * to_previous):
        return []
    step = report.checkpoint.get("step")
    return [
        Finding(
            "fail",
            "drift.rewind",
            f"the weights went back to {where}: their per-tensor norms are {nearest:.2g} (relative) from it "
            f"and {to_previous:.2g} from the previous checkpoint"
            + (f", while the step moved forward to {step}" if step is not None else "")
            + ": a restart from scratch or a restore of an old checkpoint?",
            None,
            "previous",
            value=nearest,
            limit=REWIND_RATIO * to_previous,
            expected={"to_previous": to_previous},
            basis=f"history: norms of {where}",
        )
    ]
