"""The daemon's HTML pages: the status page (`/`) and one page per verified checkpoint
(`/checkpoints/{id}`). Self-contained: inline CSS and SVG, no script, no external asset (the
status page refreshes itself with a meta refresh).

    render_status_page(snap, now, history)   `/`: an overview of the watches; per watch the
                                             latest failing checks with their tensors, a timeline
                                             of verdicts by step, drift over steps against the
                                             previous checkpoint and golden, recent checkpoints
                                             linking to their pages, baseline, publish_dir and
                                             acceptance; the workers
    render_checkpoint_page(row)              `/checkpoints/{id}`: findings with their numbers,
                                             overall drift, model-aware results, every tensor
                                             (worst first)

`history` maps a watch to its newest report summaries (summary.summarize + id, step, verdict,
finished), newest first. Every value that comes from a file, a config or an operator is escaped
(checkpoint file names may contain markup). Pure: plain data in, str out; no numpy.
"""

from __future__ import annotations

import html
import json
import math
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any

from ckptwatch.daemon.model import Snapshot, WatchStatus
from ckptwatch.daemon.summary import broken_drift

REFRESH_SECONDS = 15
TIMELINE_POINTS = 60  # checkpoints in a watch's timeline and drift chart
RECENT_ROWS = 10  # rows in a watch's "recent checkpoints" table
MAX_TENSOR_ROWS = 2000  # rows of a checkpoint page's tensor table
DRIFT_FIGURES = ("relative_l2", "max_abs", "cosine", "changed_fraction")

_VERDICT_CLASS = {"pass": "pass", "warn": "warn", "fail": "fail", "error": "fail"}
_COLOURS = {"pass": "#2e9d4c", "warn": "#d9a400", "fail": "#c62828", "error": "#7b1fa2"}
_REF_COLOURS = {"previous": "#1f6fb2", "golden": "#d07a00"}

_STYLE = """
body{font-family:system-ui,sans-serif;margin:1.5em 2em;color:#222;max-width:1200px}
h1{margin:.2em 0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}h3{margin:1em 0 .3em}
table{border-collapse:collapse;margin-bottom:1.2em}
th,td{border:1px solid #ccc;padding:.25em .5em;text-align:left;font-size:.88em;vertical-align:top}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
.pass{background:#dff5df}.warn{background:#fff3cd}.fail{background:#f8d7da}.muted{color:#888}
.badge{display:inline-block;padding:.05em .5em;border-radius:.6em;font-size:.85em;margin-left:.4em}
section.watch{border:1px solid #ddd;border-radius:6px;padding:.2em 1em 1em;margin:1em 0}
.charts{display:flex;flex-wrap:wrap;gap:1.5em}.chart{font-size:.8em}
svg text{font-family:system-ui,sans-serif;font-size:11px;fill:#444}
code,.path{font-family:ui-monospace,monospace;font-size:.9em;word-break:break-all}
pre{background:#f7f7f7;padding:.5em;overflow:auto;font-size:.85em}
"""


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def num(value: Any) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        return f"{value:.4g}"
    return str(value)


def when(ts: float | None) -> str:
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def duration(seconds: float) -> str:
    s = max(0, int(seconds))
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {s}s"


def _step(step: int | None) -> str:
    return f" (step {step})" if step is not None else ""


def _verdict_cell(verdict: str | None) -> str:
    css = _VERDICT_CLASS.get(verdict or "", "muted")
    return f'<td class="{css}">{esc(verdict or "none yet")}</td>'


def _report_link(row: Mapping[str, Any], text: str = "report") -> str:
    rid = row.get("id")
    if not isinstance(rid, int):
        return '<span class="muted" title="kept in memory until the state can be written">pending</span>'
    return f'<a href="/checkpoints/{rid}">{esc(text)}</a>'


def _anchor(name: str) -> str:
    return "watch-" + "".join(c if c.isalnum() or c in "-_" else f"_{ord(c):x}" for c in name)


def _page(title: str, body: str, refresh: int | None = None) -> str:
    meta = f'<meta http-equiv="refresh" content="{int(refresh)}">' if refresh else ""
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>{meta}'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<style>{_STYLE}</style></head>\n<body>\n{body}\n</body></html>\n"
    )


# -- findings ------------------------------------------------------------------------------------------


def _numbers(f: Mapping[str, Any]) -> str:
    parts = []
    if f.get("value") is not None:
        parts.append(f"value {num(f['value'])}")
    if f.get("limit") is not None:
        parts.append(f"limit {num(f['limit'])}")
    expected = f.get("expected")
    if isinstance(expected, Mapping) and expected:
        parts.append("expected " + ", ".join(f"{k} {num(v)}" for k, v in expected.items()))
    if f.get("basis"):
        parts.append(f"basis {f['basis']}")
    return "; ".join(parts)


def findings_table(findings: Sequence[Mapping[str, Any]], empty: str = "no failing or warning checks") -> str:
    if not findings:
        return f'<p class="muted">{esc(empty)}</p>'
    rows = "\n".join(
        f'<tr class="finding"><td class="{_VERDICT_CLASS.get(str(f.get("severity")), "")}">'
        f"{esc(f.get('severity'))}</td>"
        f'<td class="check"><code>{esc(f.get("check"))}</code></td>'
        f'<td class="tensor"><code>{esc(f.get("tensor") or "—")}</code></td>'
        f"<td>{esc(f.get('reference') or '—')}</td>"
        f"<td>{esc(f.get('message'))}</td><td>{esc(_numbers(f))}</td></tr>"
        for f in findings
    )
    return (
        '<table class="findings"><tr><th>severity</th><th>check</th><th>tensor</th><th>reference</th>'
        f"<th>message</th><th>numbers</th></tr>\n{rows}\n</table>"
    )


# -- charts --------------------------------------------------------------------------------------------


def _by_step(history: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The newest TIMELINE_POINTS summaries, in step order (then time)."""
    rows = list(history[:TIMELINE_POINTS])
    return sorted(rows, key=lambda r: (r.get("step") if isinstance(r.get("step"), int) else -1, r.get("finished") or 0))


def _title(r: Mapping[str, Any]) -> str:
    checks = sorted({f.get("check") for f in r.get("findings") or () if f.get("severity") == "fail"} - {None})
    tail = f" — {', '.join(map(str, checks))}" if checks else ""
    return f"step {num(r.get('step'))}: {r.get('verdict')}{tail} ({r.get('path')})"


def timeline_svg(history: Sequence[Mapping[str, Any]], width: int = 520, height: int = 46) -> str:
    """One bar per checkpoint, in step order, coloured by verdict, each a link to its page."""
    rows = _by_step(history)
    if not rows:
        return '<p class="muted">no verified checkpoint yet</p>'
    pad, n = 6, len(rows)
    slot = (width - 2 * pad) / n
    bar = max(2.0, min(18.0, slot * 0.8))
    parts = []
    for i, r in enumerate(rows):
        x = pad + i * slot + (slot - bar) / 2
        colour = _COLOURS.get(str(r.get("verdict")), "#999")
        rect = (
            f'<rect class="verdict {esc(r.get("verdict"))}" x="{x:.1f}" y="4" width="{bar:.1f}" height="24" '
            f'fill="{colour}"><title>{esc(_title(r))}</title></rect>'
        )
        rid = r.get("id")
        parts.append(f'<a href="/checkpoints/{rid}">{rect}</a>' if isinstance(rid, int) else rect)
    first, last = rows[0].get("step"), rows[-1].get("step")
    labels = (
        f'<text x="{pad}" y="{height - 4}">step {esc(num(first))}</text>'
        f'<text x="{width - pad}" y="{height - 4}" text-anchor="end">step {esc(num(last))}</text>'
    )
    return (
        f'<svg class="timeline" role="img" aria-label="verdicts by step" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}{labels}</svg>'
    )


def _drift_value(r: Mapping[str, Any], ref: str) -> float | None:
    d = (r.get("drift") or {}).get(ref)
    value = d.get("relative_l2") if isinstance(d, Mapping) else None
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def drift_svg(history: Sequence[Mapping[str, Any]], width: int = 520, height: int = 180) -> str:
    """Relative L2 drift of each checkpoint against the previous one (its baseline) and golden,
    over steps; a log scale when the values span more than two decades. Failed checkpoints are
    marked with a red dashed line (and a red ring on their points); a missing value (NaN, none)
    breaks the line."""
    rows = _by_step(history)
    values = [v for r in rows for ref in _REF_COLOURS if (v := _drift_value(r, ref)) is not None]
    if not values:
        return '<p class="muted">no drift figures yet</p>'
    left, right, top, bottom = 52, 10, 10, 24
    positive = [v for v in values if v > 0]
    log = bool(positive) and len(positive) == len(values) and max(values) / min(positive) > 100
    lo, hi = (min(positive), max(values)) if log else (0.0, max(values) or 1.0)

    def y_of(v: float) -> float:
        frac = (math.log10(v) - math.log10(lo)) / ((math.log10(hi) - math.log10(lo)) or 1) if log else v / hi
        return top + (1 - frac) * (height - top - bottom)

    n = len(rows)
    slot = (width - left - right) / max(n - 1, 1)

    def x_of(i: int) -> float:
        return left + (i * slot if n > 1 else (width - left - right) / 2)

    parts = [
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{height - bottom}" stroke="#999"/>',
        f'<line x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}" stroke="#999"/>',
        f'<text x="{left - 4}" y="{top + 8}" text-anchor="end">{esc(num(hi))}</text>',
        f'<text x="{left - 4}" y="{height - bottom}" text-anchor="end">{esc(num(lo))}</text>',
        f'<text x="{left}" y="{height - 6}">step {esc(num(rows[0].get("step")))}</text>',
        f'<text x="{width - right}" y="{height - 6}" text-anchor="end">step {esc(num(rows[-1].get("step")))}</text>',
    ]
    for i, r in enumerate(rows):  # failed checkpoints: a red mark across the chart (NaN has no drift point)
        if r.get("verdict") in ("fail", "error"):
            x = x_of(i)
            parts.append(
                f'<line class="failed" x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{height - bottom}" stroke="#c62828" '
                f'stroke-dasharray="3,3"><title>{esc(_title(r))}</title></line>'
            )
    for ref, colour in _REF_COLOURS.items():
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, r in enumerate(rows):
            v = _drift_value(r, ref)
            if v is None or (log and v <= 0):
                if segment:
                    segments.append(segment)
                segment = []
                continue
            x, y = x_of(i), y_of(v)
            segment.append(f"{x:.1f},{y:.1f}")
            bad = r.get("verdict") in ("fail", "error")
            ring = ' stroke="#c62828" stroke-width="2"' if bad else ""
            tip = f"{ref}: {num(v)} at step {num(r.get('step'))} ({r.get('verdict')})"
            parts.append(
                f'<circle class="drift {ref}" cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{colour}"{ring}>'
                f"<title>{esc(tip)}</title></circle>"
            )
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                points = " ".join(seg)
                parts.insert(0, f'<polyline fill="none" stroke="{colour}" stroke-width="1.5" points="{points}"/>')
    scale = "log scale" if log else "linear scale"
    legend = " ".join(f'<span style="color:{colour}">■</span> vs {ref}' for ref, colour in _REF_COLOURS.items())
    legend += ' <span style="color:#c62828">┆</span> failed'
    return (
        f'<svg class="drift-chart" role="img" aria-label="relative L2 drift over steps" width="{width}" '
        f'height="{height}" viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">{"".join(parts)}</svg>'
        f'<div class="chart">{legend} · relative L2, {scale}</div>'
    )


# -- the status page ------------------------------------------------------------------------------------


def _overview_row(w: WatchStatus) -> str:
    failing = sorted({str(f.get("check")) for f in w.findings if f.get("severity") == "fail"})
    cells = [
        f'<td><a href="#{_anchor(w.name)}">{esc(w.name)}</a></td>',
        f'<td class="{"" if w.armed or w.retired else "fail"}">{esc(_armed_short(w))}</td>',
        _verdict_cell(w.last_verdict),
        f'<td class="num">{esc(num(w.last_step))}</td>',
        f'<td class="path">{esc(w.last_checkpoint or "—")}</td>',
        f"<td>{esc(when(w.last_time))}</td>",
        f"<td>{esc(', '.join(failing) or '—')}</td>",
        f'<td class="num">{esc(num(w.drift_relative_l2.get("previous")))}</td>',
        f'<td class="num">{esc(num(w.drift_relative_l2.get("golden")))}</td>',
        f'<td class="num">{esc(num(w.nonfinite))}</td>',
        f'<td class="num">{esc(w.queue_depth)}</td>',
    ]
    return "<tr>" + "".join(cells) + "</tr>"


def _baseline_row(w: WatchStatus) -> str:
    a = w.accepted
    accepted = (
        f"<td>{esc(when(a.at))}</td><td>{esc(a.by)}</td><td>{esc(a.checkpoint + _step(a.step))}</td>"
        f"<td>{esc(a.reason)}</td>"
        if a
        else '<td class="muted" colspan="4">never</td>'
    )
    baseline = w.baseline_checkpoint + _step(w.baseline_step) if w.baseline_checkpoint else "none yet"
    published = w.published_checkpoint + _step(w.published_step) if w.published_checkpoint else "—"
    return f"<tr><td>{esc(w.name)}</td><td>{esc(baseline)}</td><td>{esc(published)}</td>{accepted}</tr>"


def _recent_table(history: Sequence[Mapping[str, Any]]) -> str:
    if not history:
        return ""
    rows = []
    for r in history[:RECENT_ROWS]:
        checks = ", ".join(
            sorted({str(f.get("check")) for f in r.get("findings") or () if f.get("severity") == "fail"})
        )
        rows.append(
            f'<tr><td class="num">{esc(num(r.get("step")))}</td>{_verdict_cell(r.get("verdict"))}'
            f'<td class="path">{esc(r.get("path"))}</td><td>{esc(when(r.get("finished")))}</td>'
            f"<td>{esc(checks or '—')}</td>"
            f'<td class="num">{esc(num(_drift_value(r, "previous")))}</td>'
            f'<td class="num">{esc(num(_drift_value(r, "golden")))}</td>'
            f"<td>{_report_link(r)}</td></tr>"
        )
    return (
        '<table class="recent"><tr><th>step</th><th>verdict</th><th>checkpoint</th><th>verified at</th>'
        "<th>failing checks</th><th>drift vs previous</th><th>drift vs golden</th><th></th></tr>\n"
        + "\n".join(rows)
        + "\n</table>"
    )


def _watch_section(w: WatchStatus, history: Sequence[Mapping[str, Any]]) -> str:
    css = _VERDICT_CLASS.get(w.last_verdict or "", "muted")
    latest = history[0] if history else None
    latest_link = (
        " · " + _report_link(latest, "latest report")
        if latest is not None and latest.get("path") == w.last_checkpoint
        else ""
    )
    armed = _armed_long(w)
    baseline = esc(w.baseline_checkpoint + _step(w.baseline_step)) if w.baseline_checkpoint else "none yet"
    published = esc(w.published_checkpoint + _step(w.published_step)) if w.published_checkpoint else "nothing"
    a = w.accepted
    accepted = (
        f"{esc(a.checkpoint + _step(a.step))} by {esc(a.by)} at {esc(when(a.at))}: “{esc(a.reason)}”" if a else "never"
    )
    heading = "Failing and warning checks of the latest checkpoint"
    return f"""<section class="watch" id="{_anchor(w.name)}">
<h2>{esc(w.name)}<span class="badge {css}">{esc(w.last_verdict or "none yet")}</span></h2>
<p><span class="path">{esc(w.path)}</span> · {armed} · queued {esc(w.queue_depth)}</p>
<p>latest: <span class="path">{esc(w.last_checkpoint or "—")}</span>{esc(_step(w.last_step))}
verified {esc(when(w.last_time))}{latest_link}</p>
<p>baseline (next checkpoint compared with): {baseline} · published (publish_dir): {published} ·
last accepted: {accepted}</p>
<h3>{heading}</h3>
{findings_table(w.findings)}
<div class="charts"><div><h3>Verdicts by step</h3>{timeline_svg(history)}</div>
<div><h3>Drift over steps</h3>{drift_svg(history)}</div></div>
<h3>Recent checkpoints</h3>
{_recent_table(history) or '<p class="muted">none yet</p>'}
</section>"""


def render_status_page(
    snap: Snapshot, now: float | None = None, history: Mapping[str, Sequence[Mapping[str, Any]]] | None = None
) -> str:
    """The HTML of `/`; every value from the snapshot and the history is escaped."""
    now = time.time() if now is None else now
    history = history or {}
    watch_rows = "\n".join(_overview_row(w) for w in snap.watches) or '<tr><td colspan="11">no watches</td></tr>'
    sections = "\n".join(_watch_section(w, history.get(w.name, ())) for w in snap.watches)
    worker_rows = (
        "\n".join(
            "<tr>"
            f"<td>{esc(k.device)}</td>"
            f'<td class="{"pass" if k.up else "fail"}">{"up" if k.up else "down"}</td>'
            f'<td class="num">{esc(k.pid if k.pid is not None else "—")}</td>'
            f'<td class="num">{esc(k.restarts)}</td>'
            f"<td>{esc(k.job or '—')}</td>"
            f"<td>{esc(k.gave_up or '')}</td>"
            "</tr>"
            for k in snap.workers
        )
        or '<tr><td colspan="6">no workers</td></tr>'
    )
    baseline_rows = "\n".join(_baseline_row(w) for w in snap.watches) or '<tr><td colspan="7">no watches</td></tr>'
    ready = "ready" if snap.ready else "<strong>not ready</strong> (see /readyz)"
    body = f"""<h1>ckptwatch</h1>
<p>version {esc(snap.version)} · up {esc(duration(now - snap.started))} · {ready} ·
<a href="/metrics">metrics</a> · <a href="/api/v1/watches">watches (JSON)</a> ·
<a href="/api/v1/checkpoints">recent checkpoints (JSON)</a> · refreshes every {REFRESH_SECONDS} s</p>
<h2>Watches</h2>
<table>
<tr><th>watch</th><th>armed</th><th>latest verdict</th><th>step</th><th>checkpoint</th><th>verified at</th>
<th>failing checks</th><th>drift vs previous<br>(relative L2)</th><th>drift vs golden<br>(relative L2)</th>
<th>non-finite</th><th>queued</th></tr>
{watch_rows}
</table>
{sections}
<h2>Baselines</h2>
<p>Each checkpoint is compared with its watch's baseline: the last one that passed, or one an operator
accepted with <code>ckptwatch accept WATCH [CHECKPOINT] --reason TEXT</code>. A failed checkpoint never
becomes one. publish_dir names the newest baseline.</p>
<table>
<tr><th>watch</th><th>baseline</th><th>published</th><th>last accepted at</th><th>by</th><th>checkpoint</th>
<th>reason</th></tr>
{baseline_rows}
</table>
<h2>Workers</h2>
<table>
<tr><th>device</th><th>state</th><th>pid</th><th>restarts</th><th>verifying</th><th>gave up</th></tr>
{worker_rows}
</table>"""
    return _page("ckptwatch", body, refresh=REFRESH_SECONDS)


# -- a checkpoint's page --------------------------------------------------------------------------------


def _tensor_badness(t: Mapping[str, Any], flagged: set[str]) -> tuple:
    """Sort key, worst first: named by a fail finding, then holding NaN/Inf, then weights before
    counters and optimizer state, then largest drift."""
    stats = t.get("stats") or {}
    nonfinite = (stats.get("nan") or 0) + (stats.get("inf") or 0)
    drifts = [
        float(d["relative_l2"])
        for d in (t.get("drift") or {}).values()
        if isinstance(d, Mapping) and isinstance(d.get("relative_l2"), (int, float))
    ]
    worst = max(drifts, default=-1.0)
    weight = t.get("kind", "weight") == "weight"
    return (t.get("name") not in flagged, nonfinite == 0, not weight, -worst, str(t.get("display") or t.get("name")))


def _tensor_rows(tensors: Iterable[Mapping[str, Any]], findings: Sequence[Mapping[str, Any]]) -> tuple[str, int]:
    flagged = {str(f.get("tensor")) for f in findings if f.get("severity") == "fail" and f.get("tensor")}
    warned = {str(f.get("tensor")) for f in findings if f.get("severity") == "warn" and f.get("tensor")}
    ordered = sorted(tensors, key=lambda t: _tensor_badness(t, flagged))
    rows = []
    for t in ordered[:MAX_TENSOR_ROWS]:
        name = t.get("name")
        stats = t.get("stats") or {}
        drift = t.get("drift") or {}
        css = "fail" if name in flagged else "warn" if name in warned else ""
        broken = bool((stats.get("nan") or 0) + (stats.get("inf") or 0))  # drift over finite positions understates
        rel = {
            ref: (math.nan if broken else drift[ref].get("relative_l2"))
            if isinstance(drift.get(ref), Mapping)
            else None
            for ref in ("previous", "golden")
        }
        rows.append(
            f'<tr class="{css}"><td class="tensor"><code>{esc(t.get("display") or name)}</code></td>'
            f"<td>{esc(t.get('kind'))}</td><td>{esc(t.get('dtype'))}</td><td>{esc(t.get('shape'))}</td>"
            f'<td class="num">{esc(num(stats.get("nan")))}</td><td class="num">{esc(num(stats.get("inf")))}</td>'
            f'<td class="num">{esc(num(stats.get("min")))}</td><td class="num">{esc(num(stats.get("max")))}</td>'
            f'<td class="num">{esc(num(rel["previous"]))}</td><td class="num">{esc(num(rel["golden"]))}</td></tr>'
        )
    return "\n".join(rows), len(ordered)


def _model_section(model: Any) -> str:
    if not model:
        return '<p class="muted">no model-aware checks ran for this checkpoint</p>'
    if not isinstance(model, Mapping):
        return f"<pre>{esc(json.dumps(model, indent=2, default=str))}</pre>"
    rows = []
    for key, value in model.items():
        shown = (
            f"<pre>{esc(json.dumps(value, indent=2, default=str))}</pre>"
            if isinstance(value, (Mapping, list))
            else esc(num(value) if isinstance(value, float) else value)
        )
        rows.append(f"<tr><th>{esc(key)}</th><td>{shown}</td></tr>")
    return '<table class="model">' + "".join(rows) + "</table>"


def _overall(report: Mapping[str, Any], ref: str) -> Mapping[str, Any] | None:
    """The report's overall drift against `ref`; NaN figures when a NaN or Inf weight was compared."""
    d = (report.get("drift") or {}).get(ref)
    if isinstance(d, Mapping) and broken_drift(dict(report), ref):
        return {**d, "relative_l2": math.nan, "max_abs": math.nan}
    return d if isinstance(d, Mapping) else None


def render_checkpoint_page(row: Mapping[str, Any]) -> str:
    """The HTML of `/checkpoints/{id}` for a stored verification (State.report)."""
    report = row.get("report") or {}
    ck = report.get("checkpoint") or {}
    display = {t["name"]: t.get("display") or t["name"] for t in report.get("tensors") or () if t.get("name")}
    findings = [
        {**f, "tensor": display.get(f.get("tensor"), f.get("tensor")) if f.get("tensor") else None}
        for f in report.get("findings") or ()
    ]
    verdict = row.get("verdict") or report.get("verdict")
    css = _VERDICT_CLASS.get(str(verdict), "muted")
    drift_rows = "".join(
        f"<tr><td>{esc(ref)}</td>"
        + (
            "".join(f'<td class="num">{esc(num(d.get(k)))}</td>' for k in DRIFT_FIGURES)
            if isinstance(d, Mapping)
            else '<td class="muted" colspan="4">not compared</td>'
        )
        + f'<td class="path">{esc((report.get("references") or {}).get(ref) or "—")}</td></tr>'
        for ref, d in ((ref, _overall(report, ref)) for ref in ("previous", "golden"))
    )
    tensor_rows, total = _tensor_rows(report.get("tensors") or (), report.get("findings") or ())
    cut = f'<p class="muted">the {MAX_TENSOR_ROWS} worst of {total} tensors shown</p>'
    cut = cut if total > MAX_TENSOR_ROWS else ""
    rid = row.get("id")
    body = f"""<p><a href="/">← status</a> · <a href="/api/v1/checkpoints/{esc(rid)}">this report (JSON)</a></p>
<h1>{esc(row.get("watch"))}{esc(_step(row.get("step")))}<span class="badge {css}">{esc(verdict)}</span></h1>
<p class="path">{esc(row.get("path"))}</p>
<p>format {esc(ck.get("format") or "—")} · {esc(num(ck.get("tensors")))} tensors · {esc(num(ck.get("bytes")))} bytes ·
verified {esc(when(row.get("finished")))} in {esc(num(row.get("duration")))} s</p>
<h2>Findings</h2>
{findings_table(findings, "no findings")}
<h2>Drift</h2>
<table><tr><th>reference</th><th>relative L2</th><th>max abs</th><th>cosine</th><th>changed fraction</th>
<th>checkpoint</th></tr>{drift_rows}</table>
<h2>Model-aware checks</h2>
{_model_section(report.get("model"))}
<h2>Tensors (worst first)</h2>
{cut}
<table class="tensors"><tr><th>tensor</th><th>kind</th><th>dtype</th><th>shape</th><th>NaN</th><th>Inf</th>
<th>min</th><th>max</th><th>drift vs previous</th><th>drift vs golden</th></tr>
{tensor_rows or '<tr><td colspan="10" class="muted">no tensors read</td></tr>'}
</table>"""
    return _page(f"ckptwatch: {row.get('watch')} {row.get('path')}", body)


def _armed_short(w: WatchStatus) -> str:
    """The status table's "armed" cell: yes, retired, or no and why (ckptwatch_watch_armed's reason)."""
    if w.retired:
        return "retired"
    return "yes" if w.armed else f"no: {w.unarmed_reason or 'missing'}"


def _armed_long(w: WatchStatus) -> str:
    """The watch section's line (HTML): armed, retired, or not armed with the reason and the path."""
    if w.retired:
        return "retired (a finished run: not watched, no alerts; `ckptwatch retire --undo` watches it again)"
    if w.armed:
        return "armed"
    why = esc(w.unarmed_detail or "the directory is missing or cannot be watched")
    return f"<strong>not armed: {esc(w.unarmed_reason or 'missing')}</strong> ({why})"
