"""Fused numeric loops over one chunk, compiled with numba.

numpy would need ~10 passes (and temporaries) per chunk for the moments; these
loops do it in two passes and release the GIL, so chunks of different tensors
run on several cores. Each kernel has a fast path that assumes finite values
and a masked path taken only when the fast result is not finite.
"""

from __future__ import annotations

import os

# numba caches compiled kernels next to the module by default; that directory
# may be read-only (site-packages in a container), so keep the cache in a
# user-writable place unless the operator chose one.
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(os.path.expanduser("~"), ".cache", "ckptwatch", "numba"))

import numpy as np
from numba import njit

# Reassociation lets LLVM vectorise the reductions; no 'nnan'/'ninf': we rely on NaN/Inf propagating.
_FAST = {"reassoc", "contract", "nsz", "arcp"}


@njit(nogil=True, fastmath=_FAST, cache=True)
def moments_finite(x):  # pragma: no cover - compiled
    """(sum, zeros, M2, M3, M4) assuming every value is finite. Min and max are left
    to numpy: a float min/max in this loop stops LLVM from vectorising it."""
    n = x.size
    s = 0.0
    zeros = 0
    for i in range(n):
        v = np.float64(x[i])
        s += v
        zeros += np.int64(v == 0.0)
    mean = s / n
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    for i in range(n):
        d = np.float64(x[i]) - mean
        d2 = d * d
        m2 += d2
        m3 += d2 * d
        m4 += d2 * d2
    return s, zeros, m2, m3, m4


@njit(nogil=True, cache=True)
def moments_masked(x):  # pragma: no cover - compiled
    """(finite count, nan, +inf, -inf, sum, min, max, zeros, M2, M3, M4) over finite values."""
    n = 0
    nan = 0
    pinf = 0
    ninf = 0
    s = 0.0
    mn = np.inf
    mx = -np.inf
    zeros = 0
    for i in range(x.size):
        v = np.float64(x[i])
        if v != v:
            nan += 1
        elif v == np.inf:
            pinf += 1
        elif v == -np.inf:
            ninf += 1
        else:
            n += 1
            s += v
            mn = min(mn, v)
            mx = max(mx, v)
            zeros += v == 0.0
    mean = s / n if n else 0.0
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    for i in range(x.size):
        v = np.float64(x[i])
        if v - v == 0.0:  # finite
            d = v - mean
            d2 = d * d
            m2 += d2
            m3 += d2 * d
            m4 += d2 * d2
    return n, nan, pinf, ninf, s, mn, mx, zeros, m2, m3, m4


_LANES = 16


@njit(nogil=True, fastmath=_FAST, cache=True)
def pair_finite(c, r, atol, rtol):  # pragma: no cover - compiled
    """(sum (c-r)^2, sum c*r, sum c^2, sum r^2, max |c-r|, changed, not-close, sum r, zeros in r)
    for equal-length chunks: drift, plus what the reference's mean/std/L2 need.
    The running max is kept in independent lanes so the loop vectorises."""
    ss = 0.0
    dot = 0.0
    cc = 0.0
    rr = 0.0
    rs = 0.0
    changed = 0
    far = 0
    rz = 0
    lanes = np.zeros(_LANES, np.float64)
    n = c.size
    body = n - n % _LANES
    for start in range(0, body, _LANES):
        for j in range(_LANES):
            a = np.float64(c[start + j])
            b = np.float64(r[start + j])
            d = a - b
            ad = abs(d)
            ss += d * d
            dot += a * b
            cc += a * a
            rr += b * b
            rs += b
            changed += np.int64(a != b)
            far += np.int64(ad > atol + rtol * abs(b))
            rz += np.int64(b == 0.0)
            lanes[j] = ad if ad > lanes[j] else lanes[j]
    mx = lanes.max()
    for i in range(body, n):
        a = np.float64(c[i])
        b = np.float64(r[i])
        d = a - b
        ad = abs(d)
        ss += d * d
        dot += a * b
        cc += a * a
        rr += b * b
        rs += b
        changed += np.int64(a != b)
        far += np.int64(ad > atol + rtol * abs(b))
        rz += np.int64(b == 0.0)
        mx = max(mx, ad)
    return ss, dot, cc, rr, mx, changed, far, rs, rz


@njit(nogil=True, cache=True)
def pair_masked(c, r, atol, rtol):  # pragma: no cover - compiled
    """Like pair_finite, over positions where both values are finite. A position
    where either is non-finite counts as changed (and not close) unless both hold
    the same non-finite value."""
    ss = 0.0
    dot = 0.0
    cc = 0.0
    rr = 0.0
    mx = 0.0
    changed = 0
    far = 0
    rs = 0.0
    rz = 0
    for i in range(c.size):
        a = np.float64(c[i])
        b = np.float64(r[i])
        if b - b == 0.0:
            rs += b
            rz += b == 0.0
        if a - a == 0.0 and b - b == 0.0:
            d = a - b
            ad = abs(d)
            ss += d * d
            dot += a * b
            cc += a * a
            rr += b * b
            mx = max(mx, ad)
            changed += a != b
            far += ad > atol + rtol * abs(b)
        elif not (a == b or (a != a and b != b)):
            changed += 1
            far += 1
    return ss, dot, cc, rr, mx, changed, far, rs, rz


_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


def as_float(chunk: np.ndarray) -> np.ndarray:
    """A 1-D float32/float64 view or copy the kernels accept."""
    if chunk.dtype in _NATIVE:
        return chunk
    if chunk.dtype.kind == "c":  # complex: real and imaginary parts as separate values
        return chunk.view(np.float32 if chunk.dtype.itemsize == 8 else np.float64)
    if chunk.dtype.byteorder == ">":
        return chunk.astype(chunk.dtype.newbyteorder("=")).astype(np.float64)
    return chunk.astype(np.float64)


@njit(nogil=True, cache=True, inline="always")
def _jitter(n, i):  # pragma: no cover - compiled
    """sketch.sample_positions' u for element i of n: splitmix64 of i ^ (n * 0xD1B54A32D192ED03),
    its top 53 bits over 2^53 (uint64 arithmetic wraps modulo 2^64, as numpy's does)."""
    z = np.uint64(i) ^ (np.uint64(n) * np.uint64(0xD1B54A32D192ED03))
    z = z + np.uint64(0x9E3779B97F4A7C15)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    # < 2^53: exact through int64 (a cheaper conversion than uint64's); times 2^-53 is exact too
    return np.float64(np.int64(z >> np.uint64(11))) * 1.1102230246251565e-16


@njit(nogil=True, cache=True, inline="always")
def _positions_into(out, n, m):  # pragma: no cover - compiled
    """out[:m] = sketch.sample_positions(n, m) for n > m: the same integer and float64 operations
    (u * width is one IEEE multiply, truncated; no fastmath), element by element. Stratum i
    starts at (i * n) // m; the next one's start is this one's end, so one division each (a
    shift when m is a power of two: the same floor for these non-negative values)."""
    shift = -1
    if m & (m - 1) == 0:
        shift = 0
        while (1 << shift) < m:
            shift += 1
    start = np.int64(0)
    for i in range(m):
        nxt = ((i + 1) * n) >> shift if shift >= 0 else ((i + 1) * n) // m
        width = nxt - start
        out[i] = start + min(np.int64(_jitter(n, i) * width), width - 1)
        start = nxt


@njit(nogil=True, cache=True)
def sample_positions(n, m):  # pragma: no cover - compiled
    """sketch.sample_positions(n, m), compiled: one loop instead of some twenty numpy passes."""
    if n <= m:
        return np.arange(n).astype(np.int64)
    out = np.empty(m, np.int64)
    _positions_into(out, n, m)
    return out


@njit(nogil=True, cache=True)
def run_samples(x, starts, ends, m):  # pragma: no cover - compiled
    """The sketch samples of the tensors x[starts[k]:ends[k]] (a run of small tensors), one after
    the other as float64: per tensor its values at sample_positions(n, m), min(n, m) of them."""
    total = 0
    for k in range(starts.size):
        total += min(ends[k] - starts[k], m)
    out = np.empty(total, np.float64)
    pos = np.empty(m, np.int64)
    o = 0
    for k in range(starts.size):
        a = starts[k]
        n = ends[k] - a
        if n <= m:
            for i in range(n):
                out[o + i] = np.float64(x[a + i])
            o += n
        else:
            _positions_into(pos, n, m)
            for i in range(m):
                out[o + i] = np.float64(x[a + pos[i]])
            o += m
    return out
