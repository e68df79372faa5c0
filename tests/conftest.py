"""Shared fixtures: the real `ckptwatch` CLI in a subprocess, and small checkpoints
written by real TensorFlow / Keras (session-scoped, built once per test run).

Nothing here is mocked: every checkpoint is written by TF's own writers
(CheckpointManager, Checkpoint.write, TF1 Saver, tf.saved_model.save, sharding
policies), and tests compare ckptwatch's view with `tf.train.load_checkpoint`.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import json
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
try:
    import ckptwatch  # noqa: F401
except ImportError:  # run without an installed package
    sys.path.insert(0, str(ROOT))

from tests.tools import save_scaler_model  # noqa: E402  (after the path is set)

ATTR = "/.ATTRIBUTES/VARIABLE_VALUE"


# -- the CLI ----------------------------------------------------------------------------------


class CliResult(NamedTuple):
    returncode: int
    stdout: str
    stderr: str

    def json(self) -> dict:
        return json.loads(self.stdout)


def _cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env.pop("CKPTWATCH_DEBUG", None)  # errors must be one line, never a traceback
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def _runner(prefix: list[str]):
    env = _cli_env()

    def run(*args: Any, timeout: float = 300) -> CliResult:
        p = subprocess.run(
            [*prefix, *map(str, args)], capture_output=True, text=True, timeout=timeout, env=env, cwd=ROOT, check=False
        )
        return CliResult(p.returncode, p.stdout, p.stderr)

    return run


@pytest.fixture(scope="session")
def run_cli():
    """run_cli(*args) -> (returncode, stdout, stderr) of `python -m ckptwatch ARGS`."""
    return _runner([sys.executable, "-m", "ckptwatch"])


@pytest.fixture(scope="session")
def run_python():
    """run_python(code, *argv) -> CliResult of a fresh interpreter running `code`."""
    run = _runner([sys.executable, "-c"])
    return lambda code, *argv, timeout=300: run(code, *argv, timeout=timeout)


# -- TensorFlow helpers ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def tf():
    import tensorflow as tf

    return tf


@pytest.fixture(scope="session")
def keras(tf):
    import keras

    return keras


@pytest.fixture(scope="session")
def ckpt_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ckpts")


def copy_checkpoint(prefix: str | Path, dest_dir: Path, name: str | None = None) -> str:
    """Copy `<prefix>.index` and its data shards into dest_dir; return the new prefix."""
    prefix = Path(prefix)
    dest_dir.mkdir(parents=True, exist_ok=True)
    new = dest_dir / (name or prefix.name)
    for f in prefix.parent.iterdir():
        if f.name.startswith(prefix.name + ".") and (f.name.endswith(".index") or ".data-" in f.name):
            shutil.copy(f, str(new) + f.name[len(prefix.name) :])
    return str(new)


@pytest.fixture(scope="session")
def copy_ckpt():
    return copy_checkpoint


def tf_tensors(tf, prefix: str) -> dict[str, np.ndarray]:
    reader = tf.train.load_checkpoint(prefix)
    return {k: reader.get_tensor(k) for k in reader.get_variable_to_shape_map()}


def key_of(tf, prefix: str, value: np.ndarray, exclude: tuple[str, ...] = ()) -> str:
    """The one key in the checkpoint holding exactly `value` (found by TF, not ckptwatch)."""
    value = np.asarray(value)
    hits = [
        k for k, v in tf_tensors(tf, prefix).items()
        if k not in exclude and np.shape(v) == value.shape and np.asarray(v).dtype == value.dtype
        and np.array_equal(v, value)
    ]  # fmt: skip
    assert len(hits) == 1, f"expected one key holding that value in {prefix}, found {hits}"
    return hits[0]


# -- Keras training run (TF2 object-based checkpoints via CheckpointManager) -----------------------


@dataclass
class KerasRun:
    dir: Path
    untrained: str  # ckpt-1: saved before the first step (optimizer not built yet)
    previous: str  # ckpt-2: after 5 epochs
    candidate: str  # ckpt-3: one more epoch (a normal training step)
    duplicate: str  # ckpt-4: saved again without training
    reset: str  # same architecture, freshly initialised (another seed), optimizer built
    nan: str  # ckpt-3's state with NaN assigned into one kernel
    nan_count: int
    exact_copy: str  # ckpt-3's files copied elsewhere
    perturbed: str  # ckpt-3's state with 1e-3 noise added to one kernel
    added_layer: str  # the same model with one more Dense layer at the end
    kernels: dict[str, str]  # layer name -> key of its kernel in ckpt-3
    biases: dict[str, str]
    added_keys: set[str]  # keys of the added layer's kernel and bias in `added_layer`
    noisy_layer: str = "hidden"
    nan_layer: str = "head"


def _data(n: int = 64):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 8)).astype("float32"), rng.normal(size=(n, 4)).astype("float32")


def _keras_model(keras, seed: int, *, frozen: bool = False, extra: bool = False):
    keras.utils.set_random_seed(seed)
    layers = [
        keras.Input((8,)),
        keras.layers.Dense(16, activation="relu", name="dense_in"),
        keras.layers.Dense(16, activation="relu", name="hidden", trainable=not frozen),
        keras.layers.Dense(4, name="head"),
    ]
    if extra:
        layers.append(keras.layers.Dense(4, name="extra"))
    model = keras.Sequential(layers)
    opt = keras.optimizers.Adam(1e-2)
    model.compile(optimizer=opt, loss="mse")
    return model, opt


@pytest.fixture(scope="session")
def keras_run(tf, keras, ckpt_root: Path) -> KerasRun:
    x, y = _data()
    d = ckpt_root / "keras_run"
    model, opt = _keras_model(keras, 0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
    mgr = tf.train.CheckpointManager(ckpt, str(d), max_to_keep=10)
    untrained = mgr.save()
    model.fit(x, y, batch_size=16, epochs=5, verbose=0)
    previous = mgr.save()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    candidate = mgr.save()
    duplicate = mgr.save()

    kernels = {n: key_of(tf, candidate, model.get_layer(n).kernel.numpy()) for n in ("dense_in", "hidden", "head")}
    biases = {n: key_of(tf, candidate, model.get_layer(n).bias.numpy()) for n in ("dense_in", "hidden", "head")}

    # NaN assigned into one kernel, then saved
    head = model.get_layer("head").kernel
    saved = head.numpy()
    poisoned = saved.copy()
    poisoned[0, 0] = poisoned[3, 2] = poisoned[7, 1] = np.nan
    head.assign(poisoned)
    nan = ckpt.write(str(d.parent / "keras_nan" / "ckpt"))
    head.assign(saved)

    # a replica that differs by small noise in one kernel
    hidden = model.get_layer("hidden").kernel
    saved_hidden = hidden.numpy()
    noise = np.random.default_rng(1).normal(scale=1e-3, size=saved_hidden.shape).astype("float32")
    hidden.assign(saved_hidden + noise)
    perturbed = ckpt.write(str(d.parent / "keras_perturbed" / "ckpt-3"))
    hidden.assign(saved_hidden)

    exact_copy = copy_checkpoint(candidate, d.parent / "keras_copy")

    # reset: same architecture, fresh initialisation; build the optimizer so keys line up
    fresh, fresh_opt = _keras_model(keras, 1)
    fresh_opt.build(fresh.trainable_variables)
    reset = tf.train.Checkpoint(model=fresh, optimizer=fresh_opt).write(str(d.parent / "keras_reset" / "ckpt-5"))

    # a layer added at the end of the model
    bigger, bigger_opt = _keras_model(keras, 0, extra=True)
    bigger.fit(x, y, batch_size=16, epochs=1, verbose=0)
    added = tf.train.Checkpoint(model=bigger, optimizer=bigger_opt).write(str(d.parent / "keras_added" / "ckpt-1"))
    extra = bigger.get_layer("extra")
    added_keys = {key_of(tf, added, extra.kernel.numpy()), key_of(tf, added, extra.bias.numpy())}

    return KerasRun(
        dir=d,
        untrained=untrained,
        previous=previous,
        candidate=candidate,
        duplicate=duplicate,
        reset=reset,
        nan=nan,
        nan_count=3,
        exact_copy=exact_copy,
        perturbed=perturbed,
        added_layer=added,
        kernels=kernels,
        biases=biases,
        added_keys=added_keys,
    )


# keys of a Keras 3 Checkpoint(model=..., optimizer=...) that are not model weights
NOT_MODEL_WEIGHTS = ("_", "save_counter", "optimizer/_variables/", "optimizer/_iterations", "optimizer/_learning_rate")


@dataclass
class FrozenRun:
    previous: str
    candidate: str
    frozen_kernel: str  # key of the frozen layer's kernel
    frozen_keys: set[str]  # every weight key whose value did not change (found with TF)


@pytest.fixture(scope="session")
def frozen_run(tf, keras, ckpt_root: Path) -> FrozenRun:
    """`hidden` has trainable=False: it must not move between two checkpoints."""
    x, y = _data()
    model, opt = _keras_model(keras, 2, frozen=True)
    ckpt = tf.train.Checkpoint(model=model, optimizer=opt)
    mgr = tf.train.CheckpointManager(ckpt, str(ckpt_root / "keras_frozen"), max_to_keep=5)
    model.fit(x, y, batch_size=16, epochs=3, verbose=0)
    previous = mgr.save()
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    candidate = mgr.save()
    kernel = key_of(tf, candidate, model.get_layer("hidden").kernel.numpy())
    before, after = tf_tensors(tf, previous), tf_tensors(tf, candidate)
    unchanged = {
        k for k, v in after.items()
        if not k.startswith(NOT_MODEL_WEIGHTS)
        and np.asarray(v).dtype.kind == "f" and np.array_equal(v, before[k])
    }  # fmt: skip
    assert kernel in unchanged and len(unchanged) == 2, unchanged  # the frozen kernel and bias
    return FrozenRun(previous, candidate, kernel, unchanged)


# -- TF1 graph-mode Saver (name-based checkpoints) ------------------------------------------------

TF1_VARIABLES = {"dense/kernel": [8, 16], "dense/bias": [16], "out/kernel": [16, 4], "out/bias": [4]}


def tf1_save(tf, directory: Path, scope: str, steps: tuple[int, ...], seed: int = 0) -> list[str]:
    """Build a TF1 graph under variable_scope(scope) and save it with Saver at each step."""
    graph = tf.Graph()
    prefixes = []
    with graph.as_default():
        tf.compat.v1.set_random_seed(seed)
        with tf.compat.v1.variable_scope(scope):
            variables = [
                tf.compat.v1.get_variable(name, shape, initializer=tf.compat.v1.glorot_uniform_initializer(seed=seed))
                for name, shape in TF1_VARIABLES.items()
            ]
        step = tf.compat.v1.train.get_or_create_global_step()
        bump = [v.assign_add(tf.fill(v.shape, 0.01)) for v in variables] + [step.assign_add(1)]
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session(graph=graph) as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            for s in steps:
                sess.run(bump)
                prefixes.append(saver.save(sess, str(directory / "model.ckpt"), global_step=s))
    return prefixes


@dataclass
class Tf1Scopes:
    old_dir: Path
    old: list[str]  # model_scope/..., steps 100 and 200
    renamed: str  # different_model_scope/..., step 300


@pytest.fixture(scope="session")
def tf1_scopes(tf, ckpt_root: Path) -> Tf1Scopes:
    old_dir = ckpt_root / "tf1_old"
    old = tf1_save(tf, old_dir, "model_scope", (100, 200))
    (renamed,) = tf1_save(tf, ckpt_root / "tf1_new", "different_model_scope", (300,))
    return Tf1Scopes(old_dir, old, renamed)


# -- TF2 modules ---------------------------------------------------------------------------------------


@dataclass
class AttrRename:
    old: str
    new: str


@pytest.fixture(scope="session")
def tf2_attr_rename(tf, ckpt_root: Path) -> AttrRename:
    """A tf.Module whose `encoder` attribute became `enc` between two checkpoints."""

    class Block(tf.Module):
        def __init__(self, n_in: int, n_out: int, seed: int):
            super().__init__()
            self.w = tf.Variable(tf.random.stateless_normal([n_in, n_out], seed=[seed, 0]))
            self.b = tf.Variable(tf.random.stateless_normal([n_out], seed=[seed, 1]))

    class Net(tf.Module):
        def __init__(self, attr: str):
            super().__init__()
            setattr(self, attr, Block(8, 16, 1))
            self.head = Block(16, 4, 2)

    old = tf.train.Checkpoint(net=Net("encoder")).write(str(ckpt_root / "tf2_attr_old" / "ckpt-1"))
    new = tf.train.Checkpoint(net=Net("enc")).write(str(ckpt_root / "tf2_attr_new" / "ckpt-2"))
    return AttrRename(old, new)


@dataclass
class Written:
    """A checkpoint: the path given to ckptwatch and the prefix TF reads."""

    path: str
    tf_prefix: str
    extra: dict = field(default_factory=dict)


@pytest.fixture(scope="session")
def manager_dir(tf, ckpt_root: Path) -> Written:
    """A CheckpointManager directory with three saves; `checkpoint` names the latest."""

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.random.stateless_normal([6, 5], seed=[3, 0]))
            self.bias = tf.Variable(tf.zeros([5]))
            self.step = tf.Variable(0, dtype=tf.int64)

    m = M()
    d = ckpt_root / "tf2_manager"
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(module=m), str(d), max_to_keep=2)
    for _ in range(3):
        m.kernel.assign_add(tf.ones_like(m.kernel))
        m.step.assign_add(1)
        latest = mgr.save()
    return Written(str(d), latest, {"latest": latest})


@pytest.fixture(scope="session")
def plain_write(tf, ckpt_root: Path) -> Written:
    """Checkpoint.write without a manager: no `checkpoint` state file."""

    class M(tf.Module):
        def __init__(self):
            super().__init__()
            self.table = tf.Variable(tf.random.stateless_uniform([13, 7], seed=[4, 0]))
            self.scale = tf.Variable(2.5)

    prefix = tf.train.Checkpoint(m=M()).write(str(ckpt_root / "tf2_plain" / "weights"))
    return Written(prefix, prefix)


@pytest.fixture(scope="session")
def dtype_zoo(tf, ckpt_root: Path) -> Written:
    """Variables of many dtypes, odd shapes, a scalar, an empty tensor and a string."""
    rng = np.random.default_rng(5)

    class Zoo(tf.Module):
        def __init__(self):
            super().__init__()
            normal = rng.normal(size=(5, 7)).astype("float32")
            self.f16 = tf.Variable(tf.constant(normal, tf.float16))
            self.bf16 = tf.Variable(tf.cast(tf.constant(normal), tf.bfloat16))
            self.f64 = tf.Variable(rng.normal(size=(3, 4, 5)))
            self.i8 = tf.Variable(tf.constant(rng.integers(-128, 127, size=(11,)), tf.int8))
            self.u8 = tf.Variable(tf.constant(rng.integers(0, 255, size=(4, 3)), tf.uint8))
            self.i16 = tf.Variable(tf.constant(rng.integers(-30000, 30000, size=(9,)), tf.int16))
            self.i32 = tf.Variable(tf.constant(rng.integers(-(2**31), 2**31 - 1, size=(2, 9)), tf.int32))
            self.i64 = tf.Variable(tf.constant(rng.integers(-(2**62), 2**62, size=(6,)), tf.int64))
            self.flag = tf.Variable(tf.constant(rng.random(13) > 0.5))
            self.c64 = tf.Variable(tf.complex(normal[:2], normal[2:4]))
            self.scalar = tf.Variable(3.25)
            self.empty = tf.Variable(tf.zeros([0, 3]))
            self.text = tf.Variable("a string variable")

    prefix = tf.train.Checkpoint(zoo=Zoo()).write(str(ckpt_root / "tf2_dtypes" / "ckpt-7"))
    return Written(prefix, prefix)


@pytest.fixture(scope="session")
def saved_model(tf, ckpt_root: Path) -> Written:
    d = ckpt_root / "savedmodel"
    save_scaler_model(tf, d)
    return Written(str(d), str(d / "variables" / "variables"))


def _sharded_module(tf, seed: int):
    class Sharded(tf.Module):
        def __init__(self):
            super().__init__()
            self.a = tf.Variable(tf.random.stateless_normal([64, 64], seed=[seed, 0]))
            self.b = tf.Variable(tf.random.stateless_normal([64, 64], seed=[seed, 1]))
            self.c = tf.Variable(tf.random.stateless_normal([64, 64], seed=[seed, 2]))
            self.d = tf.Variable(tf.cast(tf.random.stateless_normal([128, 64], seed=[seed, 3]), tf.float16))

    return Sharded()


def _shard_options(tf, max_bytes: int):
    return tf.train.CheckpointOptions(
        experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(max_shard_size=max_bytes)
    )


@pytest.fixture(scope="session")
def sharded(tf, ckpt_root: Path) -> Written:
    """Several `.data-K-of-N` shards, each tensor whole (shard size = one tensor's bytes)."""
    m = _sharded_module(tf, 7)
    options = _shard_options(tf, 64 * 64 * 4)
    prefix = tf.train.Checkpoint(m=m).write(str(ckpt_root / "tf2_sharded" / "ckpt-1"), options=options)
    return Written(prefix, prefix)


@dataclass
class SlicedRun:
    previous: str
    candidate: str  # a training-like step, and NaN in a tensor TF split across shards
    sliced_key: str


@pytest.fixture(scope="session")
def sliced_sharding(tf, ckpt_root: Path) -> SlicedRun:
    """MaxShardSizePolicy with a shard size that is not a multiple of the tensor size:
    TF 2.21 then splits tensors into slices spread over several shards."""
    m = _sharded_module(tf, 8)
    ckpt = tf.train.Checkpoint(m=m)
    opts = _shard_options(tf, 20000)
    previous = ckpt.write(str(ckpt_root / "tf2_sliced" / "ckpt-1"), options=opts)
    for v in (m.a, m.b, m.c):
        v.assign_add(tf.random.stateless_normal(v.shape, seed=[9, 9]) * 0.01)
    c = m.c.numpy()
    c[:3] = np.nan
    m.c.assign(c)
    candidate = ckpt.write(str(ckpt_root / "tf2_sliced" / "ckpt-2"), options=opts)
    return SlicedRun(previous, candidate, "m/c" + ATTR)


@pytest.fixture(scope="session")
def small_module(tf, ckpt_root: Path) -> Written:
    """A small TF2 checkpoint to corrupt: several float tensors in one shard."""

    class Small(tf.Module):
        def __init__(self):
            super().__init__()
            self.embedding = tf.Variable(tf.random.stateless_normal([50, 8], seed=[10, 0]))
            self.kernel = tf.Variable(tf.random.stateless_normal([8, 16], seed=[10, 1]))
            self.bias = tf.Variable(tf.random.stateless_normal([16], seed=[10, 2]))

    prefix = tf.train.Checkpoint(model=Small()).write(str(ckpt_root / "small" / "ckpt-1"))
    return Written(prefix, prefix)


@pytest.fixture(scope="module")
def op_determinism_off_afterwards():
    """For modules that run model checks in this process: they enable TF's op determinism
    (process-wide, as in the worker), after which later tests' unseeded TF1 random ops raise."""
    yield
    from tensorflow.python.framework import config

    config.disable_op_determinism()
