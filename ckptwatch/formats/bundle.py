"""TensorFlow bundle checkpoints: TF2 tf.train.Checkpoint, TF1 Saver, SavedModel variables.

A bundle is `<prefix>.index` (an SSTable mapping tensor names to BundleEntryProto:
dtype, shape, shard, offset, size, masked CRC32C) plus `<prefix>.data-K-of-N`
shards holding the raw bytes. We decode the protos with a tiny wire-format
reader (no TensorFlow import) and stream each tensor from its shard in chunks,
checking the CRC32C when the last chunk has been read.
"""

from __future__ import annotations

import glob
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass, replace

import crc32c
import numpy as np

from ckptwatch.formats.base import (
    CHUNK_ELEMENTS,
    META,
    NUMERIC_DTYPES,
    OPTIMIZER,
    WEIGHT,
    FileSet,
    IntegrityError,
    IntegrityProblem,
    TensorInfo,
    checked_size,
)
from ckptwatch.formats.names import OBJECT_GRAPH_KEY, display_name, kind_of, step_from_path
from ckptwatch.formats.table import TableError, iter_table, read_varint, unmask_crc

# tensorflow/core/framework/types.proto
DTYPE_NAMES = {
    1: "float32", 2: "float64", 3: "int32", 4: "uint8", 5: "int16", 6: "int8", 7: "string",
    8: "complex64", 9: "int64", 10: "bool", 11: "qint8", 12: "quint8", 13: "qint32",
    14: "bfloat16", 15: "qint16", 16: "quint16", 17: "uint16", 18: "complex128", 19: "float16",
    20: "resource", 21: "variant", 22: "uint32", 23: "uint64", 24: "float8_e5m2",
    25: "float8_e4m3fn", 26: "float8_e4m3fnuz", 27: "float8_e4m3b11fnuz", 28: "float8_e5m2fnuz",
    29: "int4", 30: "uint4",
}  # fmt: skip

MAX_INDEX_BYTES = 1 << 30  # an index is metadata only; a bigger one is hostile


Extent = tuple[int, int | None]  # (start, length); length None = the whole dimension


@dataclass(frozen=True)
class BundleEntry:
    dtype: int = 0
    shape: tuple[int, ...] = ()
    shard_id: int = 0
    offset: int = 0
    size: int = 0
    crc32c: int | None = None
    slices: tuple[tuple[Extent, ...], ...] = ()  # set when TF stored the tensor in slices

    @property
    def sliced(self) -> bool:
        return bool(self.slices)


@dataclass
class _Part:
    """One stored slice of a sliced tensor, resolved against the full shape."""

    starts: tuple[int, ...]
    lengths: tuple[int, ...]
    entry: BundleEntry


def _fields(buf: memoryview) -> Iterator[tuple[int, int, object]]:
    """Iterate protobuf wire-format fields: (field number, wire type, value)."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = read_varint(buf, pos, end)
        elif wire == 1:
            if pos + 8 > end:
                raise TableError("fixed64 field runs past the entry")
            (value,) = struct.unpack_from("<Q", buf, pos)
            pos += 8
        elif wire == 2:
            length, pos = read_varint(buf, pos, end)
            if pos + length > end:
                raise TableError("length-delimited field runs past the entry")
            value = buf[pos : pos + length]
            pos += length
        elif wire == 5:
            if pos + 4 > end:
                raise TableError("fixed32 field runs past the entry")
            (value,) = struct.unpack_from("<I", buf, pos)
            pos += 4
        else:
            raise TableError(f"unsupported wire type {wire}")
        yield number, wire, value


def _signed64(v: int) -> int:
    return v - (1 << 64) if v >= 1 << 63 else v


def _parse_shape(buf: memoryview) -> tuple[int, ...]:
    dims = []
    for number, wire, value in _fields(buf):
        if number == 2 and wire == 2:  # Dim
            size = 0
            for n2, w2, v2 in _fields(value):  # type: ignore[arg-type]
                if n2 == 1 and w2 == 0:
                    size = _signed64(v2)  # type: ignore[arg-type]
            dims.append(size)
        elif number == 3 and value:
            raise TableError("shape of unknown rank")
    return tuple(dims)


def parse_entry(buf: memoryview) -> BundleEntry:
    kw: dict = {}
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            kw["dtype"] = value
        elif number == 2 and wire == 2:
            kw["shape"] = _parse_shape(value)  # type: ignore[arg-type]
        elif number == 3 and wire == 0:
            kw["shard_id"] = value
        elif number == 4 and wire == 0:
            kw["offset"] = _signed64(value)  # type: ignore[arg-type]
        elif number == 5 and wire == 0:
            kw["size"] = _signed64(value)  # type: ignore[arg-type]
        elif number == 6 and wire == 5:
            kw["crc32c"] = value
        elif number == 7 and wire == 2:
            kw.setdefault("slices", []).append(_parse_slice(value))  # type: ignore[arg-type]
    if "slices" in kw:
        kw["slices"] = tuple(kw["slices"])
    return BundleEntry(**kw)


def _parse_slice(buf: memoryview) -> tuple[Extent, ...]:
    extents = []
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 2:
            fields = {n: v for n, _, v in _fields(value)}  # type: ignore[arg-type]
            start = _signed64(int(fields.get(1, 0)))  # type: ignore[arg-type]
            length = _signed64(int(fields[2])) if 2 in fields else None  # type: ignore[arg-type]
            extents.append((start, length))
    return tuple(extents)


def _slice_key_name(key: bytes) -> str | None:
    """The tensor name inside a slice key (OrderedCode: 0, escaped name, \\x00\\x01, extents)."""
    if not key.startswith(b"\x00"):
        return None
    out, i = bytearray(), 1
    while i + 1 < len(key):
        b, nxt = key[i], key[i + 1]
        if b == 0 and nxt == 1:
            return out.decode("utf-8", "replace")
        if b == 0 and nxt == 0xFF:
            out.append(0)
            i += 2
        elif b == 0xFF and nxt == 0:
            out.append(0xFF)
            i += 2
        else:
            out.append(b)
            i += 1
    return None


def _parse_header(buf: memoryview) -> tuple[int, bool]:
    num_shards, big_endian = 1, False
    for number, wire, value in _fields(buf):
        if number == 1 and wire == 0:
            num_shards = value  # type: ignore[assignment]
        elif number == 2 and wire == 0:
            big_endian = value == 1
    return num_shards, big_endian  # type: ignore[return-value]


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


class BundleSource:
    """A TF bundle opened for verification. See `CheckpointSource`."""

    def __init__(self, prefix: str, format: str = "tf-bundle"):
        self.path = prefix
        self.format = format
        self.step = step_from_path(prefix) if format == "tf-bundle" else None
        self.problems: list[IntegrityProblem] = []
        self._entries: dict[str, BundleEntry] = {}
        self._infos: list[TensorInfo] = []
        index_path = prefix + ".index"
        if not os.path.isfile(index_path):
            shards = glob.glob(glob.escape(prefix) + ".data-*")
            raise IntegrityError(
                "integrity.index",
                f"{index_path}: index file missing" + (f" ({len(shards)} data shard(s) present)" if shards else ""),
            )
        self._load_index(index_path)
        self._apply_object_graph()
        self._files = FileSet([index_path] + [shard_path(prefix, k, self.num_shards) for k in range(self.num_shards)])
        self._check_files()

    # -- opening -------------------------------------------------------------

    def _load_index(self, index_path: str) -> None:
        size = os.path.getsize(index_path)
        if size > MAX_INDEX_BYTES:
            raise IntegrityError("integrity.index", f"{index_path}: {size} bytes is too large for an index")
        with open(index_path, "rb") as f:
            data = f.read()
        if not data:
            raise IntegrityError("integrity.index", f"{index_path}: index file is empty")
        header_seen = False
        slice_entries: dict[str, list[BundleEntry]] = {}
        self.num_shards, self.big_endian = 1, False
        key = b""
        try:
            for key, value in iter_table(data):
                if key == b"":
                    self.num_shards, self.big_endian = _parse_header(value)
                    header_seen = True
                    continue
                if key[:1] == b"\x00":  # a slice of a tensor stored in slices; its parent entry is listed
                    parent = _slice_key_name(key)
                    if parent is not None:
                        slice_entries.setdefault(parent, []).append(parse_entry(value))
                    continue
                self._add(key.decode("utf-8", "replace"), parse_entry(value))
        except TableError as e:
            where = f" (after entry {key.decode('utf-8', 'replace')!r})" if key else ""
            raise IntegrityError("integrity.index", f"{index_path}: {e}{where}") from None
        if not header_seen:
            raise IntegrityError("integrity.index", f"{index_path}: no bundle header entry")
        self._parts: dict[str, list[_Part]] = {}
        for name, entry in list(self._entries.items()):
            if entry.sliced:
                self._resolve_slices(name, entry, slice_entries.get(name, []))
        if not 1 <= self.num_shards <= 1 << 16:
            raise IntegrityError("integrity.index", f"{index_path}: implausible shard count {self.num_shards}")

    def _apply_object_graph(self) -> None:
        """Rename and reclassify keys by the object graph (see object_graph.py)."""
        from ckptwatch.formats.object_graph import decode_scalar_string, key_paths, preferred_path

        if OBJECT_GRAPH_KEY not in self._entries:
            return
        try:
            paths = key_paths(decode_scalar_string(self.read_string_bytes(OBJECT_GRAPH_KEY)))
        except (IntegrityError, TableError) as e:
            problem = e.problem if isinstance(e, IntegrityError) else None
            self.problems.append(
                problem or IntegrityProblem("integrity.index", f"unreadable object graph: {e}", OBJECT_GRAPH_KEY)
            )
            return
        infos = []
        for info in self._infos:
            if info.name in paths and info.kind != META:
                path, optimizer_only = preferred_path(paths[info.name])
                kind = info.kind
                if kind == OPTIMIZER and not optimizer_only:
                    kind = WEIGHT
                elif kind == WEIGHT and optimizer_only:
                    kind = OPTIMIZER
                info = replace(info, kind=kind, display="/".join(path) or info.display)
            infos.append(info)
        self._infos = infos

    def object_graph(self) -> list | None:
        """The TrackableObjectGraph's nodes (object_graph.GraphNode), or None for a
        name-based (TF1) checkpoint. Raises IntegrityError if it is unreadable."""
        from ckptwatch.formats.object_graph import decode_scalar_string, parse_nodes

        if OBJECT_GRAPH_KEY not in self._entries:
            return None
        try:
            return parse_nodes(decode_scalar_string(self.read_string_bytes(OBJECT_GRAPH_KEY)))
        except TableError as e:
            raise IntegrityError("integrity.index", f"unreadable object graph: {e}", OBJECT_GRAPH_KEY) from None

    def _add(self, name: str, entry: BundleEntry) -> None:
        dtype_name = DTYPE_NAMES.get(entry.dtype, f"dtype{entry.dtype}")
        kind = kind_of(name)
        if dtype_name not in NUMERIC_DTYPES:
            kind = META
        elif any(d < 0 for d in entry.shape):
            self.problems.append(
                IntegrityProblem("integrity.index", f"negative dimension in shape {list(entry.shape)}", name)
            )
            return  # unreadable: not listed, so references report it missing too
        self._entries[name] = entry
        self._infos.append(TensorInfo(name, dtype_name, entry.shape, max(entry.size, 0), kind, display_name(name)))

    def _resolve_slices(self, name: str, entry: BundleEntry, parts: list[BundleEntry]) -> None:
        """Match stored slices to the parent's extents. Slice keys sort by
        (start, length) per dimension, a whole dimension as (0, -1): sorting the
        extents the same way pairs them with the slices in key order."""

        def order(ext: tuple[Extent, ...]) -> tuple:
            return tuple(x for start, length in ext for x in (start, -1 if length is None else length))

        def reject(message: str) -> None:
            self.problems.append(IntegrityProblem("integrity.sliced", message, name))
            self._infos = [i for i in self._infos if i.name != name]

        extents = sorted(entry.slices, key=order)
        if len(extents) != len(parts):
            return reject(f"index lists {len(extents)} slices, {len(parts)} are stored")
        resolved, total = [], 0
        for ext, part in zip(extents, parts, strict=True):
            if len(ext) != len(entry.shape):
                return reject(f"a slice has {len(ext)} dimensions, the tensor {len(entry.shape)}")
            starts = tuple(0 if length is None else start for start, length in ext)
            lengths = tuple(
                dim if length is None else length for (_, length), dim in zip(ext, entry.shape, strict=True)
            )
            if any(st < 0 or ln < 0 or st + ln > dim for st, ln, dim in zip(starts, lengths, entry.shape, strict=True)):
                return reject(f"slice {list(zip(starts, lengths, strict=True))} lies outside shape {list(entry.shape)}")
            if part.shape != lengths or part.dtype != entry.dtype:
                return reject(f"stored slice has shape {list(part.shape)}, expected {list(lengths)}")
            resolved.append(_Part(starts, lengths, part))
            total += part.size
        itemsize = NUMERIC_DTYPES.get(DTYPE_NAMES.get(entry.dtype, ""), np.dtype(np.uint8)).itemsize
        count = 1
        for d in entry.shape:
            count *= d
        if total != count * itemsize:
            return reject(f"slices hold {total} bytes, the tensor needs {count * itemsize}")
        self._parts[name] = resolved
        self._infos = [replace(i, nbytes=total) if i.name == name else i for i in self._infos]

    def _check_files(self) -> None:
        for k in range(self.num_shards):
            p = shard_path(self.path, k, self.num_shards)
            if not os.path.isfile(p):
                n = sum(1 for e in self._entries.values() if e.shard_id == k)
                self.problems.append(
                    IntegrityProblem("integrity.shard_missing", f"{os.path.basename(p)} is missing ({n} tensors)")
                )
        leftovers = glob.glob(glob.escape(self.path) + "_temp*") + glob.glob(
            glob.escape(self.path) + ".data-*.tempstate*"
        )
        if leftovers:
            self.problems.append(
                IntegrityProblem(
                    "integrity.incomplete",
                    f"temporary files of an unfinished save remain: {os.path.basename(leftovers[0])}",
                )
            )

    # -- the protocol ----------------------------------------------------------

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def entry(self, name: str) -> BundleEntry:
        """Where a tensor lives: shard, offset, size, checksum (for tools and tests)."""
        return self._entries[name]

    @property
    def total_bytes(self) -> int:
        return self._files.total_bytes

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        entry = self._entries[name]
        dtype_name = DTYPE_NAMES.get(entry.dtype, "")
        numeric = dtype_name in NUMERIC_DTYPES
        dtype = NUMERIC_DTYPES[dtype_name] if numeric else np.dtype(np.uint8)
        if self.big_endian:
            dtype = dtype.newbyteorder(">")
        path = shard_path(self.path, entry.shard_id, self.num_shards)
        if entry.sliced:
            yield from self._stream_sliced(name, entry, dtype, chunk_elements)
            return
        if not os.path.isfile(path):
            raise IntegrityError("integrity.shard_missing", f"{os.path.basename(path)} is missing", name)
        file_size = os.path.getsize(path)
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > file_size:
            raise IntegrityError(
                "integrity.truncated",
                f"needs bytes [{entry.offset}, {entry.offset + entry.size}) of {os.path.basename(path)}, "
                f"which has {file_size} bytes",
                name,
            )
        if dtype_name == "string":
            yield np.frombuffer(self.read_string_bytes(name), dtype=np.uint8)
            return
        if numeric:
            try:
                expected = checked_size(entry.shape, dtype.itemsize, file_size)
            except ValueError as e:
                raise IntegrityError("integrity.index", str(e), name) from None
            if expected != entry.size:
                raise IntegrityError(
                    "integrity.index",
                    f"shape {list(entry.shape)} needs {expected} bytes, index says {entry.size}",
                    name,
                )
        yield from self._stream(path, entry, dtype, chunk_elements, name)

    def _stream(
        self, path: str, entry: BundleEntry, dtype: np.dtype, chunk_elements: int, name: str
    ) -> Iterator[np.ndarray]:
        chunk_bytes = max(1, chunk_elements) * dtype.itemsize
        buf = bytearray(min(chunk_bytes, max(entry.size, 1)))
        view = memoryview(buf)
        crc, left = 0, entry.size
        with open(path, "rb", buffering=0) as f:
            f.seek(entry.offset)
            while left > 0:
                want = min(left, len(buf))
                got = f.readinto(view[:want])
                if got != want:
                    raise IntegrityError(
                        "integrity.truncated",
                        f"{os.path.basename(path)} ended early (read less bytes than requested)",
                        name,
                    )
                crc = crc32c.crc32c(view[:want], crc)
                left -= want
                yield np.frombuffer(buf, dtype=dtype, count=want // dtype.itemsize)
        if entry.crc32c is not None and unmask_crc(entry.crc32c) != crc:
            raise IntegrityError(
                "integrity.checksum",
                f"checksum does not match: stored {unmask_crc(entry.crc32c):#010x} vs. calculated {crc:#010x} "
                f"in {os.path.basename(path)}",
                name,
            )

    def _stream_sliced(
        self, name: str, entry: BundleEntry, dtype: np.dtype, chunk_elements: int
    ) -> Iterator[np.ndarray]:
        """Rebuild C order from slices, one block of rows at a time. Each slice's
        rows are contiguous and are read in increasing order, so its checksum is
        accumulated as we go and checked when its last row has been read."""
        parts = self._parts.get(name)
        if parts is None:
            raise IntegrityError("integrity.sliced", "slices could not be matched to the index", name)
        shape = entry.shape
        row_elems = 1
        for d in shape[1:]:
            row_elems *= d
        rows_per_block = max(1, chunk_elements // max(row_elems, 1))
        done_rows = [0] * len(parts)
        crcs = [0] * len(parts)
        files: dict[int, object] = {}
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
                    raw = self._read_part(files, name, part.entry, done_rows[k] * row_bytes, (b - a) * row_bytes)
                    crcs[k] = crc32c.crc32c(raw, crcs[k])
                    done_rows[k] += b - a
                    inner = zip(part.starts[1:], part.lengths[1:], strict=True)
                    index = (slice(a - r0, b - r0), *(slice(st, st + ln) for st, ln in inner))
                    block[index] = np.frombuffer(raw, dtype=dtype).reshape((b - a, *part.lengths[1:]))
                    filled += (b - a) * part_row
                    if done_rows[k] == part.lengths[0]:
                        self._check_crc(part.entry, crcs[k], name)
                if filled != block.size:
                    raise IntegrityError("integrity.sliced", f"slices do not cover rows [{r0}, {r1})", name)
                flat = block.reshape(-1)
                for i in range(0, flat.size, max(1, chunk_elements)):  # a row may exceed a chunk
                    yield flat[i : i + chunk_elements]
        finally:
            for f in files.values():
                f.close()  # type: ignore[attr-defined]

    def _read_part(self, files: dict, name: str, entry: BundleEntry, start: int, length: int) -> bytes:
        path = shard_path(self.path, entry.shard_id, self.num_shards)
        if entry.shard_id not in files:
            try:
                files[entry.shard_id] = open(path, "rb")  # noqa: SIM115 - closed by the caller
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

    @staticmethod
    def _check_crc(entry: BundleEntry, crc: int, name: str) -> None:
        if entry.crc32c is not None and unmask_crc(entry.crc32c) != crc:
            raise IntegrityError(
                "integrity.checksum",
                f"checksum does not match: stored {unmask_crc(entry.crc32c):#010x} vs. calculated {crc:#010x}",
                name,
            )

    def read_string_bytes(self, name: str, limit: int = 256 << 20) -> bytes:
        """The raw bytes of a string tensor, after checking its checksum.

        TF checksums string tensors specially: each element length as a uint32,
        then the 4-byte checksum of the lengths, then the string bytes.
        """
        entry = self._entries[name]
        path = shard_path(self.path, entry.shard_id, self.num_shards)
        try:
            file_size = os.path.getsize(path)
        except OSError:
            raise IntegrityError("integrity.shard_missing", f"{os.path.basename(path)} is missing", name) from None
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > file_size or entry.size > limit:
            raise IntegrityError("integrity.truncated", f"string entry lies outside {os.path.basename(path)}", name)
        with open(path, "rb") as f:
            f.seek(entry.offset)
            raw = f.read(entry.size)
        count = 1
        for d in entry.shape:
            count *= d
        try:
            pos, lengths = 0, []
            for _ in range(count):
                n, pos = read_varint(raw, pos)
                lengths.append(n)
            if pos + 4 + sum(lengths) != len(raw):
                raise TableError("string lengths do not add up to the entry size")
        except TableError as e:
            raise IntegrityError("integrity.checksum", f"malformed string tensor: {e}", name) from None
        crc = 0
        for n in lengths:
            crc = crc32c.crc32c(struct.pack("<I", n & 0xFFFFFFFF), crc)
        crc = crc32c.crc32c(raw[pos:], crc)
        if entry.crc32c is not None and unmask_crc(entry.crc32c) != crc:
            raise IntegrityError(
                "integrity.checksum",
                f"checksum does not match: stored {unmask_crc(entry.crc32c):#010x} vs. calculated {crc:#010x}",
                name,
            )
        return raw

    def close(self) -> None:
        pass


def read_state_file(directory: str) -> str | None:
    """The latest checkpoint prefix named by `<directory>/checkpoint`, or None."""
    path = os.path.join(directory, "checkpoint")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model_checkpoint_path":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
            return value if os.path.isabs(value) else os.path.join(directory, value)
    return None
