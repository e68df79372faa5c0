"""Restore a Keras weights file (`.weights.h5`, `.h5`, `.keras`) into a factory-built model.

Keras' own loader does the restore (it refuses shape mismatches); for Keras 3 files a round
trip (the weights saved again by Keras to a private temp file, compared key by key) stands
in for the matching walk and the fidelity check of bundles.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from ckptwatch.formats.base import META
from ckptwatch.formats.held import real_file
from ckptwatch.model.restore.built import Built, as_array, joined, variable_label
from ckptwatch.model.restore.status import RestoreOutcome, first_line, named, status_findings
from ckptwatch.policy import Policy
from ckptwatch.verify.report import Finding


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
    before = [as_array(v).tobytes() for v in variables]
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
        with real_file(path) as readable:  # read through the daemon's held files: see formats.held
            model.load_weights(readable)
    except Exception as e:
        out.findings.append(Finding("fail", "restore.error", f"Keras could not load the weights: {first_line(e)}"))
        return out
    out.restored = True
    if _round_trip(out, model, path, policy):
        return out
    still = [
        variable_label(v)
        for v, b in zip(variables, before, strict=True)
        if as_array(v).tobytes() == b and np.any(as_array(v))
    ]
    out.section["initializer"] = still
    named(
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
        with contextlib.closing(open_checkpoint(path)) as original, open_hdf5(again) as restored:
            in_file = {t.name: t for t in original.tensors() if t.kind != META}
            in_model = {t.name: t for t in restored.tensors() if t.kind != META}
            common = sorted(in_file.keys() & in_model.keys())
            if not common:
                return False
            wrong = []
            for k in common:
                expected, actual = joined(original.read(k)), joined(restored.read(k))
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
    status_findings(
        out,
        policy,
        [(k, f"{in_model[k].dtype}, {list(in_model[k].shape)}") for k in unmatched],
        [(k, k) for k in unused],
    )
    named(out.findings, "fail", "restore.fidelity", wrong)
    out.section.update(
        method="keras-load_weights+round-trip",
        matched=len(common),
        unmatched=unmatched,
        unused=unused,
        fidelity={"checked": len(common), "mismatched": len(wrong)},
        initializer=unmatched,
    )
    return True
