"""History.expected computes every tensor's expected change at once (issue 15): the same
numbers, bit for bit, as _series tensor by tensor, whatever a row holds (NaN where a tensor was
absent, zeros, Inf, negative figures, ties, float32-rounded figures, any window width)."""

from __future__ import annotations

import numpy as np
import pytest

from ckptwatch.verify.history import History, _series, _series_of_rows


def _rows(rng: np.random.Generator, n: int, width: int, kind: int) -> np.ndarray:
    x = np.exp(rng.normal(-4, 2, size=(n, width)))
    x[rng.random(x.shape) < 0.2] = np.nan
    x[rng.random(x.shape) < 0.05] = 0.0
    x[rng.random(x.shape) < 0.02] = np.inf
    x[rng.random(x.shape) < 0.02] = -1.0
    if kind == 1:
        x = x.astype(np.float32).astype(np.float64)
    elif kind == 2:
        x[:, :] = x[:, :1]  # every change the same: ties everywhere
    elif kind == 3:
        x = np.round(x, 3)  # some ties
    return x


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return (a.count, a.median, a.maximum, a.log_mad) == (b.count, b.median, b.maximum, b.log_mad)


@pytest.mark.parametrize("width", [0, 1, 2, 3, 4, 5, 7, 8, 9, 16, 32, 33])
def test_rows_at_once_are_series_one_by_one(width: int) -> None:
    rng = np.random.default_rng(width)
    for kind in range(4):
        x = _rows(rng, 400, width, kind)
        got = _series_of_rows(x)
        assert len(got) == len(x)
        assert all(_same(g, _series(row)) for g, row in zip(got, x, strict=True))


def test_expected_is_series_per_tensor() -> None:
    rng = np.random.default_rng(1)
    names = [f"t{i}" for i in range(300)]
    change = _rows(rng, len(names), 12, 0).astype(np.float32)
    arrays = {k: np.full_like(change, np.nan) for k in ("growth", "changed", "norm", "previous_norm")}
    entries = {"step": np.arange(12.0) * 10, "gap": rng.choice([10.0, 20.0, np.nan], 12)}
    entries |= {k: np.full(12, np.nan) for k in ("global_change", "accuracy", "golden_met")}
    history = History(names, {"change": change, **arrays}, entries)
    asked = [*names[::3], "absent", names[0]]
    for gap in (None, 5.0, 40.0):
        got = history.expected(asked, gap)
        scaled = history.arrays["change"].astype(np.float64) * history.scale_to(gap)
        want = {n: e for n in asked if n in history.index and (e := _series(scaled[history.index[n]])) is not None}
        assert list(got) == list(want)
        assert all(_same(got[n], want[n]) for n in want)


def test_settings_once_per_tensor_are_the_policys() -> None:
    from ckptwatch.policy import Override, Policy
    from ckptwatch.verify.change import Settings, _group_of, group_of

    names = [("a/kernel", "a/kernel"), ("b/bias/.ATTRIBUTES/VARIABLE_VALUE", "b/bias"), ("c/beta", "x/beta")]
    for policy in (
        Policy(),
        Policy(exclude=["*kernel*"], frozen=["x/*"], overrides=[Override(pattern="*bias", max_jump=0.1, atol=1.0)]),
    ):
        settings = Settings(policy)
        for _ in range(2):
            assert [settings(n, d) for n, d in names] == [policy.settings_for(n, d) for n, d in names]
    for display, shape in [("a/kernel", (2, 2)), ("b/moving_mean", (3,)), ("w", (4, 4)), ("v", (4,)), ("v", ())]:
        assert (
            group_of(display, shape) == group_of(display, shape) == _group_of(display.rsplit("/")[-1], len(shape) >= 2)
        )
