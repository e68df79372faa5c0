"""Safe mode: what in a model file would run code, found before anything is loaded.

A `.keras` config may name a Lambda layer (Python bytecode stored in the file) or
classes and functions from outside Keras (their module would be imported): only Keras'
own classes are let through. A SavedModel's graph may read or write files, run Python,
or write summaries when called: only ops known to be pure computation are let through
(safety_graph.py, pure_ops.py). Such files are refused with a reason; nothing from them
is executed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

from ckptwatch.model.safety_graph import graph_refusal

CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
# Layers that load another model from a path in their config (Keras 3.12+ refuses TFSMLayer in
# safe mode itself; older Keras does not): that model would bypass the checks here.
LOADING_LAYERS = {"TFSMLayer"}
# Lookup layers read a vocabulary given as a path (Keras saves its own in the archive's assets and
# writes null here; Keras 3.12+ refuses a path in safe mode itself, older Keras reads it).
VOCABULARY_LAYERS = {"StringLookup", "IntegerLookup", "TextVectorization"}


def _walk(node: Any) -> Iterator[dict]:
    """Every dict in a parsed JSON value, depth first, without recursion (the depth is the file's)."""
    todo = [node]
    while todo:
        value = todo.pop()
        if isinstance(value, dict):
            yield value
            todo.extend(reversed(list(value.values())))
        elif isinstance(value, list):
            todo.extend(reversed(value))


def keras_config_refusal(config: dict | None) -> str | None:
    """Why a `.keras` config must not be deserialized, or None if only Keras' own classes appear."""
    if not isinstance(config, dict):
        return "config.json is missing or not an object"
    for obj in _walk(config):
        class_name, module = obj.get("class_name"), obj.get("module")
        if not isinstance(class_name, str):
            continue
        inner = obj.get("config")
        name = inner.get("name") if isinstance(inner, dict) else None
        if class_name in CODE_LAYERS or class_name == "__lambda__":
            what = f"layer {name!r}" if name else "the model"
            return f"{what} is a {class_name} layer: it holds Python code stored in the file"
        if class_name in LOADING_LAYERS:
            what = f"layer {name!r}" if name else "the model"
            path = inner.get("filepath") if isinstance(inner, dict) else None
            return f"{what} is a {class_name}: it would load the SavedModel at {path!r}, outside this file"
        if class_name in VOCABULARY_LAYERS and isinstance(inner, dict) and isinstance(inner.get("vocabulary"), str):
            what = f"layer {name!r}" if name else "the model"
            return f"{what} reads its vocabulary from {inner['vocabulary']!r}, outside this file"
        if module is None and obj.get("registered_name"):
            return f"{class_name!r} is a custom class ({obj['registered_name']}): its code is not part of Keras"
        if isinstance(module, str) and module != "keras" and not module.startswith("keras."):
            return f"{class_name!r} comes from module {module!r}, outside Keras: loading it would import that code"
    return None


def saved_model_refusal(pb_path: str, signature: str | None = None) -> tuple[str | None, str | None]:
    """(reason to refuse or None, the signature to call). Parses saved_model.pb as a protobuf
    (no graph is built) and checks every op of every MetaGraph, its function library included,
    against safe mode's allow-list (safety_graph.py)."""
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        with open(pb_path, "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
    except Exception as e:  # protobuf DecodeError, OSError
        return f"saved_model.pb does not parse: {e}", None
    if not saved.meta_graphs:
        return "saved_model.pb has no meta graph", None
    directory = os.path.dirname(pb_path)
    for meta in saved.meta_graphs:
        why = graph_refusal(meta, directory)
        if why:
            return why, None
    signatures = dict(saved.meta_graphs[0].signature_def)
    name = signature or ("serving_default" if "serving_default" in signatures else next(iter(sorted(signatures)), None))
    if name is None or name not in signatures:
        return "the SavedModel has no serving signature to run", None
    return None, name
