"""The CLI survives its reader crashing: a child killed by a signal mid-read
becomes a `fail` verdict naming the tensor in flight (exit 1), never a dead CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import numpy as np
import psutil
import pytest

from tests.tools import child_reading_a_shard, wait_until

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture(scope="module")
def big_checkpoint(tmp_path_factory):
    import tensorflow as tf

    root = tmp_path_factory.mktemp("isolation")
    rng = np.random.default_rng(0)
    variables = {f"w{i:02d}": tf.Variable(rng.standard_normal((1024, 1024), dtype=np.float32)) for i in range(48)}
    return tf.train.Checkpoint(**variables).write(str(root / "ckpt-1"))


def _wait_for_child_reading(parent: subprocess.Popen, timeout: float = 60.0) -> psutil.Process:
    return wait_until(
        # 32 MiB of the 384 it reads (candidate and previous): past loading numba's cached kernels
        lambda: child_reading_a_shard(parent.pid, read_bytes=32 << 20),
        timeout,
        "the verify child opening a data shard",
        interval=0.002,
        give_up=lambda: None if parent.poll() is None else "the verify process exited",
    )


@pytest.mark.parametrize("as_json", [True, False])
def test_reader_killed_mid_read_is_a_fail_verdict(big_checkpoint, as_json):
    args = [sys.executable, "-m", "ckptwatch", "verify", big_checkpoint, "--previous", big_checkpoint, "--threads", "1"]
    if as_json:
        args.append("--json")
    env = {k: v for k, v in os.environ.items() if k not in ("CKPTWATCH_CHILD", "CKPTWATCH_NO_ISOLATION")}
    parent = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    child = _wait_for_child_reading(parent)
    child.send_signal(signal.SIGSEGV)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 1, err
    assert "Traceback" not in err
    if as_json:
        report = json.loads(out)
        assert report["verdict"] == "fail"
        (finding,) = report["findings"]
        assert finding["check"] == "integrity.crash"
        assert "SIGSEGV" in finding["message"]
        assert finding["tensor"].startswith("w"), finding
    else:
        assert "FAIL" in out and "integrity.crash" in out and "SIGSEGV" in out


def test_child_exit_code_passes_through(big_checkpoint):
    """Normal runs are unchanged by isolation: the child's verdict and exit code come back."""
    proc = subprocess.run(
        [sys.executable, "-m", "ckptwatch", "verify", big_checkpoint, "--previous", big_checkpoint, "--json"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1  # identical to previous: drift.unchanged
    assert {f["check"] for f in json.loads(proc.stdout)["findings"]} == {"drift.unchanged"}
