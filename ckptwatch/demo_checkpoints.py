"""Writes the demo's checkpoints with real TensorFlow (run as a child process:
`python -m ckptwatch.demo_checkpoints DIR`, so the CLI process stays TF-free).

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


if __name__ == "__main__":
    write(sys.argv[1])
