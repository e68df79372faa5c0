"""The functional comparison and the .keras safe-mode scan: pure functions, no TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from ckptwatch.model.compare import accuracy, compare_outputs, flatten_outputs
from ckptwatch.model.safety import keras_config_refusal
from ckptwatch.policy import Policy
from ckptwatch.verify.history import ProbeRecord


def test_flatten_names_every_output():
    a, b = np.zeros((2, 3)), np.ones((2, 1))
    assert list(flatten_outputs(a)) == ["output"]
    assert list(flatten_outputs([a])) == ["output"]
    assert list(flatten_outputs((a, b))) == ["0", "1"]
    assert list(flatten_outputs({"probs": a, "aux": {"x": b}})) == ["aux/x", "probs"]


def test_accuracy_with_integer_and_one_hot_labels():
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    assert accuracy(scores, np.array([0, 1, 1])) == pytest.approx(2 / 3)
    assert accuracy(scores, np.eye(2)[[0, 1, 0]]) == 1.0
    assert accuracy(scores[:, :1], np.array([0, 0, 0])) is None  # one column: no argmax


def _logits(seed: int, n: int = 200, k: int = 5) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(n, k))


FINETUNE = Policy(golden_mode="finetune")


def test_finetune_bounds_the_change_from_the_first_checkpoint():
    ref = _logits(0)
    close = ref + 0.01 * _logits(1)
    figures, findings = compare_outputs({"output": close}, {"output": ref}, None, FINETUNE)
    assert findings == [] and figures["agreement"] > 0.95 and figures["relative_diff"] < 0.05
    assert figures["golden_met"] is True
    figures, findings = compare_outputs({"output": _logits(2)}, {"output": ref}, None, FINETUNE)
    assert {f.check for f in findings} == {"functional.divergence", "functional.agreement"}
    assert {f.severity for f in findings} == {"fail"} and figures["golden_met"] is False
    assert figures["agreement"] < 0.5 and all(f.reference == "golden" for f in findings)
    agreement = next(f for f in findings if f.check == "functional.agreement")
    assert agreement.value == figures["agreement"] and agreement.limit == FINETUNE.min_agreement


def test_target_reports_a_golden_not_reached_yet_and_fails_a_run_that_falls_back():
    """The default: a run from scratch towards the golden misses it early (info); once its
    history shows it met the golden for good, missing it again fails."""
    ref, far = _logits(0), _logits(2)
    _, early = compare_outputs({"output": far}, {"output": ref}, None, Policy())
    assert {f.check for f in early} == {"functional.divergence", "functional.agreement"}
    assert {f.severity for f in early} == {"info"} and all("not reached" in f.message for f in early)
    _, still = compare_outputs({"output": far}, {"output": ref}, None, Policy(), record=ProbeRecord())
    assert {f.severity for f in still} == {"info"}
    reached = ProbeRecord(reached="ckpt-40")
    _, late = compare_outputs({"output": far}, {"output": ref}, None, Policy(), record=reached)
    assert {f.severity for f in late} == {"fail"} and all("ckpt-40" in f.message for f in late)


def test_a_sudden_drop_against_the_runs_best_accuracy_fails():
    labels = np.argmax(_logits(0), axis=1)
    perfect = np.eye(5)[labels] * 5.0
    worse = perfect.copy()
    worse[:80] = np.roll(worse[:80], 1, axis=1)  # 40% wrong: accuracy 60%
    best = ProbeRecord(best_accuracy=0.9, best_checkpoint="ckpt-7")
    _, findings = compare_outputs({"o": worse}, None, labels, Policy(), record=best)
    [drop] = findings
    assert drop.check == "functional.regression" and drop.severity == "fail" and "ckpt-7" in drop.message
    assert drop.value == pytest.approx(0.6) and drop.limit == pytest.approx(0.7)
    # within max_accuracy_regression of the best (a dip early in training), or no history: nothing
    assert compare_outputs({"o": worse}, None, labels, Policy(), record=ProbeRecord(best_accuracy=0.75))[1] == []
    assert compare_outputs({"o": worse}, None, labels, Policy())[1] == []
    # a replica is compared with its golden only
    assert compare_outputs({"o": worse}, None, labels, Policy(profile="replica"), record=best)[1] == []


def test_replica_profile_is_elementwise():
    ref = _logits(0)
    policy = Policy(profile="replica")
    assert compare_outputs({"output": ref + 1e-6}, {"output": ref}, None, policy)[1] == []
    nudged = ref.copy()
    nudged[3, 2] += 0.1
    figures, findings = compare_outputs({"output": nudged}, {"output": ref}, None, policy)
    assert [f.check for f in findings] == ["functional.mismatch"] and "1 of 1000" in findings[0].message
    assert figures["outputs"]["output"]["outside_tolerance"] == 1


def test_accuracy_drop_names_both_figures():
    labels = np.argmax(_logits(0), axis=1)
    ref = np.eye(5)[labels] * 5.0
    worse = ref.copy()
    worse[:60] = np.roll(worse[:60], 1, axis=1)  # 30% wrong
    _, findings = compare_outputs({"o": worse}, {"o": ref}, labels, Policy(min_agreement=0.0, golden_mode="finetune"))
    acc = [f for f in findings if f.check == "functional.accuracy"]
    assert len(acc) == 1 and "70.0%" in acc[0].message and "100.0%" in acc[0].message


def test_nonfinite_outputs_fail_even_without_a_reference():
    out = _logits(0)
    out[0, 0] = np.nan
    figures, findings = compare_outputs({"output": out}, None, None, Policy())
    assert [f.check for f in findings] == ["functional.nonfinite"] and figures["nonfinite_outputs"] == 1


def test_output_structure_changes_fail():
    ref = {"a": _logits(0), "b": _logits(1)}
    _, findings = compare_outputs({"a": ref["a"], "c": ref["b"]}, ref, None, Policy())
    assert [f.check for f in findings] == ["functional.outputs"] and "['b']" in findings[0].message
    _, findings = compare_outputs({"a": ref["a"][:, :3], "b": ref["b"]}, ref, None, Policy())
    assert [f.check for f in findings] == ["functional.outputs"]


DENSE = {"module": "keras.layers", "class_name": "Dense", "config": {"name": "d", "units": 2}, "registered_name": None}


def _model(*layers) -> dict:
    return {"module": "keras", "class_name": "Sequential", "config": {"name": "m", "layers": list(layers)}}


@pytest.mark.parametrize(
    ("layer", "reason"),
    [
        ({"module": "keras.layers", "class_name": "Lambda", "config": {"name": "scale"}}, "'scale' is a Lambda"),
        ({"class_name": "__lambda__", "config": {"code": "..."}}, "__lambda__"),
        ({"module": None, "class_name": "MyLayer", "registered_name": "Custom>MyLayer", "config": {}}, "custom"),
        ({"module": "os", "class_name": "function", "config": "system"}, "module 'os'"),
        (
            {"module": "keras.layers", "class_name": "TFSMLayer", "config": {"name": "t", "filepath": "/srv/m"}},
            "layer 't' is a TFSMLayer: it would load the SavedModel at '/srv/m', outside this file",
        ),
        (
            {"module": "keras.layers", "class_name": "StringLookup", "config": {"name": "v", "vocabulary": "/etc/x"}},
            "layer 'v' reads its vocabulary from '/etc/x', outside this file",
        ),
    ],
)
def test_keras_configs_that_would_run_code_are_refused(layer, reason):
    why = keras_config_refusal(_model(DENSE, layer))
    assert why is not None and reason in why


def test_deeply_nested_keras_configs_are_walked_without_recursion():
    deep: dict = {"module": "keras.layers", "class_name": "Lambda", "config": {"name": "deep"}}
    for _ in range(50_000):
        deep = {"config": {"layers": [deep]}}
    assert "'deep' is a Lambda layer" in (keras_config_refusal(deep) or "")


def test_plain_keras_configs_pass():
    assert keras_config_refusal(_model(DENSE, {**DENSE, "config": {"activation": "relu", "name": "e"}})) is None
    lookup = {"module": "keras.layers", "class_name": "StringLookup", "config": {"name": "v", "vocabulary": None}}
    assert keras_config_refusal(_model(lookup)) is None  # Keras keeps the vocabulary in the archive's assets
    assert keras_config_refusal(None) is not None
