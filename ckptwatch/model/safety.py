"""Safe mode: what in a model file would run code, found before anything is loaded.

A `.keras` config may name a Lambda layer (Python bytecode stored in the file) or
classes and functions from outside Keras (their module would be imported). A
SavedModel's graph may read or write files, run Python, or write summaries when
called. Such files are refused with a reason; nothing from them is executed.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

CODE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}

# Ops that touch the filesystem, run Python, or otherwise act outside the graph's tensors.
FORBIDDEN_OPS = {
    "ReadFile", "WriteFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc",
    "InitializeTableFromTextFile", "InitializeTableFromTextFileV2", "ImmutableConst",
    "WholeFileReader", "WholeFileReaderV2", "TFRecordReader", "TFRecordReaderV2", "TextLineReader",
    "TextLineReaderV2", "FixedLengthRecordReader", "FixedLengthRecordReaderV2", "LMDBReader",
    "CreateSummaryFileWriter", "CreateSummaryDbWriter", "WriteSummary", "WriteScalarSummary",
    "WriteHistogramSummary", "WriteImageSummary", "WriteAudioSummary", "WriteRawProtoSummary",
    "WriteGraphSummary", "ImportEvent", "FlushSummaryWriter", "CloseSummaryWriter",
    "DatasetToTFRecord", "ExperimentalDatasetToTFRecord", "SaveDataset", "SaveDatasetV2", "LoadDataset",
    "ExperimentalLoadDataset", "DebugIdentity", "DebugIdentityV2", "DebugIdentityV3", "DebugNanCount",
    "DebugNumericSummary", "DebugNumericSummaryV2", "FileSystemSetConfiguration",
}  # fmt: skip
# Checkpoint ops belong to the SavedModel's own save/restore functions; the loader restores
# variables without them. In a function the serving signature calls they would touch files.
CHECKPOINT_OPS = {"SaveV2", "Save", "SaveSlices", "RestoreV2", "Restore", "RestoreSlice", "MergeV2Checkpoints"}


def _walk(node: Any) -> Iterator[dict]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk(value)


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
        if module is None and obj.get("registered_name"):
            return f"{class_name!r} is a custom class ({obj['registered_name']}): its code is not part of Keras"
        if isinstance(module, str) and module != "keras" and not module.startswith("keras."):
            return f"{class_name!r} comes from module {module!r}, outside Keras: loading it would import that code"
    return None


def _func_names(attr: Any) -> Iterator[str]:
    if attr.HasField("func"):
        yield attr.func.name
    if attr.HasField("list"):
        for f in attr.list.func:
            yield f.name


def saved_model_refusal(pb_path: str, signature: str | None = None) -> tuple[str | None, str | None]:
    """(reason to refuse or None, the signature to call). Parses saved_model.pb as a
    protobuf (no graph is built) and checks every op the serving signature can reach,
    plus forbidden ops anywhere in the file."""
    from tensorflow.core.protobuf import saved_model_pb2

    try:
        with open(pb_path, "rb") as f:
            saved = saved_model_pb2.SavedModel.FromString(f.read())
    except Exception as e:  # protobuf DecodeError, OSError
        return f"saved_model.pb does not parse: {e}", None
    if not saved.meta_graphs:
        return "saved_model.pb has no meta graph", None
    meta = saved.meta_graphs[0]
    library = {f.signature.name: f for f in meta.graph_def.library.function}
    for fname, fdef in library.items():
        for node in fdef.node_def:
            if node.op in FORBIDDEN_OPS:
                return f"function {fname!r} contains op {node.op} ({node.name}): it acts outside the model", None
    for node in meta.graph_def.node:
        if node.op in FORBIDDEN_OPS:
            return f"the graph contains op {node.op} ({node.name}): it acts outside the model", None
    signatures = dict(meta.signature_def)
    name = signature or ("serving_default" if "serving_default" in signatures else next(iter(sorted(signatures)), None))
    if name is None or name not in signatures:
        return "the SavedModel has no serving signature to run", None
    nodes = {n.name: n for n in meta.graph_def.node}
    todo = [t.name.split(":")[0].lstrip("^") for t in signatures[name].outputs.values()]
    seen: set[str] = set()
    funcs: list[str] = []
    while todo:
        n = todo.pop()
        if n in seen or n not in nodes:
            continue
        seen.add(n)
        node = nodes[n]
        if node.op in CHECKPOINT_OPS:
            return f"the signature {name!r} reaches op {node.op}: it would touch files", None
        for attr in node.attr.values():
            funcs.extend(_func_names(attr))
        todo.extend(i.split(":")[0].lstrip("^") for i in node.input)
    done: set[str] = set()
    while funcs:
        fname = funcs.pop()
        if fname in done or fname not in library:
            continue
        done.add(fname)
        for node in library[fname].node_def:
            if node.op in CHECKPOINT_OPS:
                return f"the signature {name!r} reaches op {node.op} in {fname!r}: it would touch files", None
            if node.op in library:
                funcs.append(node.op)
            for attr in node.attr.values():
                funcs.extend(_func_names(attr))
    return None, name
