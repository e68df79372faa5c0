"""Object-based matching: which checkpoint node restores into which Python object.

TF's own walk (tf.train.Checkpoint.restore), done first by us: both graphs, the checkpoint's
TrackableObjectGraph (read by our parser) and the Python objects' dependency graph, are walked
from the root child by child, by local name; names are TF's (`(root).model.dense.kernel`),
preferring paths that do not go through the optimizer.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from ckptwatch.model.restore.built import Built

IGNORED_CHECKPOINT_CHILDREN = {"save_counter"}  # tf.train.Checkpoint's own bookkeeping


def restore_root(built: Built, nodes: list | None, saved_model: bool = False) -> Any:
    """The restore root: the factory's objects under their names, like the job's
    tf.train.Checkpoint(**objects) (without its save_counter, which Checkpoint.write
    does not store), or the single object itself when the checkpoint has it as root
    (SavedModel variables, Checkpoint(root=...)).

    Names the factory gave (a dict, `{"model": m}`) are the job's own: a checkpoint written
    as Checkpoint(net=m) does not restore into them (the job's restore would match nothing),
    so they are kept, and the walk reports what did not line up. Only a bare model, whose
    name the factory never said, or a SavedModel's saved object, is mapped onto the
    checkpoint's single child."""
    from tensorflow.python.trackable.autotrackable import AutoTrackable

    objects = dict(built.objects)
    if nodes is not None and len(objects) == 1:
        names = {n for _, n in nodes[0].children} - IGNORED_CHECKPOINT_CHILDREN
        ((key, obj),) = objects.items()
        # a SavedModel's root is the saved object, named by nobody
        if key not in names and names and (not built.named or saved_model):
            if len(names) != 1:
                return obj
            objects = {names.pop(): obj}
    root = AutoTrackable()
    for key, obj in objects.items():
        setattr(root, key, obj)
    return root


OPTIMIZER_EDGES = {"optimizer", "_optimizer"}


def preferred_names(children: Any, root: Any, key: Any = id) -> tuple[dict[Any, str], list[Any]]:
    """BFS names like TF's ("(root).model.dense.kernel"), preferring a path that does not
    go through the optimizer (Keras 3 optimizers also hold the model's variables), and
    every node reached, in BFS order."""
    best: dict[Any, tuple[str, ...]] = {key(root): ()}
    via_optimizer: set[Any] = set()
    order = [root]
    queue = deque([root])
    while queue:
        node = queue.popleft()
        base = best[key(node)]
        for local, child in children(node):
            k = key(child)
            through = key(node) in via_optimizer or local in OPTIMIZER_EDGES
            if k not in best:
                order.append(child)
                queue.append(child)
            elif not (k in via_optimizer and not through):
                continue
            best[k] = (*base, local)
            via_optimizer.discard(k)
            if through:
                via_optimizer.add(k)
    return {k: ".".join(("(root)", *p)) for k, p in best.items()}, order


def python_graph(root: Any) -> tuple[list[Any], dict[int, str], Any]:
    from tensorflow.python.checkpoint import graph_view

    view = graph_view.ObjectGraphView(root)
    names, objects = preferred_names(lambda o: [(ref.name, ref.ref) for ref in view.list_children(o)], root)
    return objects, names, view


def checkpoint_names(nodes: list) -> dict[int, str]:
    """TF's names for checkpoint nodes (`(root).model.dense.kernel`, preferring paths outside
    the optimizer), and `(root).optimizer's state 'm' for (root).model.dense.kernel` for slots."""
    names, _ = preferred_names(lambda n: [(local, child) for child, local in nodes[n].children], 0, key=lambda n: n)
    for n, node in enumerate(nodes):
        for original, slot, slot_node in node.slots:
            if n in names and original in names:
                names[slot_node] = f"{names[n]}'s state '{slot}' for {names[original]}"
    return names


def walk(nodes: list, root: Any, view: Any) -> dict[int, Any]:
    """Checkpoint node id -> the Python object it restores into (TF's matching by local names)."""
    matched: dict[int, Any] = {0: root}
    queue = deque([0])
    while queue:
        n = queue.popleft()
        children = {ref.name: ref.ref for ref in view.list_children(matched[n])}
        for child, local in nodes[n].children:
            if child not in matched and local in children:
                matched[child] = children[local]
                queue.append(child)
    for n, node in enumerate(nodes):  # optimizer slots (TF1-style optimizers): restored with their variable
        for original, slot, slot_node in node.slots:
            if n in matched and original in matched and slot_node not in matched:
                get_slot = getattr(matched[n], "get_slot", None)
                try:
                    matched[slot_node] = get_slot(matched[original], slot) if get_slot else None
                except Exception:
                    matched[slot_node] = None
                if matched[slot_node] is None:
                    matched[slot_node] = matched[n]  # created on restore; nothing to compare
    return matched
