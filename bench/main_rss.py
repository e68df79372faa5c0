"""The daemon's main-process memory right after start: `python bench/main_rss.py [--runs N]`.

Starts `python -m ckptwatch watch --config ...` on an empty temp watch dir with one cpu worker,
waits until /readyz answers 200 (every watch armed, state writable, the worker up), then reads
VmRSS of the main process (not the worker) from /proc/<pid>/status and lists the heavy modules
it has loaded (by asking nothing of it: /proc/<pid>/maps names the shared objects it mapped).
Runs the daemon of whatever `ckptwatch` the interpreter imports: set PYTHONPATH to measure
another tree (e.g. an export of an older commit: `git archive a0c7445 | tar -x -C /tmp/old`).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

CONFIG = """
[daemon]
listen = "127.0.0.1:{port}"
state_dir = "{root}/state"
log_format = "json"

[worker]
devices = ["cpu"]

[[watch]]
name = "empty"
path = "{root}/run"
"""

HEAVY = ("numpy", "ml_dtypes", "blake3", "numba", "llvmlite", "h5py", "tensorflow", "keras")


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _status(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(key + ":"))


def _heavy_mapped(pid: int) -> list[str]:
    with open(f"/proc/{pid}/maps") as f:
        paths = {line.split()[-1] for line in f if "/" in line}
    return sorted({h for h in HEAVY for p in paths if f"/{h}/" in p or f"/{h}." in p or f"/_{h}" in p})


def measure_once(timeout: float = 120.0) -> dict:
    root = tempfile.mkdtemp(prefix="ckptwatch-rss-")
    os.makedirs(f"{root}/run")
    port = _free_port()
    with open(f"{root}/config.toml", "w") as f:
        f.write(CONFIG.format(root=root, port=port))
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ckptwatch", "watch", "--config", f"{root}/config.toml"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,  # `-m` puts the working directory first on sys.path: PYTHONPATH must decide
    )
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline or daemon.poll() is not None:
                raise RuntimeError("the daemon did not get ready")
            time.sleep(0.1)
        time.sleep(1.0)  # let the loop settle after the first worker handshake
        return {
            "rss": _status(daemon.pid, "VmRSS"),
            "hwm": _status(daemon.pid, "VmHWM"),
            "heavy": _heavy_mapped(daemon.pid),
        }
    finally:
        daemon.terminate()
        daemon.wait(15)
        shutil.rmtree(root, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    runs = [measure_once() for _ in range(args.runs)]
    rss = statistics.median(r["rss"] for r in runs) / 1e6
    hwm = statistics.median(r["hwm"] for r in runs) / 1e6
    heavy = sorted({h for r in runs for h in r["heavy"]})
    if args.json:
        print(json.dumps({"rss_mb": rss, "hwm_mb": hwm, "heavy": heavy, "runs": runs}))
    else:
        print(f"main-process VmRSS after /readyz: {rss:.1f} MB (VmHWM {hwm:.1f} MB), median of {len(runs)}")
        print(f"heavy native modules mapped: {', '.join(heavy) or 'none'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
