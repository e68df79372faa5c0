"""Fingerprint files: a checkpoint's metadata, statistics and sketches, without its data.

Written by `ckptwatch fingerprint PATH -o FILE` (and by the daemon for each
checkpoint it verifies), accepted wherever a reference is (engine.open_reference opens
it): CheckpointManager may delete the previous checkpoint, and golden checkpoints are
often not mounted. Never a candidate: it holds no tensor data. ckptwatch.formats only
detects one (formats.layout.looks_like_fingerprint), it does not open it.
JSON (gzip when the name ends in .gz); samples are base64 little-endian floats.
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
from ckptwatch.formats.layout import FINGERPRINT_SCHEMA as SCHEMA
from ckptwatch.formats.layout import looks_like_fingerprint
from ckptwatch.verify.sketch import SAMPLE_SIZE, TensorSketch
from ckptwatch.verify.stats import TensorStats

__all__ = ["SCHEMA", "FingerprintSource", "looks_like_fingerprint", "write_fingerprint"]

MAX_FINGERPRINT_BYTES = 256 << 20
MAX_INFLATION = 50  # a real fingerprint (floats, base64 samples) compresses ~2-5x; a bomb, 1000x
_SMALL_FLOATS = {"float32", "float16", "bfloat16", "int8", "uint8", "int16", "uint16", "bool"}


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
    path: str, checkpoint: dict, entries: list[tuple[TensorInfo, TensorStats | None, TensorSketch | None]]
) -> int:
    """Write atomically (temp file + rename); return the size in bytes."""
    doc = {
        "schema": SCHEMA,
        "checkpoint": checkpoint,
        "tensors": [
            {
                "name": info.name,
                "display": info.display,
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
    if path.endswith(".gz"):
        data = gzip.compress(data, mtime=0)
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


def _typed(value, types, what: str):
    """`value` when it is of `types` (bool is no number here); ValueError naming `what` otherwise."""
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise ValueError(f"{what} is not of the right type")
    if not isinstance(value, types):
        raise ValueError(f"{what} is not of the right type")
    return value


def _tensor_info(t: dict) -> TensorInfo:
    name = _typed(t["name"], str, "tensor name")
    shape = tuple(_typed(d, int, f"{name}: shape") for d in _typed(t["shape"], list, f"{name}: shape"))
    if any(d < 0 for d in shape) or _typed(t["bytes"], int, f"{name}: bytes") < 0:
        raise ValueError(f"{name}: negative shape or size")
    fields = {
        key: _typed(t[key] if key != "display" else t.get(key, ""), str, f"{name}: {key}")
        for key in ("dtype", "kind", "display")
    }
    return TensorInfo(name, fields["dtype"], shape, t["bytes"], fields["kind"], fields["display"])


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
        try:
            doc = json.loads(_read_document(path))
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            if doc.get("schema") != SCHEMA:
                raise ValueError(f"schema is {doc.get('schema')!r}, expected {SCHEMA!r}")
            self.checkpoint: dict = _typed(doc.get("checkpoint") or {}, dict, "checkpoint")
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
