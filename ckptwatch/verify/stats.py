"""Per-tensor statistics, accumulated chunk by chunk.

Moments are merged with Pébay's pairwise formulas (centred sums per chunk), so
skewness and kurtosis stay accurate when the mean is large against the spread,
which raw power sums would not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

_KERNELS = None  # ckptwatch.verify.kernels, once loaded


def _load_kernels():
    """numba loads on first use: the daemon's main process never does (and an import statement
    per chunk costs more than the statistics of a small tensor)."""
    global _KERNELS
    from ckptwatch.verify import kernels

    _KERNELS = kernels
    return kernels


def stats_kernels():
    """ckptwatch.verify.kernels, loaded on first use."""
    return _KERNELS or _load_kernels()


@dataclass(frozen=True)
class TensorStats:
    count: int  # elements (finite and non-finite)
    mean: float
    std: float
    min: float
    max: float
    l2: float
    zero_fraction: float
    skewness: float
    kurtosis: float  # excess kurtosis: 0 for a normal distribution
    nan: int = 0
    inf: int = 0

    @property
    def nonfinite(self) -> int:
        return self.nan + self.inf

    def to_dict(self) -> dict:
        return {
            "count": self.count, "mean": self.mean, "std": self.std, "min": self.min, "max": self.max,
            "l2": self.l2, "zero_fraction": self.zero_fraction, "skewness": self.skewness,
            "kurtosis": self.kurtosis, "nan": self.nan, "inf": self.inf,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> TensorStats:
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


class StatsAccumulator:
    """Feed chunks with `update`, read `result()` at the end."""

    def __init__(self) -> None:
        self.n = 0  # finite values
        self.mean = self.m2 = self.m3 = self.m4 = 0.0
        self.min, self.max = math.inf, -math.inf
        self.zeros = self.nan = self.inf = 0

    def update(self, chunk: np.ndarray) -> None:
        kernels = _KERNELS or _load_kernels()
        x = kernels.as_float(chunk)
        if x.size == 0:
            return
        s, zeros, m2, m3, m4 = kernels.moments_finite(x)
        n = x.size
        if math.isfinite(s + m4):
            mn, mx = float(x.min()), float(x.max())
        else:  # NaN/Inf present, or x^4 overflowed: count them exactly
            n, nan, pinf, ninf, s, mn, mx, zeros, m2, m3, m4 = kernels.moments_masked(x)
            self.nan += nan
            self.inf += pinf + ninf
            if n == 0:
                return
        self._merge(n, s / n, m2, m3, m4)
        self.min, self.max = min(self.min, mn), max(self.max, mx)
        self.zeros += zeros

    def _merge(self, nb: int, mean_b: float, m2b: float, m3b: float, m4b: float) -> None:
        na = self.n
        if na == 0:
            self.n, self.mean, self.m2, self.m3, self.m4 = nb, mean_b, m2b, m3b, m4b
            return
        n = na + nb
        d = mean_b - self.mean
        dn = d / n
        self.m4 = (
            self.m4 + m4b
            + d * dn**3 * na * nb * (na * na - na * nb + nb * nb)
            + 6 * dn * dn * (na * na * m2b + nb * nb * self.m2)
            + 4 * dn * (na * m3b - nb * self.m3)
        )  # fmt: skip
        self.m3 = self.m3 + m3b + d * dn * dn * na * nb * (na - nb) + 3 * dn * (na * m2b - nb * self.m2)
        self.m2 = self.m2 + m2b + d * dn * na * nb
        self.mean += dn * nb
        self.n = n

    def result(self) -> TensorStats:
        return _finished(
            self.n, self.nan, self.inf, self.mean, self.m2, self.m3, self.m4, self.min, self.max, self.zeros
        )


def chunk_stats(n: int, s: float, zeros: int, m2: float, m3: float, m4: float, mn: float, mx: float) -> TensorStats:
    """What a StatsAccumulator fed one chunk of `n` (> 0) finite values, whose moments_finite
    were (s, zeros, m2, m3, m4) and whose min and max are mn, mx, gives: the same arithmetic."""
    return _finished(n, 0, 0, s / n, m2, m3, m4, mn, mx, zeros)


def _finished(
    n: int, nan: int, inf: int, mean: float, m2: float, m3: float, m4: float, mn: float, mx: float, zeros: int
) -> TensorStats:
    total = n + nan + inf
    if n == 0:  # empty: zeros; all NaN/Inf: no finite value to describe, so NaN (never "mean 0")
        v = 0.0 if total == 0 else math.nan
        zero_fraction = zeros / total if total else 0.0
        return TensorStats(total, v, v, v, v, v, zero_fraction, v, v, nan, inf)
    m2 = max(m2, 0.0)
    var = m2 / n
    # A spread far below float64 resolution of the mean is rounding noise, not
    # shape; a spread so small that m2**1.5 underflows has no usable shape either.
    denom3, denom4 = m2**1.5, m2 * m2
    flat = var <= (abs(mean) * 1e-12) ** 2 or denom3 == 0.0 or denom4 == 0.0
    skew = 0.0 if flat else math.sqrt(n) * m3 / denom3
    kurt = 0.0 if flat else n * m4 / denom4 - 3.0
    if not (math.isfinite(skew) and math.isfinite(kurt)):
        skew = kurt = 0.0
    return TensorStats(
        count=total,
        mean=mean,
        std=math.sqrt(var),
        min=mn,
        max=mx,
        l2=math.sqrt(m2 + n * mean * mean),
        zero_fraction=zeros / total,
        skewness=skew,
        kurtosis=kurt,
        nan=nan,
        inf=inf,
    )
