"""One set of numbers (issue 15): `diff` and `verify` agree on the same pair, `diff` exits
non-zero on a corrupt side, and a tensor with no finite value has NaN statistics."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.demo.checkpoints import flip_a_bit
from ckptwatch.verify.stats import StatsAccumulator
from tests.conftest import copy_checkpoint

FIGURES = ("relative_l2", "max_abs", "cosine", "changed_fraction")


@pytest.mark.parametrize("flag", [(), ("--include-optimizer",)], ids=["weights", "with-optimizer"])
def test_verify_and_diff_give_the_same_overall_figures(run_cli, keras_run, flag) -> None:
    v = run_cli("verify", keras_run.candidate, "--previous", keras_run.previous, *flag, "--json")
    d = run_cli("diff", keras_run.candidate, keras_run.previous, *flag, "--json")
    assert v.returncode == 0 and d.returncode == 0, (v.stderr, d.stderr)
    verified, diffed = v.json()["drift"]["previous"], d.json()["drift"]
    for key in FIGURES:
        assert diffed[key] == pytest.approx(verified[key], rel=1e-12), key
    assert d.json()["include_optimizer"] is bool(flag)


def test_diff_leaves_the_iteration_counter_out_by_default(run_cli, keras_run) -> None:
    plain = run_cli("diff", keras_run.candidate, keras_run.previous, "--json").json()
    every = run_cli("diff", keras_run.candidate, keras_run.previous, "--include-optimizer", "--json").json()
    # one epoch of 4 batches moved the iteration counter by 4: only the flag lets it into max abs
    assert plain["drift"]["max_abs"] < 1 <= every["drift"]["max_abs"]
    assert len(plain["tensors"]) == len(every["tensors"])  # every tensor is still listed


@pytest.mark.parametrize("side", ["a", "b"])
def test_diff_exits_1_when_either_side_is_corrupt(run_cli, keras_run, tmp_path: Path, side: str) -> None:
    bad = copy_checkpoint(keras_run.candidate if side == "a" else keras_run.previous, tmp_path / "bad")
    flip_a_bit(bad)
    a, b = (bad, keras_run.previous) if side == "a" else (keras_run.candidate, bad)
    r = run_cli("diff", a, b, "--json")
    assert r.returncode == 1, r.stderr
    doc = r.json()
    assert doc["corrupt"] == [side]
    assert any(f["check"] == "integrity.checksum" for f in doc["findings"])
    human = run_cli("diff", a, b)
    assert human.returncode == 1 and "integrity.checksum" in human.stdout


def test_diff_of_a_sound_pair_says_nothing_is_corrupt(run_cli, keras_run) -> None:
    r = run_cli("diff", keras_run.candidate, keras_run.previous, "--json")
    assert r.returncode == 0 and r.json()["corrupt"] == []


def test_all_nan_statistics_are_nan_not_zero() -> None:
    acc = StatsAccumulator()
    acc.update(np.full(10, np.nan, dtype=np.float32))
    s = acc.result()
    assert (s.count, s.nan) == (10, 10)
    for key in ("mean", "std", "min", "max", "l2"):
        assert math.isnan(getattr(s, key)), key
    empty = StatsAccumulator().result()  # no value at all: zeros, as before
    assert empty.count == 0 and empty.mean == 0.0


def test_inspect_shows_an_all_nan_tensor_as_nan(run_cli, tf, tmp_path: Path) -> None:
    ckpt = tf.train.Checkpoint(
        nan=tf.Variable(np.full((4, 4), np.nan, dtype=np.float32)), ok=tf.Variable(np.ones(3, dtype=np.float32))
    )
    prefix = ckpt.write(str(tmp_path / "ckpt-1"))
    doc = run_cli("inspect", prefix, "--json").json()
    (t,) = [t for t in doc["tensors"] if t["name"].startswith("nan/")]
    assert t["stats"]["nan"] == 16 and t["stats"]["mean"] is None  # JSON has no NaN: null, never 0
    human = run_cli("inspect", prefix)
    (line,) = [ln for ln in human.stdout.splitlines() if ln.startswith("nan")]
    assert "nan" in line.split()[5:] and " 0 " not in f" {' '.join(line.split()[5:9])} "
