"""The daemon's side of a watch's history (ckptwatch.daemon.history): which file a request gets,
and which worker-written file becomes the watch's history. Plain files, no numpy."""

from __future__ import annotations

from pathlib import Path

from ckptwatch.daemon import history


def written(state: Path, watch: str, key: str, content: bytes = b"h") -> Path:
    path = Path(history.next_path(str(state), watch, key))
    path.write_bytes(content)
    return path


def test_the_baseline_extends_the_history_a_failing_checkpoint_does_not(tmp_path: Path) -> None:
    state = str(tmp_path)
    assert history.for_request(state, "run", "k1") is None  # nothing yet
    written(tmp_path, "run", "k2", b"two")
    assert history.adopt(state, "run", "k2")
    assert history.ends_at(state, "run") == "k2"
    assert history.for_request(state, "run", "k2") == history.current(state, "run")
    assert Path(history.current(state, "run")).read_bytes() == b"two"

    leftover = written(tmp_path, "run", "k3", b"three")  # k3 failed: never adopted
    history.discard(state, "run")
    assert not leftover.exists() and history.ends_at(state, "run") == "k2"
    assert Path(history.current(state, "run")).read_bytes() == b"two"


def test_a_history_that_does_not_end_at_previous_is_not_used(tmp_path: Path) -> None:
    """After `ckptwatch accept` makes another checkpoint the baseline, the old history no longer
    describes the run: the next request gets none, and a new one starts."""
    state = str(tmp_path)
    written(tmp_path, "run", "k2")
    history.adopt(state, "run", "k2")
    assert history.for_request(state, "run", "accepted") is None
    assert history.for_request(state, "run", None) is None


def test_watches_are_kept_apart_and_names_are_safe(tmp_path: Path) -> None:
    state = str(tmp_path)
    written(tmp_path, "a/b", "k")
    written(tmp_path, "other", "k")
    history.adopt(state, "a/b", "k")
    assert Path(history.current(state, "a/b")).parent == tmp_path / "history"
    assert history.ends_at(state, "other") is None
    assert Path(history.next_path(state, "other", "k")).exists()  # another watch's file is left alone


def test_a_failed_checkpoints_note_is_adopted_and_the_history_still_ends_at_the_baseline(tmp_path: Path) -> None:
    state = str(tmp_path)
    written(tmp_path, "run", "k2", b"two")
    history.adopt(state, "run", "k2")
    written(tmp_path, "run", "k3", b"two, noting k3")  # k3 failed a drift check against k2
    assert history.adopt(state, "run", "k3", ends_at_key="k2")
    assert history.ends_at(state, "run") == "k2"
    assert history.for_request(state, "run", "k2") == history.current(state, "run")
    assert Path(history.current(state, "run")).read_bytes() == b"two, noting k3"
