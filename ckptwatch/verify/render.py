"""Human-readable rendering of reports: pure functions, strings out."""

from __future__ import annotations

from collections.abc import Set as AbstractSet

from ckptwatch.verify.report import ROLES, Report, TensorResult

MAX_FINDINGS = 40
MAX_TENSORS = 20


def human_bytes(n: int | None) -> str:
    if not n:
        return "0 B"
    size = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1024 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def num(x: float | None, digits: int = 4) -> str:
    if x is None:
        return "-"
    if x == 0:
        return "0"
    return f"{x:.{digits}g}"


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def table(headers: list[str], rows: list[list[str]], right: AbstractSet[int] = frozenset()) -> str:
    """Columns padded to their widest cell; numbers (columns in `right`) aligned right."""
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in rows])


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1) :]


def checkpoint_line(report: Report) -> str:
    c = report.checkpoint
    step = f", step {c['step']}" if c.get("step") is not None else ""
    what = f"{c.get('format') or 'unknown format'}{step}, {c.get('tensors', 0)} tensors, {human_bytes(c.get('bytes'))}"
    return f"{c.get('path')}  ({what})"


def with_names(tensors: list[TensorResult]) -> bool:
    """Whether a NAME column (the Keras layer and variable) says more than the TENSOR column."""
    return any(t.known and t.known != t.display for t in tensors)


def findings_block(report: Report) -> str:
    if not report.findings:
        return "no findings"
    by_name = {t.name: t for t in report.tensors}
    named = with_names([by_name[f.tensor] for f in report.findings[:MAX_FINDINGS] if f.tensor in by_name])
    rows = []
    for f in report.findings[:MAX_FINDINGS]:
        t = by_name.get(f.tensor) if f.tensor else None
        path = shorten(t.display if t else f.tensor or "-", 48)
        name = [shorten(t.display_name if t else f.tensor or "-", 40)] if named else []
        rows.append([f.severity, f.check, path, *name, f.reference or "-", f.message])
    more = len(report.findings) - MAX_FINDINGS
    text = table(["SEVERITY", "CHECK", "TENSOR", *(["NAME"] if named else []), "REF", "MESSAGE"], rows)
    return text + (f"\n... and {more} more findings (use --json for all)" if more > 0 else "")


def drift_block(report: Report) -> str:
    rows = []
    for role in ROLES:
        d = report.drift.get(role)
        ref = report.references.get(role)
        if ref is None:
            continue
        if d is None:
            rows.append([role, "-", "-", "-", "-", shorten(ref, 60)])
            continue
        est = " (est.)" if d.estimated else ""
        rows.append(
            [
                role,
                num(d.relative_l2) + est,
                num(d.max_abs),
                num(d.cosine, 6),
                pct(d.changed_fraction),
                shorten(ref, 60),
            ]
        )
    if not rows:
        return ""
    return table(["REFERENCE", "REL L2", "MAX ABS", "COSINE", "CHANGED", "PATH"], rows, right={1, 2, 3, 4})


def _tensor_rows(
    tensors: list[TensorResult], roles: list[str], failing: dict[str, str], named: bool = False
) -> list[list[str]]:
    rows = []
    for t in tensors:
        s = t.stats
        nonfinite = str(s.nonfinite) if s else "-"
        drift_cells = [num(t.drift[r].relative_l2) if r in t.drift else "-" for r in roles]
        rows.append(
            [shorten(t.display, 56), *([shorten(t.display_name, 40)] if named else []), t.kind,
             "x".join(map(str, t.shape)) or "scalar", t.dtype, *drift_cells,
             num(s.mean if s else None), num(s.std if s else None), nonfinite, failing.get(t.name, "")]
        )  # fmt: skip
    return rows


def worst_tensors(report: Report, limit: int = MAX_TENSORS) -> str:
    """Failing tensors first, then weights by drift, then the rest (optimizer state, counters)."""
    roles = [r for r in ROLES if report.references.get(r)]
    failing: dict[str, str] = {}
    for f in report.findings:
        if f.severity == "fail" and f.tensor:
            failing.setdefault(f.tensor, f.check)
    tensors = [t for t in report.tensors if t.stats is not None or t.name in failing]
    tensors.sort(key=lambda t: (t.name not in failing, t.kind != "weight", -t.worst_drift()))
    shown = tensors[:limit]
    named = with_names(shown)
    headers = [
        "TENSOR",
        *(["NAME"] if named else []),
        "KIND",
        "SHAPE",
        "DTYPE",
        *[f"REL L2 {r.upper()}" for r in roles],
        "MEAN",
        "STD",
        "NONFINITE",
        "FAILED",
    ]
    rows = _tensor_rows(shown, roles, failing, named)
    right = set(range(4 + named, len(headers) - 1))
    more = len(tensors) - limit
    return table(headers, rows, right) + (f"\n... {more} more tensors (use --json)" if more > 0 else "")


def render_verify(report: Report) -> str:
    parts = [
        f"checkpoint  {checkpoint_line(report)}",
        f"verdict     {report.verdict.upper()}",
        "",
        findings_block(report),
    ]
    drift = drift_block(report)
    if drift:
        parts += ["", drift]
    if report.model:
        parts += ["", model_block(report.model)]
    if report.tensors:
        parts += ["", worst_tensors(report)]
    return "\n".join(parts)


def model_block(model: dict) -> str:
    """The model-aware checks in a few lines: where, restore, functional, smoke step."""
    if model.get("skipped"):
        return f"model       not checked: {model['skipped']}"
    lines = [f"model       {model.get('source') or 'not loaded'} on {model.get('device')}"]
    r = model.get("restore") or {}
    if r:
        fidelity = r.get("fidelity") or {}
        extra = (
            f", fidelity {fidelity['checked'] - fidelity['mismatched']}/{fidelity['checked']} bit-exact"
            if fidelity
            else ""
        )
        lines.append(
            f"  restore   {r.get('method')}: {r.get('matched', 0)} matched, {len(r.get('unmatched') or [])} unmatched, "
            f"{len(r.get('unused') or [])} unused{extra}"
        )
    f = model.get("functional")
    if f:
        ref = f.get("reference")
        vs = (
            f"vs {ref}: max abs diff {num(f.get('max_abs_diff'))}, relative {num(f.get('relative_diff'))}, "
            f"agreement {pct(f.get('agreement'))}"
            if ref
            else "no reference outputs"
        )
        acc = f", accuracy {pct(f.get('accuracy'))}" if f.get("accuracy") is not None else ""
        lines.append(f"  probe     {f.get('batch')} examples {vs}{acc}")
    s = model.get("smoke_step")
    if s and s.get("ran"):
        lines.append(f"  smoke     loss {num(s.get('loss'))}, {s.get('changed')}/{s.get('trainable')} weights changed")
    return "\n".join(lines)


def render_inspect(report: Report) -> str:
    rows = []
    named = with_names(report.tensors)
    for t in report.tensors:
        s = t.stats
        rows.append(
            [shorten(t.display, 60), *([shorten(t.display_name, 40)] if named else []), t.kind, t.dtype,
             "x".join(map(str, t.shape)) or "scalar", human_bytes(t.nbytes),
             *(num(getattr(s, k)) if s else "-" for k in ("mean", "std", "min", "max")),
             str(s.nonfinite) if s else "-"]
        )  # fmt: skip
    parts = [
        f"checkpoint  {checkpoint_line(report)}",
        "",
        table(
            [
                "TENSOR",
                *(["NAME"] if named else []),
                "KIND",
                "DTYPE",
                "SHAPE",
                "BYTES",
                "MEAN",
                "STD",
                "MIN",
                "MAX",
                "NONFINITE",
            ],
            rows,
            {k + named for k in (4, 5, 6, 7, 8, 9)},
        ),
    ]
    problems = [f for f in report.findings if f.severity != "info"]
    if problems:
        parts += ["", findings_block(report)]
    return "\n".join(parts)


def render_diff(diff: dict) -> str:
    named = any(t.get("display_name", t["display"]) != t["display"] for t in diff["tensors"])
    rows = [
        [shorten(t["display"], 60), *([shorten(t.get("display_name", t["display"]), 40)] if named else []),
         "x".join(map(str, t["shape"])) or "scalar", num(t.get("relative_l2")),
         num(t.get("max_abs")), num(t.get("cosine"), 6), pct(t.get("changed_fraction"))]
        for t in diff["tensors"]
    ]  # fmt: skip
    d = diff.get("drift") or {}
    head = [
        f"A  {diff['a']['path']}",
        f"B  {diff['b']['path']}",
        f"overall: relative L2 {num(d.get('relative_l2'))}, max abs {num(d.get('max_abs'))}, "
        f"cosine {num(d.get('cosine'), 6)}, changed {pct(d.get('changed_fraction'))}",
        "",
    ]
    headers = ["TENSOR", *(["NAME"] if named else []), "SHAPE", "REL L2", "MAX ABS", "COSINE", "CHANGED"]
    body = table(headers, rows, {k + named for k in (2, 3, 4, 5)})
    notes = [
        f"{f['severity']:5} {f['check']:22} {f.get('display_name') or f['tensor'] or '-'}  {f['message']}"
        for f in diff.get("findings", [])
    ]
    return "\n".join(head + [body] + (["", *notes] if notes else []))
