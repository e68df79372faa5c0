"""Safe mode: what in a model file would run code, found before anything is loaded.

A `.keras` config may name a Lambda layer (Python bytecode stored in the file) or
classes and functions from outside Keras (their module would be imported): only Keras'
own classes are let through. A SavedModel's graph may read or write files, run Python,
or write summaries when called: only ops known to be pure computation are let through
(safety_graph.py, pure_ops.py). Such files are refused with a reason; nothing from them
is executed.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Collection, Iterator
from typing import Any

from ckptwatch.errors import ModelUnsupported
from ckptwatch.model.safety_graph import func_names, graph_refusal

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


# Values (not classes) in a Keras config: tensors, tuples, arrays (Keras 3's serialization).
SERIALIZED_VALUES = frozenset(
    {"__keras_tensor__", "__tuple__", "__numpy__", "__bytes__", "__tensor__", "__typespec__", "__ellipsis__",
     "__slice__"}
)  # fmt: skip
# Names Keras 2 configs use for Keras' own classes that Keras 3 exports under other names.
KERAS2_NAMES = frozenset({"Functional", "Sequential", "Model", "Policy", "DTypePolicy"})


@functools.cache
def keras_class_names() -> frozenset[str]:
    """Every class name Keras itself (and tf-keras, when installed) can build from a config:
    layers, initializers, regularizers, constraints, models, dtype policies. Collected from
    the installed packages' public modules; nothing is built."""
    names = set(KERAS2_NAMES)
    packages = ["keras"] + (["tf_keras"] if importlib.util.find_spec("tf_keras") is not None else [])
    for package in packages:
        for part in ("layers", "initializers", "regularizers", "constraints", "models", "dtype_policies",
                     "mixed_precision"):  # fmt: skip
            try:
                module = importlib.import_module(f"{package}.{part}")
            except ImportError:
                continue
            names.update(n for n in dir(module) if isinstance(getattr(module, n, None), type))
    return frozenset(names - CODE_LAYERS - LOADING_LAYERS)


def legacy_config_refusal(config: dict | None, known: Collection[str] | None = None) -> str | None:
    """Why a legacy (Keras 2) `.h5` architecture must not be deserialized. Keras 2 names a custom
    class only by its class name (`MyLayer`, or `package>MyLayer` when registered), with no
    module to refuse it by: every class named must be one Keras itself has (`known`, default
    keras_class_names()). Decided from the JSON, before Keras is asked."""
    why = keras_config_refusal(config)
    if why or config is None:
        return why
    known = keras_class_names() if known is None else known
    for obj in _walk(config):
        class_name = obj.get("class_name")
        if not isinstance(class_name, str) or class_name in known or class_name in SERIALIZED_VALUES:
            continue
        if isinstance(obj.get("module"), str):
            continue  # Keras 3 style: keras_config_refusal let only Keras' own modules through
        inner = obj.get("config")
        name = inner.get("name") if isinstance(inner, dict) else None
        what = f"layer {name!r}" if isinstance(name, str) else "the model"
        if ">" in class_name:
            package = class_name.split(">", 1)[0]
            return (
                f"{what} is {class_name!r}, a custom class registered by package {package!r}: "
                "its code is not part of Keras or of this file"
            )
        return f"{what} is {class_name!r}, a custom class (not one of Keras' own): its code is not part of this file"
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
    missing = missing_ops(saved.meta_graphs)
    if missing:
        raise ModelUnsupported(missing_ops_message(missing))
    for meta in saved.meta_graphs:
        why = graph_refusal(meta, directory)
        if why:
            return why, None
    signatures = dict(saved.meta_graphs[0].signature_def)
    name = signature or ("serving_default" if "serving_default" in signatures else next(iter(sorted(signatures)), None))
    if name is None or name not in signatures:
        return "the SavedModel has no serving signature to run", None
    return None, name


# Where ops that TensorFlow itself lacks come from: a namespace prefix, or names of well-known libraries.
OP_LIBRARIES = (
    ("Addons>", "tensorflow-addons"),
    ("IO>", "tensorflow-io"),
    ("TFText>", "tensorflow-text"),
    ("TFRA>", "tensorflow-recommenders-addons"),
    ("SimpleML", "tensorflow-decision-forests"),
    ("Sentencepiece", "tensorflow-text or sentencepiece"),
)
TEXT_OPS = frozenset(
    {"CaseFoldUTF8", "ConstrainedSequence", "FastBertNormalize", "FastWordpieceTokenizeWithOffsets",
     "MaxSpanningTree", "NormalizeUTF8", "NormalizeUTF8WithOffsetsMap", "RegexSplitWithOffsets", "RougeL",
     "SplitMergeTokenizeWithOffsets", "UnicodeScriptTokenizeWithOffsets", "WhitespaceTokenizeWithOffsets",
     "WhitespaceTokenizeWithOffsetsV2", "WordpieceTokenizeWithOffsets"}
)  # fmt: skip


def missing_ops(metas: Any) -> list[tuple[str, str, str | None]]:
    """(op, node, function) for every op the MetaGraphs use that this TensorFlow has not
    registered (a custom op library not loaded), first use of each."""
    from tensorflow.python.framework import op_def_registry

    found: dict[str, tuple[str, str, str | None]] = {}
    for meta in metas:
        library = {f.signature.name for f in meta.graph_def.library.function}
        places = [(None, n) for n in meta.graph_def.node]
        places += [(f.signature.name, n) for f in meta.graph_def.library.function for n in f.node_def]
        for function, node in places:
            for op in (node.op, *func_names(node.attr)):
                if op in library or op in found:
                    continue
                if op_def_registry.get(op) is None:
                    found[op] = (op, node.name, function)
    return list(found.values())


def op_library(op: str) -> str | None:
    for prefix, package in OP_LIBRARIES:
        if op.startswith(prefix):
            return package
    return "tensorflow-text" if op in TEXT_OPS else None


def missing_ops_message(missing: list[tuple[str, str, str | None]]) -> str:
    import tensorflow as tf

    op, node, function = missing[0]
    where = f"node {node!r} in function {function!r}" if function else f"node {node!r}"
    more = [m[0] for m in missing[1:6]]
    ops = f"op {op} ({where})" + (f" and {', '.join(more)}" if more else "")
    packages = sorted({p for m in missing if (p := op_library(m[0]))})
    source = f"from {' / '.join(packages)}" if packages else "from a custom op library"
    return (
        f"the SavedModel needs {ops}, which TensorFlow {tf.__version__} here does not have (an op {source}): "
        "the verifier cannot run this model, the file itself may be intact. To check it, install "
        f"{' / '.join(packages) or 'the library that defines the op'} in the verifier's environment and give a "
        "factory (--model / [watch.model] factory) that imports it and builds the model; without model checks "
        "ckptwatch still verifies the SavedModel's variables"
    )
