"""Seed files for the fuzzer, written with TensorFlow and Keras' own savers (small models).

    python -m bench.fuzz.seeds DIR      writes DIR/<kind>/... (run in its own process: it imports TF)

Layout: bundle/ (a CheckpointManager directory: `checkpoint`, ckpt-1, ckpt-2; a Keras model with
its optimizer), module/ (a tf.Module bundle with int, bool and string variables), m.weights.h5,
m.h5 (legacy), m.keras, savedmodel/ (tf.saved_model.save), fp.json, fp.json.gz and fp.fp (v1 and v3
fingerprints of bundle/ckpt-2, written by `ckptwatch fingerprint`), fp.v2.fp (the same in v2),
config.toml.
"""

from __future__ import annotations

import os
import subprocess
import sys

CONFIG = """\
[daemon]
listen = "127.0.0.1:9847"
state_dir = "state"
log_format = "json"
poll_interval = 1.0
queue_limit = 8
job_timeout = 900.0

[worker]
devices = ["cpu"]
threads = 2

[[watch]]
name = "run7"
path = "bundle"
profile = "training"
include = ["ckpt-*"]
exclude = ["*-tmp*"]

[watch.policy]
include_optimizer = false
exclude = ["*/moving_variance"]
max_jump = 1.0
"""


def _tf_seeds(out: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    import keras
    import numpy as np
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(8, activation="relu", name="hidden"),
            keras.layers.Dense(3, name="logits"),
        ]
    )
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x = np.random.default_rng(0).normal(size=(32, 6)).astype("float32")
    y = (x[:, 0] > 0).astype("int64")
    model.fit(x, y, epochs=1, verbose=0)
    ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
    manager = tf.train.CheckpointManager(ckpt, os.path.join(out, "bundle"), max_to_keep=2)
    manager.save()
    model.fit(x, y, epochs=1, verbose=0)
    manager.save()
    model.save_weights(os.path.join(out, "m.weights.h5"))
    model.save(os.path.join(out, "m.h5"))
    model.save(os.path.join(out, "m.keras"))

    module = tf.Module()
    module.count = tf.Variable(np.arange(5, dtype=np.int64))
    module.flags = tf.Variable([True, False, True])
    module.words = tf.Variable([b"alpha", b"beta", b""])
    module.half = tf.Variable(np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4))
    tf.train.Checkpoint(module=module).write(os.path.join(out, "module", "ckpt"))

    serve = tf.Module()
    serve.w = tf.Variable(np.ones((6, 3), dtype=np.float32))
    serve.f = tf.function(
        lambda v: tf.nn.relu(tf.matmul(v, serve.w)), input_signature=[tf.TensorSpec([None, 6], tf.float32)]
    )
    tf.saved_model.save(serve, os.path.join(out, "savedmodel"), signatures=serve.f)


def generate(out: str) -> None:
    os.makedirs(out, exist_ok=True)
    _tf_seeds(out)
    fingerprint_seeds(out)
    with open(os.path.join(out, "config.toml"), "w") as f:
        f.write(CONFIG)
    os.makedirs(os.path.join(out, "state"), exist_ok=True)
    with open(os.path.join(out, "DONE"), "w") as f:
        f.write("ok\n")


FINGERPRINTS = ("fp.json", "fp.json.gz", "fp.fp", "fp.v2.fp")


def fingerprint_seeds(out: str) -> None:
    """The fingerprints of bundle/ckpt-2: v1 JSON (plain, gzip'd) and v3 written by `ckptwatch
    fingerprint`, and fp.v2.fp: fp.fp written again in the v2 encoding (what ckptwatch wrote
    before v3)."""
    from ckptwatch.verify import fingerprint

    for name in ("fp.json", "fp.json.gz", "fp.fp"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "ckptwatch",
                "fingerprint",
                os.path.join(out, "bundle", "ckpt-2"),
                "-o",
                os.path.join(out, name),
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    source = fingerprint.FingerprintSource(os.path.join(out, "fp.fp"))
    entries = [(i, source.stats(i.name), source.sketch(i.name)) for i in source.tensors()]
    fingerprint.write_fingerprint(os.path.join(out, "fp.v2.fp"), source.checkpoint, entries, version=2)


def ensure(out: str) -> str:
    """Generate the seeds into `out` unless a complete set is there (cached); returns `out`."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    if not os.path.exists(os.path.join(out, "DONE")):
        subprocess.run([sys.executable, "-m", "bench.fuzz.seeds", os.path.abspath(out)], check=True, cwd=root, env=env)
    elif not all(os.path.exists(os.path.join(out, name)) for name in FINGERPRINTS):  # seeds cached before v3
        code = "import sys; from bench.fuzz.seeds import fingerprint_seeds; fingerprint_seeds(sys.argv[1])"
        subprocess.run([sys.executable, "-c", code, os.path.abspath(out)], check=True, cwd=root, env=env)
    return out


if __name__ == "__main__":
    generate(sys.argv[1])
