"""Holding a committed checkpoint's files open until its verdict, so that CheckpointManager
(max_to_keep) deleting it before a worker reaches it does not cost it its verdict.

    Holder(max_fds=None).hold(candidate) -> Held | None     open every file of the candidate
    Held.stand_ins() -> {name: "/proc/<pid>/fd/<n>" | None}  what a worker reads instead
    Held.close()                                              at the verdict, skip, retire, shutdown

When the pipeline sees a candidate's commit (the completion check says complete), it asks
for its files to be held: each is `lstat`ed and opened read-only with O_NONBLOCK|O_NOFOLLOW
(a FIFO, socket, device or symbolic link is never held, and an open never blocks the main
loop), then checked on the descriptor (`fstat`: a regular file). The descriptor of the file
the candidate's key names (the index, the Keras file, saved_model.pb) must still show the
key's mtime and size: a candidate deleted, or rewritten, between the check and the hold is
not held (it is verified, or skipped as vanished, the way it was before holding existed).

A worker reopens a held file through `/proc/<daemon pid>/fd/<n>`: for a process of the same
user that works even after the file is unlinked. A file that is not held (a link, past the
per-candidate cap) is read by its path, as before.

The number of descriptors held at once is capped (`max_fds`; by default a quarter of the
soft RLIMIT_NOFILE): past it a candidate is not held. Per watch, at most queue_limit queued
candidates plus the one in flight are held (the pipeline releases coalesced ones).
"""

from __future__ import annotations

import contextlib
import os
import stat

from ckptwatch.daemon.model import Candidate
from ckptwatch.formats.held import candidate_files
from ckptwatch.formats.layout import BUNDLE, INDEX_SUFFIX, SAVED_MODEL_FILES, SAVEDMODEL

_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY


def default_max_fds() -> int:
    """A quarter of the soft RLIMIT_NOFILE (the daemon's sockets, SQLite, inotify and pipes
    keep the rest), at least 16."""
    soft = 1024
    with contextlib.suppress(ImportError, OSError, ValueError):
        import resource

        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft == resource.RLIM_INFINITY or soft <= 0:
            soft = 1 << 16
    return max(16, soft // 4)


def _open_regular(path: str) -> int | None:
    """A read-only descriptor of `path` if it is a regular file (not a link), else None."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return None
        fd = os.open(path, _FLAGS)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _keyed_name(c: Candidate) -> list[str]:
    """The names (relative to the candidate's directory) its key may be taken from."""
    base = os.path.basename(c.path)
    if c.kind == BUNDLE:
        return [base + INDEX_SUFFIX]
    if c.kind == SAVEDMODEL:
        return [os.path.join(base, n) for n in SAVED_MODEL_FILES]
    return [base]


def _key_matches(key: str, st: os.stat_result) -> bool:
    parts = key.rsplit("|", 2)
    if len(parts) != 3:
        return False
    return parts[1] == str(st.st_mtime_ns) and parts[2] == str(st.st_size)


class Held:
    """The open descriptors of one candidate's files (name relative to its directory -> fd)."""

    def __init__(self, holder: Holder, fds: dict[str, int], unheld: list[str]):
        self._holder = holder
        self.fds = fds
        self.unheld = unheld  # files of the candidate read by path (links, past the cap)

    def stand_ins(self) -> dict[str, str | None]:
        pid = os.getpid()
        out: dict[str, str | None] = {name: f"/proc/{pid}/fd/{fd}" for name, fd in self.fds.items()}
        out.update({name: None for name in self.unheld})
        return out

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._holder.open -= len(fds)


class Holder:
    def __init__(self, max_fds: int | None = None):
        self.max_fds = default_max_fds() if max_fds is None else max_fds
        self.open = 0  # descriptors held now, all candidates together

    def hold(self, c: Candidate) -> Held | None:
        """Open `c`'s files; None when it cannot be held (gone or changed since its key was
        taken, too many descriptors held already, not a kind of file to hold)."""
        try:
            names = candidate_files(c.kind, c.path)
        except OSError:
            return None
        if not names or self.open + len(names) > self.max_fds:
            return None
        parent = os.path.dirname(c.path)
        fds: dict[str, int] = {}
        unheld: list[str] = []
        held = Held(self, fds, unheld)
        for name in names:
            fd = _open_regular(os.path.join(parent, name))
            if fd is None:
                unheld.append(name)
            else:
                fds[name] = fd
                self.open += 1
        keyed = [n for n in _keyed_name(c) if n in fds]
        try:
            same = bool(keyed) and _key_matches(c.key, os.fstat(fds[keyed[0]]))
        except OSError:
            same = False
        if not same:  # deleted or rewritten since the commit was seen: not the bytes judged complete
            held.close()
            return None
        return held


__all__ = ["Held", "Holder", "default_max_fds"]
