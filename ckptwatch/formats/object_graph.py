"""Friendly names from the TrackableObjectGraph stored in TF2 checkpoints.

TF keys a variable by the *first* path breadth-first search finds. With Keras 3,
`tf.train.Checkpoint(model=m, optimizer=opt)` therefore stores the model's
kernels as `optimizer/_trainable_variables/0/...`. The object graph (the
`_CHECKPOINTABLE_OBJECT_GRAPH` entry) lists every path to every variable, so we
can name each key by a path that does not go through the optimizer, and
classify it correctly.
"""

from __future__ import annotations

import functools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from ckptwatch.formats.table import TableError, read_varint
from ckptwatch.formats.wire import as_bytes, as_int, fields

_OPTIMIZER_EDGES = {"optimizer", "_optimizer"}
# Keras 3 optimizers track the variables they train as `<optimizer>/_trainable_variables/N`. A
# model variable reachable only that way (a layer kept in a plain Python list of a subclassed
# model is outside TF's object graph) is a model weight, not optimizer state.
_TRAINED_VARIABLES = "_trainable_variables"
MAX_PATHS_PER_NODE = 8


def decode_scalar_string(raw: bytes) -> bytes:
    """The bytes of a scalar string tensor as a bundle stores it: varint length,
    4-byte checksum of the lengths, then the bytes."""
    view = memoryview(raw)
    length, pos = read_varint(view, 0)
    pos += 4
    if pos + length > len(raw):
        raise TableError("string tensor shorter than its length prefix")
    return bytes(view[pos : pos + length])


@dataclass
class GraphNode:
    children: list[tuple[int, str]] = field(default_factory=list)  # (node id, local name)
    attributes: list[tuple[str, str]] = field(default_factory=list)  # (attribute name, checkpoint key)
    slots: list[tuple[int, str, int]] = field(default_factory=list)  # (original variable node, slot name, slot node)


def parse_nodes(graph: bytes) -> list[GraphNode]:
    """The nodes of a serialized TrackableObjectGraph; node 0 is the root. A field of the
    wrong wire type raises TableError (never a huge allocation or a TypeError)."""
    return [_copy(n) for n in _parsed(bytes(graph))]


def _copy(node: GraphNode) -> GraphNode:
    return GraphNode(list(node.children), list(node.attributes), list(node.slots))


T = TypeVar("T")

# A worker keeps what it made of the last few graphs (a run's checkpoints share theirs), but only
# of graphs up to this size: a 10,000-variable model's is ~1 MB; a larger one (hostile, or a
# model of ~40,000 variables and more) is parsed again each time rather than kept between files.
CACHED_GRAPH_BYTES = 4 << 20
CACHED_GRAPHS = 4


def per_graph(fn: Callable[..., T]) -> Callable[..., T]:
    """`fn(graph, *rest)` remembered for the last CACHED_GRAPHS graphs of at most
    CACHED_GRAPH_BYTES; computed afresh (and not kept) for a larger graph."""
    cached = functools.lru_cache(maxsize=CACHED_GRAPHS)(fn)

    @functools.wraps(fn)
    def call(graph: bytes, *rest: Any) -> T:
        return cached(graph, *rest) if len(graph) <= CACHED_GRAPH_BYTES else fn(graph, *rest)

    call.cache_clear = cached.cache_clear  # type: ignore[attr-defined]
    call.cache_info = cached.cache_info  # type: ignore[attr-defined]
    return call


@per_graph
def _parsed(graph: bytes) -> tuple[GraphNode, ...]:
    """parse_nodes, once per distinct graph: the checkpoints of a run (a candidate and its
    previous, every save the daemon sees) store the same graph, and a model of 10,000
    variables takes a tenth of a second to parse."""
    nodes: list[GraphNode] = []
    for number, _, value in fields(memoryview(graph)):
        if number != 1:
            continue
        node = GraphNode()
        for n2, _, v2 in fields(as_bytes(value)):
            if n2 == 1:  # ObjectReference
                ref = _message(v2)
                node.children.append((_int(ref, 1), _text(ref, 2)))
            elif n2 == 2:  # SerializedTensor
                ser = _message(v2)
                node.attributes.append((_text(ser, 1), _text(ser, 3)))
            elif n2 == 3:  # SlotVariableReference
                ref = _message(v2)
                node.slots.append((_int(ref, 1), _text(ref, 2), _int(ref, 3)))
        nodes.append(node)
    for node in nodes:
        for child, _ in node.children:
            if not 0 <= child < len(nodes):
                raise TableError(f"object graph refers to node {child} of {len(nodes)}")
    return tuple(nodes)


def _message(value: int | memoryview) -> dict[int, int | memoryview]:
    return {number: v for number, _, v in fields(as_bytes(value))}


def _int(message: dict[int, int | memoryview], number: int) -> int:
    return as_int(message.get(number, 0))


def _text(message: dict[int, int | memoryview], number: int) -> str:
    value = message.get(number)
    return "" if value is None else bytes(as_bytes(value)).decode("utf-8", "replace")


def key_paths(graph: bytes) -> dict[str, list[tuple[str, ...]]]:
    """checkpoint key -> the object paths (tuples of edge names) that reach it,
    shortest first. Slot variables get a path ending in `[slot <name>]`."""
    return {key: list(paths) for key, paths in _key_paths(bytes(graph)).items()}


@per_graph
def _key_paths(graph: bytes) -> dict[str, list[tuple[str, ...]]]:
    nodes = [(n.children, [key for _, key in n.attributes], n.slots) for n in _parsed(graph)]
    if not nodes:
        return {}
    paths: dict[int, list[tuple[str, ...]]] = {0: [()]}
    queue = deque([0])
    while queue:
        node = queue.popleft()
        for child, name in nodes[node][0]:
            known = paths.setdefault(child, [])
            fresh = not known
            for p in paths[node]:
                if len(known) < MAX_PATHS_PER_NODE:
                    known.append((*p, name))
            if fresh:
                queue.append(child)
    for _, _, slots in nodes:
        for original, slot_name, slot_node in slots:
            if 0 <= slot_node < len(nodes) and original in paths:
                paths.setdefault(slot_node, []).extend((*p, f"[slot {slot_name}]") for p in paths[original][:2])
    result: dict[str, list[tuple[str, ...]]] = {}
    for node, (_, keys, _) in enumerate(nodes):
        for key in keys:
            if key and node in paths:
                result[key] = sorted(paths[node], key=len)
    return result


def preferred_path(paths: list[tuple[str, ...]]) -> tuple[tuple[str, ...], bool]:
    """(the path to show, whether the value belongs to the optimizer only)."""
    outside = [p for p in paths if not (set(p) & _OPTIMIZER_EDGES) and not any(e.startswith("[slot") for e in p)]
    if outside:
        return outside[0], False
    trained = [p for p in paths if _trained_by_optimizer(p)]
    if trained:
        return trained[0], False
    return paths[0], True


def _trained_by_optimizer(path: tuple[str, ...]) -> bool:
    """`(..., optimizer, _trainable_variables, N)`: a model variable the optimizer trains."""
    return len(path) >= 3 and path[-3] in _OPTIMIZER_EDGES and path[-2] == _TRAINED_VARIABLES
