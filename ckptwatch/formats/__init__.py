"""Open any supported checkpoint from a path a user gives.

    resolve(path) -> (kind, location)
    open_checkpoint(path) -> CheckpointSource

Accepts: a bundle prefix (`run/ckpt-3`) or its `.index`; a directory with a
`checkpoint` state file (its latest checkpoint; see layout.latest_from_state_file
for one written on another machine); a SavedModel directory; a Keras `.h5` /
`.weights.h5` / `.keras` file; a TensorFlow V1 checkpoint (formats.v1). `resolve`
also recognises a fingerprint file (kind "fingerprint"), which is a reference only: it holds no
tensor data, and ckptwatch.verify opens it (verify.engine.open_reference).

Raises CheckpointNotFound when nothing checkpoint-like is at the path (or it is a
fingerprint), and IntegrityError when it is a checkpoint but broken beyond opening
(NotRegularFile, "integrity.filetype", for a FIFO, socket or device: never opened).

Light at import (no numpy): the readers load when a checkpoint is opened, so the
daemon's main process can use formats.layout, formats.names and formats.base.
"""

from __future__ import annotations

import glob
import os

from ckptwatch.errors import CheckpointNotFound
from ckptwatch.formats import layout
from ckptwatch.formats.base import CheckpointSource, IntegrityError, IntegrityProblem, TensorInfo
from ckptwatch.formats.files import check_regular, open_regular
from ckptwatch.formats.layout import checkpoint_exists

__all__ = [
    "CheckpointSource",
    "IntegrityError",
    "IntegrityProblem",
    "TensorInfo",
    "checkpoint_exists",
    "open_checkpoint",
    "resolve",
]


def resolve(path: str) -> tuple[str, str]:
    """(kind, location): kind is bundle | savedmodel | hdf5 | keras | tf-v1 | fingerprint."""
    kind, location, _ = _resolve(path)
    return kind, location


def _resolve(path: str) -> tuple[str, str, str | None]:
    """(kind, location, note): the note (or None) says how a state file's path was relocated."""
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        if layout.saved_model_marker(p):
            return layout.SAVEDMODEL, os.path.join(p, layout.SAVED_MODEL_VARIABLES), None
        latest = layout.latest_from_state_file(p)
        if latest and not latest.exists:
            raise CheckpointNotFound(
                f"{path}: its `checkpoint` state file names {latest.recorded}, which does not exist"
                + ("" if latest.prefix == os.path.join(p, latest.recorded) else ", nor does its basename beside it")
            )
        if latest:
            kind = layout.V1 if layout.v1_checkpoint_files(latest.prefix) else layout.BUNDLE
            return kind, latest.prefix, latest.note() if latest.relocated else None
        if glob.glob(os.path.join(glob.escape(p), "*" + layout.INDEX_SUFFIX)):
            raise CheckpointNotFound(
                f"{path}: no `checkpoint` state file; name a checkpoint prefix such as {path}/ckpt-1"
            )
        raise CheckpointNotFound(f"{path}: directory holds no checkpoint")
    if os.path.isfile(p):
        name = os.path.basename(p)
        if name == layout.STATE_FILE:
            return _resolve(os.path.dirname(p))
        if name.endswith(layout.INDEX_SUFFIX):
            return layout.BUNDLE, p[: -len(layout.INDEX_SUFFIX)], None
        if name.endswith(layout.KERAS_SUFFIX):
            return layout.KERAS, p, None
        if name.endswith(layout.HDF5_SUFFIXES):
            return layout.HDF5, p, None
        if layout.looks_like_fingerprint(p):
            return layout.FINGERPRINT, p, None
        with open_regular(p) as f:
            head = f.read(8)
        if head == layout.HDF5_MAGIC:
            return layout.HDF5, p, None
        if head.startswith(layout.ZIP_MAGIC):
            return layout.KERAS, p, None
        if layout.v1_checkpoint_files(p):
            return layout.V1, p, None
        if head.startswith(layout.GZIP_MAGIC):
            raise IntegrityError("integrity.fingerprint", f"{path}: gzip data that does not inflate to a fingerprint")
        raise CheckpointNotFound(f"{path}: not a checkpoint, Keras file or fingerprint")
    if os.path.exists(p + layout.INDEX_SUFFIX) or layout.data_shards(p):
        return layout.BUNDLE, p, None  # an index that is a FIFO or a device: the reader refuses it, a finding
    if layout.v1_checkpoint_files(p):
        return layout.V1, p, None
    if os.path.exists(p):
        check_regular(p)  # a FIFO, socket or device given as PATH: NotRegularFile, never opened
    raise CheckpointNotFound(f"{path}: no such file, directory or checkpoint prefix")


def open_checkpoint(path: str) -> CheckpointSource:
    """The checkpoint at `path`, opened for reading (not a fingerprint: see resolve)."""
    kind, location, note = _resolve(path)
    if kind == layout.FINGERPRINT:  # a reference only: ckptwatch.verify.engine.open_reference opens it
        raise CheckpointNotFound(
            f"{path} is a fingerprint (statistics, no tensor data): give it as --previous or --golden (diff: as B)"
        )
    if kind in (layout.BUNDLE, layout.SAVEDMODEL):
        from ckptwatch.formats.bundle import BundleSource

        if kind == layout.BUNDLE:
            source = BundleSource(location)
            if note:
                source.problems.insert(0, IntegrityProblem(layout.RELOCATED_CHECK, note))
            return source
        directory = os.path.dirname(os.path.dirname(location))
        if not any(os.path.getsize(p) for p in glob.glob(os.path.join(glob.escape(directory), "saved_model.pb*"))):
            raise IntegrityError("integrity.savedmodel", f"{path}: saved_model.pb is empty")
        if not os.path.isfile(location + layout.INDEX_SUFFIX):
            raise IntegrityError("integrity.index", f"{path}: SavedModel has no variables/variables.index")
        return BundleSource(location, format="savedmodel")
    if kind == layout.V1:
        from ckptwatch.formats.v1 import V1Source

        v1 = V1Source(layout.v1_prefix(location), layout.v1_checkpoint_files(location))
        if note:
            v1.problems.insert(0, IntegrityProblem(layout.RELOCATED_CHECK, note))
        return v1
    if kind == layout.KERAS:
        from ckptwatch.formats.keras_archive import open_keras_archive

        return open_keras_archive(location)
    from ckptwatch.formats.hdf5 import open_hdf5

    return open_hdf5(location)
