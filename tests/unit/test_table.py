"""The SSTable reader: round trips, and every way a file can be wrong raises
TableError with a message that says what is wrong (never an IndexError or a
struct.error from deep inside)."""

from __future__ import annotations

import contextlib
import io
import struct

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ckptwatch.formats.table import (
    FOOTER_SIZE,
    TABLE_MAGIC,
    TableError,
    build_table,
    first_entry,
    iter_table,
    mask_crc,
    read_varint,
    unmask_crc,
)
from tests.wire import raw_table, varint

ENTRIES = [(b"", b"header"), (b"model/bias", b"\x01\x02"), (b"model/kernel", b"x" * 300), (b"z", b"")]

keys = st.binary(min_size=0, max_size=40)
values = st.binary(min_size=0, max_size=200)
tables = st.dictionaries(keys, values, max_size=60)


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(tables)
def test_round_trip(d: dict[bytes, bytes]) -> None:
    got = [(k, bytes(v)) for k, v in iter_table(build_table(list(d.items())))]
    assert got == sorted(d.items())


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(tables, st.integers(1, 16), st.integers(1, 7))
def test_reads_prefix_compressed_multi_block_tables(d: dict[bytes, bytes], restart: int, per_block: int) -> None:
    entries = sorted(d.items())
    got = [(k, bytes(v)) for k, v in iter_table(raw_table(entries, restart, per_block))]
    assert got == entries


def test_build_table_output_matches_the_independent_writer() -> None:
    assert list(iter_table(build_table(ENTRIES))) == list(iter_table(raw_table(sorted(ENTRIES))))
    assert build_table(ENTRIES) == raw_table(sorted(ENTRIES))


def test_empty_table() -> None:
    assert list(iter_table(build_table([]))) == []


@pytest.mark.parametrize("keep", [0, 1, 20, FOOTER_SIZE - 1])
def test_too_short(keep: int) -> None:
    with pytest.raises(TableError, match=r"too short|truncated|empty"):
        list(iter_table(build_table(ENTRIES)[:keep]))


@pytest.mark.parametrize("cut", [1, 8, 30, 100])
def test_truncated(cut: int) -> None:
    data = build_table(ENTRIES)
    with pytest.raises(TableError, match="bad magic number"):
        list(iter_table(data[:-cut]))


def test_bad_magic() -> None:
    data = build_table(ENTRIES)
    with pytest.raises(TableError, match=r"not an sstable \(bad magic number\)"):
        list(iter_table(data[:-8] + struct.pack("<Q", TABLE_MAGIC ^ 1)))


def _checked_regions(table: bytes) -> list[range]:
    """Byte ranges of the data and index blocks (with trailers). The metaindex
    block is not read, by TF or by us, so damage there is harmless."""
    pos = len(table) - FOOTER_SIZE
    meta_offset, pos = read_varint(table, pos)
    _, pos = read_varint(table, pos)
    index_offset, pos = read_varint(table, pos)
    index_size, _ = read_varint(table, pos)
    return [range(0, meta_offset), range(index_offset, index_offset + index_size + 5)]


@settings(max_examples=100)
@given(st.data())
def test_any_flipped_bit_in_a_block_is_a_checksum_error(data) -> None:
    table = build_table(ENTRIES)
    region = data.draw(st.sampled_from(_checked_regions(table)))
    pos = data.draw(st.sampled_from(region))
    bit = data.draw(st.integers(0, 7))
    bad = table[:pos] + bytes([table[pos] ^ (1 << bit)]) + table[pos + 1 :]
    with pytest.raises(TableError, match="checksum mismatch"):
        list(iter_table(bad))


def test_flipped_byte_in_the_data_block_names_the_block() -> None:
    table = build_table(ENTRIES)
    pos = table.index(b"model/kernel")
    bad = table[:pos] + b"M" + table[pos + 1 :]
    with pytest.raises(TableError, match="data block at offset 0: checksum mismatch"):
        list(iter_table(bad))


def test_keys_out_of_order() -> None:
    table = raw_table([(b"b", b"1"), (b"a", b"2")])
    with pytest.raises(TableError, match="keys out of order at b'a'"):
        list(iter_table(table))


def test_keys_out_of_order_across_blocks() -> None:
    table = raw_table([(b"a", b"1"), (b"c", b"2"), (b"b", b"3")], block_entries=2)
    with pytest.raises(TableError, match="out of order"):
        list(iter_table(table))


def test_block_handle_past_the_end() -> None:
    table = bytearray(build_table(ENTRIES))
    footer = len(table) - FOOTER_SIZE
    handles = varint(0) + varint(1) + varint(1 << 30) + varint(100)
    table[footer : footer + 40] = handles + b"\x00" * (40 - len(handles))
    with pytest.raises(TableError, match="past the end of the file"):
        list(iter_table(bytes(table)))


def test_entry_running_past_its_block() -> None:
    # a data block whose only entry claims a 1000-byte value, with a valid checksum
    body = varint(0) + varint(1) + varint(1000) + b"k" + b"v" * 4 + struct.pack("<I", 0) + struct.pack("<I", 1)
    handle = varint(0) + varint(len(body))
    out = bytearray(body + b"\x00" + struct.pack("<I", mask_crc(crc32c.crc32c(body + b"\x00"))))
    index_body = varint(0) + varint(2) + varint(len(handle)) + b"k\xff" + handle + struct.pack("<II", 0, 1)
    idx_offset = len(out)
    out += index_body + b"\x00" + struct.pack("<I", mask_crc(crc32c.crc32c(index_body + b"\x00")))
    handles = varint(0) + varint(0) + varint(idx_offset) + varint(len(index_body))
    out += handles + b"\x00" * (40 - len(handles)) + struct.pack("<Q", TABLE_MAGIC)
    with pytest.raises(TableError, match="runs past the block"):
        list(iter_table(bytes(out)))


@settings(max_examples=300)
@given(st.binary(min_size=0, max_size=400))
def test_random_bytes_raise_only_table_error(blob: bytes) -> None:
    with contextlib.suppress(TableError):
        list(iter_table(blob))


@settings(max_examples=300)
@given(st.data())
def test_random_damage_raises_only_table_error(data) -> None:
    table = bytearray(build_table(ENTRIES))
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(table) - 1))
        table[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(TableError):
        list(iter_table(bytes(table)))


# -- Snappy-compressed blocks (compression type 1) ---------------------------------------------------

BIG = [(b"", b"header")] + [(b"model/layer_%03d/kernel" % i, b"\x08\x01\x12\x04" * 8) for i in range(200)]


@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(tables, st.integers(1, 16), st.integers(1, 7), st.sampled_from(["snappy", "snappy-all"]))
def test_reads_snappy_compressed_tables(d: dict[bytes, bytes], restart: int, per_block: int, how: str) -> None:
    entries = sorted(d.items())
    got = [(k, bytes(v)) for k, v in iter_table(raw_table(entries, restart, per_block, compression=how))]
    assert got == entries


def test_snappy_blocks_really_are_compressed_and_read_back() -> None:
    table = raw_table(BIG, block_entries=50, compression="snappy")
    assert len(table) < len(raw_table(BIG, block_entries=50)) // 2  # so its blocks are stored compressed
    assert [(k, bytes(v)) for k, v in iter_table(table)] == BIG
    with io.BytesIO(table) as f:
        first = first_entry(f, len(table))
    assert first is not None and first[0] == b"" and bytes(first[1]) == b"header"


def test_the_checksum_covers_the_compressed_bytes() -> None:
    table = raw_table(BIG, block_entries=500, compression="snappy-all")
    for pos in (3, 40, 200):  # inside the first (compressed) data block
        bad = table[:pos] + bytes([table[pos] ^ 0x10]) + table[pos + 1 :]
        with pytest.raises(TableError, match="data block at offset 0: checksum mismatch"):
            list(iter_table(bad))


def _with_block(contents: bytes, kind: int) -> bytes:
    """A one-data-block table whose data block is `contents` stored with type `kind` (valid checksum)."""
    stored = contents + bytes([kind])
    out = bytearray(stored + struct.pack("<I", mask_crc(crc32c.crc32c(stored))))
    handle = varint(0) + varint(len(contents))
    index_body = varint(0) + varint(2) + varint(len(handle)) + b"k\xff" + handle + struct.pack("<II", 0, 1)
    idx_offset = len(out)
    out += index_body + b"\x00" + struct.pack("<I", mask_crc(crc32c.crc32c(index_body + b"\x00")))
    handles = varint(0) + varint(0) + varint(idx_offset) + varint(len(index_body))
    return bytes(out + handles + b"\x00" * (40 - len(handles)) + struct.pack("<Q", TABLE_MAGIC))


def test_corrupt_snappy_data_with_a_valid_checksum_is_a_table_error() -> None:
    import cramjam

    packed = bytes(cramjam.snappy.compress_raw(b"model/kernel" * 40))
    with pytest.raises(TableError, match="Snappy"):
        list(iter_table(_with_block(packed[:-3], 1)))  # cut short
    with pytest.raises(TableError, match="Snappy"):
        list(iter_table(_with_block(varint(1 << 40) + b"\x00" * 10, 1)))  # a terabyte claimed
    with pytest.raises(TableError, match="Snappy"):
        list(iter_table(_with_block(varint(5000) + b"\x00" * 10, 1)))  # more than 21x its size
    with pytest.raises(TableError, match="unknown compression type 2"):
        list(iter_table(_with_block(b"x" * 20, 2)))


@settings(max_examples=200)
@given(st.data())
def test_random_damage_to_snappy_tables_raises_only_table_error(data) -> None:
    table = bytearray(raw_table(BIG, block_entries=40, compression="snappy-all"))
    for _ in range(data.draw(st.integers(1, 6))):
        pos = data.draw(st.integers(0, len(table) - 1))
        table[pos] = data.draw(st.integers(0, 255))
    with contextlib.suppress(TableError):
        list(iter_table(bytes(table)))


# -- varints and CRC masking -----------------------------------------------------------------------


@given(st.integers(0, (1 << 64) - 1))
def test_varint_round_trip(n: int) -> None:
    enc = varint(n)
    assert len(enc) <= 10
    assert read_varint(enc, 0) == (n, len(enc))
    assert read_varint(b"junk" + enc + b"tail", 4) == (n, 4 + len(enc))


def test_varint_limits() -> None:
    assert read_varint(b"\xff" * 9 + b"\x01", 0) == ((1 << 64) - 1, 10)  # ten bytes: the most allowed
    with pytest.raises(TableError, match="longer than 10 bytes"):
        read_varint(b"\xff" * 10 + b"\x01", 0)
    with pytest.raises(TableError, match="longer than 10 bytes"):
        read_varint(b"\x80" * 20, 0)
    with pytest.raises(TableError, match="runs past the end"):
        read_varint(b"\x80\x80", 0)
    with pytest.raises(TableError, match="runs past the end"):
        read_varint(b"", 0)
    with pytest.raises(TableError, match="runs past the end"):
        read_varint(b"\x96\x01", 0, end=1)  # `end` is a hard limit even if the buffer goes on
    assert read_varint(b"\x96\x01", 0) == (150, 2)


@given(st.integers(0, (1 << 32) - 1))
def test_crc_mask_round_trip(crc: int) -> None:
    assert unmask_crc(mask_crc(crc)) == crc
    assert 0 <= mask_crc(crc) < 1 << 32
