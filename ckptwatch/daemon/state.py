"""Persistent state in `state_dir` (SQLite, WAL): every report, what was skipped,
each watch's last good checkpoint and the fingerprints that stand in for
checkpoints once they are deleted. Nothing here ever touches a watched directory.

One connection, guarded by a lock: the main loop writes, the HTTP thread reads.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import sqlite3
import threading
import time
from dataclasses import dataclass

SCHEMA = """
CREATE TABLE IF NOT EXISTS reports (
    id INTEGER PRIMARY KEY,
    watch TEXT NOT NULL,
    path TEXT NOT NULL,
    key TEXT NOT NULL,
    step INTEGER,
    verdict TEXT NOT NULL,
    finished REAL NOT NULL,
    duration REAL,
    report TEXT NOT NULL,
    UNIQUE (watch, key)
);
CREATE INDEX IF NOT EXISTS reports_by_watch ON reports (watch, finished);
CREATE TABLE IF NOT EXISTS skipped (
    id INTEGER PRIMARY KEY,
    watch TEXT NOT NULL,
    path TEXT NOT NULL,
    key TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL,
    UNIQUE (watch, key)
);
CREATE TABLE IF NOT EXISTS last_good (
    watch TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    step INTEGER,
    key TEXT NOT NULL,
    fingerprint TEXT
);
"""


@dataclass(frozen=True)
class GoodCheckpoint:
    path: str
    step: int | None
    key: str
    fingerprint: str | None  # file in state_dir standing in for the checkpoint once it is gone


class State:
    """`reports_kept`: how many reports (and skip records) are kept; each insert prunes the
    oldest beyond it (None: all kept). SQLite reuses the freed pages: the file stops growing."""

    def __init__(self, state_dir: str, reports_kept: int | None = None):
        self.dir = os.path.abspath(state_dir)
        self.reports_kept = reports_kept
        os.makedirs(os.path.join(self.dir, "fingerprints"), exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(
            os.path.join(self.dir, "state.sqlite3"), check_same_thread=False, isolation_level=None
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    # -- what was done -------------------------------------------------------------------

    def seen(self, watch: str, key: str) -> bool:
        """Verified or skipped already: never verified again."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM reports WHERE watch=? AND key=? UNION SELECT 1 FROM skipped WHERE watch=? AND key=?",
                (watch, key, watch, key),
            ).fetchone()
        return row is not None

    def record_report(self, watch: str, path: str, key: str, step: int | None, report: dict) -> None:
        duration = (report.get("timings") or {}).get("total_seconds")
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO reports (watch, path, key, step, verdict, finished, duration, report)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (watch, path, key, step, report["verdict"], time.time(), duration, json.dumps(report)),
            )
            self._prune("reports", self.reports_kept)

    def record_skip(self, watch: str, path: str, key: str, reason: str) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO skipped (watch, path, key, reason, at) VALUES (?, ?, ?, ?, ?)",
                (watch, path, key, reason, time.time()),
            )
            self._prune("skipped", self.reports_kept)

    def recent_reports(self, limit: int = 50, watch: str | None = None) -> list[dict]:
        query = "SELECT watch, path, step, verdict, finished, report FROM reports"
        args: tuple = ()
        if watch:
            query += " WHERE watch=?"
            args = (watch,)
        query += " ORDER BY finished DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
        return [
            {"watch": w, "path": p, "step": s, "verdict": v, "finished": f, "report": json.loads(r)}
            for w, p, s, v, f, r in rows
        ]

    def latest(self) -> dict[str, dict]:
        """The newest report of each watch (to restore the metrics after a restart)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT r.watch, r.report, r.finished FROM reports r"
                " JOIN (SELECT watch, MAX(id) AS id FROM reports GROUP BY watch) m ON r.id = m.id"
            ).fetchall()
        return {w: {"report": json.loads(r), "finished": f} for w, r, f in rows}

    def last_pass_times(self) -> dict[str, float]:
        """When each watch's newest report with verdict pass or warn was recorded (restores the metric)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT watch, MAX(finished) FROM reports WHERE verdict IN ('pass', 'warn') GROUP BY watch"
            ).fetchall()
        return dict(rows)

    def counts(self) -> dict[tuple[str, str], int]:
        with self._lock:
            rows = self._db.execute("SELECT watch, verdict, COUNT(*) FROM reports GROUP BY watch, verdict").fetchall()
        return {(w, v): n for w, v, n in rows}

    def prune(self, keep: int) -> None:
        """Keep the `keep` newest reports and skip records."""
        with self._lock:
            self._prune("reports", keep)
            self._prune("skipped", keep)

    def _prune(self, table: str, keep: int | None) -> None:
        """Delete the rows of `table` older than its `keep` newest (by id: a walk down the
        primary key from the newest row, then a range delete; the lock is held)."""
        if keep is None:
            return
        self._db.execute(
            f"DELETE FROM {table} WHERE id < (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (max(keep, 1) - 1,),
        )

    # -- previous ------------------------------------------------------------------------

    def last_good(self, watch: str) -> GoodCheckpoint | None:
        with self._lock:
            row = self._db.execute(
                "SELECT path, step, key, fingerprint FROM last_good WHERE watch=?", (watch,)
            ).fetchone()
        return GoodCheckpoint(*row) if row else None

    def set_last_good(self, watch: str, good: GoodCheckpoint) -> None:
        old = self.last_good(watch)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO last_good (watch, path, step, key, fingerprint) VALUES (?, ?, ?, ?, ?)",
                (watch, good.path, good.step, good.key, good.fingerprint),
            )
        if old and old.fingerprint and old.fingerprint != good.fingerprint:
            with contextlib.suppress(OSError):
                os.remove(old.fingerprint)  # only the newest good one is ever "previous"

    def fingerprint_path(self, watch: str, checkpoint_path: str) -> str:
        """Where the worker writes the fingerprint of a checkpoint of this watch."""
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(checkpoint_path.rstrip("/")))
        folder = os.path.join(self.dir, "fingerprints", re.sub(r"[^A-Za-z0-9_.-]", "_", watch))
        os.makedirs(folder, exist_ok=True)
        return os.path.join(folder, f"{safe}.{time.time_ns()}.fp.json.gz")
