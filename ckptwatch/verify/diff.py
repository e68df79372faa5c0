"""`ckptwatch diff A B`: per-tensor drift of A against B, worst first (ckptwatch.diff/v1).

diff_paths(a, b, top=None, options=None) -> dict
"""

from __future__ import annotations

from ckptwatch.errors import CheckpointUnreadable
from ckptwatch.formats import open_checkpoint
from ckptwatch.formats.base import READ_ERRORS, decode_problem
from ckptwatch.policy import Policy
from ckptwatch.verify.engine import Engine, Options, open_reference
from ckptwatch.verify.report import DIFF_SCHEMA, clean_floats, named_findings


def diff_paths(
    a: str, b: str, top: int | None = None, options: Options | None = None, include_optimizer: bool = False
) -> dict:
    """Per-tensor drift of A against B (B is the reference), worst first.

    The overall figures are `verify A --previous B`'s, counting the same tensors: weights, and
    optimizer state (with its iteration counter) only with `include_optimizer`. Every tensor is still
    listed. `corrupt` names the sides (`a`, `b`) that failed an integrity check."""
    policy = Policy(include_optimizer=include_optimizer)
    src_b = open_reference(b, "B")
    try:
        try:
            src_a = open_checkpoint(a)
        except READ_ERRORS as e:
            raise CheckpointUnreadable(f"{a}: unreadable ({decode_problem(e, a)})") from None
        try:
            report, _ = Engine(policy, options).run(src_a, previous=src_b)
        finally:
            src_a.close()
    finally:
        src_b.close()
    rows = []
    for t in report.tensors:
        d = t.drift.get("previous")
        row: dict = {"name": t.name, "display_name": t.display_name, "display": t.display, "kind": t.kind}
        row["shape"] = list(t.shape)
        rows.append({**row, **(d.to_dict() if d else {"relative_l2": None})})
    rows.sort(key=lambda r: (r["relative_l2"] is None, -(r["relative_l2"] or 0.0)))
    if top:
        rows = rows[:top]
    shown = [f for f in report.findings if f.check.startswith(("structure.", "integrity.", "nonfinite"))]
    structural = named_findings(shown, report.tensors)
    overall = report.drift.get("previous")
    corrupt = sorted({"b" if f.reference else "a" for f in report.findings if f.check.startswith("integrity.")})
    return clean_floats(
        {
            "schema": DIFF_SCHEMA,
            "a": report.checkpoint,
            "b": {"path": src_b.path, "format": src_b.format, "step": src_b.step},
            "drift": overall.to_dict() if overall else None,
            "include_optimizer": include_optimizer,
            "corrupt": corrupt,
            "findings": structural,
            "tensors": rows,
        }
    )
