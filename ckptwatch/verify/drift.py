"""Drift between a candidate tensor and a reference tensor, accumulated by chunk.

relative_l2 = ||c - r|| / ||r||. When ||r|| is zero or tiny (a bias that started
at zero) we divide by max(||r||, ||c||) instead, so the figure stays finite and
means "how much of the larger tensor changed"; both zero gives 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ckptwatch.verify.stats import stats_kernels

TINY_NORM = 1e-12


@dataclass(frozen=True)
class Drift:
    relative_l2: float
    max_abs: float
    cosine: float
    changed_fraction: float
    mean_diff: float = 0.0  # candidate mean - reference mean
    std_diff: float = 0.0
    not_close: int = 0  # elements outside atol + rtol * |reference|
    estimated: bool = False  # from a fingerprint's sample rather than every element

    def to_dict(self) -> dict:  # not dataclasses.asdict: it deep-copies, and reports hold thousands
        return {
            "relative_l2": self.relative_l2, "max_abs": self.max_abs, "cosine": self.cosine,
            "changed_fraction": self.changed_fraction, "mean_diff": self.mean_diff, "std_diff": self.std_diff,
            "not_close": self.not_close, "estimated": self.estimated,
        }  # fmt: skip


def relative_l2(diff_sq: float, ref_sq: float, cand_sq: float) -> float:
    ref = math.sqrt(max(ref_sq, 0.0))
    denom = ref if ref > TINY_NORM else math.sqrt(max(cand_sq, 0.0))
    return math.sqrt(max(diff_sq, 0.0)) / denom if denom > TINY_NORM else 0.0


def cosine(dot: float, cand_sq: float, ref_sq: float) -> float:
    if cand_sq <= 0.0 or ref_sq <= 0.0:
        return 1.0 if cand_sq <= 0.0 and ref_sq <= 0.0 else 0.0
    return max(-1.0, min(1.0, dot / math.sqrt(cand_sq * ref_sq)))


@dataclass(frozen=True)
class ReferenceStats:
    """What drift rules need of a reference tensor (TensorStats has these too)."""

    count: int
    mean: float
    std: float
    l2: float
    zero_fraction: float


@dataclass
class PairSums:
    """Sufficient sums for drift; they add across chunks and across tensors."""

    diff_sq: float = 0.0
    dot: float = 0.0
    cand_sq: float = 0.0
    ref_sq: float = 0.0
    max_abs: float = 0.0
    changed: int = 0
    not_close: int = 0
    count: int = 0
    estimated: bool = False  # from fingerprint samples
    ref_sum: float = 0.0
    ref_zeros: int = 0

    def add(self, other: PairSums) -> None:
        self.estimated |= other.estimated
        self.diff_sq += other.diff_sq
        self.dot += other.dot
        self.cand_sq += other.cand_sq
        self.ref_sq += other.ref_sq
        self.max_abs = max(self.max_abs, other.max_abs)
        self.changed += other.changed
        self.not_close += other.not_close
        self.count += other.count
        self.ref_sum += other.ref_sum
        self.ref_zeros += other.ref_zeros

    def update(self, cand: np.ndarray, ref: np.ndarray, atol: float = 0.0, rtol: float = 0.0) -> None:
        kernels = stats_kernels()  # numba loads on first use: the daemon's main process never does
        c, r = kernels.as_float(cand), kernels.as_float(ref)
        if c.dtype != r.dtype:
            c, r = c.astype(np.float64), r.astype(np.float64)
        out = kernels.pair_finite(c, r, atol, rtol)
        if not math.isfinite(out[0] + out[1] + out[2] + out[3]):
            out = kernels.pair_masked(c, r, atol, rtol)
        ss, dot, cc, rr, mx, changed, far, rs, rz = out
        self.add(PairSums(ss, dot, cc, rr, mx, changed, far, c.size, False, rs, rz))

    def reference_stats(self) -> ReferenceStats:
        """The reference's mean, std, L2 and zero fraction, from the same pass as the drift."""
        n = max(self.count, 1)
        mean = self.ref_sum / n
        var = max(self.ref_sq / n - mean * mean, 0.0)
        return ReferenceStats(self.count, mean, math.sqrt(var), math.sqrt(max(self.ref_sq, 0.0)), self.ref_zeros / n)

    def drift(self, mean_diff: float = 0.0, std_diff: float = 0.0) -> Drift:
        return Drift(
            relative_l2=relative_l2(self.diff_sq, self.ref_sq, self.cand_sq),
            max_abs=self.max_abs,
            cosine=cosine(self.dot, self.cand_sq, self.ref_sq),
            changed_fraction=self.changed / self.count if self.count else 0.0,
            mean_diff=mean_diff,
            std_diff=std_diff,
            not_close=self.not_close,
            estimated=self.estimated,
        )
