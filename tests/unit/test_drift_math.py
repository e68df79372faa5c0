"""Property tests: the chunked statistics, drift sums and chunk re-slicing agree
with a plain numpy float64 reference, whatever the chunk boundaries."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from ckptwatch.formats.base import IntegrityError
from ckptwatch.verify.drift import TINY_NORM, PairSums
from ckptwatch.verify.engine import aligned
from ckptwatch.verify.stats import StatsAccumulator

SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# -- strategies ---------------------------------------------------------------------------------------


def float_arrays(dtype) -> st.SearchStrategy[np.ndarray]:
    width = 32 if dtype == np.float32 else 64
    return hnp.arrays(
        dtype,
        st.integers(1, 300),
        # values below ~1e-100 are left out here: see test_tiny_float64_values_do_not_crash_the_statistics
        elements=st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=width).map(
            lambda v: 0.0 if abs(v) < 1e-30 else v
        ),
    )


@st.composite
def offset_arrays(draw) -> np.ndarray:
    """A large mean against a small spread: where naive power sums lose everything."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(2, 400))
    mean = draw(st.sampled_from([-1.0, 1.0])) * draw(st.floats(1.0, 10.0)) * 10.0 ** draw(st.integers(-3, 8))
    rel_std = draw(st.sampled_from([1e-1, 1e-3, 1e-5, 1e-7]))
    seed = draw(st.integers(0, 2**32 - 1))
    dist = draw(st.sampled_from(["normal", "exponential", "uniform"]))
    rng = np.random.default_rng(seed)
    z = {"normal": rng.normal, "exponential": rng.exponential, "uniform": rng.uniform}[dist](size=n)
    return (mean + abs(mean) * rel_std * z).astype(dtype)


@st.composite
def with_nonfinite(draw, base: st.SearchStrategy[np.ndarray]) -> np.ndarray:
    x = draw(base).copy()
    k = draw(st.integers(0, min(5, x.size)))
    positions = draw(st.lists(st.integers(0, x.size - 1), min_size=k, max_size=k, unique=True))
    for p in positions:
        x[p] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    return x


arrays = st.one_of(
    float_arrays(np.float32),
    float_arrays(np.float64),
    offset_arrays(),
    with_nonfinite(float_arrays(np.float32)),
    with_nonfinite(float_arrays(np.float64)),
    with_nonfinite(offset_arrays()),
    hnp.arrays(st.sampled_from([np.int8, np.int32, np.int64, np.float16]), st.integers(1, 200)).filter(
        lambda a: a.dtype != np.float16 or np.all(np.abs(a[np.isfinite(a)]) < 6e4)
    ),
)


@st.composite
def chunked(draw, x: np.ndarray) -> list[np.ndarray]:
    """x cut at arbitrary boundaries (empty chunks included)."""
    cuts = draw(st.lists(st.integers(0, x.size), max_size=12))
    return np.split(x, sorted(cuts))


# -- statistics ---------------------------------------------------------------------------------------


def reference_stats(x: np.ndarray) -> dict:
    x64 = x.astype(np.float64)
    finite = x64[np.isfinite(x64)]
    n = finite.size
    out = {
        "count": x.size,
        "nan": int(np.isnan(x64).sum()),
        "inf": int(np.isinf(x64).sum()),
        "zero_fraction": float(np.count_nonzero(x64 == 0)) / x.size,
    }
    if n == 0:
        return {**out, "n": 0}
    mean = math.fsum(finite) / n
    d = finite - mean
    m2, m3, m4 = math.fsum(d * d), math.fsum(d**3), math.fsum(d**4)
    return {
        **out,
        "n": n,
        "mean": mean,
        "std": math.sqrt(m2 / n),
        "min": float(finite.min()),
        "max": float(finite.max()),
        "l2": math.sqrt(math.fsum(finite * finite)),
        "skewness": math.sqrt(n) * m3 / m2**1.5 if m2**1.5 > 0 else 0.0,
        "kurtosis": n * m4 / (m2 * m2) - 3.0 if m2 * m2 > 0 else 0.0,
        "scale": float(np.abs(finite).max()),
    }


def accumulate(chunks: list[np.ndarray]):
    acc = StatsAccumulator()
    for c in chunks:
        acc.update(c)
    return acc.result()


@SETTINGS
@given(st.data())
def test_stats_match_numpy_for_any_chunking(data) -> None:
    x = data.draw(arrays)
    chunks = data.draw(chunked(x))
    got, want = accumulate(chunks), reference_stats(x)
    assert got.count == want["count"]
    assert got.nan == want["nan"] and got.inf == want["inf"]
    assert got.zero_fraction == want["zero_fraction"]
    if want["n"] == 0:  # empty: zeros; values but none finite: NaN, never "mean 0" (issue 15)
        figures = (got.mean, got.std, got.l2)
        assert figures == (0.0, 0.0, 0.0) if want["count"] == 0 else all(map(math.isnan, figures)), figures
        return
    scale = want["scale"]
    assert got.min == want["min"] and got.max == want["max"]
    assert got.mean == pytest.approx(want["mean"], rel=1e-12, abs=1e-12 * scale)
    assert got.std == pytest.approx(want["std"], rel=1e-8, abs=1e-12 * scale)
    assert got.l2 == pytest.approx(want["l2"], rel=1e-10)
    if want["std"] > 1e-4 * scale and want["n"] >= 3:  # spread not negligible against the values
        assert got.skewness == pytest.approx(want["skewness"], rel=1e-6, abs=1e-6)
        assert got.kurtosis == pytest.approx(want["kurtosis"], rel=1e-6, abs=1e-6)
    for v in (got.mean, got.std, got.l2, got.skewness, got.kurtosis):
        assert math.isfinite(v)


@SETTINGS
@given(offset_arrays(), st.data())
def test_large_mean_small_spread_keeps_its_shape(x: np.ndarray, data) -> None:
    """Merged chunk moments keep skewness/kurtosis where raw power sums would cancel out."""
    want = reference_stats(x)
    assume(want["std"] > 1e-6 * want["scale"])
    got = accumulate(data.draw(chunked(x)))
    assert got.std == pytest.approx(want["std"], rel=1e-6)
    assert got.skewness == pytest.approx(want["skewness"], rel=1e-4, abs=1e-4)
    assert got.kurtosis == pytest.approx(want["kurtosis"], rel=1e-4, abs=1e-4)


def test_chunking_does_not_change_the_result_beyond_rounding() -> None:
    x = np.random.default_rng(0).normal(5.0, 2.0, size=10_000)
    whole = accumulate([x])
    for k in (1, 7, 1000, 9999):
        parts = accumulate(np.array_split(x, k))
        assert parts.mean == pytest.approx(whole.mean, rel=1e-13)
        assert parts.std == pytest.approx(whole.std, rel=1e-12)
        assert parts.kurtosis == pytest.approx(whole.kurtosis, rel=1e-9, abs=1e-12)
        assert parts.skewness == pytest.approx(whole.skewness, rel=1e-9, abs=1e-12)


def test_all_nonfinite_and_constant_tensors() -> None:
    s = accumulate([np.array([np.nan, np.inf], np.float32), np.array([-np.inf], np.float32)])
    assert (s.count, s.nan, s.inf) == (3, 1, 2)
    assert math.isnan(s.mean) and math.isnan(s.std)  # no finite value: NaN, never "mean 0" (issue 15)
    c = accumulate([np.full(10, 3.5, np.float32), np.full(5, 3.5, np.float32)])
    assert (c.mean, c.std, c.skewness, c.kurtosis, c.min, c.max) == (3.5, 0.0, 0.0, 0.0, 3.5, 3.5)
    z = accumulate([np.zeros(4), np.array([-0.0, 1.0])])
    assert z.zero_fraction == 5 / 6


@pytest.mark.parametrize("x", [[0.0, 1e-160], [1e-160, 3e-160, 0.0, 2e-160]])
def test_tiny_float64_values_do_not_crash_the_statistics(x: list[float]) -> None:
    s = accumulate([np.array(x)])
    assert math.isfinite(s.skewness) and math.isfinite(s.kurtosis)


# -- drift ---------------------------------------------------------------------------------------------


def reference_drift(c: np.ndarray, r: np.ndarray) -> dict:
    c64, r64 = c.astype(np.float64), r.astype(np.float64)
    both = np.isfinite(c64) & np.isfinite(r64)
    cf, rf = c64[both], r64[both]
    d = cf - rf
    diff_sq, cc, rr, dot = (math.fsum(v) for v in (d * d, cf * cf, rf * rf, cf * rf))
    ref_norm, cand_norm = math.sqrt(rr), math.sqrt(cc)
    # the docstring's rule: divide by ||r||; when ||r|| is zero or tiny, by max(||r||, ||c||); both zero -> 0
    denom = ref_norm if ref_norm > TINY_NORM else max(ref_norm, cand_norm)
    rel = math.sqrt(diff_sq) / denom if denom > TINY_NORM else 0.0
    if cc > 0 and rr > 0:
        cos = max(-1.0, min(1.0, dot / math.sqrt(cc * rr)))
    else:
        cos = 1.0 if cc == 0 and rr == 0 else 0.0
    same = (c64 == r64) | (np.isnan(c64) & np.isnan(r64))
    return {
        "relative_l2": rel,
        "max_abs": float(np.abs(d).max()) if d.size else 0.0,
        "cosine": cos,
        "changed_fraction": float(np.count_nonzero(~same)) / c.size,
    }


@st.composite
def pairs(draw) -> tuple[np.ndarray, np.ndarray]:
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    n = draw(st.integers(1, 300))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    ref_scale = draw(st.sampled_from([0.0, 1e-20, 1e-14, 1e-13, 1e-6, 1.0, 1e4]))
    r = (rng.normal(size=n) * ref_scale).astype(dtype)
    kind = draw(st.sampled_from(["noise", "same", "sparse", "unrelated", "zero", "scaled"]))
    step = draw(st.sampled_from([1e-6, 1e-3, 1.0]))
    if kind == "noise":
        c = r + rng.normal(size=n).astype(dtype) * step
    elif kind == "same":
        c = r.copy()
    elif kind == "sparse":
        c = r.copy()
        c[rng.integers(0, n, size=max(1, n // 10))] += step
    elif kind == "unrelated":
        c = rng.normal(size=n).astype(dtype) * draw(st.sampled_from([1e-14, 1.0]))
    elif kind == "zero":
        c = np.zeros(n, dtype)
    else:
        c = r * draw(st.sampled_from([-1.0, 0.5, 3.0]))
    c = c.astype(dtype)
    if draw(st.booleans()):  # NaN / Inf here and there, sometimes at the same place in both
        for arr in (c, r):
            for p in draw(st.lists(st.integers(0, n - 1), max_size=3)):
                arr[p] = draw(st.sampled_from([np.nan, np.inf, -np.inf]))
    ref_dtype = draw(st.sampled_from([dtype, np.float64]))  # mixed precision is allowed too
    return c, r.astype(ref_dtype)


@SETTINGS
@given(pairs(), st.data())
def test_pair_sums_match_numpy_for_any_chunking(pair: tuple[np.ndarray, np.ndarray], data) -> None:
    c, r = pair
    cuts = sorted(data.draw(st.lists(st.integers(0, c.size), max_size=10)))
    sums = PairSums()
    for cc, rr in zip(np.split(c, cuts), np.split(r, cuts)):
        sums.update(cc, rr)
    got, want = sums.drift(), reference_drift(c, r)
    assert sums.count == c.size
    for k in ("relative_l2", "max_abs", "cosine", "changed_fraction"):
        assert math.isfinite(getattr(got, k)), k
    assert got.changed_fraction == want["changed_fraction"]
    assert got.max_abs == want["max_abs"]
    assert got.relative_l2 == pytest.approx(want["relative_l2"], rel=1e-9, abs=1e-12)
    assert got.cosine == pytest.approx(want["cosine"], abs=1e-9)
    assert -1.0 <= got.cosine <= 1.0 and got.relative_l2 >= 0


def test_drift_of_zero_and_tiny_references_is_finite() -> None:
    zero = np.zeros(8, np.float32)
    moved = np.full(8, 0.25, np.float32)
    s = PairSums()
    s.update(moved, zero)  # a bias that started at zero
    d = s.drift()
    assert d.relative_l2 == 1.0 and d.cosine == 0.0 and d.changed_fraction == 1.0 and d.max_abs == 0.25
    s = PairSums()
    s.update(zero, zero)
    assert s.drift().relative_l2 == 0.0 and s.drift().cosine == 1.0 and s.drift().changed_fraction == 0.0
    tiny = np.full(8, 1e-15)
    s = PairSums()
    s.update(moved.astype(np.float64), tiny)
    d = s.drift()
    assert math.isfinite(d.relative_l2) and d.relative_l2 == pytest.approx(1.0, rel=1e-12)


def test_pair_sums_add_across_tensors() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=70)
    a2, b2 = a + 0.1 * rng.normal(size=50), b * 1.5
    total = PairSums()
    for c, r in ((a2, a), (b2, b)):
        s = PairSums()
        s.update(c, r)
        total.add(s)
    want = reference_drift(np.concatenate([a2, b2]), np.concatenate([a, b]))
    assert total.drift().relative_l2 == pytest.approx(want["relative_l2"], rel=1e-12)
    assert total.drift().cosine == pytest.approx(want["cosine"], abs=1e-12)
    assert total.count == 120


def test_atol_rtol_count_elements_not_close() -> None:
    r = np.array([1.0, 100.0, 0.0, 5.0])
    c = np.array([1.0 + 2e-5, 100.0 + 5e-4, 3e-6, 6.0])
    s = PairSums()
    s.update(c, r, atol=1e-6, rtol=1e-5)
    # |diff| > atol + rtol * |ref|: 2e-5 > 1.1e-5, 3e-6 > 1e-6 and 1 > 6e-5 are not close; 5e-4 <= 1.001e-3 is
    assert s.not_close == 3
    assert s.drift().not_close == 3


# -- aligned(): re-slicing chunk streams to common boundaries ---------------------------------------------


class Reader:
    """A stream like BundleSource.read: it reuses one buffer for every chunk, and
    runs an end-of-tensor check after the last chunk."""

    def __init__(self, values: np.ndarray, sizes: list[int], fail_at_end: bool = False):
        self.values, self.sizes, self.fail_at_end = values, sizes, fail_at_end
        self.finished = False
        self.chunks_served = 0

    def __iter__(self):
        buf = np.empty(max(self.sizes, default=1) or 1, self.values.dtype)
        pos = 0
        for size in self.sizes:
            buf[:size] = self.values[pos : pos + size]
            pos += size
            self.chunks_served += 1
            yield buf[:size]
            buf[:] = -12345  # what a reused buffer looks like once the reader moved on
        self.finished = True
        if self.fail_at_end:
            raise IntegrityError("integrity.checksum", "checksum does not match", "t")


@st.composite
def sizes_for(draw, n: int) -> list[int]:
    cuts = sorted(draw(st.lists(st.integers(0, n), max_size=15)))
    bounds = [0, *cuts, n]
    return [b - a for a, b in itertools.pairwise(bounds)]  # zero-length chunks included


@SETTINGS
@given(st.data())
def test_aligned_reslices_streams_with_different_boundaries(data) -> None:
    n = data.draw(st.integers(0, 200))
    k = data.draw(st.integers(1, 4))
    rng = np.random.default_rng(data.draw(st.integers(0, 1000)))
    values = [rng.normal(size=n).astype(data.draw(st.sampled_from([np.float32, np.float64]))) for _ in range(k)]
    readers = [Reader(v, data.draw(sizes_for(n))) for v in values]
    pieces: list[list[np.ndarray]] = [[] for _ in range(k)]
    for chunks in aligned([iter(r) for r in readers]):
        assert len(chunks) == k
        lengths = {len(c) for c in chunks}
        assert len(lengths) == 1 and lengths != {0}
        for i, c in enumerate(chunks):
            pieces[i].append(c.copy())  # used right away, as the engine does
    for i in range(k):
        got = np.concatenate(pieces[i]) if pieces[i] else np.empty(0, values[i].dtype)
        np.testing.assert_array_equal(got, values[i])
        assert readers[i].finished, "every stream must be driven to its end (checksums run there)"


@pytest.mark.parametrize("failing", [0, 1])
def test_aligned_surfaces_end_of_stream_checks(failing: int) -> None:
    values = np.arange(10, dtype=np.float32)
    readers = [Reader(values, [3, 3, 4], fail_at_end=failing == 0), Reader(values, [5, 5], fail_at_end=failing == 1)]
    with pytest.raises(IntegrityError, match="checksum"):
        for _ in aligned([iter(r) for r in readers]):
            pass


def test_aligned_with_empty_tensors() -> None:
    readers = [Reader(np.empty(0), []), Reader(np.empty(0), [0, 0])]
    assert list(aligned([iter(r) for r in readers])) == []
    assert all(r.finished for r in readers)
