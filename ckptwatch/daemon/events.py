"""Filesystem events -> `Touched` (watchdog).

    Handler(watch, directory, on_touch)       one watchdog event -> Touched(s), nothing else
    Watcher(watches, on_touch, observer, poll_interval)
        start() / stop() / tick() / update(watches) / armed(name)

Like watchdog's own events.py, the handler only translates: every change under a watch
directory becomes `Touched(watch, path, vanished)` handed to `on_touch` (which should just
enqueue it). What to do about it -- rescan, completion checks, coalescing -- is decided by
the daemon's loop. `on_touch` is called from watchdog's observer thread, and from the
thread that calls start()/tick()/update() for the synthetic touches: it must be thread-safe
(`queue.Queue.put`, `loop.call_soon_threadsafe`, ...).

Directories come and go: the training job may create its checkpoint directory after the
daemon starts, delete it, or recreate it. tick() (called by the daemon's loop every
poll_interval) arms watches whose directory exists and is not watched yet, and re-arms
ones whose directory was deleted or replaced. When a watch is armed, one synthetic
`Touched(watch, directory)` is emitted so the daemon rescans it (start-up scan, "the
directory appeared", and whatever happened while it was not watched).

Observers: "inotify" is watchdog's native Observer (InotifyObserver on Linux); "polling"
is PollingObserver(timeout=poll_interval), for NFS / FUSE mounts where inotify does not
see other hosts' writes; "auto" is the native one, or polling when the native one cannot
be created (e.g. the inotify instance limit is reached).
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from watchdog.events import (
    EVENT_TYPE_DELETED,
    EVENT_TYPE_MOVED,
    DirCreatedEvent,
    DirDeletedEvent,
    DirModifiedEvent,
    DirMovedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileClosedNoWriteEvent,
    FileCreatedEvent,
    FileDeletedEvent,
    FileModifiedEvent,
    FileMovedEvent,
    FileOpenedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.api import BaseObserver, ObservedWatch
from watchdog.observers.polling import PollingObserver

from ckptwatch.daemon.model import Touched

__all__ = ["EVENT_FILTER", "OBSERVER_KINDS", "Handler", "OnTouch", "Watcher", "unarmed_reason"]

log = logging.getLogger(__name__)

OnTouch = Callable[[Touched], None]
OBSERVER_KINDS = ("auto", "inotify", "polling")

# Events that can mean "something was written, renamed or removed". Left out on purpose:
# opened / closed-without-writing (our own workers read the checkpoints: that must not
# come back as events) and directory-modified (always accompanies a child's own event).
EVENT_FILTER: list[type[FileSystemEvent]] = [
    FileCreatedEvent,
    DirCreatedEvent,
    FileModifiedEvent,
    FileAttribEvent,
    FileClosedEvent,
    FileDeletedEvent,
    DirDeletedEvent,
    FileMovedEvent,
    DirMovedEvent,
]
_NOT_A_CHANGE = (FileOpenedEvent, FileClosedNoWriteEvent, DirModifiedEvent)


class Handler(FileSystemEventHandler):
    """Translates the events of one watch directory into `Touched` for `on_touch`.

    Deletions are `vanished=True`; a move reports its source as vanished and its
    destination as touched (each only if it lies under the directory).
    """

    def __init__(self, watch: str, directory: str, on_touch: OnTouch):
        super().__init__()
        self.watch = watch
        self.directory = os.path.abspath(directory)
        self.on_touch = on_touch

    def _under(self, path: str) -> bool:
        return path == self.directory or path.startswith(self.directory + os.sep)

    def _touch(self, path: str | bytes, vanished: bool = False) -> None:
        p = os.fsdecode(path)
        if p and self._under(p):
            try:
                self.on_touch(Touched(self.watch, p, vanished))
            except Exception:  # an exception escaping here would end watchdog's thread: all watching
                log.exception("on_touch failed for %s", p)

    def on_any_event(self, event: FileSystemEvent) -> None:
        if isinstance(event, _NOT_A_CHANGE):
            return
        if event.event_type == EVENT_TYPE_MOVED:
            self._touch(event.src_path, vanished=True)
            self._touch(event.dest_path)
        else:
            self._touch(event.src_path, vanished=event.event_type == EVENT_TYPE_DELETED)


def _identity(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of the directory at `path` (following symlinks), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISDIR(st.st_mode) else None


def unarmed_reason(path: str, problem: str | None = None) -> tuple[str, str]:
    """Why a directory at `path` is not armed: (one of model.UNARMED_REASONS, a line for people).
    `problem`: the error of the last attempt to arm it, if any."""
    try:
        st = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return "missing", f"{path}: no such directory"
    except PermissionError as e:
        return "unreadable", f"{path}: {e.strerror or e}"
    except OSError as e:
        return "error", f"{path}: {e.strerror or e}"
    if not stat.S_ISDIR(st.st_mode):
        return "not_a_directory", f"{path}: not a directory (the watch path names a directory checkpoints are saved in)"
    if not os.access(path, os.R_OK | os.X_OK):
        return "unreadable", f"{path}: permission denied (the daemon's user cannot list it)"
    if problem:
        return ("unreadable" if "ermission" in problem else "error"), problem
    return "missing", f"{path}: not watched yet"


@dataclass
class _Dir:
    """One watched directory, shared by every watch name configured on it."""

    path: str
    handlers: dict[str, Handler] = field(default_factory=dict)  # watch name -> handler
    observed: ObservedWatch | None = None  # set while armed
    identity: tuple[int, int] | None = None  # of the directory that was armed
    problem: str | None = None  # why arming failed last time


class Watcher:
    """Owns a watchdog observer; arms and disarms the watch directories as they come and go.

    `watches` maps watch name -> directory. Every method is thread-safe; start()/tick()/
    update() emit the synthetic touches from the calling thread, after releasing the lock.
    """

    def __init__(
        self,
        watches: dict[str, str],
        on_touch: OnTouch,
        observer: str = "auto",
        poll_interval: float = 1.0,
    ):
        if observer not in OBSERVER_KINDS:
            raise ValueError(f"observer must be one of {', '.join(OBSERVER_KINDS)}, not {observer!r}")
        if poll_interval <= 0:
            raise ValueError(f"poll_interval must be > 0, not {poll_interval}")
        self.on_touch = on_touch
        self.observer_kind = observer  # what was asked for; `observer_class` says what runs
        self.poll_interval = float(poll_interval)
        self._lock = threading.RLock()
        self._names: dict[str, str] = {}  # watch name -> absolute directory
        self._dirs: dict[str, _Dir] = {}
        self._observer: BaseObserver | None = None
        for name, path in watches.items():
            self._add(name, path)

    # -- public ------------------------------------------------------------------------------

    @property
    def watches(self) -> dict[str, str]:
        with self._lock:
            return dict(self._names)

    @property
    def observer_class(self) -> str | None:
        """The class name of the running observer (InotifyObserver, PollingObserver, ...)."""
        with self._lock:
            return type(self._observer).__name__ if self._observer is not None else None

    @property
    def running(self) -> bool:
        with self._lock:
            return self._observer is not None

    def start(self) -> list[tuple[str, bool]]:
        """Start the observer and arm every watch whose directory exists (one synthetic
        Touched each). Returns the (watch, armed) changes, like tick()."""
        with self._lock:
            if self._observer is None:
                self._observer = self._make_observer()
                self._observer.start()
        return self.tick()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the observer and join its threads. Every watch is disarmed."""
        with self._lock:
            observer, self._observer = self._observer, None
            for d in self._dirs.values():
                d.observed, d.identity = None, None
        if observer is not None:
            observer.stop()
            observer.join(timeout)

    def tick(self) -> list[tuple[str, bool]]:
        """Arm watches whose directory has appeared, re-arm ones whose directory was deleted
        and recreated (or replaced), disarm ones whose directory is gone. Returns the
        (watch, armed) changes in order; a re-arm is (watch, False) then (watch, True)."""
        changes: list[tuple[str, bool]] = []
        touches: list[Touched] = []
        with self._lock:
            if self._observer is not None and not self._observer.is_alive():
                self._replace_dead_observer(changes)
            if self._observer is not None:
                for d in list(self._dirs.values()):
                    self._reconcile(d, changes, touches)
        self._emit(touches)
        return changes

    def armed(self, name: str) -> bool:
        with self._lock:
            path = self._names.get(name)
            return path is not None and self._dirs[path].observed is not None

    def problem(self, name: str) -> str | None:
        """Why the watch could not be armed the last time it was tried (None if it could,
        or if its directory simply does not exist)."""
        with self._lock:
            path = self._names.get(name)
            return self._dirs[path].problem if path is not None else None

    def why_not_armed(self, name: str) -> tuple[str, str] | None:
        """None if the watch is armed (or unknown), else (reason, detail) from `unarmed_reason`.
        Looks at the directory (stat): call it from the daemon's loop, not from a scrape."""
        with self._lock:
            path = self._names.get(name)
            if path is None or self._dirs[path].observed is not None:
                return None
            problem = self._dirs[path].problem
        return unarmed_reason(path, problem)

    def update(self, watches: dict[str, str]) -> list[tuple[str, bool]]:
        """Apply a new set of watches (config reload): add new names, remove missing ones,
        retarget names whose directory changed. New or retargeted watches whose directory
        exists are armed at once (with a synthetic Touched). Returns the (watch, armed) changes."""
        changes: list[tuple[str, bool]] = []
        touches: list[Touched] = []
        with self._lock:
            wanted = {name: os.path.abspath(os.path.expanduser(p)) for name, p in watches.items()}
            for name, path in list(self._names.items()):
                if wanted.get(name) != path and self._remove(name):
                    changes.append((name, False))
            for name, path in wanted.items():
                if name not in self._names:
                    d = self._add(name, path)
                    if self._observer is None:
                        continue
                    if d.observed is not None:  # directory already armed for another name
                        self._observer.add_handler_for_watch(d.handlers[name], d.observed)
                        changes.append((name, True))
                        touches.append(Touched(name, d.path))
                    else:
                        self._reconcile(d, changes, touches)
        self._emit(touches)
        return changes

    # -- internals (called with the lock held) ------------------------------------------------

    def _make_observer(self) -> BaseObserver:
        if self.observer_kind == "polling":
            return PollingObserver(timeout=self.poll_interval)
        if self.observer_kind == "inotify":
            return Observer()
        try:
            return Observer()
        except OSError:  # e.g. "inotify instance limit reached": still watch, by polling
            return PollingObserver(timeout=self.poll_interval)

    def _replace_dead_observer(self, changes: list) -> None:
        """The observer thread ended without stop() (it should not): start a fresh one; the
        caller's reconcile then re-arms every directory, with a synthetic touch each."""
        assert self._observer is not None
        log.error("watchdog observer thread ended unexpectedly; restarting it")
        dead, self._observer = self._observer, None
        for d in self._dirs.values():
            if d.observed is not None:
                d.observed, d.identity = None, None
                changes.extend((name, False) for name in d.handlers)
        with contextlib.suppress(Exception):
            dead.stop()  # stops the emitters it may have left running
        self._observer = self._make_observer()
        self._observer.start()

    def _add(self, name: str, path: str) -> _Dir:
        path = os.path.abspath(os.path.expanduser(path))
        self._names[name] = path
        d = self._dirs.get(path)
        if d is None:
            d = self._dirs[path] = _Dir(path)
        d.handlers[name] = Handler(name, path, self.on_touch)
        return d

    def _remove(self, name: str) -> bool:
        """Forget a watch name; True if it was armed."""
        path = self._names.pop(name)
        d = self._dirs[path]
        handler = d.handlers.pop(name)
        was_armed = d.observed is not None
        if d.observed is not None and self._observer is not None:
            if d.handlers:
                with contextlib.suppress(KeyError):
                    self._observer.remove_handler_for_watch(handler, d.observed)
            else:
                self._disarm(d)
        if not d.handlers:
            del self._dirs[path]
        return was_armed

    def _emitter_alive(self, observed: ObservedWatch) -> bool:
        assert self._observer is not None
        for emitter in list(self._observer.emitters):
            if emitter.watch == observed:
                # inotify stops its emitter on IN_DELETE_SELF, polling when the directory is gone
                return emitter.is_alive() and emitter.should_keep_running()
        return False

    def _reconcile(self, d: _Dir, changes: list, touches: list) -> None:
        identity = _identity(d.path)
        if d.observed is not None:
            if identity is not None and identity == d.identity and self._emitter_alive(d.observed):
                return
            self._disarm(d)
            changes.extend((name, False) for name in d.handlers)
        if identity is None:
            d.problem = None
            return
        if self._arm(d, identity):
            changes.extend((name, True) for name in d.handlers)
            touches.extend(Touched(name, d.path) for name in d.handlers)

    def _arm(self, d: _Dir, identity: tuple[int, int]) -> bool:
        assert self._observer is not None
        handlers = list(d.handlers.values())
        try:
            # follow_symlink: a watch path that is a symlink to a directory (Kubernetes volume
            # mounts) is watched through the link, and events keep the configured path.
            observed = self._observer.schedule(handlers[0], d.path, event_filter=EVENT_FILTER, follow_symlink=True)
        except OSError as e:  # vanished meanwhile, no permission, inotify watch limit...
            d.problem = None if _identity(d.path) is None else f"{d.path}: {e.strerror or e}"
            return False
        for h in handlers[1:]:
            self._observer.add_handler_for_watch(h, observed)
        d.observed, d.identity, d.problem = observed, identity, None
        return True

    def _disarm(self, d: _Dir) -> None:
        observed, d.observed, d.identity = d.observed, None, None
        if observed is not None and self._observer is not None:
            with contextlib.suppress(KeyError):  # already gone
                self._observer.unschedule(observed)

    def _emit(self, touches: list[Touched]) -> None:
        for t in touches:
            self.on_touch(t)
