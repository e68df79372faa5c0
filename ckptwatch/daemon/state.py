"""Persistent state in `state_dir` (SQLite, WAL): every report, what was skipped,
each watch's baseline (the last checkpoint that passed, or the one an operator accepted),
what was published, the acceptances, and the fingerprints that stand in for checkpoints
once they are deleted. Nothing here ever touches a watched directory.

One connection, guarded by a lock: the main loop writes, the HTTP thread reads. `ckptwatch
accept` writes an acceptance from another process (WAL, one short transaction); the daemon
applies it at its next poll (`pending_acceptances`, `apply_acceptance`).

Fingerprints: every checkpoint that passed integrity has one (table `fingerprints`), so an
operator can accept any of them later, even after CheckpointManager deleted its files. A
fingerprint goes (row and file) with its report when reports_kept prunes it, unless it is a
watch's baseline or a pending acceptance's.
"""

from __future__ import annotations

import json
import os
import re
import sqlite3
import threading
import time

from ckptwatch.daemon.baselines import BASELINE_SCHEMA, Acceptance, Baselines, GoodCheckpoint
from ckptwatch.daemon.summary import summarize
from ckptwatch.errors import CkptwatchError

DATABASE = "state.sqlite3"

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
    summary TEXT,
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
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT
);
CREATE TABLE IF NOT EXISTS retirements (
    watch TEXT PRIMARY KEY,
    retired_by TEXT NOT NULL,
    reason TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS last_good (
    watch TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    step INTEGER,
    key TEXT NOT NULL,
    fingerprint TEXT
);
"""


class State(Baselines):
    """`reports_kept`: how many reports (and skip records) are kept; each insert prunes the
    oldest beyond it (None: all kept). SQLite reuses the freed pages: the file stops growing."""

    def __init__(self, state_dir: str, reports_kept: int | None = None):
        self.dir = os.path.abspath(state_dir)
        self.reports_kept = reports_kept
        os.makedirs(os.path.join(self.dir, "fingerprints"), exist_ok=True)
        self._lock = threading.Lock()
        self.database = os.path.join(self.dir, DATABASE)
        db = sqlite3.connect(self.database, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(SCHEMA)
            db.executescript(BASELINE_SCHEMA)
            if "summary" not in {row[1] for row in db.execute("PRAGMA table_info(reports)")}:
                db.execute("ALTER TABLE reports ADD COLUMN summary TEXT")  # a state from before summaries
        except BaseException:
            db.close()  # a corrupt file, a full disk: nothing stays open on it
            raise
        self._db = db

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def probe(self) -> None:
        """Write one row (sqlite3.Error if the database cannot be written now)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('probe', ?)", (str(time.time()),))

    def copy_to(self, path: str) -> None:
        """A consistent copy of the database as this connection sees it (VACUUM INTO), checked."""
        with self._lock:
            self._db.execute("VACUUM INTO ?", (path,))
        copy = sqlite3.connect(path)
        try:
            (result,) = copy.execute("PRAGMA quick_check").fetchone()
        finally:
            copy.close()
        if result != "ok":
            raise sqlite3.DatabaseError(f"the copy fails its check: {result}")

    def contents(self) -> dict[str, int]:
        """How many rows each table holds (what a lost database took with it)."""
        with self._lock:
            return {
                t: self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                for t in ("reports", "skipped", "fingerprints", "acceptances")
            }

    # -- what was done -------------------------------------------------------------------

    def seen(self, watch: str, key: str) -> bool:
        """Verified or skipped already: never verified again."""
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM reports WHERE watch=? AND key=? UNION SELECT 1 FROM skipped WHERE watch=? AND key=?",
                (watch, key, watch, key),
            ).fetchone()
        return row is not None

    def record_report(
        self, watch: str, path: str, key: str, step: int | None, report: dict, finished: float | None = None
    ) -> None:
        """`finished`: when it was verified (unix time; default now)."""
        duration = (report.get("timings") or {}).get("total_seconds")
        finished = time.time() if finished is None else finished
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO reports (watch, path, key, step, verdict, finished, duration, report, summary)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    watch,
                    path,
                    key,
                    step,
                    report["verdict"],
                    finished,
                    duration,
                    json.dumps(report),
                    json.dumps(summarize(report)),
                ),
            )
            if self._prune("reports", self.reports_kept):
                self._prune_fingerprints()

    def record_skip(self, watch: str, path: str, key: str, reason: str, at: float | None = None) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO skipped (watch, path, key, reason, at) VALUES (?, ?, ?, ?, ?)",
                (watch, path, key, reason, time.time() if at is None else at),
            )
            self._prune("skipped", self.reports_kept)

    def recent_reports(self, limit: int = 50, watch: str | None = None, verdict: str | None = None) -> list[dict]:
        """Summaries (summary.summarize: no tensors, bounded findings) of the newest reports, newest
        first, of one watch and one verdict if given; each with its `id` for `report(id)`."""
        query = "SELECT id, watch, path, step, verdict, finished, duration, summary FROM reports"
        where, args = [], []
        if watch:
            where.append("watch=?")
            args.append(watch)
        if verdict:
            where.append("verdict=?")
            args.append(verdict)
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY finished DESC, id DESC LIMIT ?"
        with self._lock:
            rows = self._db.execute(query, (*args, limit)).fetchall()
            missing = [r[0] for r in rows if r[7] is None]  # written before summaries were stored
            made = {}
            for rid in missing:
                (text,) = self._db.execute("SELECT report FROM reports WHERE id=?", (rid,)).fetchone()
                made[rid] = summarize(json.loads(text))
        return [
            {
                "id": i,
                "watch": w,
                "path": p,
                "step": s,
                "verdict": v,
                "finished": f,
                "duration": d,
                **(made[i] if summary is None else json.loads(summary)),
            }
            for i, w, p, s, v, f, d, summary in rows
        ]

    def report(self, report_id: int) -> dict | None:
        """One stored verification with its full report ({id, watch, path, step, verdict,
        finished, duration, report}), or None."""
        with self._lock:
            row = self._db.execute(
                "SELECT id, watch, path, step, verdict, finished, duration, report FROM reports WHERE id=?",
                (report_id,),
            ).fetchone()
        if row is None:
            return None
        i, w, p, s, v, f, d, text = row
        return {"id": i, "watch": w, "path": p, "step": s, "verdict": v, "finished": f, "duration": d,
                "report": json.loads(text)}  # fmt: skip

    # -- retired watches (`ckptwatch retire`, from another process like `accept`) -------------

    def retire(self, watch: str, by: str, reason: str, at: float | None = None) -> None:
        """Record that `watch` is a finished run: the daemon stops watching it and exporting its series."""
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO retirements (watch, retired_by, reason, at) VALUES (?, ?, ?, ?)",
                (watch, by, reason, time.time() if at is None else at),
            )

    def unretire(self, watch: str) -> bool:
        """Forget a retirement; True if there was one."""
        with self._lock:
            return self._db.execute("DELETE FROM retirements WHERE watch=?", (watch,)).rowcount > 0

    def retirements(self) -> dict[str, dict]:
        """watch -> {by, reason, at} of every watch retired by command."""
        with self._lock:
            rows = self._db.execute("SELECT watch, retired_by, reason, at FROM retirements").fetchall()
        return {w: {"by": b, "reason": r, "at": a} for w, b, r, a in rows}

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
            self._prune_fingerprints()

    def _prune(self, table: str, keep: int | None) -> int:
        """Delete the rows of `table` older than its `keep` newest (by id: a walk down the
        primary key from the newest row, then a range delete; the lock is held). Returns how
        many went."""
        if keep is None:
            return 0
        cursor = self._db.execute(
            f"DELETE FROM {table} WHERE id < (SELECT id FROM {table} ORDER BY id DESC LIMIT 1 OFFSET ?)",
            (max(keep, 1) - 1,),
        )
        return max(cursor.rowcount, 0)

    def fingerprint_path(self, watch: str, checkpoint_path: str) -> str:
        """Where the worker writes the fingerprint of a checkpoint of this watch."""
        path = fingerprint_file(self.dir, watch, checkpoint_path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return path


def fingerprint_file(state_dir: str, watch: str, checkpoint_path: str) -> str:
    """A new name for the fingerprint of a checkpoint of `watch` under `state_dir`/fingerprints."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", os.path.basename(checkpoint_path.rstrip("/")))
    folder = os.path.join(state_dir, "fingerprints", re.sub(r"[^A-Za-z0-9_.-]", "_", watch))
    return os.path.join(folder, f"{safe}.{time.time_ns()}.fp")  # binary (v3); older v2 and .fp.json.gz still read


def open_existing(state_dir: str) -> State:
    """The daemon's state in `state_dir`, for a command run beside it (`ckptwatch accept`);
    CkptwatchError if there is none."""
    if not os.path.isfile(os.path.join(state_dir, DATABASE)):
        raise CkptwatchError(f"no ckptwatch state in {state_dir} (state.sqlite3 not found)")
    try:
        return State(state_dir)
    except (OSError, sqlite3.Error) as e:
        raise CkptwatchError(f"cannot open the state in {state_dir}: {e}") from None


__all__ = ["Acceptance", "GoodCheckpoint", "State", "open_existing"]
