"""How long files have been unchanged, by (size, mtime_ns, inode): the settle clocks that
discovery uses for writers that leave no marker (Keras files, TF1 SavedModels, a broken
bundle that stays broken).

    StabilityTracker(settle_seconds).observe(path, now) -> seconds unchanged
"""

from __future__ import annotations

import os
import stat

Signature = tuple  # what "unchanged" compares: (size, mtime_ns, inode) per file


def regular_stat(path: str) -> os.stat_result | None:
    """The stat of a regular file at `path`, None if there is none we can stat (missing, a
    directory, a symlink loop, a directory we may not search: lost+found on a volume)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st if stat.S_ISREG(st.st_mode) else None


def stat_signature(st: os.stat_result) -> Signature:
    return (st.st_size, st.st_mtime_ns, st.st_ino)


def files_signature(paths: list[str], base: str) -> Signature:
    """(path relative to `base`, size, mtime_ns, inode) of each regular file in `paths`."""
    parts = []
    for p in paths:
        st = regular_stat(p)
        if st is not None:
            parts.append((os.path.relpath(p, base), *stat_signature(st)))
    return tuple(parts)


MAX_TREE_DEPTH = 8  # a SavedModel is two levels deep (variables/, assets/); deeper is not looked at
MAX_TREE_ENTRIES = 4096  # directory entries examined per signature: bounded work on the main loop


def tree_signature(directory: str, max_depth: int = MAX_TREE_DEPTH, max_entries: int = MAX_TREE_ENTRIES) -> Signature:
    """The files under `directory` (a SavedModel: a few files) with size, mtime and inode.

    Bounded, without recursion: at most `max_depth` levels and `max_entries` entries are
    examined (a hostile tree 1,100 levels deep, or a million files, costs no more), symbolic
    links to directories are not followed, and what was left out is part of the signature."""
    paths: list[str] = []
    examined, truncated = 0, False
    stack = [(directory, 0)]
    while stack:
        root, depth = stack.pop()
        try:
            with os.scandir(root) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in entries:
            examined += 1
            if examined > max_entries:
                truncated, stack = True, []
                break
            try:
                is_dir = entry.is_dir(follow_symlinks=False)
            except OSError:
                continue
            if not is_dir:
                paths.append(entry.path)
            elif depth + 1 < max_depth:
                subdirs.append((entry.path, depth + 1))
            else:
                truncated = True
        stack.extend(reversed(subdirs))  # depth-first, in name order
    signature = files_signature(paths, directory)
    return (*signature, ("(truncated)",)) if truncated else signature


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
        st = regular_stat(path)
        if st is None:
            self.forget(path)
            return 0.0
        return self.observe_signature(path, stat_signature(st), now)

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
