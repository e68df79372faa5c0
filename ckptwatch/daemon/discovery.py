"""Which checkpoints a watched directory holds, and whether each is completely written.

    find_candidates(watch, directory, include, exclude) -> [Candidate]   sorted by step
    check_completion(candidate, now, stability) -> Completion
    StabilityTracker(settle_seconds)                                      "unchanged for how long"

Pure functions over the filesystem: read-only, no TensorFlow (bundle indexes are parsed
by ckptwatch.formats.bundle in pure Python). What "complete" means follows how the
writers work (see FIELD-NOTES):

- TF bundles (TF2 Checkpoint / CheckpointManager, TF1 Saver): shards are written under
  `<prefix>_temp/` (or as `<prefix>.data-K-of-N.tempstate*`), renamed into place, then
  `<prefix>.index` is written *in place* and `<prefix>_temp/` removed. Complete = no temp
  artefact remains, the index parses, every one of its `num_shards` data files exists and
  none is newer than the index (a newer shard means a rewrite of the same prefix is under
  way, or a copier is still at work).
- Keras `.h5` / `.weights.h5` / `.keras`: written in place by h5py / zipfile with no
  marker, so complete = (size, mtime_ns, inode) unchanged for `settle_seconds`.
- A bundle that stays broken (index does not parse, a shard is missing) but whose files
  have not changed for `settle_seconds`, with no temp artefact left, is "complete" with
  reason "settled": it is genuinely corrupt and must be verified (a fail verdict), never
  left pending forever.

"Complete" is about the candidate *as found*: when its index (or file) no longer has the
mtime/size recorded in `Candidate.key`, the answer is incomplete, "changed" -- rescan with
find_candidates to get the current candidate, so that the key recorded as verified is the
key of the bytes that were judged complete. A candidate whose files are gone is
incomplete, "vanished" (CheckpointManager's max_to_keep deletes old ones).

Incomplete candidates must be checked again later by the caller (a timer, not only events):
the settle clocks only advance when check_completion observes the files.
"""

from __future__ import annotations

import fnmatch
import glob
import os
import re
import stat
from collections.abc import Sequence

from ckptwatch.daemon.model import Candidate, Completion
from ckptwatch.formats.base import IntegrityError
from ckptwatch.formats.bundle import BundleSource, shard_path
from ckptwatch.formats.names import step_from_path

__all__ = [
    "BUNDLE",
    "HDF5",
    "KERAS",
    "StabilityTracker",
    "candidate_key",
    "check_completion",
    "classify",
    "find_candidates",
    "is_temporary",
    "temp_leftovers",
]

BUNDLE, HDF5, KERAS = "bundle", "hdf5", "keras"

_INDEX_SUFFIX = ".index"
_HDF5_SUFFIXES = (".h5", ".hdf5")  # includes Keras 3 `*.weights.h5`
_KERAS_SUFFIX = ".keras"

# Artefacts of a save in progress, never candidates themselves:
#   <prefix>_temp/ (and the older <prefix>_temp_<uuid>/), *.tempstate<random> (TF's atomic
#   writes), checkpoint.tmp<hex> and model.ckpt-N.meta.tmp<hex> (TF's state / graph files),
#   *.tmp, *.partial (copiers, downloaders).
_TEMPORARY = re.compile(r"_temp(_[0-9a-fA-F-]+)?$|\.tempstate|^checkpoint\.tmp|\.tmp[0-9a-f]*$|\.partial$")

Signature = tuple  # what "unchanged" compares: (size, mtime_ns, inode) per file


def is_temporary(name: str) -> bool:
    """True for hidden files and the temporary artefacts of a save or a copy."""
    return name.startswith(".") or bool(_TEMPORARY.search(name))


def classify(name: str) -> tuple[str, str] | None:
    """(kind, base name) of a directory entry that is a checkpoint, else None.

    `ckpt-3.index` -> ("bundle", "ckpt-3"); `w.weights.h5` -> ("hdf5", "w.weights.h5");
    `m.keras` -> ("keras", "m.keras"). Data shards, state files and temp artefacts -> None.
    """
    if is_temporary(name):
        return None
    if name.endswith(_INDEX_SUFFIX) and len(name) > len(_INDEX_SUFFIX):
        return BUNDLE, name[: -len(_INDEX_SUFFIX)]
    if name.endswith(_KERAS_SUFFIX) and len(name) > len(_KERAS_SUFFIX):
        return KERAS, name
    if name.endswith(_HDF5_SUFFIXES):
        return HDF5, name
    return None


def candidate_key(path: str, st: os.stat_result) -> str:
    """Identity for "verify once": the path and the index's (or file's) mtime_ns and size."""
    return f"{path}|{st.st_mtime_ns}|{st.st_size}"


def _matches(base: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(base, p) for p in include) and not any(fnmatch.fnmatchcase(base, p) for p in exclude)


def find_candidates(
    watch: str,
    directory: str,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = (),
) -> list[Candidate]:
    """The checkpoints in `directory` (not recursive), sorted by step (then path).

    One candidate per `<prefix>.index` (a prefix whose data shards exist but whose index does
    not yet is not a candidate yet) and per Keras file (`*.weights.h5`, `*.h5`, `*.hdf5`,
    `*.keras`). Temp artefacts and hidden files are ignored. include/exclude are glob
    patterns matched against the base name (`ckpt-3` for a bundle, `w.weights.h5` for a
    file). A directory that does not exist gives []; files that vanish during the scan are
    skipped.
    """
    directory = os.path.abspath(directory)
    try:
        with os.scandir(directory) as it:
            entries = list(it)
    except (FileNotFoundError, NotADirectoryError):
        return []
    found = []
    for entry in entries:
        kind_base = classify(entry.name)
        if kind_base is None:
            continue
        kind, base = kind_base
        if not _matches(base, include, exclude):
            continue
        try:
            st = entry.stat()  # follows symlinks: a linked checkpoint file counts
        except OSError:  # vanished (or a dangling link) meanwhile
            continue
        if not _is_regular(st):
            continue
        path = os.path.join(directory, base)
        found.append(Candidate(watch, path, kind, step_from_path(base), candidate_key(path, st)))
    found.sort(key=lambda c: c.sort_key)
    return found


def _is_regular(st: os.stat_result) -> bool:
    return stat.S_ISREG(st.st_mode)


def _stat(path: str) -> os.stat_result | None:
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return st if _is_regular(st) else None


def _signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


class StabilityTracker:
    """How long files have been unchanged, by (size, mtime_ns, inode), as seen by observe().

    The clock starts at the first observation: a file is never taken as settled on its mtime
    alone (a writer's clock on another host may be skewed). `now` is any monotonic-enough
    clock, the same for every call (time.monotonic()). Not thread-safe: one owner.
    """

    def __init__(self, settle_seconds: float):
        if settle_seconds < 0:
            raise ValueError(f"settle_seconds must be >= 0, not {settle_seconds}")
        self.settle_seconds = float(settle_seconds)
        self._seen: dict[str, tuple[Signature, float]] = {}

    def observe(self, path: str, now: float) -> float:
        """Seconds `path` has been unchanged (0.0 on first sight, after a change, or when it
        does not exist; a missing path is forgotten)."""
        st = _stat(path)
        if st is None:
            self.forget(path)
            return 0.0
        return self.observe_signature(path, _signature(st), now)

    def observe_signature(self, key: str, signature: Signature, now: float) -> float:
        """observe() for a caller-built signature (several files under one key)."""
        seen = self._seen.get(key)
        if seen is None or seen[0] != signature:
            self._seen[key] = (signature, now)
            return 0.0
        return max(0.0, now - seen[1])

    def settled(self, path: str, now: float) -> bool:
        return self.observe(path, now) >= self.settle_seconds

    def forget(self, path: str) -> None:
        self._seen.pop(path, None)

    def __contains__(self, path: object) -> bool:
        return path in self._seen

    def __len__(self) -> int:
        return len(self._seen)


def check_completion(candidate: Candidate, now: float, stability: StabilityTracker) -> Completion:
    """Whether `candidate` (as found: same key) is completely written; if not, why.

    The settle clocks live in `stability` under candidate.path; call
    `stability.forget(candidate.path)` once you are done with a candidate.
    """
    if candidate.kind == BUNDLE:
        return _bundle_completion(candidate, now, stability)
    return _file_completion(candidate, now, stability)


def _file_completion(candidate: Candidate, now: float, stability: StabilityTracker) -> Completion:
    st = _stat(candidate.path)
    if st is None:
        stability.forget(candidate.path)
        return Completion(False, "vanished")
    if candidate_key(candidate.path, st) != candidate.key:
        stability.forget(candidate.path)
        return Completion(False, "changed since it was found")
    unchanged = stability.observe_signature(candidate.path, _signature(st), now)
    if unchanged < stability.settle_seconds:
        return Completion(
            False, f"may still be written: unchanged for {unchanged:.1f} s of {stability.settle_seconds:g} s"
        )
    return Completion(True)


def temp_leftovers(prefix: str) -> list[str]:
    """Base names of the temp artefacts of an unfinished save of `prefix`, if any remain."""
    esc = glob.escape(prefix)
    found = glob.glob(esc + "_temp") + glob.glob(esc + "_temp_*")
    found += glob.glob(esc + ".data-*.tempstate*") + glob.glob(esc + ".index.tempstate*")
    return sorted(os.path.basename(p) for p in found)


def _bundle_completion(candidate: Candidate, now: float, stability: StabilityTracker) -> Completion:
    prefix = candidate.path
    index = prefix + _INDEX_SUFFIX
    leftovers = temp_leftovers(prefix)
    if leftovers:
        stability.forget(prefix)
        return Completion(False, f"save in progress: {leftovers[0]} remains")
    st = _stat(index)
    if st is None:
        stability.forget(prefix)
        return Completion(False, "vanished")
    if candidate_key(prefix, st) != candidate.key:
        stability.forget(prefix)
        return Completion(False, "changed since it was found")

    try:
        source = BundleSource(prefix)
        num_shards = source.num_shards
        source.close()
    except (IntegrityError, ValueError) as e:  # ValueError: TableError escaping a parse path
        problem = f"index does not parse: {_short(e, prefix)}"
        return _unless_settled(prefix, problem, now, stability)
    except OSError as e:  # the index vanished between stat and read
        if _stat(index) is None:
            stability.forget(prefix)
            return Completion(False, "vanished")
        return _unless_settled(prefix, f"index unreadable: {e.strerror or e}", now, stability)

    missing, newer = [], []
    for k in range(num_shards):
        shard = shard_path(prefix, k, num_shards)
        sst = _stat(shard)
        if sst is None:
            missing.append(os.path.basename(shard))
        elif sst.st_mtime_ns > st.st_mtime_ns:
            newer.append(os.path.basename(shard))
    if _stat(index) is None:
        stability.forget(prefix)
        return Completion(False, "vanished")
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        return _unless_settled(prefix, f"data shard {missing[0]} missing{more}", now, stability)
    if newer:
        return _unless_settled(prefix, f"data shard {newer[0]} is newer than the index", now, stability)
    after = _stat(index)
    if after is None or _signature(after) != _signature(st):
        stability.forget(prefix)
        return Completion(False, "changed since it was found")
    stability.forget(prefix)
    return Completion(True)


def _short(e: Exception, prefix: str) -> str:
    """The error without the directory part of the path it names."""
    return str(e).replace(os.path.dirname(prefix) + os.sep, "")


def _bundle_signature(prefix: str) -> Signature:
    """Every file of the bundle (index and any data shards) with size, mtime and inode."""
    parts = []
    esc = glob.escape(prefix)
    for p in sorted([prefix + _INDEX_SUFFIX, *glob.glob(esc + ".data-*")]):
        st = _stat(p)
        if st is not None:
            parts.append((os.path.basename(p), *_signature(st)))
    return tuple(parts)


def _unless_settled(prefix: str, problem: str, now: float, stability: StabilityTracker) -> Completion:
    """A broken bundle is pending while its files change, and "settled" (complete, to be
    verified and failed) once nothing has changed for settle_seconds and no temp artefact
    remains (checked by the caller)."""
    unchanged = stability.observe_signature(prefix, _bundle_signature(prefix), now)
    if unchanged >= stability.settle_seconds:
        return Completion(True, "settled")
    return Completion(False, problem)
