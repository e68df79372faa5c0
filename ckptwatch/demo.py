"""`ckptwatch demo`: the daemon watching a training run, with no configuration.

`run_daemon_demo`: a tiny Keras model trains and saves with CheckpointManager
into a temp dir (child process) while the real daemon (real worker process,
real HTTP server) watches it; one checkpoint is corrupted on disk and one holds
NaN weights; a verdict table and the metrics URL are printed.

`run_demo` (`ckptwatch demo --cli`): the same faults and more, through the
one-shot `ckptwatch verify`, showing verdicts and exit codes.
"""

from __future__ import annotations

import contextlib
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


def _flip_byte_in_kernel(root: str) -> str:
    from ckptwatch.demo_checkpoints import _flip_a_bit
    from ckptwatch.formats.bundle import BundleSource

    os.makedirs(os.path.join(root, "corrupt"))
    for f in os.listdir(os.path.join(root, "run")):
        if f.startswith("ckpt-3."):
            shutil.copy(os.path.join(root, "run", f), os.path.join(root, "corrupt", f))
    prefix = os.path.join(root, "corrupt", "ckpt-3")
    _flip_a_bit(prefix)
    source = BundleSource(prefix)
    return max((t for t in source.tensors() if t.kind == "weight"), key=lambda t: t.nbytes).label


def _ckptwatch(*args: str, cwd: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ckptwatch", *args], cwd=cwd, capture_output=True, text=True)


def run_demo(keep: bool = False) -> int:
    root = tempfile.mkdtemp(prefix="ckptwatch-demo-")
    try:
        print(f"ckptwatch demo: writing a small training run with TensorFlow into {root} ...", flush=True)
        t0 = time.time()
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
        gen = subprocess.run(
            [sys.executable, "-m", "ckptwatch.demo_checkpoints", root], env=env, capture_output=True, text=True
        )
        if gen.returncode != 0:
            print(gen.stderr[-2000:], file=sys.stderr)
            print("ckptwatch demo: could not generate checkpoints with TensorFlow", file=sys.stderr)
            return 2
        flipped = _flip_byte_in_kernel(root)
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


DEMO_CONFIG = """
[daemon]
listen = "{listen}"
state_dir = "{root}/state"
log_format = "json"
poll_interval = 0.2
settle_seconds = 0.5

[worker]
devices = ["cpu"]

[[watch]]
name = "demo-run"
path = "{root}/run"
publish_dir = "{root}/verified"
"""
EXPECTED_STEPS = 7


def run_daemon_demo(serve: bool = False, listen: str = "127.0.0.1:0", timeout: float = 100.0) -> int:
    import queue
    import signal
    import threading
    import urllib.request

    root = tempfile.mkdtemp(prefix="ckptwatch-demo-")
    os.makedirs(os.path.join(root, "run"))
    config = os.path.join(root, "config.toml")
    with open(config, "w") as f:
        f.write(DEMO_CONFIG.format(root=root, listen=listen))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    print(f"ckptwatch demo: the daemon watches {root}/run while a small Keras model trains and saves there", flush=True)
    daemon = subprocess.Popen(
        [sys.executable, "-m", "ckptwatch", "watch", "--config", config],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    events: queue.SimpleQueue[dict] = queue.SimpleQueue()

    def read_logs() -> None:
        assert daemon.stdout is not None
        for line in daemon.stdout:
            with contextlib.suppress(ValueError):
                events.put(json.loads(line))

    threading.Thread(target=read_logs, daemon=True).start()
    trainer = None
    verdicts: dict[int, dict] = {}
    url = None
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and len(verdicts) < EXPECTED_STEPS:
            if daemon.poll() is not None:
                print("ckptwatch demo: the daemon exited early", file=sys.stderr)
                return 2
            try:
                e = events.get(timeout=0.5)
            except queue.Empty:
                continue
            if e.get("event") == "daemon started":
                url = f"http://{e['listen']}"
                print(f"  daemon up: status page {url}/  metrics {url}/metrics", flush=True)
            elif e.get("event") == "worker ready" and trainer is None:
                trainer = subprocess.Popen(
                    [sys.executable, "-m", "ckptwatch.demo_checkpoints", "--train", os.path.join(root, "run")],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                print("  training started (7 saves; step 4 gets a flipped bit, step 6 NaN weights)\n", flush=True)
            elif e.get("event") == "checkpoint verified":
                step = e.get("step")
                verdicts[step] = e
                failing = ", ".join(e.get("failing") or []) or "-"
                drift = e.get("drift_previous")
                drift_txt = f"{drift:.4g}" if isinstance(drift, float) else "-"
                print(
                    f"  step {step}: {e['verdict'].upper():5}  drift vs previous {drift_txt:>8}  {failing[:90]}",
                    flush=True,
                )
            elif e.get("event") == "checkpoint skipped":
                print(f"  step {e.get('step')}: skipped ({e.get('reason')})", flush=True)
        rows = [
            [str(step), e["verdict"].upper(), ", ".join(e.get("failing") or [])[:100] or "-"]
            for step, e in sorted(verdicts.items(), key=lambda kv: kv[0] if kv[0] is not None else -1)
        ]
        print("\n" + table(["STEP", "VERDICT", "FAILING CHECKS"], rows))
        if url:
            with urllib.request.urlopen(f"{url}/metrics", timeout=5) as r:
                lines = [
                    ln
                    for ln in r.read().decode().splitlines()
                    if ln.startswith(("ckptwatch_last_verdict", "ckptwatch_verifications_total"))
                    and not ln.endswith(" 0.0")
                ]
            print("\nfrom " + url + "/metrics:\n  " + "\n  ".join(lines))
        published = os.path.join(root, "verified", "checkpoint")
        if os.path.exists(published):
            with open(published) as f:
                print(f"\n{published} (for tf.train.latest_checkpoint) names {f.readline().split(':', 1)[1].strip()}")
        ok = len(verdicts) >= EXPECTED_STEPS and {verdicts[s]["verdict"] for s in (4, 6) if s in verdicts} == {"fail"}
        if serve and url:
            print(f"\nserving until Ctrl-C: {url}/", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                daemon.wait()
        return 0 if ok else 1
    finally:
        if trainer and trainer.poll() is None:
            trainer.kill()
        if daemon.poll() is None:
            daemon.send_signal(signal.SIGTERM)
            try:
                daemon.wait(15)
            except subprocess.TimeoutExpired:
                daemon.kill()
        print("daemon stopped.")
        shutil.rmtree(root, ignore_errors=True)
