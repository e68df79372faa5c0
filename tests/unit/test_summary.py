"""summary: what lists show of a report (bounded, no tensor rows, drift that does not understate NaN)."""

from __future__ import annotations

from ckptwatch.daemon.summary import MAX_FINDINGS, MAX_MESSAGE, finding_counts, listed_findings, summarize


def report(nan_kernel: bool = False, findings: list | None = None) -> dict:
    return {
        "verdict": "fail" if nan_kernel else "pass",
        "checkpoint": {"path": "/c/ckpt-3", "format": "tf-bundle", "step": 3, "tensors": 2, "bytes": 99},
        "findings": findings or [],
        "drift": {"previous": {"relative_l2": 0.01, "max_abs": 0.2}, "golden": None},
        "tensors": [
            {"name": "m/k/.ATTRIBUTES/VARIABLE_VALUE", "display": "m/k", "kind": "weight",
             "stats": {"nan": 4 if nan_kernel else 0, "inf": 0}, "drift": {"previous": {"relative_l2": 0.0}}},
            {"name": "opt/iter", "display": "opt/iter", "kind": "counter", "stats": {"nan": 0, "inf": 1},
             "drift": {"previous": {"relative_l2": 1.0}}},
        ],
    }  # fmt: skip


def test_summary_figures():
    s = summarize(report())
    assert s == {
        "format": "tf-bundle",
        "tensors": 2,
        "bytes": 99,
        "counts": {"fail": 0, "warn": 0},
        "findings": [],
        "drift": {"previous": {"relative_l2": 0.01, "max_abs": 0.2}, "golden": None},
        "nonfinite": 1,
    }, "an Inf in a counter is counted, but leaves the weights' drift alone"


def test_a_nan_weight_leaves_no_drift_figure():
    assert summarize(report(nan_kernel=True))["drift"]["previous"] == {"relative_l2": None, "max_abs": None}


def test_findings_are_bounded_fail_first_with_display_names_and_numbers():
    findings = [{"severity": "warn", "check": "drift.jump", "tensor": None, "message": "w", "value": 2.0, "limit": 1.0}]
    findings += [
        {"severity": "fail", "check": "nonfinite", "tensor": "m/k/.ATTRIBUTES/VARIABLE_VALUE", "message": "x" * 5000}
    ] * 30
    findings += [{"severity": "info", "check": "structure.renamed", "tensor": None, "message": "i"}]
    listed = listed_findings(report(True, findings))
    assert len(listed) == MAX_FINDINGS and all(f["severity"] == "fail" for f in listed)
    assert listed[0]["tensor"] == "m/k" and len(listed[0]["message"]) == MAX_MESSAGE
    assert listed_findings(report(True, findings[:2]))[1] == {
        "severity": "warn", "check": "drift.jump", "tensor": None, "reference": None, "message": "w",
        "value": 2.0, "limit": 1.0,
    }  # fmt: skip
    assert finding_counts(report(True, findings)) == {("drift.jump", "warn"): 1, ("nonfinite", "fail"): 30}
