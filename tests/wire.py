"""Protobuf wire-format writers for tests that craft bundle indexes byte by byte: an
encoder independent of ckptwatch.formats.wire, so a test does not check a reader against itself."""

from __future__ import annotations

import struct

from ckptwatch.formats.table import mask_crc


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
