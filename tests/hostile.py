"""Hostile and broken checkpoint files, built byte by byte (no TensorFlow): what the tests of
issue 12 feed to the readers, the CLI and the daemon.

    every_kind(dir)                     each hostile entry kind below, in a watch directory
    bundle(dir, name, entries=None, header=HEADER, data=VALUES)   an index + one data shard
    healthy(dir, name, step)            a one-tensor bundle that verifies `pass`
    overflowing_shape(dir, name)        a tensor whose element count is past 2**63
    multi_block_index(path, entries, n) an index of many data blocks
    object_graph(dir, name, graph)      a bundle whose _CHECKPOINTABLE_OBJECT_GRAPH holds `graph`
    string_count(dir, name, count)      a string tensor claiming `count` elements over a 32 MB shard
    many_shards(dir, name, n)           an index claiming `n` data shards
    fifo_shard(dir, name)               a small index whose data shard is a FIFO
    deep_saved_model(dir, name, depth)  a SavedModel-looking directory nested `depth` levels
                                        (remove it with remove_tree: rmtree recurses)
    keras_bomb(path, method, size)      a .keras whose weights member lies about its size
    gzip_bomb(path, size)               a gzip "fingerprint" inflating to `size` bytes
    deep_json(depth)                    `[[[...]]]`
"""

from __future__ import annotations

import os
import shutil
import struct
import sys
import zipfile
import zlib
from pathlib import Path

import crc32c
import numpy as np

from ckptwatch.formats.table import build_table, mask_crc
from tests.wire import HEADER, bundle_entry, field, raw_table, varint

VALUES = np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4").tobytes()
OBJECT_GRAPH_KEY = b"_CHECKPOINTABLE_OBJECT_GRAPH"
STRING = 7  # DT_STRING


def bundle(
    directory: Path | str,
    name: str = "ckpt-1",
    entries: list[tuple[bytes, bytes]] | None = None,
    header: bytes = HEADER,
    data: bytes = VALUES,
) -> str:
    """`<directory>/<name>.index` (+ `.data-00000-of-00001` holding `data`); the prefix."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    prefix = str(directory / name)
    if entries is None:
        entries = [(b"w", bundle_entry([4], 0, len(VALUES), crc32c.crc32c(VALUES)))]
    if data is not None:  # the data first, the index last: as TensorFlow commits a save
        Path(prefix + ".data-00000-of-00001").write_bytes(data)
    Path(prefix + ".index").write_bytes(build_table([(b"", header), *entries]))
    return prefix


def every_kind(directory: Path, prefix: str = "ckpt") -> dict[str, str]:
    """Each hostile entry kind of issue 12 in `directory` (a watch directory), bundles named
    `<prefix>-<even step>`: kind -> the path of the candidate it makes (remove the deep tree,
    `<prefix>-export`, with remove_tree)."""
    fifo = directory / f"{prefix}-fifo.weights.h5"
    os.mkfifo(fifo)
    return {
        "object graph": object_graph(directory, f"{prefix}-2", malformed_object_graph()),
        "65536 shards": many_shards(directory, f"{prefix}-4"),
        "fifo shard": fifo_shard(directory, f"{prefix}-6"),
        "string count": string_count(directory, f"{prefix}-8", 1 << 26),
        "overflowing shape": overflowing_shape(directory, f"{prefix}-10"),
        "deep tree": deep_saved_model(directory, f"{prefix}-export"),
        "fifo file": str(fifo),
    }


def healthy(directory: Path | str, name: str, step: int = 0) -> str:
    """A one-tensor bundle that verifies `pass` (its values move a little with `step`, so
    consecutive ones are neither identical nor far apart)."""
    values = (np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4") + np.float32(0.01 * step)).tobytes()
    entries = [(b"w", bundle_entry([4], 0, len(values), crc32c.crc32c(values)))]
    return bundle(directory, name, entries, data=values)


def overflowing_shape(directory: Path | str, name: str) -> str:
    """A float tensor whose shape's element count is past 2**63."""
    entries = [(b"w", bundle_entry([1 << 62, 1 << 62], 0, len(VALUES), crc32c.crc32c(VALUES)))]
    return bundle(directory, name, entries)


def multi_block_index(path: Path | str, entries: list[tuple[bytes, bytes]], per_block: int) -> None:
    """An index table of many data blocks of `per_block` entries each (build_table writes one)."""
    Path(path).write_bytes(raw_table(sorted(entries), block_entries=per_block))


def string_tensor(values: list[bytes]) -> tuple[bytes, int]:
    """A string tensor as a bundle stores it, and its checksum (as TF computes it)."""
    lengths = b"".join(varint(len(v)) for v in values)
    crc = 0
    for v in values:
        crc = crc32c.crc32c(struct.pack("<I", len(v)), crc)
    lengths_crc = struct.pack("<I", mask_crc(crc))
    body = lengths + lengths_crc + b"".join(values)
    crc = crc32c.crc32c(lengths_crc + b"".join(values), crc)
    return body, crc


def _string_entry(dims: list[int], offset: int, size: int, crc: int) -> bytes:
    shape = b"".join(field(2, field(1, d)) for d in dims)
    where = field(4, offset) + field(5, size) + field(6, mask_crc(crc), fixed32=True)
    return field(1, STRING) + field(2, shape) + where


def object_graph(directory: Path | str, name: str, graph: bytes) -> str:
    """A healthy tensor `w` plus an object graph entry holding `graph` (any bytes)."""
    body, crc = string_tensor([graph])
    data = VALUES + body
    entries = [
        (b"w", bundle_entry([4], 0, len(VALUES), crc32c.crc32c(VALUES))),
        (OBJECT_GRAPH_KEY, _string_entry([], len(VALUES), len(body), crc)),
    ]
    return bundle(directory, name, entries, data=data)


def malformed_object_graph() -> bytes:
    """A TrackableObjectGraph whose node's child reference has a string where the node id
    (a varint) belongs, and a node id far past the node count."""
    bad_ref = field(1, b"not a number") + field(2, b"child")
    return field(1, field(1, bad_ref))


def string_count(directory: Path | str, name: str, count: int, megabytes: int = 32) -> str:
    """A string tensor claiming `count` elements, stored as `megabytes` MB of zero lengths:
    walking the claimed count is unbounded work unless it is checked against the bytes."""
    raw = b"\x00" * (megabytes << 20)
    entries = [(b"names", _string_entry([count], 0, len(raw), 0))]
    return bundle(directory, name, entries, data=raw)


def many_shards(directory: Path | str, name: str, n: int = 1 << 16) -> str:
    """An index claiming `n` data shards, with one tensor per claimed shard entry."""
    header = field(1, n) + field(3, field(1, 1))
    entries = [
        (f"w{k:06d}".encode(), bundle_entry([4], 0, len(VALUES), crc32c.crc32c(VALUES), shard=k % n))
        for k in range(min(n, 4000))
    ]
    prefix = bundle(directory, name, entries, header=header, data=None)
    Path(f"{prefix}.data-00000-of-{n:05d}").write_bytes(VALUES)  # the first shard alone is there
    os.utime(prefix + ".index")  # the index last
    return prefix


def fifo_shard(directory: Path | str, name: str) -> str:
    """A small valid index whose (only) data shard is a FIFO: opening it blocks forever."""
    prefix = bundle(directory, name, data=None)
    os.mkfifo(prefix + ".data-00000-of-00001")
    return prefix


def deep_saved_model(directory: Path | str, name: str, depth: int = 1100) -> str:
    """A directory with saved_model.pb whose `variables/` holds a tree `depth` levels deep."""
    root = Path(directory) / name
    (root / "variables").mkdir(parents=True)
    (root / "saved_model.pb").write_bytes(b"\x08\x01")
    fd = os.open(root / "variables", os.O_RDONLY)
    try:
        for _ in range(depth):  # relative steps: the full path would pass PATH_MAX
            os.mkdir("d", dir_fd=fd)
            nxt = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nxt
    finally:
        os.close(fd)
    return str(root)


def remove_tree(path: Path | str) -> None:
    """shutil.rmtree for a tree deeper than the recursion limit (pytest's own clean-up of old
    temp directories would fail on one, in every later run): tests remove theirs."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(max(old, 20_000))
    try:
        shutil.rmtree(path, ignore_errors=True)
    finally:
        sys.setrecursionlimit(old)


def deep_json(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def keras_bomb(path: Path | str, method: int = zipfile.ZIP_BZIP2, size: int = 1 << 30) -> str:
    """A .keras whose weights member inflates to `size` bytes but declares a tiny file_size
    (the central directory lies), with a small valid config.json."""
    path = str(path)
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("config.json", b"{}")
        with zf.open("model.weights.h5", "w", force_zip64=True) as f:
            chunk = b"\0" * (1 << 20)
            for _ in range(size >> 20):
                f.write(chunk)
    _lie_about_size(path, b"model.weights.h5", 1000)
    return path


def _lie_about_size(path: str, member: bytes, declared: int) -> None:
    """Rewrite the member's uncompressed size in the central directory (and the zip64 extra)."""
    data = bytearray(Path(path).read_bytes())
    at = data.find(b"PK\x01\x02" + b"")
    while at != -1:
        name_len, extra_len = struct.unpack_from("<HH", data, at + 28)
        name = bytes(data[at + 46 : at + 46 + name_len])
        if name == member:
            struct.pack_into("<I", data, at + 24, declared)  # uncompressed size (32-bit)
            extra_at = at + 46 + name_len
            end = extra_at + extra_len
            while extra_at + 4 <= end:
                tag, n = struct.unpack_from("<HH", data, extra_at)
                if tag == 1 and n >= 8:  # zip64: uncompressed size first
                    struct.pack_into("<Q", data, extra_at + 4, declared)
                    struct.pack_into("<I", data, at + 24, 0xFFFFFFFF)
                extra_at += 4 + n
        at = data.find(b"PK\x01\x02", at + 4)
    Path(path).write_bytes(bytes(data))


def gzip_bomb(path: Path | str, size: int = 1 << 30) -> str:
    """A gzip file inflating to `size` bytes: a fingerprint's header, then spaces."""
    head = b'{"schema":"ckptwatch.fingerprint/v1","pad":"'
    comp = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = [comp.compress(head)]
    chunk = b" " * (1 << 20)
    for _ in range(size >> 20):
        out.append(comp.compress(chunk))
    out.append(comp.flush())
    Path(path).write_bytes(b"".join(out))
    return str(path)
