"""Tensors TF stored in slices (partitioned variables, TF1 Saver): match the stored slices to
the parent entry's extents, then rebuild C order one block of rows at a time.

    resolve_slices(entry, stored, itemsize) -> [Part]     (raises SliceMismatch)
    stream_sliced(prefix, num_shards, name, entry, parts, dtype, chunk_elements) -> chunks
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

import crc32c
import numpy as np

from ckptwatch.formats.base import IntegrityError
from ckptwatch.formats.files import NotRegularFile, open_regular
from ckptwatch.formats.layout import shard_path
from ckptwatch.formats.wire import BundleEntry, Extent, check_entry_crc


class SliceMismatch(ValueError):
    """The stored slices do not fit the parent entry; the message says how."""


@dataclass
class Part:
    """One stored slice of a sliced tensor, resolved against the full shape."""

    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    entry: BundleEntry


def resolve_slices(entry: BundleEntry, stored: list[BundleEntry], itemsize: int) -> list[Part]:
    """Match stored slices to the parent's extents. Slice keys sort by (start, length) per
    dimension, a whole dimension as (0, -1): sorting the extents the same way pairs them with
    the slices in key order. Raises SliceMismatch when they do not cover the tensor exactly."""

    def order(ext: tuple[Extent, ...]) -> tuple:
        return tuple(x for start, length in ext for x in (start, -1 if length is None else length))

    extents = sorted(entry.slices, key=order)
    if len(extents) != len(stored):
        raise SliceMismatch(f"index lists {len(extents)} slices, {len(stored)} are stored")
    resolved, total = [], 0
    for ext, part in zip(extents, stored, strict=True):
        if len(ext) != len(entry.shape):
            raise SliceMismatch(f"a slice has {len(ext)} dimensions, the tensor {len(entry.shape)}")
        starts = tuple(0 if length is None else start for start, length in ext)
        lengths = tuple(dim if length is None else length for (_, length), dim in zip(ext, entry.shape, strict=True))
        if any(st < 0 or ln < 0 or st + ln > dim for st, ln, dim in zip(starts, lengths, entry.shape, strict=True)):
            where = list(zip(starts, lengths, strict=True))
            raise SliceMismatch(f"slice {where} lies outside shape {list(entry.shape)}")
        if part.shape != lengths or part.dtype != entry.dtype:
            raise SliceMismatch(f"stored slice has shape {list(part.shape)}, expected {list(lengths)}")
        resolved.append(Part(starts, lengths, part))
        total += part.size
    count = 1
    for d in entry.shape:
        count *= d
    if total != count * itemsize:
        raise SliceMismatch(f"slices hold {total} bytes, the tensor needs {count * itemsize}")
    return resolved


def stream_sliced(
    prefix: str,
    num_shards: int,
    name: str,
    entry: BundleEntry,
    parts: list[Part],
    dtype: np.dtype,
    chunk_elements: int,
) -> Iterator[np.ndarray]:
    """Rebuild C order from slices, one block of rows at a time. Each slice's rows are
    contiguous and are read in increasing order, so its checksum is accumulated as we go and
    checked when its last row has been read."""
    shape = entry.shape
    row_elems = 1
    for d in shape[1:]:
        row_elems *= d
    rows_per_block = max(1, chunk_elements // max(row_elems, 1))
    done_rows = [0] * len(parts)
    crcs = [0] * len(parts)
    files: dict[int, BinaryIO] = {}
    try:
        for r0 in range(0, shape[0], rows_per_block):
            r1 = min(shape[0], r0 + rows_per_block)
            block = np.empty((r1 - r0, *shape[1:]), dtype=dtype)
            filled = 0
            for k, part in enumerate(parts):
                a, b = max(r0, part.starts[0]), min(r1, part.starts[0] + part.lengths[0])
                if a >= b:
                    continue
                part_row = 1
                for d in part.lengths[1:]:
                    part_row *= d
                row_bytes = part_row * dtype.itemsize
                path = shard_path(prefix, part.entry.shard_id, num_shards)
                raw = _read_part(files, path, name, part.entry, done_rows[k] * row_bytes, (b - a) * row_bytes)
                crcs[k] = crc32c.crc32c(raw, crcs[k])
                done_rows[k] += b - a
                inner = zip(part.starts[1:], part.lengths[1:], strict=True)
                index = (slice(a - r0, b - r0), *(slice(st, st + ln) for st, ln in inner))
                block[index] = np.frombuffer(raw, dtype=dtype).reshape((b - a, *part.lengths[1:]))
                filled += (b - a) * part_row
                if done_rows[k] == part.lengths[0]:
                    check_entry_crc(part.entry, crcs[k], name)
            if filled != block.size:
                raise IntegrityError("integrity.sliced", f"slices do not cover rows [{r0}, {r1})", name)
            flat = block.reshape(-1)
            for i in range(0, flat.size, max(1, chunk_elements)):  # a row may exceed a chunk
                yield flat[i : i + chunk_elements]
    finally:
        for f in files.values():
            f.close()


def _read_part(files: dict[int, BinaryIO], path: str, name: str, entry: BundleEntry, start: int, length: int) -> bytes:
    if entry.shard_id not in files:
        try:
            files[entry.shard_id] = open_regular(path, name)  # closed by the caller
        except NotRegularFile:
            raise
        except OSError:
            raise IntegrityError("integrity.shard_missing", f"{os.path.basename(path)} is missing", name) from None
    f = files[entry.shard_id]
    file_size = os.fstat(f.fileno()).st_size
    if entry.offset < 0 or entry.offset + entry.size > file_size:
        raise IntegrityError(
            "integrity.truncated",
            f"a slice needs bytes [{entry.offset}, {entry.offset + entry.size}) of {os.path.basename(path)}, "
            f"which has {file_size} bytes",
            name,
        )
    f.seek(entry.offset + start)
    raw = f.read(length)
    if len(raw) != length:
        raise IntegrityError("integrity.truncated", f"{os.path.basename(path)} ended early", name)
    return raw
