"""Safe mode for SavedModels: an allow-list over every op a loaded SavedModel could run.

    graph_refusal(meta_graph, directory) -> why it must not be loaded, or None

Every node of the MetaGraph's graph_def and of every function in its library (whether or not
the serving signature reaches it: the loader itself calls resource initialisers, and an
object's methods are all restored) must be one of:

- a call of a library function, which is then checked the same way (a function attr that names
  no library function names an op TF would run as one: it must be allowed as an op);
- an op in pure_ops.PURE_OPS (computation on tensors in memory);
- a text-file table initialiser whose file name is one of the SavedModel's own asset files
  (Estimator and TF-Transform vocabularies): the name must come, through Identity ops and
  function calls only, from an asset tensor listed in the MetaGraph's asset_file_defs (TF1
  graphs: the loader feeds that tensor with the asset's path) or from an argument the object
  graph binds to a SavedAsset (TF2). Every asset file must lie inside `assets/`: no absolute
  path, no `..`, no symbolic link out of it, nothing but a regular file;
- one of TF's checkpoint ops, in the SavedModel's own save or restore function only. The
  saver_def names them: the nodes its restore op depends on (and the functions they call) may
  read a checkpoint (RestoreV2: TF Serving's C++ loader runs it with the variables/ prefix;
  `tf.saved_model.load` restores variables with its own Python code and runs neither), the
  nodes the save tensor depends on may also write one (SaveV2, MergeV2Checkpoints: run only
  by someone saving the model again, never by a loader). A checkpoint op anything else can
  reach, the signatures and the loader's initialisers included, is refused.

Everything else is refused, naming the op, the node and the function it sits in. No graph is
built and nothing is imported but the protobuf classes: the file is parsed as data.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from ckptwatch.formats.held import original
from ckptwatch.model.pure_ops import (
    ACTING_OPS,
    CHECKPOINT_NAMING,
    CHECKPOINT_READS,
    CHECKPOINT_WRITES,
    PURE_OPS,
    TEXT_FILE_INITIALIZERS,
)

MAX_CALL_DEPTH = 64  # an asset's path passed down through more function calls than this: refused
MAX_NAMED = 6  # distinct refused ops named in one message (those known to act first)

LIVE, RESTORE, SAVE = "live", "restore", "save"


@dataclass(frozen=True)
class Violation:
    op: str
    node: str
    function: str | None  # None: a node of the graph_def itself
    why: str

    def describe(self) -> str:
        where = f"in function {self.function!r}" if self.function else "in the graph"
        return f"op {self.op} (node {self.node!r} {where}) {self.why}"


def _node_name(tensor: str) -> str:
    return tensor.split(":")[0].lstrip("^")


def func_names(attrs: Any) -> Iterator[str]:
    """Function names in a node's attrs, nested NameAttrLists included (iteratively)."""
    todo = list(attrs.values())
    while todo:
        attr = todo.pop()
        funcs = [attr.func] if attr.HasField("func") else []
        if attr.HasField("list"):
            funcs.extend(attr.list.func)
        for f in funcs:
            yield f.name
            todo.extend(f.attr.values())


def asset_defs(meta: Any) -> list[Any]:
    """The MetaGraph's AssetFileDefs where TF's loader finds them: asset_file_def, or for older
    TF1 exports the `saved_model_assets` collection."""
    if meta.asset_file_def:
        return list(meta.asset_file_def)
    if "saved_model_assets" not in meta.collection_def:
        return []
    from tensorflow.core.protobuf import meta_graph_pb2

    found = []
    for packed in meta.collection_def["saved_model_assets"].any_list.value:
        asset = meta_graph_pb2.AssetFileDef()
        packed.Unpack(asset)
        found.append(asset)
    return found


def asset_problem(directory: str, filename: str) -> str | None:
    """Why an asset file name does not name a regular file inside `directory/assets/`."""
    if not filename or os.path.isabs(filename) or filename.startswith("\\"):
        return "is an absolute path"
    norm = os.path.normpath(filename)
    if norm == ".." or norm.startswith(".." + os.sep):
        return "leaves the assets/ directory"
    # where the SavedModel really lies: read through the daemon's held files, `directory` is a
    # stand-in whose links point at descriptors (ckptwatch.formats.held)
    directory = original(directory)
    base = os.path.realpath(os.path.join(directory, "assets"))
    real = os.path.realpath(os.path.join(base, filename))
    if not real.startswith(base + os.sep):
        return "resolves outside the assets/ directory"
    try:
        st = os.stat(real)
    except OSError:
        return None  # a missing asset is TensorFlow's load error, not a file read elsewhere
    if not stat.S_ISREG(st.st_mode):
        return "is not a regular file"
    return None


class _Graph:
    def __init__(self, meta: Any, directory: str):
        self.meta, self.directory = meta, directory
        self.library = {f.signature.name: f for f in meta.graph_def.library.function}
        self.nodes = {n.name: n for n in meta.graph_def.node}
        self.asset_tensors = {_node_name(a.tensor_info.name) for a in asset_defs(meta)}
        self.objects = meta.object_graph_def

    def callees(self, node: Any) -> Iterator[str]:
        if node.op in self.library:
            yield node.op
        for name in func_names(node.attr):
            if name in self.library:
                yield name

    def closure(self, roots: Iterable[str]) -> set[str]:
        """graph_def nodes the roots depend on (inputs and control inputs), roots included."""
        seen: set[str] = set()
        todo = [r for r in roots if r in self.nodes]
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            todo.extend(n for n in map(_node_name, self.nodes[name].input) if n in self.nodes and n not in seen)
        return seen

    def reach(self, funcs: Iterable[str]) -> set[str]:
        """Library functions the given ones call, transitively, themselves included."""
        seen: set[str] = set()
        todo = list(funcs)
        while todo:
            name = todo.pop()
            if name in seen or name not in self.library:
                continue
            seen.add(name)
            for node in self.library[name].node_def:
                todo.extend(self.callees(node))
        return seen

    def regions(self) -> tuple[dict[str, str], dict[str, str]]:
        """(graph_def node -> region, function -> region): where checkpoint ops may be."""
        saver = self.meta.saver_def
        save_roots = [_node_name(t) for t in (saver.save_tensor_name, saver.filename_tensor_name) if t]
        save_nodes = self.closure(save_roots)
        restore_nodes = self.closure([_node_name(saver.restore_op_name)] if saver.restore_op_name else [])
        roots = [n for n in self.nodes if n not in save_nodes and n not in restore_nodes]
        for sig in self.meta.signature_def.values():
            roots.extend(_node_name(t.name) for t in (*sig.inputs.values(), *sig.outputs.values()))
        for collection in self.meta.collection_def.values():
            roots.extend(_node_name(v) for v in collection.node_list.value)
        live_nodes = self.closure(roots)

        def called(names: Iterable[str]) -> set[str]:
            return {f for n in names for f in self.callees(self.nodes[n])}

        save_funcs = self.reach(called(save_nodes))
        restore_funcs = self.reach(called(restore_nodes))
        loose = set(self.library) - save_funcs - restore_funcs  # orphans too: counted as callable
        live_funcs = self.reach(called(live_nodes) | set(self.objects.concrete_functions) | loose)
        node_region = {n: LIVE if n in live_nodes else RESTORE if n in restore_nodes else SAVE for n in self.nodes}
        func_region = {f: LIVE if f in live_funcs else RESTORE if f in restore_funcs else SAVE for f in self.library}
        return node_region, func_region

    # -- where a text-file initialiser's file name comes from ---------------------------------------

    def call_sites(self, func: str) -> Iterator[tuple[str | None, Any]]:
        for node in self.meta.graph_def.node:
            if func in set(self.callees(node)):
                yield None, node
        for name, fdef in self.library.items():
            for node in fdef.node_def:
                if func in set(self.callees(node)):
                    yield name, node

    def file_name_problem(self, function: str | None, tensor: str, depth: int = 0) -> str | None:
        """Why `tensor` (in `function`, or the graph_def for None) is not an asset's path."""
        if depth > MAX_CALL_DEPTH:
            return f"its file name is passed through more than {MAX_CALL_DEPTH} function calls"
        if function is None:
            return self._graph_source(tensor)
        fdef = self.library[function]
        args = [a.name for a in fdef.signature.input_arg]
        local = {n.name: n for n in fdef.node_def}
        name = tensor.split(":")[0]
        for _ in range(MAX_CALL_DEPTH):
            node = local.get(name)
            if node is None or node.op != "Identity" or not node.input:
                break
            name = node.input[0].split(":")[0]
        if name not in args:
            what = local[name].op if name in local else "an unknown tensor"
            return f"its file name comes from {what} {name!r} in function {function!r}, not from an asset"
        return self._argument_problem(function, args.index(name), len(args), depth)

    def _asset_tensor(self, tensor: str) -> str:
        """The node a graph_def tensor comes from, through Identity ops."""
        name = _node_name(tensor)
        for _ in range(MAX_CALL_DEPTH):
            node = self.nodes.get(name)
            if name in self.asset_tensors or node is None or node.op != "Identity" or not node.input:
                break
            name = _node_name(node.input[0])
        return name

    def _graph_source(self, tensor: str) -> str | None:
        name = self._asset_tensor(tensor)
        if name in self.asset_tensors:
            return None  # TF1: the loader feeds the asset's path
        node = self.nodes.get(name)
        if node is not None and node.op == "ReadVariableOp" and node.input:
            return self._variable_problem(_node_name(node.input[0]))
        what = node.op if node is not None else "an unknown tensor"
        return f"its file name comes from {what} {name!r}, not from an asset"

    def _variable_problem(self, handle: str) -> str | None:
        """TF2 graphs keep an asset's path in a variable: every node that uses the variable must
        only read it, or assign it an asset tensor."""
        assigned = False
        for node in self.meta.graph_def.node:
            data = [_node_name(i) for i in node.input if not i.startswith("^")]
            if handle not in data:
                continue
            if node.op in ("ReadVariableOp", "VarIsInitializedOp") and data == [handle]:
                continue
            if (
                node.op == "AssignVariableOp"
                and data[0] == handle
                and len(data) == 2
                and self._asset_tensor(data[1]) in self.asset_tensors
            ):
                assigned = True
                continue
            return f"its file name comes from variable {handle!r}, which {node.op} {node.name!r} also uses"
        return None if assigned else f"its file name comes from variable {handle!r}, which no asset is assigned to"

    def _argument_problem(self, function: str, index: int, nargs: int, depth: int) -> str | None:
        sources = 0
        bound = self.objects.concrete_functions.get(function)
        if bound is not None:
            captured = list(bound.bound_inputs)
            first = nargs - len(captured)
            if index < first:
                return f"its file name is an argument of {function!r} that the caller chooses"
            node_id = captured[index - first]
            nodes = self.objects.nodes
            if not 0 <= node_id < len(nodes) or nodes[node_id].WhichOneof("kind") != "asset":
                return f"its file name is bound to object {node_id}, which is not one of the SavedModel's assets"
            if not 0 <= nodes[node_id].asset.asset_file_def_index < len(self.meta.asset_file_def):
                return f"its file name is bound to asset {node_id}, which names no asset file"
            sources += 1
        for caller, node in self.call_sites(function):
            if node.op != function and node.op not in ("PartitionedCall", "StatefulPartitionedCall"):
                return f"its file name is passed in by {node.op} {node.name!r}"
            inputs = [i for i in node.input if not i.startswith("^")]
            if index >= len(inputs):
                return f"the call {node.name!r} of {function!r} gives no file name"
            problem = self.file_name_problem(caller, inputs[index], depth + 1)
            if problem:
                return problem
            sources += 1
        return None if sources else f"nothing gives {function!r} its file name"

    # -- the check -------------------------------------------------------------------------------------

    def violation(self, node: Any, function: str | None, region: str) -> Violation | None:
        op = node.op
        for name in func_names(node.attr):
            if name not in self.library and name not in PURE_OPS:  # TF runs a bare op named here as a function
                return Violation(name, node.name, function, f"is called as a function by {op}: not pure computation")
        if op in self.library or op in PURE_OPS:
            return None
        if op in TEXT_FILE_INITIALIZERS:
            filename = [i for i in node.input if not i.startswith("^")][1:2]
            problem = self.file_name_problem(function, filename[0]) if filename else "it names no file"
            if problem:
                return Violation(op, node.name, function, f"reads a file that is not the SavedModel's asset: {problem}")
            return None
        if op in CHECKPOINT_NAMING and region != LIVE:
            return None
        if (op in CHECKPOINT_READS and region != LIVE) or (op in CHECKPOINT_WRITES and region == SAVE):
            return None
        if op in CHECKPOINT_READS:
            why = "reads checkpoint files outside the SavedModel's own save and restore functions"
            return Violation(op, node.name, function, why)
        if op in CHECKPOINT_WRITES:
            return Violation(op, node.name, function, "writes files outside the SavedModel's own save function")
        if op in ACTING_OPS:
            return Violation(op, node.name, function, "acts outside the model (files, Python, printing or processes)")
        return Violation(op, node.name, function, "is not on safe mode's list of pure computation ops")


def graph_refusal(meta: Any, directory: str) -> str | None:
    """Why this MetaGraph must not be loaded, or None when every op in it is allowed."""
    for a in asset_defs(meta):
        problem = asset_problem(directory, a.filename)
        if problem:
            return f"asset file {a.filename!r} {problem}"
    graph = _Graph(meta, directory)
    node_region, func_region = graph.regions()
    found: dict[str, Violation] = {}
    for node in meta.graph_def.node:
        v = graph.violation(node, None, node_region[node.name])
        if v and v.op not in found:
            found[v.op] = v
    for name in sorted(graph.library):
        for node in graph.library[name].node_def:
            v = graph.violation(node, name, func_region[name])
            if v and v.op not in found:
                found[v.op] = v
    if not found:
        return None
    ranked = sorted(found.values(), key=lambda v: (v.op not in ACTING_OPS, v.op))
    why = ranked[0].describe()
    more = [v.op for v in ranked[1:]]
    if more:
        named, rest = more[: MAX_NAMED - 1], len(more) - (MAX_NAMED - 1)
        why += f"; also {', '.join(named)}" + (f" and {rest} more" if rest > 0 else "")
    return why
