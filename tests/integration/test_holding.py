"""Holding a committed checkpoint's files (ckptwatch.daemon.holding) and reading a candidate
through them (ckptwatch.formats.held, verify_checkpoint with `held`): real TF files, real
descriptors, real deletions."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ckptwatch.daemon.discovery import find_candidates
from ckptwatch.daemon.holding import Holder
from ckptwatch.formats.held import candidate_files, stand_in
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.verify.verification import verify_checkpoint
from ckptwatch.worker.protocol import Job, ProtocolError, decode_job, encode


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def bundle(tf, directory: Path, name: str = "ckpt-1", seed: int = 0) -> str:
    v = tf.Variable(tf.random.stateless_normal([16, 8], seed=[seed, 0]))
    return tf.train.Checkpoint(v=v).write(str(directory / name))


def only(directory: Path):
    (c,) = find_candidates("run", str(directory))
    return c


def test_a_held_bundle_deleted_is_verified_through_its_descriptors(tf, tmp_path):
    prefix = bundle(tf, tmp_path)
    c = only(tmp_path)
    before = open_fds()
    held = Holder().hold(c)
    assert held is not None and sorted(held.fds) == ["ckpt-1.data-00000-of-00001", "ckpt-1.index"]
    for name in held.fds:
        os.unlink(tmp_path / name)  # CheckpointManager(max_to_keep) deletes it
    request = VerifyRequest(prefix, held=held.stand_ins(), discovered=True)
    report = verify_checkpoint(request).report
    assert report.verdict == "pass", report.findings
    assert report.checkpoint["path"] == prefix and report.checkpoint["tensors"] >= 1
    held.close()
    assert open_fds() == before


def test_without_held_files_the_deleted_candidate_is_vanished(tf, tmp_path):
    from ckptwatch.errors import CheckpointVanished

    prefix = bundle(tf, tmp_path)
    for f in tmp_path.iterdir():
        f.unlink()
    with pytest.raises(CheckpointVanished):
        verify_checkpoint(VerifyRequest(prefix, discovered=True))


def test_a_candidate_changed_or_gone_since_its_key_is_not_held(tf, tmp_path):
    bundle(tf, tmp_path)
    c = only(tmp_path)
    os.utime(tmp_path / "ckpt-1.index", ns=(1, 1))  # rewritten since it was found
    assert Holder().hold(c) is None
    c = only(tmp_path)
    for f in tmp_path.iterdir():
        f.unlink()
    assert Holder().hold(c) is None


def test_links_fifos_and_the_cap_are_not_held(tf, tmp_path):
    bundle(tf, tmp_path)
    other = tmp_path / "elsewhere"
    other.mkdir()
    shard = tmp_path / "ckpt-1.data-00000-of-00001"
    shutil.move(shard, other / shard.name)
    shard.symlink_to(other / shard.name)  # a linked shard: read by its path, not held
    os.mkfifo(tmp_path / "ckpt-1.data-00001-of-00002")  # never opened (it would block)
    c = only(tmp_path)
    held = Holder().hold(c)
    assert held is not None
    assert list(held.fds) == ["ckpt-1.index"]
    assert sorted(held.unheld) == ["ckpt-1.data-00000-of-00001", "ckpt-1.data-00001-of-00002"]
    assert held.stand_ins()["ckpt-1.data-00000-of-00001"] is None
    held.close()
    assert Holder(max_fds=2).hold(c) is None  # three files would pass the cap


def test_a_saved_model_and_a_single_file(tf, tmp_path, saved_model):
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(saved_model.path, run / "3")
    (c,) = find_candidates("run", str(run))
    names = candidate_files(c.kind, c.path)
    assert "3/saved_model.pb" in names and "3/variables/variables.index" in names
    held = Holder().hold(c)
    assert held is not None and sorted(held.fds) == names
    shutil.rmtree(run / "3")
    report = verify_checkpoint(VerifyRequest(c.path, held=held.stand_ins(), discovered=True)).report
    held.close()
    assert report.verdict == "pass", report.findings
    assert report.checkpoint["path"].startswith(c.path)


def test_stand_in_refuses_names_that_leave_its_directory(tmp_path):
    for bad in ("../x.index", "/etc/passwd", "a/../../b"):
        with pytest.raises(ValueError):
            stand_in(str(tmp_path / "root"), "/w/ckpt-1", {bad: None})


def test_held_travels_in_the_job():
    request = VerifyRequest("/w/ckpt-1", held={"ckpt-1.index": "/proc/1/fd/9", "ckpt-1.data-00000-of-00001": None})
    assert decode_job(encode(Job("j1", request))).request == request
    bad = encode(Job("j1", request)).replace(b'"/proc/1/fd/9"', b"9")
    with pytest.raises(ProtocolError):
        decode_job(bad)
