"""The "latest verified" state file consumers follow: `publish_dir/checkpoint`
names the newest passing checkpoint by absolute path, so
`tf.train.latest_checkpoint(publish_dir)` never hands out a bad one.

Written atomically (temp file in the same directory, fsync, rename), the way
CheckpointManager writes its own state file. publish_dir is never inside a
watched directory (the config refuses that).

The file gets the watch's `publish_mode` (0644 by default, whatever the umask: mkstemp makes
0600 files), because what follows it (a trainer, a model server) runs as another user: the
container's UID 10001, the unit's DynamicUser. A publish_dir the daemon creates itself is
searchable and listable by the users the mode lets read the file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def _quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


DEFAULT_MODE = 0o644


def _dir_mode(mode: int) -> int:
    """rwx for the owner; r-x for group and others where `mode` lets them read the file."""
    out = 0o700
    if mode & 0o040:
        out |= 0o050
    if mode & 0o004:
        out |= 0o005
    return out


def _makedirs(path: str, mode: int) -> None:
    if os.path.isdir(path):
        return
    parent = os.path.dirname(os.path.abspath(path))
    if parent != path:
        _makedirs(parent, mode)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path)
        os.chmod(path, _dir_mode(mode))  # mkdir's mode is masked by the umask


def publish(publish_dir: str, checkpoint_path: str, history: list[str] | None = None, mode: int = DEFAULT_MODE) -> str:
    """Point `publish_dir/checkpoint` (file mode `mode`) at `checkpoint_path`; return the file's path."""
    _makedirs(publish_dir, mode)
    latest = os.path.abspath(checkpoint_path)
    paths = [p for p in (history or []) if os.path.abspath(p) != latest] + [latest]
    text = f"model_checkpoint_path: {_quote(latest)}\n" + "".join(
        f"all_model_checkpoint_paths: {_quote(os.path.abspath(p))}\n" for p in paths
    )
    fd, tmp = tempfile.mkstemp(prefix="checkpoint.tmp", dir=publish_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            os.fchmod(f.fileno(), mode)
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        target = os.path.join(publish_dir, "checkpoint")
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    return target
