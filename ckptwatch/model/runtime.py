"""TensorFlow for model-aware checks: imported here, once, and configured before
any model is built. Only the worker and the CLI's child interpreter call this; the
daemon's main process never imports TensorFlow.

The device is pinned from outside (CUDA_VISIBLE_DEVICES, set by the supervisor), so
the one GPU this process sees is GPU:0. Memory grows on demand, optionally capped
(CKPTWATCH_GPU_MEMORY_LIMIT_MB), so the training job next to us keeps its memory.
"""

from __future__ import annotations

import os
from typing import Any

from ckptwatch.errors import CkptwatchError

SEED = 1234
_tf: Any = None


class TensorflowUnavailable(CkptwatchError):
    """TensorFlow cannot be imported: model-aware checks cannot run at all."""


def tensorflow() -> Any:
    global _tf
    if _tf is not None:
        return _tf
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # C++ log lines are noise here; failures are findings
    try:
        import tensorflow as tf
    except Exception as e:  # ImportError, or a broken CUDA install failing at import
        raise TensorflowUnavailable(f"TensorFlow cannot be imported: {type(e).__name__}: {e}") from None
    tf.get_logger().setLevel("ERROR")  # restore warnings are reported as findings instead
    limit = os.environ.get("CKPTWATCH_GPU_MEMORY_LIMIT_MB")
    for gpu in tf.config.list_physical_devices("GPU"):
        if limit:
            tf.config.set_logical_device_configuration(
                gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=int(limit))]
            )
        else:
            tf.config.experimental.set_memory_growth(gpu, True)
    tf.config.experimental.enable_op_determinism()  # same checkpoint, same figures
    _tf = tf
    return tf


def seed() -> None:
    """Same initial values on every build, so a report can be reproduced."""
    tf = tensorflow()
    tf.keras.utils.set_random_seed(SEED)


def device_label() -> str:
    """Which device ran the model: 'gpu:N (NAME)' or 'cpu'."""
    tf = tensorflow()
    gpus = tf.config.list_logical_devices("GPU")
    if not gpus:
        return "cpu"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")
    index = visible[0] if visible and visible[0] else "0"
    try:
        name = tf.config.experimental.get_device_details(tf.config.list_physical_devices("GPU")[0]).get("device_name")
    except Exception:
        name = None
    return f"gpu:{index}" + (f" ({name})" if name else "")
