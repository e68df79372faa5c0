"""Whether a candidate is completely written, and if not, why: the main process's check of
each candidate, bounded (an index's header, a stat per shard present, a capped tree walk).

    check_completion(candidate, now, stability) -> Completion
    current_key(path) -> key | None         candidate_key(path, stat) -> key

What "complete" means follows how the writers work (see FIELD-NOTES):

- TF bundles (TF2 Checkpoint / CheckpointManager, TF1 Saver): shards are written under
  `<prefix>_temp/` (or as `<prefix>.data-K-of-N.tempstate*`), renamed into place, then
  `<prefix>.index` is written *in place* and `<prefix>_temp/` removed. Complete = no temp
  artefact remains, the index parses, every one of its `num_shards` data files exists and
  none is newer than the index (a newer shard means a rewrite of the same prefix is under
  way, or a copier is still at work).
- SavedModel directories (`tf.saved_model.save`, Keras `model.export`): the variables
  bundle is written first (as above, under `variables/`), then assets, then
  `saved_model.pb` by atomic rename -- TF's own "the last file operation" -- then
  `fingerprint.pb`. Complete = `saved_model.pb` exists and is not empty, no temp artefact
  remains in the directory or `variables/`, the variables bundle is whole and not newer
  than `saved_model.pb` (newer: a re-export into the same directory is under way), and
  either `fingerprint.pb` is not older than `saved_model.pb` or, without it (TF1's
  SavedModelBuilder writes saved_model.pb in place), nothing changed for `settle_seconds`.
  The watch directory itself may be one, or hold one per subdirectory (`export/1/`,
  `export/2/`, ...; not symlinks to them, not Estimator's `temp-<ts>/`); deeper levels
  are not scanned.
- Keras `.h5` / `.weights.h5` / `.keras`: written in place by h5py / zipfile with no
  marker, so complete = (size, mtime_ns, inode) unchanged for `settle_seconds`.
- A bundle (or SavedModel) that stays broken (index does not parse, a shard is missing)
  but whose files have not changed for `settle_seconds`, with no temp artefact left, is "complete" with
  reason "settled": it is genuinely corrupt and must be verified (a fail verdict), never
  left pending forever.

"Complete" is about the candidate *as found*: when its index (file, saved_model.pb) no longer has the
mtime/size recorded in `Candidate.key`, the answer is incomplete, "changed" -- rescan with
find_candidates to get the current candidate, so that the key recorded as verified is the
key of the bytes that were judged complete. A candidate whose files are gone is
incomplete, "vanished" (CheckpointManager's max_to_keep deletes old ones).

Incomplete candidates must be checked again later by the caller (a timer, not only events):
the settle clocks only advance when check_completion observes the files. Writes inside a
SavedModel subdirectory raise no event on the (non-recursive) watch directory: only such a
re-check finds them.

A check that goes wrong (anything a hostile entry could make it raise) is that candidate's
problem alone: pending until its files settle, then complete ("settled"), and the worker's
verdict says what is wrong. A FIFO, socket or device named like a checkpoint file is
complete at once ("not a regular file"): never opened here, the worker refuses it with a
finding.
"""

from __future__ import annotations

import functools
import os
import stat
from collections.abc import Callable

from ckptwatch.daemon.model import Candidate, Completion
from ckptwatch.daemon.stability import (
    Signature,
    StabilityTracker,
    files_signature,
    regular_stat,
    stat_signature,
    tree_signature,
)
from ckptwatch.formats import layout
from ckptwatch.formats.base import IntegrityError
from ckptwatch.formats.layout import BUNDLE, HDF5, KERAS, SAVEDMODEL, saved_model_marker

__all__ = ["candidate_key", "check_completion", "current_key"]

_VARIABLES_INDEX = layout.SAVED_MODEL_VARIABLES + layout.INDEX_SUFFIX


def candidate_key(path: str, st: os.stat_result) -> str:
    """Identity for "verify once": the path and the index's (or file's) mtime_ns and size."""
    return f"{path}|{st.st_mtime_ns}|{st.st_size}"


def special(mode: int) -> bool:
    """A FIFO, socket or device: never opened for reading."""
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode) or stat.S_ISCHR(mode) or stat.S_ISBLK(mode)


def check_completion(candidate: Candidate, now: float, stability: StabilityTracker) -> Completion:
    """Whether `candidate` (as found: same key) is completely written; if not, why.

    The settle clocks live in `stability` under candidate.path; call
    `stability.forget(candidate.path)` once you are done with a candidate. A check that
    goes wrong (anything a hostile entry could make it raise) is that candidate's problem
    alone: pending on it until its file settles, then complete ("settled"): the worker
    verifies it and its verdict says what is wrong.
    """
    keyed = candidate.path if candidate.kind in (HDF5, KERAS) else candidate.path + layout.INDEX_SUFFIX
    if candidate.kind == SAVEDMODEL:
        keyed = saved_model_marker(candidate.path) or candidate.path
    if _special_file(keyed):  # never opened here: the worker refuses it with a finding
        stability.forget(candidate.path)
        return Completion(True, "not a regular file")
    try:
        if candidate.kind == BUNDLE:
            return _bundle_completion(candidate, now, stability)
        if candidate.kind == SAVEDMODEL:
            return _saved_model_completion(candidate, now, stability)
        return _file_completion(candidate, now, stability)
    except Exception as e:
        st = regular_stat(keyed)
        problem = f"cannot be checked: {type(e).__name__}: {str(e)[:200]}"
        return _unless_settled(candidate.path, problem, stat_signature(st) if st else (), now, stability)


def _special_file(path: str) -> bool:
    try:
        return special(os.stat(path).st_mode)
    except OSError:
        return False


def current_key(path: str) -> str | None:
    """The key the checkpoint at `path` (bundle prefix, SavedModel directory or file) has
    now, None when it is gone: equal to a recorded key while the same bytes are there."""
    marker = saved_model_marker(path)
    st = regular_stat(marker or path + layout.INDEX_SUFFIX) or regular_stat(path)
    return candidate_key(path, st) if st is not None else None


def _file_completion(candidate: Candidate, now: float, stability: StabilityTracker) -> Completion:
    st = regular_stat(candidate.path)
    if st is None:
        stability.forget(candidate.path)
        return Completion(False, "vanished")
    if candidate_key(candidate.path, st) != candidate.key:
        stability.forget(candidate.path)
        return Completion(False, "changed since it was found")
    unchanged = stability.observe_signature(candidate.path, stat_signature(st), now)
    if unchanged < stability.settle_seconds:
        return Completion(
            False, f"may still be written: unchanged for {unchanged:.1f} s of {stability.settle_seconds:g} s"
        )
    return Completion(True)


def _bundle_completion(candidate: Candidate, now: float, stability: StabilityTracker) -> Completion:
    prefix = candidate.path
    index = prefix + layout.INDEX_SUFFIX
    listing = layout.bundle_listing(prefix)  # the one listing of the directory this check makes
    if listing.leftovers:
        stability.forget(prefix)
        return Completion(False, f"save in progress: {listing.leftovers[0]} remains")
    st = regular_stat(index)
    if st is None:
        stability.forget(prefix)
        return Completion(False, "vanished")
    if candidate_key(prefix, st) != candidate.key:
        stability.forget(prefix)
        return Completion(False, "changed since it was found")
    problem = _bundle_problem(prefix, st, listing.shards)
    files = functools.partial(_bundle_files, prefix, listing.shards)
    return _judge(candidate, index, st, problem, files, now, stability)


def _saved_model_completion(candidate: Candidate, now: float, stability: StabilityTracker) -> Completion:
    directory = candidate.path
    marker = saved_model_marker(directory)
    st = regular_stat(marker) if marker else None
    if marker is None or st is None:
        stability.forget(directory)
        return Completion(False, "vanished")
    if candidate_key(directory, st) != candidate.key:
        stability.forget(directory)
        return Completion(False, "changed since it was found")
    prefix = os.path.join(directory, layout.SAVED_MODEL_VARIABLES)
    variables = layout.bundle_listing(prefix)
    leftovers = layout.saved_model_leftovers(directory, variables)
    if leftovers:
        stability.forget(directory)
        return Completion(False, f"save in progress: {leftovers[0]} remains")
    index_st = regular_stat(prefix + layout.INDEX_SUFFIX)
    fingerprint = regular_stat(os.path.join(directory, layout.SAVED_MODEL_FINGERPRINT))
    problem: str | None
    if index_st is None:
        problem = f"{_VARIABLES_INDEX} missing"
    elif index_st.st_mtime_ns > st.st_mtime_ns:
        problem = f"{_VARIABLES_INDEX} is newer than {os.path.basename(marker)}"
    elif st.st_size == 0:
        problem = f"{os.path.basename(marker)} is empty"
    else:
        problem = _bundle_problem(prefix, index_st, variables.shards)
    files = functools.partial(tree_signature, directory)
    if problem is None and (fingerprint is None or fingerprint.st_mtime_ns < st.st_mtime_ns):
        # Only TF2's tf.saved_model.save renames saved_model.pb into place, then writes
        # fingerprint.pb; TF1's SavedModelBuilder (Estimator exporters) writes it in place.
        # Without that sign, whole is not enough: the files must also stay unchanged.
        newer = layout.SAVED_MODEL_FINGERPRINT
        in_place = f"{os.path.basename(marker)} may still be written in place (no newer {newer})"
        return _judge(candidate, marker, st, in_place, files, now, stability, settled="")
    return _judge(candidate, marker, st, problem, files, now, stability)


def _judge(
    candidate: Candidate,
    keyed: str,
    st: os.stat_result,
    problem: str | None,
    signature: Callable[[], Signature],
    now: float,
    stability: StabilityTracker,
    settled: str = "settled",
) -> Completion:
    """The verdict once the files were examined: `keyed` (the file the key was taken from,
    `st` its stat before) must still be unchanged; then complete, or pending on `problem`
    unless the files (by `signature`) have settled: complete, with reason `settled`."""
    after = regular_stat(keyed)
    if after is None:
        stability.forget(candidate.path)
        return Completion(False, "vanished")
    if stat_signature(after) != stat_signature(st):
        stability.forget(candidate.path)
        return Completion(False, "changed since it was found")
    if problem:
        return _unless_settled(candidate.path, problem, signature(), now, stability, settled)
    stability.forget(candidate.path)
    return Completion(True)


def _bundle_problem(prefix: str, index_st: os.stat_result, shards: list[str]) -> str | None:
    """Why the bundle at `prefix` (its index as `index_st`, its data files present `shards`) is
    not whole, None if it is: the index does not parse, a data shard is missing, or one is
    newer than the index (a rewrite of the same prefix is under way, or a copier is still at
    work)."""
    try:
        num_shards = layout.bundle_shard_count(prefix)  # reads the header alone: bounded
    except (IntegrityError, ValueError) as e:  # ValueError: TableError escaping a parse path
        return f"index does not parse: {_short(e, prefix)}"
    except OSError as e:  # vanished meanwhile: the caller's re-stat tells
        return f"index unreadable: {e.strerror or e}"
    # the shards present, from one listing, and a stat for each of those only: an index
    # claiming 65,536 shards costs no more than the files that are there
    present = set(shards)
    newer = []
    for k in range(num_shards):
        shard = layout.shard_path(prefix, k, num_shards)
        sst = regular_stat(shard) if shard in present else None
        if sst is None:
            return f"data shard {os.path.basename(shard)} missing"
        if sst.st_mtime_ns > index_st.st_mtime_ns:
            newer.append(os.path.basename(shard))
    if newer:
        return f"data shard {newer[0]} is newer than the index"
    return None


def _short(e: Exception, prefix: str) -> str:
    """The error without the directory part of the path it names."""
    return str(e).replace(os.path.dirname(prefix) + os.sep, "")


def _bundle_files(prefix: str, shards: list[str]) -> Signature:
    """Every file of the bundle (index and its data shards `shards`) with size, mtime and inode."""
    paths = sorted([prefix + layout.INDEX_SUFFIX, *shards])
    return files_signature(paths, os.path.dirname(prefix))


def _unless_settled(
    key: str, problem: str, signature: Signature, now: float, stability: StabilityTracker, settled: str = "settled"
) -> Completion:
    """A broken checkpoint is pending while its files change, and "settled" (complete, to be
    verified and failed) once nothing has changed for settle_seconds and no temp artefact
    remains (checked by the caller)."""
    unchanged = stability.observe_signature(key, signature, now)
    if unchanged >= stability.settle_seconds:
        return Completion(True, settled)
    return Completion(False, problem)
