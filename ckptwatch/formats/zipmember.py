"""Reading one zip member with a counted limit: the bytes actually produced are counted as
they are inflated, and reading stops past the member's declared size (or a cap), whatever
its headers say. zipfile's own reader inflates bzip2 and LZMA members without an output
limit (a few KB can expand to gigabytes in one call); here every decompress call yields at
most `chunk` bytes.

    member_chunks(fp, info, limit, chunk) -> Iterator[bytes]    CRC-32 checked at the end
    MemberError                                                  the member is damaged or lies
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zipfile
import zlib
from collections.abc import Callable, Iterator
from typing import BinaryIO, Protocol

_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")  # zipfile's structFileHeader: 30 bytes
_LOCAL_MAGIC = b"PK\x03\x04"
_READ = 64 << 10  # compressed bytes read at a time


class MemberError(ValueError):
    """The member cannot be read as its directory entry describes it; the message says why."""


class _Decompressor(Protocol):
    @property
    def eof(self) -> bool: ...

    @property
    def needs_input(self) -> bool: ...

    def decompress(self, data: bytes, max_length: int = -1) -> bytes: ...


def member_chunks(fp: BinaryIO, info: zipfile.ZipInfo, limit: int, chunk: int = 1 << 20) -> Iterator[bytes]:
    """The member's bytes, at most `chunk` per piece; MemberError when it produces more than
    `limit` or than its declared file_size (a bomb that lies), less than declared, or data
    whose CRC-32 does not match. `fp` is the archive, opened for binary reading."""
    if info.flag_bits & 0x1:
        raise MemberError("encrypted members are not supported")
    fp.seek(info.header_offset)
    header = fp.read(_LOCAL_HEADER.size)
    if len(header) != _LOCAL_HEADER.size or header[:4] != _LOCAL_MAGIC:
        raise MemberError("bad local file header")
    fields = _LOCAL_HEADER.unpack(header)
    name_len, extra_len = fields[10], fields[11]
    name = fp.read(name_len)
    if name.decode("utf-8" if info.flag_bits & 0x800 else "cp437", "replace") != info.orig_filename:
        raise MemberError("file name in the directory and in the local header differ")
    fp.seek(extra_len, 1)
    left = info.compress_size

    def read(n: int) -> bytes:
        nonlocal left
        data = fp.read(min(n, left))
        left -= len(data)
        return data

    allowed = min(limit, info.file_size)
    produced, crc = 0, 0
    for piece in _inflate(info.compress_type, read, chunk):
        produced += len(piece)
        if produced > allowed:
            what = "its declared size" if allowed == info.file_size else f"the {limit}-byte limit"
            raise MemberError(f"inflates past {what} ({info.file_size} bytes declared): a decompression bomb")
        crc = zlib.crc32(piece, crc)
        yield piece
    if produced != info.file_size:
        raise MemberError(f"holds {produced} bytes, {info.file_size} declared")
    if crc != info.CRC:
        raise MemberError("CRC-32 mismatch (the member is damaged)")


def _inflate(method: int, read: Callable[[int], bytes], chunk: int) -> Iterator[bytes]:
    if method == zipfile.ZIP_STORED:
        while data := read(min(_READ, chunk)):
            yield data
        return
    if method == zipfile.ZIP_DEFLATED:
        yield from _inflate_zlib(read, chunk)
        return
    d: _Decompressor
    if method == zipfile.ZIP_BZIP2:
        d = bz2.BZ2Decompressor()
    elif method == zipfile.ZIP_LZMA:
        d = _lzma_decompressor(read)
    else:
        raise MemberError(f"compression method {method} is not supported")
    while not d.eof:
        data = read(_READ) if d.needs_input else b""
        if not data and d.needs_input:
            raise MemberError("compressed data ends early (truncated)")
        try:
            out = d.decompress(data, chunk)
        except (OSError, EOFError, lzma.LZMAError) as e:  # bz2 raises OSError on bad data
            raise MemberError(f"cannot be decompressed ({e})") from None
        if out:
            yield out


def _inflate_zlib(read: Callable[[int], bytes], chunk: int) -> Iterator[bytes]:
    d = zlib.decompressobj(-15)
    try:
        while not d.eof:
            data = d.unconsumed_tail or read(_READ)
            if not data:
                # input used up: what zlib still holds (bounded: a window's worth at most)
                while out := d.decompress(b"", chunk):
                    yield out
                if not d.eof:
                    raise MemberError("compressed data ends early (truncated)")
                return
            out = d.decompress(data, chunk)
            if out:
                yield out
    except zlib.error as e:
        raise MemberError(f"cannot be decompressed ({e})") from None


def _lzma_decompressor(read: Callable[[int], bytes]) -> lzma.LZMADecompressor:
    """A zip LZMA member: a 4-byte header (version, properties size), the properties, then a
    raw LZMA1 stream (as zipfile.LZMADecompressor reads it)."""
    head = read(4)
    if len(head) != 4:
        raise MemberError("LZMA header truncated")
    (size,) = struct.unpack("<H", head[2:4])
    props = read(size)
    try:
        filters = [lzma._decode_filter_properties(lzma.FILTER_LZMA1, props)]  # type: ignore[attr-defined]  # what zipfile itself calls
        return lzma.LZMADecompressor(lzma.FORMAT_RAW, filters=filters)
    except (lzma.LZMAError, ValueError) as e:
        raise MemberError(f"bad LZMA properties ({e})") from None
