"""The healthy training runs: small models trained for real on synthetic data (CPU, seeded).

Each run writes, into its directory:
    ckpt-<step>.index/.data-*     the run, saved with tf.train.CheckpointManager (TF1: Saver)
    init/ckpt-0                   the weights before the first step (what "reset to initializer" restores)
    otherseed/ckpt-<step>         the same job restarted from scratch with another seed, at its first save
and returns the facts runs.py records in run.json.

Models are tiny on purpose (2 shared cores): what matters is that they train like real jobs do —
optimizer state, BatchNorm statistics, warm-up, mixed precision, frequent saves — so that the
drift between their checkpoints is the drift a real run shows. Every run is deterministic for a
seed (keras.utils.set_random_seed, op determinism) so a "restart with the same seed" is exactly
the run's own early checkpoint.

Runs in a child process (`python -m bench.quality.runs`): TensorFlow state (the mixed-precision
policy, graphs) never leaks from one run to the next.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# TensorFlow and Keras are imported by `load_tf()` only: importing this module is cheap.
tf = keras = None


def load_tf() -> None:
    global tf, keras
    import keras as _keras
    import tensorflow as _tf

    tf, keras = _tf, _keras
    tf.config.experimental.enable_op_determinism()


# -- data --------------------------------------------------------------------------------------


def teacher_data(seed: int, n: int = 1024, dim: int = 16, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Gaussian inputs labelled by a random linear teacher (plus label noise): learnable, not trivial."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, dim)).astype("float32")
    logits = x @ rng.normal(size=(dim, classes)) + 0.5 * rng.normal(size=(n, classes))
    return x, logits.argmax(1).astype("int32")


def image_data(seed: int, n: int = 512, size: int = 12, classes: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Noisy images of one of `classes` bars (horizontal, vertical, two diagonals)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n).astype("int32")
    x = rng.normal(scale=0.5, size=(n, size, size, 1)).astype("float32")
    for i, c in enumerate(y):
        k = rng.integers(2, size - 2)
        if c == 0:
            x[i, k, :, 0] += 2.0
        elif c == 1:
            x[i, :, k, 0] += 2.0
        elif c == 2:
            x[i, np.arange(size), np.arange(size), 0] += 2.0
        else:
            x[i, np.arange(size), size - 1 - np.arange(size), 0] += 2.0
    return x, y


def sequence_data(seed: int, n: int = 512, length: int = 10, dim: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Sequences labelled by which half of the sequence has the larger sum of feature 0."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, length, dim)).astype("float32")
    first, second = x[:, : length // 2, 0].sum(1), x[:, length // 2 :, 0].sum(1)
    y = (first > second).astype("int32") + (np.abs(first - second) < 1.0).astype("int32")
    return x, y


def token_data(seed: int, n: int = 512, length: int = 12, vocab: int = 24) -> tuple[np.ndarray, np.ndarray]:
    """Token sequences labelled by whether token 1 occurs before token 2 (needs attention to positions)."""
    rng = np.random.default_rng(seed)
    x = rng.integers(3, vocab, size=(n, length)).astype("int32")
    for row in x:
        i, j = rng.choice(length, 2, replace=False)
        row[i], row[j] = 1, 2
    y = (np.argmax(x == 1, axis=1) < np.argmax(x == 2, axis=1)).astype("int32")
    return x, y


# -- a run ---------------------------------------------------------------------------------------


@dataclass
class Job:
    """A built job: what the checkpoint holds and how to take one training step."""

    model: object  # keras.Model
    optimizer: object  # keras optimizer (the LossScaleOptimizer under mixed precision)
    step: Callable[[np.ndarray, np.ndarray], float]  # one training step on a batch; returns the loss
    data: tuple[np.ndarray, np.ndarray]
    batch: int = 32


def compiled(model, optimizer, data, batch: int = 32) -> Job:
    """A Keras model trained with compile + train_on_batch (Keras's own train step)."""
    model.compile(optimizer=optimizer, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return Job(model, model.optimizer, lambda x, y: float(model.train_on_batch(x, y)), data, batch)


def train_keras(out: Path, build: Callable[[int], Job], seed: int, save_steps: list[int]) -> dict:
    """Train `build(seed)`, saving with CheckpointManager at `save_steps` (optimizer iterations)."""
    keras.utils.set_random_seed(seed)
    job = build(seed)
    ckpt = tf.train.Checkpoint(model=job.model, optimizer=job.optimizer)
    if not job.optimizer.built:  # slots exist from the start: init/ckpt-0 has the run's keys
        job.optimizer.build(job.model.trainable_variables)
    ckpt.write(str(out / "init" / "ckpt-0"))
    manager = tf.train.CheckpointManager(ckpt, str(out), max_to_keep=None)
    rng = np.random.default_rng(seed)
    x, y = job.data
    done, losses, saved = 0, [], []
    for target in save_steps:
        while done < target:
            idx = rng.integers(0, len(x), job.batch)
            losses.append(job.step(x[idx], y[idx]))
            done += 1
        saved.append(manager.save(checkpoint_number=target))
    other = _other_seed(out, build, seed, save_steps[0])
    np.savez(out / "probe.npz", x=x[:128], y=y[:128])  # the probe batch of the model-aware checks
    return {
        "checkpoints": saved,
        "init": str(out / "init" / "ckpt-0"),
        "other_seed": other,
        "losses": _loss_summary(losses),
        "tensors": ground_truth(saved[-1], job.model, job.optimizer),
    }


def _other_seed(out: Path, build: Callable[[int], Job], seed: int, steps: int) -> str:
    """The same job restarted from scratch with another seed, saved at its first save step."""
    other = seed + 1000
    keras.utils.set_random_seed(other)
    job = build(other)
    if not job.optimizer.built:
        job.optimizer.build(job.model.trainable_variables)
    rng = np.random.default_rng(other)
    x, y = job.data
    for _ in range(steps):
        idx = rng.integers(0, len(x), job.batch)
        job.step(x[idx], y[idx])
    ckpt = tf.train.Checkpoint(model=job.model, optimizer=job.optimizer)
    return ckpt.write(str(out / "otherseed" / f"ckpt-{steps}"))


def _loss_summary(losses: list[float]) -> dict:
    head, tail = losses[: max(1, len(losses) // 10)], losses[-max(1, len(losses) // 10) :]
    return {
        "steps": len(losses),
        "first": float(np.mean(head)) if losses else None,
        "last": float(np.mean(tail)) if losses else None,
        "finite": bool(np.all(np.isfinite(losses))),
    }


def ground_truth(prefix: str, model, optimizer) -> dict[str, dict]:
    """Which checkpoint key holds which variable, and what it is (kernel, bias, moving_mean, slot...).

    The keys of an object-based checkpoint are paths in the object graph (Keras 3 keeps the
    weights under `optimizer/_trainable_variables/N`), so variables are matched to keys by
    value: same shape and identical contents. Faults pick their targets from this, not from
    ckptwatch's own classification, which is one of the things being measured."""
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    values = {k: reader.get_tensor(k) for k, s in shapes.items() if len(s) > 0}
    taken: set[str] = set()
    out: dict[str, dict] = {}

    def match(var, info: dict) -> None:
        v = np.asarray(var.numpy())
        for key, value in values.items():
            if key not in taken and value.shape == v.shape and value.dtype == v.dtype and np.array_equal(value, v):
                taken.add(key)
                out[key] = {**info, "shape": list(v.shape)}
                return

    for var in model.weights:
        path = var.path
        match(
            var,
            {
                "path": path,
                "layer": path.rsplit("/", 1)[0],
                "role": path.rsplit("/", 1)[-1],
                "trainable": bool(var.trainable),
            },
        )
    for var in optimizer.variables:
        if len(var.shape) > 0:
            match(var, {"path": var.path, "layer": "", "role": "slot", "trainable": False})
    return out


# -- TF1: a graph, variables by name, Saver -------------------------------------------------------------

TF1_LAYERS = {"hidden1": (16, 32), "hidden2": (32, 32), "logits": (32, 4)}


def train_tf1(out: Path, seed: int, save_steps: list[int]) -> dict:
    """An MLP built from tf.compat.v1 variables under variable_scope("mlp"), trained with
    MomentumOptimizer in a Session and saved with Saver(global_step=...): a TF1 job."""
    x_all, y_all = teacher_data(seed)

    def session(seed_: int):
        graph = tf.Graph()
        with graph.as_default():
            tf.compat.v1.set_random_seed(seed_)
            x = tf.compat.v1.placeholder(tf.float32, (None, 16))
            y = tf.compat.v1.placeholder(tf.int32, (None,))
            h = x
            with tf.compat.v1.variable_scope("mlp"):
                for name, (n_in, n_out) in TF1_LAYERS.items():
                    with tf.compat.v1.variable_scope(name):
                        w = tf.compat.v1.get_variable(
                            "weights", (n_in, n_out), initializer=tf.compat.v1.glorot_uniform_initializer()
                        )
                        b = tf.compat.v1.get_variable("biases", (n_out,), initializer=tf.compat.v1.zeros_initializer())
                    h = tf.matmul(h, w) + b
                    if name != "logits":
                        h = tf.nn.relu(h)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=y, logits=h))
            global_step = tf.compat.v1.train.get_or_create_global_step()
            train = tf.compat.v1.train.MomentumOptimizer(0.05, 0.9).minimize(loss, global_step=global_step)
            saver = tf.compat.v1.train.Saver(max_to_keep=None)
            sess = tf.compat.v1.Session(graph=graph)
            sess.run(tf.compat.v1.global_variables_initializer())
        return graph, sess, saver, train, loss, x, y

    def steps(sess, train, loss, x, y, rng, n) -> list[float]:
        losses = []
        for _ in range(n):
            idx = rng.integers(0, len(x_all), 32)
            losses.append(float(sess.run([train, loss], {x: x_all[idx], y: y_all[idx]})[1]))
        return losses

    graph, sess, saver, train, loss, x, y = session(seed)
    with graph.as_default(), sess:
        init = saver.save(sess, str(out / "init" / "model.ckpt"), global_step=0)
        rng = np.random.default_rng(seed)
        done, losses, saved = 0, [], []
        for target in save_steps:
            losses += steps(sess, train, loss, x, y, rng, target - done)
            done = target
            saved.append(saver.save(sess, str(out / "model.ckpt"), global_step=target))
    graph, sess, saver, *rest = session(seed + 1000)
    with graph.as_default(), sess:
        steps(sess, *rest, np.random.default_rng(seed + 1000), save_steps[0])
        other = saver.save(sess, str(out / "otherseed" / "model.ckpt"), global_step=save_steps[0])
    tensors = {}
    for name, (n_in, n_out) in TF1_LAYERS.items():
        for role, shape in (("weights", [n_in, n_out]), ("biases", [n_out])):
            key = f"mlp/{name}/{role}"
            info = {"layer": f"mlp/{name}", "trainable": True, "shape": shape}
            tensors[key] = {**info, "path": key, "role": "kernel" if role == "weights" else "bias"}
            tensors[key + "/Momentum"] = {**info, "path": key + "/Momentum", "role": "slot", "trainable": False}
    return {
        "checkpoints": saved,
        "init": init,
        "other_seed": other,
        "losses": _loss_summary(losses),
        "tensors": tensors,
    }


def timed(fn: Callable[[], dict]) -> dict:
    t0 = time.perf_counter()
    facts = fn()
    facts["train_seconds"] = round(time.perf_counter() - t0, 2)
    return facts
