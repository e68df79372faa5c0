"""`ckptwatch demo` (what `make demo` runs): the real daemon watching a training run.

A config for one watch over a temp dir is written, `ckptwatch watch` starts (real worker
process, real HTTP server), and once its worker is ready a small Keras model trains and
saves there (child process: `python -m ckptwatch.demo.checkpoints --train`), with a bit
flipped at step 4 and NaN weights at step 6. The daemon's JSON log events give the
verdicts; a table, the metrics and the published checkpoint are printed. Exit 0 when
steps 4 and 6, and only they, fail.
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
    verdicts: dict[int | None, dict] = {}
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
                    [sys.executable, "-m", "ckptwatch.demo.checkpoints", "--train", os.path.join(root, "run")],
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
