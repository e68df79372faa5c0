"""Files as they turn up in the wild (issue 13), rebuilt from files real TensorFlow writes:
Snappy-compressed indexes, state files naming another machine's paths, replicas checked
against a fingerprint, SavedModels' steps, TF's V1 checkpoint format. Each test fails on a
reader that calls such an intact file corrupt, or a damaged one good."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.formats.layout import bundle_shard_count
from ckptwatch.formats.table import iter_table
from tests.conftest import tf1_save
from tests.integration.test_bundle_formats import assert_same_as_tf
from tests.wire import raw_table


def snappy_index(prefix: str, how: str = "snappy-all") -> None:
    """Rewrite `<prefix>.index` in place with Snappy-compressed blocks (type 1), entries unchanged,
    as TF Serving's and T5's files have them. Written by tests/wire.py's own LevelDB writer."""
    index = Path(prefix + ".index")
    entries = [(k, bytes(v)) for k, v in iter_table(index.read_bytes())]
    index.write_bytes(raw_table(entries, restart_interval=16, block_entries=4, compression=how))


def _copy_tree(src: str | Path, dest: Path) -> Path:
    shutil.copytree(src, dest)
    return dest


# -- 1. Snappy-compressed index blocks -----------------------------------------------------------------


@pytest.fixture(scope="module")
def snappy_copies(tmp_path_factory, copy_ckpt, dtype_zoo, tf1_scopes, saved_model, manager_dir) -> dict[str, tuple]:
    """(path given to ckptwatch, prefix TF reads, the pristine original) per kind, index re-encoded."""
    root = tmp_path_factory.mktemp("snappy")
    out = {}
    for name, prefix in (("tf2", dtype_zoo.tf_prefix), ("tf1", tf1_scopes.old[-1]), ("manager", manager_dir.tf_prefix)):
        new = copy_ckpt(prefix, root / name)
        snappy_index(new)
        out[name] = (new, new, prefix)
    sm = _copy_tree(saved_model.path, root / "savedmodel")
    snappy_index(str(sm / "variables" / "variables"))
    out["savedmodel"] = (str(sm), str(sm / "variables" / "variables"), saved_model.path)
    return out


@pytest.mark.parametrize("kind", ["tf2", "tf1", "manager", "savedmodel"])
def test_snappy_index_reads_like_tensorflow_reads_it(tf, snappy_copies, kind: str) -> None:
    path, tf_prefix, _ = snappy_copies[kind]
    assert Path(tf_prefix + ".index").read_bytes()[-53] == 1  # the index block is stored compressed (type 1)
    assert_same_as_tf(tf, path, tf_prefix)  # TF reads the re-encoded index, ckptwatch gives the same tensors
    assert bundle_shard_count(tf_prefix) >= 1  # the daemon's main process reads its header too


@pytest.mark.parametrize("kind", ["tf2", "tf1", "savedmodel"])
def test_snappy_index_passes_and_serves_as_a_reference(run_cli, snappy_copies, kind: str) -> None:
    path, _, original = snappy_copies[kind]
    r = run_cli("verify", path, "--json")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.json()["verdict"] in ("pass", "warn")
    assert not [f for f in r.json()["findings"] if f["check"].startswith("integrity")]
    for flag in ("--golden", "--previous"):
        r = run_cli("verify", original, flag, path, "--json")
        assert r.returncode in (0, 1), f"{flag}: {r.stdout}{r.stderr}"  # read as a reference, not exit 2
        doc = r.json()
        ref = "golden" if flag == "--golden" else "previous"
        assert doc["drift"][ref] is not None and doc["drift"][ref]["max_abs"] == 0.0, doc["drift"]
        # the same tensors: nothing missing or changed; identical to previous is a duplicate save
        assert {f["check"] for f in doc["findings"] if f["severity"] == "fail"} <= {"drift.unchanged"}, doc["findings"]


def test_damaged_snappy_block_fails_as_tensorflow_fails(tf, tmp_path: Path, copy_ckpt, dtype_zoo, run_cli) -> None:
    prefix = copy_ckpt(dtype_zoo.tf_prefix, tmp_path)
    snappy_index(prefix)
    index = Path(prefix + ".index")
    data = bytearray(index.read_bytes())
    data[10] ^= 0x01  # inside the first (compressed) data block
    index.write_bytes(bytes(data))
    try:  # TF drops the block: it raises, or (TF 2.21, the header's block) lists no variables at all
        seen = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    except Exception as e:
        seen = {"raised": str(e)}
    assert seen != tf.train.load_checkpoint(dtype_zoo.tf_prefix).get_variable_to_shape_map()
    r = run_cli("verify", prefix, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert any(f["check"] == "integrity.index" and "checksum mismatch" in f["message"] for f in r.json()["findings"])


# -- 2. A `checkpoint` state file naming another machine's absolute paths ------------------------------


@pytest.fixture(scope="module")
def moved_tf1(tf, tmp_path_factory) -> Path:
    """A TF1 Saver directory (its state file holds absolute paths), then moved elsewhere:
    every file is there, under the recorded basenames, but the recorded paths are gone."""
    root = tmp_path_factory.mktemp("moved")
    tf1_save(tf, root / "on-the-trainer", "net", (10, 20))
    assert '"' + str(root / "on-the-trainer") in (root / "on-the-trainer" / "checkpoint").read_text()
    (root / "on-the-trainer").rename(root / "here")
    return root / "here"


def test_relocated_state_file_verifies_the_checkpoint_beside_it(tf, run_cli, moved_tf1: Path) -> None:
    with pytest.raises(ValueError, match="Couldn't find"):
        tf.train.load_checkpoint(str(moved_tf1))  # TF's directory lookup fails; its files are all there
    assert len(tf.train.load_checkpoint(str(moved_tf1 / "model.ckpt-20")).get_variable_to_shape_map()) == 5
    for given in (moved_tf1, moved_tf1 / "checkpoint"):
        r = run_cli("verify", given, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        doc = r.json()
        assert doc["checkpoint"]["path"] == str(moved_tf1 / "model.ckpt-20")
        assert doc["checkpoint"]["step"] == 20
        notes = [f for f in doc["findings"] if f["check"] == "integrity.relocated"]
        assert len(notes) == 1 and notes[0]["severity"] == "info", doc["findings"]
        assert "model.ckpt-20" in notes[0]["message"] and "does not exist" in notes[0]["message"]
    r = run_cli("verify", moved_tf1 / "model.ckpt-10", "--previous", moved_tf1, "--golden", moved_tf1, "--json")
    assert r.returncode in (0, 1), r.stdout + r.stderr  # read as references (exit 2 if not)
    assert r.json()["drift"]["golden"] is not None


def test_state_file_naming_a_checkpoint_that_is_not_there_is_a_missing_path(run_cli, tmp_path: Path) -> None:
    for recorded in ("/elsewhere/run/ckpt-7", "ckpt-7"):
        (tmp_path / "checkpoint").write_text(f'model_checkpoint_path: "{recorded}"\n')
        r = run_cli("verify", tmp_path)
        assert r.returncode == 2, r.stdout + r.stderr
        assert "ckpt-7" in r.stderr and "does not exist" in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
        r = run_cli("verify", "--golden", tmp_path, tmp_path / "nothing")
        assert r.returncode == 2, r.stdout + r.stderr


def test_recorded_path_that_exists_wins_over_the_basename_beside(tmp_path: Path, copy_ckpt, manager_dir) -> None:
    from ckptwatch.formats.layout import latest_from_state_file

    elsewhere = copy_ckpt(manager_dir.tf_prefix, tmp_path / "elsewhere")
    here = tmp_path / "here"
    copy_ckpt(manager_dir.tf_prefix, here)
    (here / "checkpoint").write_text(f'model_checkpoint_path: "{elsewhere}"\n')
    latest = latest_from_state_file(str(here))
    assert latest is not None and latest.prefix == elsewhere and not latest.relocated
    (here / "checkpoint").write_text('model_checkpoint_path: "C:\\\\runs\\\\r7\\\\' + Path(elsewhere).name + '"\n')
    latest = latest_from_state_file(str(here))  # a Windows writer's path
    assert latest is not None and latest.relocated and latest.prefix == str(here / Path(elsewhere).name)


# -- 6. A replica against a golden fingerprint is exact -------------------------------------------------


@pytest.fixture(scope="module")
def keras_h5(keras, tmp_path_factory) -> dict[str, Path]:
    """A Keras model as a legacy full-model .h5 and as a .weights.h5; its kernel (64x64) is big
    enough that a fingerprint samples it (1024 of 4096 values) instead of keeping it all."""
    keras.utils.set_random_seed(3)
    model = keras.Sequential([keras.Input((64,)), keras.layers.Dense(64, name="wide"), keras.layers.Dense(2)])
    d = tmp_path_factory.mktemp("replica")
    model.save(d / "model.h5")
    model.save_weights(d / "model.weights.h5")
    return {"h5": d / "model.h5", "weights.h5": d / "model.weights.h5"}


def _change_one_unsampled_weight(path: Path) -> str:
    """Change one value of the 4096-element kernel, at a position the fingerprint does not
    sample (HDF5 has no checksums: nothing else notices). Returns the dataset's name."""
    import h5py
    import numpy as np

    from ckptwatch.verify.sketch import sample_positions

    with h5py.File(path, "r+") as f:
        names: list[str] = []
        f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) and o.size == 4096 else None)
        (name,) = [n for n in names if "optimizer" not in n]
        kernel = f[name][...]
        free = sorted(set(range(4096)) - {int(p) for p in sample_positions(4096)})
        kernel.flat[free[len(free) // 2]] += np.float32(0.5)
        f[name][...] = kernel
    return name


@pytest.mark.parametrize("kind", ["h5", "weights.h5"])
def test_replica_with_one_changed_weight_fails_against_a_fingerprint(run_cli, keras_h5, tmp_path: Path, kind) -> None:
    original = keras_h5[kind]
    fp = tmp_path / "golden.fp.json.gz"
    assert run_cli("fingerprint", original, "-o", fp).returncode == 0
    good = tmp_path / ("good." + kind)
    shutil.copy(original, good)
    r = run_cli("verify", good, "--profile", "replica", "--golden", fp, "--json")
    assert r.returncode == 0 and r.json()["verdict"] == "pass", r.stdout + r.stderr
    bad = tmp_path / ("bad." + kind)
    shutil.copy(original, bad)
    changed = _change_one_unsampled_weight(bad)
    r = run_cli("verify", bad, "--profile", "replica", "--golden", fp, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    (finding,) = [f for f in r.json()["findings"] if f["severity"] == "fail"]
    assert finding["check"] == "drift.replica" and finding["reference"] == "golden"
    assert finding["tensor"] == changed, finding  # the one tensor changed, named
    assert "hash" in finding["message"], finding
    full = run_cli("verify", bad, "--profile", "replica", "--golden", original, "--json")  # the full golden agrees
    assert full.returncode == 1 and {f["tensor"] for f in full.json()["findings"]} == {finding["tensor"]}


# -- 8. Smaller: a finding said once, a SavedModel's step, TF's V1 format ------------------------------


def test_damaged_object_graph_is_reported_once(tf, tmp_path: Path, run_cli) -> None:
    from ckptwatch.formats.bundle import BundleSource

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([3, 4]))

    prefix = tf.train.Checkpoint(m=M()).write(str(tmp_path / "ckpt-1"))
    entry = BundleSource(prefix).entry("_CHECKPOINTABLE_OBJECT_GRAPH")
    shard = Path(prefix + ".data-00000-of-00001")
    data = bytearray(shard.read_bytes())
    data[entry.offset + entry.size - 3] ^= 0x20  # inside the graph's string bytes
    shard.write_bytes(bytes(data))
    r = run_cli("verify", prefix, "--json")
    assert r.returncode == 1
    findings = [f for f in r.json()["findings"] if f["tensor"] == "_CHECKPOINTABLE_OBJECT_GRAPH"]
    assert len(findings) == 1 and findings[0]["check"] == "integrity.checksum", findings


def test_saved_models_show_the_step_they_hold(tf, keras, tmp_path: Path, run_cli) -> None:
    class WithStep(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.ones([2, 2]))
            self.global_step = tf.Variable(4321, dtype=tf.int64)

        @tf.function(input_signature=[tf.TensorSpec([None, 2], tf.float32)])
        def __call__(self, x):
            return tf.matmul(x, self.w)

    tf.saved_model.save(WithStep(), str(tmp_path / "tf2"))

    graph = tf.Graph()  # TF1 / Estimator style: the graph variable `global_step`
    with graph.as_default():
        w = tf.compat.v1.get_variable("w", [2, 2])
        step = tf.compat.v1.train.get_or_create_global_step()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            sess.run(step.assign(777))
            builder = tf.compat.v1.saved_model.Builder(str(tmp_path / "tf1"))
            x = tf.compat.v1.placeholder(tf.float32, [None, 2])
            sig = tf.compat.v1.saved_model.predict_signature_def({"x": x}, {"y": tf.matmul(x, w)})
            builder.add_meta_graph_and_variables(sess, ["serve"], signature_def_map={"serving_default": sig})
            builder.save()

    keras.utils.set_random_seed(0)  # Keras 3: the optimizer's iteration count
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile("adam", "mse")
    model.fit(np.ones((8, 4)), np.ones((8, 2)), batch_size=4, epochs=3, verbose=0)
    tf.saved_model.save(model, str(tmp_path / "keras"))

    for name, step in (("tf2", 4321), ("tf1", 777), ("keras", 6)):
        r = run_cli("verify", tmp_path / name, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.json()["checkpoint"]["format"] == "savedmodel"
        assert r.json()["checkpoint"]["step"] == step, name


V1_VALUES = {
    "f32": np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4),
    "f64": np.array([1e-300, -2.5, np.pi]),
    "f16": np.array([0.5, -1.25, 65504], dtype=np.float16),
    "i8": np.array([-128, 0, 127], dtype=np.int8),
    "u8": np.array([0, 200, 255], dtype=np.uint8),
    "i16": np.array([-30000, 7], dtype=np.int16),
    "i32": np.array([[-(2**31), 2**31 - 1]], dtype=np.int32),
    "i64": np.array([-(2**62), 5], dtype=np.int64),
    "flag": np.array([True, False, True]),
    "c64": np.array([1 + 2j, -3.5j], dtype=np.complex64),
    "scalar": np.float32(3.25),
    "text": np.array(b"a string variable"),
}


TF_CANNOT_READ_V1 = ("f16", "c64")


@pytest.fixture(scope="module")
def v1_checkpoints(tf, tmp_path_factory) -> dict[str, Path]:
    """Checkpoints in TF's V1 format, written by TF 2.21's own Saver (write_version=V1): one
    file, and sharded by device (the state file then names `model.ckpt-5-?????-of-0000N`),
    with a dozen dtypes and a variable partitioned in three slices."""
    root = tmp_path_factory.mktemp("v1")
    for sharded in (False, True):
        graph = tf.Graph()
        with graph.as_default():
            for i, (name, value) in enumerate(V1_VALUES.items()):
                with tf.device(f"/cpu:{i % 2}" if sharded else "/cpu:0"):
                    tf.compat.v1.get_variable(name, initializer=tf.constant(value), use_resource=False)
            part = tf.compat.v1.get_variable(
                "part", [10, 3], initializer=tf.compat.v1.random_normal_initializer(seed=1),
                partitioner=tf.compat.v1.fixed_size_partitioner(3),
            )  # fmt: skip
            whole = tf.concat(list(part), axis=0)
            tf.compat.v1.train.get_or_create_global_step()
            saver = tf.compat.v1.train.Saver(write_version=tf.compat.v1.train.SaverDef.V1, sharded=sharded)
            directory = root / ("sharded" if sharded else "single")
            directory.mkdir()
            config = tf.compat.v1.ConfigProto(device_count={"CPU": 2})
            with tf.compat.v1.Session(graph=graph, config=config) as sess:
                sess.run(tf.compat.v1.global_variables_initializer())
                saver.save(sess, str(directory / "model.ckpt"), global_step=5)
                np.save(directory / "part.npy", sess.run(whole))  # the partitioned variable, for the test
    return {"single": root / "single", "sharded": root / "sharded"}


@pytest.mark.parametrize("kind", ["single", "sharded"])
def test_tf_v1_checkpoints_read_like_tensorflow_reads_them(tf, v1_checkpoints, kind: str) -> None:
    from ckptwatch.formats import open_checkpoint

    directory = v1_checkpoints[kind]
    assert not list(directory.glob("*.index"))
    files = sorted(p.name for p in directory.glob("model.ckpt-5*") if p.suffix not in (".meta", ".npy"))
    if kind == "single":
        assert files == ["model.ckpt-5"]
    else:
        assert len(files) >= 2 and all("-of-0000" in f for f in files), files
    tf_prefix = (directory / "checkpoint").read_text().splitlines()[0].split('"')[1]  # the recorded pattern
    assert ("?????" in tf_prefix) == (kind == "sharded")
    reader = tf.train.load_checkpoint(tf_prefix)
    shapes = reader.get_variable_to_shape_map()
    assert "part" in shapes and shapes["part"] == [10, 3]
    src = open_checkpoint(str(directory))
    try:
        assert src.format == "tf-v1" and src.step == 5 and src.problems == []
        infos = {t.name: t for t in src.tensors()}
        assert set(infos) == set(shapes)
        for name, info in infos.items():
            assert info.dtype == reader.get_variable_to_dtype_map()[name].name, name
            assert list(info.shape) == list(shapes[name]), name
            got = b"".join(c.tobytes() for c in src.read(name, 5))
            if name in TF_CANNOT_READ_V1:  # TF 2.21 writes them, its V1 reader says "Data type not supported"
                assert got == np.ascontiguousarray(V1_VALUES[name]).tobytes(), name
            elif name == "part":  # TF's reader: "Sliced checkpoints are not supported"; assembled here
                assert got == np.load(directory / "part.npy").tobytes()
            elif info.numeric:
                assert got == np.ascontiguousarray(reader.get_tensor(name)).tobytes(), name
        assert np.array_equal(reader.get_tensor("f32"), V1_VALUES["f32"])
    finally:
        src.close()


def test_tf_v1_checkpoints_verify_and_serve_as_references(run_cli, v1_checkpoints) -> None:
    single, sharded = v1_checkpoints["single"], v1_checkpoints["sharded"]
    given = [single, single / "model.ckpt-5", single / "checkpoint", sharded, sharded / "model.ckpt-5"]
    given += sorted(sharded.glob("model.ckpt-5-*-of-*"))
    for path in given:
        r = run_cli("verify", path, "--json")
        assert r.returncode == 0, f"{path}: {r.stdout}{r.stderr}"
        doc = r.json()
        assert doc["checkpoint"]["format"] == "tf-v1" and doc["checkpoint"]["tensors"] == len(V1_VALUES) + 2
    r = run_cli("verify", single, "--golden", sharded, "--profile", "replica", "--json")  # the same values
    assert r.returncode == 0 and r.json()["drift"]["golden"]["max_abs"] == 0.0, r.stdout + r.stderr


def test_damaged_tf_v1_checkpoint_fails(tf, run_cli, v1_checkpoints, tmp_path: Path) -> None:
    path = tmp_path / "model.ckpt-5"
    data = bytearray((v1_checkpoints["single"] / "model.ckpt-5").read_bytes())
    data[len(data) // 3] ^= 0x08  # inside a data block
    path.write_bytes(bytes(data))
    with pytest.raises(Exception, match=r"(?i)checksum|corrupt|data loss|failed to find"):
        reader = tf.train.load_checkpoint(str(path))
        for name in reader.get_variable_to_shape_map():
            reader.get_tensor(name)
    r = run_cli("verify", path, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    assert any("checksum mismatch" in f["message"] for f in r.json()["findings"]), r.json()["findings"]


# -- from the corpus: a .keras archive naming one member twice ----------------------------------------


def test_keras_archive_with_a_member_twice_fails(keras, tmp_path: Path, run_cli) -> None:
    """A proof-of-concept exploit archive seen in the wild stores `model.weights.npz` twice:
    readers that take the first copy and readers that take the last see different files.
    Rebuilt here from a real Keras archive with `model.weights.h5` twice."""
    import warnings
    import zipfile

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    good = tmp_path / "good.keras"
    model.save(good)
    assert run_cli("verify", good).returncode == 0
    bad = tmp_path / "twice.keras"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name: that is the point
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("model.weights.h5", src.read("model.weights.h5"))
    r = run_cli("verify", bad, "--json")
    assert r.returncode == 1, r.stdout + r.stderr
    (f,) = [f for f in r.json()["findings"] if f["severity"] == "fail"]
    assert f["check"] == "integrity.zip" and "model.weights.h5 appears 2 times" in f["message"]


def test_daemon_golden_whose_state_file_names_nothing_here_is_not_available(tmp_path: Path, manager_dir) -> None:
    """The daemon's golden (optional there) is a directory whose state file names a checkpoint
    that is not mounted: verified without it, with a warning, as for a golden path not there."""
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.verify.verification import verify_checkpoint

    golden = tmp_path / "golden"
    golden.mkdir()
    (golden / "checkpoint").write_text('model_checkpoint_path: "/trainer/golden/ckpt-9"\n')
    done = verify_checkpoint(VerifyRequest(manager_dir.tf_prefix, golden=str(golden), golden_required=False))
    (warned,) = [f for f in done.report.findings if f.check == "integrity.reference"]
    assert warned.severity == "warn" and str(golden) in warned.message
    assert done.report.verdict in ("pass", "warn")


def test_randomly_damaged_tf_v1_files_give_findings_never_crashes(v1_checkpoints, tmp_path: Path) -> None:
    import random

    from ckptwatch.errors import CkptwatchError
    from ckptwatch.formats import open_checkpoint
    from ckptwatch.formats.base import READ_ERRORS

    raw = (v1_checkpoints["single"] / "model.ckpt-5").read_bytes()
    rng = random.Random(13)
    path = tmp_path / "model.ckpt-5"
    for _ in range(150):
        data = bytearray(raw)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        path.write_bytes(bytes(data))
        try:
            src = open_checkpoint(str(path))
            for t in src.tensors():
                for _ in src.read(t.name, 7):
                    pass
            src.close()
        except (*READ_ERRORS, CkptwatchError):
            pass  # a finding (IntegrityError, a decoding error) or "not a checkpoint": never anything else
