"""Checkpoints held open: which files make up a committed candidate, and the stand-in a
reader opens instead of it once CheckpointManager (max_to_keep) may have deleted it.

    candidate_files(kind, path) -> [name]        the candidate's files, relative to its directory
    stand_in(root, path, held) -> path under root  a mirror of the candidate made of symbolic links
    original(path) -> path                         what a path under a stand-in stands for
    forget(root)                                   the stand-in is gone
    real_file(path)                                a path libhdf5 opens (context manager)

The daemon's main process opens every file of a candidate when it sees its commit
(ckptwatch.daemon.holding) and keeps the descriptors until the verdict. A worker reads through
them: `held` maps each file (relative to the candidate's directory) to a path that reopens the
held descriptor (`/proc/<daemon pid>/fd/<n>`: an unlinked file stays readable there for a process
of the same user), or None where it is not held. `stand_in` builds, under `root` (the worker's
own temporary directory, never a watched one), the candidate's layout as links to those paths
-- or to the original file where a stand-in is missing or unreachable -- and returns the
path that stands for the candidate: every reader (ours, h5py, TensorFlow) opens it unchanged.

Checks that judge a file by where it really lies (a SavedModel asset must resolve inside its
own `assets/`) ask `original(path)`: a stand-in's links point at descriptors, not there.

Light on purpose (stdlib only): the daemon's main process lists the files to hold with it.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Iterator

from ckptwatch.formats.files import open_regular
from ckptwatch.formats.layout import BUNDLE, INDEX_SUFFIX, SAVEDMODEL, data_shards, is_temporary

MAX_FILES = 4096  # files held per candidate at most (a SavedModel's assets); the rest are read by path
MAX_DEPTH = 8  # levels of a SavedModel directory looked into (variables/, assets/...)
MAX_ENTRIES = 4 * MAX_FILES  # directory entries looked at per candidate, whatever they are

_STANDING: dict[str, str] = {}  # stand-in root -> the candidate's own directory (this process's stand-ins)


def candidate_files(kind: str, path: str) -> list[str]:
    """The files a candidate is made of, relative to its directory (`os.path.dirname(path)`):
    a bundle's index and data shards, a Keras file, every file of a SavedModel directory (at
    most MAX_FILES, MAX_DEPTH levels deep, MAX_ENTRIES directory entries looked at, not
    following symbolic links to directories).
    Bounded work: one glob, or one capped walk without recursion."""
    base = os.path.basename(path)
    if kind == BUNDLE:
        shards = [os.path.basename(p) for p in data_shards(path)]
        return [base + INDEX_SUFFIX] + [s for s in shards if not is_temporary(s)]
    if kind != SAVEDMODEL:
        return [base]
    found: list[str] = []
    todo = [(base, 0)]
    parent = os.path.dirname(path)
    budget = MAX_ENTRIES
    while todo and len(found) < MAX_FILES and budget > 0:
        rel, depth = todo.pop()
        try:
            with os.scandir(os.path.join(parent, rel)) as it:
                entries = list(itertools.islice(it, budget))
        except OSError:
            continue
        budget -= len(entries)
        for entry in entries:
            name = os.path.join(rel, entry.name)
            try:
                mode = entry.stat(follow_symlinks=False).st_mode
            except OSError:
                continue
            if stat.S_ISDIR(mode):
                if depth + 1 < MAX_DEPTH:
                    todo.append((name, depth + 1))
            elif not is_temporary(entry.name) and len(found) < MAX_FILES:
                found.append(name)
    return sorted(found)


def _safe(rel: str) -> bool:
    """A relative name that stays below the candidate's directory."""
    return bool(rel) and not os.path.isabs(rel) and ".." not in rel.split(os.sep) and os.path.normpath(rel) == rel


def _reachable(target: str) -> bool:
    try:
        return stat.S_ISREG(os.stat(target).st_mode)
    except OSError:
        return False


def stand_in(root: str, path: str, held: dict[str, str | None]) -> str:
    """Mirror the candidate at `path` under the empty directory `root` as symbolic links: each
    file of `held` to its held stand-in when that can be opened (a regular file), else to the
    original file. Returns the path standing for the candidate (`root`/basename(path)); names
    in reports that start with `root` mean the candidate's directory. ValueError for a name
    that would leave `root`."""
    parent = os.path.dirname(path)
    for rel, target in sorted(held.items()):
        if not _safe(rel):
            raise ValueError(f"held file name {rel!r} leaves the candidate's directory")
        dest = os.path.join(root, rel)
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        os.symlink(target if target and _reachable(target) else os.path.join(parent, rel), dest)
    standing = os.path.join(root, os.path.basename(path))
    os.makedirs(root, exist_ok=True)
    _STANDING[os.path.abspath(root)] = parent
    return standing


def original(path: str) -> str:
    """The path `path` stands for when it lies under a stand-in this process made (else `path`)."""
    path = os.path.abspath(path)
    for root, parent in _STANDING.items():
        if path == root or path.startswith(root + os.sep):
            return parent + path[len(root) :]
    return path


@contextlib.contextmanager
def real_file(path: str) -> Iterator[str]:
    """`path` itself, unless it is a stand-in whose original was unlinked: libhdf5 resolves a
    link's real path (then "can't retrieve real path for file"), so loaders that take only a
    path (Keras' load_weights / load_model) get a private copy in the temporary directory,
    under the same name, removed afterwards. Our own HDF5 reader reads such a file through a
    file object instead."""
    if not os.path.islink(path) or os.path.exists(os.path.realpath(path)):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="ckptwatch-held-") as directory:
        copy = os.path.join(directory, os.path.basename(path))
        with open_regular(path) as src, open(copy, "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        yield copy


def forget(root: str) -> None:
    """The stand-in under `root` is removed: `original` no longer maps it."""
    _STANDING.pop(os.path.abspath(root), None)


__all__ = ["MAX_DEPTH", "MAX_ENTRIES", "MAX_FILES", "candidate_files", "forget", "original", "real_file", "stand_in"]
