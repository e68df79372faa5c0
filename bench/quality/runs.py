"""The healthy runs of the quality benchmark, and their cache.

    RUNS                       name -> RunSpec (the model, optimizer and save plan of each run)
    ensure_runs(root, names)   trains what is not cached yet (one child process per run)
    python -m bench.quality.runs NAME DIR     (the child: trains one run into DIR)

A run is cached under <root>/<VERSION>/runs/<name>/ with a run.json; bump VERSION when a run's
training changes, so stale checkpoints are never measured.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.quality import training as T

VERSION = "runs-2"
ROOT = Path(__file__).resolve().parents[2]


# -- the runs ---------------------------------------------------------------------------------------
# Each builder gets the model seed (keras.utils.set_random_seed has been called with it) and
# returns a training.Job. Data sets use fixed seeds: a restart with another seed sees the same data.


def _dense(*widths: int, dim: int = 16, classes: int = 4):
    keras = T.keras
    layers = [keras.Input((dim,))] + [keras.layers.Dense(w, activation="relu") for w in widths]
    return keras.Sequential([*layers, keras.layers.Dense(classes)])


def mlp_adam(seed: int) -> T.Job:
    return T.compiled(_dense(32, 32, 32), T.keras.optimizers.Adam(3e-3), T.teacher_data(7))


def cnn_bn_sgd_momentum(seed: int) -> T.Job:
    L = T.keras.layers
    x = inputs = T.keras.Input((12, 12, 1))
    for filters in (8, 16):
        x = L.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = L.ReLU()(L.BatchNormalization()(x))
        x = L.MaxPooling2D()(x) if filters == 8 else x
    x = L.Dropout(0.3)(L.GlobalAveragePooling2D()(x))
    model = T.keras.Model(inputs, L.Dense(4)(x))
    return T.compiled(model, T.keras.optimizers.SGD(0.05, momentum=0.9), T.image_data(7))


def lstm_gru_rmsprop(seed: int) -> T.Job:
    L = T.keras.layers
    model = T.keras.Sequential([T.keras.Input((10, 4)), L.LSTM(16, return_sequences=True), L.GRU(16), L.Dense(3)])
    return T.compiled(model, T.keras.optimizers.RMSprop(3e-3), T.sequence_data(7))


class _Positions:
    """A learned position embedding added to the token embeddings (a Keras layer, built lazily)."""

    @staticmethod
    def layer():
        keras = T.keras

        class PositionEmbedding(keras.layers.Layer):
            def build(self, shape):
                self.positions = self.add_weight(shape=tuple(shape[1:]), initializer="random_normal", name="positions")

            def call(self, x):
                return x + self.positions

        return PositionEmbedding()


def transformer_warmup_cosine(seed: int) -> T.Job:
    """One Transformer encoder block; AdamW with a linear warm-up from 0 and cosine decay.
    Saved at step 0 and step 1 too: the first update runs at learning rate 0 (weights do not move)."""
    L = T.keras.layers
    tokens = T.keras.Input((12,), dtype="int32")
    h = _Positions.layer()(L.Embedding(24, 16)(tokens))
    h = L.LayerNormalization()(h + L.MultiHeadAttention(2, 8)(h, h))
    h = L.LayerNormalization()(h + L.Dense(16)(L.Dense(32, activation="relu")(h)))
    model = T.keras.Model(tokens, L.Dense(2)(L.GlobalAveragePooling1D()(h)))
    schedule = T.keras.optimizers.schedules.CosineDecay(0.0, 200, warmup_target=3e-3, warmup_steps=30)
    return T.compiled(model, T.keras.optimizers.AdamW(schedule, weight_decay=0.01), T.token_data(7))


def frozen_base_new_head(seed: int, pretrain_steps: int = 100) -> T.Job:
    """A base pre-trained on another task (not saved), then frozen; a new head trained on top.
    (The model factory of the model-aware checks builds it with pretrain_steps=0: restored anyway.)"""
    keras = T.keras
    L = keras.layers
    base = keras.Sequential(
        [keras.Input((16,)), L.Dense(32, activation="relu"), L.Dense(32, activation="relu")], name="base"
    )
    pre = keras.Sequential([base, keras.layers.Dense(4)])
    job = T.compiled(pre, keras.optimizers.Adam(3e-3), T.teacher_data(11))
    x, y = job.data
    rng = np.random.default_rng(seed)
    for _ in range(pretrain_steps):
        idx = rng.integers(0, len(x), 32)
        job.step(x[idx], y[idx])
    base.trainable = False
    model = keras.Sequential([base, L.Dense(16, activation="relu"), L.Dense(3)])
    return T.compiled(model, keras.optimizers.Adam(3e-3), T.teacher_data(12, classes=3))


def large_lr_sgd(seed: int) -> T.Job:
    """Plain SGD at a learning rate near the edge of stability: big, healthy steps."""
    return T.compiled(_dense(64, 64), T.keras.optimizers.SGD(0.3), T.teacher_data(7))


def mixed_precision(seed: int) -> T.Job:
    """mixed_float16: float16 compute, float32 variables, a LossScaleOptimizer (its own state saved)."""
    keras = T.keras
    keras.mixed_precision.set_global_policy("mixed_float16")
    L = keras.layers
    model = keras.Sequential(
        [
            keras.Input((16,)),
            L.Dense(64, activation="relu"),
            L.Dense(64, activation="relu"),
            L.Dense(4, dtype="float32"),
        ]
    )
    return T.compiled(model, keras.optimizers.Adam(1e-3), T.teacher_data(7))


def subclassed_list(seed: int) -> T.Job:
    """A subclassed model keeping its layers in a Python list, trained with a custom GradientTape loop."""
    keras, tf = T.keras, T.tf

    class ListMLP(keras.Model):
        def __init__(self):
            super().__init__()
            self.blocks = [keras.layers.Dense(32, activation="relu") for _ in range(3)]
            self.head = keras.layers.Dense(4)

        def call(self, x):
            for block in self.blocks:
                x = block(x)
            return self.head(x)

    model = ListMLP()
    model(np.zeros((1, 16), "float32"))
    optimizer = keras.optimizers.SGD(0.05, momentum=0.9)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    @tf.function
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        return loss

    return T.Job(model, optimizer, lambda x, y: float(step(x, y)), T.teacher_data(7))


def every_step_adam(seed: int) -> T.Job:
    """Saved after every step (save_freq=1): consecutive checkpoints differ by one update."""
    return T.compiled(_dense(16, dim=8, classes=2), T.keras.optimizers.Adam(1e-2), T.teacher_data(7, dim=8, classes=2))


@dataclass(frozen=True)
class RunSpec:
    name: str
    description: str
    save_steps: tuple[int, ...]
    build: Callable[[int], T.Job] | None  # None: the TF1 Saver run
    seed: int = 0


def _every(n: int, count: int) -> tuple[int, ...]:
    return tuple(n * (i + 1) for i in range(count))


RUNS: dict[str, RunSpec] = {
    s.name: s
    for s in [
        RunSpec("mlp_adam", "MLP 16-32-32-32-4, Adam 3e-3, save every 20 steps", _every(20, 16), mlp_adam),
        RunSpec("cnn_bn_sgdm", "CNN, BatchNorm + Dropout, SGD momentum 0.9", _every(20, 12), cnn_bn_sgd_momentum),
        RunSpec("lstm_gru", "LSTM + GRU, RMSprop", _every(20, 10), lstm_gru_rmsprop),
        RunSpec(
            "transformer_warmup",
            "Transformer block, AdamW, warm-up from 0 + cosine; saves at 0, 1, 2, ...",
            (0, 1, 2, 5, 10, 20, 40, 60, 80, 120, 160, 200),
            transformer_warmup_cosine,
        ),
        RunSpec(
            "frozen_base",
            "pre-trained base frozen (trainable=False) + new head, Adam",
            _every(20, 10),
            frozen_base_new_head,
        ),
        RunSpec("large_lr_sgd", "MLP, plain SGD at learning rate 0.3 (large, healthy)", _every(15, 14), large_lr_sgd),
        RunSpec(
            "mixed_float16", "MLP under the mixed_float16 policy, LossScaleOptimizer", _every(20, 10), mixed_precision
        ),
        RunSpec(
            "subclassed_list",
            "subclassed model, layers in a Python list, GradientTape loop, SGD momentum",
            _every(20, 12),
            subclassed_list,
        ),
        RunSpec("tf1_saver", "TF1 graph (variable_scope, MomentumOptimizer), tf.compat.v1 Saver", _every(20, 14), None),
        RunSpec("every_step", "small MLP, Adam 1e-2, saved after every step", _every(1, 20), every_step_adam),
    ]
}


# -- the cache ----------------------------------------------------------------------------------------


@dataclass
class Run:
    name: str
    description: str
    dir: Path
    checkpoints: list[str]  # prefixes, in step order
    steps: list[int]
    init: str
    other_seed: str
    tensors: dict[str, dict]  # checkpoint key -> ground truth (path, layer, role, trainable, shape)
    losses: dict
    train_seconds: float

    def layer_of(self, key: str) -> list[str]:
        """The keys of the trainable variables of the layer that holds `key` (kernel and bias)."""
        layer = self.tensors[key]["layer"]
        return [k for k, t in self.tensors.items() if t["layer"] == layer and t["role"] != "slot" and t["trainable"]]


def run_dir(root: Path, name: str) -> Path:
    return root / VERSION / "runs" / name


def load_run(root: Path, name: str) -> Run | None:
    d = run_dir(root, name)
    try:
        facts = json.loads((d / "run.json").read_text())
    except (OSError, ValueError):
        return None
    if facts.get("version") != VERSION:
        return None
    return Run(
        name=name,
        description=RUNS[name].description,
        dir=d,
        checkpoints=[str(d / p) for p in facts["checkpoints"]],
        steps=list(RUNS[name].save_steps),
        init=str(d / facts["init"]),
        other_seed=str(d / facts["other_seed"]),
        tensors=facts["tensors"],
        losses=facts["losses"],
        train_seconds=facts["train_seconds"],
    )


def child_env() -> dict[str, str]:
    """Children import this tree (bench and ckptwatch) first, on the CPU, quietly."""
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "TF_CPP_MIN_LOG_LEVEL": "2"}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def ensure_runs(root: Path, names: list[str], force: bool = False, log=print) -> dict[str, Run]:
    runs: dict[str, Run] = {}
    for name in names:
        run = None if force else load_run(root, name)
        if run is None:
            log(f"training {name} ({RUNS[name].description}) ...")
            d = run_dir(root, name)
            subprocess.run([sys.executable, "-m", "bench.quality.runs", name, str(d)], env=child_env(), check=True)
            run = load_run(root, name)
            assert run is not None, f"{name}: training wrote no run.json"
            log(
                f"  {len(run.checkpoints)} checkpoints in {run.train_seconds:.1f} s, loss {run.losses['first']:.3f}"
                f" -> {run.losses['last']:.3f}"
            )
        runs[name] = run
    return runs


def train_one(name: str, out: Path) -> None:
    """The child: train RUNS[name] into `out` and write run.json last (so a crash leaves no cache)."""
    spec = RUNS[name]
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    T.load_tf()
    steps = list(spec.save_steps)
    if spec.build is None:
        facts = T.timed(lambda: T.train_tf1(out, spec.seed, steps))
    else:
        build = spec.build
        facts = T.timed(lambda: T.train_keras(out, build, spec.seed, steps))
    if not facts["losses"]["finite"] or facts["losses"]["last"] >= facts["losses"]["first"]:
        raise SystemExit(f"{name}: not a healthy run: loss {facts['losses']}")
    rel = {k: os.path.relpath(facts[k], out) for k in ("init", "other_seed")}
    doc = {
        "version": VERSION,
        "name": name,
        "checkpoints": [os.path.relpath(p, out) for p in facts["checkpoints"]],
        **rel,
        "tensors": facts["tensors"],
        "losses": facts["losses"],
        "train_seconds": facts["train_seconds"],
    }
    (out / "run.json").write_text(json.dumps(doc, indent=1))


if __name__ == "__main__":
    train_one(sys.argv[1], Path(sys.argv[2]))
