"""Structure of a candidate against a reference: missing, unexpected, reshaped,
re-typed tensors, and renames.

A renamed scope (TF1 `variable_scope`, a TF2 attribute) changes every key under
it; a restore into the new code then matches nothing there and silently keeps
initializer values. When names differ but shapes line up we propose the prefix
mapping that makes them match again.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field, replace

from ckptwatch.formats.base import TensorInfo
from ckptwatch.verify.report import Finding

EXAMPLES = 3


@dataclass
class Rename:
    old_prefix: str
    new_prefix: str
    pairs: list[tuple[str, str]] = field(default_factory=list)  # (reference name, candidate name)


@dataclass
class StructureResult:
    findings: list[Finding]
    pairs: dict[str, str]  # candidate name -> reference name, same shape and dtype, safe to compare
    renames: list[Rename]


def _split_common_suffix(a: str, b: str) -> tuple[str, str] | None:
    """('x/y/', 'z/y/') for a='x/y/k', b='z/y/k'-style names: the prefixes before
    the longest common '/'-suffix; None if not even the last component matches."""
    pa, pb = a.split("/"), b.split("/")
    k = 0
    while k < min(len(pa), len(pb)) and pa[-1 - k] == pb[-1 - k]:
        k += 1
    if k == 0 or (k == len(pa) and k == len(pb)):
        return None
    old = "/".join(pa[: len(pa) - k])
    new = "/".join(pb[: len(pb) - k])
    return (old + "/" if old else ""), (new + "/" if new else "")


def detect_renames(missing: list[TensorInfo], unexpected: list[TensorInfo]) -> list[Rename]:
    """Greedy: the prefix mapping explaining most (missing, unexpected) pairs with
    equal shape and dtype wins; repeat on what is left; then pair the rest by
    order when their shapes line up one to one."""
    left_m = list(missing)
    left_u = {u.name: u for u in unexpected}
    renames: list[Rename] = []
    while left_m and left_u:
        votes: Counter[tuple[str, str]] = Counter()
        by_sig: dict[tuple, list[TensorInfo]] = {}
        for u in left_u.values():
            by_sig.setdefault((u.shape, u.dtype), []).append(u)
        for m in left_m:
            for u in by_sig.get((m.shape, m.dtype), [])[:64]:
                mapping = _split_common_suffix(m.name, u.name)
                if mapping:
                    votes[mapping] += 1
        if not votes:
            break
        (old, new), _ = votes.most_common(1)[0]
        rename = Rename(old, new)
        for m in list(left_m):
            if m.name.startswith(old):
                target = left_u.get(new + m.name[len(old) :])
                if target and (target.shape, target.dtype) == (m.shape, m.dtype):
                    rename.pairs.append((m.name, target.name))
                    left_m.remove(m)
                    del left_u[target.name]
        if not rename.pairs:
            break
        renames.append(rename)
    rest_u = list(left_u.values())
    if (
        left_m
        and len(left_m) == len(rest_u)
        and all((m.shape, m.dtype) == (u.shape, u.dtype) for m, u in zip(left_m, rest_u, strict=True))
    ):
        for m, u in zip(left_m, rest_u, strict=True):
            renames.append(Rename(m.name, u.name, [(m.name, u.name)]))
    return renames


def identities(infos: list[TensorInfo]) -> dict[str, TensorInfo]:
    """Tensors by object path (their display name), falling back to keys when
    paths collide. TF keys a variable by the first path it finds, so the same
    Keras 3 kernel is `model/...` before the optimizer exists and
    `optimizer/_trainable_variables/N` after; its object path does not move."""
    by_label = {t.label: t for t in infos}
    if len(by_label) == len(infos):
        return by_label
    return {t.name: t for t in infos}


def compare(
    candidate: list[TensorInfo], reference: list[TensorInfo], role: str, unexpected_severity: str = "warn"
) -> StructureResult:
    """Compare by identity (see `identities`). Findings name candidate keys
    (reference keys for missing tensors); `pairs` maps candidate keys to reference keys."""
    cand = identities(candidate)
    ref = identities(reference)
    findings: list[Finding] = []
    pairs: dict[str, str] = {}
    for ident in cand.keys() & ref.keys():
        c, r = cand[ident], ref[ident]
        if c.shape != r.shape:
            message = f"shape {list(c.shape)}, {role} has {list(r.shape)}"
            findings.append(Finding("fail", "structure.shape", message, c.name, role))
        elif c.dtype != r.dtype:
            findings.append(Finding("fail", "structure.dtype", f"dtype {c.dtype}, {role} has {r.dtype}", c.name, role))
        else:
            pairs[c.name] = r.name
    missing = [r for i, r in ref.items() if i not in cand]
    unexpected = [c for i, c in cand.items() if i not in ref]
    renames = []
    if missing and unexpected:
        renames = detect_renames(_as_identity(missing, ref), _as_identity(unexpected, cand))
    by_name = {t.name: t for t in cand.values()}
    for rn in renames:
        rn.pairs = [(ref[old].name, cand[new].name) for old, new in rn.pairs]
        pairs.update({new: old for old, new in rn.pairs})
        examples = ", ".join(by_name[n].label for _, n in rn.pairs[:EXAMPLES])
        what = f"{rn.old_prefix or '(root)'!r} -> {rn.new_prefix or '(root)'!r}"
        findings.append(
            Finding(
                "fail",
                "structure.renamed",
                f"{len(rn.pairs)} tensor(s) renamed vs {role}: {what} (e.g. {examples}); a restore by name would "
                f"leave them at their initializers; map {what} (e.g. an init_from_checkpoint assignment map)",
                rn.pairs[0][1],
                role,
            )
        )
    renamed_ref = {old for rn in renames for old, _ in rn.pairs}
    renamed_cand = {new for rn in renames for _, new in rn.pairs}
    for r in missing:
        if r.name not in renamed_ref:
            message = f"{r.label}: in {role} but not in the candidate"
            findings.append(Finding("fail", "structure.missing", message, r.name, role))
    for c in unexpected:
        if c.name not in renamed_cand:
            findings.append(Finding(unexpected_severity, "structure.unexpected", f"not in {role}", c.name, role))
    return StructureResult(findings, pairs, renames)


def _as_identity(infos: list[TensorInfo], index: dict[str, TensorInfo]) -> list[TensorInfo]:
    """Copies named by their identity, so renames are found on object paths."""
    ident = {id(t): i for i, t in index.items()}
    return [replace(t, name=ident[id(t)]) for t in infos]
