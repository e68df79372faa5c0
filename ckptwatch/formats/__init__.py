"""Open any supported checkpoint (or fingerprint) from a path a user gives.

    open_checkpoint(path) -> CheckpointSource

Accepts: a bundle prefix (`run/ckpt-3`) or its `.index`; a directory with a
`checkpoint` state file (its latest checkpoint); a SavedModel directory; a
Keras `.h5` / `.weights.h5` / `.keras` file; a fingerprint file.

Raises CheckpointNotFound when nothing checkpoint-like is at the path, and
IntegrityError when it is a checkpoint but broken beyond opening.
"""

from __future__ import annotations

import glob
import os

from ckptwatch.errors import CheckpointNotFound
from ckptwatch.formats.base import CheckpointSource, IntegrityError, IntegrityProblem, TensorInfo
from ckptwatch.formats.bundle import BundleSource, read_state_file
from ckptwatch.formats.layout import looks_like_fingerprint

__all__ = [
    "CheckpointSource",
    "IntegrityError",
    "IntegrityProblem",
    "TensorInfo",
    "checkpoint_exists",
    "open_checkpoint",
    "resolve",
]

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"


def checkpoint_exists(path: str | None) -> bool:
    """A file, directory or bundle prefix (its `.index`) is present: used to tell a
    deleted checkpoint (CheckpointManager's max_to_keep) from a broken one."""
    return bool(path) and (os.path.exists(path) or os.path.exists(f"{path}.index"))


def resolve(path: str) -> tuple[str, str]:
    """(kind, location): kind is bundle | savedmodel | hdf5 | keras | fingerprint."""
    p = os.path.abspath(os.path.expanduser(path))
    if os.path.isdir(p):
        if os.path.isfile(os.path.join(p, "saved_model.pb")) or os.path.isfile(os.path.join(p, "saved_model.pbtxt")):
            return "savedmodel", os.path.join(p, "variables", "variables")
        latest = read_state_file(p)
        if latest:
            return "bundle", latest
        if glob.glob(os.path.join(glob.escape(p), "*.index")):
            raise CheckpointNotFound(
                f"{path}: no `checkpoint` state file; name a checkpoint prefix such as {path}/ckpt-1"
            )
        raise CheckpointNotFound(f"{path}: directory holds no checkpoint")
    if os.path.isfile(p):
        name = os.path.basename(p)
        if name == "checkpoint":
            return resolve(os.path.dirname(p))
        if name.endswith(".index"):
            return "bundle", p[: -len(".index")]
        if name.endswith(".keras"):
            return "keras", p
        if name.endswith((".h5", ".hdf5")):
            return "hdf5", p
        if looks_like_fingerprint(p):
            return "fingerprint", p
        with open(p, "rb") as f:
            head = f.read(8)
        if head == _HDF5_MAGIC:
            return "hdf5", p
        if head[:2] == b"PK":
            return "keras", p
        raise CheckpointNotFound(f"{path}: not a checkpoint, Keras file or fingerprint")
    if os.path.isfile(p + ".index") or glob.glob(glob.escape(p) + ".data-*"):
        return "bundle", p
    raise CheckpointNotFound(f"{path}: no such file, directory or checkpoint prefix")


def open_checkpoint(path: str) -> CheckpointSource:
    kind, location = resolve(path)
    if kind == "bundle":
        return BundleSource(location)
    if kind == "savedmodel":
        directory = os.path.dirname(os.path.dirname(location))
        if not any(os.path.getsize(p) for p in glob.glob(os.path.join(glob.escape(directory), "saved_model.pb*"))):
            raise IntegrityError("integrity.savedmodel", f"{path}: saved_model.pb is empty")
        if not os.path.isfile(location + ".index"):
            raise IntegrityError("integrity.index", f"{path}: SavedModel has no variables/variables.index")
        return BundleSource(location, format="savedmodel")
    if kind == "fingerprint":  # a reference only: ckptwatch.verify.engine.open_reference opens it
        raise CheckpointNotFound(
            f"{path} is a fingerprint (statistics, no tensor data): give it as --previous or --golden (diff: as B)"
        )
    if kind == "keras":
        from ckptwatch.formats.keras_archive import open_keras_archive

        return open_keras_archive(location)
    from ckptwatch.formats.hdf5 import open_hdf5

    return open_hdf5(location)
