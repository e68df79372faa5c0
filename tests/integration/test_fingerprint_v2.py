"""Compact fingerprints (issue 15): the binary form (v3 written, v2 still read) stays under 1% of
the checkpoint for a checkpoint of many small tensors and within data/256 + a fixed cost per
tensor for any mix, gives the verdicts the checkpoint gives, and v1 JSON fingerprints are still
read."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.formats.layout import FINGERPRINT_MAGIC, FINGERPRINT_MAGIC_V3, looks_like_fingerprint
from ckptwatch.verify.engine import verify_paths
from ckptwatch.verify.fingerprint import FingerprintSource, write_fingerprint
from ckptwatch.verify.sketch import SAMPLE_SHARE, SAMPLE_SIZE, same_content, stored_stride


def bundle_bytes(prefix: str) -> int:
    d, base = os.path.split(prefix)
    return sum(os.path.getsize(os.path.join(d, n)) for n in os.listdir(d) if n.startswith(base + "."))


@pytest.fixture(scope="module")
def small_tensors(tf, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """600 float32 variables of 1-64 KB (log-uniform), written by TF; `noisy` moves them all by
    1e-2 of their scale, `copy` is `base` saved again."""
    d = tmp_path_factory.mktemp("small_tensors")
    rng = np.random.default_rng(5)
    sizes = np.exp(rng.uniform(np.log(256), np.log(16384), size=600)).astype(int)
    variables = [tf.Variable(rng.normal(size=int(n)).astype("float32")) for n in sizes]
    ckpt = tf.train.Checkpoint(v=variables)
    out = {"base": ckpt.write(str(d / "base" / "ckpt-1")), "copy": ckpt.write(str(d / "copy" / "ckpt-2"))}
    for v in variables:
        v.assign_add(rng.normal(scale=1e-2, size=v.shape[0]).astype("float32"))
    out["noisy"] = ckpt.write(str(d / "noisy" / "ckpt-3"))
    return out


def test_v2_fingerprint_of_many_small_tensors_is_under_one_percent(run_cli, small_tensors, tmp_path: Path) -> None:
    prefix = small_tensors["base"]
    total = bundle_bytes(prefix)
    sizes = {}
    for name in ("base.fp", "base.json.gz"):
        r = run_cli("fingerprint", prefix, "-o", tmp_path / name)
        assert r.returncode == 0, r.stderr
        sizes[name] = (tmp_path / name).stat().st_size
    assert (tmp_path / "base.fp").read_bytes().startswith(FINGERPRINT_MAGIC_V3)
    assert looks_like_fingerprint(str(tmp_path / "base.fp"))
    assert sizes["base.fp"] < 0.01 * total, (sizes, total)
    assert sizes["base.json.gz"] > 0.02 * total  # v1 keeps 1,024 values a tensor: what v2 fixes


def test_v2_and_v1_fingerprints_judge_like_the_checkpoint(small_tensors, tmp_path: Path) -> None:
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.verify.verification import verify_checkpoint

    base = small_tensors["base"]
    prints = {}
    for name in ("base.fp", "base.json"):
        prints[name] = str(tmp_path / name)
        verify_checkpoint(VerifyRequest(base, fingerprint_out=prints[name]))
    v1, v2 = FingerprintSource(prints["base.json"]), FingerprintSource(prints["base.fp"])
    old = FingerprintSource(prints["base.fp"])  # the same in the v2 encoding, as written before v3
    prints["base.v2.fp"] = str(tmp_path / "base.v2.fp")
    entries = [(t, old.stats(t.name), old.sketch(t.name)) for t in old.tensors()]
    write_fingerprint(prints["base.v2.fp"], old.checkpoint, entries, version=2)
    assert (tmp_path / "base.v2.fp").read_bytes().startswith(FINGERPRINT_MAGIC)
    assert [t.name for t in v1.tensors()] == [t.name for t in v2.tensors()]
    for t in v2.tensors():
        if t.numeric:
            assert same_content(v1.sketch(t.name).hash, v2.sketch(t.name).hash)
            assert len(v2.sketch(t.name).hash) < len(v1.sketch(t.name).hash)  # 128 bits kept
            assert v1.stats(t.name) == v2.stats(t.name)
    exact, _ = verify_paths(small_tensors["noisy"], previous=base)
    for fp in prints.values():
        est, _ = verify_paths(small_tensors["noisy"], previous=fp)
        assert est.verdict == exact.verdict
        assert est.drift["previous"].relative_l2 == pytest.approx(exact.drift["previous"].relative_l2, rel=0.05)
    # v3 and v2 of the same fingerprint: the same report, bit for bit
    reports = []
    for name in ("base.fp", "base.v2.fp"):
        report, _ = verify_paths(small_tensors["noisy"], previous=prints[name])
        doc = report.to_dict()
        doc.pop("timings"), doc.pop("created")
        reports.append(json.dumps(doc, sort_keys=True).replace(prints[name], "FINGERPRINT"))
    assert reports[0] == reports[1]
    # a duplicate save: equal hashes make the estimate exact, and drift.unchanged fails it alike
    same, _ = verify_paths(small_tensors["copy"], previous=prints["base.fp"])
    exact_same, _ = verify_paths(small_tensors["copy"], previous=base)
    assert same.drift["previous"].relative_l2 == 0.0 and same.verdict == exact_same.verdict


def test_a_truncated_v2_fingerprint_is_refused_in_one_line(run_cli, small_tensors, tmp_path: Path) -> None:
    fp = tmp_path / "base.fp"
    assert run_cli("fingerprint", small_tensors["base"], "-o", fp).returncode == 0
    data = fp.read_bytes()
    for cut in (len(FINGERPRINT_MAGIC) + 2, len(data) // 2, len(data) - 1):
        fp.write_bytes(data[:cut])
        r = run_cli("verify", small_tensors["noisy"], "--previous", fp)
        assert r.returncode == 2, (cut, r.stderr)
        assert "not a readable fingerprint" in r.stderr and "Traceback" not in r.stderr


@pytest.mark.parametrize("count", [1, 7, 8, 100, 1024, 5000, 25_000, 262_144, 10**7])
def test_stored_samples_stay_within_their_share_of_the_tensor(count: int) -> None:
    stride = stored_stride(count, 4 * count)
    kept = -(-min(count, SAMPLE_SIZE) // stride)
    assert kept * 4 <= max(8 * 4, 4 * count // SAMPLE_SHARE)  # at most 1/256 of the bytes, or 8 values
    assert kept >= min(count, 4)  # a power-of-two stride keeps at least half the minimum


# The bound every TF-written checkpoint's fingerprint keeps: its samples (1/256 of the data, at
# least 8 values a tensor), and a fixed cost a tensor (statistics, digest, name) and a file.
PER_TENSOR = 80  # bytes: v3 needs 50 + a sample of 8 values (27); v2 needed 73 + 32
PER_FILE = 4096


@pytest.fixture(scope="module")
def tiny_tensors(tf, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The worst case for the fixed cost: 1,500 float32 variables of 256 B, named like a model's."""
    d = tmp_path_factory.mktemp("tiny_tensors")
    rng = np.random.default_rng(6)
    model = {
        f"block_{i:04d}": {"dense": {"kernel": tf.Variable(rng.normal(size=64).astype("float32"))}} for i in range(1500)
    }
    return tf.train.Checkpoint(model=model).write(str(d / "ckpt-1"))


@pytest.mark.parametrize("which", ["tiny_tensors", "small_tensors"])
def test_a_fingerprint_is_its_samples_and_a_fixed_cost_per_tensor(request, which: str, tmp_path: Path) -> None:
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.verify.verification import verify_checkpoint

    fixture = request.getfixturevalue(which)
    prefix = fixture if isinstance(fixture, str) else fixture["base"]
    out = tmp_path / "ckpt.fp"
    verify_checkpoint(VerifyRequest(prefix, fingerprint_out=str(out)))
    tensors = FingerprintSource(str(out)).tensors()
    data = sum(t.nbytes for t in tensors if t.numeric)
    assert out.stat().st_size <= data / SAMPLE_SHARE + PER_TENSOR * len(tensors) + PER_FILE, (
        out.stat().st_size,
        data,
        len(tensors),
    )
