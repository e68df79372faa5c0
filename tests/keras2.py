"""Files as Keras 2 (tf.keras, TF <= 2.15) wrote them, written by tf-keras (Keras 2 for TF 2.16+)
in a process of their own, so the test process keeps Keras 3 alone:

    python -c "from tests.keras2 import write; write(ROOT)"

ROOT/savedmodel        `model.save(..., save_format="tf")` of a trained model with an OptimizerV2
                       (the Keras 2 optimizer of TF <= 2.10, `tf_keras.optimizers.legacy`): its slot
                       variables are what TF 2.16+ cannot revive without tf-keras
ROOT/lstm.h5           a legacy full-model `.h5` Keras 3 cannot build (an LSTM's `time_major`)
ROOT/custom.h5         a legacy `.h5` with a custom layer class (`Scale`, not registered)
ROOT/registered.h5     the same with a class registered as `myproj>Shift`
ROOT/probe.npz         x for the first three
"""

from __future__ import annotations

import os

FEATURES = 4


def write(root: str) -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import numpy as np
    import tf_keras

    tf_keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, FEATURES)).astype("float32")
    y = rng.normal(size=(16, 3)).astype("float32")
    np.savez(os.path.join(root, "probe.npz"), x=x[:8])

    m = tf_keras.Sequential([tf_keras.Input((FEATURES,)), tf_keras.layers.Dense(8, activation="relu"),
                             tf_keras.layers.Dense(3)])  # fmt: skip
    m.compile(optimizer=tf_keras.optimizers.legacy.Adam(1e-2), loss="mse")
    m.fit(x, y, epochs=2, verbose=0)
    m.save(os.path.join(root, "savedmodel"), save_format="tf")

    i = tf_keras.Input((FEATURES,))
    h = tf_keras.layers.Reshape((FEATURES, 1))(i)
    h = tf_keras.layers.LSTM(5)(h)
    lstm = tf_keras.Model(i, tf_keras.layers.Dense(3)(h))
    lstm.compile(optimizer="adam", loss="mse")
    lstm.fit(x, y, epochs=1, verbose=0)
    lstm.save(os.path.join(root, "lstm.h5"), save_format="h5")

    class Scale(tf_keras.layers.Layer):
        def build(self, shape):
            self.s = self.add_weight(name="s", shape=(shape[-1],), initializer="ones")

        def call(self, inputs):
            return inputs * self.s

    @tf_keras.utils.register_keras_serializable(package="myproj")
    class Shift(tf_keras.layers.Layer):
        def build(self, shape):
            self.b = self.add_weight(name="b", shape=(shape[-1],), initializer="zeros")

        def call(self, inputs):
            return inputs + self.b

    for name, layer in (("custom", Scale), ("registered", Shift)):
        model = tf_keras.Sequential([tf_keras.Input((FEATURES,)), tf_keras.layers.Dense(3), layer()])
        model.save(os.path.join(root, f"{name}.h5"), save_format="h5")
