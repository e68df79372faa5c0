"""Many small tensors (issue 15): the engine reads float tensors that TF stored back to back
in runs (one read and the checksums of a run together, BundleSource.read_runs) and must give
exactly the statistics and findings a tensor-by-tensor read gives, whatever the run holds:
NaN, signed zeros, an empty tensor, float64 next to float32, a damaged tensor in the middle."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ckptwatch.formats.bundle import BundleSource
from ckptwatch.verify.engine import Options, verify_paths
from ckptwatch.verify.stats import StatsAccumulator
from tests.conftest import tf_tensors
from tests.tools import flip_bits


@pytest.fixture(scope="module")
def many(tf, tmp_path_factory: pytest.TempPathFactory) -> str:
    rng = np.random.default_rng(15)
    values = [rng.standard_normal(int(n), dtype=np.float32) for n in rng.integers(1, 3000, size=240)]
    values[7][3] = np.nan
    values[11][:] = 0.0
    values[12][:] = np.abs(values[12])
    values[12][:2] = (-0.0, 0.0)  # min is a zero: which sign comes back must not depend on the path
    values[20] = np.zeros(0, np.float32)
    values[30][5] = np.inf
    values[40] = values[40].astype(np.float64)
    values[41] = (values[41] * 1e30).astype(np.float32)  # x^4 overflows: the exact path
    variables = [tf.Variable(v, name=f"v{i}") for i, v in enumerate(values)]
    ints = tf.Variable(np.arange(10, dtype=np.int64))
    prefix = str(tmp_path_factory.mktemp("many") / "ckpt-1")
    return tf.train.Checkpoint(weights=variables, ints=ints).write(prefix)


def stats_by_tf(tf, prefix: str) -> dict:
    out = {}
    for name, value in tf_tensors(tf, prefix).items():
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size:
            acc = StatsAccumulator()
            acc.update(np.ascontiguousarray(value).reshape(-1))
            out[name] = acc.result()
    return out


def test_runs_give_the_statistics_of_tf_values(tf, many: str) -> None:
    src = BundleSource(many)
    names = sorted((i.name for i in src.tensors()), key=src.storage_key)
    runs = [members for _, members in src.read_runs(names)]
    read_together = sum(len(m) for m in runs)
    assert read_together >= 200 and len(runs) < 20  # the small float tensors come in a few runs
    src.close()
    expected = stats_by_tf(tf, many)
    for threads in (1, 2):
        report, _ = verify_paths(many, options=Options(threads=threads))
        got = {t.name: t.stats for t in report.tensors if t.name in expected}
        assert got == expected  # bit for bit, NaN/Inf counts included
        nonfinite = sorted(f.tensor for f in report.findings if f.check == "nonfinite")
        assert nonfinite == sorted(n for n, s in expected.items() if s.nonfinite)
        assert len(nonfinite) == 2


def test_a_damaged_tensor_inside_a_run_is_named(tf, many: str, copy_ckpt, tmp_path: Path) -> None:
    prefix = copy_ckpt(many, tmp_path / "damaged")
    src = BundleSource(prefix)
    names = sorted((i.name for i in src.tensors()), key=src.storage_key)
    (_, members), *_ = [r for r in src.read_runs(names) if len(r[1]) >= 3]
    victim = names[members[len(members) // 2][0]]
    e = src.entry(victim)
    src.close()
    flip_bits(prefix + ".data-00000-of-00001", e.offset + e.size // 2, 0x04)
    expected = stats_by_tf(tf, many)
    report, _ = verify_paths(prefix)
    assert report.verdict == "fail"
    failing = [(f.check, f.tensor) for f in report.findings if f.severity == "fail"]
    assert ("integrity.checksum", victim) in failing
    assert {t for c, t in failing if c.startswith("integrity.")} == {victim}
    for t in report.tensors:
        if t.name == victim:
            assert t.stats is None and t.error is not None
        elif t.name in expected:
            assert t.stats == expected[t.name]
