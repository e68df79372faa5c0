"""ckptwatch.daemon.events: a real Watcher (watchdog's inotify and polling observers) on real
directories, fed by real TensorFlow saves and plain file operations."""

from __future__ import annotations

import os
import queue
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from ckptwatch.daemon.events import Handler, Watcher
from ckptwatch.daemon.model import Touched
from tests.tools import wait_until

POLL = 0.05  # the polling observer's interval in these tests
KINDS = ["inotify", "polling"]


class Recorder:
    """on_touch that records (arrival time, Touched) and lets a test wait for one."""

    def __init__(self):
        self.q: queue.SimpleQueue[tuple[float, Touched]] = queue.SimpleQueue()
        self.seen: list[tuple[float, Touched]] = []

    def __call__(self, t: Touched) -> None:
        assert isinstance(t, Touched)
        self.q.put((time.monotonic(), t))

    def _drain(self, timeout: float) -> bool:
        try:
            item = self.q.get(timeout=timeout)
        except queue.Empty:
            return False
        self.seen.append(item)
        return True

    def wait_for(self, pred: Callable[[Touched], bool], timeout: float = 5.0) -> tuple[float, Touched]:
        """The first touch (seen since the last clear()) that matches pred."""
        deadline = time.monotonic() + timeout
        while True:
            for item in self.seen:
                if pred(item[1]):
                    return item
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no matching Touched within {timeout}s; got {[t for _, t in self.seen]}")
            self._drain(left)

    def settle(self, quiet: float = 0.3) -> list[Touched]:
        """Everything that arrives until nothing has come for `quiet` seconds."""
        while self._drain(quiet):
            pass
        return [t for _, t in self.seen]

    def clear(self) -> None:
        self.settle(0.0)
        self.seen.clear()


def touched(watch: str, path: str | Path, vanished: bool | None = None) -> Callable[[Touched], bool]:
    return lambda t: t.watch == watch and t.path == str(path) and (vanished is None or t.vanished == vanished)


@pytest.fixture
def rec() -> Recorder:
    return Recorder()


@pytest.fixture
def make_watcher(rec):
    made: list[Watcher] = []

    def make(watches: dict[str, str | Path], kind: str = "inotify") -> Watcher:
        w = Watcher({k: str(v) for k, v in watches.items()}, rec, observer=kind, poll_interval=POLL)
        made.append(w)
        return w

    yield make
    for w in made:
        w.stop()


def tick_until(w: Watcher, want: tuple[str, bool], timeout: float = 5.0) -> list[tuple[str, bool]]:
    """Call tick() (as the daemon's loop does) until it reports `want`; all changes seen."""
    changes: list[tuple[str, bool]] = []

    def reported() -> bool:
        changes.extend(w.tick())
        return want in changes

    wait_until(reported, timeout, f"tick() reporting {want}", interval=POLL, context=lambda: f"got {changes}")
    return changes


# -- TensorFlow saves ----------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_checkpoint_manager_saves_produce_touches(tf, kind, tmp_path, rec, make_watcher):
    run = tmp_path / "run"
    run.mkdir()
    w = make_watcher({"run": run}, kind)
    assert w.start() == [("run", True)] and w.armed("run")
    rec.wait_for(touched("run", run, False), timeout=1)  # the synthetic start-up touch
    v = tf.Variable(tf.zeros([256, 256]))
    mgr = tf.train.CheckpointManager(tf.train.Checkpoint(v=v), str(run), max_to_keep=1)
    mgr.save()
    rec.wait_for(touched("run", run / "ckpt-1.index", False))
    rec.wait_for(touched("run", run / "checkpoint", False))
    rec.wait_for(touched("run", run / "ckpt-1.data-00000-of-00001", False))
    mgr.save()  # max_to_keep=1: ckpt-1 is deleted right after ckpt-2 is committed
    rec.wait_for(touched("run", run / "ckpt-2.index", False))
    rec.wait_for(touched("run", run / "ckpt-1.index", True))
    seen = rec.settle()
    assert all(t.watch == "run" for t in seen)
    assert all(t.path == str(run) or t.path.startswith(str(run) + os.sep) for t in seen), seen
    if kind == "inotify":  # the state file is replaced atomically: tmp moved onto `checkpoint`
        assert any(t.vanished and os.path.basename(t.path).startswith("checkpoint.tmp") for t in seen), seen
        assert any(t.path == str(run / "ckpt-2_temp") for t in seen), seen  # temp dir created/deleted


# -- directories that come and go -----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_directory_created_after_start_is_armed_by_tick(kind, tmp_path, rec, make_watcher):
    run = tmp_path / "later" / "run"
    w = make_watcher({"run": run}, kind)
    assert w.start() == [] and not w.armed("run") and w.problem("run") is None
    assert w.tick() == []
    run.mkdir(parents=True)
    assert w.tick() == [("run", True)] and w.armed("run")
    assert w.tick() == []  # nothing changed since
    rec.wait_for(touched("run", run, False), timeout=1)
    (run / "ckpt-1.index").write_bytes(b"x")
    rec.wait_for(touched("run", run / "ckpt-1.index", False))


@pytest.mark.parametrize("kind", KINDS)
def test_deleted_then_recreated_directory_is_rearmed(kind, tmp_path, rec, make_watcher):
    run = tmp_path / "run"
    run.mkdir()
    (run / "a.h5").write_bytes(b"a")
    w = make_watcher({"run": run}, kind)
    w.start()
    rec.wait_for(touched("run", run, False))

    # deleted, seen by a tick while it is gone, then recreated
    shutil.rmtree(run)
    rec.wait_for(touched("run", run, True))  # the watch directory itself vanished
    assert tick_until(w, ("run", False)) == [("run", False)] and not w.armed("run")
    run.mkdir()
    rec.clear()
    assert w.tick() == [("run", True)]
    rec.wait_for(touched("run", run, False), timeout=1)
    (run / "b.h5").write_bytes(b"b")
    rec.wait_for(touched("run", run / "b.h5", False))

    # replaced between two ticks (another directory renamed into place): re-armed
    fresh = tmp_path / "run.new"
    fresh.mkdir()
    shutil.rmtree(run)
    os.rename(fresh, run)
    rec.clear()
    assert tick_until(w, ("run", True)) == [("run", False), ("run", True)]
    assert w.armed("run")
    rec.wait_for(touched("run", run, False), timeout=1)  # synthetic: rescan what was missed
    for i in range(3):  # and events keep coming
        (run / f"c{i}.h5").write_bytes(b"c")
        rec.wait_for(touched("run", run / f"c{i}.h5", False))
    assert w.tick() == []

    # deleted and made again at once (the inode number may be reused): whether the observer
    # followed it or tick() re-armed it, events keep coming
    shutil.rmtree(run)
    run.mkdir()
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        w.tick()
        time.sleep(POLL)
    assert w.armed("run")
    rec.clear()
    (run / "d.h5").write_bytes(b"d")
    rec.wait_for(touched("run", run / "d.h5", False))


@pytest.mark.parametrize("kind", KINDS)
def test_symlinked_watch_directory_is_followed_and_retargeted(kind, tmp_path, rec, make_watcher):
    """Kubernetes mounts: the configured path is a symlink to the real directory."""
    a, b, link = tmp_path / "a", tmp_path / "b", tmp_path / "current"
    a.mkdir()
    b.mkdir()
    link.symlink_to(a)
    w = make_watcher({"run": link}, kind)
    w.start()
    (a / "x.keras").write_bytes(b"x")
    rec.wait_for(touched("run", link / "x.keras", False))  # events name the configured path
    tmp = tmp_path / "current.new"
    tmp.symlink_to(b)
    os.replace(tmp, link)  # atomic retarget
    assert tick_until(w, ("run", True)) == [("run", False), ("run", True)]
    (b / "y.keras").write_bytes(b"y")
    rec.wait_for(touched("run", link / "y.keras", False))


# -- update (config reload) ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_update_adds_removes_and_retargets(kind, tmp_path, rec, make_watcher):
    a, b, c = (tmp_path / n for n in "abc")
    for d in (a, b, c):
        d.mkdir()
    w = make_watcher({"one": a, "two": b}, kind)
    assert sorted(w.start()) == [("one", True), ("two", True)]
    changes = w.update({"one": c, "three": b})  # retarget one, drop two, add three (same dir)
    assert sorted(changes) == [("one", False), ("one", True), ("three", True), ("two", False)]
    assert w.watches == {"one": str(c), "three": str(b)}
    assert w.armed("one") and w.armed("three") and not w.armed("two")
    rec.wait_for(touched("one", c, False))
    rec.wait_for(touched("three", b, False))
    rec.clear()
    for d in (a, b, c):
        (d / "f.h5").write_bytes(b"f")
    rec.wait_for(touched("one", c / "f.h5"))
    rec.wait_for(touched("three", b / "f.h5"))
    seen = rec.settle()
    assert not [t for t in seen if t.watch == "two" or t.path.startswith(str(a))], seen

    # two names on one directory; removing one keeps the other
    assert w.update({"one": c, "three": b, "four": b}) == [("four", True)]
    rec.clear()
    (b / "g.h5").write_bytes(b"g")
    rec.wait_for(touched("three", b / "g.h5"))
    rec.wait_for(touched("four", b / "g.h5"))
    assert w.update({"one": c, "four": b}) == [("three", False)]
    rec.clear()
    (b / "h.h5").write_bytes(b"h")
    rec.wait_for(touched("four", b / "h.h5"))
    assert not [t for t in rec.settle() if t.watch == "three"]

    assert sorted(w.update({})) == [("four", False), ("one", False)]
    rec.clear()
    (b / "i.h5").write_bytes(b"i")
    (c / "i.h5").write_bytes(b"i")
    assert rec.settle(0.5) == []
    assert w.update({"late": tmp_path / "late"}) == []  # does not exist yet: armed by a later tick
    (tmp_path / "late").mkdir()
    assert w.tick() == [("late", True)]


# -- what is (not) reported ------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_moves_deletes_and_reads(kind, tmp_path, rec, make_watcher):
    run, outside = tmp_path / "run", tmp_path / "outside"
    run.mkdir()
    outside.mkdir()
    (run / "ckpt-1.index").write_bytes(b"1")
    (run / "weights.h5").write_bytes(b"w" * 4096)
    w = make_watcher({"run": run}, kind)
    w.start()
    rec.wait_for(touched("run", run))
    rec.clear()
    os.rename(run / "ckpt-1.index", run / "ckpt-2.index")
    rec.wait_for(touched("run", run / "ckpt-1.index", True))
    rec.wait_for(touched("run", run / "ckpt-2.index", False))
    os.rename(run / "ckpt-2.index", outside / "ckpt-2.index")  # moved away
    rec.wait_for(touched("run", run / "ckpt-2.index", True))
    os.rename(outside / "ckpt-2.index", run / "ckpt-3.index")  # moved in
    rec.wait_for(touched("run", run / "ckpt-3.index", False))
    (run / "ckpt-3.index").unlink()
    rec.wait_for(touched("run", run / "ckpt-3.index", True))
    assert not [t for t in rec.settle() if not t.path.startswith(str(run))]
    rec.clear()
    for _ in range(3):  # our own workers read checkpoints: reads must not come back as events
        (run / "weights.h5").read_bytes()
        os.listdir(run)
    assert rec.settle(0.5) == []


def test_handler_translates_without_an_observer(tmp_path):
    """Handler alone, fed watchdog's own event objects: a pure translation."""
    from watchdog.events import (
        DirDeletedEvent,
        DirModifiedEvent,
        FileClosedNoWriteEvent,
        FileCreatedEvent,
        FileDeletedEvent,
        FileMovedEvent,
        FileOpenedEvent,
    )

    got: list[Touched] = []
    d = str(tmp_path)
    h = Handler("w", d, got.append)
    for e in (
        FileCreatedEvent(f"{d}/a.h5"),
        FileDeletedEvent(f"{d}/b.h5"),
        FileMovedEvent(f"{d}/checkpoint.tmp1", f"{d}/checkpoint"),
        FileMovedEvent(f"{d}/c.h5", "/elsewhere/c.h5"),
        FileOpenedEvent(f"{d}/a.h5"),
        FileClosedNoWriteEvent(f"{d}/a.h5"),
        DirModifiedEvent(d),
        FileCreatedEvent("/elsewhere/x.h5"),
        DirDeletedEvent(d),
    ):
        h.dispatch(e)
    assert got == [
        Touched("w", f"{d}/a.h5"),
        Touched("w", f"{d}/b.h5", True),
        Touched("w", f"{d}/checkpoint.tmp1", True),
        Touched("w", f"{d}/checkpoint"),
        Touched("w", f"{d}/c.h5", True),
        Touched("w", d, True),
    ]


def test_a_failing_on_touch_does_not_stop_watching(tmp_path, caplog):
    run = tmp_path / "run"
    run.mkdir()
    got: list[Touched] = []

    def on_touch(t: Touched) -> None:
        if t.path.endswith("boom.h5"):
            raise RuntimeError("consumer bug")
        got.append(t)

    w = Watcher({"run": str(run)}, on_touch, observer="inotify")
    try:
        w.start()
        (run / "boom.h5").write_bytes(b"x")
        (run / "after.h5").write_bytes(b"x")
        wait_until(lambda: any(t.path == str(run / "after.h5") for t in got), 5, "after.h5 seen", interval=0.01)
        assert "consumer bug" in caplog.text
    finally:
        w.stop()


@pytest.mark.parametrize("kind", KINDS)
def test_tick_restarts_an_observer_that_died(kind, tmp_path, rec, make_watcher):
    run = tmp_path / "run"
    run.mkdir()
    w = make_watcher({"run": run}, kind)
    w.start()
    rec.wait_for(touched("run", run))
    dying = w._observer  # white box: end the observer thread behind the Watcher's back
    dying.stop()
    dying.join(2)
    rec.clear()
    assert w.tick() == [("run", False), ("run", True)]
    assert w.observer_class is not None and w._observer is not dying
    rec.wait_for(touched("run", run), timeout=1)
    (run / "x.h5").write_bytes(b"x")
    rec.wait_for(touched("run", run / "x.h5"))


# -- timing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_stop_is_quick(kind, tmp_path, rec, make_watcher):
    dirs = {f"w{i}": tmp_path / f"d{i}" for i in range(8)}
    for d in dirs.values():
        d.mkdir()
    w = make_watcher(dirs, kind)
    w.start()
    (dirs["w0"] / "x.h5").write_bytes(b"x")
    rec.wait_for(touched("w0", dirs["w0"] / "x.h5"))
    before = threading.active_count()
    t0 = time.monotonic()
    w.stop()
    assert time.monotonic() - t0 < 2.0
    assert not w.running and not w.armed("w0") and w.tick() == []
    assert threading.active_count() < before  # the observer's threads were joined
    rec.clear()
    (dirs["w1"] / "y.h5").write_bytes(b"y")
    assert rec.settle(0.3) == []
    w.stop()  # idempotent


def test_inotify_latency_is_well_under_a_second(tmp_path, rec, make_watcher):
    run = tmp_path / "run"
    run.mkdir()
    w = make_watcher({"run": run}, "inotify")
    w.start()
    assert w.observer_class == "InotifyObserver"
    rec.wait_for(touched("run", run))
    latencies = []
    for i in range(20):
        path = run / f"ckpt-{i}.index"
        t0 = time.monotonic()
        with open(path, "wb") as f:
            f.write(b"x" * 1024)
        arrived, _ = rec.wait_for(touched("run", path, False), timeout=2)
        latencies.append(arrived - t0)
    latencies.sort()
    assert latencies[-1] < 1.0, latencies
    assert latencies[len(latencies) // 2] < 0.1, latencies


def test_polling_latency_follows_the_interval(tmp_path, rec, make_watcher):
    run = tmp_path / "run"
    run.mkdir()
    w = make_watcher({"run": run}, "polling")
    w.start()
    assert w.observer_class == "PollingObserver"
    rec.wait_for(touched("run", run))
    t0 = time.monotonic()
    (run / "w.h5").write_bytes(b"x")
    arrived, _ = rec.wait_for(touched("run", run / "w.h5", False), timeout=2)
    assert arrived - t0 < POLL * 4 + 0.5


def test_bad_arguments():
    with pytest.raises(ValueError, match="observer must be one of"):
        Watcher({}, print, observer="fsevents-please")
    with pytest.raises(ValueError, match="poll_interval"):
        Watcher({}, print, observer="polling", poll_interval=0)


def test_events_module_stays_light(run_python):
    code = (
        "import sys\n"
        "from ckptwatch.daemon import events\n"
        "w = events.Watcher({'w': sys.argv[1]}, print)\n"
        "w.start(); w.stop()\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'numba', 'h5py', 'numpy'}))\n"
    )
    r = run_python(code, "/")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines()[-1] == "[]"
