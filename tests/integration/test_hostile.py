"""Hostile and broken files (issue 12): each one costs only its own verdict, never blocks,
never blows up memory, and a corrupt candidate is a `fail`, never an `error`.

Every input is built here, byte by byte (tests/hostile.py): no TensorFlow.
"""

from __future__ import annotations

import json
import os
import re
import signal
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import crc32c
import numpy as np
import pytest

from ckptwatch.daemon import completion, discovery
from ckptwatch.daemon.model import Candidate, Completion
from ckptwatch.daemon.pipeline import Pipeline, Queued
from ckptwatch.daemon.stability import tree_signature
from ckptwatch.errors import CheckpointUnreadable
from ckptwatch.formats import layout
from ckptwatch.formats.base import IntegrityError
from ckptwatch.formats.bundle import BundleSource
from ckptwatch.formats.memory import ArraySource
from ckptwatch.verify.engine import Engine, open_reference, verify_paths
from tests import hostile
from tests.tools import child_reading_a_shard, wait_until
from tests.wire import HEADER, bundle_entry, varint

# -- the watch directory every daemon-side test uses: healthy checkpoints between hostile entries --


def _fifo(path: Path) -> str:
    os.mkfifo(path)
    return str(path)


@pytest.fixture
def mixed(tmp_path: Path) -> Iterator[tuple[Path, list[str], dict[str, str]]]:
    d = tmp_path / "run"
    d.mkdir()
    bad = hostile.every_kind(d)
    good = [hostile.healthy(d, f"ckpt-{step}", step) for step in (1, 3, 5, 7, 9, 11)]
    yield d, good, bad
    hostile.remove_tree(bad["deep tree"])


# -- break 1: one bad entry never silences a watch --------------------------------------------------


def test_discovery_judges_every_entry_alone(mixed) -> None:
    """What the daemon's main process does per entry (scan, then the completion check) never
    raises for a hostile entry: each is a candidate of its own, complete once it settled
    (then the worker's verdict says what is wrong), and the healthy ones are complete."""
    d, good, bad = mixed
    found = discovery.scan("w", str(d)).candidates
    stability = discovery.StabilityTracker(0.0)
    for c in found:
        first = discovery.check_completion(c, 0.0, stability)  # today's main: RecursionError (deep tree)
        done = first if first.complete else discovery.check_completion(c, 1.0, stability)
        assert done.complete, (c.path, done)
        if c.path in good:
            assert done.reason == "", (c.path, done)
    assert {c.path for c in found} == {*good, *bad.values()}  # the FIFO named like a file too


def test_a_completion_check_that_raises_costs_only_its_own_candidate() -> None:
    events: list = []

    def check(c: Candidate, now: float) -> Completion:
        if c.step == 2:
            raise RecursionError("maximum recursion depth exceeded")
        return Completion(True)

    pipeline = Pipeline(check, lambda w, k: False, events.append)
    cands = [Candidate("w", f"/run/ckpt-{s}", "bundle", s, f"/run/ckpt-{s}|1|1") for s in (1, 2, 3)]
    pipeline.rescan("w", cands)
    assert [e.candidate.step for e in events if isinstance(e, Queued)] == [1, 2, 3]


def test_a_deep_tree_costs_bounded_work(tmp_path: Path) -> None:
    root = hostile.deep_saved_model(tmp_path, "export", depth=1100)
    try:
        signature = tree_signature(root)
    finally:
        hostile.remove_tree(root)
    assert ("(truncated)",) in signature  # what was left out is part of the signature
    assert [p[0] for p in signature if len(p) == 4] == ["saved_model.pb"]


# -- break 2: only regular files are opened --------------------------------------------------------


@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_open_regular_refuses_without_blocking(tmp_path: Path, kind: str) -> None:
    from ckptwatch.formats.files import NotRegularFile, check_regular, open_regular

    path = {"fifo": str(tmp_path / "f"), "directory": str(tmp_path), "device": "/dev/zero"}[kind]
    if kind == "fifo":
        os.mkfifo(path)
    t0 = time.monotonic()
    with pytest.raises(NotRegularFile) as e:
        open_regular(path, tensor="w")
    with pytest.raises(NotRegularFile):
        check_regular(path)
    assert time.monotonic() - t0 < 1.0
    assert e.value.problem.check == "integrity.filetype" and e.value.problem.tensor == "w"
    assert "not a regular file" in str(e.value)


def _fifo_cases(tmp_path: Path) -> dict[str, tuple[str, str]]:
    """name -> (the PATH given to verify, what the finding names)."""
    shard = hostile.bundle(tmp_path / "a", "ckpt-1", [(hostile.OBJECT_GRAPH_KEY, _empty_string_entry())], data=None)
    os.mkfifo(shard + ".data-00000-of-00001")
    state = tmp_path / "b"
    hostile.healthy(state, "ckpt-1")
    os.mkfifo(state / "checkpoint")
    index = hostile.healthy(tmp_path / "c", "ckpt-1")
    os.unlink(index + ".index")
    os.mkfifo(index + ".index")
    return {
        "data shard": (shard, "ckpt-1.data-00000-of-00001 is a FIFO"),
        "state file": (str(state), "checkpoint is a FIFO"),
        "index": (index, "ckpt-1.index is a FIFO"),
        "keras file": (_fifo(tmp_path / "m.weights.h5"), "m.weights.h5 is a FIFO"),
    }


def _empty_string_entry() -> bytes:
    """A string tensor entry of 0 bytes at offset 0: what a reader checks is in the file (a
    FIFO has size 0), so only the open itself could block."""
    return hostile._string_entry([], 0, 0, 0)


@pytest.mark.parametrize("case", ["data shard", "state file", "index", "keras file"])
def test_verify_refuses_a_fifo_with_a_finding(run_cli, tmp_path: Path, case: str) -> None:
    path, named = _fifo_cases(tmp_path)[case]
    r = run_cli("verify", path, "--json", timeout=60)  # today's main: hangs in open()
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["verdict"] == "fail"
    found = [f for f in report["findings"] if f["check"] == "integrity.filetype"]
    assert found and named in found[0]["message"], report["findings"]


def test_check_config_refuses_a_fifo(run_cli, tmp_path: Path) -> None:
    config = _fifo(tmp_path / "ckptwatch.toml")
    r = run_cli("check-config", config, timeout=60)
    assert r.returncode == 2
    assert r.stderr.strip() == f"ckptwatch: error: {config}: is a FIFO, not a TOML file"


# -- break 3: small files, bounded work on the main loop ----------------------------------------------


def _bytes_read() -> int:
    with open("/proc/self/io") as f:
        return int(next(line for line in f if line.startswith("rchar:")).split()[1])


def test_the_shard_count_reads_the_header_alone(tmp_path: Path) -> None:
    """The main process reads an index's footer, index block and first data block, not all of
    it: a 24 MB index costs a few KB (today's main read and checked every block)."""
    entry = bundle_entry([4], 0, 16, 0)
    entries = [(b"", HEADER)] + [(f"t{k:07d}".encode() + b"x" * 200, entry) for k in range(100_000)]
    prefix = str(tmp_path / "ckpt-1")
    hostile.multi_block_index(prefix + ".index", entries, per_block=64)
    assert os.path.getsize(prefix + ".index") > 20 << 20
    before = _bytes_read()
    assert layout.bundle_shard_count(prefix) == 1
    assert _bytes_read() - before < 1 << 20


def test_claimed_shards_cost_only_the_files_that_are_there(tmp_path: Path, monkeypatch) -> None:
    prefix = hostile.many_shards(tmp_path, "ckpt-4")  # 65,536 claimed, one present
    stats = []
    real = completion.regular_stat
    monkeypatch.setattr(completion, "regular_stat", lambda p: stats.append(p) or real(p))
    c = discovery.find_candidates("w", str(tmp_path))[0]
    done = discovery.check_completion(c, 0.0, discovery.StabilityTracker(60.0))
    assert not done.complete
    assert done.reason.startswith("data shard ckpt-4.data-00001-of-65536 missing")
    assert len(stats) < 20  # today's main: 65,536 stats on the main loop
    t0 = time.monotonic()
    missing = [p for p in BundleSource(prefix).problems if p.check == "integrity.shard_missing"]
    assert time.monotonic() - t0 < 5.0  # today's main: ~8 s (shards x tensors)
    assert len(missing) == 9 and "65535 of 65536 data shards are missing" in missing[-1].message


def test_a_claimed_string_count_is_checked_against_the_bytes(tmp_path: Path) -> None:
    prefix = hostile.string_count(tmp_path, "ckpt-8", 1 << 26)  # 67M strings claimed in 32 MB
    source = BundleSource(prefix)
    t0 = time.monotonic()
    with pytest.raises(IntegrityError, match="claims more strings than the entry's 33554432 bytes") as e:
        source.read_string_bytes("names")
    assert time.monotonic() - t0 < 2.0  # today's main: 9-18 s of Python loop
    assert e.value.problem.tensor == "names"


def test_string_lengths_decode_like_protobuf() -> None:
    from ckptwatch.formats.bundle import string_lengths

    values = [b"", b"a", b"x" * 127, b"y" * 128, b"z" * 300, b"w" * 20000]
    raw, _ = hostile.string_tensor(values)
    lengths, end = string_lengths(raw, len(values))
    assert lengths.tolist() == [len(v) for v in values]
    assert end == len(b"".join(varint(len(v)) for v in values))
    many = [b"ab"] * 1_000_000  # a million strings: vectorised, not a Python loop
    raw, _ = hostile.string_tensor(many)
    t0 = time.monotonic()
    assert string_lengths(raw, len(many))[0].sum() == 2_000_000
    assert time.monotonic() - t0 < 1.0


def test_a_string_tensor_with_many_elements_verifies(tmp_path: Path) -> None:
    values = [f"vocab-{i}".encode() for i in range(200_000)]
    body, crc = hostile.string_tensor(values)
    entries = [(b"vocab", hostile._string_entry([len(values)], 0, len(body), crc))]
    prefix = hostile.bundle(tmp_path, "ckpt-1", entries, data=body)
    assert BundleSource(prefix).read_string_bytes("vocab") == body


# -- break 9: corrupt means fail -----------------------------------------------------------------------


def test_an_overflowing_shape_is_a_fail_when_fingerprinted(run_cli, tmp_path: Path) -> None:
    """The daemon always fingerprints: the sketch of a shape past 2**63 raised OverflowError
    (CLI "internal error", daemon verdict `error`)."""
    prefix = hostile.overflowing_shape(tmp_path, "ckpt-1")
    r = run_cli("verify", prefix, "--write-fingerprint", tmp_path / "fp.json", "--json")
    assert r.returncode == 1, r.stderr
    report = json.loads(r.stdout)
    assert report["verdict"] == "fail"
    assert [(f["check"], f["tensor"]) for f in report["findings"]] == [("integrity.index", "w")]
    assert "needs more bytes than the file holds" in report["findings"][0]["message"]


def test_deeply_nested_json_in_a_keras_config_is_a_fail(run_cli, tmp_path: Path) -> None:
    import h5py

    weights = tmp_path / "w.h5"
    with h5py.File(weights, "w") as f:
        f["layers/dense/vars/0"] = np.ones(3, dtype=np.float32)
    path = tmp_path / "deep.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", hostile.deep_json(100_000))
        zf.writestr("metadata.json", "{}")
        zf.write(weights, "model.weights.h5")
    r = run_cli("verify", path, "--json")
    assert r.returncode == 1, r.stderr  # today's main: exit 2, "internal error: RecursionError"
    fails = [f for f in json.loads(r.stdout)["findings"] if f["severity"] == "fail"]
    assert [f["check"] for f in fails] == ["integrity.zip"]
    assert "config.json: JSON nested too deeply" in fails[0]["message"]


class _Raising(ArraySource):
    def __init__(self, error: BaseException):
        super().__init__({"dense/kernel": np.ones(8, np.float32), "dense/bias": np.zeros(2, np.float32)})
        self.error = error

    def read(self, name, chunk_elements=1 << 20):
        if name == "dense/kernel":
            yield np.ones(4, np.float32)
            raise self.error
        yield from super().read(name, chunk_elements)


@pytest.mark.parametrize(
    "error",
    [
        TypeError("unhashable"),
        ValueError("bad"),
        IndexError("index 7 is out of bounds"),
        OverflowError("Python int too large to convert to C long"),
        RecursionError("maximum recursion depth exceeded"),
        zlib.error("Error -3 while decompressing data"),
        UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_a_decoding_error_while_reading_a_candidate_is_a_fail(error: BaseException) -> None:
    report, _ = Engine().run(_Raising(error))
    assert report.verdict == "fail"
    (bad,) = [f for f in report.findings if f.severity == "fail"]
    assert (bad.check, bad.tensor) == ("integrity.format", "dense/kernel")
    assert "dense/kernel cannot be decoded" in bad.message


def test_a_decoding_error_while_opening_a_candidate_is_a_fail(tmp_path: Path, monkeypatch) -> None:
    import ckptwatch.verify.engine as engine

    def broken(path):
        raise IndexError("list index out of range")

    monkeypatch.setattr(engine, "open_checkpoint", broken)
    hostile.healthy(tmp_path, "ckpt-1")
    report, prints = verify_paths(str(tmp_path / "ckpt-1"))
    assert report.verdict == "fail" and prints == []
    assert [f.check for f in report.findings] == ["integrity.format"]
    with pytest.raises(CheckpointUnreadable, match=r"previous reference .*: unreadable"):
        open_reference(str(tmp_path / "ckpt-1"), "previous")


# -- break 11: fingerprints as input ------------------------------------------------------------------


def _fingerprint(run_cli, tmp_path: Path) -> tuple[str, Path]:
    prefix = hostile.healthy(tmp_path / "src", "ckpt-1")
    fp = tmp_path / "fp.json"
    assert run_cli("fingerprint", prefix, "-o", fp).returncode == 0
    return prefix, fp


def test_a_fingerprint_given_as_path_is_one_line(run_cli, tmp_path: Path) -> None:
    _, fp = _fingerprint(run_cli, tmp_path)
    r = run_cli("verify", fp)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "is a fingerprint" in r.stderr and "internal error" not in r.stderr


@pytest.mark.parametrize("damage", ["early", "late", "deep"])
def test_a_corrupt_fingerprint_as_reference_is_one_clear_line(run_cli, tmp_path: Path, damage: str) -> None:
    prefix, fp = _fingerprint(run_cli, tmp_path)
    bad = tmp_path / "bad.json.gz"
    if damage == "deep":
        doc = b'{"schema":"ckptwatch.fingerprint/v1","tensors":' + hostile.deep_json(100_000) + b"}"
        bad.write_bytes(zlib.compress(doc, wbits=31))
    else:
        doc = fp.read_bytes() + b" " * (20_000 if damage == "late" else 0)
        gz = bytearray(zlib.compress(doc, level=0 if damage == "late" else 9, wbits=31))
        at = len(gz) - 40 if damage == "late" else 30
        gz[at : at + 8] = bytes(b ^ 0x5A for b in gz[at : at + 8])
        bad.write_bytes(bytes(gz))
    r = run_cli("verify", prefix, "--previous", bad)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip()
    assert "\n" not in line and line.startswith(f"ckptwatch: error: previous reference {bad}: unreadable")
    assert "internal error" not in line and "Traceback" not in r.stderr


# -- break 5: bombs that lie about their size -------------------------------------------------------


PEAK_RSS = """
import json, sys
from ckptwatch.verify.engine import verify_paths
from ckptwatch.errors import CkptwatchError
try:
    report, _ = verify_paths(sys.argv[1], sys.argv[2] or None)
    outcome = [report.verdict, [(f.check, f.message) for f in report.findings]]
except CkptwatchError as e:
    outcome = ["error", str(e)]
# VmHWM: this interpreter's own peak (ru_maxrss would carry the forking pytest's over exec)
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"outcome": outcome, "rss_mb": peak >> 10}))
"""
BOMB_BYTES = 1 << 27  # inflates to 128 MiB; today's main peaks past 2x that (1.1 GB for 512 MiB)
RSS_LIMIT_MB = 200


def _peak(run_python, candidate: str, previous: str = "") -> dict:
    r = run_python(PEAK_RSS, candidate, previous, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bombs")
    methods = {"bzip2": zipfile.ZIP_BZIP2, "lzma": zipfile.ZIP_LZMA, "deflate": zipfile.ZIP_DEFLATED}
    out = {name: hostile.keras_bomb(d / f"{name}.keras", method, BOMB_BYTES) for name, method in methods.items()}
    out["gzip"] = hostile.gzip_bomb(d / "fp.json.gz", BOMB_BYTES)
    return out


@pytest.mark.parametrize("method", ["bzip2", "lzma", "deflate"])
def test_a_keras_member_that_lies_about_its_size(run_python, bombs, method: str) -> None:
    assert os.path.getsize(bombs[method]) < 1 << 20
    result = _peak(run_python, bombs[method])
    assert result["rss_mb"] < RSS_LIMIT_MB, result
    verdict, findings = result["outcome"]
    assert verdict == "fail"
    assert any(c == "integrity.zip" and "decompression bomb" in m for c, m in findings), findings


def test_a_gzip_fingerprint_bomb(run_python, bombs, tmp_path: Path) -> None:
    prefix = hostile.healthy(tmp_path, "ckpt-1")
    result = _peak(run_python, prefix, bombs["gzip"])
    assert result["rss_mb"] < RSS_LIMIT_MB, result
    verdict, message = result["outcome"]
    assert verdict == "error" and "decompression bomb" in message, result


@pytest.mark.parametrize("checksums", ["valid", "wrong"])
def test_a_reference_whose_tensors_overlap_costs_what_it_holds(run_python, tmp_path: Path, checksums: str) -> None:
    """The runs against a reference (Engine._batch) group the candidate's tensors by the sizes
    the candidate claims; a candidate that claims 0 bytes for tensors its previous checkpoint
    holds whole put them all in one group, and the reference's tensors of a group are all
    read into one arena. A previous checkpoint whose 1,200 entries all name the same 256 KiB
    would hold 300 MB there from a file of 256 KiB; so would one whose tensors' checksums are
    wrong (each run read, then left to `read`, its room in the arena never given back)."""
    n, elements = 1200, 1 << 16
    data = np.arange(elements, dtype="<f4").tobytes()
    names = [f"w{i:04d}".encode() for i in range(n)]
    crc = crc32c.crc32c(data) ^ (checksums == "wrong")
    previous = hostile.bundle(
        tmp_path / "previous", "ckpt-1", [(k, bundle_entry([elements], 0, len(data), crc)) for k in names], data=data
    )
    candidate = hostile.bundle(
        tmp_path / "candidate", "ckpt-2", [(k, bundle_entry([elements], 0, 0, crc)) for k in names], data=data
    )
    result = _peak(run_python, candidate, previous)
    assert result["rss_mb"] < RSS_LIMIT_MB, result
    verdict, findings = result["outcome"]
    assert verdict == "fail" and any(c.startswith("integrity.") for c, _ in findings), findings


@pytest.mark.parametrize("length", [96 << 10, 256 << 10])
def test_long_names_are_not_kept_from_one_checkpoint_to_the_next(tmp_path: Path, length: int) -> None:
    """A worker verifies checkpoint after checkpoint: what it remembers per tensor name (kind,
    display, group) must not keep a hostile file's names, whatever their length, once it is done.
    Forty checkpoints of four 256 KB names each kept 40 MB there (a count of names bounded, not
    their bytes)."""
    import gc
    import tracemalloc

    def one(k: int) -> None:
        entries = [
            (f"{k:03d}{j}/".encode() + b"n" * length, bundle_entry([4], 16 * j, 16, crc32c.crc32c(hostile.VALUES)))
            for j in range(4)
        ]
        prefix = hostile.bundle(tmp_path / f"c{k}", "ckpt-1", entries, data=hostile.VALUES * 4)
        report, _ = verify_paths(prefix, previous=prefix)
        assert [f.check for f in report.findings] == ["drift.unchanged"]  # read, compared, judged
        hostile.remove_tree(tmp_path / f"c{k}")

    one(0)  # warmed up: kernels compiled, modules loaded
    tracemalloc.start()
    try:
        one(1)
        gc.collect()
        before = tracemalloc.get_traced_memory()[0]
        for k in range(2, 42):
            one(k)
        gc.collect()
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 12 << 20, f"{grown >> 20} MB kept after 40 checkpoints"


@pytest.mark.parametrize("method", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA])
def test_member_chunks_reads_honest_members_and_refuses_damage(tmp_path: Path, method: int) -> None:
    from ckptwatch.formats.zipmember import MemberError, member_chunks

    payload = np.random.default_rng(0).integers(0, 4, 3 << 20, dtype=np.uint8).tobytes()
    path = tmp_path / "a.zip"
    with zipfile.ZipFile(path, "w", compression=method) as zf:
        zf.writestr("m", payload)
    with open(path, "rb") as fp, zipfile.ZipFile(fp) as zf:
        info = zf.getinfo("m")
        pieces = list(member_chunks(fp, info, 1 << 30, chunk=1 << 20))
        assert b"".join(pieces) == payload and max(map(len, pieces)) <= 1 << 20
        with pytest.raises(MemberError, match="limit"):
            list(member_chunks(fp, info, 1 << 20))
    data = bytearray(path.read_bytes())
    data[200] ^= 0xFF  # inside the member's data
    path.write_bytes(bytes(data))
    with open(path, "rb") as fp, zipfile.ZipFile(fp) as zf, pytest.raises(MemberError):
        list(member_chunks(fp, zf.getinfo("m"), 1 << 30))


# -- break 7 (CLI): the reading child has a time limit ------------------------------------------------


def _big_bundle(directory: Path) -> str:
    """48 tensors of 4 MB each: long enough to read that a test can stop the reader mid-way."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    data, entries = bytearray(), []
    for i in range(48):
        values = rng.standard_normal(1 << 20, dtype=np.float32).tobytes()
        entries.append((f"w{i:02d}".encode(), bundle_entry([1 << 20], len(data), len(values), crc32c.crc32c(values))))
        data += values
    return hostile.bundle(directory, "ckpt-1", entries, data=bytes(data))


@pytest.mark.parametrize("command", ["verify", "fingerprint", "diff"])
def test_a_hung_reader_is_an_error_naming_the_tensor(tmp_path: Path, command: str) -> None:
    """The reading child stops (SIGSTOP: a reader stuck in native code) while it reads a
    tensor: past --timeout the CLI kills it and answers `error`, exit 2, naming the tensor.
    `diff` reads two checkpoints under the same limit (today's main: no child, no limit)."""
    import psutil

    prefix = _big_bundle(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("CKPTWATCH_CHILD", "CKPTWATCH_NO_ISOLATION")}
    extra = {
        "verify": ["--json"],
        "fingerprint": ["-o", str(tmp_path / "fp.json")],
        "diff": [_big_bundle(tmp_path / "b"), "--json"],
    }[command]
    args = [sys.executable, "-m", "ckptwatch", command, prefix, "--threads", "1", "--timeout", "10", *extra]
    t0 = time.monotonic()
    parent = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)

    child = wait_until(lambda: child_reading_a_shard(parent.pid), 20, "the child reading a shard", interval=0.002)
    child.send_signal(signal.SIGSTOP)
    out, err = parent.communicate(timeout=60)
    assert parent.returncode == 2, err
    assert time.monotonic() - t0 < 40
    assert err.strip().startswith(f"ckptwatch: error: {prefix}: timed out after 10 s while reading w")
    if command == "diff":  # no verdict to give: the one line, and with --json the error object
        assert err.count("\n") == 1, err
        assert json.loads(out) == {"schema": "ckptwatch.error/v1", "error": err.strip().split(": ", 2)[2], "exit": 2}
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
        return
    if command == "fingerprint":
        assert "ERROR" in out and "integrity.timeout" in out and not (tmp_path / "fp.json").exists()
        return
    report = json.loads(out)
    assert report["verdict"] == "error"
    (finding,) = report["findings"]
    assert finding["check"] == "integrity.timeout" and finding["tensor"].startswith("w"), finding
    assert f"timed out after 10 s while reading {finding['tensor']}" == finding["message"]
    assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE


CHILD = """
import os, sys, time
out = os.fdopen(int(os.environ["CKPTWATCH_PROGRESS_FD"]), "w", buffering=1)
for line in sys.argv[1:]:
    out.write(line.replace("PHASE:", "\\x1e") + "\\n")
time.sleep(60)
"""


@pytest.mark.parametrize(
    ("lines", "phase", "tensor"),
    [
        ([], "opening the checkpoint", None),
        (["a", "b"], "reading b", "b"),
        (["a", "PHASE:running the model checks"], "running the model checks", None),
    ],
)
def test_the_time_limit_names_the_phase(capfd, lines: list[str], phase: str, tensor: str | None) -> None:
    from ckptwatch import isolate

    t0 = time.monotonic()
    code = isolate._supervise([sys.executable, "-c", CHILD, *lines], "ckpt-1", True, 1, 2.0)
    assert code == 2 and time.monotonic() - t0 < 20
    out, err = capfd.readouterr()
    report = json.loads(out)
    assert report["verdict"] == "error"
    assert report["findings"] == [
        {
            "severity": "fail",
            "check": "integrity.timeout",
            "message": f"timed out after 2 s while {phase}",
            "tensor": tensor,
            "reference": None,
            **({"display_name": tensor} if tensor else {}),  # beside the key, when there is one (issue 15)
        }
    ]
    hint = "(--timeout or CKPTWATCH_TIMEOUT raises the limit)"
    assert err == f"ckptwatch: error: ckpt-1: timed out after 2 s while {phase} {hint}\n"


def test_the_time_limit_option_and_environment(monkeypatch) -> None:
    from ckptwatch import isolate
    from ckptwatch.errors import UsageError

    monkeypatch.delenv("CKPTWATCH_TIMEOUT", raising=False)
    assert isolate.time_limit(None) == isolate.DEFAULT_TIMEOUT == 3600
    assert isolate.time_limit(5) == 5 and isolate.time_limit(0) is None
    monkeypatch.setenv("CKPTWATCH_TIMEOUT", "12.5")
    assert isolate.time_limit(None) == 12.5 and isolate.time_limit(7) == 7
    monkeypatch.setenv("CKPTWATCH_TIMEOUT", "soon")
    with pytest.raises(UsageError, match="CKPTWATCH_TIMEOUT='soon': not a number of seconds"):
        isolate.time_limit(None)


# -- legacy .h5 attributes that lie about their size (fuzz campaign, bench/README.md) ---------------


def _legacy_h5(path: Path) -> str:
    """A legacy Keras 2 `.h5` layout as h5py writes it: `layer_names` / `weight_names` as
    variable-length strings (in a global heap collection), a kernel under each layer group."""
    import h5py

    with h5py.File(path, "w") as f:
        weights = f.create_group("model_weights")
        weights.attrs["layer_names"] = ["dense"]
        layer = weights.create_group("dense")
        layer.attrs["weight_names"] = ["dense/kernel:0"]
        layer.create_group("dense").create_dataset("kernel:0", data=np.ones((4, 3), dtype=np.float32))
    return str(path)


def _vlen_ref(data: bytes, text: bytes) -> int:
    """Offset of the (length, heap collection, index) triple of the vlen string `text`."""
    gcol = data.index(b"GCOL")
    at = data.index(struct.pack("<IQ", len(text), gcol))
    assert data.find(struct.pack("<IQ", len(text), gcol), at + 1) < 0
    return at


def _lie(path: str, how: str) -> None:
    data = bytearray(Path(path).read_bytes())
    if how == "vlen length":  # libhdf5 allocated and zero-filled 4 GB before finding the object smaller
        data[_vlen_ref(data, b"dense") : _vlen_ref(data, b"dense") + 4] = b"\xff\xff\xff\xff"
    elif how == "heap free space of size 0":  # libhdf5's walk of the collection loops forever
        gcol = data.index(b"GCOL")
        size = struct.unpack_from("<Q", data, gcol + 8)[0]
        p = 16
        while struct.unpack_from("<H", data, gcol + p)[0] != 0:
            p += 16 + ((struct.unpack_from("<Q", data, gcol + p + 8)[0] + 7) & ~7)
        assert p + 16 <= size
        struct.pack_into("<Q", data, gcol + p + 8, 0)
    elif how == "unknown vlen kind":  # SIGSEGV inside libhdf5
        at = re.search(rb"\x19\x01[\x00\x01]\x00\x10\x00\x00\x00", data)  # vlen v1, string, 16 bytes
        assert at is not None
        data[at.start() + 1] = 0x7F
    Path(path).write_bytes(bytes(data))


@pytest.mark.parametrize("how", ["vlen length", "heap free space of size 0", "unknown vlen kind"])
def test_legacy_h5_attributes_that_lie_are_refused_before_libhdf5_reads_them(run_python, tmp_path, how):
    """Found by the fuzz campaign: a 23 KB legacy .h5 with one field changed made the reader peak
    at 0.7-4.2 GB, hang, or die by SIGSEGV (today's main). Now `fail` with integrity.h5."""
    healthy = _legacy_h5(tmp_path / "ok.h5")
    assert _peak(run_python, healthy)["outcome"][0] == "pass"
    path = _legacy_h5(tmp_path / "m.h5")
    _lie(path, how)
    r = run_python(PEAK_RSS, path, "", timeout=60)  # today's main: hangs here
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    result = json.loads(r.stdout.strip().splitlines()[-1])
    assert result["rss_mb"] < 400, result
    verdict, findings = result["outcome"]
    assert verdict == "fail", result
    assert any(c == "integrity.h5" and "attribute" in m for c, m in findings), findings
