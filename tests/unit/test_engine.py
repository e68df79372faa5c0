"""The engine and the policy rules on in-memory checkpoints (formats.memory.ArraySource):
what each kind of damage gives, without TensorFlow or files. Fast: milliseconds each."""

from __future__ import annotations

import numpy as np
import pytest

from ckptwatch.formats.memory import ArraySource
from ckptwatch.policy import Policy
from ckptwatch.verify.engine import Engine, Options

RNG = np.random.default_rng(7)
KERNEL, BIAS, OTHER = "model/dense/kernel", "model/dense/bias", "model/out/kernel"


def weights(scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        KERNEL: (rng.standard_normal((32, 16)) * scale).astype(np.float32),
        BIAS: (rng.standard_normal(16) * 0.1).astype(np.float32),
        OTHER: (rng.standard_normal((16, 4)) * scale).astype(np.float32),
        "save_counter": np.array(3, dtype=np.int64),
    }


def trained(base: dict[str, np.ndarray], size: float = 0.01) -> dict[str, np.ndarray]:
    """One healthy step: every float tensor moves a little."""
    rng = np.random.default_rng(1)
    return {
        k: (v + rng.standard_normal(v.shape).astype(v.dtype) * size * (np.std(v) or 1)) if v.dtype.kind == "f" else v
        for k, v in base.items()
    }


def run(candidate: dict, previous: dict | None = None, golden: dict | None = None, policy: Policy | None = None, **kw):
    cand = ArraySource(candidate, "cand", corrupt=kw.pop("corrupt", ()))
    prev = ArraySource(previous, "prev", corrupt=kw.pop("corrupt_previous", ())) if previous is not None else None
    gold = ArraySource(golden, "gold") if golden is not None else None
    report, _ = Engine(policy, Options(threads=1, **kw)).run(cand, prev, gold)
    return report


def fails(report) -> set[tuple[str, str | None]]:
    return {(f.check, f.tensor) for f in report.findings if f.severity == "fail"}


def test_a_healthy_step_passes() -> None:
    previous = weights()
    report = run(trained(previous), previous)
    assert report.verdict == "pass", [f.to_dict() for f in report.findings]
    assert 0 < report.drift["previous"].relative_l2 < 0.05


def test_nan_fails_naming_the_tensor_and_the_count() -> None:
    candidate = trained(weights())
    candidate[KERNEL][0, :3] = np.nan
    report = run(candidate, weights())
    assert ("nonfinite", KERNEL) in fails(report)
    message = next(f.message for f in report.findings if f.check == "nonfinite")
    assert message.startswith("3 NaN and 0 Inf of 512 values")


def test_a_duplicate_save_fails_unchanged() -> None:
    previous = weights()
    assert ("drift.unchanged", None) in fails(run(dict(previous), previous))


def test_a_kernel_reset_to_zeros_fails_reset() -> None:
    previous = weights()
    candidate = trained(previous)
    candidate[KERNEL] = np.zeros_like(candidate[KERNEL])
    assert ("drift.reset", KERNEL) in fails(run(candidate, previous))


def test_a_reinitialised_kernel_fails_reset_with_value_and_limit() -> None:
    """A fresh random draw is uncorrelated with the trained kernel: clear-cut, it fails without any
    history (drift.reset, on the cosine); its jump alone would only warn before the run has history."""
    previous = weights()
    candidate = trained(previous)
    candidate[OTHER] = RNG.standard_normal(candidate[OTHER].shape).astype(np.float32)
    report = run(candidate, previous)
    assert ("drift.reset", OTHER) in fails(report)
    reset = next(f for f in report.findings if f.check == "drift.reset" and f.tensor == OTHER)
    assert "cosine" in reset.message and reset.limit == Policy().reset_cosine and reset.value < reset.limit
    assert reset.to_dict()["basis"] == "policy: reset_cosine"
    jump = next(f for f in report.findings if f.check == "drift.jump" and f.tensor == OTHER)
    assert jump.severity == "warn" and "(> 1; no history yet" in jump.message and jump.value > jump.limit == 1.0


def test_explosion_fails_on_the_absolute_bound() -> None:
    previous = weights()
    candidate = trained(previous)
    candidate[KERNEL] = candidate[KERNEL] * 1e7
    assert ("drift.explosion", KERNEL) in fails(run(candidate, previous))


def test_one_frozen_tensor_warns_unless_listed_as_frozen() -> None:
    previous = weights()
    candidate = trained(previous)
    candidate[OTHER] = previous[OTHER].copy()
    warned = run(candidate, previous)
    assert warned.verdict == "warn" and any(f.check == "drift.frozen" and f.tensor == OTHER for f in warned.findings)
    intended = run(candidate, previous, policy=Policy(frozen=["model/out/*"]))
    assert intended.verdict == "pass"


def test_structure_missing_unexpected_and_reshaped() -> None:
    previous = weights()
    candidate = trained(previous)
    del candidate[BIAS]
    candidate["model/extra/kernel"] = np.ones((2, 2), np.float32)
    candidate[OTHER] = np.ones((16, 5), np.float32)
    checks = {(f.check, f.tensor) for f in run(candidate, previous).findings}
    assert ("structure.missing", BIAS) in checks
    assert ("structure.unexpected", "model/extra/kernel") in checks
    assert ("structure.shape", OTHER) in checks


def test_a_corrupt_candidate_tensor_fails_integrity_a_corrupt_reference_only_warns() -> None:
    previous = weights()
    candidate = trained(previous)
    bad_candidate = run(candidate, previous, corrupt=[KERNEL])
    assert ("integrity.checksum", KERNEL) in fails(bad_candidate)
    bad_reference = run(candidate, previous, corrupt_previous=[KERNEL])
    assert not fails(bad_reference)
    warned = [f for f in bad_reference.findings if f.check == "integrity.checksum"]
    assert warned and warned[0].severity == "warn" and warned[0].reference == "previous"


def test_replica_profile_compares_every_value_to_golden() -> None:
    golden = weights()
    copy = {k: v.copy() for k, v in golden.items()}
    assert run(copy, golden=golden, policy=Policy(profile="replica")).verdict == "pass"
    copy[KERNEL][5, 5] += 1e-3
    assert ("drift.replica", KERNEL) in fails(run(copy, golden=golden, policy=Policy(profile="replica")))


def test_excluded_tensors_are_not_judged() -> None:
    previous = weights()
    candidate = trained(previous)
    candidate[OTHER] = RNG.standard_normal(candidate[OTHER].shape).astype(np.float32)
    assert ("drift.jump", OTHER) not in fails(run(candidate, previous, policy=Policy(exclude=[OTHER])))


@pytest.mark.parametrize("chunk", [1, 7, 64, 1 << 20])
def test_chunk_size_does_not_change_the_figures(chunk: int) -> None:
    previous = weights()
    candidate = trained(previous)
    reference = run(candidate, previous)
    chunked = run(candidate, previous, chunk_elements=chunk)
    assert chunked.drift["previous"].relative_l2 == pytest.approx(reference.drift["previous"].relative_l2, rel=1e-9)
    for a, b in zip(reference.tensors, chunked.tensors, strict=True):
        assert a.stats is not None and b.stats is not None
        assert a.name == b.name and a.stats.l2 == pytest.approx(b.stats.l2, rel=1e-9)


class Deleted(ArraySource):
    """A checkpoint whose data file is deleted while it is read (CheckpointManager's max_to_keep)."""

    def read(self, name, chunk_elements=1 << 20):
        yield from super().read(name, 1)  # a first chunk, then the shard is gone
        raise FileNotFoundError(2, "No such file or directory", "/ckpt/run/ckpt-7.data-00000-of-00001")


def test_a_file_deleted_while_read_is_unreadable_not_a_crash() -> None:
    previous = weights()
    candidate = trained(previous)
    report, _ = Engine(None, Options(threads=1)).run(ArraySource(candidate), Deleted(previous, "prev"))
    warned = [f for f in report.findings if f.check == "integrity.unreadable"]
    assert warned and all(f.severity == "warn" and f.reference == "previous" for f in warned)
    assert "ckpt-7.data-00000-of-00001" in warned[0].message
    report, _ = Engine(None, Options(threads=1)).run(Deleted(candidate, "cand"), ArraySource(previous))
    assert ("integrity.unreadable", KERNEL) in fails(report)
