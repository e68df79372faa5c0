"""Each watch's history of per-tensor change (ckptwatch.verify.history) in state_dir: what drift
is judged against. The main process only hands files around; the worker reads and writes them.

    <state_dir>/history/<watch>.npz                the watch's history
    <state_dir>/history/<watch>.json               {"key": ...}: the checkpoint it ends at
    <state_dir>/history/<watch>.<hash>.next.npz    written by a worker for one candidate: the
                                                   history extended by it, if it passed

`for_request` gives a request the history only when it ends at the request's previous (the
watch's baseline): after an operator accepts another baseline (`ckptwatch accept`), the old
history no longer describes the run, and a new one starts. `adopt` makes a worker's file the
watch's history when its checkpoint becomes the baseline (it passed, against the baseline);
`discard` removes the others: a failed checkpoint never extends the history (it is only noted
in it, adopted with `ends_at_key`, the baseline's: the next checkpoint must not continue from it).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re


def _base(state_dir: str, watch: str) -> str:
    return os.path.join(state_dir, "history", re.sub(r"[^A-Za-z0-9_.-]", "_", watch))


def current(state_dir: str, watch: str) -> str:
    return _base(state_dir, watch) + ".npz"


def next_path(state_dir: str, watch: str, key: str) -> str:
    """Where the worker writes the history extended by the candidate with this key."""
    os.makedirs(os.path.join(state_dir, "history"), exist_ok=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return f"{_base(state_dir, watch)}.{digest}.next.npz"


def ends_at(state_dir: str, watch: str) -> str | None:
    try:
        with open(_base(state_dir, watch) + ".json") as f:
            key = json.load(f).get("key")
    except (OSError, ValueError, AttributeError):
        return None
    return key if isinstance(key, str) else None


def for_request(state_dir: str, watch: str, previous_key: str | None) -> str | None:
    """The watch's history file if it ends at the candidate's previous checkpoint, else None."""
    path = current(state_dir, watch)
    if previous_key is None or ends_at(state_dir, watch) != previous_key or not os.path.isfile(path):
        return None
    return path


def adopt(state_dir: str, watch: str, key: str, ends_at_key: str | None = None) -> bool:
    """The candidate with this key passed and is the watch's baseline now: the history its worker
    wrote (extended by it) becomes the watch's. With `ends_at_key` (the baseline's key), a
    candidate that failed: its worker wrote the same history noting it, which still ends at the
    baseline (ckptwatch.verify.continues: the next checkpoint must not continue from it)."""
    written = next_path(state_dir, watch, key)
    if not os.path.isfile(written):
        return False
    os.replace(written, current(state_dir, watch))
    marker = _base(state_dir, watch) + ".json"
    with open(marker + ".tmp", "w") as f:
        json.dump({"key": ends_at_key or key}, f)
    os.replace(marker + ".tmp", marker)
    return True


def discard(state_dir: str, watch: str) -> None:
    """Remove what workers wrote for candidates that did not become the baseline (failed, lost)."""
    for leftover in glob.glob(glob.escape(_base(state_dir, watch)) + ".*.next.npz"):
        with contextlib.suppress(OSError):
            os.remove(leftover)
