"""The v3 fingerprint (issue 15): columns instead of per-tensor JSON. What it reads back is what
v2 reads back, bit for bit (info, statistics, digest, sample), for every kind of tensor the
engine fingerprints; v1 and v2 files still read; it is smaller than v2 per tensor."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.formats.base import META, OPTIMIZER, WEIGHT, TensorInfo
from ckptwatch.formats.layout import FINGERPRINT_MAGIC, FINGERPRINT_MAGIC_V3, looks_like_fingerprint
from ckptwatch.verify import fingerprint as fp
from ckptwatch.verify import fingerprint_v3 as v3
from ckptwatch.verify.sketch import SketchBuilder
from ckptwatch.verify.stats import StatsAccumulator, TensorStats

NAME = "model/layer_with_weights-{i}/{var}/.ATTRIBUTES/VARIABLE_VALUE"


def _entry(name: str, values: np.ndarray, *, kind: str = WEIGHT, display: str = "", known: str = "", thin: int = 1):
    """(info, stats, sketch) as the engine makes them: statistics and sketch fed the tensor."""
    dtype = "bfloat16" if values.dtype == np.uint16 else values.dtype.name  # bfloat16 as its raw bits
    floats = (values.astype(np.uint32) << 16).view(np.float32) if dtype == "bfloat16" else values
    info = TensorInfo(name, dtype, values.shape, values.nbytes, kind, display, known)
    acc = StatsAccumulator()
    acc.update(floats.reshape(-1))
    builder = SketchBuilder(values.size)
    builder.update(floats.reshape(-1))
    sketch = builder.result()
    return info, acc.result(), sketch.thinned(thin) if thin > 1 else sketch


def _bfloat16(values: np.ndarray) -> np.ndarray:
    """bfloat16 values, as their raw bits (numpy has no bfloat16)."""
    return (values.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def entries() -> list:
    rng = np.random.default_rng(3)
    out = []
    for i, n in enumerate([1, 7, 8, 9, 64, 256, 1000, 1024, 5000, 70_000]):
        out.append(_entry(NAME.format(i=i, var="kernel"), rng.standard_normal(n).astype(np.float32), display=f"m/{i}"))
        out.append(_entry(NAME.format(i=i, var="bias"), np.zeros(n, np.float32), known=f"dense_{i}/bias"))
    nasty = rng.standard_normal(300).astype(np.float32)
    nasty[[3, 17, 40]] = [np.nan, np.inf, -np.inf]
    nasty[50:60] = 0.0
    nasty[61] = -0.0
    nasty[62] = np.float32(1e-45)  # subnormal
    out.append(_entry("nasty/with_nonfinite", nasty))
    out.append(_entry("nasty/all_nan", np.full(20, np.nan, np.float32)))
    out.append(_entry("nasty/empty", np.zeros((0, 3), np.float32)))
    out.append(_entry("nasty/scalar", np.array(3.5, np.float32)))
    out.append(_entry("nasty/huge", np.array([1e300, -1e300, 3.0], np.float64)))
    out.append(_entry("nasty/float64", rng.standard_normal((30, 40))))
    out.append(_entry("nasty/float16", rng.standard_normal((64, 33)).astype(np.float16)))
    out.append(_entry("nasty/bfloat16", _bfloat16(rng.standard_normal(4096))))
    out.append(_entry("nasty/int8", rng.integers(-128, 128, size=2000).astype(np.int8)))
    out.append(_entry("nasty/uint8", rng.integers(0, 256, size=2000).astype(np.uint8)))
    out.append(_entry("nasty/bool", rng.integers(0, 2, size=999).astype(bool)))
    out.append(_entry("nasty/int64", np.arange(5000, dtype=np.int64) * 123456789012))
    out.append(_entry("optimizer/iter", np.array(1234, np.int64), kind=OPTIMIZER))
    out.append(_entry("nasty/thinned", rng.standard_normal(100_000).astype(np.float32), thin=4))
    out.append(_entry("ünïcödé/\udcff/name", rng.standard_normal(50).astype(np.float32), display="ünï/x"))
    out.append((TensorInfo("_CHECKPOINTABLE_OBJECT_GRAPH", "string", (), 1234, META), None, None))
    out.append((TensorInfo("strings/vocab", "string", (3,), 99, WEIGHT, "vocab"), None, None))
    info, stats, sketch = _entry("stats/only", rng.standard_normal(10).astype(np.float32))
    out.append((info, stats, None))
    info, stats, sketch = _entry("sketch/only", rng.standard_normal(10).astype(np.float32))
    out.append((info, None, sketch))
    return out


def _bits(stats: TensorStats) -> tuple:
    return tuple(
        (type(v), np.float64(v).tobytes()) if isinstance(v, float) else (type(v), v) for v in stats.to_dict().values()
    )


def _read(path: Path, data: bytes) -> fp.FingerprintSource:
    path.write_bytes(data)
    return fp.FingerprintSource(str(path))


def assert_same(a: fp.FingerprintSource, b: fp.FingerprintSource) -> None:
    assert a.checkpoint == b.checkpoint and a.step == b.step
    assert a.tensors() == b.tensors()
    for info in a.tensors():
        sa, sb = a.stats(info.name), b.stats(info.name)
        assert (sa is None) == (sb is None), info.name
        if sa is not None:
            assert _bits(sa) == _bits(sb), info.name
        ka, kb = a.sketch(info.name), b.sketch(info.name)
        assert (ka is None) == (kb is None), info.name
        if ka is not None:
            assert (ka.hash, ka.count, ka.stride) == (kb.hash, kb.count, kb.stride), info.name
            assert ka.sample.dtype == kb.sample.dtype == np.float64
            assert ka.sample.tobytes() == kb.sample.tobytes(), info.name


CHECKPOINT = {"path": "/ckpt/run/ckpt-7", "format": "bundle", "step": 7, "tensors": 40, "bytes": 123456}


def test_v3_reads_back_what_v2_reads_back_bit_for_bit(tmp_path: Path) -> None:
    made = entries()
    v2 = _read(tmp_path / "a.fp", fp.encode(CHECKPOINT, made, 2))
    v3 = _read(tmp_path / "b.fp", fp.encode(CHECKPOINT, made, 3))
    assert_same(v2, v3)
    assert v3.stats("nasty/all_nan").mean != v3.stats("nasty/all_nan").mean  # NaN, never "mean 0"
    assert v3.tensors()[0].display == "m/0" and v3.tensors()[1].known == "dense_0/bias"
    # and v3 re-encoded from what it read is the same file
    again = [(i, v3.stats(i.name), v3.sketch(i.name)) for i in v3.tensors()]
    assert fp.encode(CHECKPOINT, again, 3) == (tmp_path / "b.fp").read_bytes()


def test_narrow_samples_are_stored_narrow_and_read_exactly(tmp_path: Path) -> None:
    """float16, bfloat16 and int8 samples take 2 and 1 bytes a value, exactly (v2: 4)."""
    rng = np.random.default_rng(1)
    for values, per_value in (
        (rng.standard_normal(1 << 20).astype(np.float16), 2),
        (_bfloat16(rng.standard_normal(1 << 20)), 2),
        (rng.integers(-128, 128, size=1 << 21).astype(np.int8), 1),
    ):
        made = [_entry("w", values)]
        v2, v3 = fp.encode({}, made, 2), fp.encode({}, made, 3)
        assert fp.describe(v2)["samples"] == 1024 * 4
        assert fp.describe(v3)["samples"] <= 1024 * per_value + 16
        assert_same(_read(tmp_path / "a.fp", v2), _read(tmp_path / "b.fp", v3))


def test_the_daemon_and_the_cli_write_v3_and_every_version_still_reads(tmp_path: Path) -> None:
    made = [e for e in entries() if e[0].name != "nasty/thinned"]  # v1 keeps whole samples only
    written = {}
    for name in ("new.fp", "old.json", "old.json.gz"):
        fp.write_fingerprint(str(tmp_path / name), CHECKPOINT, made)
        written[name] = fp.FingerprintSource(str(tmp_path / name))
    fp.write_fingerprint(str(tmp_path / "v2.fp"), CHECKPOINT, made, version=2)
    assert (tmp_path / "new.fp").read_bytes().startswith(FINGERPRINT_MAGIC_V3)
    assert (tmp_path / "v2.fp").read_bytes().startswith(FINGERPRINT_MAGIC)
    assert all(looks_like_fingerprint(str(tmp_path / n)) for n in ("new.fp", "v2.fp", "old.json", "old.json.gz"))
    assert_same(fp.FingerprintSource(str(tmp_path / "v2.fp")), written["new.fp"])
    v1 = written["old.json"]
    assert [t.name for t in v1.tensors()] == [t.name for t in written["new.fp"].tensors()]
    for t in v1.tensors():
        if v1.stats(t.name) is not None:
            assert _bits(v1.stats(t.name)) == _bits(written["new.fp"].stats(t.name))


def test_v3_is_smaller_than_v2_per_tensor() -> None:
    """The fixed cost a tensor pays (statistics, digest, name; its sample aside) is what v3 cuts."""
    rng = np.random.default_rng(9)
    made = [_entry(NAME.format(i=i, var="kernel"), rng.standard_normal(64).astype(np.float32)) for i in range(2000)]
    v2, v3 = fp.describe(fp.encode({}, made, 2)), fp.describe(fp.encode({}, made, 3))
    fixed = {v: (d["header"] + d["stats"] + d["digests"]) / 2000 for v, d in (("v2", v2), ("v3", v3))}
    assert fixed["v3"] <= 55 and fixed["v3"] * 1.3 < fixed["v2"], fixed
    assert v3["samples"] < v2["samples"], (v2, v3)


def test_an_empty_fingerprint_round_trips(tmp_path: Path) -> None:
    v3 = _read(tmp_path / "e.fp", fp.encode({"step": None}, [], 3))
    assert v3.tensors() == [] and v3.step is None


def test_statistics_whose_zero_fraction_is_not_a_count_over_the_total_stay_exact(tmp_path: Path) -> None:
    info, stats, sketch = _entry("w", np.arange(10, dtype=np.float32))
    odd = TensorStats(**{**stats.to_dict(), "zero_fraction": 1 / 3, "l2": math.pi, "count": 10})
    made = [(info, odd, sketch)]
    assert_same(_read(tmp_path / "a.fp", fp.encode({}, made, 2)), _read(tmp_path / "b.fp", fp.encode({}, made, 3)))


def test_v3_header_names_its_schema() -> None:
    data = fp.encode(CHECKPOINT, entries()[:3], 3)
    assert json.dumps(fp.SCHEMA_V3) and fp.describe(data)["format"] == "v3"


@pytest.mark.parametrize("width", [40, 3000], ids=["matrix", "memcmp"])  # 3,000 x 6,000 bytes: pairwise
def test_front_coding_finds_every_shared_prefix(width: int) -> None:
    rng = np.random.default_rng(width)
    alphabet = np.array(list("ab/é\udcff"))
    names = sorted("".join(rng.choice(alphabet, size=int(rng.integers(0, width)))) for _ in range(6000))
    encoded = [n.encode("utf-8", "surrogatepass") for n in names]
    naive = [0] + [
        next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        for a, b in itertools.pairwise(encoded)
    ]
    assert v3._shared_prefixes(encoded) == naive
    cur = v3.Cursor(v3._front_coded(names), "names")
    assert v3._front_decoded(cur, len(names), "name") == names
    cur.done()


def test_a_sketch_that_does_not_fit_its_tensor_is_left_out_not_a_broken_file(tmp_path: Path) -> None:
    """v2 wrote such a file and refused it when reading; v3 writes the tensor without a sketch."""
    info, stats, sketch = _entry("w", np.arange(100, dtype=np.float32))
    short = type(sketch)(sketch.hash[:20], sketch.sample, sketch.count)
    other = _entry("v", np.arange(5000, dtype=np.float32))[2]  # another tensor's sketch
    made = [(info, stats, other), (dataclasses.replace(info, name="x"), stats, short), _entry("y", np.ones(9))]
    read = _read(tmp_path / "a.fp", fp.encode({}, made, 3))
    assert read.sketch("w") is None and read.sketch("x") is None and read.stats("w") == read.stats("x") == stats
    assert read.sketch("y") is not None


def test_a_header_that_compresses_very_well_is_still_written_readable(tmp_path: Path) -> None:
    """The reader refuses a header inflating past MAX_INFLATION times the file (a decompression
    bomb). Columns of a checkpoint with nothing but names and shapes (string tensors, no
    statistics or samples) compress past that: the writer must not write what it then refuses
    as a bomb; v2 holds them, read back as they were."""
    made = [
        (TensorInfo(NAME.format(i=i, var="value"), "string", (1,) * 60, 0, META, "", ""), None, None)
        for i in range(5000)
    ]
    path = tmp_path / "strings.fp"
    fp.write_fingerprint(str(path), CHECKPOINT, made)
    back = fp.FingerprintSource(str(path))
    assert back.tensors() == [info for info, _, _ in made]
