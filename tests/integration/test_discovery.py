"""ckptwatch.daemon.discovery against checkpoints written by real TensorFlow / Keras writers.

Candidates: CheckpointManager, TF1 Saver, Checkpoint.write, Keras files, temp artefacts,
include/exclude, step order, keys. Completion: every intermediate state of a TF2 bundle
save rebuilt by hand from real TF files, TF1 Saver states, settled corruption, HDF5
rewritten in place, and a real race against a TF process saving as fast as it can.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.daemon.discovery import (
    BUNDLE,
    HDF5,
    KERAS,
    SAVEDMODEL,
    StabilityTracker,
    check_completion,
    current_key,
    exports_in_progress,
    find_candidates,
)
from ckptwatch.daemon.model import Candidate, Completion

ROOT = Path(__file__).resolve().parents[2]
NEVER = 3600.0  # settle_seconds that never elapse within a test


def names(cands: list[Candidate]) -> list[str]:
    return [os.path.basename(c.path) for c in cands]


def check(c: Candidate, now: float, stability: StabilityTracker) -> tuple[bool, str]:
    r = check_completion(c, now, stability)
    assert isinstance(r, Completion)
    return r.complete, r.reason


def complete(c: Candidate, now: float = 0.0, settle: float = NEVER) -> tuple[bool, str]:
    return check(c, now, StabilityTracker(settle))


# -- writers ---------------------------------------------------------------------------------


class _Small:
    """A tf.Module with a few variables (built lazily: needs the tf fixture)."""

    @staticmethod
    def make(tf, seed: int = 0, rows: int = 40):
        class Small(tf.Module):
            def __init__(self):
                super().__init__()
                self.kernel = tf.Variable(tf.random.stateless_normal([rows, 8], seed=[seed, 0]))
                self.bias = tf.Variable(tf.random.stateless_normal([8], seed=[seed, 1]))

        return Small()


@pytest.fixture(scope="module")
def tf2_files(tf, tmp_path_factory) -> Path:
    """A real single-shard TF2 bundle (`src/ckpt-5.index`, `src/ckpt-5.data-00000-of-00001`)."""
    src = tmp_path_factory.mktemp("tf2_src")
    tf.train.Checkpoint(m=_Small.make(tf, rows=2000)).write(str(src / "ckpt-5"))
    return src


def tf1_saver(tf, directory: Path, steps: list[int], sharded: bool = False) -> list[str]:
    graph = tf.Graph()
    with graph.as_default():
        w = tf.compat.v1.get_variable("w", [30, 4])
        b = tf.compat.v1.get_variable("b", [4])
        saver = tf.compat.v1.train.Saver([w, b], max_to_keep=None, sharded=sharded)
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return [saver.save(sess, str(directory / "model.ckpt"), global_step=s) for s in steps]


# -- candidates ------------------------------------------------------------------------------


def test_checkpoint_manager_directory(tf, tmp_path):
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(m=_Small.make(tf)), str(tmp_path), max_to_keep=5)
    saved = [mgr.save() for _ in range(3)]
    cands = find_candidates("run", str(tmp_path))
    assert [c.path for c in cands] == saved  # absolute prefixes, in step order
    assert [(c.watch, c.kind, c.step) for c in cands] == [("run", BUNDLE, 1), ("run", BUNDLE, 2), ("run", BUNDLE, 3)]
    assert (tmp_path / "checkpoint").is_file()  # the state file is not a candidate
    for c in cands:
        st = os.stat(c.path + ".index")
        assert c.key == f"{c.path}|{st.st_mtime_ns}|{st.st_size}"
        assert complete(c) == (True, "")


def test_tf1_saver_prefixes_sort_by_step_not_name(tf, tmp_path):
    saved = tf1_saver(tf, tmp_path, [200, 10, 30])
    (tmp_path / "sharded").mkdir()
    saved += tf1_saver(tf, tmp_path / "sharded", [7], sharded=True)  # a subdirectory: not scanned
    assert sorted(p.name for p in tmp_path.glob("*.meta")) == [f"model.ckpt-{s}.meta" for s in (10, 200, 30)]
    cands = find_candidates("tf1", str(tmp_path))
    assert names(cands) == ["model.ckpt-10", "model.ckpt-30", "model.ckpt-200"]
    assert [c.step for c in cands] == [10, 30, 200]
    assert all(complete(c)[0] for c in cands)
    (sharded,) = find_candidates("tf1", str(tmp_path / "sharded"))
    assert sharded.path == saved[-1] and complete(sharded)[0]


def test_checkpoint_write_without_manager(tf, tmp_path):
    ckpt = tf.train.Checkpoint(m=_Small.make(tf))
    ckpt.write(str(tmp_path / "weights"))
    ckpt.write(str(tmp_path / "ckpt-12"))
    ckpt.write(str(tmp_path / "ckpt-3"))
    assert not (tmp_path / "checkpoint").exists()
    cands = find_candidates("w", str(tmp_path))
    assert names(cands) == ["weights", "ckpt-3", "ckpt-12"]  # no step sorts first
    assert [c.step for c in cands] == [None, 3, 12]
    assert all(complete(c)[0] for c in cands)


def test_keras_files(keras, tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 2)).astype("float32")
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3), keras.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    every_epoch = keras.callbacks.ModelCheckpoint(
        str(tmp_path / "weights.{epoch:02d}.weights.h5"), save_weights_only=True
    )
    model.fit(x, y, epochs=3, verbose=0, callbacks=[every_epoch])
    model.save(str(tmp_path / "model.keras"))
    model.save(str(tmp_path / "legacy.h5"))  # Keras 2 style HDF5
    shutil.copy(tmp_path / "legacy.h5", tmp_path / "old-7.hdf5")
    cands = find_candidates("k", str(tmp_path))
    by_name = {os.path.basename(c.path): c for c in cands}
    assert set(by_name) == {
        "weights.01.weights.h5", "weights.02.weights.h5", "weights.03.weights.h5",
        "model.keras", "legacy.h5", "old-7.hdf5",
    }  # fmt: skip
    assert by_name["model.keras"].kind == KERAS
    assert {by_name[n].kind for n in by_name if n != "model.keras"} == {HDF5}
    assert [by_name[f"weights.0{e}.weights.h5"].step for e in (1, 2, 3)] == [1, 2, 3]
    assert by_name["old-7.hdf5"].step == 7 and by_name["model.keras"].step is None
    steps = [c.sort_key for c in cands]
    assert steps == sorted(steps)


def test_temp_artefacts_and_oddities_are_ignored(tf2_files, tmp_path):
    index, data = tf2_files / "ckpt-5.index", tf2_files / "ckpt-5.data-00000-of-00001"
    shutil.copy(index, tmp_path / "ckpt-1.index")
    shutil.copy(data, tmp_path / "ckpt-1.data-00000-of-00001")
    (tmp_path / "ckpt-2_temp").mkdir()  # a TF2 save in progress
    shutil.copy(data, tmp_path / "ckpt-2_temp" / "part-00000-of-00001.data-00000-of-00001.tempstate123")
    shutil.copy(data, tmp_path / "ckpt-3.data-00000-of-00001")  # shards renamed, index not yet
    shutil.copy(data, tmp_path / "model.ckpt-4.data-00000-of-00001.tempstate77")  # TF1 Saver
    shutil.copy(index, tmp_path / "model.ckpt-4.index.tempstate78")
    for junk in ("checkpoint.tmp5f3e2a", "model.ckpt-4.meta.tmp9a8b", "w.weights.h5.tmp", "x.h5.partial",
                 "y.h5.tmp", ".hidden.weights.h5", ".ckpt-9.index", "notes.txt", "checkpoint"):  # fmt: skip
        (tmp_path / junk).write_bytes(b"x")
    (tmp_path / "sub").mkdir()  # not recursive
    shutil.copy(index, tmp_path / "sub" / "ckpt-8.index")
    (tmp_path / "dir.h5").mkdir()  # a directory is not a file
    (tmp_path / "ckpt-6.index").symlink_to(tmp_path / "nowhere.index")  # vanished / dangling
    assert names(find_candidates("w", str(tmp_path))) == ["ckpt-1"]


def test_symlink_loops_are_skipped_not_raised(tf2_files, saved_model_src, tmp_path):
    """A symlink loop stands in for what cannot be stat'ed (as root, nothing is unsearchable)."""
    shutil.copy(tf2_files / "ckpt-5.data-00000-of-00001", tmp_path / "ckpt-5.data-00000-of-00001")
    shutil.copy(tf2_files / "ckpt-5.index", tmp_path / "ckpt-5.index")  # the index last, as TF writes
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    (tmp_path / "ckpt-7.index").symlink_to(tmp_path / "ckpt-7.index")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "saved_model.pb").symlink_to(tmp_path / "sub" / "saved_model.pb")
    (tmp_path / "sub" / "variables").mkdir()
    shutil.copytree(saved_model_src, tmp_path / "3")
    (tmp_path / "3" / "variables" / "variables.data-00000-of-00001").unlink()
    (tmp_path / "3" / "variables" / "variables.data-00000-of-00001").symlink_to(
        tmp_path / "3" / "variables" / "variables.data-00000-of-00001"
    )
    cands = find_candidates("w", str(tmp_path))
    assert names(cands) == ["3", "ckpt-5"]
    assert complete(cands[0]) == (False, "data shard variables.data-00000-of-00001 missing")
    assert complete(cands[1]) == (True, "")
    assert exports_in_progress(str(tmp_path), time.time()) == [str(tmp_path / "sub")]
    os.unlink(tmp_path / "ckpt-5.index")
    (tmp_path / "ckpt-5.index").symlink_to(tmp_path / "ckpt-5.index")
    assert complete(cands[1]) == (False, "vanished")
    assert current_key(cands[1].path) is None


def test_include_exclude_match_the_base_name(tf2_files, tmp_path):
    for step in (1, 2, 3):
        shutil.copy(tf2_files / "ckpt-5.index", tmp_path / f"ckpt-{step}.index")
    (tmp_path / "ema-4.index").write_bytes((tf2_files / "ckpt-5.index").read_bytes())
    (tmp_path / "w.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    d = str(tmp_path)
    assert names(find_candidates("w", d)) == ["w.weights.h5", "ckpt-1", "ckpt-2", "ckpt-3", "ema-4"]
    assert names(find_candidates("w", d, include=["ckpt-*"])) == ["ckpt-1", "ckpt-2", "ckpt-3"]
    assert names(find_candidates("w", d, include=["ckpt-*"], exclude=["ckpt-2"])) == ["ckpt-1", "ckpt-3"]
    assert names(find_candidates("w", d, include=["*.h5"])) == ["w.weights.h5"]
    assert names(find_candidates("w", d, exclude=["*.h5", "ckpt-[12]"])) == ["ckpt-3", "ema-4"]
    assert names(find_candidates("w", d, include=["ckpt-*.index"])) == []  # bundles match by prefix name
    assert find_candidates("w", d, include=[]) == []


def test_missing_or_odd_directory(tmp_path):
    assert find_candidates("w", str(tmp_path / "not-yet")) == []
    (tmp_path / "file").write_bytes(b"")
    assert find_candidates("w", str(tmp_path / "file")) == []
    assert find_candidates("w", str(tmp_path)) == []


def test_key_changes_when_a_checkpoint_is_rewritten(tf, keras, tmp_path):
    ckpt = tf.train.Checkpoint(m=_Small.make(tf))
    ckpt.write(str(tmp_path / "ckpt-1"))
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.save_weights(str(tmp_path / "w.weights.h5"))
    before = {c.path: c.key for c in find_candidates("w", str(tmp_path))}
    assert find_candidates("w", str(tmp_path)) == find_candidates("w", str(tmp_path))  # stable when unchanged
    time.sleep(0.02)  # beyond the filesystem's timestamp granularity
    ckpt.write(str(tmp_path / "ckpt-1"))
    model.save_weights(str(tmp_path / "w.weights.h5"))
    after = {c.path: c.key for c in find_candidates("w", str(tmp_path))}
    assert before.keys() == after.keys() and len(before) == 2
    assert all(before[p] != after[p] for p in before)


# -- completion: TF2 bundle save, state by state -----------------------------------------------


def test_every_intermediate_state_of_a_tf2_save_is_incomplete(tf2_files, tmp_path):
    """TF2 writes shards as <prefix>_temp/part-*.tempstate*, renames them, renames the data
    into place, writes <prefix>.index in place, then removes <prefix>_temp/ (FIELD-NOTES)."""
    src_index = (tf2_files / "ckpt-5.index").read_bytes()
    src_data = tf2_files / "ckpt-5.data-00000-of-00001"
    d, prefix = tmp_path, str(tmp_path / "ckpt-5")
    temp = d / "ckpt-5_temp"
    part_data = temp / "part-00000-of-00001.data-00000-of-00001"
    part_index = temp / "part-00000-of-00001.index"
    handmade = Candidate("w", prefix, BUNDLE, 5, key="")
    seen: list[tuple[str, str]] = []

    def judge(state: str) -> tuple[bool, str]:
        cands = find_candidates("w", str(d))
        if not (d / "ckpt-5.index").exists():
            assert cands == [], state  # not a candidate yet
            c = handmade
        else:
            (c,) = cands
        result = check(c, 0.0, StabilityTracker(NEVER))
        seen.append((state, result[1]))
        return result

    temp.mkdir()
    shutil.copy(src_data, str(part_data) + ".tempstate8123")
    assert judge("shard written in _temp as .tempstate") == (False, "save in progress: ckpt-5_temp remains")
    os.rename(str(part_data) + ".tempstate8123", part_data)
    (temp / "part-00000-of-00001.index.tempstate99").write_bytes(src_index)
    assert judge("per-shard index as .tempstate")[0] is False
    os.rename(temp / "part-00000-of-00001.index.tempstate99", part_index)
    os.rename(part_data, d / "ckpt-5.data-00000-of-00001")
    assert judge("data renamed into place, no index") == (False, "save in progress: ckpt-5_temp remains")
    (d / "ckpt-5.index").write_bytes(b"")
    assert judge("index just created") == (False, "save in progress: ckpt-5_temp remains")
    (d / "ckpt-5.index").write_bytes(src_index[: len(src_index) // 2])
    assert judge("index half written") == (False, "save in progress: ckpt-5_temp remains")
    (d / "ckpt-5.index").write_bytes(src_index)
    assert judge("index complete, _temp still there") == (False, "save in progress: ckpt-5_temp remains")
    part_index.unlink()
    temp.rmdir()
    assert judge("done") == (True, "")
    assert all(reason for _, reason in seen[:-1]), seen


def test_torn_index_without_temp_dir_is_incomplete_until_settled(tf2_files, tmp_path):
    """An index that does not parse, with no temp dir left: pending while it may still be
    written, then "settled" (complete, so that it gets verified -- and fails)."""
    from ckptwatch.verify.engine import verify_paths

    index = (tf2_files / "ckpt-5.index").read_bytes()
    shutil.copy(tf2_files / "ckpt-5.data-00000-of-00001", tmp_path / "ckpt-5.data-00000-of-00001")
    (tmp_path / "ckpt-5.index").write_bytes(index[: len(index) // 2])
    (c,) = find_candidates("w", str(tmp_path))
    stability = StabilityTracker(0.5)
    first = check(c, 100.0, stability)
    assert not first[0] and first[1].startswith("index does not parse"), first
    assert check(c, 100.4, stability)[0] is False
    # the writer appends more: still not parseable, and the settle clock restarts
    with open(tmp_path / "ckpt-5.index", "ab") as f:
        f.write(index[len(index) // 2 : len(index) * 3 // 4])
    os.utime(tmp_path / "ckpt-5.index", ns=(time.time_ns(), time.time_ns() + 10**9))
    (c,) = find_candidates("w", str(tmp_path))
    assert check(c, 100.6, stability)[0] is False
    assert check(c, 101.0, stability)[0] is False
    assert check(c, 101.2, stability) == (True, "settled")
    report, _ = verify_paths(c.path)
    assert report.verdict == "fail" and report.findings[0].check == "integrity.index"


def test_missing_shard_of_a_multi_shard_bundle(tf, tmp_path):
    from ckptwatch.verify.engine import verify_paths

    policy = tf.train.experimental.MaxShardSizePolicy(max_shard_size=2000 * 8 * 4)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy)
    tf.train.Checkpoint(m=_Small.make(tf, rows=2000), n=_Small.make(tf, 1, rows=2000)).write(
        str(tmp_path / "ckpt-2"), options=options
    )
    shards = sorted(tmp_path.glob("ckpt-2.data-*"))
    assert len(shards) >= 2
    (c,) = find_candidates("w", str(tmp_path))
    assert complete(c) == (True, "")
    shards[1].unlink()
    stability = StabilityTracker(1.0)
    result = check(c, 0.0, stability)
    assert result == (False, f"data shard {shards[1].name} missing"), result
    assert check(c, 0.9, stability)[0] is False
    assert check(c, 1.0, stability) == (True, "settled")
    report, _ = verify_paths(c.path)
    assert report.verdict == "fail" and "integrity.shard_missing" in {f.check for f in report.findings}


def test_vanished_and_changed(tf, tmp_path):
    ckpt = tf.train.Checkpoint(m=_Small.make(tf))
    ckpt.write(str(tmp_path / "ckpt-1"))
    (c,) = find_candidates("w", str(tmp_path))
    time.sleep(0.02)
    ckpt.write(str(tmp_path / "ckpt-1"))  # rewritten since it was found
    assert complete(c) == (False, "changed since it was found")
    (c,) = find_candidates("w", str(tmp_path))
    assert complete(c) == (True, "")
    os.unlink(c.path + ".index")  # CheckpointManager deletes the index first, then the data
    assert complete(c) == (False, "vanished")
    for f in tmp_path.iterdir():
        f.unlink()
    assert complete(c) == (False, "vanished")


def test_tf1_saver_states_and_a_rewrite_of_the_same_prefix(tf, tmp_path):
    """TF1 Saver (not sharded) writes `<prefix>.data-*.tempstate*` and
    `<prefix>.index.tempstate*` next to the checkpoint and renames them. Rewriting an existing
    prefix briefly leaves the old index next to the new data: never complete."""
    (prefix,) = tf1_saver(tf, tmp_path / "src", [5])
    index, data = Path(prefix + ".index"), Path(prefix + ".data-00000-of-00001")
    d = tmp_path / "run"
    d.mkdir()
    new_data = d / data.name
    shutil.copy(data, str(new_data) + ".tempstate42")
    assert find_candidates("w", str(d)) == []
    os.rename(str(new_data) + ".tempstate42", new_data)
    shutil.copy(index, d / (index.name + ".tempstate43"))
    assert find_candidates("w", str(d)) == []
    os.rename(d / (index.name + ".tempstate43"), d / index.name)
    (c,) = find_candidates("w", str(d))
    assert complete(c) == (True, "") and c.step == 5
    t0 = os.stat(d / index.name).st_mtime_ns
    # the same step saved again: new data first (tempstate, then renamed over the old one)
    shutil.copy(data, str(new_data) + ".tempstate44")
    assert complete(c) == (False, f"save in progress: {data.name}.tempstate44 remains")
    os.rename(str(new_data) + ".tempstate44", new_data)
    os.utime(new_data, ns=(t0 + 10**9, t0 + 10**9))
    assert complete(c) == (False, f"data shard {data.name} is newer than the index")
    shutil.copy(index, d / (index.name + ".tempstate45"))
    os.rename(d / (index.name + ".tempstate45"), d / index.name)
    os.utime(d / index.name, ns=(t0 + 2 * 10**9, t0 + 2 * 10**9))
    assert complete(c) == (False, "changed since it was found")
    (c2,) = find_candidates("w", str(d))
    assert c2.key != c.key and complete(c2) == (True, "")


# -- SavedModel directories ----------------------------------------------------------------------


def saved_model(tf, directory: Path, seed: int = 0, rows: int = 40) -> Path:
    """A real SavedModel of a _Small module (variables bundle, saved_model.pb, fingerprint.pb)."""
    tf.saved_model.save(_Small.make(tf, seed, rows), str(directory))
    return directory


@pytest.fixture(scope="module")
def saved_model_src(tf, tmp_path_factory) -> Path:
    return saved_model(tf, tmp_path_factory.mktemp("savedmodel_src") / "export")


def test_saved_model_directories(tf, keras, saved_model_src, tmp_path):
    """Each subdirectory holding a saved_model.pb is one candidate, named and stepped by its
    directory name (TF Serving's export/<version>/ layout); the watch directory itself may be one."""
    run = tmp_path / "export"
    for version in (10, 2):
        saved_model(tf, run / str(version), seed=version)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    model.export(str(run / "keras-7"), verbose=False)  # Keras 3 export: a SavedModel too
    (run / "3").mkdir()  # an export that has not begun: not a candidate (yet)
    (run / "train").mkdir()  # e.g. TensorBoard logs
    (run / "train" / "events.out.tfevents.1").write_bytes(b"x")
    shutil.copytree(saved_model_src, run / ".hidden-4")
    shutil.copytree(saved_model_src, run / "5_temp")
    cands = find_candidates("w", str(run))
    assert [(os.path.basename(c.path), c.kind, c.step) for c in cands] == [
        ("2", SAVEDMODEL, 2), ("keras-7", SAVEDMODEL, 7), ("10", SAVEDMODEL, 10),
    ]  # fmt: skip
    for c in cands:
        st = os.stat(os.path.join(c.path, "saved_model.pb"))
        assert c.key == f"{c.path}|{st.st_mtime_ns}|{st.st_size}" == current_key(c.path)
        assert complete(c) == (True, "")
    assert names(find_candidates("w", str(run), exclude=["keras-*"])) == ["2", "10"]

    (itself,) = find_candidates("w", str(run / "10"))  # the watch directory is the SavedModel
    assert itself.path == str(run / "10") and itself.kind == SAVEDMODEL and complete(itself)[0]
    (versions := tmp_path / "export-2").mkdir()
    shutil.copytree(run / "2", versions / "2", symlinks=False)
    (versions / "2" / "saved_model.pb").unlink()
    assert find_candidates("w", str(versions)) == []  # the variables alone are no candidate


def test_every_intermediate_state_of_a_saved_model_export_is_incomplete(saved_model_src, tmp_path):
    """tf.saved_model.save writes the variables bundle (under variables/, the TF2 way), then
    assets, then saved_model.pb by atomic rename (TF: "the last file operation"), then
    fingerprint.pb. Rebuilt state by state from a real export."""
    d = tmp_path / "export" / "3"
    shutil.copytree(saved_model_src, d)
    variables, pb = d / "variables", d / "saved_model.pb"
    index, data = variables / "variables.index", variables / "variables.data-00000-of-00001"
    pb_bytes, index_bytes = pb.read_bytes(), index.read_bytes()
    watch = str(tmp_path / "export")

    def state() -> tuple[bool, str]:
        (c,) = find_candidates("w", watch)
        assert c.kind == SAVEDMODEL and c.step == 3
        return complete(c)

    assert state() == (True, "")
    pb.rename(d / "saved_model.pb.tempstate5551")  # the atomic write of saved_model.pb, midway
    assert find_candidates("w", watch) == []
    shutil.copy(d / "saved_model.pb.tempstate5551", pb)
    assert state() == (False, "save in progress: saved_model.pb.tempstate5551 remains")
    (d / "saved_model.pb.tempstate5551").unlink()
    (variables / "variables_temp").mkdir()  # a crashed re-export's temp directory
    assert state() == (False, "save in progress: variables/variables_temp remains")
    (variables / "variables_temp").rmdir()
    data.unlink()
    assert state() == (False, "data shard variables.data-00000-of-00001 missing")
    shutil.copy(saved_model_src / data.relative_to(d), data)
    os.utime(data, ns=(pb.stat().st_mtime_ns,) * 2)  # not newer than the index (however slow this test runs)
    index.unlink()
    assert state() == (False, "variables/variables.index missing")
    index.write_bytes(index_bytes[:-20])
    os.utime(index, ns=(pb.stat().st_mtime_ns,) * 2)
    assert state()[1].startswith("index does not parse"), state()
    # a re-export into the same directory: new variables first, saved_model.pb still the old one
    index.write_bytes(index_bytes)
    os.utime(index, ns=(pb.stat().st_mtime_ns + 10**9,) * 2)
    assert state() == (False, "variables/variables.index is newer than saved_model.pb")
    (old,) = find_candidates("w", watch)
    tmp = d / "saved_model.pb.tempstate99"
    tmp.write_bytes(pb_bytes)
    os.utime(tmp, ns=(index.stat().st_mtime_ns + 1,) * 2)
    os.replace(tmp, pb)  # ... then the new saved_model.pb
    assert complete(old) == (False, "changed since it was found")
    assert state() == (False, "saved_model.pb may still be written in place (no newer fingerprint.pb)")
    fingerprint = d / "fingerprint.pb"
    tmp = d / "fingerprint.pb.tempstate7"
    tmp.write_bytes(fingerprint.read_bytes())
    os.utime(tmp, ns=(pb.stat().st_mtime_ns,) * 2)
    os.replace(tmp, fingerprint)  # ... then the new fingerprint.pb: TF2's sign of an atomic save
    assert state() == (True, "")
    shutil.rmtree(d)
    assert complete(old) == (False, "vanished")


def test_saved_model_written_in_place_must_settle(saved_model_src, tmp_path):
    """TF1's SavedModelBuilder (Estimator exporters) writes saved_model.pb in place and no
    fingerprint.pb: whole is not enough, the files must stay unchanged for settle_seconds."""
    from ckptwatch.verify.engine import verify_paths

    d = tmp_path / "1700000000"
    shutil.copytree(saved_model_src, d)
    (d / "fingerprint.pb").unlink()
    (c,) = find_candidates("w", str(tmp_path))
    stability = StabilityTracker(1.0)
    in_place = (False, "saved_model.pb may still be written in place (no newer fingerprint.pb)")
    assert check(c, 0.0, stability) == in_place
    with open(d / "saved_model.pb", "ab") as f:  # still being written: the clock restarts
        f.write(b"\0")
    (c,) = find_candidates("w", str(tmp_path))
    assert check(c, 10.0, stability) == in_place
    assert check(c, 10.5, stability) == in_place
    assert check(c, 11.0, stability) == (True, "")
    # an empty saved_model.pb is pending, then settles and fails verification
    (d / "saved_model.pb").write_bytes(b"")
    (c,) = find_candidates("w", str(tmp_path))
    assert check(c, 20.0, stability) == (False, "saved_model.pb is empty")
    assert check(c, 21.0, stability) == (True, "settled")
    report, _ = verify_paths(c.path)
    assert report.verdict == "fail" and report.findings[0].check == "integrity.savedmodel", report.findings


def test_temp_and_symlinked_export_directories_are_not_candidates(saved_model_src, tmp_path):
    """Estimator exports into temp-<timestamp>/ and renames it to <timestamp>/ when done; a
    `latest` symlink to a version would verify the same export twice."""
    shutil.copytree(saved_model_src, tmp_path / "temp-1700000001")
    shutil.copytree(saved_model_src, tmp_path / "1700000000")
    (tmp_path / "latest").symlink_to(tmp_path / "1700000000")
    assert names(find_candidates("w", str(tmp_path))) == ["1700000000"]
    assert exports_in_progress(str(tmp_path), time.time()) == []


def test_exports_in_progress(saved_model_src, tmp_path):
    """An export that has begun (variables/ exists, saved_model.pb not yet) and changed
    recently: the daemon re-checks such a watch often, since no event shows its end."""
    shutil.copytree(saved_model_src, tmp_path / "1")  # finished
    shutil.copytree(saved_model_src, tmp_path / "2")
    (tmp_path / "2" / "saved_model.pb").unlink()  # under way
    shutil.copytree(tmp_path / "2", tmp_path / "3")
    for path in (tmp_path / "3", tmp_path / "3" / "variables"):  # abandoned an hour ago
        os.utime(path, (time.time() - 3600,) * 2)
    (tmp_path / "4").mkdir()  # not an export
    shutil.copytree(tmp_path / "2", tmp_path / "5_temp")
    now = time.time()
    assert exports_in_progress(str(tmp_path), now) == [str(tmp_path / "2")]
    assert exports_in_progress(str(tmp_path), now, window=7200) == [str(tmp_path / "2"), str(tmp_path / "3")]
    assert exports_in_progress(str(tmp_path), now, exclude=["2"]) == []
    assert exports_in_progress(str(tmp_path / "missing"), now) == []
    assert names(find_candidates("w", str(tmp_path))) == ["1"]


def test_broken_saved_model_settles_and_fails(saved_model_src, tmp_path):
    from ckptwatch.verify.engine import verify_paths

    d = tmp_path / "7"
    shutil.copytree(saved_model_src, d)
    (d / "variables" / "variables.index").unlink()
    (c,) = find_candidates("w", str(tmp_path))
    stability = StabilityTracker(1.0)
    assert check(c, 0.0, stability) == (False, "variables/variables.index missing")
    assert check(c, 0.9, stability)[0] is False
    assert check(c, 1.0, stability) == (True, "settled")
    report, _ = verify_paths(c.path)
    assert report.verdict == "fail" and report.findings[0].check == "integrity.index", report.findings


def test_current_key_follows_each_kind(tf, saved_model_src, tmp_path):
    shutil.copytree(saved_model_src, tmp_path / "1")
    tf.train.Checkpoint(m=_Small.make(tf)).write(str(tmp_path / "ckpt-2"))
    (tmp_path / "w.weights.h5").write_bytes(b"\x89HDF\r\n\x1a\n")
    cands = find_candidates("w", str(tmp_path))
    assert {c.kind for c in cands} == {SAVEDMODEL, BUNDLE, HDF5}
    for c in cands:
        assert current_key(c.path) == c.key
    shutil.rmtree(tmp_path / "1")
    os.unlink(tmp_path / "ckpt-2.index")
    os.unlink(tmp_path / "w.weights.h5")
    assert [current_key(c.path) for c in cands] == [None, None, None]


# -- completion: HDF5 / .keras written in place ----------------------------------------------


def test_hdf5_rewritten_in_place_is_incomplete_until_settled(keras, tmp_path):
    import h5py

    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(256), keras.layers.Dense(8)])
    path = tmp_path / "model.weights.h5"
    model.save_weights(str(path))
    model.save(str(tmp_path / "model.keras"))
    settle = 0.5
    stability = StabilityTracker(settle)
    for c in find_candidates("k", str(tmp_path)):
        assert check(c, 50.0, stability)[0] is False  # first sight: the clock starts
        assert check(c, 50.0 + settle, stability) == (True, "")
        assert check(c, 60.0, stability) == (True, "")  # stays complete while unchanged

    # a real in-place writer: h5py opens the file read-write and rewrites datasets, pausing
    # between writes for less than settle_seconds; the file's size never changes
    datasets = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda name, obj: datasets.append(name) if isinstance(obj, h5py.Dataset) else None)
    assert datasets
    size = path.stat().st_size
    writing, flushed, done_at = threading.Event(), [], []

    def writer():
        with h5py.File(path, "r+") as f:
            writing.set()
            for i in range(12):
                ds = f[datasets[i % len(datasets)]]
                ds[...] = np.full(ds.shape, i, dtype=ds.dtype)
                f.flush()
                flushed.append(time.monotonic())
                time.sleep(0.1)
        done_at.append(time.monotonic())

    t = threading.Thread(target=writer)
    t.start()
    writing.wait(5)
    judged: list[tuple[float, bool, str]] = []
    while True:
        now = time.monotonic()
        for c in find_candidates("k", str(tmp_path), include=["*.weights.h5"]):
            judged.append((now, *check(c, now, stability)))
        if done_at and now > done_at[0] + settle + 0.3:
            break
        time.sleep(0.01)
    t.join()
    assert path.stat().st_size == size
    while_writing = [j for j in judged if j[0] <= done_at[0]]
    assert while_writing and not any(ok for _, ok, _ in while_writing), while_writing[:5]
    assert all(reason for _, ok, reason in while_writing if not ok)
    assert not any(ok for now, ok, _ in judged if now < flushed[-1] + settle - 0.02)
    assert judged[-1][1] is True
    with h5py.File(path, "r") as f:  # what the writer wrote is what is now complete
        assert int(np.asarray(f[datasets[11 % len(datasets)]]).ravel()[0]) == 11


_LISTINGS: list[str] | None = None  # directories listed while a test collects them (audit hook below)


def _audit(event: str, args: tuple) -> None:
    if _LISTINGS is not None and event in ("os.listdir", "os.scandir"):
        _LISTINGS.append(os.fspath(args[0]) if args and args[0] is not None else ".")


sys.addaudithook(_audit)  # real calls, only observed: CPython raises these events in os.listdir/os.scandir


def _listings(call: Callable[[], object]) -> list[str]:
    global _LISTINGS
    _LISTINGS = []
    try:
        call()
        return _LISTINGS
    finally:
        _LISTINGS = None


def test_a_completion_check_lists_a_directory_once(tf2_files, saved_model_src, tmp_path):
    """The daemon checks every pending candidate at each rescan: a bundle's data shards and temp
    artefacts come from one listing of its directory (today's main: four globs and one more for
    the shards), a SavedModel's from one of variables/ and one of the export directory."""
    run = tmp_path / "run"
    run.mkdir()
    for name in os.listdir(tf2_files):
        shutil.copy2(tf2_files / name, run / name)  # with their mtimes: no shard newer than the index
    for k in range(20):  # other files in the directory: listed once all the same
        (run / f"events.{k}").write_bytes(b"x")
    (bundle,) = find_candidates("w", str(run))
    stability = StabilityTracker(NEVER)
    listed = _listings(lambda: check_completion(bundle, 0.0, stability))
    assert check_completion(bundle, 0.0, stability) == Completion(True)
    assert listed == [str(run)], listed

    (run / "ckpt-5_temp").mkdir()  # a save in progress: found by the same one listing
    listed = _listings(lambda: check_completion(bundle, 0.0, stability))
    assert check_completion(bundle, 0.0, stability) == Completion(False, "save in progress: ckpt-5_temp remains")
    assert listed == [str(run)], listed

    export = tmp_path / "export"
    shutil.copytree(saved_model_src, export)
    (model,) = find_candidates("w", str(export))
    listed = _listings(lambda: check_completion(model, 0.0, StabilityTracker(NEVER)))
    assert check_completion(model, 0.0, StabilityTracker(NEVER)) == Completion(True)
    assert sorted(listed) == sorted([str(export / "variables"), str(export)]), listed


def test_stability_tracker(tmp_path):
    p = tmp_path / "f"
    s = StabilityTracker(2.0)
    assert s.observe(str(p), 0.0) == 0.0 and str(p) not in s  # missing: not tracked
    p.write_bytes(b"a")
    assert s.observe(str(p), 1.0) == 0.0
    assert s.observe(str(p), 2.5) == 1.5 and not s.settled(str(p), 2.9)
    assert s.settled(str(p), 3.0)
    with open(p, "ab") as f:
        f.write(b"b")
    assert s.observe(str(p), 4.0) == 0.0
    os.replace(_write(tmp_path / "g", b"ab"), p)  # replaced (same size): a new inode
    assert s.observe(str(p), 5.0) == 0.0
    s.forget(str(p))
    assert len(s) == 0
    with pytest.raises(ValueError):
        StabilityTracker(-1)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# -- the real race -------------------------------------------------------------------------------

WRITER = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
directory, count = sys.argv[1], int(sys.argv[2])
v = tf.Variable(tf.zeros([5_000_000]))  # 20 MB
mgr = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), directory, max_to_keep=3)
print("ready", flush=True)
sys.stdin.readline()
for i in range(1, count + 1):
    v.assign(tf.fill([5_000_000], float(i)))
    print("saved", mgr.save(), flush=True)
"""


@dataclass
class Race:
    """What polling saw while a writer process saved (see _race)."""

    judged: dict[str, Candidate]  # key -> candidate judged complete
    captured: dict[str, Path | None]  # key -> frozen copy (None: deleted before it was captured)
    pending: set[str]  # the reasons given for incomplete candidates
    saved: list[str]  # what the writer printed after "saved"
    polls: int
    seconds: float


def _race(writer: str, run: Path, count: int, capture: Callable[[Candidate, Path], Path | None]) -> Race:
    """Run `writer` (argv: run, count) saving as fast as it can while find_candidates and
    check_completion poll `run` every ~5 ms. settle_seconds never elapse, so only a genuinely
    complete checkpoint is judged complete; each is `capture`d at once, under run/../snapshots."""
    snaps = run.parent / "snapshots"
    run.mkdir()
    snaps.mkdir()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=str(ROOT))
    proc = subprocess.Popen(
        [sys.executable, "-c", writer, str(run), str(count)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )  # fmt: skip
    race = Race({}, {}, set(), [], 0, 0.0)
    try:
        assert proc.stdout.readline().strip() == "ready"
        stability = StabilityTracker(NEVER)
        t_go = time.monotonic()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            finished = proc.poll() is not None
            for c in find_candidates("race", str(run)):
                if c.key in race.judged:
                    continue
                r = check_completion(c, time.monotonic(), stability)
                if not r.complete:
                    race.pending.add(r.reason.split(":")[0])
                    continue
                assert r.reason == "", r  # never "settled" here
                race.judged[c.key] = c
                race.captured[c.key] = capture(c, snaps / f"{len(race.captured)}")
            race.polls += 1
            if finished:
                break
            time.sleep(0.005)
        race.seconds = time.monotonic() - t_go
        out, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    race.saved = [line.split(maxsplit=1)[1] for line in out.splitlines() if line.startswith("saved")]
    return race


@pytest.mark.slow
def test_race_with_a_real_checkpoint_manager(tmp_path):
    """A TF process saves 15 checkpoints of 20 MB as fast as it can (max_to_keep=3) while we
    poll every ~5 ms. Whatever is judged complete is captured at once (index bytes read,
    data shards hard-linked: TF never writes a shard after renaming it) and verified after
    the run: it must never be half written. Checkpoints deleted meanwhile are fine."""
    from ckptwatch.verify.engine import verify_paths

    run, count = tmp_path / "run", 15
    race = _race(WRITER, run, count, _capture)
    assert race.saved == [str(run / f"ckpt-{i}") for i in range(1, count + 1)]
    judged_complete, captured = race.judged, race.captured

    verdicts = {}
    for key, snap in captured.items():
        if snap is None:  # deleted by max_to_keep before we could capture it: fine
            continue
        report, _ = verify_paths(str(snap))
        verdicts[key] = report.verdict
        assert report.verdict in ("pass", "warn"), (judged_complete[key].path, report.to_dict()["findings"])
        assert _unique_values(snap, "v/.ATTRIBUTES/VARIABLE_VALUE") == {float(judged_complete[key].step)}
    steps = sorted(c.step for c in judged_complete.values())
    summary = json.dumps(
        {
            "saving_s": round(race.seconds, 2),
            "polls": race.polls,
            "steps": steps,
            "verified": len(verdicts),
            "pending": sorted(race.pending),
        }
    )
    print(summary)
    assert len(set(steps)) >= count * 2 // 3, summary  # most checkpoints were seen complete
    assert len(verdicts) >= count // 2, summary
    assert steps[-1] == count, summary


def _capture(c: Candidate, dest: Path) -> Path | None:
    """Freeze a bundle as it is now: a copy of its index bytes, hard links to its data shards.
    None when it was deleted (max_to_keep) before we got to it."""
    from ckptwatch.formats.bundle import BundleSource, shard_path

    dest.mkdir()
    prefix = dest / "ckpt"
    try:
        Path(str(prefix) + ".index").write_bytes(Path(c.path + ".index").read_bytes())
    except FileNotFoundError:
        return None
    n = BundleSource(str(prefix)).num_shards  # judged complete: the index must parse
    try:
        for k in range(n):
            os.link(shard_path(c.path, k, n), shard_path(str(prefix), k, n))
    except FileNotFoundError:
        return None
    return prefix


def _unique_values(prefix: Path, name: str) -> set[float]:
    from ckptwatch.formats.bundle import BundleSource

    values: set[float] = set()
    for chunk in BundleSource(str(prefix)).read(name):  # checks the CRC32C at the end
        values.update(np.unique(chunk).tolist())
    return values


SAVED_MODEL_WRITER = r"""
import os, sys
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
import tensorflow as tf
directory, count = sys.argv[1], int(sys.argv[2])
m = tf.Module()
m.v = tf.Variable(tf.zeros([5_000_000]))  # 20 MB
print("ready", flush=True)
sys.stdin.readline()
for i in range(1, count + 1):
    m.v.assign(tf.fill([5_000_000], float(i)))
    tf.saved_model.save(m, os.path.join(directory, str(i)))  # in place, as training jobs do
    print("saved", i, flush=True)
"""


@pytest.mark.slow
def test_race_with_real_saved_model_exports(tmp_path):
    """A TF process exports 8 SavedModels of 20 MB in place (export/1 ... export/8) while we
    poll every ~5 ms. Whatever is judged complete is captured at once and verified after the
    run: never half written, and holding the value of its own export."""
    from ckptwatch.verify.engine import verify_paths

    count = 8
    race = _race(SAVED_MODEL_WRITER, tmp_path / "export", count, _capture_saved_model)
    assert race.saved == [str(i) for i in range(1, count + 1)]
    steps = sorted(c.step for c in race.judged.values())
    assert steps == list(range(1, count + 1)), (steps, race.pending)
    for key, snap in race.captured.items():
        report, _ = verify_paths(str(snap))
        step = race.judged[key].step
        assert report.verdict in ("pass", "warn"), (step, report.to_dict()["findings"])
        assert _unique_values(snap / "variables" / "variables", "v/.ATTRIBUTES/VARIABLE_VALUE") == {float(step)}
    print(json.dumps({"exports": count, "polls": race.polls, "pending": sorted(race.pending)}))


def _capture_saved_model(c: Candidate, dest: Path) -> Path:
    """Freeze a SavedModel as it is now: a copy of saved_model.pb and the index, hard links to
    the data shards (TF never writes a shard after renaming it)."""
    from ckptwatch.formats.bundle import BundleSource, shard_path

    src = Path(c.path)
    (dest / "variables").mkdir(parents=True)
    (dest / "saved_model.pb").write_bytes((src / "saved_model.pb").read_bytes())
    prefix, src_prefix = dest / "variables" / "variables", str(src / "variables" / "variables")
    Path(f"{prefix}.index").write_bytes(Path(f"{src_prefix}.index").read_bytes())
    n = BundleSource(str(prefix)).num_shards  # judged complete: the index must parse
    for k in range(n):
        os.link(shard_path(src_prefix, k, n), shard_path(str(prefix), k, n))
    return dest


# -- the main process stays light ----------------------------------------------------------------

PROBE = r"""
import sys, time
from ckptwatch.daemon import discovery
c, = discovery.find_candidates("w", sys.argv[1])
print(discovery.check_completion(c, time.monotonic(), discovery.StabilityTracker(1.0)).complete)
print(sorted({m.split(".")[0] for m in sys.modules} & {"tensorflow", "keras", "numba", "h5py", "jax", "torch"}))
"""


def _probe(tf2_files: Path, run_python) -> list[str]:
    r = run_python(PROBE, str(tf2_files))
    assert r.returncode == 0, r.stderr
    ok, heavy = r.stdout.splitlines()
    assert ok == "True"
    return json.loads(heavy.replace("'", '"'))


def test_discovery_does_not_import_tensorflow(tf2_files, run_python):
    heavy = _probe(tf2_files, run_python)
    assert not {"tensorflow", "keras", "h5py", "jax", "torch"} & set(heavy), heavy


def test_discovery_does_not_import_numba(tf2_files, run_python):
    assert "numba" not in _probe(tf2_files, run_python)
