"""A run's history for a one-shot `ckptwatch verify --history PATH`.

    load_history(path, candidate, policy, options) -> (History, last)

PATH is either a history file (the daemon keeps one per watch: <state_dir>/history/<watch>.npz)
or a directory of the run's earlier checkpoints and/or their fingerprints. From a directory,
the checkpoints before the candidate (by step, else by modification time) are verified in
order the way the daemon does: each against the last one that passed, with the history so far,
and each that passes extends the history. Between two fingerprints the change is estimated
from their sketches (a checkpoint before a fingerprint has no sketch to compare it with: that
transition is left out). Earlier checkpoints that cannot be read are left out too.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace

from ckptwatch.errors import CkptwatchError
from ckptwatch.formats import IntegrityError, layout, resolve
from ckptwatch.formats.names import step_from_path
from ckptwatch.policy import Policy
from ckptwatch.verify.change import history_entry, measure, training_steps
from ckptwatch.verify.drift import PairSums
from ckptwatch.verify.engine import Options, verify_paths
from ckptwatch.verify.fingerprint import FingerprintSource
from ckptwatch.verify.history import PASSING, History, HistoryError
from ckptwatch.verify.report import TensorResult, verdict_of
from ckptwatch.verify.rules import evaluate


@dataclass(frozen=True)
class _Item:
    path: str
    fingerprint: bool
    step: int | None
    mtime: float


def load_history(
    path: str, candidate: str, policy: Policy, options: Options | None = None
) -> tuple[History, str | None]:
    """The history, and (from a directory) the last earlier checkpoint that passed: the candidate's
    previous when none is given."""
    if not os.path.isdir(path):
        return History.load(path), None
    return replay(_earlier(path, candidate), policy, options)


def replay(items: list[_Item], policy: Policy, options: Options | None = None) -> tuple[History, str | None]:
    history, previous, options = History.empty(), None, options or Options()
    for item in items:
        try:
            if item.fingerprint:
                if previous is None or previous.fingerprint:
                    history, verdict = _estimated(item, previous, policy, history)
                else:
                    verdict = "pass"  # a checkpoint's fingerprint to come: nothing to compare it with
            else:
                prev = previous.path if previous else None
                report, _ = verify_paths(item.path, prev, None, policy, replace(options, history=history))
                history, verdict = history.after(report, policy.history_window), report.verdict
        except (CkptwatchError, IntegrityError):
            continue  # an unreadable earlier checkpoint is not part of the run's healthy history
        if verdict in PASSING:
            previous = item
    return history, previous.path if previous else None


def _earlier(directory: str, candidate: str) -> list[_Item]:
    """The checkpoints and fingerprints in `directory` that come before `candidate`."""
    try:
        _, cand_location = resolve(candidate)
    except CkptwatchError:
        cand_location = os.path.abspath(candidate)
    cand_step = step_from_path(cand_location)
    cand_mtime = _mtime(cand_location)
    items = []
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        raise HistoryError(f"history {directory}: {e.strerror or e}") from None
    for name in names:
        full = os.path.join(directory, name)
        kind = layout.classify(name)
        if kind is not None:
            location = os.path.join(directory, kind[1])
            items.append(_Item(location, False, step_from_path(location), _mtime(full)))
        elif os.path.isfile(full) and layout.looks_like_fingerprint(full):
            try:
                step = FingerprintSource(full).step
            except IntegrityError:
                continue
            items.append(_Item(full, True, step if isinstance(step, int) else None, _mtime(full)))
    same = {os.path.abspath(cand_location)}
    if cand_step is not None:
        kept = [i for i in items if i.path not in same and i.step is not None and i.step < cand_step]
    else:
        kept = [i for i in items if i.path not in same and i.mtime < cand_mtime]
    # a step's checkpoint and its fingerprint: the checkpoint (it is read in full)
    steps_with_data = {i.step for i in kept if not i.fingerprint and i.step is not None}
    kept = [i for i in kept if not (i.fingerprint and i.step in steps_with_data)]
    return sorted(kept, key=lambda i: (i.step if i.step is not None else math.inf, i.mtime))


def _mtime(path: str) -> float:
    for p in (path, path + layout.INDEX_SUFFIX):
        try:
            return os.stat(p).st_mtime
        except OSError:
            continue
    return math.inf


def _estimated(item: _Item, previous: _Item | None, policy: Policy, history: History) -> tuple[History, str]:
    """A transition between two fingerprints, judged on their sketches."""
    from ckptwatch.verify.sketch import estimate_sums

    cand = FingerprintSource(item.path)
    if previous is None:
        return history, "pass"
    prev = FingerprintSource(previous.path)
    results, previous_stats, total = [], {}, PairSums()
    kinds = policy.compared_kinds()
    for info in cand.tensors():
        stats, sketch = cand.stats(info.name), cand.sketch(info.name)
        result = TensorResult(
            info.name, info.label, info.kind, info.dtype, info.shape, info.nbytes, stats, known=info.known
        )
        ref_stats, ref_sketch = prev.stats(info.name), prev.sketch(info.name)
        if stats and sketch and ref_stats and ref_sketch and ref_stats.count == stats.count:
            sums, _ = estimate_sums(stats, sketch, ref_stats, ref_sketch, 0.0, 0.0)
            result.drift["previous"] = sums.drift(stats.mean - ref_stats.mean, stats.std - ref_stats.std)
            previous_stats[info.name] = ref_stats
            if info.kind in kinds and not policy.settings_for(info.name, info.label)["exclude"]:
                total.add(sums)
        results.append(result)
    global_drift = {"previous": total.drift() if total.count else None, "golden": None}
    steps = training_steps(results, previous_stats, cand.step, prev.step)
    verdict = verdict_of(evaluate(policy, results, global_drift, previous_stats, history, steps))
    if verdict not in PASSING:
        return history, verdict
    entry = history_entry(
        measure(policy, results, previous_stats), steps, global_drift["previous"], item.path, previous.path
    )
    return history.extended(entry, policy.history_window), verdict
