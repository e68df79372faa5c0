"""watch_status: a watch's status from a report, restored statuses, and the figures of the
"checkpoint verified" log event; drift figures that do not lie (NaN for NaN, only the compared tensors)."""

from __future__ import annotations

import math

from ckptwatch.daemon.model import TensorDrift, WatchStatus
from ckptwatch.daemon.watch_status import apply_report, compared_by, log_fields, restore
from ckptwatch.policy import Policy


def tensor(
    name: str,
    previous: float | None = None,
    golden: float | None = None,
    display: str | None = None,
    kind: str | None = None,
    **stats,
):
    drift = {ref: {"relative_l2": v} for ref, v in (("previous", previous), ("golden", golden)) if v is not None}
    row = {"name": name, "display": display, "drift": drift, "stats": {"nan": 0, "inf": 0, **stats}}
    return row | ({"kind": kind} if kind else {})


def a_report(verdict: str = "warn") -> dict:
    return {
        "verdict": verdict,
        "checkpoint": {"path": "/ckpt/run/ckpt-7", "step": 7, "bytes": 4096},
        "findings": [
            {"severity": "fail", "check": "nonfinite", "tensor": "m/k/.ATTRIBUTES/VARIABLE_VALUE"},
            {"severity": "fail", "check": "integrity.crc", "tensor": None},
            {"severity": "warn", "check": "drift.golden", "tensor": None},
            {"severity": "info", "check": "structure.renamed", "tensor": None},
        ],
        "drift": {
            "previous": {"relative_l2": 0.01, "max_abs": 0.5},
            "golden": {"relative_l2": 0.4, "max_abs": 3.0},
        },
        "tensors": [
            tensor("m/k/.ATTRIBUTES/VARIABLE_VALUE", 0.02, 0.9, display="m/k", kind="weight"),
            tensor("m/b", 0.03, 0.1),
            tensor("m/c", 0.01),
            tensor("step", None, None),
            # optimizer state and counters: counted as non-finite, never in the drift figures
            tensor("m/k/.OPTIMIZER_SLOT/opt/m/.ATTRIBUTES/VARIABLE_VALUE", 5.0, display="m/k/m", kind="optimizer"),
            tensor("opt/iter/.ATTRIBUTES/VARIABLE_VALUE", 7.0, display="opt/iter", kind="counter", nan=2, inf=1),
        ],
        "model": {
            "functional": {"reference": "golden", "agreement": 0.98, "max_abs_diff": 0.25},
            "restore_unmatched": 2,
        },
        "timings": {"read_seconds": 0.5},
    }


def test_apply_report_sets_every_figure():
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, a_report(), finished=1000.0, seconds=2.5, top_k=10)
    assert (s.last_verdict, s.last_checkpoint, s.last_step, s.last_bytes) == ("warn", "/ckpt/run/ckpt-7", 7, 4096)
    assert (s.last_time, s.last_pass_time, s.last_duration) == (1000.0, 1000.0, 2.5)
    assert s.drift_relative_l2 == {"previous": 0.01, "golden": 0.4}
    assert s.drift_max_abs == {"previous": 0.5, "golden": 3.0}
    assert s.top_tensors == [
        TensorDrift("previous", "m/b", 0.03),
        TensorDrift("previous", "m/k", 0.02),
        TensorDrift("previous", "m/c", 0.01),
        TensorDrift("golden", "m/k", 0.9),
        TensorDrift("golden", "m/b", 0.1),
    ], "worst first per reference, by display name"
    assert s.nonfinite == 3
    assert s.functional_agreement == {"golden": 0.98} and s.functional_max_abs_diff == {"golden": 0.25}
    assert s.restore_unmatched == 2


def test_apply_report_lists_and_counts_the_failing_and_warning_checks():
    s = WatchStatus("run", "/ckpt/run")
    report = a_report("fail")
    report["findings"][0] |= {"value": None, "limit": 0.0}
    report["findings"].append({"severity": "fail", "check": "nonfinite", "tensor": "m/b", "message": "NaN"})
    apply_report(s, report, 1000.0, None, top_k=10)
    assert s.finding_counts == {("nonfinite", "fail"): 2, ("integrity.crc", "fail"): 1, ("drift.golden", "warn"): 1}
    assert [(f["severity"], f["check"], f["tensor"]) for f in s.findings] == [
        ("fail", "nonfinite", "m/k"),  # the display name, as people read it
        ("fail", "integrity.crc", None),
        ("fail", "nonfinite", "m/b"),
        ("warn", "drift.golden", None),
    ], "fail first, info left out"
    assert s.findings[0]["limit"] == 0.0 and "value" not in s.findings[0]
    apply_report(s, a_report("pass") | {"findings": []}, 2000.0, None, top_k=10)
    assert s.findings == [] and s.finding_counts == {}, "a later checkpoint clears them"


def test_top_k_per_reference():
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, a_report(), 1000.0, None, top_k=1)
    assert s.top_tensors == [TensorDrift("previous", "m/b", 0.03), TensorDrift("golden", "m/k", 0.9)]


def test_a_failing_report_keeps_the_last_pass_time_and_clears_what_it_lacks():
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, a_report("pass"), 1000.0, 1.0, top_k=10)
    bare = {"verdict": "fail", "checkpoint": {"path": "/ckpt/run/ckpt-8"}, "findings": [], "drift": {"previous": None}}
    apply_report(s, bare, 2000.0, 1.0, top_k=10)
    assert (s.last_verdict, s.last_time, s.last_pass_time) == ("fail", 2000.0, 1000.0)
    assert s.drift_relative_l2 == {} and s.top_tensors == [] and s.nonfinite is None
    assert s.functional_agreement == {} and s.restore_unmatched is None


def test_functional_outputs_without_a_reference_are_not_exported():
    report = a_report()
    report["model"]["functional"]["reference"] = None
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, report, 1000.0, None, top_k=10)
    assert s.functional_agreement == {} and s.functional_max_abs_diff == {}


def test_restore_keeps_known_statuses_fills_new_ones_and_drops_removed_ones():
    known = WatchStatus("a", "/old/a", last_verdict="pass", last_time=5.0)
    gone = WatchStatus("gone", "/g")
    latest = {"a": {"report": a_report("fail"), "finished": 9.0}, "b": {"report": a_report("fail"), "finished": 7.0}}
    out = restore({"a": known, "gone": gone}, [("a", "/new/a"), ("b", "/b"), ("c", "/c")], latest, {"b": 3.0}, 10)
    assert list(out) == ["a", "b", "c"]
    assert out["a"] is known and known.path == "/new/a" and known.last_time == 5.0, "a verdict in memory stays"
    assert (out["b"].last_verdict, out["b"].last_time, out["b"].last_pass_time) == ("fail", 7.0, 3.0)
    assert out["b"].last_duration is None, "not known after a restart"
    assert out["c"] == WatchStatus("c", "/c")


def test_log_fields():
    fields = log_fields(a_report())
    assert fields == {
        "verdict": "warn",
        "failing": ["nonfinite:m/k", "integrity.crc"],
        "failing_total": 2,
        "warnings": 1,
        "warning_checks": ["drift.golden"],
        "drift_previous": 0.01,
        "drift_golden": 0.4,
    }
    many = {"verdict": "fail", "findings": [{"severity": "fail", "check": f"c{i}"} for i in range(30)]}
    assert len(log_fields(many)["failing"]) == 20 and log_fields(many)["failing_total"] == 30
    assert log_fields(many)["drift_previous"] is None


def nan_report() -> dict:
    """A checkpoint whose kernel is all NaN: the engine's drift over the finite positions says 0."""
    report = a_report()
    report["drift"]["previous"] = {"relative_l2": 0.0, "max_abs": 0.0}
    report["drift"]["golden"] = {"relative_l2": None, "max_abs": None}  # NaN/Inf: null in the JSON
    report["tensors"][0] = tensor("m/k/.ATTRIBUTES/VARIABLE_VALUE", 0.0, 0.0, display="m/k", kind="weight", nan=128)
    return report


def test_a_checkpoint_full_of_nan_has_nan_drift_not_0_and_not_absent():
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, nan_report(), 1000.0, None, top_k=10)
    assert set(s.drift_relative_l2) == set(s.drift_max_abs) == {"previous", "golden"}
    assert all(math.isnan(v) for v in [*s.drift_relative_l2.values(), *s.drift_max_abs.values()])
    worst = s.top_tensors[0]
    assert (worst.reference, worst.tensor) == ("previous", "m/k") and math.isnan(worst.relative_l2), "NaN ranks worst"
    assert next(t.tensor for t in s.top_tensors if t.reference == "golden") == "m/k"


def test_a_null_figure_is_nan_and_an_absent_reference_stays_absent():
    report = a_report()
    report["drift"] = {"previous": {"relative_l2": None, "max_abs": 2.0}, "golden": None}
    report["tensors"][1]["drift"]["previous"]["relative_l2"] = None
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, report, 1000.0, None, top_k=10)
    assert math.isnan(s.drift_relative_l2["previous"]) and s.drift_max_abs == {"previous": 2.0}
    assert "golden" not in s.drift_relative_l2
    assert math.isnan(next(t.relative_l2 for t in s.top_tensors if t.tensor == "m/b"))


def test_nan_in_optimizer_state_only_leaves_the_weights_drift_alone():
    report = a_report()
    report["tensors"][4]["stats"]["nan"] = 9  # the kernel's Adam slot
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, report, 1000.0, None, top_k=10)
    assert s.drift_relative_l2 == {"previous": 0.01, "golden": 0.4}


def test_top_k_leaves_out_counters_and_optimizer_state_unless_the_policy_compares_them():
    s = WatchStatus("run", "/ckpt/run")
    apply_report(s, a_report(), 1000.0, None, top_k=10)
    assert {t.tensor for t in s.top_tensors} == {"m/k", "m/b", "m/c"}
    apply_report(s, a_report(), 1000.0, None, top_k=10, compared=compared_by(Policy(include_optimizer=True)))
    assert s.top_tensors[0] == TensorDrift("previous", "m/k/m", 5.0), "optimizer state compared: in the top K"
    assert "opt/iter" not in {t.tensor for t in s.top_tensors}, "a counter never"
    excluding = compared_by(Policy(exclude=["m/b"]))
    apply_report(s, a_report(), 1000.0, None, top_k=10, compared=excluding)
    assert {t.tensor for t in s.top_tensors} == {"m/k", "m/c"}, "excluded tensors are not compared"


def test_restore_uses_each_watch_s_compared_tensors():
    latest = {"a": {"report": a_report(), "finished": 9.0}}
    out = restore({}, [("a", "/a")], latest, {}, 10, {"a": compared_by(Policy(include_optimizer=True))})
    assert "m/k/m" in {t.tensor for t in out["a"].top_tensors}
