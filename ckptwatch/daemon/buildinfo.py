"""What `ckptwatch_build_info` says: version, revision, Python and TensorFlow versions.

revision    the git commit ckptwatch was built from: $CKPTWATCH_REVISION (the Dockerfile sets
            it from its REVISION build argument: `--build-arg REVISION=$(git rev-parse HEAD)`),
            else the commit checked out in the git tree the package is imported from (an
            editable install, a checkout on PYTHONPATH), else "unknown"
tensorflow  the installed distribution's version, read from its metadata: the daemon's main
            process never imports TensorFlow ("none" when it is not installed)
"""

from __future__ import annotations

import functools
import os
import platform
import re
from importlib import metadata

import ckptwatch

_TF_DISTRIBUTIONS = ("tensorflow", "tensorflow-cpu", "tensorflow-gpu", "tensorflow-intel", "tf-nightly")
_SHA = re.compile(r"[0-9a-f]{7,64}")


def tensorflow_version() -> str:
    for name in _TF_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return "none"


def _git_dir(start: str) -> str | None:
    here = os.path.abspath(start)
    while True:
        candidate = os.path.join(here, ".git")
        if os.path.isdir(candidate):
            return candidate
        if os.path.isfile(candidate):  # a worktree or submodule: "gitdir: PATH"
            try:
                with open(candidate, encoding="utf-8") as f:
                    line = f.read(4096).strip()
            except OSError:
                return None
            if line.startswith("gitdir:"):
                path = line.split(":", 1)[1].strip()
                return path if os.path.isabs(path) else os.path.normpath(os.path.join(here, path))
            return None
        parent = os.path.dirname(here)
        if parent == here:
            return None
        here = parent


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read(4096).strip()
    except OSError:
        return None


def git_revision(start: str) -> str | None:
    """The commit checked out in the git tree holding `start`, read from .git without running git."""
    git = _git_dir(start)
    if git is None:
        return None
    head = _read(os.path.join(git, "HEAD"))
    if head is None:
        return None
    if _SHA.fullmatch(head):
        return head
    if not head.startswith("ref:"):
        return None
    ref = head.split(":", 1)[1].strip()
    common = _read(os.path.join(git, "commondir"))  # a worktree: refs live in the main .git
    roots = [git] + ([os.path.normpath(os.path.join(git, common))] if common else [])
    for root in roots:
        sha = _read(os.path.join(root, ref))
        if sha and _SHA.fullmatch(sha):
            return sha
        try:
            with open(os.path.join(root, "packed-refs"), encoding="utf-8") as f:
                packed = f.read()
        except OSError:
            continue
        for line in packed.splitlines():
            parts = line.split()
            if len(parts) == 2 and parts[1] == ref and _SHA.fullmatch(parts[0]):
                return parts[0]
    return None


@functools.cache
def revision() -> str:
    env = os.environ.get("CKPTWATCH_REVISION", "").strip()
    if env:
        return env
    package = os.path.dirname(os.path.abspath(ckptwatch.__file__))
    return git_revision(package) or "unknown"


def build_labels(version: str | None = None) -> dict[str, str]:
    return {
        "version": version or ckptwatch.__version__,
        "revision": revision(),
        "python": platform.python_version(),
        "tensorflow": tensorflow_version(),
    }
