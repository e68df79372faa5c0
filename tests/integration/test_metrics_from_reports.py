"""Metrics that do not lie, from real reports of real checkpoints (the engine as the worker runs it,
then the daemon's watch status and collector): NaN drift for a checkpoint full of NaN (the engine
measures drift over the finite positions, so its report says 0), and top-K tensors that are
weights only, not optimizer state."""

from __future__ import annotations

import math

import numpy as np
from prometheus_client import CollectorRegistry

from ckptwatch.daemon.metrics import DaemonMetrics
from ckptwatch.daemon.model import Snapshot, WatchStatus
from ckptwatch.daemon.watch_status import apply_report, compared_by
from ckptwatch.policy import Policy
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.verify.verification import verify_checkpoint


def scraped(status: WatchStatus) -> CollectorRegistry:
    registry = CollectorRegistry()
    DaemonMetrics(registry, lambda: Snapshot("0", 0.0, [status], []), top_k=50)
    return registry


def test_a_checkpoint_full_of_nan_exports_nan_drift(tf, tmp_path):
    class Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(np.random.default_rng(0).normal(size=(8, 16)).astype("float32"))
            self.bias = tf.Variable(np.ones(16, "float32"))

    net = Net()
    ckpt = tf.train.Checkpoint(model=net)
    previous = ckpt.write(str(tmp_path / "ckpt-1"))
    net.kernel.assign(tf.fill(net.kernel.shape, float("nan")))
    candidate = ckpt.write(str(tmp_path / "ckpt-2"))
    report = verify_checkpoint(VerifyRequest(candidate, previous)).report.to_dict()
    assert report["verdict"] == "fail"
    assert report["drift"]["previous"]["relative_l2"] == 0.0, "the engine's figure (finite positions only)"

    status = WatchStatus("run", str(tmp_path))
    apply_report(status, report, 1000.0, 1.0, top_k=10)
    registry = scraped(status)
    for name in ("ckptwatch_drift_relative_l2", "ckptwatch_drift_max_abs"):
        value = registry.get_sample_value(name, {"watch": "run", "reference": "previous"})
        assert value is not None and math.isnan(value), name
    kernel = registry.get_sample_value(
        "ckptwatch_tensor_drift_relative_l2", {"watch": "run", "reference": "previous", "tensor": "model/kernel"}
    )
    assert kernel is not None and math.isnan(kernel)
    bias = {"watch": "run", "reference": "previous", "tensor": "model/bias"}
    assert registry.get_sample_value("ckptwatch_tensor_drift_relative_l2", bias) == 0.0, "finite tensors keep theirs"
    assert registry.get_sample_value("ckptwatch_nonfinite_values", {"watch": "run"}) == 128


def test_top_k_tensors_are_weights_unless_the_policy_compares_optimizer_state(tf, tmp_path):
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(3)])
    optimizer = tf.keras.optimizers.Adam(1e-2)
    model.compile(optimizer=optimizer, loss="mse")
    x, y = np.ones((8, 4), "float32"), np.zeros((8, 3), "float32")
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    model.fit(x, y, epochs=1, verbose=0)
    previous = ckpt.write(str(tmp_path / "ckpt-1"))
    model.fit(x, y, epochs=1, verbose=0)
    report = verify_checkpoint(VerifyRequest(str(ckpt.write(str(tmp_path / "ckpt-2"))), previous)).report.to_dict()
    kinds = {t.get("display") or t["name"]: t["kind"] for t in report["tensors"]}
    assert "optimizer" in kinds.values(), kinds  # Adam's slots and iteration count

    status = WatchStatus("run", str(tmp_path))
    apply_report(status, report, 1000.0, 1.0, top_k=50)
    assert status.top_tensors and {kinds[t.tensor] for t in status.top_tensors} == {"weight"}
    apply_report(status, report, 1000.0, 1.0, top_k=50, compared=compared_by(Policy(include_optimizer=True)))
    assert {kinds[t.tensor] for t in status.top_tensors} == {"weight", "optimizer"}
