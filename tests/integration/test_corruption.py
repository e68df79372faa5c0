"""Broken files through the real CLI: a broken candidate is a `fail` (exit 1) with a
finding that names the tensor; a tool error (bad path, unreadable reference) is
exit 2 with one line on stderr. Never a traceback, never a crash -- even on index
files crafted to make TensorFlow's own reader abort."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import crc32c
import numpy as np
import pytest

from ckptwatch.formats.bundle import BundleSource
from ckptwatch.formats.table import build_table
from tests.tools import flip_bits
from tests.wire import HEADER, bundle_entry

OBJECT_GRAPH = "_CHECKPOINTABLE_OBJECT_GRAPH"


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


def verify_json(run_cli, *args) -> tuple[int, dict]:
    r = run_cli("verify", *args, "--json")
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode in (0, 1), (r.returncode, r.stderr)
    return r.returncode, r.json()


def fails_with(report: dict, check: str) -> list[dict]:
    hits = [f for f in report["findings"] if f["check"] == check and f["severity"] == "fail"]
    assert hits, f"no failing {check} in {[(f['check'], f['tensor']) for f in report['findings']]}"
    return hits


@pytest.fixture
def small(small_module, copy_ckpt, tmp_path: Path) -> str:
    """A private copy of a small TF2 checkpoint, free to damage."""
    return copy_ckpt(small_module.path, tmp_path / "ckpt")


def entries(prefix: str) -> dict:
    return BundleSource(prefix)._entries


NUMERIC = ["model/embedding/.ATTRIBUTES/VARIABLE_VALUE", "model/kernel/.ATTRIBUTES/VARIABLE_VALUE",
           "model/bias/.ATTRIBUTES/VARIABLE_VALUE"]  # fmt: skip


def test_the_intact_copy_passes(run_cli, small) -> None:
    rc, report = verify_json(run_cli, small)
    assert rc == 0 and report["verdict"] == "pass"
    assert {t["name"] for t in report["tensors"]} == {*NUMERIC, OBJECT_GRAPH}


# -- data shards --------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NUMERIC)
def test_bit_flip_in_one_tensor(tf, run_cli, small, name: str) -> None:
    e = entries(small)[name]
    shard = small + ".data-00000-of-00001"
    flip_bits(shard, e.offset + e.size // 2, 0x04)

    # TF lists the variables happily; only a full read of the tensor notices
    reader = tf.train.load_checkpoint(small)
    assert name in reader.get_variable_to_shape_map()
    with pytest.raises(Exception, match=r"(?i)checksum"):
        reader.get_tensor(name)

    rc, report = verify_json(run_cli, small)
    assert rc == 1 and report["verdict"] == "fail"
    bad = fails_with(report, "integrity.checksum")
    assert [f["tensor"] for f in bad] == [name]
    failing = {f["tensor"] for f in report["findings"] if f["severity"] == "fail"}
    assert failing == {name}  # the other tensors are fine

    human = run_cli("verify", small)
    assert human.returncode == 1
    assert "FAIL" in human.stdout and "integrity.checksum" in human.stdout
    assert name.split("/")[1] in human.stdout  # the tensor is named for people too
    assert "Traceback" not in human.stderr


def test_truncated_shard(run_cli, small) -> None:
    ents = entries(small)
    shard = small + ".data-00000-of-00001"
    by_offset = sorted(NUMERIC, key=lambda n: ents[n].offset)
    middle = ents[by_offset[1]]
    cut = middle.offset + middle.size // 2  # the first tensor stays whole, the second is cut in half
    os.truncate(shard, cut)
    beyond = {n for n, e in ents.items() if e.offset + e.size > cut}
    assert by_offset[1] in beyond and by_offset[0] not in beyond

    rc, report = verify_json(run_cli, small)
    assert rc == 1
    truncated = {f["tensor"] for f in fails_with(report, "integrity.truncated")}
    assert truncated <= beyond
    assert (beyond - {OBJECT_GRAPH}) <= truncated  # every numeric tensor past the cut is named
    failing = {f["tensor"] for f in report["findings"] if f["severity"] == "fail"}
    assert by_offset[0] not in failing
    whole = {t["name"]: t for t in report["tensors"]}[by_offset[0]]
    assert whole["stats"] is not None and whole["stats"]["count"] == 400  # still read and checked


def test_missing_shard(run_cli, small) -> None:
    os.remove(small + ".data-00000-of-00001")
    rc, report = verify_json(run_cli, small)
    assert rc == 1
    msgs = [f["message"] for f in fails_with(report, "integrity.shard_missing")]
    assert any("data-00000-of-00001" in m for m in msgs)


# -- the index -------------------------------------------------------------------------------------


def damage_index(prefix: str, how: str) -> None:
    index = prefix + ".index"
    data = Path(index).read_bytes()
    if how == "missing":
        os.remove(index)
    elif how == "empty":
        Path(index).write_bytes(b"")
    elif how == "garbage":
        Path(index).write_bytes(np.random.default_rng(0).bytes(len(data)))
    elif how == "truncated":
        Path(index).write_bytes(data[: len(data) // 2])
    elif how == "flipped":
        Path(index).write_bytes(data[:10] + bytes([data[10] ^ 0xFF]) + data[11:])
    else:
        raise AssertionError(how)


@pytest.mark.parametrize("how", ["missing", "empty", "garbage", "truncated", "flipped"])
def test_broken_index(run_cli, small, how: str) -> None:
    damage_index(small, how)
    rc, report = verify_json(run_cli, small)
    assert rc == 1 and report["verdict"] == "fail"
    (f,) = fails_with(report, "integrity.index")
    assert small + ".index" in f["message"] or os.path.basename(small) + ".index" in f["message"]
    if how == "missing":
        assert "missing" in f["message"]
    # inspect agrees, and says it in one clear place
    r = run_cli("inspect", small)
    assert r.returncode == 1 and "integrity.index" in r.stdout and "Traceback" not in r.stderr


# -- hostile indexes crafted with build_table ------------------------------------------------------------


VALUES = np.array([1.0, 2.0, 3.0, 4.0], dtype="<f4")

HOSTILE = {
    "ok": dict(dims=[4], offset=0, size=16),
    "huge_dim": dict(dims=[1 << 62], offset=0, size=16),
    "huge_product": dict(dims=[1 << 40, 1 << 40], offset=0, size=16),
    "negative_dim": dict(dims=[-5], offset=0, size=16),
    "offset_past_end": dict(dims=[4], offset=1 << 40, size=16),
    "size_past_end": dict(dims=[4], offset=0, size=1 << 40),
    "negative_offset": dict(dims=[4], offset=-8, size=16),
    "size_disagrees_with_shape": dict(dims=[3], offset=0, size=16),
    "shard_out_of_range": dict(dims=[4], offset=0, size=16, shard=7),
}


def craft(directory: Path, case: str) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    prefix = str(directory / "ckpt-1")
    data = VALUES.tobytes()
    entry = bundle_entry(crc=crc32c.crc32c(data), **HOSTILE[case])
    Path(prefix + ".index").write_bytes(build_table([(b"", HEADER), (b"w", entry)]))
    Path(prefix + ".data-00000-of-00001").write_bytes(data)
    return prefix


TF_READ = """
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
r = tf.train.load_checkpoint(sys.argv[1])
print(r.get_variable_to_shape_map(), flush=True)
print(r.get_tensor("w").tolist(), flush=True)
"""


def test_crafted_index_is_valid_when_not_hostile(tf, run_cli, tmp_path: Path) -> None:
    """The crafting is right: TF and ckptwatch both read the well-formed version."""
    prefix = craft(tmp_path, "ok")
    reader = tf.train.load_checkpoint(prefix)  # safe in-process: this one is well formed
    assert reader.get_variable_to_shape_map() == {"w": [4]}
    assert reader.get_tensor("w").tolist() == [1.0, 2.0, 3.0, 4.0]
    rc, report = verify_json(run_cli, prefix)
    assert rc == 0 and report["verdict"] == "pass"
    (t,) = report["tensors"]
    assert t["name"] == "w" and t["stats"]["mean"] == 2.5


HOSTILE_CASES = [
    "huge_dim",
    "huge_product",
    "negative_dim",
    "offset_past_end",
    "size_past_end",
    "negative_offset",
    "size_disagrees_with_shape",
    "shard_out_of_range",
]


@pytest.mark.parametrize("case", HOSTILE_CASES)
def test_hostile_index_fails_cleanly_naming_the_tensor(run_cli, tmp_path: Path, case: str) -> None:
    prefix = craft(tmp_path, case)
    rc, report = verify_json(run_cli, prefix)
    assert rc == 1 and report["verdict"] == "fail"
    bad = [f for f in report["findings"] if f["severity"] == "fail" and f["check"].startswith("integrity.")]
    assert bad, report["findings"]
    assert {f["tensor"] for f in bad} == {"w"}


@pytest.mark.parametrize("case", ["huge_product", "negative_dim"])
def test_tensorflow_aborts_where_ckptwatch_answers(tf, run_cli, run_python, tmp_path: Path, case: str) -> None:
    """The risk is real: TF's reader hits a C++ CHECK on these files and the whole
    process dies with SIGABRT (measured with TF 2.21); ckptwatch, which never hands
    the file to TF, answers `fail` with exit 1."""
    prefix = craft(tmp_path, case)
    tf_run = run_python(TF_READ, prefix)
    assert tf_run.returncode != 0
    if tf.__version__.startswith("2.21."):
        assert tf_run.returncode == -signal.SIGABRT, (tf_run.returncode, tf_run.stderr[-2000:])
        assert "Check failed" in tf_run.stderr
    r = run_cli("verify", prefix)
    assert r.returncode == 1
    assert "FAIL" in r.stdout and "integrity." in r.stdout
    assert r.stderr.strip() == ""


# -- tool errors: exit 2, one line --------------------------------------------------------------------


def test_wrong_path(run_cli, tmp_path: Path) -> None:
    missing = tmp_path / "no" / "such" / "ckpt-9"
    r = run_cli("verify", missing)
    assert r.returncode == 2 and r.stdout == ""
    assert str(missing) in one_line(r.stderr)
    r = run_cli("verify", missing, "--json")
    assert r.returncode == 2 and r.json() == {
        "schema": "ckptwatch.error/v1",
        "error": one_line(r.stderr)[18:],
        "exit": 2,
    }
    assert str(missing) in one_line(r.stderr)


def test_missing_reference(run_cli, small, tmp_path: Path) -> None:
    missing = tmp_path / "gone" / "ckpt-1"
    r = run_cli("verify", small, "--previous", missing)
    assert r.returncode == 2
    line = one_line(r.stderr)
    assert str(missing) in line and "previous" in line


@pytest.mark.parametrize("kind", ["random_file", "garbage_index"])
def test_unreadable_golden_is_an_error_not_a_verdict(run_cli, small, tmp_path: Path, kind: str) -> None:
    if kind == "random_file":
        golden = tmp_path / "golden.bin"
        golden.write_bytes(np.random.default_rng(1).bytes(3000))
    else:
        golden = tmp_path / "golden" / "ckpt-1"
        golden.parent.mkdir()
        Path(str(golden) + ".index").write_bytes(np.random.default_rng(2).bytes(3000))
        Path(str(golden) + ".data-00000-of-00001").write_bytes(b"\0" * 64)
    r = run_cli("verify", small, "--golden", golden, "--json")
    assert r.returncode == 2 and r.json()["schema"] == "ckptwatch.error/v1"  # the error, as JSON
    line = one_line(r.stderr)
    assert str(golden) in line
    if kind == "garbage_index":
        assert "golden" in line


def test_broken_candidate_with_a_good_reference_is_still_a_fail(run_cli, small, small_module) -> None:
    damage_index(small, "garbage")
    r = run_cli("verify", small, "--previous", small_module.path, "--json")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    fails_with(r.json(), "integrity.index")


def test_directory_without_state_file_gives_a_hint(run_cli, small) -> None:
    directory = os.path.dirname(small)
    assert not os.path.exists(os.path.join(directory, "checkpoint"))
    r = run_cli("verify", directory)
    assert r.returncode == 2 and r.stdout == ""
    line = one_line(r.stderr)
    assert directory in line
    assert "state file" in line and "prefix" in line


def test_empty_directory(run_cli, tmp_path: Path) -> None:
    r = run_cli("verify", tmp_path)
    assert r.returncode == 2
    assert str(tmp_path) in one_line(r.stderr)
