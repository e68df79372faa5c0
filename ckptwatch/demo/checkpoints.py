"""Writes the demo's checkpoints with real TensorFlow (run as a child process:
`python -m ckptwatch.demo.checkpoints DIR` or `... --train RUN_DIR`, so the CLI
process stays TF-free).

DIR/run/ckpt-1..3   a small Keras model trained a little between saves
DIR/golden/ckpt-1   a copy of the first one, the known-good reference
DIR/nan/ckpt-4      the trained model with NaN in one kernel
DIR/reset/ckpt-4    a freshly initialised model: "training restarted from scratch"
DIR/corrupt/ckpt-3  ckpt-3 with one byte flipped inside a kernel (done by the caller)
"""

from __future__ import annotations

import os
import shutil
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def build(tf):
    model = tf.keras.Sequential(
        [
            tf.keras.Input((16,)),
            tf.keras.layers.Dense(64, activation="relu", name="encoder"),
            tf.keras.layers.Dense(64, activation="relu", name="hidden"),
            tf.keras.layers.Dense(4, name="head"),
        ]
    )
    optimizer = tf.keras.optimizers.Adam(1e-2)
    model.compile(optimizer, "mse")
    return model, optimizer


def write(root: str) -> None:
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(7)
    x = np.random.default_rng(0).standard_normal((256, 16)).astype("float32")
    y = np.random.default_rng(1).standard_normal((256, 4)).astype("float32")
    model, optimizer = build(tf)
    model.fit(x, y, epochs=1, verbose=0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(root, "run"), max_to_keep=5)
    first = manager.save(checkpoint_number=1)
    os.makedirs(os.path.join(root, "golden"))
    for f in os.listdir(os.path.join(root, "run")):
        if f.startswith("ckpt-1."):
            shutil.copy(os.path.join(root, "run", f), os.path.join(root, "golden", f))
    del first
    for step in (2, 3):
        model.fit(x, y, epochs=1, verbose=0)
        manager.save(checkpoint_number=step)
    kernel = model.get_layer("hidden").kernel
    kernel.assign(tf.tensor_scatter_nd_update(kernel, [[0, 0], [3, 5]], [float("nan"), float("nan")]))
    ckpt.write(os.path.join(root, "nan", "ckpt-4"))
    fresh, fresh_opt = build(tf)
    fresh.fit(x[:1], y[:1], epochs=1, verbose=0)  # creates optimizer state, one tiny step away from init
    tf.train.Checkpoint(model=fresh, optimizer=fresh_opt).write(os.path.join(root, "reset", "ckpt-4"))


def train(run_dir: str, pause: float = 0.7) -> None:
    """For the daemon demo: a training run saving with CheckpointManager, with one
    checkpoint corrupted on disk (a bit flip) and one with NaN weights."""
    import numpy as np
    import tensorflow as tf

    tf.keras.utils.set_random_seed(11)
    x = np.random.default_rng(0).standard_normal((256, 16)).astype("float32")
    y = np.random.default_rng(1).standard_normal((256, 4)).astype("float32")
    model, optimizer = build(tf)
    ckpt = tf.train.Checkpoint(model=model, optimizer=optimizer)
    manager = tf.train.CheckpointManager(ckpt, run_dir, max_to_keep=10)
    staging = run_dir.rstrip("/") + ".staging"
    for step in range(1, 8):
        model.fit(x, y, epochs=1, verbose=0)
        if step == 4:  # written elsewhere, damaged, then moved in: data first, index last, like TF commits
            prefix = ckpt.write(os.path.join(staging, f"ckpt-{step}"))
            flip_a_bit(prefix)
            for name in sorted(os.listdir(staging), key=lambda n: n.endswith(".index")):
                os.replace(os.path.join(staging, name), os.path.join(run_dir, name))
        elif step == 6:
            kernel = model.get_layer("hidden").kernel
            saved = kernel.numpy()
            kernel.assign(tf.where(tf.random.uniform(kernel.shape) < 0.01, float("nan"), kernel))
            manager.save(checkpoint_number=step)
            kernel.assign(saved)
        else:
            manager.save(checkpoint_number=step)
        print(f"saved step {step}", flush=True)
        time.sleep(pause)
    shutil.rmtree(staging, ignore_errors=True)


def flip_a_bit(prefix: str) -> str:
    """Flip one bit in the middle of the bundle's largest weight, in place; returns its label
    (what `ckptwatch verify` names in the integrity.checksum finding)."""
    from ckptwatch.formats.bundle import BundleSource

    source = BundleSource(prefix)
    target = max((t for t in source.tensors() if t.kind == "weight"), key=lambda t: t.nbytes)
    entry = source.entry(target.name)
    with open(f"{prefix}.data-{entry.shard_id:05d}-of-{source.num_shards:05d}", "r+b") as f:
        f.seek(entry.offset + entry.size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0x10]))
    return target.label


if __name__ == "__main__":
    if sys.argv[1] == "--train":
        train(sys.argv[2])
    else:
        write(sys.argv[1])
