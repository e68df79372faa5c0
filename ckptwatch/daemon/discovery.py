"""Which checkpoints a watched directory holds, and whether each is completely written.

    find_candidates(watch, directory, include, exclude) -> [Candidate]   sorted by step
    scan(...) -> Scan                                                      candidates + exports under way
    check_completion(candidate, now, stability) -> Completion              (daemon/completion.py)
    StabilityTracker(settle_seconds)                                      "unchanged for how long"

Pure functions over the filesystem: read-only, no TensorFlow, no numpy. What a format's files
are (suffixes, SavedModel markers, temp artefacts, a bundle's shard count from its index
header) is ckptwatch.formats.layout's to say; what "complete" means is daemon/completion.py's,
the settle clocks are in daemon/stability.py.

One scan looks at each entry of the watch directory alone: an entry that cannot be examined
is skipped and the others are not. A FIFO, socket or device named like a checkpoint file is
a candidate (the worker refuses it with a finding), never opened here.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import time
from collections.abc import Sequence
from dataclasses import dataclass

from ckptwatch.daemon.completion import candidate_key, check_completion, current_key, special
from ckptwatch.daemon.model import Candidate
from ckptwatch.daemon.stability import StabilityTracker, regular_stat
from ckptwatch.formats.layout import (
    BUNDLE,
    HDF5,
    KERAS,
    SAVEDMODEL,
    classify,
    is_temporary,
    saved_model_marker,
    temp_leftovers,
)
from ckptwatch.formats.names import step_from_path

__all__ = [
    "BUNDLE",
    "HDF5",
    "KERAS",
    "SAVEDMODEL",
    "Scan",
    "StabilityTracker",
    "candidate_key",
    "check_completion",
    "classify",
    "current_key",
    "exports_in_progress",
    "find_candidates",
    "is_temporary",
    "saved_model_marker",
    "scan",
    "temp_leftovers",
]

MAX_ENTRIES = 100_000  # directory entries looked at per scan: a watch directory holding more is not sane
EXPORT_WINDOW = 300.0  # seconds a SavedModel export with no saved_model.pb yet counts as under way


def _matches(base: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(base, p) for p in include) and not any(fnmatch.fnmatchcase(base, p) for p in exclude)


@dataclass
class Scan:
    """What one pass over a watch directory found."""

    candidates: list[Candidate]  # sorted by step (then path)
    exporting: list[str]  # subdirectories where a SavedModel export is under way (see exports_in_progress)


def scan(
    watch: str,
    directory: str,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    now: float | None = None,
    window: float = EXPORT_WINDOW,
) -> Scan:
    """find_candidates and exports_in_progress in one pass over `directory` (`now`: unix time).

    A directory that does not exist gives nothing; other errors reading `directory` itself
    (permissions, I/O) are raised as OSError. Entries that vanish or cannot be stat'ed during
    the scan are skipped.
    """
    directory = os.path.abspath(directory)
    now = time.time() if now is None else now
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return Scan([], [])
    found: list[Candidate] = []
    exporting: list[str] = []
    for entry in entries[:MAX_ENTRIES]:
        try:
            _scan_entry(watch, directory, entry, include, exclude, now, window, found, exporting)
        except Exception:  # one odd entry must not cost the others their scan
            continue
    itself = _saved_model_stat(directory)
    if itself is not None and _matches(os.path.basename(directory), include, exclude):
        found.append(_candidate(watch, directory, SAVEDMODEL, itself))
    found.sort(key=lambda c: c.sort_key)
    return Scan(found, sorted(exporting))


def _scan_entry(
    watch: str,
    directory: str,
    entry: os.DirEntry,
    include: Sequence[str],
    exclude: Sequence[str],
    now: float,
    window: float,
    found: list[Candidate],
    exporting: list[str],
) -> None:
    if is_temporary(entry.name):
        return
    if _is_dir(entry):
        # a symlink (`latest -> 3`) would be the same export twice: watch the real ones
        if entry.is_symlink() or not _matches(entry.name, include, exclude):
            return
        marker = _saved_model_stat(entry.path)
        if marker is not None:
            found.append(_candidate(watch, entry.path, SAVEDMODEL, marker))
        elif _export_under_way(entry.path, now, window):
            exporting.append(entry.path)
        return
    kind_base = classify(entry.name)
    if kind_base is None or not _matches(kind_base[1], include, exclude):
        return
    try:
        st = entry.stat()  # follows symlinks: a linked checkpoint file counts
    except OSError:  # vanished (or a dangling link) meanwhile
        return
    # a FIFO, socket or device named like a checkpoint file is a candidate too: never opened,
    # it gets its own verdict (integrity.filetype) instead of silence
    if stat.S_ISREG(st.st_mode) or special(st.st_mode):
        found.append(_candidate(watch, os.path.join(directory, kind_base[1]), kind_base[0], st))


def find_candidates(
    watch: str,
    directory: str,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
) -> list[Candidate]:
    """The checkpoints in `directory` (not recursive), sorted by step (then path).

    One candidate per `<prefix>.index` (a prefix whose data shards exist but whose index does
    not yet is not a candidate yet), per Keras file (`*.weights.h5`, `*.h5`, `*.hdf5`,
    `*.keras`) and per SavedModel: `directory` itself, or a subdirectory (not a symlink to
    one), once its saved_model.pb exists. Temp artefacts and hidden entries are ignored.
    include/exclude are glob patterns matched against the base name (`ckpt-3` for a bundle,
    `w.weights.h5` for a file, `3` for `export/3/`).
    """
    return scan(watch, directory, include, exclude).candidates


def exports_in_progress(
    directory: str,
    now: float,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
    window: float = EXPORT_WINDOW,
) -> list[str]:
    """Subdirectories of `directory` where a SavedModel export looks under way: `variables/`
    exists (tf.saved_model.save creates it first), saved_model.pb does not yet, and the
    subdirectory or its `variables/` changed within `window` seconds before `now` (unix time).

    Writes inside them raise no event on the watch directory, so the daemon re-checks a watch
    often while it has any; an export abandoned midway stops counting after `window`.
    """
    return scan("", directory, include, exclude, now, window).exporting


def _saved_model_stat(directory: str) -> os.stat_result | None:
    marker = saved_model_marker(directory)
    return regular_stat(marker) if marker else None


def _candidate(watch: str, path: str, kind: str, st: os.stat_result) -> Candidate:
    return Candidate(watch, path, kind, step_from_path(os.path.basename(path)), candidate_key(path, st))


def _export_under_way(path: str, now: float, window: float) -> bool:
    try:
        changed = max(os.stat(path).st_mtime, os.stat(os.path.join(path, "variables")).st_mtime)
    except OSError:  # no variables/: not an export (or not yet)
        return False
    return now - changed <= window


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False
