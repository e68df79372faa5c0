"""`python -m bench.quality` (`make bench-quality`): train (cached), inject faults (cached), verify, score.

    python -m bench.quality [--out DIR] [--runs a,b] [--config BASELINE:GOLDEN ...] [--policy FILE.toml]
                            [--retrain] [--reinject]

Prints the tables and writes <out>/results.json and <out>/results.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

from bench.quality import faults as F
from bench.quality import runs as R
from bench.quality.evaluate import BASELINES, GOLDENS, Config, Verifier
from bench.quality.report import markdown, overview, summarize
from bench.quality.worker import Worker
from ckptwatch.policy import Policy

DEFAULT_OUT = R.ROOT / "bench" / "out" / "quality"
# passed: the daemon as designed (a failed checkpoint never becomes "previous"); integrity: the
# daemon's code today (every checkpoint that passed integrity does). ":model" adds the model-aware checks.
DEFAULT_CONFIGS = (
    "passed:none",
    "passed:first",
    "passed:final",
    "passed:final:model",
    "integrity:none",
    "integrity:final:model",
)


def load_policy(path: str | None) -> Policy:
    """The watch's policy: a TOML file holding a watch's policy keys (top level or under [policy])."""
    if not path:
        return Policy()
    import tomllib

    with open(path, "rb") as f:
        doc = tomllib.load(f)
    return Policy.model_validate(doc.get("policy", doc))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.quality", description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=DEFAULT_OUT, help="cache and results directory")
    ap.add_argument("--runs", default=",".join(R.RUNS), help="comma-separated run names (default: all)")
    ap.add_argument(
        "--config",
        action="append",
        metavar="BASELINE:GOLDEN[:model]",
        help=f"baseline rule {BASELINES}, golden {GOLDENS}, ':model' for the model-aware checks; repeatable "
        f"(default: {' '.join(DEFAULT_CONFIGS)})",
    )
    ap.add_argument("--policy", help="TOML with the watch's policy keys (default: the built-in `training` policy)")
    ap.add_argument("--retrain", action="store_true", help="train the runs again even if cached")
    ap.add_argument("--reinject", action="store_true", help="inject the faults again even if cached")
    args = ap.parse_args(argv)
    names = [n for n in args.runs.split(",") if n]
    unknown = [n for n in names if n not in R.RUNS]
    if unknown:
        ap.error(f"unknown runs {unknown}; known: {', '.join(R.RUNS)}")
    try:
        configs = [Config.parse(c) for c in (args.config or DEFAULT_CONFIGS)]
    except ValueError as e:
        ap.error(str(e))
    policy = load_policy(args.policy)

    t0 = time.perf_counter()
    runs = R.ensure_runs(args.out, names, force=args.retrain)
    t_runs = time.perf_counter() - t0
    faults = F.ensure_faults(args.out, runs, force=args.retrain or args.reinject)
    t_faults = time.perf_counter() - t0 - t_runs

    summaries, text = [], []
    worker = Worker()
    try:
        for config in configs:
            verifier = Verifier(worker, policy, config)
            results = [verifier.run(runs[n], faults[n]) for n in names]
            summary = summarize(config, results)
            summaries.append(summary)
            text.append(markdown(summary))
            print(text[-1], flush=True)
    finally:
        worker.close()
    total = time.perf_counter() - t0
    doc = {
        "schema": "ckptwatch.bench-quality/v1",
        "versions": {"runs": R.VERSION, "faults": F.VERSION},
        "command": "python -m bench.quality " + " ".join(argv if argv is not None else sys.argv[1:]),
        "policy": policy.model_dump(),
        "runs": {
            n: {
                "description": r.description,
                "checkpoints": len(r.checkpoints),
                "steps": r.steps,
                "train_seconds": r.train_seconds,
                "loss": r.losses,
            }
            for n, r in runs.items()
        },
        "configs": summaries,
        "timings": {
            "train_or_load_s": round(t_runs, 1),
            "train_s_when_trained": round(sum(r.train_seconds for r in runs.values()), 1),
            "faults_or_load_s": round(t_faults, 1),
            "worker_start_s": round(worker.start_seconds, 2),
            "worker_restarts": worker.restarts,
            "total_s": round(total, 1),
        },
        "machine": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(doc, indent=1))
    n_ckpt = sum(len(r.checkpoints) for r in runs.values())
    n_faults = sum(len(v) for v in faults.values())
    header = (
        f"{len(runs)} runs, {n_ckpt} healthy checkpoints, {n_faults} fault instances; "
        f"total {total:.0f} s (training/loading {t_runs:.0f} s, faults {t_faults:.0f} s)\n"
    )
    table = overview(summaries)
    (args.out / "results.md").write_text(header + "\n" + table + "\n" + "\n".join(text))
    print(table + "\n" + header + f"results: {args.out / 'results.json'}, {args.out / 'results.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
