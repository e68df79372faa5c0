"""Per-tensor overhead: verify 1 GB held in 10,000 tensors against 1 GB held in 10 (the anchor).

    .venv/bin/python bench/many_tensors.py [--out DIR] [--repeat N] [--force]
                                           [--profile FILE [--profile-case CASE]]
                                           [--compare CHECKOUT]

Writes (once; `--force` rewrites) with TensorFlow, under OUT (default bench/out/many/):

    many/{previous,candidate}/ckpt-N   10,000 float32 variables, sizes log-uniform from 256 B to
                                       ~1 MB, scaled to 1.0 GB in all
    few/{previous,candidate}/ckpt-N    the same 1.0 GB in 10 variables (the anchor: large tensors)

`candidate` is `previous` plus noise of 1e-3 of each variable's std. Then, alternating the two
so that the machine's load (it is shared) hits both alike, it times, `--repeat` times each:
`verify_paths(candidate)` (one checkpoint), `verify_paths(candidate, previous)` (two: drift),
writing a fingerprint of each candidate, and what the daemon's worker runs for each checkpoint
(against the previous checkpoint, writing its fingerprint and the run's history: "daemon").
It prints the medians in GB/s of the candidate's bytes and the fingerprint's size as a share of
the checkpoint. Files are read from the page cache after the first repeat (the figure is the
verifier's cost, not the disk's). `--compare CHECKOUT` also measures another checkout of
ckptwatch (e.g. the main branch's worktree) on the same files, in a child process, alternating
with this one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# the code measured: this checkout, or (for --compare's child) the one CKPTWATCH_BENCH_CODE names
sys.path.insert(0, os.environ.get("CKPTWATCH_BENCH_CODE") or os.path.dirname(HERE))
DEFAULT_OUT = os.path.join(HERE, "out", "many")
TOTAL_BYTES = 1_000_000_000
SHAPES = {"many": 10_000, "few": 10}
SEED = 77


def _sizes(count: int, rng) -> list[int]:
    import numpy as np

    if count <= 16:
        return [TOTAL_BYTES // 4 // count] * count
    raw = np.exp(rng.uniform(np.log(64), np.log(256 * 1024), size=count))
    scaled = np.maximum(1, (raw * (TOTAL_BYTES / 4 / raw.sum())).astype(np.int64))
    return [int(x) for x in scaled]


def prefixes(out: str) -> dict[str, dict[str, str]]:
    return {
        kind: {
            role: os.path.join(out, kind, role, f"ckpt-{step}") for role, step in (("previous", 1), ("candidate", 2))
        }
        for kind in SHAPES
    }


def generate(out: str, force: bool = False) -> None:
    import numpy as np

    done = os.path.join(out, "manifest.json")
    if os.path.exists(done) and not force:
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    rng = np.random.default_rng(SEED)
    for kind, count in SHAPES.items():
        t0 = time.perf_counter()
        sizes = _sizes(count, rng)
        variables = [tf.Variable(rng.standard_normal(n, dtype=np.float32), name=f"v{i}") for i, n in enumerate(sizes)]
        ckpt = tf.train.Checkpoint(weights=variables, step=tf.Variable(1, dtype=tf.int64))
        paths = prefixes(out)[kind]
        ckpt.write(paths["previous"])
        for v in variables:
            v.assign_add(rng.standard_normal(v.shape[0], dtype=np.float32) * np.float32(1e-3))
        ckpt.step.assign(2)
        ckpt.write(paths["candidate"])
        print(f"wrote {kind}: {count} tensors in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        del variables, ckpt
    with open(done, "w") as f:
        json.dump({"total_bytes": TOTAL_BYTES, "tensors": SHAPES, "seed": SEED}, f)


def bundle_bytes(prefix: str) -> int:
    d = os.path.dirname(prefix)
    base = os.path.basename(prefix)
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith(base + "."))


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


LABELS = ("verify", "verify_previous", "fingerprint", "daemon")


def _daemon_request(cand: str, prev: str, tmp: str, kind: str):
    """What the daemon's worker runs for each checkpoint: the candidate against the previous
    checkpoint, with the run's history, writing the candidate's fingerprint and the history
    extended by it (ckptwatch.daemon.jobs)."""
    from ckptwatch.verify.request import VerifyRequest

    return VerifyRequest(
        cand,
        prev,
        previous_fingerprint=None,
        history=None,
        history_required=False,
        history_out=os.path.join(tmp, f"{kind}.history.json"),
        fingerprint_out=os.path.join(tmp, f"{kind}.daemon.fp"),
        discovered=True,
    )


def measure(out: str, repeat: int) -> dict:
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.verify.verification import verify_checkpoint

    paths = prefixes(out)
    times: dict[str, list[float]] = {}
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p in paths.values():  # untimed warm-up: --compare's child is a fresh process every round
            verify_checkpoint(VerifyRequest(p["candidate"], p["previous"], fingerprint_out=os.path.join(tmp, "w.fp")))
        for _ in range(repeat):
            for kind, p in paths.items():
                cand, prev = p["candidate"], p["previous"]
                one = _time(lambda c=cand: verify_checkpoint(VerifyRequest(c)))
                two = _time(lambda c=cand, q=prev: verify_checkpoint(VerifyRequest(c, q)))
                fp = os.path.join(tmp, f"{kind}.fp")
                three = _time(lambda c=cand, f=fp: verify_checkpoint(VerifyRequest(c, fingerprint_out=f)))
                sizes[kind] = os.path.getsize(fp)
                daemon = _daemon_request(cand, prev, tmp, kind)
                four = _time(lambda r=daemon: verify_checkpoint(r))
                for label, t in zip(LABELS, (one, two, three, four), strict=True):
                    times.setdefault(f"{kind}.{label}", []).append(t)
    result = {}
    for kind, p in paths.items():
        nbytes = bundle_bytes(p["candidate"])
        row = {"bytes": nbytes, "fingerprint_bytes": sizes[kind], "fingerprint_share": sizes[kind] / nbytes}
        for label in LABELS:
            ts = times[f"{kind}.{label}"]
            row[f"{label}_seconds"] = statistics.median(ts)
            row[f"{label}_gb_s"] = nbytes / statistics.median(ts) / 1e9
        result[kind] = row
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--force", action="store_true")
    ap.add_argument("--generate-only", action="store_true")
    ap.add_argument("--profile", metavar="FILE", help="cProfile one verify of the 10,000-tensor candidate into FILE")
    ap.add_argument("--profile-case", choices=LABELS, default="verify", help="what --profile runs (default: verify)")
    ap.add_argument("--compare", metavar="CHECKOUT", help="also measure the ckptwatch in this directory")
    ap.add_argument("--json-only", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    generate(args.out, args.force)
    if args.generate_only:
        return 0
    if args.profile:
        import cProfile

        from ckptwatch.verify.request import VerifyRequest
        from ckptwatch.verify.verification import verify_checkpoint

        many = prefixes(args.out)["many"]
        cand, prev = many["candidate"], many["previous"]
        tmp = tempfile.mkdtemp()
        request = {
            "verify": VerifyRequest(cand),
            "verify_previous": VerifyRequest(cand, prev),
            "fingerprint": VerifyRequest(cand, fingerprint_out=os.path.join(tmp, "many.fp")),
            "daemon": _daemon_request(cand, prev, tmp, "many"),
        }[args.profile_case]
        verify_checkpoint(request)  # warm the page cache and numba
        cProfile.runctx("verify_checkpoint(request)", globals(), locals(), args.profile)
        return 0
    if args.json_only:
        print(json.dumps(measure(args.out, args.repeat)))
        return 0
    results: dict[str, list[dict]] = {}
    codes = {"this": None, **({"compare": os.path.abspath(args.compare)} if args.compare else {})}
    for _ in range(args.repeat):  # one repeat of each code in turn: load on the machine hits both alike
        for label, code in codes.items():
            if code is None:
                results.setdefault(label, []).append(measure(args.out, 1))
            else:
                env = {**os.environ, "CKPTWATCH_BENCH_CODE": code}
                child = [sys.executable, __file__, "--out", args.out, "--repeat", "1", "--json-only"]
                done = subprocess.run(child, env=env, capture_output=True, text=True, check=True)
                results.setdefault(label, []).append(json.loads(done.stdout.strip().splitlines()[-1]))
    summary = {label: _medians(runs) for label, runs in results.items()}
    print(json.dumps(summary, indent=2))
    for label, result in summary.items():
        where = "this checkout" if label == "this" else codes[label]
        print(f"{where} (medians of {args.repeat}):")
        for kind, row in result.items():
            print(
                f"  {kind:5} {SHAPES[kind]:>6} tensors {row['bytes'] / 1e9:.2f} GB: "
                f"verify {row['verify_gb_s']:.2f} GB/s, with --previous {row['verify_previous_gb_s']:.2f} GB/s, "
                f"fingerprint {row['fingerprint_gb_s']:.2f} GB/s, as the daemon {row['daemon_gb_s']:.2f} GB/s, "
                f"{row['fingerprint_bytes'] / 1e6:.2f} MB ({100 * row['fingerprint_share']:.2f}%)"
            )
    return 0


def _medians(runs: list[dict]) -> dict:
    out: dict = {}
    for kind in runs[0]:
        out[kind] = {key: statistics.median(r[kind][key] for r in runs) for key in runs[0][kind]}
    return out


if __name__ == "__main__":
    sys.exit(main())
