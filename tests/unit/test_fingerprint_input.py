"""A fingerprint given as a reference is input like any other: a malformed one is an unreadable
reference (CheckpointUnreadable, one line), never a TypeError deep in the engine. Each case
below was found by the fuzzer (bench/fuzz)."""

from __future__ import annotations

import base64
import gzip
import json
import time
import zlib
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.errors import CheckpointUnreadable
from ckptwatch.formats.base import IntegrityError
from ckptwatch.formats.layout import FINGERPRINT_MAGIC, FINGERPRINT_MAGIC_V3
from ckptwatch.verify import fingerprint as fp
from ckptwatch.verify import fingerprint_v3 as v3
from ckptwatch.verify.engine import verify_paths
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.verify.verification import verify_checkpoint
from tests import hostile


@pytest.fixture
def run(tmp_path: Path) -> tuple[str, dict, Path]:
    """(candidate prefix, the previous checkpoint's fingerprint document, where to write it)."""
    previous = hostile.healthy(tmp_path, "ckpt-1", step=0)
    candidate = hostile.healthy(tmp_path, "ckpt-2", step=1)
    fp = tmp_path / "previous.json"
    done = verify_checkpoint(VerifyRequest(previous, fingerprint_out=str(fp), fingerprint_gate="verdict"))
    assert done.fingerprint == str(fp)
    return candidate, json.loads(fp.read_text()), fp


def _set(doc: dict, path: tuple, value: object) -> dict:
    node = doc
    for p in path[:-1]:
        node = node[p]
    node[path[-1]] = value
    return doc


MALFORMED = {
    "dtype is a list": (("tensors", 0, "dtype"), ["float32"]),  # TypeError in TensorInfo.numeric
    "name is a list": (("tensors", 0, "name"), ["w"]),  # TypeError in structure.py
    "kind is a list": (("tensors", 0, "kind"), []),  # TypeError in engine.py
    "std is a list": (("tensors", 0, "stats", "std"), [1]),  # TypeError in engine._tensor
    "mean is a string": (("tensors", 0, "stats", "mean"), "0.5"),  # TypeError in engine._tensor
    "l2 is null": (("tensors", 0, "stats", "l2"), None),  # TypeError in sketch.estimate_sums
    "count is negative": (("tensors", 0, "stats", "count"), -4),  # ValueError: math domain error in change.py
    "shape holds a string": (("tensors", 0, "shape"), ["4"]),
    "checkpoint is a list": (("checkpoint",), [1, 2]),
    "sample too short": (
        ("tensors", 0, "sample", "data"),
        base64.b64encode(b"\0" * 8).decode(),
    ),  # broadcast ValueError
}


@pytest.mark.parametrize("what", sorted(MALFORMED))
@pytest.mark.parametrize("gz", [False, True], ids=["json", "gzip"])
def test_a_malformed_fingerprint_is_an_unreadable_reference(run, what: str, gz: bool) -> None:
    candidate, doc, fp = run
    path, value = MALFORMED[what]
    data = json.dumps(_set(doc, path, value)).encode()
    target = fp.with_name("bad.json.gz" if gz else "bad.json")
    target.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(CheckpointUnreadable, match="not a readable fingerprint"):
        verify_paths(candidate, previous=str(target))


def test_a_huge_but_finite_l2_is_judged_not_an_overflow(run) -> None:
    """l2 = 1e300: l2**2 raised OverflowError; the drift estimate says inf and the verdict stands."""
    candidate, doc, fp = run
    fp.write_text(json.dumps(_set(doc, ("tensors", 0, "stats", "l2"), 1e300)))
    report, _ = verify_paths(candidate, previous=str(fp))
    assert report.verdict in ("pass", "warn", "fail")
    assert not [f for f in report.findings if f.check.startswith("integrity")]


def test_the_written_fingerprint_still_reads(run) -> None:
    candidate, _, fp = run
    report, _ = verify_paths(candidate, previous=str(fp))
    assert report.verdict == "pass", [f.message for f in report.findings]


# -- the binary v3 form: every count and length in it is input too ------------------------------

V3_NAMES = ["model/a/kernel", "model/a/bias", "model/b/kernel", "optimizer/iter"]


def _v3_entries() -> list:
    from tests.unit.test_fingerprint_v3 import _entry

    rng = np.random.default_rng(0)
    return [_entry(n, rng.standard_normal(500 * (i + 1)).astype(np.float32)) for i, n in enumerate(V3_NAMES)]


def _u32(cur) -> int:
    return int.from_bytes(cur.take(4), "little")


def _split(data: bytes) -> dict:
    """A v3 file's parts: header columns, statistics, digests, samples (top bytes and the rest)."""
    cur = v3.Cursor(data[len(FINGERPRINT_MAGIC_V3) :], "file")
    header = v3.Cursor(zlib.decompress(cur.take(_u32(cur))), "header")
    stats = zlib.decompress(cur.take(_u32(cur)))
    doc = json.loads(header.take(_u32(header)))
    n = doc["tensors"]
    parts: dict = {"doc": doc, "flags": np.frombuffer(header.take(n), np.uint8).copy()}
    for col in ("kind", "dtype", "rank"):
        parts[col] = header.array("<u2", n)
    parts["dims"] = header.array("<i8", int(parts["rank"].sum()))
    parts["extra"] = header.array("<i8", n)
    k = int(np.count_nonzero(parts["flags"] & v3.SKETCH))
    parts["strides"] = np.frombuffer(header.take(k), np.uint8).copy()
    parts["widths"] = np.frombuffer(header.take(k), np.uint8).copy()
    parts["names"] = (header.array("<u4", n), header.array("<u4", n))
    parts["names"] += (header.take(int(parts["names"][1].sum())),)
    parts["tail"] = header.data[header.pos :]  # displays and known names: none here
    parts["stats"] = stats
    parts["digests"] = cur.take(v3.DIGEST * k)
    parts["top"] = zlib.decompress(cur.take(_u32(cur)))
    parts["rest"] = cur.data[cur.pos :]
    return parts


def _planes(a, dtype: str) -> bytes:
    return v3._planes(np.asarray(a), dtype)


def _join(p: dict) -> bytes:
    head = json.dumps(p["doc"]).encode()
    shared, lengths, blob = p["names"]
    header = b"".join(
        [
            len(head).to_bytes(4, "little"),
            head,
            np.asarray(p["flags"], np.uint8).tobytes(),
            *(_planes(p[c], "<u2") for c in ("kind", "dtype", "rank")),
            _planes(p["dims"], "<i8"),
            _planes(p["extra"], "<i8"),
            np.asarray(p["strides"], np.uint8).tobytes(),
            np.asarray(p["widths"], np.uint8).tobytes(),
            _planes(shared, "<u4"),
            _planes(lengths, "<u4"),
            blob,
            p["tail"],
        ]
    )
    out = [FINGERPRINT_MAGIC_V3]
    for section in (zlib.compress(header), zlib.compress(p["stats"])):
        out += [len(section).to_bytes(4, "little"), section]
    top = zlib.compress(p["top"])
    return b"".join([*out, p["digests"], len(top).to_bytes(4, "little"), top, p["rest"]])


def _set_stat(p: dict, column: int, row: int, value: int) -> dict:
    """Set row `row` of integer statistics column `column` (0 count - elements, 1 nan, 2 inf)."""
    s = len(V3_NAMES)
    ints = np.frombuffer(p["stats"][: 8 * 4 * s], np.uint8).reshape(4, 8, s).copy()  # 4 columns, byte planes
    col = np.ascontiguousarray(ints[column].T).view("<i8").reshape(s)
    col[row] = value
    ints[column] = col.view(np.uint8).reshape(s, 8).T
    p["stats"] = ints.tobytes() + p["stats"][8 * 4 * s :]
    return p


def _with(**changes):
    def change(p: dict) -> dict:
        for key, value in changes.items():
            if key.startswith("doc."):
                p["doc"][key[4:]] = value
            else:
                p[key] = value
        return p

    return change


def _column(name: str, index: int, value):
    def change(p: dict) -> dict:
        col = np.array(p[name]).copy()
        col[index] = value
        p[name] = col
        return p

    return change


HOSTILE_V3 = {
    "unknown flag": _column("flags", 0, 0x43),
    "kind outside its table": _column("kind", 1, 7),
    "dtype outside its table": _column("dtype", 2, 300),
    "negative dimension": _column("dims", 0, -5),
    "elements past 2**63": lambda p: _column("rank", 0, 2)(p) | {"dims": np.insert(p["dims"], 0, 1 << 62)},
    "stride of 2**40": _column("strides", 0, 40),
    "unknown sample width": _column("widths", 1, 9),
    "shared prefix past the previous name": lambda p: p | {"names": (np.array([0, 40, 0, 0]), *p["names"][1:])},
    "first name shares a prefix": lambda p: p | {"names": (np.array([3, 0, 0, 0]), *p["names"][1:])},
    "names not utf-8": lambda p: p | {"names": (*p["names"][:2], b"\xff" + p["names"][2][1:])},
    "tensor count is a string": _with(**{"doc.tensors": "4"}),
    "tensor count is true": _with(**{"doc.tensors": True}),
    "tensor count too large": _with(**{"doc.tensors": 10**6}),
    "kinds is a dict": _with(**{"doc.kinds": {"weight": 0}}),
    "dtype is a number": _with(**{"doc.dtypes": [1]}),
    "checkpoint is a list": _with(**{"doc.checkpoint": [1]}),
    "step is a string": _with(**{"doc.checkpoint": {"step": "3"}}),
    "schema is v2": _with(**{"doc.schema": "ckptwatch.fingerprint/v2"}),
    "negative count": lambda p: _set_stat(p, 0, 1, -(10**6)),
    "negative nan count": lambda p: _set_stat(p, 1, 0, -1),
    "statistics cut short": lambda p: p | {"stats": p["stats"][:-3]},
    "statistics with bytes to spare": lambda p: p | {"stats": p["stats"] + b"\0"},
    "a digest missing": lambda p: p | {"digests": p["digests"][:-16]},
    "samples cut short": lambda p: p | {"rest": p["rest"][:-1]},
    "samples with bytes to spare": lambda p: p | {"rest": p["rest"] + b"\0\0"},
    "top bytes of more samples": lambda p: p | {"top": p["top"] + b"\0" * 10},
    "top bytes of fewer samples": lambda p: p | {"top": p["top"][:-1]},
}


@pytest.fixture(scope="module")
def v3_file() -> bytes:
    return fp.encode({"step": 3, "bytes": 100}, _v3_entries(), 3)


def test_the_v3_helpers_round_trip(v3_file: bytes, tmp_path: Path) -> None:
    """_split/_join give back a readable file (so each case below breaks only what it says)."""
    target = tmp_path / "same.fp"
    target.write_bytes(_join(_split(v3_file)))
    assert [t.name for t in fp.FingerprintSource(str(target)).tensors()] == V3_NAMES


@pytest.mark.parametrize("what", sorted(HOSTILE_V3))
def test_a_hostile_v3_fingerprint_is_refused_in_one_line(v3_file: bytes, tmp_path: Path, what: str) -> None:
    target = tmp_path / "bad.fp"
    target.write_bytes(_join(HOSTILE_V3[what](_split(v3_file))))
    with pytest.raises(IntegrityError, match="not a readable fingerprint") as e:
        fp.FingerprintSource(str(target))
    assert "\n" not in str(e.value)


def test_every_truncation_of_a_v3_fingerprint_is_refused(run, v3_file: bytes, tmp_path: Path) -> None:
    candidate, _, _ = run
    target = tmp_path / "cut.fp"
    for cut in [*range(len(FINGERPRINT_MAGIC_V3), 64), *range(64, len(v3_file), 97), len(v3_file) - 1]:
        target.write_bytes(v3_file[:cut])
        with pytest.raises(CheckpointUnreadable, match="not a readable fingerprint"):
            verify_paths(candidate, previous=str(target))


def test_a_v3_decompression_bomb_is_refused_early(v3_file: bytes, tmp_path: Path) -> None:
    """Sample top bytes may inflate to exactly what the header describes, no more; names may not
    share prefixes into gigabytes."""
    p = _split(v3_file)
    p["top"] = p["top"] + b"\0" * (64 << 20)
    target = tmp_path / "bomb.fp"
    target.write_bytes(_join(p))
    assert target.stat().st_size < 1 << 20
    with pytest.raises(IntegrityError, match="decompression bomb"):
        fp.FingerprintSource(str(target))
    # 4,000 names, each sharing the whole of a 100 KB first name: 400 MB from a small header
    q = _split(v3_file)
    n = 4000
    q["doc"]["tensors"] = n
    q["flags"] = np.zeros(n, np.uint8)
    for col in ("kind", "dtype", "rank"):
        q[col] = np.zeros(n, np.uint16)
    q["dims"], q["extra"] = np.zeros(0, np.int64), np.zeros(n, np.int64)
    q["strides"] = q["widths"] = np.zeros(0, np.uint8)
    q["names"] = (np.array([0] + [100_000] * (n - 1)), np.array([100_000] + [1] * (n - 1)), b"x" * (100_000 + n - 1))
    q["stats"], q["digests"], q["top"], q["rest"] = b"", b"", b"", b""
    target.write_bytes(_join(q))
    with pytest.raises(IntegrityError, match="names of more than"):
        fp.FingerprintSource(str(target))


def test_random_damage_to_a_v3_fingerprint_is_read_or_refused_never_a_crash(v3_file: bytes, tmp_path: Path) -> None:
    rng = np.random.default_rng(15)
    target = tmp_path / "flip.fp"
    for _ in range(300):
        data = bytearray(v3_file)
        for at in rng.integers(len(FINGERPRINT_MAGIC_V3), len(data), size=int(rng.integers(1, 4))):
            data[at] = int(rng.integers(0, 256))
        target.write_bytes(bytes(data))
        try:
            fp.FingerprintSource(str(target)).tensors()
        except IntegrityError as e:
            assert "not a readable fingerprint" in str(e)


# -- v2 statistics, now checked as columns: the same refusals as the per-tensor checks ---------------


def _v2_with_stats(data: bytes, change) -> bytes:
    payload = data[len(FINGERPRINT_MAGIC) :]
    size = int.from_bytes(payload[:4], "little")
    at = 4 + size
    packed = int.from_bytes(payload[at : at + 4], "little")
    stats = np.frombuffer(zlib.decompress(payload[at + 4 : at + 4 + packed]), "<f8").reshape(-1, 11).copy()
    change(stats)
    again = zlib.compress(stats.tobytes())
    return FINGERPRINT_MAGIC + payload[:at] + len(again).to_bytes(4, "little") + again + payload[at + 4 + packed :]


V2_STATS = {  # column: 0 count, 5 l2, 9 nan, 10 inf
    "count 2.5": (0, 2.5, "not a whole number"),
    "count NaN": (0, float("nan"), "not a whole number"),
    "count inf": (0, float("inf"), "not a whole number"),
    "count negative": (0, -3.0, "stats.count is negative"),
    "nan negative": (9, -1.0, "stats.nan is negative"),
    "inf negative": (10, -1.0, "stats.inf is negative"),
    "l2 negative": (5, -1.0, "stats.l2 is negative"),
}


@pytest.mark.parametrize("what", sorted(V2_STATS))
def test_v2_statistics_out_of_their_domain_are_refused(tmp_path: Path, what: str) -> None:
    column, value, message = V2_STATS[what]
    data = fp.encode({}, _v3_entries(), 2)
    target = tmp_path / "bad.fp"
    target.write_bytes(_v2_with_stats(data, lambda s: s.__setitem__((2, column), value)))
    with pytest.raises(IntegrityError, match=message):
        fp.FingerprintSource(str(target))
    target.write_bytes(_v2_with_stats(data, lambda s: s.__setitem__((2, 0), -0.0)))  # a count of -0.0 is 0
    assert fp.FingerprintSource(str(target)).stats(V3_NAMES[2]).count == 0


def test_a_v3_shape_of_many_huge_dimensions_is_refused_at_once(v3_file: bytes, tmp_path: Path) -> None:
    """A rank-65,535 shape of 2**62-sized dimensions is 512 KB of header that deflates to almost
    nothing; multiplying it out as Python integers (millions of bits) took ~20 s per tensor."""
    p = _split(v3_file)
    rank = 65535
    dims = np.full(rank, 1 << 62, dtype=np.int64)
    p["rank"] = np.array(p["rank"]).copy()
    first = int(p["rank"][0])
    p["rank"][0] = rank
    p["dims"] = np.concatenate([dims, np.asarray(p["dims"])[first:]])
    target = tmp_path / "wide.fp"
    target.write_bytes(_join(p))
    assert target.stat().st_size < 64 << 10
    t0 = time.monotonic()
    with pytest.raises(IntegrityError, match="2\\*\\*63 elements"):
        fp.FingerprintSource(str(target))
    assert time.monotonic() - t0 < 2.0


@pytest.mark.parametrize("version", [1, 2])
def test_a_v1_or_v2_shape_of_many_huge_dimensions_is_refused_at_once(tmp_path: Path, version: int) -> None:
    """A like shape in a v1 document or a v2 header (45,000 dimensions: 0.9 MB of JSON, within
    the inflation allowed): its element count, multiplied out to check the sample, took ~10 s
    per tensor."""
    tensor = {"name": "x", "dtype": "float32", "kind": "weight", "shape": [1 << 62] * 45000, "bytes": 0}
    if version == 1:
        tensor |= {"hash": "blake3:00", "sample": {"dtype": "float32", "data": ""}}
        doc = {"schema": fp.SCHEMA, "checkpoint": {}, "tensors": [tensor]}
        data = gzip.compress(json.dumps(doc).encode())
    else:
        tensor |= {"sample": 1024}
        doc = {"schema": fp.SCHEMA_V2, "checkpoint": {}, "tensors": [tensor]}
        header, stats = zlib.compress(json.dumps(doc).encode(), 9), zlib.compress(b"")
        data = b"".join(
            [FINGERPRINT_MAGIC, len(header).to_bytes(4, "little"), header, len(stats).to_bytes(4, "little"), stats]
        )
    target = tmp_path / ("wide.json.gz" if version == 1 else "wide.fp")
    target.write_bytes(data)
    assert target.stat().st_size < 64 << 10
    t0 = time.monotonic()
    with pytest.raises(IntegrityError, match="not a readable fingerprint"):
        fp.FingerprintSource(str(target))
    assert time.monotonic() - t0 < 2.0


V3_SAMPLE_BOMB = """
import sys
from ckptwatch.formats.base import IntegrityError
from ckptwatch.verify.fingerprint import FingerprintSource
try:
    FingerprintSource(sys.argv[1])
    outcome = "read"
except IntegrityError as e:
    outcome = str(e)
print(outcome)
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) >> 10)
"""


def test_v3_samples_that_deflate_past_what_the_writer_makes_are_refused(
    run_python, v3_file: bytes, tmp_path: Path
) -> None:
    """The samples' top bytes are written Huffman-coded only (at least a bit a byte): a
    section that inflates more than 8x was not written by ckptwatch. 100,000 sketches of
    1,024 one-byte samples whose top bytes are LZ77'd zeros: a 1.7 MB file that read as
    800 MB of float64 samples (2 GB at its peak)."""
    n = 100_000
    q = _split(v3_file)
    q["doc"]["tensors"] = n
    q["doc"]["kinds"], q["doc"]["dtypes"] = ["weight"], ["float32"]
    q["flags"] = np.full(n, v3.SKETCH, np.uint8)
    q["kind"] = q["dtype"] = np.zeros(n, np.uint16)
    q["rank"], q["dims"], q["extra"] = np.ones(n, np.uint16), np.full(n, 2048, np.int64), np.zeros(n, np.int64)
    q["strides"], q["widths"] = np.zeros(n, np.uint8), np.full(n, v3.U8, np.uint8)
    q["names"] = (np.array([0] + [1] * (n - 1)), np.array([1] * n), b"x" * n)
    q["stats"], q["digests"], q["top"], q["rest"] = b"", b"\0" * (v3.DIGEST * n), b"\0" * (1024 * n), b""
    target = tmp_path / "samples.fp"
    target.write_bytes(_join(q))
    assert target.stat().st_size < 2 << 20
    r = run_python(V3_SAMPLE_BOMB, str(target))
    assert r.returncode == 0, r.stderr[-2000:]
    outcome, peak_mb = r.stdout.strip().splitlines()[-2:]
    assert "decompression bomb" in outcome
    assert int(peak_mb) < 250, peak_mb
