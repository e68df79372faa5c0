"""Mutations: bytes (flips, interesting values, truncation, insertion, deletion, splices,
varint and length-field bumps) and structure (bundle index entries rebuilt with valid block
CRCs, data shards re-CRC'd so the reader decodes the garbage, JSON and TOML tweaks)."""

from __future__ import annotations

import gzip
import io
import json
import random
import struct
import warnings
import zipfile
import zlib
from typing import Any

import crc32c

from ckptwatch.formats.table import build_table, iter_table
from ckptwatch.formats.wire import parse_entry
from tests.wire import bundle_entry, varint

BIG = [
    0,
    1,
    0x7F,
    0x80,
    0xFF,
    0x7FFF,
    0xFFFF,
    0x7FFFFFFF,
    0x80000000,
    0xFFFFFFFF,
    1 << 32,
    1 << 40,
    (1 << 63) - 1,
    1 << 63,
    (1 << 64) - 1,
]
DEEP = "\x00deep:"
WEIRD: list[Any] = [
    None,
    True,
    -1,
    0,
    1 << 64,
    -(1 << 63),
    1e308,
    float("nan"),
    "",
    "x" * 5000,
    [],
    {},
    [1, 2],
    {"a": 1},
    "../../etc/passwd",
]


# -- bytes -------------------------------------------------------------------------------------


def flip(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if b:
            b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b)


def interesting_byte(rng: random.Random, data: bytes) -> bytes:
    b = bytearray(data)
    if b:
        b[rng.randrange(len(b))] = rng.choice([0, 1, 0x7F, 0x80, 0xFF])
    return bytes(b)


def truncate(rng: random.Random, data: bytes) -> bytes:
    return data[: rng.randrange(len(data))] if data else data


def insert(rng: random.Random, data: bytes) -> bytes:
    pos = rng.randint(0, len(data))
    if data and rng.random() < 0.5:  # duplicate a chunk of the file itself
        a = rng.randrange(len(data))
        chunk = data[a : a + rng.randint(1, 256)] * rng.choice([1, 1, 2, 16])
    else:
        chunk = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    return data[:pos] + chunk + data[pos:]


def delete(rng: random.Random, data: bytes) -> bytes:
    if not data:
        return data
    a = rng.randrange(len(data))
    return data[:a] + data[a + rng.randint(1, 64) :]


def int_field(rng: random.Random, data: bytes) -> bytes:
    """Overwrite a 2/4/8-byte little- or big-endian integer (HDF5, zip and gzip length fields)."""
    width = rng.choice([2, 4, 8])
    if len(data) < width:
        return data
    pos = rng.randrange(len(data) - width + 1)
    value = rng.choice(BIG) & ((1 << (8 * width)) - 1)
    fmt = {2: "H", 4: "I", 8: "Q"}[width]
    packed = struct.pack(rng.choice("<>") + fmt, value)
    return data[:pos] + packed + data[pos + width :]


def varint_bump(rng: random.Random, data: bytes) -> bytes:
    """Replace one varint-looking run with a huge or negative one (protobuf length fields)."""
    if not data:
        return data
    pos = rng.randrange(len(data))
    end = pos
    while end < len(data) and data[end] & 0x80 and end - pos < 9:
        end += 1
    return data[:pos] + varint(rng.choice([*BIG, -1, -(1 << 31)])) + data[end + 1 :]


BYTE_MUTATORS = [flip, flip, interesting_byte, truncate, insert, delete, int_field, int_field, varint_bump]


def bytes_mutation(rng: random.Random, data: bytes, other: bytes | None = None) -> tuple[str, bytes]:
    if other and rng.random() < 0.1:
        a, b = rng.randint(0, len(data)), rng.randint(0, len(other))
        return "splice", data[:a] + other[b:]
    out, names = data, []
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        m = rng.choice(BYTE_MUTATORS)
        names.append(m.__name__)
        out = m(rng, out)
    return "+".join(names), out


# -- bundle indexes ----------------------------------------------------------------------------


def _entries(index: bytes) -> list[tuple[bytes, bytes]]:
    return [(bytes(k), bytes(v)) for k, v in iter_table(index)]


def recrc(index: bytes, data: bytes) -> bytes:
    """The index with each entry's CRC32C recomputed over what the (mutated) data shard holds."""
    out = []
    for key, value in _entries(index):
        if key == b"":
            out.append((key, value))
            continue
        e = parse_entry(memoryview(value))
        if e.slices or e.shard_id or e.dtype == 7:  # strings: TF's CRC covers their lengths as uint32s
            out.append((key, value))
            continue
        crc = crc32c.crc32c(data[e.offset : e.offset + e.size])
        out.append((key, bundle_entry(list(e.shape), e.offset, e.size, crc, e.shard_id, e.dtype)))
    return build_table(out)


def index_structure(rng: random.Random, index: bytes, data: bytes) -> tuple[str, bytes]:
    """Rewrite one entry (or the header) of a well-formed index: the table stays valid."""
    entries = _entries(index)
    if not entries:
        return "empty", index
    i = rng.randrange(len(entries))
    key, value = entries[i]
    choice = rng.randrange(6)
    if choice == 0 or key == b"":
        _, value = bytes_mutation(rng, value)
        what = "entry-bytes"
    else:
        e = parse_entry(memoryview(value))
        dims, offset, size, dtype = list(e.shape), e.offset, e.size, e.dtype
        if choice == 1:
            dims = [rng.choice([*BIG, -1, 3, 0]) for _ in range(rng.randint(0, 6))]
            what = "dims"
        elif choice == 2:
            offset, size = (
                rng.choice([offset, rng.randrange(len(data) + 1), rng.choice(BIG)]),
                rng.choice([size, 0, rng.randrange(len(data) + 1), rng.choice(BIG)]),
            )
            what = "offset-size"
        elif choice == 3:
            dtype = rng.choice([0, 1, 2, 3, 4, 5, 6, 7, 9, 10, 14, 17, 18, 19, 20, 21, 22, 23, 100, 1 << 31])
            what = "dtype"
        elif choice == 4:
            key = rng.choice([b"", b"\xff\xfe", key + b"/" * 50, b"_CHECKPOINTABLE_OBJECT_GRAPH", key[:1]])
            what = "key"
        else:
            entries.append((key + b"x", value))
            what = "duplicate"
        crc = crc32c.crc32c(data[offset : offset + size]) if offset < len(data) else 0
        value = bundle_entry(dims, offset & ((1 << 64) - 1), size & ((1 << 64) - 1), crc, 0, dtype & ((1 << 64) - 1))
    entries[i] = (key, value)
    return "index-" + what, build_table(sorted(dict(entries).items()))


# -- JSON / TOML -------------------------------------------------------------------------------


def _nodes(doc: Any, path: tuple = ()) -> list[tuple]:
    out = [path]
    if isinstance(doc, dict):
        for k, v in doc.items():
            out += _nodes(v, (*path, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc[:50]):
            out += _nodes(v, (*path, i))
    return out


def json_tweak(rng: random.Random, doc: Any) -> tuple[str, Any]:
    paths = _nodes(doc)
    path = rng.choice(paths[1:] or paths)
    if not path:
        return "root", rng.choice(WEIRD)
    parent = doc
    for p in path[:-1]:
        parent = parent[p]
    last = path[-1]
    r = rng.random()
    if r < 0.2 and isinstance(parent, dict):
        del parent[last]
        return "del", doc
    if r < 0.3:
        depth = rng.choice([10, 100, 2000, 20000])
        parent[last] = f"{DEEP}{depth}"  # json_bytes writes the nesting (too deep for json.loads)
        return f"deep{depth}", doc
    parent[last] = rng.choice(WEIRD)
    return "value", doc


def json_bytes(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    try:
        doc = json.loads(data)
    except ValueError:
        return bytes_mutation(rng, data)
    what, doc = json_tweak(rng, doc)
    text = json.dumps(doc, allow_nan=True)
    if what.startswith("deep"):
        depth = int(what[4:])
        text = text.replace(json.dumps(f"{DEEP}{depth}"), "[" * depth + "]" * depth)
    return "json-" + what, text.encode()


def gzip_json(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    what, inner = json_bytes(rng, gzip.decompress(data))
    return "gz-" + what, gzip.compress(inner, mtime=0)


def toml_text(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    lines = data.decode().splitlines()
    i = rng.randrange(len(lines))
    r = rng.randrange(5)
    if r == 0:
        lines.insert(i, lines[rng.randrange(len(lines))])
        what = "dup-line"
    elif r == 1 and "=" in lines[i]:
        k = lines[i].split("=", 1)[0]
        v = rng.choice(
            [
                '""',
                "-1",
                "1e400",
                "nan",
                "[]",
                "{}",
                "true",
                '"' + "x" * 3000 + '"',
                "9" * 40,
                '"\\u0000"',
                "1979-05-27T07:32:00Z",
            ]
        )
        lines[i] = f"{k}= {v}"
        what = "value"
    elif r == 2 and "=" in lines[i]:
        k = lines[i].split("=", 1)[0]
        depth = rng.choice([10, 500, 5000])
        lines[i] = f"{k}= " + ("[" * depth + "]" * depth if rng.random() < 0.5 else "{a=" * depth + "1" + "}" * depth)
        what = f"deep{depth}"
    elif r == 3:
        lines.insert(
            i,
            rng.choice(
                ["[[watch]]", "[daemon]", "[watch.policy]", "[[watch.policy.overrides]]", "[watch.model]", "x = 1"]
            ),
        )
        what = "table"
    else:
        return bytes_mutation(rng, data)
    return "toml-" + what, ("\n".join(lines) + "\n").encode()


# -- zip (.keras) ------------------------------------------------------------------------------


def keras_structure(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """Rewrite a member of a .keras zip (JSON tweak or byte mutation of the inner .h5) and zip it
    again, so the mutation gets past the zip CRCs; sometimes add a member or change compression."""
    src = zipfile.ZipFile(io.BytesIO(data))
    names = src.namelist()
    target = rng.choice(names)
    warnings.filterwarnings("ignore", "Duplicate name", UserWarning)
    out = io.BytesIO()
    method = rng.choice(
        [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA]
    )
    what = "member"
    with zipfile.ZipFile(out, "w", method) as dst:
        for name in names:
            body = src.read(name)
            if name == target:
                if name.endswith(".json"):
                    what, body = json_bytes(rng, body)
                else:
                    what, body = bytes_mutation(rng, body)
                if rng.random() < 0.05:
                    name = rng.choice(["../evil.json", "/abs.json", name + "/", "config.json"])
            dst.writestr(name, body)
        if rng.random() < 0.05:
            dst.writestr(rng.choice(["extra.bin", "assets/x"]), zlib.compress(b"\0" * 1000))
    return "keras-" + what, out.getvalue()


# -- binary fingerprints (v3) ------------------------------------------------------------------


def _fp_sections(data: bytes, magic_len: int) -> list[tuple[str, bytes]] | None:
    """A v3 fingerprint as [(kind, bytes)]: the magic, the zlib'd header and statistics (inflated),
    the digests and top bytes of samples, the rest raw; None when it does not split."""
    pos, parts = magic_len, [("raw", data[:magic_len])]
    try:
        for _ in range(2):
            n = int.from_bytes(data[pos : pos + 4], "little")
            parts.append(("zlib", zlib.decompress(data[pos + 4 : pos + 4 + n])))
            pos += 4 + n
        header = parts[1][1]
        head = int.from_bytes(header[:4], "little")
        tensors = json.loads(header[4 : 4 + head])["tensors"]
        flags = header[4 + head : 4 + head + tensors]
        k = sum(1 for f in flags if f & 2)
        parts.append(("raw", data[pos : pos + 16 * k]))
        pos += 16 * k
        n = int.from_bytes(data[pos : pos + 4], "little")
        parts.append(("zlib", zlib.decompress(data[pos + 4 : pos + 4 + n])))
        parts.append(("raw", data[pos + 4 + n :]))
    except (ValueError, KeyError, TypeError, zlib.error):
        return None
    return parts


def binary_fingerprint(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    """Mutate inside one section of a v3 fingerprint (its zlib'd columns inflated, mutated and
    deflated again, so the reader sees the damage rather than a zlib error)."""
    parts = _fp_sections(data, 10)
    if parts is None:
        return bytes_mutation(rng, data)
    i = rng.randrange(1, len(parts))
    kind, body = parts[i]
    if not body:
        return bytes_mutation(rng, data)
    what, body = bytes_mutation(rng, body)
    parts[i] = (kind, body)
    out = []
    for kind, body in parts:
        if kind == "zlib":
            packed = zlib.compress(body)
            out += [len(packed).to_bytes(4, "little"), packed]
        else:
            out.append(body)
    return f"section{i}-{what}", b"".join(out)
