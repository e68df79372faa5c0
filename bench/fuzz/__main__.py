"""python -m bench.fuzz [--seconds N] [--cases N] [--seed S] [--jobs J] [--timeout T] [--targets a,b]

A bounded fuzz campaign over every reader and parser (bench/fuzz/targets.py). Seeds are
written with TensorFlow and Keras into bench/out/fuzz/seeds (cached); inputs that cause an
internal error, a hang or too much memory are saved under bench/out/fuzz/crashes/ with an
OUTCOME.txt. Exit status 1 when any case had an internal error, a hang or a memory blow-up."""

from __future__ import annotations

import argparse
import os
import sys
import time

from bench.fuzz import seeds as seeding
from bench.fuzz.harness import Campaign, save_summary, table
from bench.fuzz.targets import BY_NAME

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(os.path.dirname(HERE), "out", "fuzz")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.fuzz", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=float(os.environ.get("FUZZ_SECONDS", 600)))
    p.add_argument("--cases", type=int, default=None, help="stop after this many cases (default: only the time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=2, help="light worker processes (saved-model gets its own)")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per case before it counts as a hang")
    p.add_argument("--targets", default="", help=f"comma-separated subset of: {', '.join(BY_NAME)}")
    p.add_argument("--out", default=OUT)
    p.add_argument("--seeds", default=None, help="seed directory (default OUT/seeds, generated once)")
    args = p.parse_args(argv)
    seeds = seeding.ensure(args.seeds or os.path.join(args.out, "seeds"))
    targets = [t for t in args.targets.split(",") if t] or None
    campaign = Campaign(seeds, args.out, seed=args.seed, jobs=args.jobs, timeout=args.timeout, targets=targets)
    t0 = time.monotonic()
    summary = campaign.run(args.seconds, args.cases)
    elapsed = time.monotonic() - t0
    print(table(summary))
    for name, f in summary.items():
        for signature, count in f["internal"].items():
            print(f"{name}: {count} x {signature}")
        print(f"{name}: slowest {f['slowest_s']:.2f} s: {f['slowest']}")
    path = save_summary(
        summary, args.out, {"seconds": round(elapsed, 1), "seed": args.seed, "jobs": args.jobs, "timeout": args.timeout}
    )
    total = sum(f["cases"] for f in summary.values())
    print(f"{total} cases in {elapsed:.0f} s; summary: {path}; crashes: {campaign.crashes}")
    bad = sum(f["internal_errors"] + f["hangs"] + f["memory"] for f in summary.values())
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
