"""The v3 fingerprint encoding: the v2 content, stored as columns (issue 15).

After FINGERPRINT_MAGIC_V3:
    uint32 n, zlib(header)      JSON {schema, checkpoint, tensors: N, kinds: [...], dtypes: [...]},
                                preceded by its length (uint32), then the columns, in this order:
        flags u8[N]             1 stats, 2 sketch, 4 display (differs from the name), 8 known
        kind, dtype u16[N]      indexes into `kinds` and `dtypes`
        rank u16[N], dims i64[sum of ranks]
        extra_bytes i64[N]      bytes on disk less elements x the dtype's width (0 for numbers)
        stride u8[K]            log2 of each sketch's stride (K: tensors with a sketch)
        width u8[K]             how its sample is stored (F32 ... U8 below)
        name, display, known    front-coded: shared-prefix length u32, suffix length u32, suffixes
    uint32 n, zlib(statistics)  for the S tensors with statistics, as columns:
        count - elements, nan, inf, zeros   i64[S] each (zero_fraction = zeros / count where that is
                                            its exact value: `exact` bits, else float64 in `rest`)
        mean, std, min, max, skewness, kurtosis
                                float64 columns; the values a float32 holds exactly (min and max of
                                a float32 tensor) as float32 (a bit per row says which)
        l2                      the difference, in units in the last place, from
                                sqrt(n std^2 + n mean^2) (n finite values): usually 0 or 1
    digests                     the first 128 bits of each blake3 digest, 16 bytes a sketch
    uint32 n, deflate(top bytes)  the samples, grouped by width (F32 first; tensor order within a
                                group): the most significant byte of every value (sign and
                                exponent: they compress, Huffman-coded), then the other bytes, raw
Every multi-byte column is stored byte-plane by byte-plane (all first bytes, then all second
bytes, ...): the high bytes of small integers and the exponents of floats then compress to little.
Everything is exact: reading gives the TensorInfo, TensorStats and TensorSketch that v2 gives,
bit for bit (tests/unit/test_fingerprint_v3.py). Every count and length is checked against the
bytes before anything is allocated from it.
"""

from __future__ import annotations

import itertools
import json
import math
import operator
import zlib

import numpy as np

from ckptwatch.formats.base import TensorInfo
from ckptwatch.formats.layout import FINGERPRINT_SCHEMA_V3
from ckptwatch.verify.sketch import SAMPLE_SIZE, TensorSketch, stored_stride
from ckptwatch.verify.stats import TensorStats

DIGEST = 16
STATS, SKETCH, DISPLAY, KNOWN = 1, 2, 4, 8
_ALL_FLAGS = STATS | SKETCH | DISPLAY | KNOWN
_ROW = ("count", "nan", "inf", "mean", "std", "min", "max", "l2", "zero_fraction", "skewness", "kurtosis")
_row_of = operator.attrgetter(*_ROW)
# what v2 stored a sample as: float32 for these dtypes, float64 for the others
SMALL_FLOATS = frozenset({"float32", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "bool"})
_ITEMSIZE = {
    "float16": 2, "bfloat16": 2, "float32": 4, "float64": 8, "int8": 1, "uint8": 1, "int16": 2,
    "uint16": 2, "int32": 4, "uint32": 4, "int64": 8, "uint64": 8, "bool": 1, "complex64": 8,
    "complex128": 16, "float8_e5m2": 1, "float8_e4m3fn": 1, "float8_e4m3fnuz": 1,
    "float8_e4m3b11fnuz": 1, "float8_e5m2fnuz": 1,
}  # fmt: skip
# Sample storage: 0 float32, 1 float64 (what v2 stores), 2 float16, 3 bfloat16 (the top half of a
# float32), 4 int8, 5 uint8: a narrower one only where every value of the group survives it.
F32, F64, F16, BF16, I8, U8 = range(6)
_WIDTH_BYTES = (4, 8, 2, 2, 1, 1)
_NARROW = {"float16": F16, "bfloat16": BF16, "int8": I8, "bool": U8, "uint8": U8}
_NARROW.update({k: F16 for k in _ITEMSIZE if k.startswith("float8")})  # every float8 value is a float16
_STORE = {F32: "<f4", F64: "<f8", F16: "<f2", I8: "i1", U8: "u1"}
MAX_STRIDE_LOG2 = 30
MAX_NAME_BYTES = 64 << 20  # front coding could otherwise expand a small header quadratically


# -- byte planes -------------------------------------------------------------------------------


def _planes(a: np.ndarray, dtype: str) -> bytes:
    a = np.ascontiguousarray(a, dtype=dtype)
    return a.view(np.uint8).reshape(-1, a.itemsize).T.tobytes()


class Cursor:
    """Reads columns off an inflated section; every length checked before it is used."""

    def __init__(self, data: bytes, what: str):
        self.data, self.pos, self.what = data, 0, what

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError(f"{self.what} is truncated")
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def array(self, dtype: str, n: int) -> np.ndarray:
        width = np.dtype(dtype).itemsize
        raw = np.frombuffer(self.take(n * width), dtype=np.uint8)
        return np.ascontiguousarray(raw.reshape(width, n).T).view(dtype).reshape(n)

    def bits(self, n: int) -> np.ndarray:
        raw = np.frombuffer(self.take((n + 7) // 8), dtype=np.uint8)
        return np.unpackbits(raw, count=n, bitorder="little").astype(bool)

    def done(self) -> None:
        if self.pos != len(self.data):
            raise ValueError(f"{self.what} holds {len(self.data) - self.pos} bytes more than it describes")


# -- strings -----------------------------------------------------------------------------------


def _shared(a: bytes, b: bytes) -> int:
    """Length of the common prefix of a and b (slice comparisons: memcmp, not a Python loop)."""
    n = min(len(a), len(b))
    if a[:n] == b[:n]:
        return n
    lo, hi = 0, n  # a[:lo] == b[:lo], a[:hi] != b[:hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if a[:mid] == b[:mid]:
            lo = mid
        else:
            hi = mid
    return lo


def _shared_prefixes(encoded: list[bytes]) -> list[int]:
    """For each string, the length of the prefix it shares with the one before (0 for the first):
    one comparison of two byte matrices when they are small, else memcmp per pair."""
    n = len(encoded)
    width = max(map(len, encoded), default=0)
    if n < 2 or n * width > 1 << 24:
        return [0][:n] + [_shared(a, b) for a, b in itertools.pairwise(encoded)]
    matrix = np.array(encoded, dtype=f"S{width}").view(np.uint8).reshape(n, width)
    differ = matrix[1:] != matrix[:-1]
    first = np.where(differ.any(axis=1), differ.argmax(axis=1), width)
    lengths = np.array([len(b) for b in encoded], dtype=np.int64)
    return [0, *np.minimum(first, np.minimum(lengths[1:], lengths[:-1])).tolist()]


def _front_coded(strings: list[str]) -> bytes:
    encoded = [s.encode("utf-8", "surrogatepass") for s in strings]  # JSON (v2) kept lone surrogates too
    shared = _shared_prefixes(encoded)
    suffixes = [b[p:] for b, p in zip(encoded, shared, strict=True)]
    lengths = [len(b) for b in suffixes]
    return _planes(np.array(shared, dtype=np.int64), "<u4") + _planes(np.array(lengths), "<u4") + b"".join(suffixes)


def _front_decoded(cur: Cursor, n: int, what: str) -> list[str]:
    shared = cur.array("<u4", n).astype(np.int64)
    lengths = cur.array("<u4", n).astype(np.int64)
    blob = cur.take(int(lengths.sum()))
    full = shared + lengths
    if n and (shared[0] != 0 or np.any(shared[1:] > full[:-1])):
        raise ValueError(f"{what}: a shared prefix longer than the previous {what}")
    if int(full.sum()) > MAX_NAME_BYTES:
        raise ValueError(f"{what}s of more than {MAX_NAME_BYTES} bytes")
    out, prev, pos = [], b"", 0
    for p, k in zip(shared.tolist(), lengths.tolist(), strict=True):
        prev = prev[:p] + blob[pos : pos + k]
        pos += k
        out.append(prev.decode("utf-8", "surrogatepass"))
    return out


# -- floats ------------------------------------------------------------------------------------


def _narrowed(col: np.ndarray) -> bytes:
    """A float64 column: a bit per row for the values a float32 holds exactly, those as float32,
    the others as float64."""
    with np.errstate(over="ignore", invalid="ignore"):
        f4 = col.astype("<f4")
    ok = f4.astype("<f8").view("<u8") == col.view("<u8")
    return np.packbits(ok, bitorder="little").tobytes() + _planes(f4[ok], "<f4") + _planes(col[~ok], "<f8")


def _widened(cur: Cursor, n: int) -> np.ndarray:
    ok = cur.bits(n)
    k = int(ok.sum())
    col = np.empty(n, dtype="<f8")
    col[ok] = cur.array("<f4", k)
    col[~ok] = cur.array("<f8", n - k)
    return col


def _l2_predicted(count: np.ndarray, nan: np.ndarray, inf: np.ndarray, mean: np.ndarray, std: np.ndarray):
    """sqrt(m2 + n mean^2) with m2 = n std^2 (stats._finished's l2), as uint64 bits."""
    n = (count - nan - inf).astype(np.float64)
    with np.errstate(all="ignore"):
        return np.sqrt(std * std * n + n * (mean * mean)).view("<u8")


def _zigzag(r: np.ndarray) -> np.ndarray:
    r = r.view(np.int64)
    return ((r << 1) ^ (r >> 63)).view(np.uint64)


def _unzigzag(z: np.ndarray) -> np.ndarray:
    z = z.view(np.uint64)
    return ((z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))).view(np.uint64)


def _zero_fraction(zeros: np.ndarray, count: np.ndarray) -> np.ndarray:
    with np.errstate(all="ignore"):
        return np.where(count > 0, zeros / np.maximum(count, 1), 0.0)


# -- encoding ----------------------------------------------------------------------------------


def encode(magic: bytes, checkpoint: dict, entries: list, header_limit=None) -> bytes | None:
    """The v3 bytes of (info, stats or None, sketch or None) entries: columns gathered with one
    comprehension each, a Python loop only over what each sketch needs (its stride and digest).
    None when the header inflates to more than `header_limit(size of the file)`: the reader
    would refuse it as a decompression bomb (columns of names and shapes alone compress past it)."""
    n = len(entries)
    infos = [e[0] for e in entries]
    names = [i.name for i in infos]
    shapes = [i.shape for i in infos]
    sizes = list(map(math.prod, shapes))
    kind_names = [i.kind for i in infos]
    dtype_names = [i.dtype for i in infos]
    kinds = {k: j for j, k in enumerate(dict.fromkeys(kind_names))}
    dtypes = {d: j for j, d in enumerate(dict.fromkeys(dtype_names))}
    extra = [i.nbytes - size * _ITEMSIZE.get(i.dtype, 0) for i, size in zip(infos, sizes, strict=True)]
    has_display = [bool(i.display) and i.display != i.name for i in infos]
    displays = [i.display for i, d in zip(infos, has_display, strict=True) if d]
    knowns = [i.known for i in infos if i.known]
    stat_rows = [_row_of(e[1]) for e in entries if e[1] is not None]
    sizes_s = [size for e, size in zip(entries, sizes, strict=True) if e[1] is not None]
    sketched = [e[2] is not None for e in entries]
    strides, widths, hashes, kept_of = [], [], [], []
    for k, ((info, _, sketch), size) in enumerate(zip(entries, sizes, strict=True)):
        if sketch is None:
            continue
        stride = max(stored_stride(sketch.count, info.nbytes), sketch.stride)
        kept = sketch.sample if stride == sketch.stride else sketch.sample[:: stride // sketch.stride]
        digest = sketch.hash.removeprefix("blake3:")[: 2 * DIGEST]
        if stride & (stride - 1) or kept.size != -(-min(size, SAMPLE_SIZE) // stride) or len(digest) < 2 * DIGEST:
            sketched[k] = False  # a sketch that does not describe this tensor (v2 wrote an unreadable file)
            continue
        strides.append(stride.bit_length() - 1)
        widths.append(F32 if info.dtype in SMALL_FLOATS else F64)
        hashes.append(digest)
        kept_of.append((info.dtype, kept))
    digests = bytes.fromhex("".join(hashes))
    flags = (
        np.array([e[1] is not None for e in entries], dtype=np.uint8) * STATS
        + np.array(sketched, dtype=np.uint8) * SKETCH
        + np.array(has_display, dtype=np.uint8) * DISPLAY
        + np.array([bool(i.known) for i in infos], dtype=np.uint8) * KNOWN
    ).astype(np.uint8)
    head = json.dumps(
        {"schema": FINGERPRINT_SCHEMA_V3, "checkpoint": checkpoint, "tensors": n, "kinds": list(kinds)}
        | {"dtypes": list(dtypes)},
        separators=(",", ":"),
    ).encode()
    samples = _samples(kept_of, widths)
    header = b"".join(
        [
            len(head).to_bytes(4, "little"),
            head,
            flags.tobytes(),
            _planes(np.array([kinds[k] for k in kind_names]), "<u2"),
            _planes(np.array([dtypes[d] for d in dtype_names]), "<u2"),
            _planes(np.array(list(map(len, shapes))), "<u2"),
            _planes(np.array(list(itertools.chain.from_iterable(shapes)), dtype=np.int64), "<i8"),
            _planes(np.array(extra, dtype=np.int64), "<i8"),
            np.array(strides, dtype=np.uint8).tobytes(),
            np.array(widths, dtype=np.uint8).tobytes(),
            _front_coded(names),
            _front_coded(displays),
            _front_coded(knowns),
        ]
    )
    packed_header = zlib.compress(header, 9)
    packed_stats = zlib.compress(_stats_columns(stat_rows, sizes_s), 6)
    top, rest = samples
    z = zlib.compressobj(6, zlib.DEFLATED, 15, 9, zlib.Z_HUFFMAN_ONLY)  # signs and exponents: no repeats
    packed_top = z.compress(top) + z.flush()  # to find, a skewed alphabet; 10x faster than LZ77, smaller
    out = b"".join(
        [
            magic,
            len(packed_header).to_bytes(4, "little"),
            packed_header,
            len(packed_stats).to_bytes(4, "little"),
            packed_stats,
            digests,
            len(packed_top).to_bytes(4, "little"),
            packed_top,
            rest,
        ]
    )
    return None if header_limit is not None and len(header) > header_limit(len(out)) else out


def _stats_columns(rows: list[tuple], sizes: list[int]) -> bytes:
    if not rows:
        return b""
    cols = list(zip(*rows, strict=True))
    count, nan, inf = (np.array(c, dtype=np.int64) for c in cols[:3])
    mean, std, mn, mx, l2, zf, skew, kurt = (np.array(c, dtype="<f8") for c in cols[3:])
    with np.errstate(all="ignore"):
        guess = np.clip(np.nan_to_num(np.rint(zf * count), nan=0.0), 0, np.maximum(count, 0)).astype(np.int64)
    exact = _zero_fraction(guess, count).view("<u8") == zf.view("<u8")
    guess[~exact] = 0
    residual = l2.view("<u8") - _l2_predicted(count, nan, inf, mean, std)
    return b"".join(
        [
            _planes(count - np.array(sizes, dtype=np.int64), "<i8"),
            _planes(nan, "<i8"),
            _planes(inf, "<i8"),
            _planes(guess, "<i8"),
            np.packbits(exact, bitorder="little").tobytes(),
            _planes(zf[~exact], "<f8"),
            *(_narrowed(c) for c in (mean, std, mn, mx, skew, kurt)),
            _planes(_zigzag(residual), "<u8"),
        ]
    )


def _samples(kept_of: list[tuple[str, np.ndarray]], widths: list[int]) -> tuple[bytes, bytes]:
    """All samples as (top bytes, other bytes), grouped by storage width (in the order of
    _WIDTH_BYTES; tensor order within a group). `widths` holds what v2 stores each as (F32, F64)
    and is updated: a dtype's samples are stored narrower (_NARROW) when every one of its values,
    as v2 would read it back, survives that exactly."""
    if not kept_of:
        return b"", b""
    counts = np.array([kept.size for _, kept in kept_of], dtype=np.int64)
    values = np.concatenate([kept for _, kept in kept_of]).astype(np.float64)
    v2_width = np.repeat(np.array(widths, dtype=np.uint8), counts)
    small = v2_width == F32
    values[small] = values[small].astype("<f4")  # what v2 reads back: float32 for small dtypes
    dtype_codes: dict[str, int] = {}
    row_dtype = np.array([dtype_codes.setdefault(d, len(dtype_codes)) for d, _ in kept_of], dtype=np.int64)
    elem_dtype = np.repeat(row_dtype, counts)
    for dtype, code in dtype_codes.items():
        narrow = _NARROW.get(dtype)
        if narrow is None:
            continue
        mine = values[elem_dtype == code]
        if np.array_equal(_narrow_back(_narrow_to(mine, narrow), narrow).view("<u8"), mine.view("<u8")):
            for k in np.flatnonzero(row_dtype == code).tolist():
                widths[k] = narrow
    elem_width = np.repeat(np.array(widths, dtype=np.uint8), counts)
    tops, rests = [], []
    for w in range(len(_WIDTH_BYTES)):
        chosen = values[elem_width == w]
        if chosen.size:
            raw = _narrow_to(chosen, w)
            planes = np.frombuffer(_planes(raw, raw.dtype.str), dtype=np.uint8).reshape(raw.dtype.itemsize, -1)
            tops.append(planes[-1].tobytes())
            rests.append(planes[:-1].tobytes())
    return b"".join(tops), b"".join(rests)


def _narrow_to(values: np.ndarray, width: int) -> np.ndarray:
    if width == BF16:
        return (values.astype("<f4").view("<u4") >> np.uint32(16)).astype("<u2")
    with np.errstate(all="ignore"):
        return values.astype(_STORE[width])


def _narrow_back(raw: np.ndarray, width: int) -> np.ndarray:
    if width == BF16:
        return (raw.astype("<u4") << np.uint32(16)).view("<f4").astype(np.float64)
    return raw.astype(np.float64)


# -- decoding ----------------------------------------------------------------------------------


def _typed(value, types, what: str):
    if isinstance(value, bool) or not isinstance(value, types):
        raise ValueError(f"{what} is not of the right type")
    return value


def inflate(packed: bytes, limit: int, what: str) -> bytes:
    """`packed` inflated, refused past `limit` bytes (a decompression bomb) or when truncated."""
    z = zlib.decompressobj()
    data = z.decompress(packed, limit + 1)
    if len(data) > limit:
        raise ValueError(f"{what} inflates to more than {limit} bytes: a decompression bomb, not a fingerprint")
    if not z.eof or z.unused_data:
        raise ValueError(f"{what}: compressed payload is truncated or followed by stray bytes")
    return data


class Decoded:
    """What a v3 payload holds: the checkpoint, and per tensor its info, statistics, sketch."""

    def __init__(self, checkpoint: dict, infos: list[TensorInfo], stats: dict, sketches: dict):
        self.checkpoint, self.infos, self.stats, self.sketches = checkpoint, infos, stats, sketches


def _section(cur: Cursor, what: str, limit: int) -> bytes:
    size = int.from_bytes(cur.take(4), "little")
    return inflate(cur.take(size), limit, what)


def decode(payload: bytes, header_limit: int) -> Decoded:
    """The v3 payload after the magic; every count and size checked against the bytes."""
    with np.errstate(all="ignore"):  # a signalling NaN widened, an l2 of any bits: values, not errors
        return _decode(payload, header_limit)


def _decode(payload: bytes, header_limit: int) -> Decoded:
    cur = Cursor(payload, "fingerprint")
    h = Cursor(_section(cur, "header", header_limit), "header")
    doc = _typed(json.loads(h.take(int.from_bytes(h.take(4), "little"))), dict, "header")
    if doc.get("schema") != FINGERPRINT_SCHEMA_V3:
        raise ValueError(f"schema is {doc.get('schema')!r}, expected {FINGERPRINT_SCHEMA_V3!r}")
    checkpoint = _typed(doc.get("checkpoint") or {}, dict, "checkpoint")
    if checkpoint.get("step") is not None:
        _typed(checkpoint["step"], int, "checkpoint.step")
    _typed(checkpoint.get("bytes") or 0, int, "checkpoint.bytes")
    n = _typed(doc.get("tensors"), int, "tensors")
    kinds = [_typed(k, str, "a kind") for k in _typed(doc.get("kinds"), list, "kinds")]
    dtypes = [_typed(d, str, "a dtype") for d in _typed(doc.get("dtypes"), list, "dtypes")]
    flags = np.frombuffer(h.take(n), dtype=np.uint8)
    if np.any(flags & ~np.uint8(_ALL_FLAGS)):
        raise ValueError("a tensor with flags this version does not know")
    kind_of, dtype_of, ranks = h.array("<u2", n), h.array("<u2", n), h.array("<u2", n)
    if n and (int(kind_of.max()) >= len(kinds) or int(dtype_of.max()) >= len(dtypes)):
        raise ValueError("a kind or dtype outside its table")
    dims = h.array("<i8", int(ranks.sum()))
    if np.any(dims < 0):
        raise ValueError("a negative dimension")
    extra = h.array("<i8", n)
    has_stats, has_sketch = (flags & STATS) != 0, (flags & SKETCH) != 0
    k_sketch = int(has_sketch.sum())
    strides = np.frombuffer(h.take(k_sketch), dtype=np.uint8)
    widths = np.frombuffer(h.take(k_sketch), dtype=np.uint8)
    if np.any(strides > MAX_STRIDE_LOG2) or np.any(widths >= len(_WIDTH_BYTES)):
        raise ValueError("a sample stride or width out of range")
    names = _front_decoded(h, n, "name")
    displays = _front_decoded(h, int(np.count_nonzero(flags & DISPLAY)), "display")
    knowns = _front_decoded(h, int(np.count_nonzero(flags & KNOWN)), "known name")
    h.done()

    infos, sizes = [], []
    dims_l, ranks_l, extra_l = dims.tolist(), ranks.tolist(), extra.tolist()
    kinds_l = [kinds[i] for i in kind_of.tolist()]
    dtypes_l = [dtypes[i] for i in dtype_of.tolist()]
    d_it, k_it = iter(displays), iter(knowns)
    at = 0
    for i, f in enumerate(flags.tolist()):
        shape = tuple(dims_l[at : at + ranks_l[i]])
        at += ranks_l[i]
        size = math.prod(shape) if ranks_l[i] <= 64 else elements(shape)
        nbytes = size * _ITEMSIZE.get(dtypes_l[i], 0) + extra_l[i]
        if nbytes < 0 or size >= 1 << 63:
            raise ValueError(f"{names[i]}: a negative size, or 2**63 elements and more")
        display = next(d_it) if f & DISPLAY else ""
        known = next(k_it) if f & KNOWN else ""
        infos.append(TensorInfo(names[i], dtypes_l[i], shape, nbytes, kinds_l[i], display, known))
        sizes.append(size)

    rows = np.flatnonzero(has_stats).tolist()
    s_count = len(rows)
    stats_section = _section(cur, "statistics", 128 * s_count + 64)
    stats = _stats_of(Cursor(stats_section, "statistics"), [infos[i] for i in rows], [sizes[i] for i in rows])

    sketch_rows = np.flatnonzero(has_sketch).tolist()
    digests = cur.take(DIGEST * k_sketch).hex()
    m = np.array(
        [-(-min(sizes[i], SAMPLE_SIZE) // (1 << s)) for i, s in zip(sketch_rows, strides.tolist(), strict=True)],
        dtype=np.int64,
    )
    total = int(m.sum())
    packed_top = cur.take(int.from_bytes(cur.take(4), "little"))
    # written Huffman-coded only (encode): at least a bit a byte. More than 8x is not ckptwatch's,
    # and would let a few bytes of LZ77 stand for gigabytes of float64 samples (8 bytes a value)
    top = inflate(packed_top, min(total, 8 * len(packed_top) + 64), "samples")
    if len(top) != total:
        raise ValueError(f"samples of {len(top)} values, the header describes {total}")
    elem_width = np.repeat(widths, m)
    per_width = np.bincount(elem_width, minlength=len(_WIDTH_BYTES))
    rest = cur.take(sum(int(c) * (b - 1) for c, b in zip(per_width.tolist(), _WIDTH_BYTES, strict=True)))
    cur.done()
    values = np.empty(total, dtype=np.float64)
    t = r = 0
    for w, (c, b) in enumerate(zip(per_width.tolist(), _WIDTH_BYTES, strict=True)):
        if not c:
            continue
        planes = np.empty((b, c), dtype=np.uint8)
        planes[-1] = np.frombuffer(top, dtype=np.uint8, count=c, offset=t)
        planes[:-1] = np.frombuffer(rest, dtype=np.uint8, count=c * (b - 1), offset=r).reshape(b - 1, c)
        t, r = t + c, r + c * (b - 1)
        raw = np.ascontiguousarray(planes.T).view(_RAW[w]).reshape(c)
        values[elem_width == w] = _narrow_back(raw, w)
    ends = np.cumsum(m).tolist()
    sketches = {}
    start = 0
    for j, (i, s) in enumerate(zip(sketch_rows, strides.tolist(), strict=True)):
        sample = values[start : ends[j]]
        start = ends[j]
        sketches[names[i]] = TensorSketch(f"blake3:{digests[32 * j : 32 * j + 32]}", sample, sizes[i], 1 << s)
    return Decoded(checkpoint, infos, stats, sketches)


def elements(shape: tuple[int, ...]) -> int:
    """math.prod(shape), or 2**63 as soon as the product reaches it: a long shape of huge
    dimensions multiplied out as Python integers (millions of bits) takes seconds per tensor."""
    if 0 in shape:
        return 0
    size = 1
    for d in shape:
        size *= d
        if size >= 1 << 63:
            return 1 << 63
    return size


_RAW = {F32: "<f4", F64: "<f8", F16: "<f2", BF16: "<u2", I8: "i1", U8: "u1"}


def _stats_of(cur: Cursor, infos: list[TensorInfo], sizes: list[int]) -> dict[str, TensorStats]:
    s = len(infos)
    count = cur.array("<i8", s) + np.array(sizes, dtype=np.int64)
    nan, inf, zeros = cur.array("<i8", s), cur.array("<i8", s), cur.array("<i8", s)
    exact = cur.bits(s)
    zf = np.empty(s, dtype="<f8")
    zf[~exact] = cur.array("<f8", s - int(exact.sum()))
    zf[exact] = _zero_fraction(zeros, count)[exact]
    mean, std, mn, mx, skew, kurt = (_widened(cur, s) for _ in range(6))
    residual = _unzigzag(cur.array("<u8", s))
    cur.done()
    l2 = (residual + _l2_predicted(count, nan, inf, mean, std)).view("<f8")
    for what, col in (("count", count), ("nan", nan), ("inf", inf), ("l2", l2)):
        if np.any(col < 0):
            raise ValueError(f"stats.{what} is negative")
    columns = (count, mean, std, mn, mx, l2, zf, skew, kurt, nan, inf)
    return {
        info.name: TensorStats(*row)
        for info, row in zip(infos, zip(*(c.tolist() for c in columns), strict=True), strict=True)
    }
