"""Drift judged against the run's own history (ckptwatch.verify.judge, .change, .history), on
simulated runs verified the way the daemon does (tests/simulated_run.py). Fast: no files, no TF."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from ckptwatch.policy import Policy
from ckptwatch.verify.history import Entry, History, HistoryError
from tests.simulated_run import (
    BIAS,
    HIDDEN,
    HIDDEN_BIAS,
    ITERATIONS,
    KERNEL,
    MEAN,
    OUT,
    OUT_BIAS,
    SAVE_COUNTER,
    simulate,
    verify_run,
)

HEALTHY = {
    "adam, warm-up from 0, saves every 10 steps": dict(saves=list(range(0, 400, 10)), warmup=50),
    "adam, a save every step": dict(saves=list(range(0, 80))),
    "adam, warm-up, a save every step": dict(saves=list(range(0, 80)), warmup=20),
    "momentum SGD, a save every step": dict(saves=list(range(0, 80)), optimizer="sgd", lr=0.05),
    "momentum SGD, saves every 20 steps": dict(saves=list(range(0, 800, 20)), optimizer="sgd", lr=0.02),
    "adam, large learning rate, saves every 50 steps": dict(saves=list(range(0, 2000, 50)), lr=3e-3),
    "adam, irregular saves": dict(saves=[0, 1, 2, 3, 5, 8, 10, 20, 50, 100, 101, 102, 150, 300, 301, 450, 500, 600]),
}


def problems(report, severity: str = "fail") -> set[tuple[str, str | None]]:
    return {(f.check, f.tensor) for f in report.findings if f.severity == severity}


def typical_change(run, name: str) -> float:
    return float(
        np.median([np.linalg.norm(b[name].astype(np.float64) - a[name]) for (_, a), (_, b) in itertools.pairwise(run)])
    )


def with_noise(arrays: dict, name: str, l2: float, seed: int = 5) -> dict:
    unit = np.random.default_rng(seed).normal(size=arrays[name].shape)
    return {**arrays, name: (arrays[name] + l2 * unit / np.linalg.norm(unit)).astype(np.float32)}


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("config", sorted(HEALTHY))
def test_healthy_runs_never_fail(config: str, seed: int) -> None:
    run = simulate(**HEALTHY[config], seed=seed)
    results, history = verify_run(run)
    failed = [(step, problems(r)) for step, r in results if r.verdict == "fail"]
    assert not failed, failed
    warned = [(step, problems(r, "warn")) for step, r in results if r.verdict == "warn"]
    assert len(warned) <= 2, warned  # a warm-up's unchanged first step, a momentum run's first big moves
    assert len(history) == min(len(run) - 1, Policy().history_window)


def test_three_times_the_typical_change_fails_once_there_is_history() -> None:
    run = simulate(saves=list(range(0, 400, 10)), warmup=50)
    position = 30
    noisy = with_noise(run[position][1], HIDDEN, 3 * typical_change(run, HIDDEN))
    results, _ = verify_run(run, replace={position: noisy})
    _step, report = results[position]
    assert problems(report) == {("drift.jump", HIDDEN)}
    (jump,) = [f for f in report.findings if f.check == "drift.jump"]
    assert jump.basis == "history" and jump.value > jump.limit
    assert jump.expected is not None and jump.expected["count"] == min(position - 1, 32)
    assert jump.expected["median"] < jump.limit <= 3 * jump.expected["median"]
    assert "this tensor's last" in jump.message and "over 10 steps" in jump.message and "limit" in jump.message
    doc = jump.to_dict()
    assert {"value", "limit", "expected", "basis"} <= set(doc)
    # the checkpoint after it is judged against the last one that passed (20 steps back): it passes
    assert results[position + 1][1].verdict == "pass"


def test_the_same_noise_before_there_is_history_only_warns_or_passes() -> None:
    run = simulate(saves=list(range(0, 400, 10)), warmup=50)
    noisy = with_noise(run[2][1], HIDDEN, 3 * typical_change(run, HIDDEN))
    results, _ = verify_run(run[:3], replace={2: noisy})
    assert results[2][1].verdict in ("pass", "warn")


def test_noise_of_80_percent_of_a_kernels_std_fails_with_history() -> None:
    """The issue's missed fault: noise of 0.8 std (relative L2 0.8) on a kernel whose healthy steps are ~0.02."""
    run = simulate(saves=list(range(0, 400, 10)), warmup=50)
    arrays = run[25][1]
    l2 = 0.8 * float(arrays[KERNEL].std()) * np.sqrt(arrays[KERNEL].size)
    results, _ = verify_run(run, replace={25: with_noise(arrays, KERNEL, l2)})
    assert ("drift.jump", KERNEL) in problems(results[25][1])


def test_a_near_zero_bias_first_real_update_does_not_fail() -> None:
    """A bias held at zero (its layer starts training later) gets its first update after the run has
    history: its own history is all zeros, its change is measured against its layer's scale."""
    run = simulate(saves=list(range(0, 300, 10)))
    start = 15
    base = run[start - 1][1][OUT_BIAS]
    late = [
        (s, {**a, OUT_BIAS: np.zeros(4, np.float32) if i < start else a[OUT_BIAS] - base})
        for i, (s, a) in enumerate(run)
    ]
    results, _ = verify_run(late)
    assert not [(s, problems(r)) for s, r in results if r.verdict == "fail"]
    assert ("drift.jump", OUT_BIAS) not in problems(results[start][1], "warn")


def test_a_bias_starting_at_zero_is_measured_against_its_layer() -> None:
    run = simulate(saves=[0, 10])
    report = verify_run(run)[0][1][1]
    assert report.verdict == "pass", [f.to_dict() for f in report.findings]
    entry = report.history_entry
    change, _growth, changed = entry.tensors[BIAS]
    assert 0 < change < 0.5 and changed == 1.0  # not inf: its own previous norm is 0


def test_a_layer_frozen_by_mistake_fails_after_frozen_after_checkpoints() -> None:
    run = simulate(saves=list(range(0, 300, 10)))
    start = 12
    frozen = {
        i: {**run[i][1], KERNEL: run[start - 1][1][KERNEL], BIAS: run[start - 1][1][BIAS]} for i in range(start, 20)
    }
    results, _ = verify_run(run, replace=frozen)
    verdicts = [results[i][1].verdict for i in range(start, start + 4)]
    assert verdicts == ["warn", "warn", "fail", "fail"]
    assert problems(results[start + 2][1]) == {("drift.frozen", KERNEL), ("drift.frozen", BIAS)}
    message = next(f.message for f in results[start + 2][1].findings if f.tensor == KERNEL)
    assert "3 checkpoint(s) in a row" in message and "it changed before" in message
    # listed as frozen: nothing to say
    quiet, _ = verify_run(run, Policy(frozen=["model/layer_with_weights-0/*"]), replace=frozen)
    assert all(r.verdict == "pass" for _, r in quiet[start : start + 4])
    # and a policy that waits longer
    patient, _ = verify_run(run, Policy(frozen_after=5), replace=frozen)
    assert [r.verdict for _, r in patient[start : start + 5]] == ["warn"] * 4 + ["fail"]


def test_a_layer_frozen_from_the_start_warns_once_then_is_only_reported() -> None:
    run = simulate(saves=list(range(0, 200, 10)))
    frozen = [(s, {**a, HIDDEN: run[0][1][HIDDEN], HIDDEN_BIAS: run[0][1][HIDDEN_BIAS]}) for s, a in run]
    results, _ = verify_run(frozen)
    assert results[1][1].verdict == "warn" and ("drift.frozen", HIDDEN) in problems(results[1][1], "warn")
    assert all(r.verdict == "pass" for _, r in results[2:])
    assert ("drift.frozen", HIDDEN) in problems(results[-1][1], "info")


def test_warm_up_from_zero_warns_a_duplicate_save_fails_a_run_that_never_moves_fails() -> None:
    run = simulate(saves=[0, 1, 10, 20, 30], warmup=10)
    results, _ = verify_run(run)
    assert results[1][1].verdict == "warn" and problems(results[1][1], "warn") == {("drift.unchanged", None)}
    assert [r.verdict for _, r in results[2:]] == ["pass"] * 3
    # a duplicate save: the same weights at the same training step
    dup, _ = verify_run(run, replace={3: run[2][1]})
    assert (
        problems(dup[3][1]) == {("drift.unchanged", None)} and "same training step 10" in dup[3][1].findings[0].message
    )
    # the optimizer never moves the weights, while the step counter advances
    stuck = [(s, {**run[0][1], ITERATIONS: a[ITERATIONS], SAVE_COUNTER: a[SAVE_COUNTER]}) for s, a in run]
    verdicts = [r.verdict for _, r in verify_run(stuck)[0][1:]]
    assert verdicts == ["warn", "warn", "fail", "fail"]


def test_moving_statistics_alone_moving_is_still_a_warm_up() -> None:
    run = simulate(saves=[0, 1, 10], warmup=10)
    arrays = dict(run[1][1])
    arrays[MEAN] = arrays[MEAN] + 0.01  # BatchNorm statistics follow the data even when lr is 0
    results, _ = verify_run(run, replace={1: arrays})
    assert problems(results[1][1], "warn") == {("drift.unchanged", None)}
    assert not problems(results[1][1], "fail")


def test_restart_and_reset_fail_with_history() -> None:
    run = simulate(saves=list(range(0, 400, 10)))
    position = 30
    restarted, _ = verify_run(run, replace={position: run[1][1]})  # the run's own early weights (same seed)
    assert ("drift.jump", KERNEL) in problems(restarted[position][1])
    other = simulate(saves=[0, 10], seed=99)[1][1]  # another seed: uncorrelated kernels, clear-cut
    results, _ = verify_run(run[:3], replace={2: other})
    assert ("drift.reset", KERNEL) in problems(results[2][1])


def test_explosion_of_one_layer_fails_without_history() -> None:
    run = simulate(saves=[0, 10, 20])
    boom = {**run[2][1], HIDDEN: run[2][1][HIDDEN] * np.float32(1000)}
    results, _ = verify_run(run, replace={2: boom})
    assert {("drift.jump", HIDDEN), ("drift.norm", HIDDEN)} <= problems(results[2][1])


def test_a_tensor_with_little_history_borrows_from_its_group() -> None:
    run = simulate(saves=list(range(0, 300, 10)))
    # OUT appears only at position 20: it has history of its own from there on
    late = [(s, {k: v for k, v in a.items() if k != OUT or i >= 20}) for i, (s, a) in enumerate(run)]
    noisy = with_noise(late[22][1], OUT, 20 * typical_change(run, OUT))
    results, _ = verify_run(late, replace={22: noisy})
    (jump,) = [f for f in results[22][1].findings if f.check == "drift.jump" and f.tensor == OUT]
    assert jump.severity == "fail" and jump.basis == "group:kernels" and "its group's (kernels)" in jump.message


# -- the history file ---------------------------------------------------------------------------


def entry(step: int, **tensors: float) -> Entry:
    return Entry(float(step), 10.0, 0.01, {k: (v, 1.0, 1.0 if v else 0.0) for k, v in tensors.items()}, f"ckpt-{step}")


def test_history_keeps_a_window_and_drops_tensors_gone_from_it(tmp_path) -> None:
    h = History.empty()
    for i in range(5):
        h = h.extended(entry(10 * i, a=0.01 * (i + 1), **({"b": 0.5} if i == 0 else {})), window=3)
    assert len(h) == 3 and h.names == ["a"] and list(h.entries["step"]) == [20.0, 30.0, 40.0]
    path = str(tmp_path / "h.npz")
    h.save(path)
    again = History.load(path)
    assert again.names == ["a"] and again.checkpoints == ["ckpt-20", "ckpt-30", "ckpt-40"]
    np.testing.assert_array_equal(again.arrays["change"], h.arrays["change"])
    assert again.expected(["a"], 10.0)["a"].count == 3


def test_past_changes_are_scaled_to_the_candidates_steps() -> None:
    h = History.empty()
    for i in range(6):
        h = h.extended(entry(10 * i, a=0.01))
    assert h.expected(["a"], 20.0)["a"].median == pytest.approx(0.02)  # more steps: linear, the lenient way
    assert h.expected(["a"], 2.5)["a"].median == pytest.approx(0.005)  # fewer: square root, the lenient way
    assert h.expected(["a"], None)["a"].median == pytest.approx(0.01)


def test_unchanged_runs_are_counted() -> None:
    h = History.empty()
    for v in (0.01, 0.01, 0.0, 0.0):
        h = h.extended(entry(0, a=v, b=0.0))
    assert h.unchanged_run("a") == (2, True)
    assert h.unchanged_run("b") == (4, False)
    assert h.unchanged_run("missing") == (0, False)


def test_a_bad_history_file_is_an_error_not_a_verdict(tmp_path) -> None:
    bad = tmp_path / "h.npz"
    bad.write_bytes(b"not a zip")
    with pytest.raises(HistoryError, match="unreadable"):
        History.load(str(bad))
    with pytest.raises(HistoryError, match="no such file"):
        History.load(str(tmp_path / "missing.npz"))
    np.savez(str(tmp_path / "other.npz"), meta=np.array('{"schema": "x"}'))
    with pytest.raises(HistoryError, match=r"not a ckptwatch\.history/v1"):
        History.load(str(tmp_path / "other.npz"))


# -- a run that continues from a checkpoint that failed -------------------------------------------


def test_a_reset_layer_that_keeps_training_keeps_failing() -> None:
    """The issue's reset-and-continue: a layer back at its initial values at p, trained on from
    there. Against the baseline (p-1) the later saves span more steps, so their change alone is
    within the history's limit; that they continue from the failed state is what fails them."""
    run = simulate(saves=list(range(0, 300, 10)))
    p, init = 14, run[0][1]
    layer = (HIDDEN, HIDDEN_BIAS)
    reset = {
        p + j: {**run[p + j][1], **{k: init[k] + (run[p + j][1][k] - run[p][1][k]) for k in layer}} for j in range(3)
    }
    results, _ = verify_run(run, replace=reset)
    assert [results[p + j][1].verdict for j in range(3)] == ["fail"] * 3
    for j in (1, 2):
        report = results[p + j][1]
        continues = [f for f in report.findings if f.severity == "fail" and "continues from" in f.message]
        assert {f.tensor for f in continues} <= set(layer) and continues, [f.to_dict() for f in report.findings]
        assert all(f.check == "drift.jump" and f.basis.startswith("failed checkpoint") for f in continues)
    # training that goes on from the healthy state after one bad save passes again
    transient, _ = verify_run(run, replace={p: with_noise(run[p][1], HIDDEN, 10 * typical_change(run, HIDDEN))})
    assert [transient[p + j][1].verdict for j in range(3)] == ["fail", "pass", "pass"]


def test_a_failed_checkpoint_is_noted_in_the_history_not_added() -> None:
    run = simulate(saves=list(range(0, 200, 10)))
    p = 12
    boom = {**run[p][1], HIDDEN: run[p][1][HIDDEN] * np.float32(1000)}
    results, history = verify_run(run[: p + 1], replace={p: boom})
    assert results[p][1].verdict == "fail"
    assert len(history) == p - 1 and history.rejected is not None
    assert history.rejected["checkpoint"] == f"ckpt-{run[p][0]}" and HIDDEN in history.rejected["tensors"]
    assert history.rejected["baseline"] == [f"ckpt-{run[p - 1][0]}"]


def test_the_note_of_a_failed_checkpoint_is_kept_in_the_file_and_dropped_by_a_pass(tmp_path) -> None:
    h = History.empty().extended(entry(10, a=0.01))
    note = {"checkpoint": "ckpt-20", "fingerprint": "f", "baseline": ["ckpt-10"], "tensors": {"a": 0.5}}
    path = str(tmp_path / "h.npz")
    h.with_rejected(note).save(path)
    again = History.load(path)
    assert again.rejected == note and len(again) == 1
    assert again.extended(entry(30, a=0.01)).rejected is None
