"""Safe mode for SavedModels is an allow-list (issue 12, break 4).

Every SavedModel here is written by real TensorFlow/Keras savers. Hostile ones put an op
that reads or writes files, runs Python or prints into the serving signature: each is
refused with `restore.unsafe` naming the op, and nothing is written anywhere while it is
verified with a probe. Ordinary models (MLP, CNN, LSTM/GRU, attention with LayerNorm, a
tf.Module, Keras' `model.export`, a TF1 graph, lookup tables fed from their own assets/)
still load and run their probe.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.model.checks import add_model_checks
from ckptwatch.model.safety import saved_model_refusal
from ckptwatch.model.safety_graph import asset_problem
from ckptwatch.policy import Policy
from ckptwatch.verify.engine import verify_paths
from ckptwatch.verify.request import ModelSpec

pytestmark = pytest.mark.usefixtures("op_determinism_off_afterwards")

FEATURES = 4


def _hostile_module(tf, side):
    """A tf.Module whose serving signature computes x @ w and also calls side(tf, x)."""

    class Hostile(tf.Module):
        def __init__(self):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([FEATURES, 3], seed=[1, 2]))

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x")])
        def serve(self, x):
            y = tf.matmul(x, self.w)
            extra = side(tf, x)  # stateful ops run in a tf.function whether or not their outputs are used
            if isinstance(extra, tf.Tensor):
                y = y + 0.0 * tf.cast(tf.reduce_sum(extra), tf.float32)
            return {"y": y}

    return Hostile()


def _sides(written: Path) -> dict[str, tuple[object, str]]:
    """name -> (side(tf, x), the op that must be named)."""
    w = str(written)

    def table_outside_assets(tf, x):
        table = tf.raw_ops.HashTableV2(key_dtype=tf.string, value_dtype=tf.int64, shared_name="hostname")
        tf.raw_ops.InitializeTableFromTextFileV2(
            table_handle=table, filename="/etc/hostname", key_index=-2, value_index=-1
        )
        return tf.raw_ops.LookupTableSizeV2(table_handle=table)

    def reduce(ds, tf):
        return ds.reduce(tf.constant(0.0), lambda a, b: a + tf.reduce_sum(tf.cast(b, tf.float32)))

    return {
        "cache": (
            lambda tf, x: reduce(tf.data.Dataset.from_tensor_slices(x).cache(f"{w}/cache"), tf),
            "CacheDatasetV2",
        ),
        "snapshot": (
            lambda tf, x: reduce(tf.data.Dataset.from_tensor_slices(x).snapshot(f"{w}/snapshot"), tf),
            "SnapshotDatasetV2",
        ),
        "text_line": (
            lambda tf, x: tf.data.TextLineDataset("/etc/hostname").reduce(
                tf.constant(0), lambda a, line: a + tf.strings.length(line)
            ),
            "TextLineDataset",
        ),
        "write_file": (lambda tf, x: tf.io.write_file(f"{w}/write_file", tf.strings.as_string(x[0, 0])), "WriteFile"),
        "read_file": (lambda tf, x: tf.strings.length(tf.io.read_file("/etc/hostname")), "ReadFile"),
        "print_to_file": (lambda tf, x: tf.print(x, output_stream=f"file://{w}/print"), "PrintV2"),
        "py_function": (lambda tf, x: tf.py_function(lambda a: a, [x], tf.float32), "EagerPyFunc"),
        "save_v2": (
            lambda tf, x: tf.raw_ops.SaveV2(prefix=f"{w}/ckpt", tensor_names=["x"], shape_and_slices=[""], tensors=[x]),
            "SaveV2",
        ),
        "restore_v2": (
            lambda tf, x: tf.raw_ops.RestoreV2(
                prefix=f"{w}/elsewhere", tensor_names=["x"], shape_and_slices=[""], dtypes=[tf.float32]
            )[0],
            "RestoreV2",
        ),
        "table_outside_assets": (table_outside_assets, "InitializeTableFromTextFileV2"),
    }


def _writes_three_ways(tf, x, w: str):
    """One signature that would write in the three ways the old deny-list let through."""
    ds = tf.data.Dataset.from_tensor_slices(x).cache(f"{w}/cache").snapshot(f"{w}/snapshot")
    total = ds.reduce(tf.constant(0.0), lambda a, b: a + tf.reduce_sum(b))
    tf.print(total, output_stream=f"file://{w}/print")
    return total


def _save(tf, module, directory: Path) -> str:
    tf.saved_model.save(module, str(directory), signatures={"serving_default": module.serve})
    return str(directory)


@pytest.fixture(scope="module")
def hostile(tf, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("hostile")
    written = root / "written"
    written.mkdir()
    models = {
        name: (_save(tf, _hostile_module(tf, side), root / name), op) for name, (side, op) in _sides(written).items()
    }
    everything = _save(tf, _hostile_module(tf, lambda tf, x: _writes_three_ways(tf, x, str(written))), root / "all")
    probe = root / "probe.npz"
    np.savez(probe, x=np.random.default_rng(0).normal(size=(8, FEATURES)).astype("float32"))
    return {"models": models, "all": everything, "written": written, "probe": str(probe)}


def verify(candidate: str, probe: str) -> dict:
    """The engine and the model checks the CLI's child runs, in this process."""
    policy = Policy()
    report, _ = verify_paths(candidate, None, None, policy)
    add_model_checks(report, candidate, None, ModelSpec(probe=probe), policy)
    return report.to_dict()


def unsafe(report: dict) -> list[str]:
    return [f["message"] for f in report["findings"] if f["check"] == "restore.unsafe"]


def tree(path: Path) -> dict[str, tuple[int, int]]:
    """Every file under path, with its size and mtime: what a verification must leave alone."""
    return {str(p.relative_to(path)): (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(path.rglob("*"))}


@pytest.mark.parametrize(
    "name",
    [
        "cache",
        "snapshot",
        "text_line",
        "write_file",
        "read_file",
        "print_to_file",
        "py_function",
        "save_v2",
        "restore_v2",
        "table_outside_assets",
    ],
)
def test_a_signature_that_acts_is_refused_naming_the_op(hostile, name):
    directory, op = hostile["models"][name]
    before = tree(Path(directory))
    report = verify(directory, hostile["probe"])
    (message,) = unsafe(report)
    assert report["verdict"] == "fail" and report["model"]["functional"] is None
    assert message.startswith(f"refused to load the SavedModel: op {op} (node "), message
    assert "in function '__inference_" in message, message
    assert list(hostile["written"].iterdir()) == [], "a refused model ran"
    assert tree(Path(directory)) == before


def test_verify_probe_through_the_cli_writes_nothing(run_cli, hostile):
    """`ckptwatch verify --probe` on a signature that would cache, snapshot and print into
    files: refused, and nothing appears in the target directory or the SavedModel."""
    directory = Path(hostile["all"])
    before = tree(directory)
    r = run_cli("verify", str(directory), "--probe", hostile["probe"], "--json")
    assert r.returncode == 1, r.stderr[-2000:]
    report = r.json()
    (message,) = unsafe(report)
    for op in ("CacheDatasetV2", "PrintV2", "SnapshotDatasetV2"):  # named first: they act
        assert op in message, message
    assert list(hostile["written"].iterdir()) == []
    assert tree(directory) == before


# -- ordinary models still load and run ------------------------------------------------------------------


def _keras_models(keras):
    def mlp():
        return keras.Sequential(
            [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu"), keras.layers.Dropout(0.1),
             keras.layers.Dense(3, activation="softmax")]
        )  # fmt: skip

    def cnn():
        i = keras.Input((FEATURES,))
        x = keras.layers.Reshape((2, 2, 1))(i)
        x = keras.layers.Conv2D(4, 2, padding="same", activation="relu")(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.DepthwiseConv2D(2, padding="same")(x)
        x = keras.layers.MaxPooling2D(padding="same")(x)
        x = keras.layers.GlobalAveragePooling2D()(x)
        return keras.Model(i, keras.layers.Dense(3, activation="gelu")(x))

    def rnn():
        i = keras.Input((FEATURES,))
        x = keras.layers.Reshape((FEATURES, 1))(i)
        x = keras.layers.LSTM(5, return_sequences=True)(x)
        x = keras.layers.GRU(5)(x)
        return keras.Model(i, keras.layers.Dense(3)(x))

    def attention():
        i = keras.Input((FEATURES,))
        x = keras.layers.Reshape((FEATURES, 1))(i)
        x = keras.layers.Dense(8)(x)
        a = keras.layers.MultiHeadAttention(2, 4)(x, x)
        x = keras.layers.LayerNormalization()(x + a)
        x = keras.layers.GlobalAveragePooling1D()(x)
        return keras.Model(i, keras.layers.Dense(3, activation="softmax")(x))

    return {"mlp": mlp, "cnn": cnn, "rnn": rnn, "attention": attention}


def _tf1_with_vocabulary(tf, directory: Path, vocab: str, as_asset: bool = True) -> None:
    """A TF1 graph (compat.v1 Builder): variables, and a table from a vocabulary file, copied into
    assets/ (as Estimator exports do) or left where it is (read from there at load)."""
    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as sess:
        x = v1.placeholder(tf.float32, [None, FEATURES], name="x")
        words = v1.placeholder(tf.string, [None], name="words")
        w = v1.get_variable("w", initializer=tf.ones([FEATURES, 3]))
        table = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(
                vocab, tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64, tf.lookup.TextFileIndex.LINE_NUMBER
            ),
            -1,
        )
        ids = table.lookup(words)
        sess.run([v1.global_variables_initializer(), v1.tables_initializer()])
        builder = v1.saved_model.Builder(str(directory))
        signature = v1.saved_model.predict_signature_def({"x": x, "words": words}, {"y": tf.matmul(x, w), "ids": ids})
        builder.add_meta_graph_and_variables(
            sess,
            ["serve"],
            signature_def_map={"serving_default": signature},
            main_op=v1.tables_initializer(),
            assets_collection=v1.get_collection(v1.GraphKeys.ASSET_FILEPATHS) if as_asset else None,
        )
        builder.save()


@pytest.fixture(scope="module")
def ordinary(tf, keras, tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("ordinary")
    rng = np.random.default_rng(1)
    probe = root / "probe.npz"
    np.savez(probe, x=rng.normal(size=(8, FEATURES)).astype("float32"))
    models: dict[str, tuple[str, str]] = {}
    keras.utils.set_random_seed(0)
    for name, build in _keras_models(keras).items():
        m = build()
        m.export(str(root / f"{name}-export"), verbose=False)
        tf.saved_model.save(m, str(root / f"{name}-saved"))
        models[f"{name}-export"] = (str(root / f"{name}-export"), str(probe))
        models[f"{name}-saved"] = (str(root / f"{name}-saved"), str(probe))

    vocab = root / "vocab.txt"
    vocab.write_text("red\ngreen\nblue\n")

    class Vocabulary(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.lookup.StaticVocabularyTable(
                tf.lookup.TextFileInitializer(
                    str(vocab), tf.string, tf.lookup.TextFileIndex.WHOLE_LINE, tf.int64,
                    tf.lookup.TextFileIndex.LINE_NUMBER,
                ),
                num_oov_buckets=1,
            )  # fmt: skip
            self.embedding = tf.Variable(tf.random.stateless_normal([4, 2], seed=[3, 4]))

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="words")])
        def serve(self, words):
            return {"vectors": tf.gather(self.embedding, self.table.lookup(words))}

    models["vocabulary"] = (_save(tf, Vocabulary(), root / "vocabulary"), str(root / "words.npz"))
    np.savez(root / "words.npz", x=np.array(["red", "blue", "mauve"]))
    _tf1_with_vocabulary(tf, root / "tf1", str(vocab))
    np.savez(root / "tf1-probe.npz", **{"x/x": rng.normal(size=(3, FEATURES)).astype("float32"),
                                        "x/words": np.array(["red", "blue", "mauve"])})  # fmt: skip
    models["tf1"] = (str(root / "tf1"), str(root / "tf1-probe.npz"))
    _tf1_with_vocabulary(tf, root / "tf1-outside", str(vocab), as_asset=False)
    models["tf1-outside"] = (str(root / "tf1-outside"), str(root / "tf1-probe.npz"))
    vocab.unlink()  # the tables must read the copies in assets/
    return models


@pytest.mark.parametrize(
    "name",
    [f"{m}-{how}" for m in ("mlp", "cnn", "rnn", "attention") for how in ("export", "saved")] + ["vocabulary", "tf1"],
)
def test_ordinary_savedmodels_load_and_run_their_probe(ordinary, name):
    directory, probe = ordinary[name]
    assert saved_model_refusal(os.path.join(directory, "saved_model.pb")) == (None, "serving_default")
    report = verify(directory, probe)
    assert report["verdict"] in ("pass", "warn"), report["findings"]
    assert report["model"]["source"] == "saved_model"
    assert report["model"]["functional"]["nonfinite_outputs"] == 0, report["model"]


def test_a_tf1_table_reading_its_vocabulary_from_outside_the_savedmodel_is_refused(ordinary):
    directory, probe = ordinary["tf1-outside"]
    (message,) = unsafe(verify(directory, probe))
    assert message.startswith(
        "refused to load the SavedModel: op InitializeTableFromTextFileV2 (node "
        "'text_file_init/InitializeTableFromTextFileV2' in the graph) reads a file that is not the SavedModel's "
        "asset: its file name comes from Const 'asset_path', not from an asset"
    ), message


def test_a_vocabulary_read_from_its_own_assets_gives_its_ids(ordinary, tf):
    directory, _ = ordinary["vocabulary"]
    loaded = tf.saved_model.load(directory)
    vectors = loaded.signatures["serving_default"](words=tf.constant(["red", "blue"]))["vectors"].numpy()
    assert np.array_equal(vectors, tf.gather(loaded.embedding, [0, 2]).numpy())


# -- asset files outside assets/ ---------------------------------------------------------------------------


def _with_asset_filename(src: str, dest: Path, filename: str) -> str:
    from tensorflow.core.protobuf import meta_graph_pb2, saved_model_pb2

    shutil.copytree(src, dest)
    pb = dest / "saved_model.pb"
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    for meta in saved.meta_graphs:
        for asset in meta.asset_file_def:
            asset.filename = filename
        if "saved_model_assets" in meta.collection_def:  # TF1 Builder: the assets in a collection
            for packed in meta.collection_def["saved_model_assets"].any_list.value:
                asset = meta_graph_pb2.AssetFileDef()
                packed.Unpack(asset)
                asset.filename = filename
                packed.Pack(asset)
    pb.write_bytes(saved.SerializeToString())
    return str(dest)


@pytest.mark.parametrize(
    ("filename", "why"),
    [
        ("/etc/hostname", "is an absolute path"),
        ("../../../../../../../../etc/hostname", "leaves the assets/ directory"),
        ("sub/../../variables/variables.index", "leaves the assets/ directory"),
    ],
)
def test_an_asset_path_out_of_assets_is_refused(ordinary, tmp_path, filename, why):
    for name in ("vocabulary", "tf1"):
        directory = _with_asset_filename(ordinary[name][0], tmp_path / name, filename)
        report = verify(directory, ordinary[name][1])
        assert unsafe(report) == [f"refused to load the SavedModel: asset file {filename!r} {why}. ckptwatch never "
                                  "runs code from a file it verifies"], report["findings"]  # fmt: skip


def test_an_asset_that_links_out_of_assets_is_refused(ordinary, tmp_path):
    directory = tmp_path / "vocabulary"
    shutil.copytree(ordinary["vocabulary"][0], directory)
    (asset,) = (directory / "assets").iterdir()
    asset.unlink()
    asset.symlink_to("/etc/hostname")
    report = verify(str(directory), ordinary["vocabulary"][1])
    (message,) = unsafe(report)
    assert f"asset file '{asset.name}' resolves outside the assets/ directory" in message
    fifo = tmp_path / "fifo"
    shutil.copytree(ordinary["vocabulary"][0], fifo)
    (fifo / "assets" / asset.name).unlink()
    os.mkfifo(fifo / "assets" / asset.name)
    assert asset_problem(str(fifo), asset.name) == "is not a regular file"


def test_an_op_named_as_a_branch_function_is_checked_as_an_op(tf, tmp_path):
    """TensorFlow runs a bare op named in a function attr (If's then_branch, a call's f) as a
    one-op function: a name that is not in the library must be an allowed op."""
    from tensorflow.core.protobuf import saved_model_pb2

    def branchy(tf, x):
        return tf.strings.length(tf.cond(tf.reduce_sum(x) > 0, lambda: tf.constant("a"), lambda: tf.constant("b")))

    directory = Path(_save(tf, _hostile_module(tf, branchy), tmp_path / "branchy"))
    pb = directory / "saved_model.pb"
    assert saved_model_refusal(str(pb)) == (None, "serving_default")
    saved = saved_model_pb2.SavedModel.FromString(pb.read_bytes())
    (node,) = [
        n for f in saved.meta_graphs[0].graph_def.library.function for n in f.node_def if "then_branch" in n.attr
    ]
    node.attr["then_branch"].func.name = "ReadFile"
    pb.write_bytes(saved.SerializeToString())
    why, _ = saved_model_refusal(str(pb))
    assert why is not None and why.startswith(f"op ReadFile (node {node.name!r} in function '__inference_serve_"), why
    assert f"is called as a function by {node.op}" in why


# -- read through the daemon's held files (ckptwatch.formats.held) ------------------------------------------


@pytest.mark.parametrize("deleted", [False, True], ids=["present", "deleted"])
def test_a_held_savedmodel_with_assets_is_checked_where_it_really_lies(ordinary, tmp_path, deleted):
    """Read through stand-ins (links to held descriptors), its own assets are still its own --
    also once CheckpointManager-style deletion removed the directory -- and an asset that links
    out of assets/ is still refused."""
    from ckptwatch.daemon.discovery import find_candidates
    from ckptwatch.daemon.holding import Holder
    from ckptwatch.model.checks import add_model_checks as model_checks
    from ckptwatch.verify.request import VerifyRequest
    from ckptwatch.verify.verification import verify_checkpoint

    source, probe = ordinary["vocabulary"]
    for linked in (False, True):
        run = tmp_path / f"run-{linked}"
        run.mkdir()
        shutil.copytree(source, run / "5")
        if linked:
            (asset,) = (run / "5" / "assets").iterdir()
            asset.unlink()
            asset.symlink_to("/etc/hostname")
        (c,) = find_candidates("run", str(run))
        held = Holder().hold(c)
        assert held is not None
        if deleted:
            shutil.rmtree(run / "5")
        request = VerifyRequest(c.path, model=ModelSpec(probe=probe), held=held.stand_ins(), discovered=True)
        try:
            report = verify_checkpoint(request, None, model_checks).report.to_dict()
        finally:
            held.close()
        if not linked:
            assert report["verdict"] in ("pass", "warn"), report["findings"]
            assert not unsafe(report) and report["model"]["source"] == "saved_model", report["findings"]
            assert report["checkpoint"]["path"].startswith(c.path)
        elif not deleted:
            (message,) = unsafe(report)
            assert "resolves outside the assets/ directory" in message, message
        else:  # the link itself is gone with the directory (links are never held): not read, not run
            assert report["verdict"] in ("fail", "error") or unsafe(report), report["findings"]
