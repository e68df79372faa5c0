"""The daemon's state when its directory fails: full, read-only, or its database corrupt.

`DurableState` is what the daemon uses (state.State, the SQLite tables, sits behind it). Losing
the state never costs a verdict; the daemon goes on watching and verifying:

    writable     every write goes to SQLite at once
    degraded     a write (or a read) failed: disk full, read-only, an I/O error, a lock held too
                 long. What would have been written is kept in memory: at most `backlog` records
                 per watch (a verified checkpoint's report with its fingerprint, or a skip), the
                 oldest dropped and counted as lost; each watch's baseline, what its publish_dir
                 names and the acceptances applied are kept too (one each per watch: never
                 dropped). Reads come from SQLite where it still answers, and from memory. Retried
                 with backoff (1 s, doubling up to `retry_max`): a probe file and a probe row, then
                 everything kept, in order.
    corrupt      SQLite says "file is not a database" or "database disk image is malformed", or
                 the file's header is no longer SQLite's (checked every second): the file (with its
                 -wal and -shm) is renamed `state.sqlite3.corrupt-<UTC time>` inside the state dir
                 and a new database started -- from a copy of what the open connection still reads
                 when that copy passes SQLite's check, else empty -- and the baselines kept in
                 memory are written to it. The log says what was lost.

Each change is said once: a log event (`state not writable`, `state writable again`, `state
database corrupt`), `on_error(kind)` for every failure (the daemon counts them in
`ckptwatch_state_errors_total`), and `health()` for /readyz and `ckptwatch_state_writable`.

Only a state directory that cannot be created (or is not a directory) stops the daemon at start
(StateUnavailable: one line naming daemon.state_dir, the path and why; exit 75, restarted).

Thread-safety: the main loop calls everything; the HTTP thread only `recent_reports` and `report`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import structlog

from ckptwatch.daemon.baselines import Acceptance, GoodCheckpoint
from ckptwatch.daemon.model import StateHealth
from ckptwatch.daemon.state import DATABASE, State, fingerprint_file
from ckptwatch.daemon.summary import summarize
from ckptwatch.errors import StateUnavailable

T = TypeVar("T")

SQLITE_MAGIC = b"SQLite format 3\x00"
RETRY_FIRST = 1.0  # seconds before the first retry; doubles up to retry_max
CHECK_EVERY = 1.0  # seconds between checks of the database file's header while writable
GOOD = ("pass", "warn")


def classify(e: BaseException) -> str:
    """What kind of state failure `e` is: one of model.STATE_ERROR_KINDS."""
    if isinstance(e, sqlite3.Error):
        name = getattr(e, "sqlite_errorname", "") or ""
        text = str(e).lower()
        if name.startswith(("SQLITE_CORRUPT", "SQLITE_NOTADB")) or "malformed" in text or "not a database" in text:
            return "corrupt"
        if name.startswith("SQLITE_FULL") or "is full" in text:
            return "full"
        if name.startswith("SQLITE_READONLY") or "readonly" in text:
            return "read_only"
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
            return "locked"
        return "io"
    if isinstance(e, OSError):
        if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            return "full"
        if e.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            return "read_only"
    return "io"


@dataclass
class Record:
    """What a write would have stored: a report (with its fingerprint) or a skip."""

    kind: str  # "report" | "skip" | "fingerprint"
    watch: str
    path: str
    key: str
    step: int | None
    at: float  # unix time it happened
    report: dict | None = None
    fingerprint: str | None = None
    reason: str = ""

    def write(self, store: State) -> None:
        if self.kind == "report":
            assert self.report is not None
            store.record_report(self.watch, self.path, self.key, self.step, self.report, finished=self.at)
        elif self.kind == "skip":
            store.record_skip(self.watch, self.path, self.key, self.reason, at=self.at)
        if self.fingerprint:
            store.record_fingerprint(self.watch, self.path, self.key, self.step, self.fingerprint)


def _done(op: Callable[[State], object]) -> Callable[[State], bool]:
    """`op` as a write that says it was done."""

    def write(store: State) -> bool:
        op(store)
        return True

    return write


def _summary(record: Record) -> dict:
    """A kept report's summary, as State.recent_reports gives them (no id until it is written)."""
    report = record.report or {}
    seconds = (report.get("timings") or {}).get("total_seconds")
    where = {"id": None, "watch": record.watch, "path": record.path, "step": record.step}
    return {**where, "verdict": report.get("verdict"), "finished": record.at, "duration": seconds, **summarize(report)}


def _make_dir(state_dir: str) -> None:
    try:
        os.makedirs(state_dir, exist_ok=True)
    except FileExistsError:
        raise StateUnavailable(f"daemon.state_dir {state_dir}: not a directory") from None
    except OSError as e:
        raise StateUnavailable(f"daemon.state_dir {state_dir}: cannot create it: {e.strerror or e}") from None
    if not os.path.isdir(state_dir):
        raise StateUnavailable(f"daemon.state_dir {state_dir}: not a directory")


class DurableState:
    """The state as the daemon uses it: the methods of State it needs, none of which raises for a
    failing state directory (see the module's docstring)."""

    def __init__(
        self,
        state_dir: str,
        reports_kept: int | None = None,
        *,
        backlog: int = 100,
        retry_max: float = 10.0,
        log: Any = None,
        on_error: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.dir = os.path.abspath(state_dir)
        self.database = os.path.join(self.dir, DATABASE)
        self._reports_kept = reports_kept
        self.backlog, self.retry_max = max(1, backlog), retry_max
        self.log = log if log is not None else structlog.get_logger("ckptwatch")
        self.on_error = on_error or (lambda kind: None)
        self.clock = clock
        self._lock = threading.RLock()
        self.store: State | None = None
        self.problem: str | None = None  # why the state cannot be written now (None: it can)
        self.kind: str | None = None
        self.since = 0.0  # monotonic time the problem began
        self.delay, self.next_retry, self.next_check = RETRY_FIRST, 0.0, 0.0
        self.pending: dict[str, deque[Record]] = {}  # watch -> records not written yet, oldest first
        self.kept = 0  # records in `pending`
        self.lost = 0  # records dropped (beyond `backlog`) since the problem began
        self.written = 0  # records written by retries since the problem began
        self.baselines: dict[str, GoodCheckpoint] = {}  # watch -> baseline (memory is authoritative)
        self.published_: dict[str, GoodCheckpoint | None] = {}  # watch -> what publish_dir names
        self.unwritten_baselines: set[str] = set()
        self.unwritten_published: set[str] = set()
        self.applied: dict[int, float] = {}  # acceptances applied, not yet marked in the state
        self._retirements: dict[str, dict] = {}  # the last retirements read (kept through an outage)
        # a descriptor of the database file kept open for _check_file: closing one would drop every
        # POSIX lock this process holds on the file, SQLite's included (fcntl semantics)
        self._header_fd: int | None = None
        _make_dir(self.dir)
        with self._lock:
            self._open()

    # -- settings and health ---------------------------------------------------------------------

    @property
    def reports_kept(self) -> int | None:
        return self._reports_kept

    @reports_kept.setter
    def reports_kept(self, value: int | None) -> None:
        self._reports_kept = value
        if self.store is not None:
            self.store.reports_kept = value

    def health(self) -> StateHealth:
        return StateHealth(self.problem, self.kept)

    def writable(self) -> bool:
        return self.problem is None and self.store is not None

    # -- opening, failing, recovering ------------------------------------------------------------

    def _open(self) -> None:
        """Open the database (a corrupt one is moved aside and a new one started); on failure the
        state is degraded and a retry opens it later."""
        try:
            self.store = State(self.dir, self._reports_kept)
            self._load()
        except (sqlite3.Error, OSError) as e:
            self.store = None
            if classify(e) == "corrupt":
                self._replace_corrupt(e)
            else:
                self._failed(e, "open the database")

    def _load(self) -> None:
        """Baselines and what publish_dir names, from the database; memory wins where it has news."""
        assert self.store is not None
        for watch, good in self.store.all_last_good().items():
            if watch not in self.unwritten_baselines:
                self.baselines[watch] = good
        for watch, published in self.store.all_published().items():
            if watch not in self.unwritten_published:
                self.published_[watch] = published

    def _failed(self, e: BaseException, what: str) -> None:
        """Something could not be done: degraded. Said once, when the state stops being writable
        (while it is not, /readyz shows the latest reason; every failure is counted)."""
        kind = classify(e)
        self.on_error(kind)
        degraded = self.problem is not None
        self.kind, self.problem = kind, f"cannot {what}: {e}"
        if degraded:
            return
        now = self.clock()
        self.since, self.delay, self.next_retry = now, RETRY_FIRST, now + RETRY_FIRST
        self.lost = self.written = 0
        self.log.error(
            "state not writable",
            state_dir=self.dir,
            kind=kind,
            reason=self.problem,
            kept=self.kept,
            retry_in=round(max(0.0, self.next_retry - now), 1),
            effect="watching and verifying go on; what is not written is kept in memory "
            f"(at most {self.backlog} records per watch) and written when it can be",
        )

    def _attempt(self, what: str, op: Callable[[State], T], fallback: T) -> T:
        """op(store) now (once more on a new database if this one turns out corrupt); `fallback`
        if it cannot be done (the state is degraded then)."""
        for _ in range(2):
            if self.store is None:
                return fallback
            try:
                return op(self.store)
            except (sqlite3.Error, OSError) as e:
                if classify(e) != "corrupt":
                    self._failed(e, what)
                    return fallback
                self._replace_corrupt(e)
        return fallback

    def tick(self) -> None:
        """Each turn of the daemon's loop: while writable, check the database file's header now
        and then; while degraded, retry when the backoff allows."""
        now = self.clock()
        with self._lock:
            if self.problem is None:
                if now >= self.next_check:
                    self.next_check = now + CHECK_EVERY
                    self._check_file()
            elif now >= self.next_retry:
                self._retry(now)

    def _check_file(self) -> None:
        """SQLite serves a long-lived connection from its cache: a file overwritten under it is
        only noticed by a new connection (a restart). Look at the header ourselves."""
        try:
            head = self._read_header()
        except FileNotFoundError:
            self._replace_corrupt(sqlite3.DatabaseError(f"{self.database} was deleted"))
            return
        except OSError as e:
            self._failed(e, "read the database")
            return
        if head != SQLITE_MAGIC:
            self._replace_corrupt(sqlite3.DatabaseError("file is not a database (its header is not SQLite's)"))

    def _read_header(self) -> bytes:
        """The first bytes of the database file, read without ever closing a descriptor of the file
        SQLite has open: POSIX drops all of a process's locks on a file when any descriptor of it is
        closed, and then another process (`ckptwatch accept`, `ckptwatch retire`) closing its own
        connection takes the database for its last user, checkpoints it and deletes the -wal and
        -shm files under the daemon's connection, which from then on never sees another process's
        writes. One descriptor of the file is kept open; when the path names another file (the state
        was replaced: a new database, SQLite's connection on it), it follows that one."""
        st = os.stat(self.database)
        if self._header_fd is not None:
            kept = os.fstat(self._header_fd)
            if (kept.st_dev, kept.st_ino) != (st.st_dev, st.st_ino):
                os.close(self._header_fd)
                self._header_fd = None
        if self._header_fd is None:
            self._header_fd = os.open(self.database, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return os.pread(self._header_fd, len(SQLITE_MAGIC), 0)

    def _retry(self, now: float) -> None:
        try:
            if self.store is None:
                self.store = State(self.dir, self._reports_kept)
                self._load()
            self._probe_file()
            self.store.probe()
            self._flush()
        except (sqlite3.Error, OSError) as e:
            if classify(e) == "corrupt":
                self._replace_corrupt(e)
                return
            self._failed(e, "write")
            self.delay = min(self.delay * 2, self.retry_max)
            self.next_retry = now + self.delay
            return
        self.log.info(
            "state writable again",
            state_dir=self.dir,
            written=self.written,
            lost=self.lost,
            seconds=round(now - self.since, 1),
        )
        self.problem = self.kind = None
        self.delay, self.next_check = RETRY_FIRST, now + CHECK_EVERY

    def _probe_file(self) -> None:
        """A file written into the state dir and removed: OSError if the dir cannot take one."""
        probe = os.path.join(self.dir, ".write-probe")
        try:
            with open(probe, "wb") as f:
                f.write(b"ckptwatch state write probe\n")
        finally:
            with contextlib.suppress(OSError):
                os.remove(probe)

    def _flush(self) -> None:
        """Write what was kept, oldest first; what is written leaves memory at once (a failure
        part way keeps the rest)."""
        store = self.store
        assert store is not None
        for records in self.pending.values():
            while records:
                records[0].write(store)
                records.popleft()
                self.kept -= 1
                self.written += 1
        for watch in sorted(self.unwritten_baselines):
            store.set_last_good(watch, self.baselines[watch])
            self.unwritten_baselines.discard(watch)
        for watch in sorted(self.unwritten_published):
            store.set_published(watch, self.published_.get(watch))
            self.unwritten_published.discard(watch)
        for acceptance_id, at in list(self.applied.items()):
            store.mark_applied(acceptance_id, at)
            del self.applied[acceptance_id]

    def _replace_corrupt(self, error: BaseException) -> None:
        """Move the corrupt database aside and start a new one (see the module's docstring)."""
        self.on_error("corrupt")
        old, self.store = self.store, None
        contents: dict[str, int] | None = None
        salvage: str | None = None
        target = self._aside_name()
        copied = False
        if old is not None:
            with contextlib.suppress(sqlite3.Error, OSError):
                contents = old.contents()
            salvage = self._salvage(old)
            # the files as they were found: closing the connection checkpoints its WAL into the
            # database file (which may rewrite the very pages that were damaged)
            copied = target is not None and self._copy_files(target)
            with contextlib.suppress(sqlite3.Error):
                old.close()
        try:
            self._set_aside(target, copied)
            if salvage is not None:
                os.replace(salvage, self.database)
        except OSError as e:
            self._failed(e, "move the corrupt database aside")
            return
        if salvage is not None:
            lost = "nothing: what the daemon's connection still read was copied into the new database"
        elif contents is not None:
            lost = (
                f"{contents['reports']} reports, {contents['skipped']} skip records, "
                f"{contents['fingerprints']} fingerprint records, {contents['acceptances']} acceptances"
            )
        else:
            lost = (
                "everything it held (unreadable): reports, skip records, fingerprint records, "
                "acceptances; checkpoints verified before are verified again"
            )
        self.log.error(
            "state database corrupt",
            database=self.database,
            moved_to=target,
            error=str(error),
            lost=lost,
            kept_from_memory=sorted(self.baselines),  # baselines written to the new database
            pending=self.kept,
        )
        self.unwritten_baselines |= set(self.baselines)
        self.unwritten_published |= set(self.published_)
        try:
            self.store = State(self.dir, self._reports_kept)
            self._load()
            if self.problem is None:
                self._flush()
        except (sqlite3.Error, OSError) as e:
            self._failed(e, "start a new database")

    def _salvage(self, old: State) -> str | None:
        """A checked copy of what the old connection still reads (None: it cannot be made)."""
        salvage = self.database + ".salvage"
        try:
            with contextlib.suppress(FileNotFoundError):
                os.remove(salvage)
            old.copy_to(salvage)
            return salvage
        except (sqlite3.Error, OSError):
            with contextlib.suppress(OSError):
                os.remove(salvage)
            return None

    def _aside_name(self) -> str | None:
        """state.sqlite3.corrupt-<UTC time>[-N] in the state dir; None if the database is gone."""
        if not os.path.exists(self.database):
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target, n = f"{self.database}.corrupt-{stamp}", 1
        while os.path.exists(target):
            target, n = f"{self.database}.corrupt-{stamp}-{n}", n + 1
        return target

    def _copy_files(self, target: str) -> bool:
        """Copy the database and its WAL to `target` as they are now (False: could not)."""
        try:
            shutil.copyfile(self.database, target)
            if os.path.exists(self.database + "-wal"):
                shutil.copyfile(self.database + "-wal", target + "-wal")
            return True
        except OSError:
            for leftover in (target, target + "-wal"):
                with contextlib.suppress(OSError):
                    os.remove(leftover)
            return False

    def _set_aside(self, target: str | None, copied: bool) -> None:
        """The database's files leave its name: removed when `target` holds a copy, else renamed
        to `target` (OSError if they cannot)."""
        for suffix in ("", "-wal", "-shm"):
            try:
                if copied or target is None or suffix == "-shm":
                    os.remove(self.database + suffix)
                else:
                    os.rename(self.database + suffix, target + suffix)
            except FileNotFoundError:
                pass

    def close(self) -> None:
        """At shutdown: one last try to write what was kept; what is still not written is logged."""
        with self._lock:
            if self.problem is not None:
                self.next_retry = 0.0
                self._retry(self.clock())
            if self.problem is not None:
                self.log.error(
                    "state not written",
                    state_dir=self.dir,
                    reason=self.problem,
                    lost=self.kept + len(self.unwritten_baselines) + len(self.unwritten_published),
                )
            if self.store is not None:
                with contextlib.suppress(sqlite3.Error):
                    self.store.close()
                self.store = None
            if self._header_fd is not None:
                with contextlib.suppress(OSError):
                    os.close(self._header_fd)
                self._header_fd = None

    # -- writes ----------------------------------------------------------------------------------

    def _keep(self, record: Record) -> None:
        records = self.pending.setdefault(record.watch, deque())
        if len(records) >= self.backlog:
            records.popleft()
            self.kept -= 1
            self.lost += 1
        records.append(record)
        self.kept += 1

    def _write(self, record: Record) -> None:
        with self._lock:
            if self.writable() and self._attempt(f"record a {record.kind}", _done(record.write), False):
                return
            self._keep(record)

    def record_report(self, watch: str, path: str, key: str, step: int | None, report: dict) -> None:
        self._write(Record("report", watch, path, key, step, time.time(), report=report))

    def record_skip(self, watch: str, path: str, key: str, reason: str) -> None:
        self._write(Record("skip", watch, path, key, None, time.time(), reason=reason))

    def record_fingerprint(self, watch: str, path: str, key: str, step: int | None, fingerprint: str) -> None:
        with self._lock:
            records = self.pending.get(watch)
            if records and records[-1].key == key and records[-1].kind == "report":
                records[-1].fingerprint = fingerprint  # kept with its report: one record
                return
        self._write(Record("fingerprint", watch, path, key, step, time.time(), fingerprint=fingerprint))

    def set_last_good(self, watch: str, good: GoodCheckpoint) -> None:
        with self._lock:
            self.baselines[watch] = good
            self.unwritten_baselines.add(watch)
            write = _done(lambda s: s.set_last_good(watch, good))
            if self.writable() and self._attempt("record a baseline", write, False):
                self.unwritten_baselines.discard(watch)

    def set_published(self, watch: str, good: GoodCheckpoint | None) -> None:
        with self._lock:
            self.published_[watch] = good
            self.unwritten_published.add(watch)
            write = _done(lambda s: s.set_published(watch, good))
            if self.writable() and self._attempt("record what is published", write, False):
                self.unwritten_published.discard(watch)

    def apply_acceptance(self, acceptance: Acceptance) -> Acceptance:
        """The accepted checkpoint is the watch's baseline; the acceptance is marked applied (in
        memory until it can be written: it is applied once)."""
        self.set_last_good(acceptance.watch, acceptance.checkpoint)
        at = time.time()
        with self._lock:
            self.applied[acceptance.id] = at
            mark = _done(lambda s: s.mark_applied(acceptance.id, at))
            if self.writable() and self._attempt("mark an acceptance applied", mark, False):
                del self.applied[acceptance.id]
        return replace(acceptance, applied=at)

    # -- reads -----------------------------------------------------------------------------------

    def _pending_reports(self, watch: str | None = None) -> list[Record]:
        return [
            r
            for w, records in self.pending.items()
            if watch is None or w == watch
            for r in records
            if r.kind == "report"
        ]

    def seen(self, watch: str, key: str) -> bool:
        with self._lock:
            if any(r.key == key and r.kind in ("report", "skip") for r in self.pending.get(watch, ())):
                return True
            return self._attempt("read the state", lambda s: s.seen(watch, key), False)

    def last_good(self, watch: str) -> GoodCheckpoint | None:
        return self.baselines.get(watch)

    def published(self, watch: str) -> GoodCheckpoint | None:
        return self.published_.get(watch)

    def latest(self) -> dict[str, dict]:
        with self._lock:
            none: dict[str, dict] = {}
            found = self._attempt("read the state", lambda s: s.latest(), none)
            for r in self._pending_reports():
                found[r.watch] = {"report": r.report, "finished": r.at}
            return found

    def last_pass_times(self) -> dict[str, float]:
        with self._lock:
            none: dict[str, float] = {}
            found = self._attempt("read the state", lambda s: s.last_pass_times(), none)
            for r in self._pending_reports():
                if r.report is not None and r.report.get("verdict") in GOOD:
                    found[r.watch] = max(found.get(r.watch, 0.0), r.at)
            return found

    def last_acceptances(self) -> dict[str, Acceptance]:
        with self._lock:
            none: dict[str, Acceptance] = {}
            return self._attempt("read the acceptances", lambda s: s.last_acceptances(), none)

    def retirements(self) -> dict[str, dict]:
        """State.retirements; while the state cannot be read, the last ones read (a watch retired
        by command stays retired through a state outage)."""
        with self._lock:
            self._retirements = self._attempt("read the retirements", lambda s: s.retirements(), self._retirements)
            return dict(self._retirements)

    def pending_acceptances(self) -> list[Acceptance]:
        with self._lock:
            none: list[Acceptance] = []
            found = self._attempt("read the acceptances", lambda s: s.pending_acceptances(), none)
            return [a for a in found if a.id not in self.applied]

    def sweep_fingerprints(self) -> int:
        """State.sweep_fingerprints, only while the state can be read (else nothing is removed)."""
        with self._lock:
            return self._attempt("read the state", lambda s: s.sweep_fingerprints(), 0)

    def fingerprint_path(self, watch: str, checkpoint_path: str) -> str:
        """Where the worker writes the fingerprint (its folder made here if it can be)."""
        path = fingerprint_file(self.dir, watch, checkpoint_path)
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
        except OSError as e:
            with self._lock:
                self._failed(e, "create the fingerprints folder")
        return path

    def recent_reports(self, limit: int = 50, watch: str | None = None, verdict: str | None = None) -> list[dict]:
        """Summaries, newest first: what is kept in memory (no `id` yet: None), then the database's
        (the HTTP thread calls this: a failure here changes nothing, it only shows less)."""
        with self._lock:
            kept = [
                _summary(r)
                for r in sorted(self._pending_reports(watch), key=lambda r: r.at, reverse=True)
                if verdict is None or (r.report or {}).get("verdict") == verdict
            ][:limit]
            stored: list[dict] = []
            if self.store is not None:
                with contextlib.suppress(sqlite3.Error, OSError):
                    stored = self.store.recent_reports(limit, watch, verdict)
        return (kept + stored)[:limit]

    def report(self, report_id: int) -> dict | None:
        """State.report from the HTTP thread (None when the database cannot answer)."""
        with self._lock:
            if self.store is None:
                return None
            with contextlib.suppress(sqlite3.Error, OSError, ValueError):
                return self.store.report(report_id)
        return None


__all__ = ["DurableState", "Record", "classify"]
