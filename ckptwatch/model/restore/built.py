"""What a factory built, and how to read a variable of it: shared by both restores.

Built             the factory's objects, arranged for tf.train.Checkpoint(**objects) and for running
arrange(made)     a factory's return value (Keras model, tf.Module, or dict) -> Built
prepare(built, x) create the variables a fresh model or optimizer only makes on first use
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass
class Built:
    """What the factory returned, arranged for tf.train.Checkpoint and for running."""

    objects: dict[str, Any]  # tf.train.Checkpoint(**objects)
    model: Any  # what is called on the probe batch
    optimizer: Any = None
    loss: Any = None
    named: bool = False  # the factory named its objects (a dict): a restore must use these names


def arrange(made: Any) -> Built:
    """A factory may return a Keras model, a tf.Module, or a dict like the job's
    tf.train.Checkpoint(**kwargs) (plus an optional "loss" callable)."""
    if isinstance(made, dict):
        objects = {k: v for k, v in made.items() if k != "loss"}
        model = objects.get("model") or next((v for v in objects.values() if callable(v)), None)
        return Built(objects, model, objects.get("optimizer"), made.get("loss"), named=True)
    return Built({"model": made}, made, getattr(made, "optimizer", None), None)


def prepare(built: Built, probe_x: Any) -> None:
    """Create variables a fresh model only makes on first call (Keras deferred build), and
    the optimizer's state, so that both can be matched and restored now, not later."""
    model = built.model
    if model is not None and probe_x is not None and hasattr(model, "built") and not model.built:
        model(probe_x, training=False)
    opt = built.optimizer
    if opt is not None and hasattr(opt, "build") and not getattr(opt, "built", True) and model is not None:
        opt.build(model.trainable_variables)


def variable_label(obj: Any) -> str:
    """The name people know a variable by: a Keras variable's path ("mlp/extra/kernel"), else its TF name."""
    path = getattr(obj, "path", None)
    return str(path) if isinstance(path, str) else str(getattr(obj, "name", "?")).split(":")[0]


def is_variable(obj: Any) -> bool:
    return hasattr(obj, "assign") and hasattr(obj, "shape") and hasattr(obj, "dtype")


def as_array(obj: Any) -> np.ndarray:
    return np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj)


def tf_variable(obj: Any) -> Any:
    return getattr(obj, "value", obj) if not hasattr(obj, "_shared_name") else obj


def dtype_name(obj: Any) -> str:
    dt = getattr(obj, "dtype", None)
    return getattr(dt, "name", str(dt))


def joined(chunks: Iterator[np.ndarray]) -> np.ndarray:
    """A reader's chunks of one tensor as one flat array."""
    return np.concatenate([c.reshape(-1) for c in chunks] or [np.empty(0)])
