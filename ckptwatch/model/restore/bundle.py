"""Restore a TF bundle (TF2 object-based or TF1 name-based) into factory-built objects.

Matching first (ckptwatch.model.restore.graph for object-based checkpoints, variable names
against keys for TF1 Saver ones), then TF restores for real, and every restored variable is
compared bit for bit with the value our own reader gets for its key (fidelity); a variable
still holding its initial value is named.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ckptwatch.formats.bundle import OBJECT_GRAPH_KEY, BundleSource
from ckptwatch.model.restore.built import Built, as_array, is_variable, joined, tf_variable, variable_label
from ckptwatch.model.restore.graph import checkpoint_names, python_graph, restore_root, walk
from ckptwatch.model.restore.status import RestoreOutcome, first_line, named, rename_findings, status_findings
from ckptwatch.model.runtime import tensorflow
from ckptwatch.policy import Policy
from ckptwatch.verify.report import Finding


@dataclass
class Variable:
    path: str  # "(root).model.dense.kernel" (object-based) or the TF1 name "scope/dense/kernel"
    obj: Any
    key: str | None = None  # checkpoint key it restores from


def restore_bundle(
    built: Built, source: BundleSource, prefix: str, policy: Policy, saved_model: bool = False
) -> RestoreOutcome:
    """Restore a TF bundle (TF2 object-based or TF1 name-based, or a SavedModel's variables) into `built`."""
    tf = tensorflow()
    out = RestoreOutcome()
    nodes = source.object_graph()
    infos = {t.name: t for t in source.tensors()}
    root = restore_root(built, nodes, saved_model)
    objects, py_names, view = python_graph(root)
    variables = [o for o in objects if is_variable(o)]
    before = {id(v): as_array(v).tobytes() for v in variables}
    pairs: list[Variable] = []
    unused: list[tuple[str, tuple, str]] = []  # (name, (shape, dtype), key)
    shapes: list[tuple[str, str]] = []
    if nodes is not None:
        method = "object-graph"
        matched = walk(nodes, root, view)
        ck_names = checkpoint_names(nodes)
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
                if attr != "VARIABLE_VALUE" or not is_variable(obj) or key not in infos:
                    continue
                if tuple(obj.shape) != infos[key].shape:
                    shapes.append(
                        (
                            ck_names[n],
                            f"checkpoint shape {list(infos[key].shape)} goes to model variable {variable_label(obj)} "
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
            name = tf_variable(v).name.split(":")[0]
            by_name[name] = v
        keys = {k for k, t in infos.items() if k != OBJECT_GRAPH_KEY and t.kind != "meta"}
        for name, v in by_name.items():
            if name in infos and tuple(v.shape) != infos[name].shape:
                shapes.append((name, f"checkpoint shape {list(infos[name].shape)}, model shape {list(v.shape)}"))
            elif name in infos:
                pairs.append(Variable(name, v, name))
        unmatched = [(name, v) for name, v in by_name.items() if name not in keys]
        unused = [(k, (infos[k].shape, infos[k].dtype), k) for k in sorted(keys - set(by_name))]
    named(
        out.findings,
        "fail",
        "restore.shape",
        [(n, f"{n}: {why}: TensorFlow refuses this restore") for n, why in shapes],
    )
    strict = status_findings(
        out,
        policy,
        [(n, f"{variable_label(v)}, {list(v.shape)}") for n, v in unmatched],
        [(name, key) for name, _, key in unused],
    )
    unmatched_named = [(n, v) for n, v in unmatched if n in strict]
    out.findings += rename_findings(unmatched_named, unused)
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
            tf.compat.v1.train.Saver(var_list={p.key: tf_variable(p.obj) for p in pairs}).restore(None, prefix)
    except Exception as e:  # TF's restore raising is itself the finding
        out.findings.append(Finding("fail", "restore.error", f"TensorFlow could not restore it: {first_line(e)}"))
        return out
    out.restored = True
    _fidelity(out, source, pairs, before, variables, py_names)
    return out


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
        assert p.key is not None  # paired: it restored from this key
        paired.add(id(p.obj))
        expected = joined(source.read(p.key))
        actual = as_array(p.obj).reshape(-1)
        checked += 1
        same = actual.dtype.itemsize == expected.dtype.itemsize and actual.tobytes() == expected.tobytes()
        if not same:
            if actual.tobytes() == before.get(id(p.obj)):
                initial.append((p.path, f"{p.path} still holds its initial value, not the checkpoint's ({p.key})"))
            else:
                wrong.append((p.path, f"{p.path} differs from the checkpoint value {p.key} after restore"))
    named(out.findings, "fail", "restore.fidelity", wrong)
    named(out.findings, "fail", "restore.initializer", initial)
    out.section["fidelity"] = {"checked": checked, "mismatched": len(wrong) + len(initial)}
    out.section["initializer"] = [n for n, _ in initial] + [
        py_names[id(v)] for v in variables if id(v) not in paired and as_array(v).tobytes() == before.get(id(v))
    ]
