"""A fingerprint given as a reference is input like any other: a malformed one is an unreadable
reference (CheckpointUnreadable, one line), never a TypeError deep in the engine. Each case
below was found by the fuzzer (bench/fuzz)."""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from ckptwatch.errors import CheckpointUnreadable
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
