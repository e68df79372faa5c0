"""HTTP under a burst: a real daemon, N requests opened at once on loopback.

    python bench/http_burst.py [--requests 2000] [--concurrency 2000] [--paths /metrics /livez]
                               [--clients asyncio ab]

A real daemon (subprocess, one CPU worker) watches a temp dir into which a few checkpoints
are committed first, so /metrics carries what a scrape of a working daemon carries (verdicts,
drift, per-tensor series). Then, per path, an asyncio client (another process: this one) opens
`--concurrency` connections at once and keeps that many in flight until `--requests` requests
are done. Each request's latency runs from before connect() to the last byte of the response;
a request that takes longer than `--timeout` counts as timed out. Prints a Markdown table:
p50/p90/p99/max latency, failures, timeouts and the wall time of the whole burst.

`--clients ab` runs the same burst with ApacheBench (`ab`, Debian's apache2-utils: one C
process on epoll) as well: the asyncio client is Python on the same cores as the daemon, and at
2,000 connections in flight its own cost shows in the latencies it measures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time

from daemon_process import DaemonProcess  # bench/ is on sys.path: these run as scripts

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

CONFIG = """
[daemon]
listen = "127.0.0.1:0"
state_dir = "{root}/state"
log_format = "json"
log_level = "info"

[worker]
devices = ["cpu"]

[[watch]]
name = "bench"
path = "{root}/run"
"""


async def _one(host: str, port: int, path: str, timeout: float) -> tuple[float, str]:
    """(seconds, outcome): outcome is the HTTP status, "timeout" or the error's name."""
    t0 = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(f"GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n".encode())
            await writer.drain()
            data = await reader.read()
            writer.close()
        status = data.split(b" ", 2)[1].decode() if data.startswith(b"HTTP/") else "no response"
        return time.perf_counter() - t0, status
    except TimeoutError:
        return time.perf_counter() - t0, "timeout"
    except OSError as e:
        return time.perf_counter() - t0, type(e).__name__


async def burst(host: str, port: int, path: str, requests: int, concurrency: int, timeout: float) -> dict:
    gate = asyncio.Semaphore(concurrency)

    async def gated() -> tuple[float, str]:
        async with gate:
            return await _one(host, port, path, timeout)

    t0 = time.perf_counter()
    results = await asyncio.gather(*(gated() for _ in range(requests)))
    wall = time.perf_counter() - t0
    ms = sorted(r[0] * 1000 for r in results)

    def pct(p: float) -> float:
        return ms[min(len(ms) - 1, int(p / 100 * len(ms)))]

    outcomes: dict[str, int] = {}
    for _, o in results:
        outcomes[o] = outcomes.get(o, 0) + 1
    return {
        "path": path,
        "requests": requests,
        "concurrency": concurrency,
        "p50": pct(50),
        "p90": pct(90),
        "p99": pct(99),
        "max": ms[-1],
        "ok": outcomes.get("200", 0),
        "timeouts": outcomes.get("timeout", 0),
        "other": {k: v for k, v in outcomes.items() if k not in ("200", "timeout")},
        "wall": wall,
    }


def ab_burst(host: str, port: int, path: str, requests: int, concurrency: int, timeout: float) -> dict:
    """The same burst with ApacheBench: its percentile table (connect to last byte, per request)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, max(soft, concurrency + 256))
    out = subprocess.run(
        ["ab", "-q", "-n", str(requests), "-c", str(concurrency), "-s", str(int(timeout)), "-r",
         f"http://{host}:{port}{path}"],
        capture_output=True, text=True, timeout=timeout * 10 + 60,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard)),
    )  # fmt: skip
    text = out.stdout
    pct = {int(p): float(ms) for p, ms in re.findall(r"^\s+(\d+)%\s+(\d+)", text, re.M)}
    if out.returncode != 0 or 99 not in pct:
        raise RuntimeError(f"ab failed ({out.returncode}): {out.stderr.strip()[-500:] or text[-500:]}")
    complete = int(re.search(r"Complete requests:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    failed = int(re.search(r"Failed requests:\s+(\d+)", text).group(1))  # type: ignore[union-attr]
    wall = float(re.search(r"Time taken for tests:\s+([\d.]+)", text).group(1))  # type: ignore[union-attr]
    return {
        "path": path,
        "requests": requests,
        "concurrency": concurrency,
        "p50": pct[50],
        "p90": pct[90],
        "p99": pct[99],
        "max": pct[100],
        "ok": complete - failed,
        "timeouts": 0,
        "other": {"failed": failed} if failed else {},
        "wall": wall,
    }


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def commit_checkpoints(daemon: DaemonProcess, root: str, n: int) -> None:
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    model = tf.Module()
    model.layers = [tf.Variable(rng.standard_normal((64, 64), dtype=np.float32)) for _ in range(12)]
    ckpt = tf.train.Checkpoint(model=model)
    for step in range(1, n + 1):
        for v in model.layers:
            v.assign_add(rng.standard_normal(v.shape, dtype=np.float32) * 0.01)
        ckpt.write(f"{root}/staging/ckpt-{step}")
        for name in sorted(os.listdir(f"{root}/staging"), key=lambda n: n.endswith(".index")):
            os.replace(f"{root}/staging/{name}", f"{root}/run/{name}")  # data first, the index last
        daemon.wait_for("checkpoint verified", step=step)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[2000, 64])
    parser.add_argument("--paths", nargs="+", default=["/metrics", "/livez"])
    parser.add_argument("--timeout", type=float, default=10.0)
    parser.add_argument("--checkpoints", type=int, default=3)
    parser.add_argument("--clients", nargs="+", choices=["asyncio", "ab"], default=["asyncio"])
    args = parser.parse_args()
    if "ab" in args.clients and not shutil.which("ab"):
        parser.error("--clients ab needs ApacheBench: apt-get install apache2-utils")

    root = tempfile.mkdtemp(prefix="ckptwatch-bench-http-")
    daemon = DaemonProcess(root, CONFIG.format(root=root))
    host, port = daemon.wait_for("daemon started")["listen"].rsplit(":", 1)
    rows = []
    try:
        daemon.wait_for("worker ready")
        commit_checkpoints(daemon, root, args.checkpoints)
        for client in args.clients:
            for path in args.paths:
                for concurrency in args.concurrency:
                    time.sleep(1.0)  # connections of the previous burst drain (TIME_WAIT is on the client side)
                    cpu0 = cpu_seconds(daemon.pid)
                    burst_args = (host, int(port), path, args.requests, concurrency, args.timeout)
                    row = ab_burst(*burst_args) if client == "ab" else asyncio.run(burst(*burst_args))
                    row["cpu_ms"] = (cpu_seconds(daemon.pid) - cpu0) * 1000 / args.requests
                    row["client"] = client
                    rows.append(row)
    finally:
        daemon.stop()
        shutil.rmtree(root, ignore_errors=True)
    print(
        f"{args.requests} requests per burst on loopback, client timeout {args.timeout:g} s, {os.cpu_count()} cores\n"
    )
    print(
        "| client | path | in flight | p50 ms | p90 ms | p99 ms | max ms | 200 | timed out | other | burst s | CPU ms |"
    )
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|")
    for r in rows:
        other = ", ".join(f"{k}: {v}" for k, v in r["other"].items()) or "-"
        print(
            f"| {r['client']} | {r['path']} | {r['concurrency']} | {r['p50']:.1f} | {r['p90']:.1f} | {r['p99']:.1f} "
            f"| {r['max']:.1f} "
            f"| {r['ok']} | {r['timeouts']} | {other} | {r['wall']:.2f} | {r['cpu_ms']:.2f} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
