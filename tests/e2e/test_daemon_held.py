"""Deletion races never cost a verdict: from the moment the daemon sees a checkpoint's commit
it holds its files open, so a checkpoint that CheckpointManager (max_to_keep) deletes before
the worker reaches it is verified all the same; the descriptors are bounded and released."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.tools import save_scaler_model

from .conftest import GOOD, Trainer, bundle_files, install, outcome, paused, report_of


def held_files(pid: int, directory: Path) -> list[str]:
    """Targets of the daemon's open descriptors that lie in `directory` (unlinked ones end
    with " (deleted)"), read from /proc as an operator would."""
    out = []
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            target = os.readlink(os.path.join(fd_dir, name))
        except OSError:  # closed meanwhile
            continue
        if target.startswith(str(directory) + os.sep):
            out.append(target)
    return sorted(out)


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _busy_with_big(d, busy: Path, big_checkpoint: str, name: str) -> None:
    """The only worker starts on a ~256 MiB checkpoint of another watch."""
    install(big_checkpoint, busy, name)
    d.wait_for("verification started", timeout=30, watch="busy", checkpoint=str(busy / name))


def _depth(d, n: int) -> None:
    d.wait_until(lambda: d.metric("ckptwatch_queue_depth", watch="run") == n, timeout=10, what=f"{n} queued")


def test_checkpoint_deleted_by_max_to_keep_while_worker_busy_still_gets_its_verdict(
    tf, daemon_factory, tmp_path, big_checkpoint
):
    """The done-when test of the deletion race: CheckpointManager(max_to_keep=1) deletes a
    checkpoint right after the next one is committed, while the only worker is busy with a slow
    job of another watch; the deleted one still gets its verdict (`pass`), read through the files
    the daemon held open since its commit. Before holding: skipped as `vanished`."""
    run, busy = tmp_path / "run", tmp_path / "busy"
    run.mkdir()
    busy.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}, {"name": "busy", "path": str(busy)}])
    trainer = Trainer(tf, run, max_to_keep=1)
    first = trainer.save()
    assert outcome(d, first)["verdict"] == "pass"
    _busy_with_big(d, busy, big_checkpoint, "ckpt-1")
    with paused(d.workers()[0]):
        second = trainer.save()
        _depth(d, 1)
        files = [str(f) for f in bundle_files(second)]
        third = trainer.save()  # commits ckpt-3, then deletes ckpt-2
        assert not any(os.path.exists(f) for f in files), "CheckpointManager deleted the second one"
        _depth(d, 2)
        held = held_files(d.pid, run)
        assert [f + " (deleted)" for f in files] == [h for h in held if h.startswith(second + ".")], held
    ev = outcome(d, second, timeout=90)
    report = report_of(d, second)
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", (ev, report["findings"])
    assert report["checkpoint"]["path"] == second, report["checkpoint"]
    assert report["checkpoint"]["tensors"] > 0
    assert report["drift"]["previous"] is not None, "judged against the first one (its fingerprint)"
    assert not any(f["check"].startswith(("integrity.", "structure.")) for f in report["findings"])
    assert outcome(d, third, timeout=60)["verdict"] == "pass"
    assert not d.metric("ckptwatch_checkpoints_skipped_total", watch="run", reason="vanished")
    d.wait_until(lambda: not held_files(d.pid, run), timeout=10, what="held files released")


def test_held_descriptors_are_bounded_and_released(tf, daemon_factory, tmp_path, big_checkpoint):
    """Per watch at most queue_limit queued checkpoints (plus the one in flight) are held; the
    coalesced ones are released at once, the others at their verdict: after many checkpoints the
    daemon has no more descriptors open than before them."""
    run, busy = tmp_path / "run", tmp_path / "busy"
    run.mkdir()
    busy.mkdir()
    d = daemon_factory(
        [{"name": "run", "path": str(run)}, {"name": "busy", "path": str(busy)}], daemon={"queue_limit": 2}
    )
    trainer = Trainer(tf, run, max_to_keep=1)
    saved = [trainer.save()]
    assert outcome(d, saved[0])["verdict"] == "pass"
    d.wait_until(lambda: not held_files(d.pid, run), timeout=10, what="the verified checkpoint released")
    baseline = open_fds(d.pid)
    for n in range(2):
        _busy_with_big(d, busy, big_checkpoint, f"ckpt-{n + 1}")
        with paused(d.workers()[0]):
            for _ in range(6):  # each deletes the one before (max_to_keep=1)
                saved.append(trainer.save())
            d.wait_until(
                lambda: any(h.startswith(saved[-1] + ".index") for h in held_files(d.pid, run)),
                timeout=10,
                what="the newest held",
            )
            held = held_files(d.pid, run)
            assert 0 < len(held) <= 2 * 2, held  # queue_limit checkpoints of two files each
            assert all(h.endswith(" (deleted)") for h in held if not h.startswith(saved[-1] + ".")), held
        outcome(d, saved[-1], timeout=90)
    for _ in range(10):  # one at a time, as a training loop does
        saved.append(trainer.save())
        assert outcome(d, saved[-1], timeout=60)["verdict"] in GOOD
    for path in saved:
        done = [e for e in d.events(checkpoint=path) if e["event"] in ("checkpoint verified", "checkpoint skipped")]
        assert len(done) <= 1, done
        if done and done[0]["event"] == "checkpoint skipped":
            assert done[0]["reason"] == "coalesced", done  # never vanished: held since its commit
        elif done:
            assert done[0]["verdict"] in GOOD, done
    d.wait_until(lambda: not held_files(d.pid, run) and not held_files(d.pid, busy), timeout=10, what="released")
    assert open_fds(d.pid) <= baseline + 2, (open_fds(d.pid), baseline)


def _weights_h5(keras, staging: Path) -> Path:
    keras.utils.set_random_seed(0)
    dense = {"bias_initializer": "random_normal"}
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, **dense), keras.layers.Dense(4, **dense)])
    path = staging / "best-1.weights.h5"
    model.save_weights(str(path))
    return path


def _saved_model(tf, staging: Path) -> Path:
    path = staging / "7"
    save_scaler_model(tf, path)
    return path


@pytest.mark.parametrize("kind", ["weights.h5", "savedmodel"])
def test_single_files_and_saved_models_are_held_too(tf, keras, daemon_factory, tmp_path, big_checkpoint, kind):
    """A `.weights.h5` file or a SavedModel directory deleted while queued is verified too."""
    run, busy, staging = tmp_path / "run", tmp_path / "busy", tmp_path / "staging"
    for p in (run, busy, staging):
        p.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}, {"name": "busy", "path": str(busy)}])
    made = _weights_h5(keras, staging) if kind == "weights.h5" else _saved_model(tf, staging)
    _busy_with_big(d, busy, big_checkpoint, "ckpt-1")
    with paused(d.workers()[0]):
        path = run / made.name
        os.rename(made, path)  # committed at once, as an atomic writer would
        _depth(d, 1)
        assert held_files(d.pid, run), "its files are held"
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink()
    ev = outcome(d, str(path), timeout=90)
    report = report_of(d, str(path))
    assert ev["event"] == "checkpoint verified" and ev["verdict"] == "pass", (ev, report["findings"])
    assert report["checkpoint"]["path"].startswith(str(path)), report["checkpoint"]
    assert report["checkpoint"]["tensors"] > 0
    d.wait_until(lambda: not held_files(d.pid, run), timeout=10, what="held files released")
