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
