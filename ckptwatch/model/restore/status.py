"""The restore status as findings, shared by the bundle and the Keras-file restores.

RestoreOutcome                          findings, the report's `model.restore` section, whether TF restored
status_findings(out, policy, unmatched, unused)   unmatched / unused under the watch's policy
rename_findings(unmatched, unused)      the prefix mapping that would line the names up again
named(findings, severity, check, items) one finding per item, at most MAX_NAMED, then a count
first_line(e)                           an exception as `TypeName: first line`
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field
from typing import Any

from ckptwatch.formats.base import TensorInfo
from ckptwatch.model.restore.built import dtype_name
from ckptwatch.policy import Policy
from ckptwatch.verify.report import Finding
from ckptwatch.verify.structure import detect_renames

MAX_NAMED = 20  # findings per check; the rest are counted in one more


@dataclass
class RestoreOutcome:
    findings: list[Finding] = field(default_factory=list)
    section: dict = field(default_factory=dict)
    restored: bool = False  # TF restored values (the model can be run)
    unmatched: int = 0


def first_line(e: BaseException) -> str:
    """`TypeName: the first line of the message`, for findings."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def allowed(patterns: list[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def named(findings: list[Finding], severity: str, check: str, items: list[tuple[str, str]]) -> None:
    """One finding per (object, message), at most MAX_NAMED, then a count."""
    for name, message in items[:MAX_NAMED]:
        findings.append(Finding(severity, check, message, name))
    if len(items) > MAX_NAMED:
        findings.append(Finding(severity, check, f"... and {len(items) - MAX_NAMED} more like these"))


def slash(path: str) -> str:
    return path.removeprefix("(root).").replace(".", "/")


def status_findings(
    out: RestoreOutcome, policy: Policy, unmatched: list[tuple[str, str]], unused: list[tuple[str, str]]
) -> set[str]:
    """Findings for model variables left without a value (`unmatched`: name, what it is) and
    for checkpoint values no model variable takes (`unused`: name, key), under the watch's
    policy. Returns the unmatched names the policy does not allow."""
    strict = [(n, what) for n, what in unmatched if not allowed(policy.allow_unrestored, n, slash(n))]
    out.unmatched = len(strict)
    named(
        out.findings,
        "fail",
        "restore.unmatched",
        [(n, f"{n} ({what}) has no value in the checkpoint: it keeps its initializer") for n, what in strict],
    )
    named(
        out.findings,
        "info",
        "restore.unmatched",
        [
            (n, f"{n} has no value in the checkpoint (allowed by allow_unrestored)")
            for n, _ in unmatched
            if allowed(policy.allow_unrestored, n, slash(n))
        ],
    )
    severity = {"consumed": "fail", "existing": "warn", "partial": "info"}[policy.restore]
    hard: list[tuple[str, str]] = []
    soft: list[tuple[str, str]] = []
    for name, key in unused:
        why = f"{name}: a checkpoint value no model object takes" + (f" ({key})" if key != name else "")
        (soft if allowed(policy.allow_unused, name, key, slash(name)) else hard).append((name, why))
    named(out.findings, severity, "restore.unused", hard)
    named(out.findings, "info", "restore.unused", soft)
    return {n for n, _ in strict}


def rename_findings(unmatched: list[tuple[str, Any]], unused: list[tuple[str, tuple, str]]) -> list[Finding]:
    """Propose the prefix mapping that would line names up again (a renamed scope or attribute)."""
    missing = [TensorInfo(slash(name), str(dtype), tuple(shape), 0) for name, (shape, dtype), _ in unused]
    wanted = [TensorInfo(slash(name), dtype_name(v), tuple(v.shape), 0) for name, v in unmatched]
    out = []
    for r in detect_renames(missing, wanted):
        if len(r.pairs) < 1:
            continue
        old, new = r.old_prefix or "(root)/", r.new_prefix or "(root)/"
        example = r.pairs[0]
        out.append(
            Finding(
                "fail",
                "restore.renamed",
                f"{len(r.pairs)} checkpoint values under {old!r} match model variables under {new!r} by shape "
                f"(e.g. {example[0]} -> {example[1]}): the scope or attribute was renamed, so these variables "
                f"keep their initializers",
                new.rstrip("/"),
            )
        )
    return out
