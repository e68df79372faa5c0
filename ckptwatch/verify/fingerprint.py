"""Fingerprint files: a checkpoint's metadata, statistics and sketches, without its data.

Written by `ckptwatch fingerprint PATH -o FILE` (and by the daemon for each
checkpoint it verifies), accepted wherever a reference is (engine.open_reference opens
it): CheckpointManager may delete the previous checkpoint, and golden checkpoints are
often not mounted. Never a candidate: it holds no tensor data. ckptwatch.formats only
detects one (formats.layout.looks_like_fingerprint), it does not open it.
Three encodings, all read:
  v3 (written by default): FINGERPRINT_MAGIC_V3, then the v2 content as columns
     (ckptwatch.verify.fingerprint_v3): 20-30% smaller, read ~3x faster, read back bit
     for bit as v2.
  v2 (written with version=2): FINGERPRINT_MAGIC; a zlib stream holding a JSON header (the
     checkpoint, and per tensor its metadata and sample stride); a zlib stream of the statistics
     (11 little-endian float64 a tensor); each stream preceded by its length (uint32); then the
     first 128 bits of each blake3 digest (16 bytes a tensor), then the samples
     (float32, float64 for 64-bit dtypes), each thinned to `stride` so they take at most
     1/SAMPLE_SHARE of the tensor's bytes (sketch.stored_stride).
  v1 (a name ending in .json or .json.gz; everything written before v2): JSON, gzip'd when the
     name ends in .gz; samples of min(n, 1024) values, base64 little-endian floats.
"""

from __future__ import annotations

import base64
import contextlib
import gzip
import json
import os
import zlib
from collections.abc import Iterator

import numpy as np

from ckptwatch.formats.base import CHUNK_ELEMENTS, IntegrityError, IntegrityProblem, TensorInfo
from ckptwatch.formats.files import NotRegularFile, open_regular
from ckptwatch.formats.layout import (
    FINGERPRINT_MAGIC,
    FINGERPRINT_MAGIC_V3,
    FINGERPRINT_SCHEMA_V2,
    FINGERPRINT_SCHEMA_V3,
    looks_like_fingerprint,
)
from ckptwatch.formats.layout import FINGERPRINT_SCHEMA as SCHEMA
from ckptwatch.verify import fingerprint_v3
from ckptwatch.verify.sketch import SAMPLE_SIZE, TensorSketch, stored_stride
from ckptwatch.verify.stats import TensorStats

__all__ = ["SCHEMA", "SCHEMA_V2", "SCHEMA_V3", "FingerprintSource", "looks_like_fingerprint", "write_fingerprint"]
SCHEMA_V2 = FINGERPRINT_SCHEMA_V2
SCHEMA_V3 = FINGERPRINT_SCHEMA_V3
_STATS = tuple(TensorStats.__dataclass_fields__)  # the 11 figures, in the order v2 stores them
_DIGEST = 16  # the first 128 bits of each blake3 digest: equality, not security, is what it is for

MAX_FINGERPRINT_BYTES = 256 << 20
MAX_INFLATION = 50  # a real fingerprint (floats, base64 samples) compresses ~2-5x; a bomb, 1000x
_SMALL_FLOATS = fingerprint_v3.SMALL_FLOATS  # samples v1 and v2 store as float32 (the others as float64)


def _encode_sample(values: np.ndarray, dtype: str) -> dict:
    store = np.float32 if dtype in _SMALL_FLOATS else np.float64
    return {
        "dtype": np.dtype(store).name,
        "data": base64.b64encode(values.astype("<" + np.dtype(store).str[1:]).tobytes()).decode(),
    }


def _decode_sample(d: dict) -> np.ndarray:
    dt = {"float32": "<f4", "float64": "<f8"}[d["dtype"]]
    return np.frombuffer(base64.b64decode(d["data"]), dtype=dt).astype(np.float64)


def write_fingerprint(
    path: str,
    checkpoint: dict,
    entries: list[tuple[TensorInfo, TensorStats | None, TensorSketch | None]],
    version: int = 3,
) -> int:
    """Write atomically (temp file + rename); return the size in bytes. v1 JSON when the
    name ends in .json or .json.gz, else binary `version` (3; 2 on request: module docstring)."""
    json_v1 = path.endswith((".json", ".json.gz"))
    data = _v1(checkpoint, entries, path.endswith(".gz")) if json_v1 else encode(checkpoint, entries, version)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:  # a full disk: no half-written file left behind
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return len(data)


WRITTEN_VERSIONS = (2, 3)  # what `encode` writes (v1 is the JSON of a name ending in .json)


def encode(checkpoint: dict, entries: list, version: int = 3) -> bytes:
    """The bytes of a binary fingerprint in format `version`."""
    if version == 3:
        data = fingerprint_v3.encode(FINGERPRINT_MAGIC_V3, checkpoint, entries, _inflation_limit)
        # None: a header the reader would refuse as a bomb (nothing but names and shapes): v2 holds it
        return data if data is not None else _v2(checkpoint, entries)
    if version == 2:
        return _v2(checkpoint, entries)
    raise ValueError(f"no fingerprint format v{version}")


def describe(data: bytes) -> dict:
    """Bytes by component of a binary fingerprint: {format, framing, header, stats, digests, samples}."""
    if data.startswith(FINGERPRINT_MAGIC):
        payload = data[len(FINGERPRINT_MAGIC) :]
        size = int.from_bytes(payload[:4], "little")
        packed_stats = int.from_bytes(payload[4 + size : 8 + size], "little")
        doc = json.loads(_inflate(payload[4 : 4 + size]))
        digests = _DIGEST * sum(1 for t in doc["tensors"] if "sample" in t)
        rest = len(payload) - 8 - size - packed_stats
        return {
            "format": "v2",
            "framing": len(FINGERPRINT_MAGIC) + 8,
            "header": size,
            "stats": packed_stats,
            "digests": digests,
            "samples": rest - digests,
        }
    if data.startswith(FINGERPRINT_MAGIC_V3):
        cur = fingerprint_v3.Cursor(data[len(FINGERPRINT_MAGIC_V3) :], "fingerprint")
        sizes = {}
        for part in ("header", "stats"):
            sizes[part] = int.from_bytes(cur.take(4), "little")
            cur.take(sizes[part])
        decoded = fingerprint_v3.decode(data[len(FINGERPRINT_MAGIC_V3) :], MAX_FINGERPRINT_BYTES)
        sizes["digests"] = fingerprint_v3.DIGEST * len(decoded.sketches)
        cur.take(sizes["digests"])
        framing = len(FINGERPRINT_MAGIC_V3) + 12
        return {"format": "v3", "framing": framing, **sizes, "samples": len(data) - framing - sum(sizes.values())}
    raise ValueError("not a binary fingerprint")


def _v1(checkpoint: dict, entries: list, gz: bool) -> bytes:
    doc = {
        "schema": SCHEMA,
        "checkpoint": checkpoint,
        "tensors": [
            {
                "name": info.name,
                "display": info.display,
                **({"display_name": info.known} if info.known else {}),
                "kind": info.kind,
                "dtype": info.dtype,
                "shape": list(info.shape),
                "bytes": info.nbytes,
                "stats": stats.to_dict() if stats else None,
                "hash": sketch.hash if sketch else None,
                "sample": _encode_sample(sketch.sample, info.dtype) if sketch else None,
            }
            for info, stats, sketch in entries
        ],
    }
    data = json.dumps(doc, separators=(",", ":")).encode()
    return gzip.compress(data, mtime=0) if gz else data


def _v2(checkpoint: dict, entries: list) -> bytes:
    tensors, stats_rows, digests, samples = [], [], [], []
    for info, stats, sketch in entries:
        t: dict = {"name": info.name, "kind": info.kind, "dtype": info.dtype, "shape": list(info.shape)}
        t["bytes"] = info.nbytes
        if info.display and info.display != info.name:
            t["display"] = info.display
        if info.known:
            t["display_name"] = info.known
        if stats is not None:
            t["stats"] = 1
            stats_rows.append([float(getattr(stats, k)) for k in _STATS])
        if sketch is not None:
            stride = stored_stride(sketch.count, info.nbytes)
            stride = max(stride, sketch.stride)
            kept = sketch.sample[:: stride // sketch.stride]
            t["stride"], t["sample"] = stride, int(kept.size)
            small = info.dtype in _SMALL_FLOATS
            if not small:
                t["sample64"] = 1
            digests.append(bytes.fromhex(sketch.hash.removeprefix("blake3:"))[:_DIGEST])
            samples.append(kept.astype("<f4" if small else "<f8").tobytes())
        tensors.append(t)
    header = json.dumps({"schema": SCHEMA_V2, "checkpoint": checkpoint, "tensors": tensors}, separators=(",", ":"))
    packed = zlib.compress(header.encode(), 6)  # names and shapes compress well; floats and digests do not
    stats = zlib.compress(np.asarray(stats_rows, dtype="<f8").tobytes() if stats_rows else b"", 6)
    body = [FINGERPRINT_MAGIC, len(packed).to_bytes(4, "little"), packed, len(stats).to_bytes(4, "little"), stats]
    return b"".join(body + digests + samples)


def _typed(value, types, what: str):
    """`value` when it is of `types` (bool is no number here); ValueError naming `what` otherwise."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ValueError(f"{what} is not of the right type")
    if not isinstance(value, types):
        raise ValueError(f"{what} is not of the right type")
    return value


def _tensor_info(t: dict) -> TensorInfo:
    info = _tensor_info_of(t)
    if len(info.shape) > 64 and fingerprint_v3.elements(info.shape) >= 1 << 63:
        # refused before anything multiplies it out: a long shape of huge dimensions takes seconds
        raise ValueError(f"{info.name}: 2**63 elements and more")
    return info


def _tensor_info_of(t: dict) -> TensorInfo:
    name, dtype, kind, shape, nbytes = t["name"], t["dtype"], t["kind"], t["shape"], t["bytes"]
    display, known = t.get("display", ""), t.get("display_name", "")
    if (  # what every fingerprint ckptwatch wrote holds: checked in one expression
        type(name) is str
        and type(dtype) is str
        and type(kind) is str
        and type(display) is str
        and type(known) is str
        and type(nbytes) is int
        and nbytes >= 0
        and type(shape) is list
        and all(type(d) is int and d >= 0 for d in shape)
    ):
        return TensorInfo(name, dtype, tuple(shape), nbytes, kind, display, known)
    return _checked_tensor_info(t)


def _checked_tensor_info(t: dict) -> TensorInfo:
    """_tensor_info of anything else: the first field that is wrong, named."""
    name = _typed(t["name"], str, "tensor name")
    shape = tuple(_typed(d, int, f"{name}: shape") for d in _typed(t["shape"], list, f"{name}: shape"))
    if any(d < 0 for d in shape) or _typed(t["bytes"], int, f"{name}: bytes") < 0:
        raise ValueError(f"{name}: negative shape or size")
    fields = {
        key: _typed(t[key] if key != "display" else t.get(key, ""), str, f"{name}: {key}")
        for key in ("dtype", "kind", "display")
    }
    known = _typed(t.get("display_name", ""), str, f"{name}: display_name")
    return TensorInfo(name, fields["dtype"], shape, t["bytes"], fields["kind"], fields["display"], known)


def _tensor_stats(d: dict) -> TensorStats:
    """TensorStats from a fingerprint's numbers: counts are non-negative ints, the rest floats."""
    values = {}
    for key, f in TensorStats.__dataclass_fields__.items():
        if key in _typed(d, dict, "stats"):
            integral = f.type in ("int", int)
            value = _typed(d[key], int if integral else (int, float), f"stats.{key}")
            if key in ("count", "nan", "inf", "l2") and value < 0:
                raise ValueError(f"stats.{key} is negative")
            values[key] = value if integral else float(value)
    return TensorStats.from_dict(values)


_WHOLE = (_STATS.index("count"), _STATS.index("nan"), _STATS.index("inf"))


def _v2_stats(stats: np.ndarray) -> list[tuple]:
    """The rows of v2's statistics as TensorStats arguments, checked as columns: counts whole
    and not negative (as ints), l2 not negative; what _tensor_stats gives for each row."""
    if not len(stats):
        return []
    with np.errstate(invalid="ignore"):
        whole = stats[:, _WHOLE]
        if not np.all(np.isfinite(whole) & (whole == np.trunc(whole))):
            raise ValueError("stats: a count is not a whole number")
        for key in ("count", "nan", "inf", "l2"):
            if np.any(stats[:, _STATS.index(key)] < 0):
                raise ValueError(f"stats.{key} is negative")
    columns = [c.tolist() for c in stats.T]
    for j in _WHOLE:
        columns[j] = [int(v) for v in columns[j]]
    return list(zip(*columns, strict=True))


def _inflate(payload: bytes) -> bytes:
    """A v2 header inflated with the same counted limits as a gzip'd v1 document."""
    limit = min(MAX_FINGERPRINT_BYTES, MAX_INFLATION * len(payload) + (1 << 20))
    z = zlib.decompressobj()
    data = z.decompress(payload, limit + 1)
    if len(data) > limit:
        raise ValueError(f"inflates to more than {limit} bytes: a decompression bomb, not a fingerprint")
    if not z.eof:
        raise ValueError("compressed payload is truncated")
    return data


def _inflation_limit(size: int) -> int:
    """The most a v3 file of `size` bytes may inflate its header to (the writer keeps to it)."""
    return min(MAX_FINGERPRINT_BYTES, MAX_INFLATION * size + (1 << 20))


def _read_document(path: str) -> bytes:
    """The JSON text of a fingerprint file (gunzipped when it is gzip), inflated with a
    counted limit: never more than MAX_FINGERPRINT_BYTES, nor MAX_INFLATION times the file
    (a 2 MB gzip bomb is refused after producing ~100 MB, not after 4 GB)."""
    with open_regular(path) as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_FINGERPRINT_BYTES:
            raise ValueError("too large for a fingerprint")
        if f.read(2) != b"\x1f\x8b":
            f.seek(0)
            return f.read(size + 1)
        f.seek(0)
        limit = min(MAX_FINGERPRINT_BYTES, MAX_INFLATION * size + (1 << 20))
        with gzip.GzipFile(fileobj=f, mode="rb") as z:
            data = z.read(limit + 1)  # GzipFile.read(n) inflates at most n bytes
    if len(data) > limit:
        raise ValueError(f"inflates to more than {limit} bytes from {size}: a decompression bomb, not a fingerprint")
    return data


class FingerprintSource:
    """A fingerprint file as a reference: metadata, stats and sketches; no data."""

    format = "fingerprint"

    def __init__(self, path: str):
        self.path = path
        self.problems: list[IntegrityProblem] = []
        self.checkpoint: dict = {}
        self._infos: list[TensorInfo] = []
        self._stats: dict[str, TensorStats] = {}
        self._sketches: dict[str, TensorSketch] = {}
        try:
            raw = _read_document(path)
            if raw.startswith(FINGERPRINT_MAGIC_V3):
                decoded = fingerprint_v3.decode(raw[len(FINGERPRINT_MAGIC_V3) :], _inflation_limit(len(raw)))
                self.checkpoint = decoded.checkpoint
                self._infos, self._stats, self._sketches = decoded.infos, decoded.stats, decoded.sketches
                self.step = self.checkpoint.get("step")
                return
            if raw.startswith(FINGERPRINT_MAGIC):
                self._read_v2(raw[len(FINGERPRINT_MAGIC) :])
                self.step = self.checkpoint.get("step")
                return
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("schema") != SCHEMA:
                raise ValueError(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
            self.checkpoint = _typed(doc.get("checkpoint") or {}, dict, "checkpoint")
            _typed(self.checkpoint.get("step"), (int, type(None)), "checkpoint.step")
            _typed(self.checkpoint.get("bytes") or 0, int, "checkpoint.bytes")
            self._infos, self._stats, self._sketches = [], {}, {}
            for t in _typed(doc["tensors"], list, "tensors"):
                info = _tensor_info(_typed(t, dict, "a tensor"))
                self._infos.append(info)
                if t.get("stats"):
                    self._stats[info.name] = _tensor_stats(t["stats"])
                if t.get("hash") and t.get("sample"):
                    sample = _decode_sample(_typed(t["sample"], dict, "sample"))
                    if sample.size != min(info.size, SAMPLE_SIZE):  # what sketch.sample_positions picks
                        raise ValueError(f"{info.name}: a sample of {sample.size} values for {info.size} elements")
                    self._sketches[info.name] = TensorSketch(_typed(t["hash"], str, "hash"), sample, info.size)
        except NotRegularFile:
            raise
        except RecursionError:
            raise IntegrityError("integrity.fingerprint", f"{path}: not a readable fingerprint (too deep)") from None
        except (OSError, ValueError, KeyError, TypeError, IndexError, OverflowError, EOFError, zlib.error) as e:
            raise IntegrityError("integrity.fingerprint", f"{path}: not a readable fingerprint ({e})") from None
        self.step = self.checkpoint.get("step")

    def _read_v2(self, payload: bytes) -> None:
        """The v2 payload after the magic; every count and size checked against the bytes."""
        if len(payload) < 4:
            raise ValueError("truncated header")
        size = int.from_bytes(payload[:4], "little")
        if 4 + size > len(payload):
            raise ValueError("header runs past the end")
        doc = _typed(json.loads(_inflate(payload[4 : 4 + size])), dict, "header")
        pos = 4 + size
        if pos + 4 > len(payload):
            raise ValueError("truncated statistics")
        packed_stats = int.from_bytes(payload[pos : pos + 4], "little")
        if pos + 4 + packed_stats > len(payload):
            raise ValueError("statistics run past the end")
        stats_bytes = _inflate(payload[pos + 4 : pos + 4 + packed_stats])
        data = payload[pos + 4 + packed_stats :]
        if doc.get("schema") != SCHEMA_V2:
            raise ValueError(f"schema is {doc.get('schema')!r}, expected {SCHEMA_V2!r}")
        self.checkpoint = _typed(doc.get("checkpoint") or {}, dict, "checkpoint")
        _typed(self.checkpoint.get("step"), (int, type(None)), "checkpoint.step")
        _typed(self.checkpoint.get("bytes") or 0, int, "checkpoint.bytes")
        entries = _typed(doc["tensors"], list, "tensors")
        self._infos, self._stats, self._sketches = [], {}, {}
        plans = []
        for t in entries:
            info = _tensor_info(_typed(t, dict, "a tensor"))
            self._infos.append(info)
            stride = _typed(t.get("stride", 1), int, f"{info.name}: stride")
            m = _typed(t.get("sample", 0), int, f"{info.name}: sample")
            if "sample" in t and (
                stride < 1 or stride & (stride - 1) or m != -(-min(info.size, SAMPLE_SIZE) // stride)
            ):
                raise ValueError(f"{info.name}: a sample of {m} values at stride {stride} for {info.size} elements")
            plans.append((info, bool(t.get("stats")), "sample" in t, stride, m, 8 if t.get("sample64") else 4))
        n_stats = sum(1 for p in plans if p[1])
        if len(stats_bytes) != n_stats * len(_STATS) * 8:
            raise ValueError(f"statistics of {len(stats_bytes)} bytes for {n_stats} tensors")
        stats = np.frombuffer(stats_bytes, dtype="<f8").reshape(-1, len(_STATS))
        pos = 0
        n_sketch = sum(1 for p in plans if p[2])
        digests_at, pos = pos, pos + n_sketch * _DIGEST
        need = pos + sum(p[4] * p[5] for p in plans if p[2])
        if need != len(data):
            raise ValueError(f"payload holds {len(data)} bytes, its header describes {need}")
        rows = iter(_v2_stats(stats))
        at = digests_at + n_sketch * _DIGEST
        digests = data[digests_at:at].hex()
        k = 0
        for info, has_stats, has_sketch, stride, m, width in plans:
            if has_stats:
                self._stats[info.name] = TensorStats(*next(rows))
            if has_sketch:
                sample = np.frombuffer(data, dtype="<f8" if width == 8 else "<f4", count=m, offset=at)
                at += m * width
                with np.errstate(invalid="ignore"):  # a signalling NaN widened
                    sample = sample.astype(np.float64)
                digest = digests[2 * _DIGEST * k : 2 * _DIGEST * (k + 1)]
                k += 1
                self._sketches[info.name] = TensorSketch(f"blake3:{digest}", sample, info.size, stride)

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def stats(self, name: str) -> TensorStats | None:
        return self._stats.get(name)

    def sketch(self, name: str) -> TensorSketch | None:
        return self._sketches.get(name)

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        raise IntegrityError("integrity.fingerprint", "a fingerprint holds no tensor data", name)

    @property
    def total_bytes(self) -> int:
        return int(self.checkpoint.get("bytes") or 0)

    def close(self) -> None:
        pass
