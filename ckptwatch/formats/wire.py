"""The protobuf wire format of a TF bundle index, decoded without TensorFlow or protobuf.

    fields(buf)            -> (field number, wire type, value) for each field of a message
    parse_entry(buf)       -> BundleEntry          (BundleEntryProto)
    parse_header(buf)      -> (num_shards, big_endian)   (BundleHeaderProto, the entry keyed "")
    slice_key_name(key)    -> the tensor a slice entry belongs to
    read_index(path)       -> BundleIndex          (the whole index file, checked)

Light on purpose (struct, crc32c through table.py; no numpy): the daemon's main process
reads an index header through it to learn a bundle's shard count.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import BinaryIO

from ckptwatch.formats.base import IntegrityError
from ckptwatch.formats.files import open_regular
from ckptwatch.formats.table import TableError, first_entry, iter_table, read_varint, unmask_crc

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
MAX_SHARDS = 1 << 16  # more data files than this is not a plausible checkpoint

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

    @property
    def dtype_name(self) -> str:
        return DTYPE_NAMES.get(self.dtype, f"dtype{self.dtype}")


def check_entry_crc(entry: BundleEntry, crc: int, name: str, where: str = "") -> None:
    """Raise integrity.checksum unless `crc` (of the bytes read) matches the entry's stored one."""
    if entry.crc32c is not None and unmask_crc(entry.crc32c) != crc:
        raise IntegrityError(
            "integrity.checksum",
            f"checksum does not match: stored {unmask_crc(entry.crc32c):#010x} vs. calculated {crc:#010x}"
            + (f" in {where}" if where else ""),
            name,
        )


def fields(buf: memoryview) -> Iterator[tuple[int, int, int | memoryview]]:
    """Iterate protobuf wire-format fields: (field number, wire type, value); the value is an
    int for varint and fixed-width fields, a memoryview of the bytes for length-delimited ones."""
    pos, end = 0, len(buf)
    while pos < end:
        tag = buf[pos]  # one-byte varints (tags below 16, small values) decoded inline: the common case
        if tag < 0x80:
            pos += 1
        else:
            tag, pos = read_varint(buf, pos, end)
        number, wire = tag >> 3, tag & 7
        value: int | memoryview
        if wire == 0:
            if pos < end and buf[pos] < 0x80:
                value = buf[pos]
                pos += 1
            else:
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


def as_bytes(value: int | memoryview) -> memoryview:
    """The bytes of a length-delimited field; a number where bytes belong is a malformed message."""
    if isinstance(value, int):
        raise TableError("a number where a length-delimited field belongs")
    return value


def as_int(value: int | memoryview) -> int:
    """The value of a varint or fixed-width field; bytes where a number belongs are malformed."""
    if not isinstance(value, int):
        raise TableError("a length-delimited field where a number belongs")
    return value


def signed64(v: int) -> int:
    """A varint read as unsigned, taken as the int64 it encodes."""
    return v - (1 << 64) if v >= 1 << 63 else v


def parse_shape(buf: memoryview) -> tuple[int, ...]:
    """A TensorShapeProto: its dimensions (an unknown rank is an error)."""
    dims = []
    for number, wire, value in fields(buf):
        if number == 2 and wire == 2:  # Dim
            size = 0
            for n2, w2, v2 in fields(as_bytes(value)):
                if n2 == 1 and w2 == 0:
                    size = signed64(as_int(v2))
            dims.append(size)
        elif number == 3 and value:
            raise TableError("shape of unknown rank")
    return tuple(dims)


def parse_entry(buf: memoryview) -> BundleEntry:
    """A BundleEntryProto: dtype, shape, shard_id, offset, size, crc32c, slices. (An index's
    entries as TF writes them are decoded together by formats/entries.py; this decodes one
    entry of any layout the wire format allows, and the ones that leaves.)"""
    kw: dict = {}
    for number, wire, value in fields(buf):
        if number == 1 and wire == 0:
            kw["dtype"] = value
        elif number == 2 and wire == 2:
            kw["shape"] = parse_shape(as_bytes(value))
        elif number == 3 and wire == 0:
            kw["shard_id"] = value
        elif number == 4 and wire == 0:
            kw["offset"] = signed64(as_int(value))
        elif number == 5 and wire == 0:
            kw["size"] = signed64(as_int(value))
        elif number == 6 and wire == 5:
            kw["crc32c"] = value
        elif number == 7 and wire == 2:
            kw.setdefault("slices", []).append(parse_slice(as_bytes(value)))
    if "slices" in kw:
        kw["slices"] = tuple(kw["slices"])
    return BundleEntry(**kw)


def parse_slice(buf: memoryview) -> tuple[Extent, ...]:
    """A TensorSliceProto: (start, length) per dimension, length None for the whole one."""
    extents = []
    for number, wire, value in fields(buf):
        if number == 1 and wire == 2:
            ext = {n: v for n, _, v in fields(as_bytes(value))}
            start = signed64(as_int(ext.get(1, 0)))
            length = signed64(as_int(ext[2])) if 2 in ext else None
            extents.append((start, length))
    return tuple(extents)


def slice_key_name(key: bytes) -> str | None:
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


def parse_header(buf: memoryview) -> tuple[int, bool]:
    """A BundleHeaderProto: (num_shards, big_endian)."""
    num_shards, big_endian = 1, False
    for number, wire, value in fields(buf):
        if number == 1 and wire == 0:
            num_shards = as_int(value)
        elif number == 2 and wire == 0:
            big_endian = value == 1
    return num_shards, big_endian


@dataclass
class BundleIndex:
    """What an index file says, before any data file is looked at."""

    num_shards: int = 1
    big_endian: bool = False
    entries: list[tuple[str, BundleEntry]] = field(default_factory=list)  # in key order
    slices: dict[str, list[BundleEntry]] = field(default_factory=dict)  # parent name -> its stored slices


def read_index(
    index_path: str,
    header_only: bool = False,
    decode: Callable[[list[memoryview]], list[BundleEntry | None]] | None = None,
) -> BundleIndex:
    """Read and check `<prefix>.index`: every block (checksums, key order) and the header.
    With header_only, only what the header needs is read and checked (the footer, the index
    block and the first data block, whose first entry the header is): bounded work whatever
    the file claims, for the daemon's main process, which wants the shard count alone.
    `decode` (ckptwatch.formats.entries.decode_entries): decodes the tensor entries' values
    together, giving None for any it leaves to `parse_entry`; the result is the same, errors
    included (the same error, about the same entry, as entry by entry).
    Raises IntegrityError("integrity.index", ...) saying what is wrong (NotRegularFile for a
    FIFO or device), OSError when the file cannot be read."""
    with open_regular(index_path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_INDEX_BYTES:
            raise IntegrityError("integrity.index", f"{index_path}: {size} bytes is too large for an index")
        if size == 0:
            raise IntegrityError("integrity.index", f"{index_path}: index file is empty")
        if header_only:
            return _read_header(f, size, index_path)
        data = f.read(size)
    if decode is not None:
        return _read_index_together(data, index_path, decode)
    index, header_seen, key = BundleIndex(), False, b""
    try:
        for key, value in iter_table(data):
            if key == b"":
                index.num_shards, index.big_endian = parse_header(value)
                header_seen = True
            elif key[:1] == b"\x00":  # a slice of a tensor stored in slices; its parent entry is listed
                parent = slice_key_name(key)
                if parent is not None:
                    index.slices.setdefault(parent, []).append(parse_entry(value))
            else:
                index.entries.append((key.decode("utf-8", "replace"), parse_entry(value)))
    except TableError as e:
        where = f" (after entry {key.decode('utf-8', 'replace')!r})" if key else ""
        raise IntegrityError("integrity.index", f"{index_path}: {e}{where}") from None
    if not header_seen:
        raise IntegrityError("integrity.index", f"{index_path}: no bundle header entry")
    return _checked_shards(index, index_path)


def _read_index_together(
    data: bytes, index_path: str, decode: Callable[[list[memoryview]], list[BundleEntry | None]]
) -> BundleIndex:
    """read_index with the tensor entries decoded by `decode`, DECODE_TOGETHER at a time (so
    that what is held besides the entries made is one batch's keys, values and columns, not the
    whole index's). Each batch's entries are taken in order as read_index takes them, the batch
    read before a table error first: the first error in that order is the one raised."""
    index, header_seen, key = BundleIndex(), False, b""
    pending: list[tuple[bytes, memoryview]] = []

    def settle() -> None:
        nonlocal header_seen, key
        decoded = iter(decode([value for k, value in pending if k and k[:1] != b"\x00"]))
        for key, value in pending:
            if key == b"":
                index.num_shards, index.big_endian = parse_header(value)
                header_seen = True
            elif key[:1] == b"\x00":
                parent = slice_key_name(key)
                if parent is not None:
                    index.slices.setdefault(parent, []).append(parse_entry(value))
            else:
                entry = next(decoded)
                if entry is None:  # left to the general decoder: it says what is wrong, if anything
                    entry = parse_entry(value)
                index.entries.append((key.decode("utf-8", "replace"), entry))
        pending.clear()

    try:
        failed: TableError | None = None
        try:
            for item in iter_table(data):
                pending.append(item)
                if len(pending) >= DECODE_TOGETHER:
                    settle()
        except TableError as e:
            failed = e
        settle()
        if failed is not None:
            raise failed
    except TableError as e:
        where = f" (after entry {key.decode('utf-8', 'replace')!r})" if key else ""
        raise IntegrityError("integrity.index", f"{index_path}: {e}{where}") from None
    if not header_seen:
        raise IntegrityError("integrity.index", f"{index_path}: no bundle header entry")
    return _checked_shards(index, index_path)


DECODE_TOGETHER = 1 << 14  # index entries per call of read_index's `decode`


def _read_header(f: BinaryIO, size: int, index_path: str) -> BundleIndex:
    try:
        first = first_entry(f, size)
        if first is None or first[0] != b"":
            raise IntegrityError("integrity.index", f"{index_path}: no bundle header entry")
        index = BundleIndex()
        index.num_shards, index.big_endian = parse_header(first[1])
    except TableError as e:
        raise IntegrityError("integrity.index", f"{index_path}: {e}") from None
    return _checked_shards(index, index_path)


def _checked_shards(index: BundleIndex, index_path: str) -> BundleIndex:
    if not 1 <= index.num_shards <= MAX_SHARDS:
        raise IntegrityError("integrity.index", f"{index_path}: implausible shard count {index.num_shards}")
    return index
