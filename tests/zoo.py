"""Small real models for the model-aware tests: factories (what an operator's
`[watch.model] factory` points at) and writers that train and save them with
TensorFlow's own savers. Importable as `zoo:NAME` with tests/ on the path.

    mlp / mlp_and_optimizer / mlp_v2_and_optimizer / mlp_model_only   Keras, object-based
    net / net_renamed                                                   tf.Module, attribute renamed
    tf1_model_scope / tf1_renamed_scope                                 TF1 variable_scope, name-based
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np

FEATURES, CLASSES, BATCH = 6, 4, 64


def probe_arrays(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A probe batch whose labels a trained mlp gets mostly right."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(BATCH, FEATURES)).astype(np.float32)
    w = np.random.default_rng(99).normal(size=(FEATURES, CLASSES))
    return x, np.argmax(x @ w, axis=1).astype(np.int64)


# -- Keras -------------------------------------------------------------------------------------


def mlp(extra: bool = False, compile: bool = True, dtype: str | None = None):
    import keras

    layers = [keras.Input((FEATURES,)), keras.layers.Dense(16, activation="relu", name="hidden", dtype=dtype)]
    if extra:
        layers.append(keras.layers.Dense(16, activation="relu", name="extra", dtype=dtype))
    layers.append(keras.layers.Dense(CLASSES, name="logits", dtype=dtype))
    model = keras.Sequential(layers, name="mlp")
    if compile:  # a compiled Keras model tracks its optimizer: Checkpoint(model=m) then holds it too
        model.compile(
            optimizer=keras.optimizers.Adam(0.05), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        )
    return model


def hangs():
    """A factory that never returns (a model check that overruns its timeout)."""
    import time

    time.sleep(3600)


def mlp_and_optimizer():
    """Mirrors the writer: tf.train.Checkpoint(model=m, optimizer=opt)."""
    m = mlp()
    return {"model": m, "optimizer": m.optimizer}


def mlp_model_only():
    """The same model without its optimizer (a serving job restoring a training checkpoint)."""
    return mlp(compile=False)


def mlp_v2_and_optimizer():
    """Version 2 of the model code: one more layer."""
    m = mlp(extra=True)
    return {"model": m, "optimizer": m.optimizer}


def train_mlp(steps: int = 30, seed: int = 0):
    import keras

    keras.utils.set_random_seed(seed)
    m = mlp()
    x, y = probe_arrays(seed + 1)
    m.fit(x, y, epochs=steps, batch_size=BATCH, verbose=0)
    return m


def save_mlp(prefix: str, steps: int = 30, seed: int = 0) -> str:
    import tensorflow as tf

    m = train_mlp(steps, seed)
    return tf.train.Checkpoint(model=m, optimizer=m.optimizer).write(prefix)


# -- tf.Module ---------------------------------------------------------------------------------


def _module_class():
    import tensorflow as tf

    class Net(tf.Module):
        def __init__(self, encoder_attr: str = "encoder"):
            super().__init__()
            init = tf.random.stateless_normal
            setattr(self, encoder_attr, tf.Variable(init((FEATURES, 16), seed=(1, 2)), name="enc"))
            self.head = tf.Variable(init((16, CLASSES), seed=(3, 4)), name="head")
            self._encoder_attr = encoder_attr

        def __call__(self, x):
            return tf.nn.relu(x @ getattr(self, self._encoder_attr)) @ self.head

    return Net


def net():
    return _module_class()()


def net_renamed():
    """The same network after a refactor renamed the `encoder` attribute to `backbone`."""
    return _module_class()("backbone")


def net_in_a_dict():
    """The job's own objects by name, as in its tf.train.Checkpoint(model=n)."""
    return {"model": net()}


def save_net(prefix: str) -> str:
    import tensorflow as tf

    n = net()
    n.encoder.assign(n.encoder * 3.0 + 0.5)  # "trained": far from any initializer
    n.head.assign(n.head * -2.0)
    return tf.train.Checkpoint(model=n).write(prefix)


# -- TF1 name-based ----------------------------------------------------------------------------


def _tf1_module(scope: str):
    import tensorflow as tf

    class Tf1Net(tf.Module):
        def __init__(self):
            super().__init__()
            self.kernel = tf.Variable(tf.zeros((FEATURES, CLASSES)), name=f"{scope}/dense/kernel")
            self.bias = tf.Variable(tf.zeros((CLASSES,)), name=f"{scope}/dense/bias")

        def __call__(self, x):
            return x @ self.kernel + self.bias

    return Tf1Net()


def tf1_model_scope():
    return _tf1_module("model_scope")


def tf1_renamed_scope():
    return _tf1_module("renamed_scope")


def save_tf1(prefix: str, scope: str = "model_scope") -> str:
    """A TF1 graph-mode Saver checkpoint of one dense layer under `scope`."""
    import tensorflow as tf

    rng = np.random.default_rng(5)
    with tf.Graph().as_default():
        with tf.compat.v1.variable_scope(scope), tf.compat.v1.variable_scope("dense"):
            tf.compat.v1.get_variable("kernel", initializer=rng.normal(size=(FEATURES, CLASSES)).astype("float32"))
            tf.compat.v1.get_variable("bias", initializer=rng.normal(size=(CLASSES,)).astype("float32"))
        saver = tf.compat.v1.train.Saver()
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, prefix, write_meta_graph=False)


# -- every scenario's files at once -------------------------------------------------------------


def _keras_model_with_lambda():
    import keras

    return keras.Sequential(
        [keras.Input((FEATURES,)), keras.layers.Lambda(lambda t: t * 2.0, name="scale"), keras.layers.Dense(CLASSES)]
    )


def save_serving_model(directory: str) -> None:
    """A SavedModel of `net` with a serving signature that returns a dict, exported in place."""
    import tensorflow as tf

    n = net()

    class Serving(tf.Module):
        def __init__(self):
            super().__init__()
            self.net = n

        @tf.function(input_signature=[tf.TensorSpec([None, FEATURES], tf.float32, name="x")])
        def serve(self, x):
            return {"logits": self.net(x)}

    s = Serving()
    tf.saved_model.save(s, directory, signatures={"serving_default": s.serve})


def build_scenarios(root: str) -> dict[str, str]:
    """Write every model-aware scenario's files under `root` with real TF/Keras; returns name -> path."""
    import tensorflow as tf

    os.makedirs(root, exist_ok=True)
    p = {name: os.path.join(root, name) for name in ("golden", "healthy", "perturbed", "nan", "net", "tf1")}
    x, y = probe_arrays(1)
    p["probe"] = os.path.join(root, "probe.npz")
    np.savez(p["probe"], x=x, y=y)
    m = train_mlp()
    ckpt = tf.train.Checkpoint(model=m, optimizer=m.optimizer)
    p["golden"] = ckpt.write(os.path.join(p["golden"], "ckpt-1"))
    kernels = [layer.kernel for layer in m.layers]
    originals = [k.numpy() for k in kernels]
    rng = np.random.default_rng(7)
    for k, v in zip(kernels, originals, strict=True):  # a few more "training steps": a tiny change
        k.assign(v + rng.normal(scale=1e-3 * v.std(), size=v.shape).astype(v.dtype))
    p["healthy"] = ckpt.write(os.path.join(p["healthy"], "ckpt-2"))
    for k, v in zip(kernels, originals, strict=True):  # same structure, different function
        k.assign(v + rng.normal(scale=1.5 * v.std(), size=v.shape).astype(v.dtype))
    p["perturbed"] = ckpt.write(os.path.join(p["perturbed"], "ckpt-2"))
    for k, v in zip(kernels, originals, strict=True):
        k.assign(v)
    bad = originals[0].copy()
    bad[0, 0] = np.nan
    kernels[0].assign(bad)
    p["nan"] = ckpt.write(os.path.join(p["nan"], "ckpt-2"))
    kernels[0].assign(originals[0])
    p["keras"] = os.path.join(root, "model.keras")
    m.save(p["keras"])
    p["weights"] = os.path.join(root, "model.weights.h5")  # Keras 3 layout, optimizer state included
    m.save_weights(p["weights"])
    p["legacy_h5"] = os.path.join(root, "legacy.h5")  # Keras 2 layout (model_weights/...)
    mlp(compile=False).save(p["legacy_h5"])
    p["float64_weights"] = os.path.join(root, "float64.weights.h5")
    mlp(compile=False, dtype="float64").save_weights(p["float64_weights"])
    p["lambda"] = os.path.join(root, "lambda.keras")
    _keras_model_with_lambda().save(p["lambda"])
    p["legacy_lambda"] = os.path.join(root, "lambda.h5")
    _keras_model_with_lambda().save(p["legacy_lambda"])
    p["net"] = save_net(os.path.join(p["net"], "ckpt-1"))
    p["tf1"] = save_tf1(os.path.join(p["tf1"], "model.ckpt"))
    p["savedmodel"] = os.path.join(root, "savedmodel")
    save_serving_model(p["savedmodel"])
    return p
