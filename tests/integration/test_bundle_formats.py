"""The bundle reader against checkpoints written by real TensorFlow: every name,
shape, dtype and value must match what `tf.train.load_checkpoint` sees."""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest

from ckptwatch.formats import open_checkpoint
from ckptwatch.formats.base import META, OPTIMIZER, WEIGHT
from ckptwatch.formats.bundle import BundleSource

CHUNK = 5  # tiny: every tensor bigger than 5 elements comes in several chunks


def streamed(src, name: str, chunk: int = CHUNK) -> tuple[bytes, int]:
    """(the tensor's bytes, number of chunks) streamed by ckptwatch, copying each
    chunk at once (readers reuse their buffer)."""
    parts = []
    for c in src.read(name, chunk):
        assert c.ndim == 1 and 0 < c.size <= chunk
        parts.append(c.tobytes())
    return b"".join(parts), len(parts)


def assert_same_as_tf(tf, path: str, tf_prefix: str) -> None:
    reader = tf.train.load_checkpoint(tf_prefix)
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    src = open_checkpoint(path)
    try:
        assert src.problems == []
        infos = {t.name: t for t in src.tensors()}
        assert set(infos) == set(shapes)
        for name, info in infos.items():
            assert list(info.shape) == list(shapes[name]), name
            assert info.dtype == dtypes[name].name, name
        numeric = [n for n, i in infos.items() if i.numeric]
        assert numeric, "nothing numeric to compare"
        for name in numeric:
            info = infos[name]
            want = np.ascontiguousarray(reader.get_tensor(name))
            got, chunks = streamed(src, name)
            assert want.dtype.itemsize * want.size == len(got), name
            assert got == want.tobytes(), f"{name}: streamed bytes differ from TF's get_tensor"
            assert info.nbytes == want.nbytes, name
            if info.size > CHUNK:
                assert chunks >= info.size // CHUNK, name
        for name in set(infos) - set(numeric):  # strings / object graph: read for the checksum
            assert infos[name].kind == META
            for _ in src.read(name, CHUNK):
                pass
        base = Path(src.path).name
        files = [f for f in Path(src.path).parent.iterdir() if f.name == f"{base}.index" or f"{base}.data-" in f.name]
        assert src.total_bytes == sum(f.stat().st_size for f in files)
    finally:
        src.close()


FIXTURES = ["manager_dir", "plain_write", "dtype_zoo", "saved_model", "sharded", "tf1_latest", "keras_candidate"]


class Paths(NamedTuple):
    path: str  # what ckptwatch is given
    tf_prefix: str  # what TF reads


@pytest.fixture(scope="module")
def tf1_latest(tf1_scopes) -> Paths:
    return Paths(str(tf1_scopes.old_dir), tf1_scopes.old[-1])


@pytest.fixture(scope="module")
def keras_candidate(keras_run) -> Paths:
    return Paths(keras_run.candidate, keras_run.candidate)


@pytest.mark.parametrize("which", FIXTURES)
def test_names_shapes_dtypes_and_values_match_tensorflow(tf, request: pytest.FixtureRequest, which: str) -> None:
    w = request.getfixturevalue(which)
    assert_same_as_tf(tf, w.path, w.tf_prefix)


def test_manager_directory_resolves_to_the_latest_checkpoint(manager_dir) -> None:
    src = open_checkpoint(manager_dir.path)
    assert src.path == os.path.abspath(manager_dir.extra["latest"])
    assert src.path.endswith("ckpt-3")
    assert src.step == 3
    assert src.format == "tf-bundle"
    assert src.problems == []


def test_tf1_saver_directory_and_state_file(tf1_scopes) -> None:
    for path in (str(tf1_scopes.old_dir), str(tf1_scopes.old_dir / "checkpoint")):
        src = open_checkpoint(path)
        assert src.path == os.path.abspath(tf1_scopes.old[-1])
        assert src.step == 200
    earlier = open_checkpoint(tf1_scopes.old[0])
    assert earlier.step == 100
    kinds = {t.name: t.kind for t in earlier.tensors()}
    assert kinds["model_scope/dense/kernel"] == WEIGHT
    assert kinds["global_step"] != WEIGHT


def test_plain_write_opens_by_prefix_and_by_index_file(plain_write) -> None:
    prefix = plain_write.path
    assert not os.path.exists(os.path.join(os.path.dirname(prefix), "checkpoint"))
    a, b = open_checkpoint(prefix), open_checkpoint(prefix + ".index")
    assert a.path == b.path == os.path.abspath(prefix)
    assert [t.name for t in a.tensors()] == [t.name for t in b.tensors()]
    assert a.step is None  # "weights" has no step number


def test_savedmodel_directory_reads_its_variables(saved_model) -> None:
    src = open_checkpoint(saved_model.path)
    assert src.format == "savedmodel"
    assert src.path == os.path.abspath(saved_model.tf_prefix)
    weights = sorted(t.display for t in src.tensors() if t.kind == WEIGHT)
    assert weights == ["b", "w"]


def test_sharded_bundle_really_has_several_shards(sharded) -> None:
    src = BundleSource(sharded.path)
    assert src.num_shards >= 3
    used = {e.shard_id for e in src._entries.values()}
    assert used == set(range(src.num_shards))
    assert not any(e.sliced for e in src._entries.values())
    for k in range(src.num_shards):
        assert os.path.isfile(f"{sharded.path}.data-{k:05d}-of-{src.num_shards:05d}")


def test_dtype_zoo_reports_each_dtype(dtype_zoo) -> None:
    src = open_checkpoint(dtype_zoo.path)
    by_display = {t.display: t for t in src.tensors()}
    want = {
        "zoo/f16": "float16", "zoo/bf16": "bfloat16", "zoo/f64": "float64", "zoo/i8": "int8", "zoo/u8": "uint8",
        "zoo/i16": "int16", "zoo/i32": "int32", "zoo/i64": "int64", "zoo/flag": "bool", "zoo/c64": "complex64",
        "zoo/scalar": "float32", "zoo/empty": "float32", "zoo/text": "string",
    }  # fmt: skip
    assert {k: by_display[k].dtype for k in want} == want
    assert by_display["zoo/text"].kind == META and not by_display["zoo/text"].numeric
    assert by_display["zoo/empty"].shape == (0, 3)
    assert by_display["zoo/scalar"].shape == ()
    assert src.step == 7


def test_keras3_kernels_saved_through_the_optimizer_are_model_weights(keras_run) -> None:
    """Checkpoint(model=m, optimizer=opt) under Keras 3 keys the model's kernels
    `optimizer/_trainable_variables/N/...`: they are still weights, named by model path."""
    src = open_checkpoint(keras_run.candidate)
    infos = {t.name: t for t in src.tensors()}
    quirky = [n for n in infos if n.startswith("optimizer/_trainable_variables/")]
    assert len(quirky) == 6  # 3 Dense layers: kernel and bias each
    assert set(quirky) == set(keras_run.kernels.values()) | set(keras_run.biases.values())
    for name in quirky:
        assert infos[name].kind == WEIGHT, name
        assert infos[name].display.startswith("model/"), infos[name].display
    slots = [t for n, t in infos.items() if n.startswith("optimizer/_variables/")]
    assert len(slots) == 12 and all(t.kind == OPTIMIZER for t in slots)
    assert infos["optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"].kind != WEIGHT
    assert infos["save_counter/.ATTRIBUTES/VARIABLE_VALUE"].kind != WEIGHT


def test_sharding_policy_really_slices_tensors(tf, sliced_sharding) -> None:
    """Precondition of the two xfail tests about sliced tensors: TF did slice them,
    including the tensor holding NaN, and TF itself reads the NaN back."""
    for prefix in (sliced_sharding.previous, sliced_sharding.candidate):
        src = BundleSource(prefix)
        assert src.num_shards > 1
        assert src._entries[sliced_sharding.sliced_key].sliced
    values = tf.train.load_checkpoint(sliced_sharding.candidate).get_tensor(sliced_sharding.sliced_key)
    assert np.isnan(values).sum() == 3 * 64


def test_tensors_sliced_by_the_sharding_policy_are_streamed(tf, sliced_sharding) -> None:
    prefix = sliced_sharding.previous
    src = BundleSource(prefix)
    sliced = sorted(n for n, e in src._entries.items() if e.sliced)
    assert sliced, "precondition: TF split some tensors into slices"
    reader = tf.train.load_checkpoint(prefix)
    compared = 0
    for name in sliced:
        got, _ = streamed(src, name)
        try:
            expected = reader.get_tensor(name)
        except ValueError as e:  # TF 2.21's own reader cannot reassemble sliced float16 ("Dtype half not supported")
            assert "half" in str(e)
            assert len(got) == src.tensors()[[t.name for t in src.tensors()].index(name)].nbytes
            continue
        assert got == np.ascontiguousarray(expected).tobytes(), name
        compared += 1
    assert compared >= 1


def test_layers_kept_in_a_python_list_are_weights_and_their_explosion_fails(tf, keras, run_cli, tmp_path: Path) -> None:
    """A subclassed model keeping layers in a plain list: their variables are outside TF's object
    graph, reachable only as `optimizer/_trainable_variables/N`. They are model weights all the
    same, so a x1000 explosion of one of them fails (it passed when they counted as optimizer state)."""

    class ListModel(keras.Model):
        def __init__(self):
            super().__init__()
            self.blocks = [keras.layers.Dense(8, activation="relu"), keras.layers.Dense(4)]
            self.head = keras.layers.Dense(1)

        def call(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    x = np.random.default_rng(0).standard_normal((32, 5)).astype("float32")
    model, opt = ListModel(), keras.optimizers.Adam(1e-2)
    model.compile(opt, "mse")
    model.fit(x, x.sum(1, keepdims=True), epochs=2, verbose=0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
    previous = ckpt.write(str(tmp_path / "run" / "ckpt-1"))
    model.fit(x, x.sum(1, keepdims=True), epochs=1, verbose=0)
    healthy = ckpt.write(str(tmp_path / "run" / "ckpt-2"))
    kernel = model.blocks[1].kernel
    kernel.assign(kernel * 1000.0)
    exploded = ckpt.write(str(tmp_path / "exploded" / "ckpt-2"))

    infos = {t.name: t for t in open_checkpoint(healthy).tensors()}
    listed = [t for n, t in infos.items() if n.startswith("optimizer/_trainable_variables/")]
    assert len(listed) == 4 and all(t.kind == WEIGHT for t in listed)  # 2 list-held Dense: kernel, bias
    assert all(t.kind == OPTIMIZER for n, t in infos.items() if n.startswith("optimizer/_variables/"))
    assert run_cli("verify", healthy, "--previous", previous).returncode == 0
    r = run_cli("verify", exploded, "--previous", previous, "--json")
    assert r.returncode == 1, r.stderr
    failed = {(f["check"], f["tensor"]) for f in r.json()["findings"] if f["severity"] == "fail"}
    assert ("drift.jump", "optimizer/_trainable_variables/2/.ATTRIBUTES/VARIABLE_VALUE") in failed, failed
