"""`ckptwatch demo --cli`: the demo's faults through the one-shot `ckptwatch verify`.

A small training run is written with TensorFlow (child process), one bit is flipped in a
copy of a checkpoint, and each case is verified by `python -m ckptwatch verify --json`:
its verdict, exit code and first finding are printed, then the full human report of the
corrupt checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from ckptwatch.verify.render import table

CASES = [
    ("healthy training step", "run/ckpt-3", ["--previous", "run/ckpt-2", "--golden", "golden/ckpt-1"]),
    ("bit flip in a kernel", "corrupt/ckpt-3", ["--previous", "run/ckpt-2", "--golden", "golden/ckpt-1"]),
    ("NaN after divergence", "nan/ckpt-4", ["--previous", "run/ckpt-3", "--golden", "golden/ckpt-1"]),
    ("restarted from scratch", "reset/ckpt-4", ["--previous", "run/ckpt-3", "--golden", "golden/ckpt-1"]),
    ("duplicate save", "run/ckpt-3", ["--previous", "run/ckpt-3"]),
    ("copy vs golden (replica)", "golden/ckpt-1", ["--golden", "run/ckpt-1", "--profile", "replica"]),
]


def flip_byte_in_kernel(root: str) -> str:
    """corrupt/ckpt-3: a copy of run/ckpt-3 with one bit flipped in its largest weight;
    returns that tensor's label."""
    from ckptwatch.demo.checkpoints import flip_a_bit

    os.makedirs(os.path.join(root, "corrupt"))
    for f in os.listdir(os.path.join(root, "run")):
        if f.startswith("ckpt-3."):
            shutil.copy(os.path.join(root, "run", f), os.path.join(root, "corrupt", f))
    return flip_a_bit(os.path.join(root, "corrupt", "ckpt-3"))


def _ckptwatch(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptwatch", *args], cwd=cwd, capture_output=True, text=True)


def run_demo(keep: bool = False) -> int:
    root = tempfile.mkdtemp(prefix="ckptwatch-demo-")
    try:
        print(f"ckptwatch demo: writing a small training run with TensorFlow into {root} ...", flush=True)
        t0 = time.time()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        gen = subprocess.run(
            [sys.executable, "-m", "ckptwatch.demo.checkpoints", root], env=env, capture_output=True, text=True
        )
        if gen.returncode != 0:
            print(gen.stderr[-2000:], file=sys.stderr)
            print("ckptwatch demo: could not generate checkpoints with TensorFlow", file=sys.stderr)
            return 2
        flipped = flip_byte_in_kernel(root)
        print(f"  done in {time.time() - t0:.1f}s; flipped one bit inside {flipped} of corrupt/ckpt-3\n")
        rows, failures = [], 0
        for title, candidate, extra in CASES:
            cmd = ["verify", candidate, *extra]
            proc = _ckptwatch(*cmd, "--json", cwd=root)
            if proc.returncode == 2:
                print(f"  {title}: error: {proc.stderr.strip()}")
                failures += 1
                continue
            report = json.loads(proc.stdout)
            first = next((f for f in report["findings"] if f["severity"] != "info"), None)
            what = f"{first['check']} {_short(first['tensor'], report)}: {first['message']}" if first else "-"
            rows.append([title, report["verdict"].upper(), str(proc.returncode), what[:110]])
            print(f"$ ckptwatch {' '.join(cmd)}")
            print(f"  -> {report['verdict'].upper()} (exit {proc.returncode})  {what[:150]}\n", flush=True)
        print(table(["CASE", "VERDICT", "EXIT", "FIRST FINDING"], rows))
        print("\nThe full human report for the corrupt checkpoint:\n")
        print(_ckptwatch("verify", "corrupt/ckpt-3", "--previous", "run/ckpt-2", cwd=root).stdout)
        if keep:
            print(f"checkpoints kept in {root}")
        return 1 if failures else 0
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)


def _short(tensor: str | None, report: dict) -> str:
    if not tensor:
        return "(whole checkpoint)"
    for t in report["tensors"]:
        if t["name"] == tensor:
            return t["display"]
    return tensor
