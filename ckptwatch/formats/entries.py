"""A bundle index's tensor entries decoded together, with numpy (the worker's side of opening).

    decode_entries(values) -> [BundleEntry | None]   one per value; None: not decoded here

`wire.parse_entry` decodes one BundleEntryProto at a time in Python, ~3 us each: a third of a
second per 10,000-tensor checkpoint opened... This decodes what TensorFlow writes for a whole
index at once, field by field across all entries: in this order, each at most once,

    08 dtype  12 shape{ (12 dim{ [08 size] })* }  [18 shard_id]  [20 offset]  [28 size]  [35 crc32c]

every varint at most 9 bytes (below 2**63, so int64 and uint64 read the same), the shape and
each dimension shorter than 128 bytes, at most MAX_RANK dimensions. An entry that is anything
else (slices, a negative number, fields in another order, unknown fields, a truncated or
malformed one) gives None, and the caller decodes it with `wire.parse_entry`, which handles every
entry the wire format allows and says what is wrong with one it does not: an entry decoded here
equals parse_entry's, field for field, and this never raises on bad bytes.

Imports numpy: the daemon's main process (which reads index headers through `wire`) never loads it.
"""

from __future__ import annotations

import numpy as np

from ckptwatch.formats.wire import BundleEntry

MAX_RANK = 16
_MAX_VARINT = 9  # bytes: a 10-byte varint holds a negative int64 or more than 64 bits (parse_entry's case)


def _at(blob: np.ndarray, pos: np.ndarray) -> np.ndarray:
    """blob[pos], positions past the end clipped to its last byte (only read for entries
    already rejected, or rejected by the bounds checks made with them)."""
    return blob.take(pos, mode="clip")


def _varints(
    blob: np.ndarray, pos: np.ndarray, end: np.ndarray, want: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For the entries in `want`: the varint at `pos`, which must end before `end`, as int64;
    where it ends; whether it is one (not running past `end`, at most _MAX_VARINT bytes)."""
    value = np.zeros(len(pos), dtype=np.uint64)
    done = ~want
    inside = want.copy()
    width = np.zeros(len(pos), dtype=np.int64)
    for k in range(_MAX_VARINT):
        if done.all():
            break
        b = _at(blob, pos + k)
        take = ~done
        inside &= ~take | (pos + k < end)
        value |= np.where(take, (b & 0x7F).astype(np.uint64) << np.uint64(7 * k), np.uint64(0))
        last = take & (b < 0x80)
        width[last] = k + 1
        done |= last
    valid = want & inside & done
    return value.astype(np.int64), pos + width, valid


def decode_entries(values: list[memoryview] | list[bytes]) -> list[BundleEntry | None]:
    n = len(values)
    if n == 0:
        return []
    lengths = np.fromiter(map(len, values), dtype=np.int64, count=n)
    blob = np.frombuffer(b"".join(values) + b"\x00", dtype=np.uint8)
    end = np.cumsum(lengths)
    pos = end - lengths
    # dtype
    ok = (lengths > 0) & (_at(blob, pos) == 0x08)
    dtype, pos, valid = _varints(blob, pos + 1, end, ok)
    ok &= valid
    # shape: its length in one byte, then its dimensions
    size_byte = _at(blob, pos + 1).astype(np.int64)
    ok &= (pos + 1 < end) & (_at(blob, pos) == 0x12) & (size_byte < 0x80)
    shape_end = pos + 2 + size_byte
    ok &= shape_end <= end
    q = pos + 2
    dims = np.zeros((n, MAX_RANK), dtype=np.int64)
    rank = np.zeros(n, dtype=np.int64)
    for r in range(MAX_RANK + 1):
        more = ok & (q < shape_end)
        if not more.any():
            break
        if r == MAX_RANK:
            ok &= ~more
            break
        # a Dim: 12, its length (one byte), then nothing (size 0) or 08 and the size's varint, to its end
        dim_byte = _at(blob, q + 1).astype(np.int64)
        ok &= ~more | ((q + 1 < shape_end) & (_at(blob, q) == 0x12) & (dim_byte < 0x80))
        dim_end = q + 2 + dim_byte
        ok &= ~more | (dim_end <= shape_end)
        sized = more & ok & (dim_end > q + 2)
        ok &= ~sized | (_at(blob, q + 2) == 0x08)
        sized &= ok
        size, after, valid = _varints(blob, q + 3, dim_end, sized)
        ok &= ~sized | (valid & (after == dim_end))
        live = more & ok
        dims[live, r] = np.where(sized, size, 0)[live]
        rank[live] = r + 1
        q = np.where(live, dim_end, q)
    ok &= q == shape_end
    pos = shape_end
    # the numbers that may be left out (0), in field order
    numbers = []
    for tag in (0x18, 0x20, 0x28):
        has = ok & (pos < end) & (_at(blob, pos) == tag)
        value, after, valid = _varints(blob, pos + 1, end, has)
        ok &= ~has | valid
        has &= ok
        numbers.append(np.where(has, value, 0))
        pos = np.where(has, after, pos)
    has_crc = ok & (pos < end) & (_at(blob, pos) == 0x35)
    ok &= ~has_crc | (pos + 5 <= end)
    has_crc &= ok
    crc = _at(blob, pos + 1).astype(np.int64)
    for k in (1, 2, 3):
        crc |= _at(blob, pos + 1 + k).astype(np.int64) << (8 * k)
    pos = np.where(has_crc, pos + 5, pos)
    ok &= pos == end  # nothing else: any other field, or the same one twice, is parse_entry's
    return _assemble(ok, dtype, dims, rank, numbers, crc, has_crc)


def _assemble(
    ok: np.ndarray,
    dtype: np.ndarray,
    dims: np.ndarray,
    rank: np.ndarray,
    numbers: list[np.ndarray],
    crc: np.ndarray,
    has_crc: np.ndarray,
) -> list[BundleEntry | None]:
    n = len(ok)
    shapes: list[tuple[int, ...]] = [()] * n
    for r in np.unique(rank[ok]).tolist():
        if r == 0:
            continue
        rows = np.flatnonzero(ok & (rank == r))
        for i, shape in zip(rows.tolist(), zip(*dims[rows, :r].T.tolist()), strict=True):
            shapes[i] = shape
    crcs: list[int | None] = crc.tolist()
    for i in np.flatnonzero(~has_crc).tolist():
        crcs[i] = None
    shard, offset, size = (a.tolist() for a in numbers)
    entries: list[BundleEntry | None] = list(map(BundleEntry, dtype.tolist(), shapes, shard, offset, size, crcs))
    for i in np.flatnonzero(~ok).tolist():
        entries[i] = None
    return entries
