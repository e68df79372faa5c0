"""Builders of the daemon's domain data that several test modules need.

watch_status(name, **fields)   a WatchStatus with every figure set (as after a model-aware
                               verification with a previous and a golden, and an accepted
                               baseline); `fields` override
RecordingLog()                 a structlog-like logger that keeps (level, event, fields)
"""

from __future__ import annotations

from typing import Any

from ckptwatch.daemon.model import AcceptedBaseline, TensorDrift, WatchStatus


def watch_status(name: str = "run7", **fields: Any) -> WatchStatus:
    values: dict[str, Any] = {
        "path": f"/ckpt/{name}",
        "armed": True,
        "last_verdict": "warn",
        "last_checkpoint": f"/ckpt/{name}/ckpt-12",
        "last_step": 1200,
        "last_bytes": 123_456_789,
        "last_time": 1_700_000_000.5,
        "last_pass_time": 1_699_999_000.25,
        "last_seen_time": 1_700_000_100.75,
        "last_duration": 3.25,
        "drift_relative_l2": {"previous": 0.0125, "golden": 0.75},
        "drift_max_abs": {"previous": 0.5, "golden": 4.0},
        "top_tensors": [TensorDrift("previous", "dense/kernel", 0.02), TensorDrift("golden", "dense/kernel", 0.9)],
        "nonfinite": 3,
        "queue_depth": 2,
        "functional_agreement": {"golden": 0.984375},
        "functional_max_abs_diff": {"golden": 0.125},
        "restore_unmatched": 1,
        "baseline_checkpoint": f"/ckpt/{name}/ckpt-11",
        "baseline_step": 1100,
        "published_checkpoint": f"/ckpt/{name}/ckpt-11",
        "published_step": 1100,
        "thresholds": {
            "max_global_golden_drift": 1.0,
            "max_global_jump": 0.5,
            "max_abs_value": 1e6,
            "stall_intervals": 3.0,
        },
        "save_interval": 300.0,
        "accepted": AcceptedBaseline(
            f"/ckpt/{name}/ckpt-9", 900, "alice", "restarted from ckpt-8 on purpose", 1_699_990_000.0
        ),
    }
    return WatchStatus(name=name, **{**values, **fields})


class RecordingLog:
    """structlog's interface for a component under test; keeps (level, event, fields)."""

    def __init__(self):
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self, name: str) -> list[dict]:
        return [fields for _, event, fields in self.lines if event == name]
