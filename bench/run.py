"""Benchmark: ckptwatch three-way verify vs TF's CheckpointReader vs the seed method.

    .venv/bin/python bench/run.py [--repeat N] [--out DIR] [--force-generate] [--profile]

Generates the checkpoints if needed (bench/generate.py), reads every file once
so the page cache is warm for all methods alike, then runs each measurement in
a fresh subprocess (round-robin, N times). A child imports what it needs and
does the same work once on the tiny triple (start-up: imports, numba kernel
loading, TF eager start-up, Keras op tracing), then times the work on the big
triple and reports the seconds and its peak RSS (VmHWM from /proc/self/status,
which is per process image; ru_maxrss is recorded too).

The machine may be shared: before each run the parent waits (up to
--quiet-wait s) for the CPUs to go idle, each child measures how many cores
other processes took during its timed section, and a run disturbed by more
than 0.3 cores is re-run (--retries), keeping the least disturbed one.

Throughput is always the bytes of the three TF checkpoints (index + data files)
divided by the seconds, whatever each method actually reads.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from generate import DEFAULT_OUT, ROLES, SIZES, bundle_bytes, bundle_files, paths  # noqa: E402

MARK = "BENCH_RESULT "
TARGET_READER, TARGET_SEED, TARGET_EXTRA_MB = 0.6, 5.0, 200.0
MB = 1e6
DISTURBED = 0.3  # cores busy with other processes during a timed section above which a run is re-run

# name -> (label, child method, size, threads)
MEASUREMENTS = {
    "verify": ("ckptwatch verify, 3-way (default options, threads={t})", "verify", "big", None),
    "verify_t1": ("ckptwatch verify, 3-way (threads=1)", "verify", "big", 1),
    "reader": ("TF CheckpointReader (load_checkpoint + get_tensor, all 3)", "reader", "big", None),
    "seed": ("seed method (2 Keras models, load_weights, tf ops)", "seed", "big", None),
    "verify_tiny": ("ckptwatch verify, 3-way, tiny triple (memory baseline)", "verify", "tiny", None),
}


# -- children ----------------------------------------------------------------------------


def _peak_rss() -> dict:
    hwm = None
    with open("/proc/self/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1]) * 1024
    return {"vmhwm_bytes": hwm, "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def cpu_busy() -> tuple[float, float]:
    """(busy CPU seconds of the whole machine, steal seconds) from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    tick = os.sysconf("SC_CLK_TCK")
    return (user + nice + system + irq + softirq) / tick, steal / tick


class Timed:
    """Times a section; also how many cores other processes (and the hypervisor) took meanwhile."""

    def __enter__(self) -> Timed:
        self.busy0, self.steal0 = cpu_busy()
        self.cpu0 = time.process_time()
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.seconds = time.perf_counter() - self.t0
        own = time.process_time() - self.cpu0
        busy, steal = cpu_busy()
        wall = max(self.seconds, 1e-9)
        self.other_cores = max(0.0, (busy - self.busy0 - own) / wall) + (steal - self.steal0) / wall
        self.own_cores = own / wall

    def result(self) -> dict:
        return {"seconds": self.seconds, "other_cores": self.other_cores, "own_cores": self.own_cores}


def _child_verify(out: str, size: str, threads: int | None) -> dict:
    from ckptwatch.verify.engine import Options, verify_paths

    def once(sz: str) -> object:
        p = paths(out, sz)
        options = Options(threads=threads) if threads else Options()
        report, _ = verify_paths(
            p["candidate"]["bundle"], p["previous"]["bundle"], p["golden"]["bundle"], options=options
        )
        return report

    once("tiny")  # start-up: numba kernels load from their cache (or compile, the first time ever)
    with Timed() as t:
        report = once(size)
    opts = Options(threads=threads) if threads else Options()
    return {
        **t.result(),
        "verdict": report.verdict,
        "ok": report.verdict in ("pass", "warn"),
        "threads": opts.threads,
        "tensors": len(report.tensors),
        "engine_timings": report.timings,
    }


def _child_reader(out: str, size: str, threads: int | None) -> dict:
    import tensorflow as tf

    def once(sz: str) -> tuple[int, int]:
        n = nbytes = 0
        for role in ROLES:
            reader = tf.train.load_checkpoint(paths(out, sz)[role]["bundle"])
            for name in reader.get_variable_to_shape_map():
                value = reader.get_tensor(name)
                n += 1
                nbytes += getattr(value, "nbytes", 0) or len(value)
        return n, nbytes

    once("tiny")  # start-up: TF's C++ runtime and the reader's code paths
    with Timed() as t:
        n, nbytes = once(size)
    return {**t.result(), "ok": n > 0, "tensors": n, "tensor_bytes": nbytes}


def _child_seed(out: str, size: str, threads: int | None) -> dict:
    import tensorflow as tf
    from generate import build_model

    def compare(a, b) -> list[dict]:
        rows = []
        for la, lb in zip(a.layers, b.layers):
            for wa, wb in zip(la.weights, lb.weights):
                x, y = tf.convert_to_tensor(wa), tf.convert_to_tensor(wb)
                d = x - y
                ny = tf.norm(y)
                rows.append(
                    {
                        "name": wa.path,
                        "max_abs": float(tf.reduce_max(tf.abs(d))),
                        "rel_l2": float(tf.norm(d) / ny),
                        "norm_ratio": float(tf.norm(x) / ny),
                        "mean": (float(tf.reduce_mean(x)), float(tf.reduce_mean(y))),
                        "std": (float(tf.math.reduce_std(x)), float(tf.math.reduce_std(y))),
                    }
                )
        return rows

    def once(sz: str) -> dict:
        p, cfg = paths(out, sz), SIZES[sz]
        t = [time.perf_counter()]
        cand, ref = build_model(cfg["layers"], cfg["width"]), build_model(cfg["layers"], cfg["width"])
        t.append(time.perf_counter())
        cand.load_weights(p["candidate"]["h5"])
        ref.load_weights(p["previous"]["h5"])
        t.append(time.perf_counter())
        vs_previous = compare(cand, ref)
        t.append(time.perf_counter())
        ref.load_weights(p["golden"]["h5"])
        t.append(time.perf_counter())
        vs_golden = compare(cand, ref)
        t.append(time.perf_counter())
        worst = max(r["rel_l2"] for r in vs_previous + vs_golden)
        return {
            "build": t[1] - t[0],
            "load": (t[2] - t[1]) + (t[4] - t[3]),
            "compare": (t[3] - t[2]) + (t[5] - t[4]),
            "weights": len(vs_previous),
            "worst_rel_l2": worst,
        }

    once("tiny")  # start-up: TF eager runtime, Keras layer code, the ops' kernels
    with Timed() as t:
        r = once(size)
    return {**t.result(), "ok": r["worst_rel_l2"] < 1.0, **r}


def _child_profile(out: str, size: str, threads: int | None) -> dict:
    import cProfile
    import io
    import pstats

    from ckptwatch.verify.engine import Options, verify_paths

    p = paths(out, "tiny")
    verify_paths(p["candidate"]["bundle"], p["previous"]["bundle"], p["golden"]["bundle"])
    p = paths(out, size)
    prof = cProfile.Profile()
    t0 = time.perf_counter()
    prof.enable()
    verify_paths(p["candidate"]["bundle"], p["previous"]["bundle"], p["golden"]["bundle"], options=Options(threads=1))
    prof.disable()
    seconds = time.perf_counter() - t0
    s = io.StringIO()
    pstats.Stats(prof, stream=s).sort_stats("tottime").print_stats(20)
    return {"seconds": seconds, "ok": True, "profile": s.getvalue()}


CHILDREN = {"verify": _child_verify, "reader": _child_reader, "seed": _child_seed, "profile": _child_profile}


def child_main(method: str, out: str, size: str, threads: int | None) -> int:
    result = CHILDREN[method](out, size, threads)
    result.update(_peak_rss())
    print(MARK + json.dumps(result), flush=True)
    return 0


# -- the parent ----------------------------------------------------------------------------


def run_child(method: str, out: str, size: str, threads: int | None) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", method, "--out", out, "--size", size]
    if threads:
        cmd += ["--threads", str(threads)]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"), PYTHONUNBUFFERED="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, check=False)
    for line in proc.stdout.splitlines():
        if line.startswith(MARK):
            return json.loads(line[len(MARK) :])
    sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
    raise SystemExit(f"bench: the {method} measurement failed (exit {proc.returncode})")


def all_files(out: str) -> list[str]:
    files = []
    for size in SIZES:
        for p in paths(out, size).values():
            files += [*bundle_files(p["bundle"]), p["h5"]]
    return files


def warm_page_cache(files: list[str]) -> tuple[int, str]:
    """Read every file once; return the bytes read and fincore's view of the cache (if available)."""
    total = 0
    buf = bytearray(8 << 20)
    for path in files:
        with open(path, "rb", buffering=0) as f:
            while n := f.readinto(buf):
                total += n
    cached = "fincore not available"
    try:
        res = subprocess.run(
            ["fincore", "-b", "-n", "-o", "RES,SIZE", *files], capture_output=True, text=True, check=True
        )
        res_b = size_b = 0
        for line in res.stdout.split("\n"):
            if line.strip():
                r, s = line.split()[:2]
                res_b, size_b = res_b + int(r), size_b + int(s)
        cached = f"{100 * res_b / max(size_b, 1):.1f}% of {size_b / 1e9:.2f} GB resident in the page cache (fincore)"
    except (OSError, subprocess.CalledProcessError, ValueError):
        pass
    return total, cached


def machine() -> dict:
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = 0
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    mem = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "ram_gb": round(mem / 2**30, 1),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }


def versions() -> str:
    code = (
        "import importlib.metadata as m\n"
        "print(', '.join(f'{p} {m.version(p)}' for p in ('ckptwatch','tensorflow','keras','numpy','numba','h5py')))"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return res.stdout.strip()


def _fmt_s(x: float) -> str:
    return f"{x:.3f}" if x < 10 else f"{x:.2f}"


def render(results: dict[str, list[dict]], nbytes: int, meta: dict) -> tuple[str, dict]:
    def med(name: str, key: str = "seconds") -> float:
        return statistics.median(r[key] for r in results[name])

    def peak(name: str) -> float:
        return max(r["vmhwm_bytes"] for r in results[name]) / MB

    reader_s, seed_s = med("reader"), med("seed")
    threads = results["verify"][0]["threads"]
    lines = [
        f"Three checkpoints of {meta['params']:,} float32 parameters each: {nbytes / 1e9:.3f} GB in all "
        f"({nbytes:,} bytes). Seconds: median of {meta['repeat']} runs, each in a fresh process, start-up excluded; "
        "page cache warm.",
        "",
        "| method | seconds | GB/s | vs reader | vs seed | peak RSS MB | other load (cores) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, (label, _, size, _t) in MEASUREMENTS.items():
        s = med(name)
        label = label.format(t=threads)
        other = f"{med(name, 'other_cores'):.2f}"
        if size == "tiny":
            lines.append(f"| {label} | {_fmt_s(s)} | - | - | - | {peak(name):.0f} | {other} |")
            continue
        ratios = f"{reader_s / s:.2f}x | {seed_s / s:.1f}x"
        lines.append(f"| {label} | {_fmt_s(s)} | {nbytes / s / 1e9:.3f} | {ratios} | {peak(name):.0f} | {other} |")
    verify_s = med("verify")
    ratio_reader, ratio_seed = reader_s / verify_s, seed_s / verify_s
    extra = peak("verify") - peak("verify_tiny")
    extra_t1 = peak("verify_t1") - peak("verify_tiny")
    checks = {
        "reader": (
            ratio_reader >= TARGET_READER,
            f"verify throughput vs reader >= {TARGET_READER}x: {ratio_reader:.2f}x",
        ),
        "seed": (
            ratio_seed >= TARGET_SEED,
            f"verify throughput vs seed method >= {TARGET_SEED:g}x: {ratio_seed:.1f}x",
        ),
        "memory": (
            extra <= TARGET_EXTRA_MB,
            f"extra peak RSS over the tiny triple <= {TARGET_EXTRA_MB:g} MB: {extra:.0f} MB "
            f"(threads={threads}; threads=1: {extra_t1:.0f} MB)",
        ),
    }
    rounds = range(min(len(results["verify"]), len(results["reader"]), len(results["seed"])))
    paired_reader = statistics.median(results["reader"][i]["seconds"] / results["verify"][i]["seconds"] for i in rounds)
    paired_seed = statistics.median(results["seed"][i]["seconds"] / results["verify"][i]["seconds"] for i in rounds)
    lines += ["", "Targets:", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {text}" for ok, text in checks.values()]
    spread = "; ".join(
        f"{name} " + ", ".join(_fmt_s(r["seconds"]) for r in results[name])
        for name, m in MEASUREMENTS.items()
        if m[2] == "big"
    )
    m = meta["machine"]
    lines += [
        "",
        f"Seed method split (median s): build two models {med('seed', 'build'):.2f}, "
        f"load_weights x3 {med('seed', 'load'):.2f}, compare x2 {med('seed', 'compare'):.2f}.",
        f"All runs (s): {spread}.",
        f"Ratios paired by round (median of per-round ratios): vs reader {paired_reader:.2f}x, "
        f"vs seed {paired_seed:.1f}x.",
        f"Cores used by the measured process itself (median): verify {med('verify', 'own_cores'):.2f}, "
        f"verify threads=1 {med('verify_t1', 'own_cores'):.2f}, reader {med('reader', 'own_cores'):.2f}, "
        f"seed {med('seed', 'own_cores'):.2f}.",
        "",
        f"Machine: {m['nproc']} cores, {m['cpu']}, {m['ram_gb']} GiB RAM, Linux {m['kernel']}, "
        f"Python {m['python']}; {meta['versions']}.",
        f"Page cache: {meta['cache']}.",
        "Peak RSS: VmHWM of each measurement's own process (imports included), max over its runs; MB = 10^6 bytes.",
        "Other load: cores busy with other processes (or stolen by the hypervisor) during the timed section; "
        f"a run above {DISTURBED} cores is re-run (up to {meta['retries']} times) and the least disturbed one kept.",
    ]
    summary = {
        "ratio_vs_reader": ratio_reader,
        "ratio_vs_seed": ratio_seed,
        "extra_peak_mb": extra,
        "extra_peak_mb_threads1": extra_t1,
        "paired_ratio_vs_reader": paired_reader,
        "paired_ratio_vs_seed": paired_seed,
        "targets": {k: ok for k, (ok, _) in checks.items()},
    }
    return "\n".join(lines), summary


def wait_quiet(max_wait: float, threshold: float = 0.25) -> float:
    """Wait (up to max_wait s) until other processes use less than `threshold` cores; return the last reading."""
    deadline = time.monotonic() + max_wait
    while True:
        busy0, steal0 = cpu_busy()
        time.sleep(0.5)
        busy1, steal1 = cpu_busy()
        load = (busy1 - busy0 + steal1 - steal0) / 0.5
        if load < threshold or time.monotonic() >= deadline:
            return load
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=DEFAULT_OUT, help="checkpoints and results [bench/out]")
    ap.add_argument("--repeat", type=int, default=5, help="fresh-process runs per measurement [5]")
    ap.add_argument("--quiet-wait", type=float, default=20.0, help="max seconds to wait for an idle CPU per run [20]")
    ap.add_argument("--retries", type=int, default=2, help="re-runs of a run disturbed by other load [2]")
    ap.add_argument("--force-generate", action="store_true", help="regenerate the checkpoints first")
    ap.add_argument("--profile", action="store_true", help="only profile one verify (threads=1) with cProfile")
    ap.add_argument("--child", choices=sorted(CHILDREN), help=argparse.SUPPRESS)
    ap.add_argument("--size", default="big", choices=sorted(SIZES), help=argparse.SUPPRESS)
    ap.add_argument("--threads", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    out = os.path.abspath(args.out)
    if args.child:
        return child_main(args.child, out, args.size, args.threads)

    t_start = time.perf_counter()
    gen = [sys.executable, os.path.join(HERE, "generate.py"), "--out", out]
    subprocess.run(gen + (["--force"] if args.force_generate else []), check=True)
    with open(os.path.join(out, "manifest.json"), encoding="utf-8") as f:
        manifest = json.load(f)
    big = paths(out, "big")
    nbytes = sum(bundle_bytes(big[role]["bundle"]) for role in ROLES)

    read, cache = warm_page_cache(all_files(out))
    print(f"page cache warmed: read {read / 1e9:.2f} GB; {cache}", flush=True)

    if args.profile:
        wait_quiet(args.quiet_wait)
        r = run_child("profile", out, "big", 1)
        print(f"verify, threads=1, under cProfile: {r['seconds']:.2f} s\n{r['profile']}")
        return 0

    results: dict[str, list[dict]] = {name: [] for name in MEASUREMENTS}
    for i in range(args.repeat):
        for name, (_label, method, size, threads) in MEASUREMENTS.items():
            tries = []
            for _ in range(1 + max(0, args.retries)):  # a run disturbed by other processes is re-run
                before = wait_quiet(args.quiet_wait)
                r = run_child(method, out, size, threads)
                if not r["ok"]:
                    raise SystemExit(f"bench: {name} did not check out: {r}")
                r["load_before"] = before
                tries.append(r)
                if size == "tiny" or r["other_cores"] <= DISTURBED:  # the tiny run only gives a memory baseline
                    break
                print(f"[run {i + 1}/{args.repeat}] {name}: disturbed ({r['other_cores']:.2f} cores busy elsewhere)")
            r = min(tries, key=lambda t: t["other_cores"])
            r["tries"] = len(tries)
            results[name].append(r)
            verdict = f", verdict {r['verdict']}" if "verdict" in r else ""
            print(
                f"[run {i + 1}/{args.repeat}] {name}: {r['seconds']:.3f} s, "
                f"peak RSS {r['vmhwm_bytes'] / MB:.0f} MB, other load {r['other_cores']:.2f} cores{verdict}",
                flush=True,
            )

    meta = {
        "params": manifest["big"]["params"],
        "repeat": args.repeat,
        "retries": args.retries,
        "machine": machine(),
        "versions": versions(),
        "cache": cache,
    }
    table, summary = render(results, nbytes, meta)
    print("\n" + table)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump({"bytes": nbytes, "meta": meta, "summary": summary, "runs": results}, f, indent=2)
    print(f"\nwrote {os.path.join(out, 'results.md')} ({time.perf_counter() - t_start:.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
