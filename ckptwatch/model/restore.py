"""Restore a checkpoint into freshly built objects, the way the training job would,
and say by name what did not line up.

Object-based checkpoints (TF2) match objects by walking two graphs from the root:
the checkpoint's TrackableObjectGraph (read by our own parser) and the Python
objects' dependency graph, child by child, by local name. That walk is what
tf.train.Checkpoint.restore does; doing it ourselves first tells us

    unmatched   model objects with variables that get no value      (assert_existing_objects_matched)
    unused      checkpoint values no object takes                    (assert_consumed)
    shape       a match whose shapes differ (TF would raise halfway through the restore)

before TensorFlow restores anything. Name-based checkpoints (TF1 Saver) match
variable names to keys. Then TF restores for real, and we compare every restored
variable, bit for bit, with the value our own reader gets for its key (fidelity),
and name every variable still holding its initial value (the "weights look random
after restore" failure). Keras weight files go through Keras' own loader, then a round
trip (saved again by Keras, compared key by key) stands in for the walk and the fidelity
check.
"""

from __future__ import annotations

import fnmatch
import os
import shutil
import tempfile
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ckptwatch.formats.base import META, TensorInfo
from ckptwatch.formats.bundle import OBJECT_GRAPH_KEY, BundleSource
from ckptwatch.model.runtime import tensorflow
from ckptwatch.policy import Policy
from ckptwatch.verify.report import Finding
from ckptwatch.verify.structure import detect_renames

MAX_NAMED = 20  # findings per check; the rest are counted in one more
IGNORED_CHECKPOINT_CHILDREN = {"save_counter"}  # tf.train.Checkpoint's own bookkeeping


@dataclass
class Built:
    """What the factory returned, arranged for tf.train.Checkpoint and for running."""

    objects: dict[str, Any]  # tf.train.Checkpoint(**objects)
    model: Any  # what is called on the probe batch
    optimizer: Any = None
    loss: Any = None


@dataclass
class Variable:
    path: str  # "(root).model.dense.kernel" (object-based) or the TF1 name "scope/dense/kernel"
    obj: Any
    key: str | None = None  # checkpoint key it restores from


@dataclass
class RestoreOutcome:
    findings: list[Finding] = field(default_factory=list)
    section: dict = field(default_factory=dict)
    restored: bool = False  # TF restored values (the model can be run)
    unmatched: int = 0


# -- building --------------------------------------------------------------------------------


def arrange(made: Any) -> Built:
    """A factory may return a Keras model, a tf.Module, or a dict like the job's
    tf.train.Checkpoint(**kwargs) (plus an optional "loss" callable)."""
    if isinstance(made, dict):
        objects = {k: v for k, v in made.items() if k != "loss"}
        model = objects.get("model") or next((v for v in objects.values() if callable(v)), None)
        return Built(objects, model, objects.get("optimizer"), made.get("loss"))
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


def _label(obj: Any) -> str:
    """The name people know a variable by: a Keras variable's path ("mlp/extra/kernel"), else its TF name."""
    path = getattr(obj, "path", None)
    return str(path) if isinstance(path, str) else str(getattr(obj, "name", "?")).split(":")[0]


def _is_variable(obj: Any) -> bool:
    return hasattr(obj, "assign") and hasattr(obj, "shape") and hasattr(obj, "dtype")


def _value(obj: Any) -> np.ndarray:
    return np.asarray(obj.numpy() if hasattr(obj, "numpy") else obj)


def _tf_variable(obj: Any) -> Any:
    return getattr(obj, "value", obj) if not hasattr(obj, "_shared_name") else obj


# -- matching -------------------------------------------------------------------------------


def _root(built: Built, nodes: list | None) -> Any:
    """The restore root: the factory's objects under their names, like the job's
    tf.train.Checkpoint(**objects) (without its save_counter, which Checkpoint.write
    does not store), or the single object itself when the checkpoint has it as root
    (SavedModel variables, Checkpoint(root=...))."""
    from tensorflow.python.trackable.autotrackable import AutoTrackable

    objects = dict(built.objects)
    if nodes is not None and len(objects) == 1:
        names = {n for _, n in nodes[0].children} - IGNORED_CHECKPOINT_CHILDREN
        ((key, obj),) = objects.items()
        if key not in names and names:
            if len(names) != 1:
                return obj
            objects = {names.pop(): obj}
    root = AutoTrackable()
    for key, obj in objects.items():
        setattr(root, key, obj)
    return root


OPTIMIZER_EDGES = {"optimizer", "_optimizer"}


def _preferred_names(children: Any, root: Any, key: Any = id) -> tuple[dict[Any, str], list[Any]]:
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


def _python_graph(root: Any) -> tuple[list[Any], dict[int, str], Any]:
    from tensorflow.python.checkpoint import graph_view

    view = graph_view.ObjectGraphView(root)
    names, objects = _preferred_names(lambda o: [(ref.name, ref.ref) for ref in view.list_children(o)], root)
    return objects, names, view


def _checkpoint_names(nodes: list) -> dict[int, str]:
    """TF's names for checkpoint nodes (`(root).model.dense.kernel`, preferring paths outside
    the optimizer), and `(root).optimizer's state 'm' for (root).model.dense.kernel` for slots."""
    names, _ = _preferred_names(lambda n: [(local, child) for child, local in nodes[n].children], 0, key=lambda n: n)
    for n, node in enumerate(nodes):
        for original, slot, slot_node in node.slots:
            if n in names and original in names:
                names[slot_node] = f"{names[n]}'s state '{slot}' for {names[original]}"
    return names


def _walk(nodes: list, root: Any, view: Any) -> dict[int, Any]:
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


def _allowed(patterns: list[str], *names: str) -> bool:
    return any(fnmatch.fnmatchcase(n, p) for p in patterns for n in names if n)


def _named(findings: list[Finding], severity: str, check: str, items: list[tuple[str, str]]) -> None:
    """One finding per (object, message), at most MAX_NAMED, then a count."""
    for name, message in items[:MAX_NAMED]:
        findings.append(Finding(severity, check, message, name))
    if len(items) > MAX_NAMED:
        findings.append(Finding(severity, check, f"... and {len(items) - MAX_NAMED} more like these"))


def _slash(path: str) -> str:
    return path.removeprefix("(root).").replace(".", "/")


def _status(
    out: RestoreOutcome, policy: Policy, unmatched: list[tuple[str, str]], unused: list[tuple[str, str]]
) -> set[str]:
    """Findings for model variables left without a value (`unmatched`: name, what it is) and
    for checkpoint values no model variable takes (`unused`: name, key), under the watch's
    policy. Returns the unmatched names the policy does not allow."""
    strict = [(n, what) for n, what in unmatched if not _allowed(policy.allow_unrestored, n, _slash(n))]
    out.unmatched = len(strict)
    _named(
        out.findings,
        "fail",
        "restore.unmatched",
        [(n, f"{n} ({what}) has no value in the checkpoint: it keeps its initializer") for n, what in strict],
    )
    _named(
        out.findings,
        "info",
        "restore.unmatched",
        [
            (n, f"{n} has no value in the checkpoint (allowed by allow_unrestored)")
            for n, _ in unmatched
            if _allowed(policy.allow_unrestored, n, _slash(n))
        ],
    )
    severity = {"consumed": "fail", "existing": "warn", "partial": "info"}[policy.restore]
    hard, soft = [], []
    for name, key in unused:
        why = f"{name}: a checkpoint value no model object takes" + (f" ({key})" if key != name else "")
        (soft if _allowed(policy.allow_unused, name, key, _slash(name)) else hard).append((name, why))
    _named(out.findings, severity, "restore.unused", hard)
    _named(out.findings, "info", "restore.unused", soft)
    return {n for n, _ in strict}


def _renames(unmatched: list[tuple[str, Any]], unused: list[tuple[str, tuple, str]]) -> list[Finding]:
    """Propose the prefix mapping that would line names up again (a renamed scope or attribute)."""
    missing = [TensorInfo(_slash(name), str(dtype), tuple(shape), 0) for name, (shape, dtype), _ in unused]
    wanted = [TensorInfo(_slash(name), _dtype_name(v), tuple(v.shape), 0) for name, v in unmatched]
    out = []
    for r in detect_renames(missing, wanted):
        if len(r.pairs) < 1:
            continue
        old, new = r.old_prefix or "(root)/", r.new_prefix or "(root)/"
        example = r.pairs[0]
        out.append(
            Finding(
                "fail",
                "restore.renamed",
                f"{len(r.pairs)} checkpoint values under {old!r} match model variables under {new!r} by shape "
                f"(e.g. {example[0]} -> {example[1]}): the scope or attribute was renamed, so these variables "
                f"keep their initializers",
                new.rstrip("/"),
            )
        )
    return out


# -- restoring -----------------------------------------------------------------------------


def _dtype_name(obj: Any) -> str:
    dt = getattr(obj, "dtype", None)
    return getattr(dt, "name", str(dt))


def restore_bundle(built: Built, source: BundleSource, prefix: str, policy: Policy) -> RestoreOutcome:
    """Restore a TF bundle (TF2 object-based or TF1 name-based) into `built`."""
    tf = tensorflow()
    out = RestoreOutcome()
    nodes = source.object_graph()
    infos = {t.name: t for t in source.tensors()}
    root = _root(built, nodes)
    objects, py_names, view = _python_graph(root)
    variables = [o for o in objects if _is_variable(o)]
    before = {id(v): _value(v).tobytes() for v in variables}
    pairs: list[Variable] = []
    unused: list[tuple[str, tuple, str]] = []  # (name, (shape, dtype), key)
    shapes: list[tuple[str, str]] = []
    if nodes is not None:
        method = "object-graph"
        matched = _walk(nodes, root, view)
        ck_names = _checkpoint_names(nodes)
        matched_ids = {id(o) for o in matched.values()}
        for n, node in enumerate(nodes):
            if not node.attributes or n in matched:
                continue
            if ck_names.get(n, "").split(".")[1:2] == ["save_counter"]:
                continue
            key = node.attributes[0][1]
            info = infos.get(key)
            unused.append((ck_names.get(n, key), ((info.shape, info.dtype) if info else ((), "?")), key))
        for n, obj in matched.items():
            for attr, key in nodes[n].attributes:
                if attr != "VARIABLE_VALUE" or not _is_variable(obj) or key not in infos:
                    continue
                if tuple(obj.shape) != infos[key].shape:
                    shapes.append(
                        (
                            ck_names[n],
                            f"checkpoint shape {list(infos[key].shape)} goes to model variable {_label(obj)} "
                            f"of shape {list(obj.shape)}",
                        )
                    )
                else:
                    pairs.append(Variable(ck_names[n], obj, key))
        unmatched = [(py_names[id(v)], v) for v in variables if id(v) not in matched_ids]
    else:
        method = "name-based"
        by_name = {}
        for v in variables:
            name = _tf_variable(v).name.split(":")[0]
            by_name[name] = v
        keys = {k for k, t in infos.items() if k != OBJECT_GRAPH_KEY and t.kind != "meta"}
        for name, v in by_name.items():
            if name in infos and tuple(v.shape) != infos[name].shape:
                shapes.append((name, f"checkpoint shape {list(infos[name].shape)}, model shape {list(v.shape)}"))
            elif name in infos:
                pairs.append(Variable(name, v, name))
        unmatched = [(name, v) for name, v in by_name.items() if name not in keys]
        unused = [(k, (infos[k].shape, infos[k].dtype), k) for k in sorted(keys - set(by_name))]
    _named(
        out.findings,
        "fail",
        "restore.shape",
        [(n, f"{n}: {why}: TensorFlow refuses this restore") for n, why in shapes],
    )
    strict = _status(
        out,
        policy,
        [(n, f"{_label(v)}, {list(v.shape)}") for n, v in unmatched],
        [(name, key) for name, _, key in unused],
    )
    unmatched_named = [(n, v) for n, v in unmatched if n in strict]
    out.findings += _renames(unmatched_named, unused)
    out.section = {
        "method": method,
        "matched": len(pairs),
        "unmatched": [n for n, _ in unmatched],
        "unused": [n for n, _, _ in unused],
        "shape_mismatches": [n for n, _ in shapes],
        "tf_status": None,
        "fidelity": None,
        "initializer": [],
    }
    if shapes:
        return out  # TF would raise half-way through: nothing restored, nothing to run
    try:
        if method == "object-graph":
            from tensorflow.python.checkpoint import checkpoint as tf_checkpoint
            from tensorflow.python.checkpoint import graph_view

            status = tf_checkpoint.TrackableSaver(graph_view.ObjectGraphView(root)).restore(prefix)
            out.section["tf_status"] = _tf_assertions(status)
            status.expect_partial()
        elif pairs:
            tf.compat.v1.train.Saver(var_list={p.key: _tf_variable(p.obj) for p in pairs}).restore(None, prefix)
    except Exception as e:  # TF's restore raising is itself the finding
        out.findings.append(Finding("fail", "restore.error", f"TensorFlow could not restore it: {first_line(e)}"))
        return out
    out.restored = True
    _fidelity(out, source, pairs, before, variables, py_names)
    return out


def first_line(e: BaseException) -> str:
    """`TypeName: the first line of the message`, for findings."""
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:300] if text else ''}"


def _tf_assertions(status: Any) -> dict:
    """TensorFlow's own verdicts, as a cross-check of ours."""
    result = {}
    for name in ("assert_existing_objects_matched", "assert_consumed"):
        try:
            getattr(status, name)()
            result[name] = "ok"
        except AssertionError as e:
            result[name] = first_line(e).removeprefix("AssertionError: ")
        except Exception as e:
            result[name] = first_line(e)
    return result


def _fidelity(
    out: RestoreOutcome,
    source: BundleSource,
    pairs: list[Variable],
    before: dict[int, bytes],
    variables: list[Any],
    py_names: dict[int, str],
) -> None:
    """Every restored variable equals its checkpoint value bit for bit; name those still
    holding their initial value."""
    checked, wrong, initial = 0, [], []
    paired = set()
    for p in pairs:
        paired.add(id(p.obj))
        expected = _joined(source.read(p.key))
        actual = _value(p.obj).reshape(-1)
        checked += 1
        same = actual.dtype.itemsize == expected.dtype.itemsize and actual.tobytes() == expected.tobytes()
        if not same:
            if actual.tobytes() == before.get(id(p.obj)):
                initial.append((p.path, f"{p.path} still holds its initial value, not the checkpoint's ({p.key})"))
            else:
                wrong.append((p.path, f"{p.path} differs from the checkpoint value {p.key} after restore"))
    _named(out.findings, "fail", "restore.fidelity", wrong)
    _named(out.findings, "fail", "restore.initializer", initial)
    out.section["fidelity"] = {"checked": checked, "mismatched": len(wrong) + len(initial)}
    out.section["initializer"] = [n for n, _ in initial] + [
        py_names[id(v)] for v in variables if id(v) not in paired and _value(v).tobytes() == before.get(id(v))
    ]


def restore_keras_file(built: Built, path: str, policy: Policy) -> RestoreOutcome:
    """`.weights.h5`, `.h5` or `.keras` into a factory-built Keras model, with Keras' own
    loader (it refuses shape mismatches). Keras 3 files are then checked by a round trip: the
    model's weights, saved again by Keras to a private temp file (the key layout is Keras'
    own: by position, not by layer name), must hold the file's keys with the same values,
    bit for bit. A key only in the file is unused, one only in the model unmatched. Legacy
    Keras 2 `.h5` files have another layout: for them only the initializer check is left."""
    out = RestoreOutcome()
    model = built.model
    variables = list(getattr(model, "weights", []))
    before = [_value(v).tobytes() for v in variables]
    out.section = {
        "method": "keras-load_weights",
        "matched": len(variables),
        "unmatched": [],
        "unused": [],
        "shape_mismatches": [],
        "tf_status": None,
        "fidelity": None,
        "initializer": [],
    }
    try:
        model.load_weights(path)
    except Exception as e:
        out.findings.append(Finding("fail", "restore.error", f"Keras could not load the weights: {first_line(e)}"))
        return out
    out.restored = True
    if _round_trip(out, model, path, policy):
        return out
    still = [
        _label(v) for v, b in zip(variables, before, strict=True) if _value(v).tobytes() == b and np.any(_value(v))
    ]
    out.section["initializer"] = still
    _named(
        out.findings,
        "warn",
        "restore.initializer",
        [(n, f"{n} holds the same values as before the load (its initial value)") for n in still],
    )
    return out


def _round_trip(out: RestoreOutcome, model: Any, path: str, policy: Policy) -> bool:
    """The Keras 3 fidelity check of restore_keras_file; False if the file's layout is not
    the one Keras 3 writes (no key in common)."""
    from ckptwatch.formats import open_checkpoint
    from ckptwatch.formats.hdf5 import open_hdf5

    workdir = tempfile.mkdtemp(prefix="ckptwatch-")  # private (0700), never next to the input
    try:
        again = os.path.join(workdir, "restored.weights.h5")
        try:
            model.save_weights(again)
        except Exception as e:  # e.g. not a Keras 3 model, or no room: the initializer check still applies
            out.findings.append(Finding("info", "restore.fidelity", f"not compared key by key: {first_line(e)}"))
            return False
        with open_checkpoint(path) as original, open_hdf5(again) as restored:
            in_file = {t.name: t for t in original.tensors() if t.kind != META}
            in_model = {t.name: t for t in restored.tensors() if t.kind != META}
            common = sorted(in_file.keys() & in_model.keys())
            if not common:
                return False
            wrong = []
            for k in common:
                expected, actual = _joined(original.read(k)), _joined(restored.read(k))
                if expected.dtype != actual.dtype:
                    wrong.append(
                        (k, f"{k}: the model holds {actual.dtype}, the file {expected.dtype}: converted on load")
                    )
                elif expected.tobytes() != actual.tobytes():
                    wrong.append((k, f"{k} differs from the file's value after the load"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    unmatched = sorted(in_model.keys() - in_file.keys())
    unused = sorted(in_file.keys() - in_model.keys())
    _status(
        out,
        policy,
        [(k, f"{in_model[k].dtype}, {list(in_model[k].shape)}") for k in unmatched],
        [(k, k) for k in unused],
    )
    _named(out.findings, "fail", "restore.fidelity", wrong)
    out.section.update(
        method="keras-load_weights+round-trip",
        matched=len(common),
        unmatched=unmatched,
        unused=unused,
        fidelity={"checked": len(common), "mismatched": len(wrong)},
        initializer=unmatched,
    )
    return True


def _joined(chunks: Iterator[np.ndarray]) -> np.ndarray:
    return np.concatenate([c.reshape(-1) for c in chunks] or [np.empty(0)])
