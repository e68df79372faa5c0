"""State: reports_kept is applied on insert; SQLite reuses the freed pages."""

from __future__ import annotations

import os

from ckptwatch.daemon.state import State

KEEP = 50


def a_report(i: int) -> dict:
    # ~8 KB, like a small model's report
    tensors = [{"name": f"layer{j}/kernel", "stats": {"mean": i * 0.001 + j}} for j in range(120)]
    return {"verdict": "pass", "checkpoint": {"path": f"/ckpt/run/ckpt-{i}", "step": i}, "tensors": tensors}


def fill(state_dir: str, start: int, stop: int) -> int:
    """Insert reports start..stop-1 (and as many skip records); the database file's size after."""
    state = State(state_dir, reports_kept=KEEP)
    try:
        for i in range(start, stop):
            state.record_report("run", f"/ckpt/run/ckpt-{i}", f"k{i}", i, a_report(i))
            state.record_skip("run", f"/ckpt/run/old-{i}", f"s{i}", "coalesced")
            if i >= KEEP:
                assert state.seen("run", f"k{i}") and not state.seen("run", f"k{i - KEEP}")
        rows = state.recent_reports(limit=10 * stop)
        assert len(rows) == KEEP, "no more than reports_kept"
        assert [r["step"] for r in rows] == list(range(stop - 1, stop - 1 - KEEP, -1)), "the newest kept"
        assert not state.seen("run", f"s{stop - KEEP - 1}") and state.seen("run", f"s{stop - KEEP}")
    finally:
        state.close()  # checkpoints the WAL into the database file
    return os.path.getsize(os.path.join(state_dir, "state.sqlite3"))


def test_reports_kept_is_applied_on_insert_and_the_file_stops_growing(tmp_path):
    n = 4 * KEEP
    after_n = fill(str(tmp_path), 0, n)
    after_2n = fill(str(tmp_path), n, 2 * n)
    assert after_2n <= after_n * 1.05, f"the file grew from {after_n} to {after_2n} bytes"
    assert after_n < 3 * KEEP * 8192, "about reports_kept reports' worth of pages"


def test_without_a_limit_everything_is_kept_and_prune_keeps_the_newest(tmp_path):
    state = State(str(tmp_path))
    try:
        for i in range(20):
            state.record_report("run", f"/p{i}", f"k{i}", i, {"verdict": "pass"})
        assert len(state.recent_reports(100)) == 20
        state.prune(5)
        assert [r["step"] for r in state.recent_reports(100)] == [19, 18, 17, 16, 15]
        state.reports_kept = 3  # SIGHUP changed reports_kept: applied at the next insert
        state.record_report("run", "/p20", "k20", 20, {"verdict": "pass"})
        assert [r["step"] for r in state.recent_reports(100)] == [20, 19, 18]
    finally:
        state.close()


def findings_report(i: int, verdict: str) -> dict:
    bad = [
        {"severity": "fail", "check": "nonfinite", "tensor": f"w{j}/.ATTRIBUTES/VARIABLE_VALUE", "message": "x" * 1000}
        for j in range(40)
    ]
    tensors = [{"name": f"w{j}/.ATTRIBUTES/VARIABLE_VALUE", "display": f"w{j}", "stats": {"nan": 1}} for j in range(40)]
    return {
        "verdict": verdict,
        "checkpoint": {"path": f"/ckpt/run/ckpt-{i}", "step": i, "format": "tf2", "tensors": 40, "bytes": 10},
        "findings": bad if verdict == "fail" else [{"severity": "info", "check": "structure.renamed"}],
        "drift": {"previous": {"relative_l2": 0.25, "max_abs": 1.0}, "golden": None},
        "tensors": tensors,
        "timings": {"total_seconds": 1.5},
    }


def test_recent_reports_are_bounded_summaries_and_report_gives_the_full_one(tmp_path):
    state = State(str(tmp_path))
    try:
        for i in range(6):
            state.record_report(
                "a" if i % 2 else "b",
                f"/ckpt/run/ckpt-{i}",
                f"k{i}",
                i,
                findings_report(i, ("pass", "fail")[i % 3 == 0]),
            )
        rows = state.recent_reports(100)
        assert [r["step"] for r in rows] == [5, 4, 3, 2, 1, 0]
        assert all("report" not in r and isinstance(r["tensors"], int) for r in rows), "no full report, no tensor rows"
        failed = state.recent_reports(100, verdict="fail")
        assert [r["step"] for r in failed] == [3, 0]
        assert [r["step"] for r in state.recent_reports(100, watch="a", verdict="fail")] == [3]
        assert state.recent_reports(100, watch="nope") == []
        row = failed[0]
        assert (row["watch"], row["verdict"], row["duration"], row["format"]) == ("a", "fail", 1.5, "tf2")
        assert row["counts"] == {"fail": 40, "warn": 0}
        assert len(row["findings"]) == 20, "bounded"
        assert row["findings"][0]["tensor"] == "w0" and len(row["findings"][0]["message"]) <= 400
        assert row["drift"] == {"previous": {"relative_l2": 0.25, "max_abs": 1.0}, "golden": None}
        assert row["nonfinite"] == 40
        full = state.report(row["id"])
        assert full is not None and full["report"] == findings_report(3, "fail") and full["path"] == "/ckpt/run/ckpt-3"
        assert state.report(10_000) is None
    finally:
        state.close()


def test_a_state_from_before_summaries_is_migrated(tmp_path):
    import json
    import sqlite3

    db = sqlite3.connect(tmp_path / "state.sqlite3")
    db.execute(
        "CREATE TABLE reports (id INTEGER PRIMARY KEY, watch TEXT NOT NULL, path TEXT NOT NULL, key TEXT NOT NULL,"
        " step INTEGER, verdict TEXT NOT NULL, finished REAL NOT NULL, duration REAL, report TEXT NOT NULL,"
        " UNIQUE (watch, key))"
    )
    db.execute(
        "INSERT INTO reports (watch, path, key, step, verdict, finished, report) VALUES (?, ?, ?, ?, ?, ?, ?)",
        ("run", "/ckpt/run/ckpt-1", "k1", 1, "fail", 5.0, json.dumps(findings_report(1, "fail"))),
    )
    db.commit()
    db.close()
    state = State(str(tmp_path))
    try:
        state.record_report("run", "/ckpt/run/ckpt-2", "k2", 2, findings_report(2, "pass"))
        old, new = sorted(state.recent_reports(10), key=lambda r: r["step"])
        assert old["counts"] == {"fail": 40, "warn": 0} and old["findings"][0]["check"] == "nonfinite"
        assert new["counts"] == {"fail": 0, "warn": 0}
        assert state.report(old["id"])["report"]["verdict"] == "fail"
    finally:
        state.close()
