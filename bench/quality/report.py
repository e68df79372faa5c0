"""Scores as numbers (results.json) and as tables (stdout, results.md).

Per configuration (baseline rule x golden mode):
  - the confusion matrix: rows healthy and each fault class, columns pass / warn / fail / error,
    plus "caught": failed with an expected check naming the damaged tensor;
  - healthy checkpoints: false-fail and false-warn rates, which checks on which kinds of tensor
    caused them, and the verdict of each run's first checkpoint (no previous yet);
  - faults: the detection rate (scored instances caught), the misses, and the noise sweep:
    the smallest noise caught, as a multiple of the tensor's typical healthy change;
  - timings of the verifications.
"""

from __future__ import annotations

import statistics
from collections import Counter

from bench.quality.evaluate import VERDICTS, Config, FaultOutcome, Outcome, RunResult
from bench.quality.runs import Run

TOP = 10


def _role(run: Run, tensor: str | None) -> str:
    if tensor is None:
        return "(whole checkpoint)"
    info = run.tensors.get(tensor)
    if info is None:
        return "(other)"
    return info["role"] if info["trainable"] or info["role"] == "slot" else f"{info['role']} (non-trainable)"


def _label(run: Run, tensor: str | None) -> str:
    if tensor is None:
        return "-"
    info = run.tensors.get(tensor)
    return info["path"] if info else tensor


def _findings(run: Run, outcome: Outcome) -> list[dict]:
    return [
        {
            "severity": f["severity"],
            "check": f["check"],
            "tensor": f["tensor"],
            "variable": _label(run, f["tensor"]),
            "role": _role(run, f["tensor"]),
            "message": f["message"][:300],
        }
        for f in outcome.findings
    ]


def _rate(k: int, n: int) -> float:
    return round(k / n, 4) if n else 0.0


def summarize(config: Config, results: list[RunResult]) -> dict:
    healthy = [(r.run, i, o) for r in results for i, o in enumerate(r.healthy)]
    counts = Counter(o.verdict for _, _, o in healthy)
    n = len(healthy)
    causes: dict[str, Counter] = {"fail": Counter(), "warn": Counter()}
    tensors: dict[str, Counter] = {"fail": Counter(), "warn": Counter()}
    for run, _, o in healthy:
        for sev in ("fail", "warn"):
            seen = {(f["check"], _role(run, f["tensor"])) for f in o.findings if f["severity"] == sev}
            causes[sev].update(seen)  # checkpoints, not findings: one checkpoint counts once per cause
            tensors[sev].update(
                {(run.name, f["check"], _label(run, f["tensor"])) for f in o.findings if f["severity"] == sev}
            )
    faults = [fo for r in results for fo in r.faults]
    scored = [fo for fo in faults if fo.fault.scored]
    discrete = [fo for fo in scored if fo.fault.cls != "noise"]
    matrix: dict[str, dict] = {"healthy": {**{v: counts.get(v, 0) for v in VERDICTS}, "n": n, "caught": None}}
    for cls in dict.fromkeys(fo.fault.cls for fo in faults):
        group = [fo for fo in scored if fo.fault.cls == cls]
        if not group:
            continue
        row = Counter(fo.verdict for fo in group)
        matrix[cls] = {
            **{v: row.get(v, 0) for v in VERDICTS},
            "n": len(group),
            "caught": sum(fo.caught for fo in group),
        }
    seconds = [o.seconds for _, _, o in healthy] + [o.seconds for fo in faults for o in fo.outcomes]
    return {
        "config": {
            "baseline": config.baseline,
            "golden": config.golden,
            "model": config.model,
            "history": config.history,
        },
        "matrix": matrix,
        "healthy": {
            "checkpoints": n,
            "verdicts": {v: counts.get(v, 0) for v in VERDICTS},
            "false_fail_rate": _rate(counts.get("fail", 0), n),
            "false_warn_rate": _rate(counts.get("warn", 0), n),
            "fail_causes": [[c, role, k] for (c, role), k in causes["fail"].most_common()],
            "warn_causes": [[c, role, k] for (c, role), k in causes["warn"].most_common()],
            "fail_tensors": [[*key, k] for key, k in tensors["fail"].most_common(TOP)],
            "warn_tensors": [[*key, k] for key, k in tensors["warn"].most_common(TOP)],
            "first_checkpoints": {r.run.name: r.healthy[0].verdict for r in results},
            # under the "passed" rule one false fail freezes the baseline: later ones are judged against it
            "first_fail_index": {
                r.run.name: next((i for i, o in enumerate(r.healthy) if o.verdict == "fail"), None) for r in results
            },
            "per_run": {r.run.name: dict(Counter(o.verdict for o in r.healthy)) for r in results},
            "detail": [
                {
                    "run": run.name,
                    "checkpoint": o.checkpoint.rsplit("/", 1)[-1],
                    "index": i,
                    "verdict": o.verdict,
                    "previous": o.previous.rsplit("/", 1)[-1] if o.previous else None,
                    "findings": _findings(run, o),
                    "message": o.message,
                }
                for run, i, o in healthy
            ],
        },
        "faults": {
            "instances": len(faults),
            "scored": len(scored),
            "failed": sum(fo.verdict == "fail" for fo in scored),
            "caught": sum(fo.caught for fo in scored),
            "detection_rate": _rate(sum(fo.caught for fo in scored), len(scored)),
            "fail_rate": _rate(sum(fo.verdict == "fail" for fo in scored), len(scored)),
            "without_noise": {
                "scored": len(discrete),
                "caught": sum(fo.caught for fo in discrete),
                "detection_rate": _rate(sum(fo.caught for fo in discrete), len(discrete)),
            },
            "missed": [_instance(r.run, fo) for r in results for fo in r.faults if fo.fault.scored and not fo.caught],
            "noise": _noise(results),
            "detail": [_instance(r.run, fo) for r in results for fo in r.faults],
        },
        "timings": {
            "verifications": len(seconds),
            "seconds": round(sum(seconds), 2),
            "median_ms": round(1000 * statistics.median(seconds), 1) if seconds else None,
            "max_ms": round(1000 * max(seconds), 1) if seconds else None,
        },
    }


def _instance(run: Run, fo: FaultOutcome) -> dict:
    f = fo.fault
    return {
        "id": f.id,
        "class": f.cls,
        "verdict": fo.verdict,
        "caught": fo.caught,
        "scored": f.scored,
        "expect": f.expect,
        "tensors": [_label(run, t) for t in f.tensors] if f.tensors else None,
        "verdicts": [o.verdict for o in fo.outcomes],
        "findings": [_findings(run, o) for o in fo.outcomes],
        "detail": f.detail,
        "errors": [o.message for o in fo.outcomes if o.message],
    }


def _noise(results: list[RunResult]) -> dict:
    per_run, levels = {}, Counter()
    caught_levels: Counter = Counter()
    for r in results:
        sweep = sorted(
            (fo for fo in r.faults if fo.fault.cls == "noise"),
            key=lambda fo: fo.fault.detail["multiple_of_typical_change"],
        )
        if not sweep:
            continue
        caught = [fo.fault.detail["multiple_of_typical_change"] for fo in sweep if fo.caught]
        per_run[r.run.name] = {
            "smallest_caught_multiple": round(min(caught), 2) if caught else None,
            "levels": [
                [
                    fo.fault.id.split("/")[-1],
                    round(fo.fault.detail["multiple_of_typical_change"], 2),
                    round(fo.fault.detail["relative_to_tensor"], 4),
                    fo.verdict,
                    fo.caught,
                ]
                for fo in sweep
            ],
        }
        for fo in sweep:
            label = fo.fault.id.split("-", 1)[-1]
            levels[label] += 1
            caught_levels[label] += fo.caught
    smallest = [v["smallest_caught_multiple"] for v in per_run.values() if v["smallest_caught_multiple"] is not None]
    return {
        "per_run": per_run,
        "caught_per_level": {k: [caught_levels[k], levels[k]] for k in levels},
        "median_smallest_caught_multiple": round(statistics.median(smallest), 2) if smallest else None,
        "runs_with_no_level_caught": [k for k, v in per_run.items() if v["smallest_caught_multiple"] is None],
    }


# -- text -----------------------------------------------------------------------------------------


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


def markdown(summary: dict) -> str:
    c, h, f = summary["config"], summary["healthy"], summary["faults"]
    wn = f["without_noise"]
    model = ", with model-aware checks" if c["model"] else ""
    history = "" if c.get("history", True) else ", without the run's history"
    lines = [f"### baseline = {c['baseline']}, golden = {c['golden']}{model}{history}", ""]
    lines += [
        "| row | n | pass | warn | fail | error | caught (right check + tensor) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for cls, row in summary["matrix"].items():
        caught = "-" if row["caught"] is None else f"{row['caught']}/{row['n']}"
        name = "noise (>= 3x typical change)" if cls == "noise" else cls
        lines.append(f"| {name} | {row['n']} | " + " | ".join(str(row[v]) for v in VERDICTS) + f" | {caught} |")
    lines += [
        "",
        f"- healthy: **{h['verdicts']['fail']} of {h['checkpoints']} failed ({_pct(h['false_fail_rate'])})**, "
        f"{h['verdicts']['warn']} warned ({_pct(h['false_warn_rate'])}); first checkpoints: "
        + ", ".join(f"{k} {v}" for k, v in h["first_checkpoints"].items() if v != "pass")
        + (" (all others pass)" if any(v != "pass" for v in h["first_checkpoints"].values()) else "all pass"),
        f"- faults: **{f['caught']} of {f['scored']} caught ({_pct(f['detection_rate'])})** with the right check and "
        f"tensor; {f['failed']} failed at all ({_pct(f['fail_rate'])}); without the noise sweep "
        f"{wn['caught']} of {wn['scored']} ({_pct(wn['detection_rate'])})",
        f"- noise: smallest caught multiple of the tensor's typical healthy change, median over runs: "
        f"{f['noise']['median_smallest_caught_multiple']}; caught per level: "
        + ", ".join(f"{k} {v[0]}/{v[1]}" for k, v in f["noise"]["caught_per_level"].items()),
    ]
    if h["fail_causes"]:
        lines.append(
            "- healthy checkpoints failed by (check, tensor kind): "
            + ", ".join(f"{c} on {r}: {k}" for c, r, k in h["fail_causes"][:TOP])
        )
    if h["warn_causes"]:
        lines.append(
            "- healthy checkpoints warned by: " + ", ".join(f"{c} on {r}: {k}" for c, r, k in h["warn_causes"][:TOP])
        )
    if f["missed"]:
        lines.append(
            "- missed: "
            + "; ".join(
                f"{m['id']} ({'/'.join(m['verdicts'])}"
                + (
                    ": " + ", ".join(sorted({x["check"] for o in m["findings"] for x in o if x["severity"] == "fail"}))
                    if any(x["severity"] == "fail" for o in m["findings"] for x in o)
                    else ""
                )
                + ")"
                for m in f["missed"]
            )
        )
    t = summary["timings"]
    lines.append(
        f"- {t['verifications']} verifications in {t['seconds']} s (median {t['median_ms']} ms, max {t['max_ms']} ms)"
    )
    return "\n".join(lines) + "\n"


def overview(summaries: list[dict]) -> str:
    """One line per configuration: the figures issue 11 sets targets for."""
    lines = [
        "| baseline | golden | model checks | history | healthy failed | healthy warned | first ckpts failed "
        "| faults caught | without noise | noise 3x caught | smallest noise caught (median) | verify s |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for s in summaries:
        c, h, f = s["config"], s["healthy"], s["faults"]
        firsts = list(h["first_checkpoints"].values())
        x3 = f["noise"]["caught_per_level"].get("x3", [0, 0])
        smallest = f["noise"]["median_smallest_caught_multiple"]
        lines.append(
            f"| {c['baseline']} | {c['golden']} | {'yes' if c['model'] else 'no'} "
            f"| {'yes' if c.get('history', True) else 'no'} "
            f"| {h['verdicts']['fail']}/{h['checkpoints']} ({_pct(h['false_fail_rate'])}) "
            f"| {h['verdicts']['warn']}/{h['checkpoints']} ({_pct(h['false_warn_rate'])}) "
            f"| {sum(v == 'fail' for v in firsts)}/{len(firsts)} "
            f"| {f['caught']}/{f['scored']} ({_pct(f['detection_rate'])}) "
            f"| {f['without_noise']['caught']}/{f['without_noise']['scored']} "
            f"| {x3[0]}/{x3[1]} | {'-' if smallest is None else f'{smallest:g}x'} | {s['timings']['seconds']:.0f} |"
        )
    return "\n".join(lines) + "\n"
