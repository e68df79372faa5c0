"""Baselines in the state: what "previous" is for each watch, every fingerprint an operator may
accept later, what publish_dir names, and the acceptances (`ckptwatch accept`).

    last_good / set_last_good          the watch's baseline: the last checkpoint that passed
                                       (judged against the baseline before it), or an accepted one
    record_fingerprint                 every checkpoint that passed integrity keeps its fingerprint
                                       while its report is kept (reports_kept); a baseline's or a
                                       pending acceptance's stays longer
    published / set_published          the checkpoint publish_dir names
    accept                             `ckptwatch accept`, from another process: one short insert
    pending_acceptances, apply_acceptance, last_acceptances   the daemon's side, at each poll

`Baselines` is a mixin of `ckptwatch.daemon.state.State`: the same connection and lock.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, replace

from ckptwatch.errors import UsageError

# baselines: every fingerprint with its report's (watch, key), what publish_dir names, acceptances
BASELINE_SCHEMA = """
CREATE TABLE IF NOT EXISTS fingerprints (
    watch TEXT NOT NULL,
    key TEXT NOT NULL,
    path TEXT NOT NULL,
    step INTEGER,
    fingerprint TEXT NOT NULL,
    PRIMARY KEY (watch, key)
);
CREATE TABLE IF NOT EXISTS published (
    watch TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    step INTEGER,
    key TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS acceptances (
    id INTEGER PRIMARY KEY,
    watch TEXT NOT NULL,
    path TEXT NOT NULL,
    key TEXT NOT NULL,
    step INTEGER,
    fingerprint TEXT NOT NULL,
    accepted_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    applied REAL
);
CREATE INDEX IF NOT EXISTS acceptances_by_watch ON acceptances (watch, id);
"""


@dataclass(frozen=True)
class GoodCheckpoint:
    path: str
    step: int | None
    key: str
    fingerprint: str | None  # file in state_dir standing in for the checkpoint once it is gone


@dataclass(frozen=True)
class Acceptance:
    """An operator's `ckptwatch accept`: `checkpoint` is the watch's baseline from now on."""

    id: int
    watch: str
    checkpoint: GoodCheckpoint
    by: str
    reason: str
    at: float  # unix time it was recorded
    applied: float | None = None  # unix time the daemon applied it (None: not yet)


class Baselines:
    """The baseline tables; `State` provides the connection, its lock and its directory."""

    _db: sqlite3.Connection
    _lock: threading.Lock
    dir: str

    def last_good(self, watch: str) -> GoodCheckpoint | None:
        with self._lock:
            row = self._db.execute(
                "SELECT path, step, key, fingerprint FROM last_good WHERE watch=?", (watch,)
            ).fetchone()
        return GoodCheckpoint(*row) if row else None

    def set_last_good(self, watch: str, good: GoodCheckpoint) -> None:
        """`good` is the watch's baseline from now on. The former baseline's fingerprint stays
        while its report does (it may be accepted again); one without a report goes."""
        old = self.last_good(watch)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO last_good (watch, path, step, key, fingerprint) VALUES (?, ?, ?, ?, ?)",
                (watch, good.path, good.step, good.key, good.fingerprint),
            )
            if old and old.fingerprint and old.fingerprint != good.fingerprint:
                known = self._db.execute(
                    "SELECT 1 FROM fingerprints WHERE fingerprint=?", (old.fingerprint,)
                ).fetchone()
                if known:
                    self._prune_fingerprints()
                else:  # a state written before fingerprints were kept with their reports
                    with contextlib.suppress(OSError):
                        os.remove(old.fingerprint)

    def record_fingerprint(self, watch: str, path: str, key: str, step: int | None, fingerprint: str) -> None:
        """The fingerprint the worker wrote for a verified checkpoint (it passed integrity)."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO fingerprints (watch, key, path, step, fingerprint) VALUES (?, ?, ?, ?, ?)",
                (watch, key, path, step, fingerprint),
            )

    def fingerprints(self, watch: str) -> dict[str, str]:
        """key -> fingerprint file of the watch's checkpoints that have one."""
        with self._lock:
            rows = self._db.execute("SELECT key, fingerprint FROM fingerprints WHERE watch=?", (watch,)).fetchall()
        return dict(rows)

    def _prune_fingerprints(self) -> None:
        """Fingerprints (rows and files) whose report is gone and that are neither a baseline nor
        a pending acceptance's: no longer anything an operator can accept (the lock is held)."""
        rows = self._db.execute(
            "SELECT f.watch, f.key, f.fingerprint FROM fingerprints f"
            " WHERE NOT EXISTS (SELECT 1 FROM reports r WHERE r.watch = f.watch AND r.key = f.key)"
            " AND f.fingerprint NOT IN (SELECT fingerprint FROM last_good WHERE fingerprint IS NOT NULL)"
            " AND f.fingerprint NOT IN (SELECT fingerprint FROM acceptances WHERE applied IS NULL)"
        ).fetchall()
        for watch, key, fingerprint in rows:
            self._db.execute("DELETE FROM fingerprints WHERE watch=? AND key=?", (watch, key))
            with contextlib.suppress(OSError):
                os.remove(fingerprint)

    def sweep_fingerprints(self) -> int:
        """Remove the files under fingerprints/ that nothing refers to (written by a worker for a job
        that never ended, or by an older version). Call it before any worker runs. Returns how many."""
        with self._lock:
            rows = self._db.execute(
                "SELECT fingerprint FROM fingerprints UNION SELECT fingerprint FROM last_good"
                " UNION SELECT fingerprint FROM acceptances"
            ).fetchall()
        known = {os.path.realpath(f) for (f,) in rows if f}
        removed = 0
        for folder, _, files in os.walk(os.path.join(self.dir, "fingerprints")):
            for name in files:
                path = os.path.join(folder, name)
                if name.endswith((".fp", ".fp.json.gz")) and os.path.realpath(path) not in known:  # v2, v1
                    with contextlib.suppress(OSError):
                        os.remove(path)
                        removed += 1
        return removed

    def published(self, watch: str) -> GoodCheckpoint | None:
        """The checkpoint the watch's publish_dir names (None: nothing published, or the chain restarted)."""
        with self._lock:
            row = self._db.execute("SELECT path, step, key FROM published WHERE watch=?", (watch,)).fetchone()
        return GoodCheckpoint(row[0], row[1], row[2], None) if row else None

    def set_published(self, watch: str, good: GoodCheckpoint | None) -> None:
        with self._lock:
            if good is None:
                self._db.execute("DELETE FROM published WHERE watch=?", (watch,))
            else:
                self._db.execute(
                    "INSERT OR REPLACE INTO published (watch, path, step, key, at) VALUES (?, ?, ?, ?, ?)",
                    (watch, good.path, good.step, good.key, time.time()),
                )

    def accept(self, watch: str, checkpoint: str | None, reason: str, by: str) -> Acceptance:
        """Record that `checkpoint` (a path, or a name like `ckpt-9`; None: the watch's newest
        verified checkpoint) is the watch's new baseline. UsageError (one line) when the watch has
        no verified checkpoint here, the checkpoint was never verified, it failed integrity (no
        fingerprint) or `reason` is empty. The daemon applies it at its next poll."""
        reason = " ".join(reason.split())
        if not reason:
            raise UsageError("--reason is empty: say why this checkpoint is the new baseline")
        with self._lock:
            rows = self._db.execute(
                "SELECT r.path, r.key, r.step, r.verdict, COALESCE(f.fingerprint, g.fingerprint) FROM reports r"
                " LEFT JOIN fingerprints f ON f.watch = r.watch AND f.key = r.key"
                " LEFT JOIN last_good g ON g.watch = r.watch AND g.key = r.key"
                " WHERE r.watch=? ORDER BY r.id DESC",
                (watch,),
            ).fetchall()
        if not rows:
            raise UsageError(f"unknown watch {watch!r}: no verified checkpoint of it in the state in {self.dir}")
        row = rows[0] if checkpoint is None else _find_checkpoint(rows, checkpoint)
        if row is None:
            raise UsageError(f"{checkpoint}: no verification record of it in watch {watch!r}")
        path, key, step, verdict, fingerprint = row
        if not fingerprint:
            raise UsageError(
                f"{path}: verdict {verdict} and no fingerprint (integrity failed or it could not be read): "
                "it cannot be a baseline"
            )
        if not os.path.isfile(fingerprint):
            raise UsageError(f"{path}: its fingerprint {fingerprint} is gone: it cannot be a baseline")
        at = time.time()
        with self._lock:
            cursor = self._db.execute(
                "INSERT INTO acceptances (watch, path, key, step, fingerprint, accepted_by, reason, at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (watch, path, key, step, fingerprint, by, reason, at),
            )
        assert cursor.lastrowid is not None
        return Acceptance(cursor.lastrowid, watch, GoodCheckpoint(path, step, key, fingerprint), by, reason, at)

    _ACCEPTANCE = "SELECT id, watch, path, step, key, fingerprint, accepted_by, reason, at, applied FROM acceptances"

    @staticmethod
    def _acceptance(row: tuple) -> Acceptance:
        i, watch, path, step, key, fingerprint, by, reason, at, applied = row
        return Acceptance(i, watch, GoodCheckpoint(path, step, key, fingerprint), by, reason, at, applied)

    def pending_acceptances(self) -> list[Acceptance]:
        """Acceptances the daemon has not applied yet, oldest first."""
        with self._lock:
            rows = self._db.execute(self._ACCEPTANCE + " WHERE applied IS NULL ORDER BY id").fetchall()
        return [self._acceptance(r) for r in rows]

    def apply_acceptance(self, acceptance: Acceptance) -> Acceptance:
        """Make the accepted checkpoint the watch's baseline; the acceptance is applied."""
        self.set_last_good(acceptance.watch, acceptance.checkpoint)
        applied = time.time()
        self.mark_applied(acceptance.id, applied)
        return replace(acceptance, applied=applied)

    def mark_applied(self, acceptance_id: int, at: float) -> None:
        with self._lock:
            self._db.execute("UPDATE acceptances SET applied=? WHERE id=?", (at, acceptance_id))

    def all_last_good(self) -> dict[str, GoodCheckpoint]:
        """Every watch's baseline."""
        with self._lock:
            rows = self._db.execute("SELECT watch, path, step, key, fingerprint FROM last_good").fetchall()
        return {w: GoodCheckpoint(p, s, k, f) for w, p, s, k, f in rows}

    def all_published(self) -> dict[str, GoodCheckpoint]:
        """What every watch's publish_dir names."""
        with self._lock:
            rows = self._db.execute("SELECT watch, path, step, key FROM published").fetchall()
        return {w: GoodCheckpoint(p, s, k, None) for w, p, s, k in rows}

    def last_acceptances(self) -> dict[str, Acceptance]:
        """The newest applied acceptance of each watch."""
        with self._lock:
            newest = "SELECT MAX(id) FROM acceptances WHERE applied IS NOT NULL GROUP BY watch"
            rows = self._db.execute(f"{self._ACCEPTANCE} WHERE id IN ({newest})").fetchall()
        return {a.watch: a for a in map(self._acceptance, rows)}


def _find_checkpoint(rows: list[tuple], checkpoint: str) -> tuple | None:
    """The newest of `rows` (path first) that is `checkpoint`: its path as given or made
    absolute (an `.index` file names its bundle), else a path ending in it (`ckpt-9`, `run/ckpt-9`)."""
    wanted = checkpoint.rstrip("/")
    wanted = wanted[: -len(".index")] if wanted.endswith(".index") else wanted
    exact = {wanted, os.path.abspath(wanted)}
    for row in rows:
        if row[0].rstrip("/") in exact:
            return row
    for row in rows:
        if row[0].rstrip("/").endswith("/" + wanted.lstrip("/")):
            return row
    return None
