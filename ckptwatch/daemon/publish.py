"""The "latest verified" state file consumers follow: `publish_dir/checkpoint`
names the newest passing checkpoint by absolute path, so
`tf.train.latest_checkpoint(publish_dir)` never hands out a bad one.

Written atomically (temp file in the same directory, fsync, rename), the way
CheckpointManager writes its own state file. publish_dir is never inside a
watched directory (the config refuses that).
"""

from __future__ import annotations

import contextlib
import os
import tempfile


def _quote(path: str) -> str:
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'


def publish(publish_dir: str, checkpoint_path: str, history: list[str] | None = None) -> str:
    """Point `publish_dir/checkpoint` at `checkpoint_path`; return the file's path."""
    os.makedirs(publish_dir, exist_ok=True)
    latest = os.path.abspath(checkpoint_path)
    paths = [p for p in (history or []) if os.path.abspath(p) != latest] + [latest]
    text = f"model_checkpoint_path: {_quote(latest)}\n" + "".join(
        f"all_model_checkpoint_paths: {_quote(os.path.abspath(p))}\n" for p in paths
    )
    fd, tmp = tempfile.mkstemp(prefix="checkpoint.tmp", dir=publish_dir)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
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
