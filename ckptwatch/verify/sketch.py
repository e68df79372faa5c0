"""Compact per-tensor sketches for fingerprints: an exact content hash plus a
fixed sample of values, from which drift against a later checkpoint is estimated.

Sample positions are one per stratum of n/m elements, jittered by splitmix64 of
(n, i): deterministic across versions (no numpy RNG), never aligned with row
strides. With a full read the hash makes equality exact; the estimates are:
  relative_l2  sqrt(n/m * sum_sample (c - r)^2) / ||r||   (||r|| exact from stats)
  cosine       from exact norms and the estimated ||c - r||^2
  max_abs      max over the sample (a lower bound)
  changed      fraction of sampled values that differ
For dense changes (training updates, noise) the relative_l2 estimate has a
relative standard error of about 1/sqrt(2m) = 2.2% at m = 1024; sparse changes
(a few rows) may be missed by the sample, but never by the hash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import blake3
import numpy as np

from ckptwatch.verify.drift import PairSums
from ckptwatch.verify.stats import TensorStats, stats_kernels

SAMPLE_SIZE = 1024
_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def _splitmix64(z: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _M64


def sample_positions(n: int, m: int = SAMPLE_SIZE) -> np.ndarray:
    if n <= m:
        return np.arange(n, dtype=np.int64)
    i = np.arange(m, dtype=np.uint64)
    with np.errstate(over="ignore"):
        u = (_splitmix64(i ^ (np.uint64(n) * np.uint64(0xD1B54A32D192ED03))) >> np.uint64(11)).astype(np.float64)
    u /= float(1 << 53)
    ii = np.arange(m, dtype=np.int64)
    start = (ii * n) // m
    width = ((ii + 1) * n) // m - start
    return start + np.minimum((u * width).astype(np.int64), width - 1)


# A fingerprint keeps every `stride`-th of those values (a stride that is a power of two), so
# that its samples take at most 1/SAMPLE_SHARE of the tensor's bytes: one stratum in `stride`,
# still spread over the whole tensor. A sketch built while reading keeps all of them, and is
# thinned to a stored sketch's stride when compared with it.
SAMPLE_SHARE = 256
MIN_SAMPLE = 8


def stored_stride(count: int, nbytes: int) -> int:
    """The stride a fingerprint stores a tensor's sample at: samples (4 bytes each) within
    1/SAMPLE_SHARE of the tensor's bytes, but never fewer than MIN_SAMPLE values (nor all
    of a tiny tensor's: a stride of 1 keeps a tensor of up to MIN_SAMPLE values whole)."""
    m = min(count, SAMPLE_SIZE)
    budget = max(MIN_SAMPLE, nbytes // (4 * SAMPLE_SHARE))
    stride = 1
    while -(-m // stride) > budget and stride < SAMPLE_SIZE:
        stride *= 2
    return stride


@dataclass
class TensorSketch:
    hash: str  # "blake3:<hex>" of the bytes in storage order
    sample: np.ndarray  # float64 values at sample_positions(count)[::stride]
    count: int
    stride: int = 1

    @property
    def complete(self) -> bool:
        return self.stride == 1 and self.sample.size == self.count

    def thinned(self, stride: int) -> TensorSketch:
        """The sketch a fingerprint stores with `stride` (this one's stride divides it)."""
        if stride == self.stride:
            return self
        step = stride // self.stride
        return TensorSketch(self.hash, self.sample[::step], self.count, stride)


class SketchBuilder:
    """Feed the same chunks the checks see; `result()` after the last one."""

    def __init__(self, count: int, m: int = SAMPLE_SIZE):
        self.count = count
        self.positions = stats_kernels().sample_positions(count, m)  # sample_positions(count, m), compiled
        self.values = np.zeros(self.positions.size, dtype=np.float64)
        self.hasher = blake3.blake3()
        self.offset = 0
        self.k = 0

    def update(self, chunk: np.ndarray) -> None:
        self.hasher.update(np.ascontiguousarray(chunk).view(np.uint8).data)
        end = self.offset + chunk.size
        hi = int(np.searchsorted(self.positions, end))
        if hi > self.k:
            idx = self.positions[self.k : hi] - self.offset
            self.values[self.k : hi] = chunk[idx].astype(np.float64)
            self.k = hi
        self.offset = end

    def result(self) -> TensorSketch:
        return TensorSketch("blake3:" + self.hasher.hexdigest(), self.values, self.count)


MIN_DIGEST_HEX = 32  # a v2 fingerprint keeps 128 bits of each blake3 digest


def same_content(a: str, b: str) -> bool:
    """Equal content hashes; a stored digest may be cut to its first 128 bits."""
    if a == b:
        return True
    algo_a, _, hex_a = a.partition(":")
    algo_b, _, hex_b = b.partition(":")
    n = min(len(hex_a), len(hex_b))
    return algo_a == algo_b and n >= MIN_DIGEST_HEX and hex_a[:n] == hex_b[:n]


def estimate_sums(
    cand: TensorStats, cand_sketch: TensorSketch, ref: TensorStats, ref_sketch: TensorSketch, atol: float, rtol: float
) -> tuple[PairSums, bool]:
    """Drift sums estimated from two sketches; (sums, estimated). Equal hashes are exact."""
    cand_sq, ref_sq = cand.l2 * cand.l2, ref.l2 * ref.l2  # inf past 1e154, where ** raises OverflowError
    if same_content(cand_sketch.hash, ref_sketch.hash):
        return PairSums(0.0, cand_sq, cand_sq, ref_sq, 0.0, 0, 0, cand.count), False
    stride = max(cand_sketch.stride, ref_sketch.stride)
    cand_sketch, ref_sketch = cand_sketch.thinned(stride), ref_sketch.thinned(stride)
    c, r = cand_sketch.sample, ref_sketch.sample
    if c.size != r.size:
        raise ValueError(f"samples of {c.size} and {r.size} values cannot be compared")
    ok = np.isfinite(c) & np.isfinite(r)
    d = c[ok] - r[ok]
    m = max(int(c.size), 1)
    scale = cand.count / m
    diff_sq = float(np.dot(d, d)) * scale
    dot = (cand_sq + ref_sq - diff_sq) / 2
    changed = int(np.count_nonzero(c != r))
    far = int(np.count_nonzero(np.abs(c - r) > atol + rtol * np.abs(r)))
    exact = cand_sketch.complete and ref_sketch.complete
    sums = PairSums(
        diff_sq=diff_sq,
        dot=dot if math.isfinite(dot) else 0.0,
        cand_sq=cand_sq,
        ref_sq=ref_sq,
        max_abs=float(np.max(np.abs(d))) if d.size else 0.0,
        changed=round(changed * scale),
        not_close=round(far * scale),
        count=cand.count,
        estimated=not exact,
    )
    return sums, not exact
