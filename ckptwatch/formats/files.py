"""Opening only regular files: a FIFO, socket or device named like a checkpoint file (or a
config, a fingerprint, the `checkpoint` state file) is refused, never read.

    open_regular(path, tensor=None) -> binary file    O_NONBLOCK open, then fstat: a FIFO
                                                      swapped in after a stat cannot block us
    check_regular(path, tensor=None) -> stat_result   for readers that open by path (h5py)
    NotRegularFile                                    an IntegrityError ("integrity.filetype")

Opening a FIFO for reading blocks until a writer appears, and reading a character device
(/dev/zero, a tty) never ends: either would stall the daemon's main loop or hang the CLI.
Light on purpose (stdlib only): the daemon's main process opens index headers through it.
"""

from __future__ import annotations

import os
import stat
from typing import BinaryIO

from ckptwatch.formats.base import IntegrityError

CHECK = "integrity.filetype"
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a directory"),
)


class NotRegularFile(IntegrityError):
    """`path` exists but is not a regular file (after following symbolic links)."""

    def __init__(self, path: str, what: str, tensor: str | None = None):
        super().__init__(CHECK, f"{path} is {what}, not a regular file; refused", tensor)
        self.path, self.what = path, what


def kind_of_mode(mode: int) -> str | None:
    """'a FIFO', 'a socket', ... for a mode that is not a regular file's; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    for test, what in _KINDS:
        if test(mode):
            return what
    return "not a regular file"


def check_regular(path: str, tensor: str | None = None) -> os.stat_result:
    """os.stat(path), refusing anything but a regular file (NotRegularFile). OSError as os.stat."""
    st = os.stat(path)
    what = kind_of_mode(st.st_mode)
    if what is not None:
        raise NotRegularFile(path, what, tensor)
    return st


def open_regular(path: str, tensor: str | None = None, buffering: int = -1) -> BinaryIO:
    """Open `path` for binary reading if it is a regular file (NotRegularFile otherwise).

    The open itself never blocks (O_NONBLOCK, O_NOCTTY); the type is checked on the
    descriptor (fstat), so a FIFO swapped in after a check by path is refused too. OSError
    (missing, permissions) as open() raises it."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)
    fd = os.open(path, flags)
    try:
        what = kind_of_mode(os.fstat(fd).st_mode)
        if what is not None:
            raise NotRegularFile(path, what, tensor)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb", buffering=buffering)
    except BaseException:
        os.close(fd)
        raise
