"""TensorFlow's V1 checkpoint format: `Saver(write_version=V1)`, the default before 2016.

A V1 checkpoint is one LevelDB table per shard (`model.ckpt-7`, or `model.ckpt-7-00000-of-00002`)
with no `.index`. The entry keyed "" is a SavedTensorSlices proto whose `meta` lists every
tensor of that file (name, shape, dtype, the slices stored); every other entry holds one slice
(SavedSlice: name, extents, and a TensorProto with the values in its typed repeated fields).

The only checksums are the table's per-block CRC32C, and they cover everything: the values are
inside the blocks. They are all checked when the file is opened (formats.table). Values are
decoded from the protos when a tensor is read; a tensor stored in several slices (a partitioned
variable) is assembled from them, and slices that do not cover it exactly are an integrity
finding. Unlike bundles, a V1 file is held in memory while it is open (at most MAX_V1_BYTES:
the format has no offsets to stream from); files of that era are small.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np

from ckptwatch.errors import UnsupportedFormat
from ckptwatch.formats.base import CHUNK_ELEMENTS, META, IntegrityError, IntegrityProblem, TensorInfo
from ckptwatch.formats.bundle import decode_varints
from ckptwatch.formats.dtypes import NUMERIC_DTYPES
from ckptwatch.formats.files import open_regular
from ckptwatch.formats.names import display_name, kind_of, step_from_path
from ckptwatch.formats.table import TableError, iter_table
from ckptwatch.formats.wire import (
    DTYPE_NAMES,
    Extent,
    as_bytes,
    as_int,
    fields,
    parse_shape,
    parse_slice,
)

MAX_V1_BYTES = 1 << 30
FORMAT = "tf-v1"

# TensorProto's typed value fields (tensorflow/core/framework/tensor.proto): field -> how to read it
_FLOAT, _DOUBLE, _INT, _STRING, _SCOMPLEX, _INT64, _BOOL, _DCOMPLEX, _HALF, _UINT32, _UINT64 = (
    5, 6, 7, 8, 9, 10, 11, 12, 13, 16, 17,
)  # fmt: skip
_VALUE_FIELD = {
    "float32": _FLOAT, "float64": _DOUBLE, "complex64": _SCOMPLEX, "complex128": _DCOMPLEX,
    "int32": _INT, "int16": _INT, "int8": _INT, "uint8": _INT, "uint16": _INT,
    "int64": _INT64, "bool": _BOOL, "float16": _HALF, "bfloat16": _HALF,
    "uint32": _UINT32, "uint64": _UINT64,
}  # fmt: skip


class _Slice:
    __slots__ = ("extents", "value")

    def __init__(self, extents: tuple[Extent, ...], value: memoryview):
        self.extents, self.value = extents, value


class V1Source:
    """A V1 checkpoint opened for verification. See `CheckpointSource`."""

    format = FORMAT

    def __init__(self, prefix: str, files: list[str]):
        self.path = prefix
        self.step = step_from_path(prefix)
        self.problems: list[IntegrityProblem] = []
        self._files = files
        self._meta: dict[str, tuple[tuple[int, ...], str]] = {}  # name -> (shape, dtype name)
        self._slices: dict[str, list[_Slice]] = {}
        self._blobs: list[bytes] = []
        total = 0
        for path in files:
            with open_regular(path) as f:
                size = os.fstat(f.fileno()).st_size
                total += size
                if total > MAX_V1_BYTES:
                    raise UnsupportedFormat(
                        f"{prefix}: TensorFlow V1 checkpoint larger than {MAX_V1_BYTES >> 20} MiB "
                        "(ckptwatch reads V1 files in memory): re-save it in the V2 format"
                    )
                data = f.read(size)
            self._blobs.append(data)
            self._load(path, data)
        self._infos = [
            TensorInfo(
                name,
                dtype,
                shape,
                _nbytes(shape, dtype),
                kind_of(name) if dtype in NUMERIC_DTYPES else META,
                display_name(name),
            )
            for name, (shape, dtype) in sorted(self._meta.items())
        ]
        for name in sorted(set(self._meta) - set(self._slices)):
            self.problems.append(IntegrityProblem("integrity.index", "listed in the file's metadata, no data", name))

    def _load(self, path: str, data: bytes) -> None:
        where = os.path.basename(path)
        try:
            for key, value in iter_table(data):
                for number, wire, part in fields(value):
                    if wire != 2:
                        continue
                    if number == 1 and key == b"":  # SavedTensorSliceMeta
                        self._read_meta(as_bytes(part))
                    elif number == 2:  # SavedSlice
                        self._read_slice(as_bytes(part))
        except TableError as e:
            raise IntegrityError("integrity.index", f"{where}: {e}") from None

    def _read_meta(self, buf: memoryview) -> None:
        for number, wire, value in fields(buf):
            if number != 1 or wire != 2:  # SavedSliceMeta (versions: field 2)
                continue
            name, dtype = "", 0
            shape: tuple[int, ...] = ()
            for n, w, v in fields(as_bytes(value)):
                if n == 1 and w == 2:
                    name = bytes(as_bytes(v)).decode("utf-8", "replace")
                elif n == 2 and w == 2:
                    shape = parse_shape(as_bytes(v))
                elif n == 3 and w == 0:
                    dtype = as_int(v)
            if any(d < 0 for d in shape):
                self.problems.append(IntegrityProblem("integrity.index", f"negative dimension in {list(shape)}", name))
                continue
            self._meta[name] = (shape, DTYPE_NAMES.get(dtype, f"dtype{dtype}"))

    def _read_slice(self, buf: memoryview) -> None:
        name, value = "", memoryview(b"")
        extents: tuple[Extent, ...] = ()
        for n, w, v in fields(buf):
            if n == 1 and w == 2:
                name = bytes(as_bytes(v)).decode("utf-8", "replace")
            elif n == 2 and w == 2:
                extents = parse_slice(as_bytes(v))
            elif n == 3 and w == 2:
                value = as_bytes(v)
        self._slices.setdefault(name, []).append(_Slice(extents, value))

    # -- the protocol ------------------------------------------------------------------------

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    @property
    def total_bytes(self) -> int:
        return sum(len(b) for b in self._blobs)

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        shape, dtype_name = self._meta[name]
        slices = self._slices.get(name)
        if not slices:
            raise IntegrityError("integrity.index", "no data stored for this tensor", name)
        if dtype_name not in NUMERIC_DTYPES:  # strings: nothing to check beyond the blocks' checksums
            yield np.frombuffer(b"".join(bytes(s.value) for s in slices), dtype=np.uint8)
            return
        dtype = NUMERIC_DTYPES[dtype_name]
        try:
            flat = self._assemble(name, shape, dtype_name, dtype, slices)
        except (TableError, ValueError, OverflowError) as e:
            raise IntegrityError("integrity.format", f"values cannot be decoded ({e})", name) from None
        step = max(1, chunk_elements)
        for start in range(0, max(flat.size, 1), step):
            chunk = flat[start : start + step]
            if chunk.size:
                yield chunk

    def _assemble(
        self, name: str, shape: tuple[int, ...], dtype_name: str, dtype: np.dtype, slices: list[_Slice]
    ) -> np.ndarray:
        count = math.prod(shape)
        if count * dtype.itemsize > 4 * self.total_bytes + 64:  # values are stored, at worst as 1-byte varints
            raise IntegrityError("integrity.index", f"shape {list(shape)} is larger than the file", name)
        if len(slices) == 1 and _covers(slices[0].extents, shape):
            return _values(slices[0].value, dtype_name, dtype, count, name)
        full = np.zeros(shape, dtype=dtype)
        seen = np.zeros(shape, dtype=bool)
        for s in slices:
            if len(s.extents) not in (0, len(shape)):
                raise IntegrityError("integrity.sliced", f"a slice of rank {len(s.extents)} in a {shape} tensor", name)
            index, sub = [], []
            for (start, length), dim in zip(s.extents or [(0, None)] * len(shape), shape, strict=True):
                length = dim - start if length is None else length
                if start < 0 or length < 0 or start + length > dim:
                    raise IntegrityError("integrity.sliced", f"slice extent {start}+{length} outside {dim}", name)
                index.append(slice(start, start + length))
                sub.append(length)
            if seen[tuple(index)].any():
                raise IntegrityError("integrity.sliced", "slices overlap", name)
            full[tuple(index)] = _values(s.value, dtype_name, dtype, math.prod(sub), name).reshape(sub)
            seen[tuple(index)] = True
        if not seen.all():
            raise IntegrityError("integrity.sliced", f"slices hold {int(seen.sum())} of {count} values", name)
        return full.reshape(-1)

    def close(self) -> None:
        self._blobs.clear()


def _covers(extents: tuple[Extent, ...], shape: tuple[int, ...]) -> bool:
    return all(start == 0 and (length is None or length == dim) for (start, length), dim in zip(extents, shape))


def _nbytes(shape: tuple[int, ...], dtype_name: str) -> int:
    dtype = NUMERIC_DTYPES.get(dtype_name)
    if dtype is None:
        return 0
    n = dtype.itemsize
    for d in shape:
        n *= d
    return n


def _values(proto: memoryview, dtype_name: str, dtype: np.dtype, count: int, name: str) -> np.ndarray:
    """The `count` values of a TensorProto (tensor_content, or the typed repeated field, packed
    or not), as `dtype`. A different number of values is an integrity finding."""
    want = _VALUE_FIELD[dtype_name]
    parts: list[np.ndarray] = []
    for number, wire, value in fields(proto):
        if number == 4 and wire == 2:  # tensor_content: raw little-endian bytes
            raw = bytes(as_bytes(value))
            if len(raw) != count * dtype.itemsize:
                raise IntegrityError(
                    "integrity.format", f"{len(raw)} bytes of content for {count} values of {dtype_name}", name
                )
            return np.frombuffer(raw, dtype=dtype.newbyteorder("<")).astype(dtype)
        if number != want:
            continue
        if wire == 2:
            parts.append(_packed(as_bytes(value), want))
        else:
            parts.append(_scalar(as_int(value), wire, want))
    values = np.concatenate(parts) if parts else np.zeros(0, dtype=np.uint64)
    if want in (_SCOMPLEX, _DCOMPLEX):
        if values.size % 2:
            raise IntegrityError("integrity.format", "an odd number of complex parts", name)
        values = values[0::2] + 1j * values[1::2]
    if values.size == 1 and count > 1:  # TF stores a tensor of identical values as one value
        values = np.repeat(values, count)
    if values.size != count:
        raise IntegrityError("integrity.format", f"{values.size} values stored for {count} elements", name)
    if want == _HALF:  # float16 / bfloat16: the 16-bit patterns, in int32 varints
        return values.astype(np.uint16).view(dtype)
    if want in (_INT, _INT64, _UINT32, _UINT64):
        signed = values.astype(np.uint64).view(np.int64) if want in (_INT, _INT64) else values.astype(np.uint64)
        return signed.astype(dtype)
    if want == _BOOL:
        return values != 0
    return values.astype(dtype)


def _packed(buf: memoryview, field: int) -> np.ndarray:
    data = np.frombuffer(buf, dtype=np.uint8)
    if field in (_FLOAT, _SCOMPLEX):
        if data.size % 4:
            raise TableError("packed float32 values are not a multiple of 4 bytes")
        return data.view("<f4").astype(np.float64)
    if field in (_DOUBLE, _DCOMPLEX):
        if data.size % 8:
            raise TableError("packed float64 values are not a multiple of 8 bytes")
        return data.view("<f8").copy()
    return _varints(data)


def _scalar(value: int, wire: int, field: int) -> np.ndarray:
    if wire == 5:
        return np.frombuffer(value.to_bytes(4, "little"), dtype="<f4").astype(np.float64)
    if wire == 1:
        return np.frombuffer(value.to_bytes(8, "little"), dtype="<f8").copy()
    return np.array([value], dtype=np.uint64)


def _varints(data: np.ndarray) -> np.ndarray:
    """Every varint in `data` (uint64), vectorised."""
    return decode_varints(data)[0]
