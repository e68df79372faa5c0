"""Protobuf wire-format writers for tests that craft bundle indexes byte by byte: an
encoder independent of ckptwatch.formats.wire, so a test does not check a reader against itself."""

from __future__ import annotations

import struct

import crc32c

from ckptwatch.formats.table import TABLE_MAGIC, mask_crc


def varint(n: int) -> bytes:
    n &= (1 << 64) - 1  # negative int64 -> ten-byte two's complement, as protobuf writes it
    out = bytearray()
    while True:
        b, n = n & 0x7F, n >> 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def field(number: int, value: int | bytes, fixed32: bool = False) -> bytes:
    if fixed32:
        assert isinstance(value, int)
        return varint(number << 3 | 5) + struct.pack("<I", value)
    if isinstance(value, bytes):
        return varint(number << 3 | 2) + varint(len(value)) + value
    return varint(number << 3) + varint(value)


def bundle_entry(dims: list[int], offset: int, size: int, crc: int, shard: int = 0, dtype: int = 1) -> bytes:
    """A BundleEntryProto: dtype, shape, shard_id, offset, size, crc32c (masked)."""
    shape = b"".join(field(2, field(1, d)) for d in dims)
    return (
        field(1, dtype) + field(2, shape) + (field(3, shard) if shard else b"")
        + field(4, offset) + field(5, size) + field(6, mask_crc(crc), fixed32=True)
    )  # fmt: skip


HEADER = field(1, 1) + field(3, field(1, 1))  # BundleHeaderProto: num_shards=1, version{producer=1}


def raw_table(
    entries: list[tuple[bytes, bytes]], restart_interval: int = 1, block_entries: int = 1000, compression: str = "none"
) -> bytes:
    """An independent LevelDB table writer (keys as given, not sorted), with
    prefix compression between restarts and several data blocks: what TF writes.

    compression: "none"; "snappy" as LevelDB's TableBuilder does it (a block is stored
    Snappy-compressed, type 1, when that saves at least 1/8 of it, else raw, type 0);
    "snappy-all" (every block type 1, whatever it saves; readers must accept that too).
    """
    assert compression in ("none", "snappy", "snappy-all"), compression

    def block(kvs: list[tuple[bytes, bytes]]) -> bytes:
        body, restarts, last = bytearray(), [], b""
        for i, (k, v) in enumerate(kvs):
            shared = 0
            if i % restart_interval == 0:
                restarts.append(len(body))
            else:
                while shared < min(len(k), len(last)) and k[shared] == last[shared]:
                    shared += 1
            body += varint(shared) + varint(len(k) - shared) + varint(len(v)) + k[shared:] + v
            last = k
        restarts = restarts or [0]
        body += b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts))
        return bytes(body)

    def stored(contents: bytes) -> bytes:
        """The block as written (maybe compressed), without its trailer; the trailer's
        masked CRC32C covers these bytes and the type byte (leveldb/table/table_builder.cc)."""
        kind = b"\x00"
        if compression != "none":
            import cramjam

            packed = bytes(cramjam.snappy.compress_raw(contents))
            if compression == "snappy-all" or len(packed) < len(contents) - len(contents) // 8:
                contents, kind = packed, b"\x01"
        return contents + kind

    def trailer(block_and_kind: bytes) -> bytes:
        return block_and_kind + struct.pack("<I", mask_crc(crc32c.crc32c(block_and_kind)))

    out, index = bytearray(), []
    groups = [entries[i : i + block_entries] for i in range(0, len(entries), block_entries)] or [[]]
    for group in groups:
        data = stored(block(group))
        index.append(((group[-1][0] if group else b"") + b"\xff", varint(len(out)) + varint(len(data) - 1)))
        out += trailer(data)
    meta = stored(block([]))
    meta_offset = len(out)
    out += trailer(meta)
    idx = stored(block(index))
    idx_offset = len(out)
    out += trailer(idx)
    handles = varint(meta_offset) + varint(len(meta) - 1) + varint(idx_offset) + varint(len(idx) - 1)
    out += handles + b"\x00" * (40 - len(handles)) + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out)
