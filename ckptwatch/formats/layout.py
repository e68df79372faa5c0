"""Where the files of a checkpoint are, by format: facts the readers and the daemon share.

Light on purpose (stdlib only): the daemon's main process uses it.
"""

from __future__ import annotations

import gzip
import os

FINGERPRINT_SCHEMA = "ckptwatch.fingerprint/v1"  # written and read by ckptwatch.verify.fingerprint


def shard_path(prefix: str, shard: int, num_shards: int) -> str:
    """`ckpt-3.data-00000-of-00002`: the K-th of N data files of a bundle."""
    return f"{prefix}.data-{shard:05d}-of-{num_shards:05d}"


def read_state_file(directory: str) -> str | None:
    """The latest checkpoint prefix named by `<directory>/checkpoint`, or None."""
    path = os.path.join(directory, "checkpoint")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model_checkpoint_path":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1].encode("latin-1", "backslashreplace").decode("unicode_escape")
            return value if os.path.isabs(value) else os.path.join(directory, value)
    return None


def looks_like_fingerprint(path: str) -> bool:
    """Whether `path` is a ckptwatch fingerprint (JSON, maybe gzipped, naming its schema):
    a look at its first bytes, not a parse (ckptwatch.verify.fingerprint opens it)."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    if head[:2] == b"\x1f\x8b":
        try:
            with gzip.open(path, "rb") as f:
                head = f.read(4096)
        except (OSError, EOFError):
            return False
    return head.lstrip()[:1] == b"{" and FINGERPRINT_SCHEMA.encode() in head
