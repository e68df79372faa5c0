"""Daemon targets: commit -> verification start, main-process RSS, idle CPU, /metrics
latency while the worker is busy. `make bench-daemon` (or `python bench/daemon.py`).

A real daemon (subprocess) watches a temp dir. Checkpoints are written by TF into
a staging dir and committed into the watch dir the way TF commits (data shards
renamed first, the index last); the commit time is taken right after the index
rename and compared with the daemon's "verification started" log timestamp.
SavedModels are then exported in place (`tf.saved_model.save` into a new subdirectory
of the watch dir, TF Serving's layout): the commit time is saved_model.pb's mtime (TF
writes it last). Writes inside a subdirectory raise no event on the watch dir, so these
are found by re-checks: every 0.1 s while an export is under way (its variables/ exists),
else by the rescan every poll_interval (1 s here).
Then a ~400 MB checkpoint keeps the worker busy while /metrics is scraped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request

from daemon_process import DaemonProcess  # bench/ is on sys.path: these run as scripts

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIG = """
[daemon]
listen = "127.0.0.1:0"
state_dir = "{root}/state"
log_format = "json"
poll_interval = 1.0

[worker]
devices = ["cpu"]

[[watch]]
name = "bench"
path = "{root}/run"
"""


def proc_stat(pid: int) -> tuple[float, int]:
    """(CPU seconds used, RSS bytes) of a process."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu = (int(fields[11]) + int(fields[12])) / ticks
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))
    return cpu, rss


def peak_rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--exports", type=int, default=10)
    parser.add_argument("--big-mb", type=int, default=400)
    parser.add_argument("--idle-seconds", type=float, default=20.0)
    args = parser.parse_args()

    import numpy as np
    import tensorflow as tf

    root = tempfile.mkdtemp(prefix="ckptwatch-bench-daemon-")
    daemon = DaemonProcess(root, CONFIG.format(root=root))
    events, wait = daemon.events, daemon.wait_for

    def ts(e: dict) -> float:
        return dt.datetime.fromisoformat(e["timestamp"].replace("Z", "+00:00")).timestamp()

    try:
        listen = wait("daemon started")["listen"]
        wait("worker ready")
        rng = np.random.default_rng(0)
        model = tf.Module()
        model.w = tf.Variable(rng.standard_normal((256, 256), dtype=np.float32))
        model.b = tf.Variable(np.zeros(256, np.float32))
        ckpt = tf.train.Checkpoint(model=model)
        latencies = []
        for step in range(1, args.commits + 1):
            model.w.assign_add(rng.standard_normal((256, 256), dtype=np.float32) * 0.01)
            staging = f"{root}/staging"
            prefix = ckpt.write(f"{staging}/ckpt-{step}")
            names = sorted(os.listdir(staging), key=lambda n: n.endswith(".index"))
            for name in names:
                os.replace(f"{staging}/{name}", f"{root}/run/{name}")
            committed = time.time()
            started = wait("verification started", step=step)
            latencies.append(ts(started) - committed)
            wait("checkpoint verified", step=step)
            del prefix
        exported = []
        for version in range(1000 + 1, 1000 + args.exports + 1):
            model.w.assign_add(rng.standard_normal((256, 256), dtype=np.float32) * 0.01)
            tf.saved_model.save(model, f"{root}/run/{version}")
            committed = os.stat(f"{root}/run/{version}/saved_model.pb").st_mtime
            started = wait("verification started", step=version)
            exported.append(ts(started) - committed)
            wait("checkpoint verified", step=version)
        main_pid = daemon.pid
        worker_pid = next(
            int(p) for p in os.listdir("/proc") if p.isdigit() and _parent(int(p)) == main_pid and _is_worker(int(p))
        )
        cpu0, _ = proc_stat(main_pid)
        wcpu0, _ = proc_stat(worker_pid)
        time.sleep(args.idle_seconds)
        cpu1, rss = proc_stat(main_pid)
        wcpu1, wrss = proc_stat(worker_pid)
        idle_main = (cpu1 - cpu0) / args.idle_seconds
        idle_worker = (wcpu1 - wcpu0) / args.idle_seconds

        n = args.big_mb * (1 << 20) // 4 // 8
        big = tf.Module()
        big.v = [tf.Variable(rng.standard_normal(n, dtype=np.float32)) for _ in range(8)]
        prefix = tf.train.Checkpoint(big=big).write(f"{root}/staging/ckpt-{args.commits + 1}")
        for name in sorted(os.listdir(f"{root}/staging"), key=lambda n: n.endswith(".index")):
            os.replace(f"{root}/staging/{name}", f"{root}/run/{name}")
        wait("verification started", step=args.commits + 1)
        scrape = []
        while True:
            t0 = time.perf_counter()
            with urllib.request.urlopen(f"http://{listen}/metrics", timeout=5) as r:
                r.read()
            scrape.append(time.perf_counter() - t0)
            if not events.empty():
                e = events.get()
                if e.get("event") == "checkpoint verified" and e.get("step") == args.commits + 1:
                    break
            time.sleep(0.02)
        main_peak = peak_rss(main_pid)
        del prefix
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)

    lat_ms = sorted(x * 1000 for x in latencies)
    scrape_ms = sorted(x * 1000 for x in scrape)
    lat = f"median {statistics.median(lat_ms):.0f}, max {max(lat_ms):.0f} over {len(lat_ms)}"
    exp_ms = sorted(x * 1000 for x in exported)
    exp = f"median {statistics.median(exp_ms):.0f}, max {max(exp_ms):.0f} over {len(exp_ms)}"
    scr = f"median {statistics.median(scrape_ms):.1f}, max {max(scrape_ms):.1f} over {len(scrape_ms)}"
    rows = [
        ("commit -> verification start (ms)", lat, "<= 1000", max(lat_ms) <= 1000),
        ("SavedModel export in place -> verification start (ms)", exp, "<= 1000", max(exp_ms) <= 1000),
        ("main-process RSS (MB)", f"{rss / 1e6:.0f} now, {main_peak / 1e6:.0f} peak", "<= 150", main_peak <= 150e6),
        ("idle CPU, main process (% of a core)", f"{100 * idle_main:.2f}", "near 0", idle_main < 0.02),
        (
            "idle CPU, worker (% of a core)",
            f"{100 * idle_worker:.2f} (RSS {wrss / 1e6:.0f} MB)",
            "near 0",
            idle_worker < 0.02,
        ),
        ("/metrics while the worker is busy (ms)", scr, "< 50", max(scrape_ms) < 50),
    ]
    print("| measure | measured | target | met |\n|---|---|---|---|")
    for name, value, target, ok in rows:
        print(f"| {name} | {value} | {target} | {'yes' if ok else 'NO'} |")
    return 0


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def _is_worker(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"ckptwatch.worker" in f.read()
    except OSError:
        return False


if __name__ == "__main__":
    sys.exit(main())
