"""A strict reader for the SSTable files TensorFlow uses as bundle indexes.

The format is LevelDB's table (tensorflow/core/lib/io/table*.cc): data blocks of
prefix-compressed key/value entries, an index block pointing at them, and a
48-byte footer ending in a magic number. Every block carries a masked CRC32C.

We parse it ourselves instead of calling TF's C++ reader because a malformed
index can trip a CHECK there and abort the whole process; here every offset and
length is checked and a bad file raises `TableError` with the reason.

A block's trailer names its compression: 0 (none, what TF writes today) or 1
(Snappy: TF Serving's test SavedModels, T5's checkpoints, files written 2019-2023).
The checksum covers the stored (compressed) bytes and the type byte, and is
checked before anything is decompressed. Snappy blocks are inflated with cramjam
(imported on the first compressed block only: a small Rust extension, no numpy),
after their declared size has been checked against a bound.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

import crc32c

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48  # two padded block handles (40 bytes) + 8-byte magic
BLOCK_TRAILER_SIZE = 5  # compression type byte + masked crc32c
_MASK_DELTA = 0xA282EAD8
MAX_HEADER_BLOCK = 64 << 20  # first_entry: no index or data block of a real index comes near this
MAX_BLOCK = 64 << 20  # an inflated block larger than this is hostile (TF writes blocks of ~4 KiB)
NO_COMPRESSION, SNAPPY = 0, 1  # leveldb/table/format.h CompressionType


class TableError(ValueError):
    """The bytes are not a valid table; the message says where and why."""


def unmask_crc(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def read_varint(buf: bytes | memoryview, pos: int, end: int | None = None) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; return (value, next position)."""
    end = len(buf) if end is None else end
    result = shift = 0
    while True:
        if pos >= end:
            raise TableError("varint runs past the end of its buffer")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise TableError("varint longer than 10 bytes")


def _block_handle(buf: bytes | memoryview, pos: int, end: int) -> tuple[int, int, int]:
    offset, pos = read_varint(buf, pos, end)
    size, pos = read_varint(buf, pos, end)
    return offset, size, pos


def _read_block(data: bytes, offset: int, size: int, what: str) -> memoryview:
    if offset + size + BLOCK_TRAILER_SIZE > len(data) - FOOTER_SIZE:
        raise TableError(f"{what} block [{offset}, {offset + size}) lies past the end of the file ({len(data)} bytes)")
    return _checked_block(memoryview(data)[offset : offset + size + BLOCK_TRAILER_SIZE], offset, what)


def _checked_block(raw: memoryview, offset: int, what: str) -> memoryview:
    """A block's contents, from its bytes and trailer (`raw`), once its checksum matches."""
    size = len(raw) - BLOCK_TRAILER_SIZE
    kind = raw[size]
    (stored,) = struct.unpack_from("<I", raw, size + 1)
    if unmask_crc(stored) != crc32c.crc32c(raw[: size + 1]):
        raise TableError(f"{what} block at offset {offset}: checksum mismatch")
    if kind == NO_COMPRESSION:
        return raw[:size]
    if kind == SNAPPY:
        return memoryview(snappy_uncompress(raw[:size], f"{what} block at offset {offset}"))
    raise TableError(f"{what} block at offset {offset}: unknown compression type {kind}")


def snappy_uncompress(stored: memoryview | bytes, where: str, limit: int = MAX_BLOCK) -> bytes:
    """A raw Snappy block inflated, or TableError: the declared size (the varint that starts
    the block) is checked against `limit` and the data's 21x ceiling before anything is allocated."""
    declared, _ = read_varint(stored, 0)
    if declared > limit:
        raise TableError(f"{where}: Snappy block claims {declared} bytes uncompressed, more than {limit}")
    if declared > 22 * len(stored) + 64:  # Snappy expands at most ~21x (a 3-byte copy of 64 bytes)
        raise TableError(f"{where}: Snappy block claims {declared} bytes, impossible from {len(stored)} stored")
    from cramjam import snappy  # lazily: only indexes with compressed blocks need it

    try:
        out = bytes(snappy.decompress_raw(bytes(stored)))
    except Exception as e:  # cramjam.DecompressionError and friends: the message says why
        raise TableError(f"{where}: corrupt Snappy data ({str(e).strip() or type(e).__name__})") from None
    if len(out) != declared:
        raise TableError(f"{where}: Snappy block inflated to {len(out)} bytes, not the {declared} it claims")
    return out


def _block_entries(block: memoryview, what: str) -> Iterator[tuple[bytes, memoryview]]:
    if len(block) < 4:
        raise TableError(f"{what} block too short")
    (num_restarts,) = struct.unpack_from("<I", block, len(block) - 4)
    limit = len(block) - 4 - 4 * num_restarts
    if num_restarts == 0 or limit < 0:
        raise TableError(f"{what} block has a bad restart array")
    pos, key = 0, b""
    while pos < limit:
        # the three lengths, each one byte when below 128 (almost always): decoded inline
        if pos + 3 <= limit and block[pos] < 0x80 and block[pos + 1] < 0x80 and block[pos + 2] < 0x80:
            shared, unshared, value_len = block[pos], block[pos + 1], block[pos + 2]
            pos += 3
        else:
            shared, pos = read_varint(block, pos, limit)
            unshared, pos = read_varint(block, pos, limit)
            value_len, pos = read_varint(block, pos, limit)
        if shared > len(key) or pos + unshared + value_len > limit:
            raise TableError(f"{what} block: entry at {pos} runs past the block")
        key = key[:shared] + bytes(block[pos : pos + unshared])
        pos += unshared
        yield key, block[pos : pos + value_len]
        pos += value_len


def iter_table(data: bytes) -> Iterator[tuple[bytes, memoryview]]:
    """Yield (key, value) for every entry in the table, in key order."""
    if len(data) < FOOTER_SIZE:
        raise TableError(f"file is {len(data)} bytes, too short for a table footer (truncated or empty)")
    footer = len(data) - FOOTER_SIZE
    (magic,) = struct.unpack_from("<Q", data, len(data) - 8)
    if magic != TABLE_MAGIC:
        raise TableError("not an sstable (bad magic number): truncated or not an index file")
    _, _, pos = _block_handle(data, footer, len(data) - 8)  # metaindex: unused by TF
    index_offset, index_size, _ = _block_handle(data, pos, len(data) - 8)
    index = _read_block(data, index_offset, index_size, "index")
    previous = b""
    for _, handle in _block_entries(index, "index"):
        offset, size, _ = _block_handle(handle, 0, len(handle))
        for key, value in _block_entries(_read_block(data, offset, size, "data"), "data"):
            if key < previous:
                raise TableError(f"keys out of order at {key!r}")
            previous = key
            yield key, value


def first_entry(f: BinaryIO, file_size: int, max_block: int = MAX_HEADER_BLOCK) -> tuple[bytes, memoryview] | None:
    """The table's first (key, value), or None for a table without entries, reading only
    the footer, the index block and the first data block (each checked): bounded work
    however large the file, for the daemon's main process (a bundle's header entry, keyed
    b"", is always first). A block larger than `max_block` is refused."""
    if file_size < FOOTER_SIZE:
        raise TableError(f"file is {file_size} bytes, too short for a table footer (truncated or empty)")
    footer = _pread(f, file_size - FOOTER_SIZE, FOOTER_SIZE)
    (magic,) = struct.unpack_from("<Q", footer, FOOTER_SIZE - 8)
    if magic != TABLE_MAGIC:
        raise TableError("not an sstable (bad magic number): truncated or not an index file")
    _, _, pos = _block_handle(footer, 0, FOOTER_SIZE - 8)
    index_offset, index_size, _ = _block_handle(footer, pos, FOOTER_SIZE - 8)
    index = _fetch_block(f, file_size, index_offset, index_size, "index", max_block)
    for _, handle in _block_entries(index, "index"):
        offset, size, _ = _block_handle(handle, 0, len(handle))
        for key, value in _block_entries(_fetch_block(f, file_size, offset, size, "data", max_block), "data"):
            return key, value
        return None
    return None


def _fetch_block(f: BinaryIO, file_size: int, offset: int, size: int, what: str, max_block: int) -> memoryview:
    if offset + size + BLOCK_TRAILER_SIZE > file_size - FOOTER_SIZE:
        raise TableError(f"{what} block [{offset}, {offset + size}) lies past the end of the file ({file_size} bytes)")
    if size > max_block:
        raise TableError(f"{what} block at offset {offset} is {size} bytes, more than an index block should be")
    return _checked_block(memoryview(_pread(f, offset, size + BLOCK_TRAILER_SIZE)), offset, what)


def _pread(f: BinaryIO, offset: int, size: int) -> bytes:
    f.seek(offset)
    data = f.read(size)
    if len(data) != size:
        raise TableError(f"file ended early (wanted bytes [{offset}, {offset + size}))")
    return data


def build_table(entries: list[tuple[bytes, bytes]]) -> bytes:
    """Write a minimal valid table (one data block, restart every entry).

    Used by tests to craft hostile indexes; TF reads what this writes.
    """

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            b = n & 0x7F
            n >>= 7
            out.append(b | (0x80 if n else 0))
            if not n:
                return bytes(out)

    def block(kvs: list[tuple[bytes, bytes]]) -> bytes:
        body, restarts = bytearray(), []
        for k, v in kvs:
            restarts.append(len(body))
            body += varint(0) + varint(len(k)) + varint(len(v)) + k + v
        for r in restarts or [0]:
            body += struct.pack("<I", r)
        body += struct.pack("<I", len(restarts or [0]))
        return bytes(body)

    def with_trailer(contents: bytes) -> bytes:
        crc = crc32c.crc32c(contents + b"\x00")
        return contents + b"\x00" + struct.pack("<I", mask_crc(crc))

    out = bytearray()
    data_block = block(sorted(entries))
    data_handle = varint(0) + varint(len(data_block))
    out += with_trailer(data_block)
    meta_offset = len(out)
    meta_block = block([])
    out += with_trailer(meta_block)
    index_offset = len(out)
    last_key = max((k for k, _ in entries), default=b"")
    index_block = block([(last_key + b"\xff", data_handle)])
    out += with_trailer(index_block)
    handles = varint(meta_offset) + varint(len(meta_block)) + varint(index_offset) + varint(len(index_block))
    out += handles + b"\x00" * (40 - len(handles)) + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out)
