"""DurableState on real SQLite files: a corrupt database moved aside, writes kept in memory (bounded)
while the state cannot be written and written back after, an acceptance applied once.

Write failures are real: RLIMIT_FSIZE lowered on this process for the moment of the writes (every
write to a regular file fails with EFBIG, as root too; CPython ignores SIGXFSZ)."""

from __future__ import annotations

import contextlib
import os
import resource
import sqlite3
from collections.abc import Iterator
from pathlib import Path

from ckptwatch.daemon.baselines import GoodCheckpoint
from ckptwatch.daemon.durable import DurableState
from ckptwatch.daemon.state import State
from tests.factories import RecordingLog as Log


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@contextlib.contextmanager
def no_file_writes() -> Iterator[None]:
    """Every write of this process to a regular file fails (EFBIG) until the block ends."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))


def _report(verdict: str = "pass") -> dict:
    return {"verdict": verdict, "findings": []}


def _stored(state_dir: Path) -> list[str]:
    db = sqlite3.connect(state_dir / "state.sqlite3")
    try:
        return [p for (p,) in db.execute("SELECT path FROM reports ORDER BY id")]
    finally:
        db.close()


def test_a_corrupt_database_at_start_is_moved_aside(tmp_path):
    (tmp_path / "state.sqlite3").write_bytes(b"\x00garbage" * 512)
    log = Log()
    errors: list[str] = []
    state = DurableState(str(tmp_path), log=log, on_error=errors.append)
    (event,) = log.events("state database corrupt")
    moved = Path(event["moved_to"])
    assert moved.parent == tmp_path and moved.read_bytes() == b"\x00garbage" * 512
    assert "unreadable" in event["lost"] and errors == ["corrupt"]
    assert state.writable() and not log.events("state not writable")
    state.record_report("run", "/run/ckpt-1", "k1", 1, _report())
    state.close()
    assert _stored(tmp_path) == ["/run/ckpt-1"]


def test_a_header_overwritten_under_the_open_connection_is_found_and_the_contents_salvaged(tmp_path):
    clock, log = Clock(), Log()
    state = DurableState(str(tmp_path), log=log, clock=clock)
    state.record_report("run", "/run/ckpt-1", "k1", 1, _report())
    state.set_last_good("run", GoodCheckpoint("/run/ckpt-1", 1, "k1", None))
    with open(tmp_path / "state.sqlite3", "r+b") as f:
        f.write(b"\xff" * 100)
    clock.now += 5
    state.tick()
    (event,) = log.events("state database corrupt")
    assert event["lost"].startswith("nothing") and event["kept_from_memory"] == ["run"], event
    assert state.writable() and state.seen("run", "k1")
    state.close()
    reopened = State(str(tmp_path))
    assert reopened.last_good("run") == GoodCheckpoint("/run/ckpt-1", 1, "k1", None)
    reopened.close()
    assert _stored(tmp_path) == ["/run/ckpt-1"]


def test_unwritable_state_keeps_a_bounded_backlog_and_writes_it_back(tmp_path):
    clock, log = Clock(), Log()
    errors: list[str] = []
    state = DurableState(str(tmp_path), backlog=3, retry_max=4.0, log=log, on_error=errors.append, clock=clock)
    state.record_report("run", "/run/ckpt-1", "k1", 1, _report())
    with no_file_writes():
        for step in range(2, 7):
            state.record_report("run", f"/run/ckpt-{step}", f"k{step}", step, _report())
            state.record_fingerprint("run", f"/run/ckpt-{step}", f"k{step}", step, f"/fp/{step}")
            state.set_last_good("run", GoodCheckpoint(f"/run/ckpt-{step}", step, f"k{step}", f"/fp/{step}"))
            clock.now += 1.5
            state.tick()  # retries fail: backoff
    (down,) = log.events("state not writable")
    assert down["kind"] in ("io", "full") and down["state_dir"] == str(tmp_path), down  # SQLite: "disk I/O error"
    assert not state.writable() and state.health().pending == 3 and errors
    assert state.last_good("run") == GoodCheckpoint("/run/ckpt-6", 6, "k6", "/fp/6"), "the baseline, from memory"
    assert [r["path"] for r in state.recent_reports(10)] == [f"/run/ckpt-{s}" for s in (6, 5, 4, 1)]
    assert [r["id"] is None for r in state.recent_reports(10)] == [True, True, True, False], "no id until written"
    assert [r["path"] for r in state.recent_reports(10, verdict="fail")] == []
    assert state.report(state.recent_reports(10)[-1]["id"])["path"] == "/run/ckpt-1"
    assert state.seen("run", "k6") and state.seen("run", "k1") and not state.seen("run", "k2")

    clock.now += 10
    state.tick()
    (up,) = log.events("state writable again")
    assert up["written"] == 3 and up["lost"] == 2, up
    assert state.writable() and state.health().pending == 0
    assert _stored(tmp_path) == ["/run/ckpt-1", "/run/ckpt-4", "/run/ckpt-5", "/run/ckpt-6"]
    state.close()
    reopened = State(str(tmp_path))
    assert reopened.last_good("run") == GoodCheckpoint("/run/ckpt-6", 6, "k6", "/fp/6")
    assert reopened.fingerprints("run") == {"k4": "/fp/4", "k5": "/fp/5", "k6": "/fp/6"}
    reopened.close()


def test_an_acceptance_applied_while_the_state_is_unwritable_is_applied_once(tmp_path):
    clock, log = Clock(), Log()
    state = DurableState(str(tmp_path), log=log, clock=clock)
    state.record_report("run", "/run/ckpt-1", "k1", 1, _report("fail"))
    fingerprint = tmp_path / "fp.json.gz"
    fingerprint.write_bytes(b"fp")
    state.record_fingerprint("run", "/run/ckpt-1", "k1", 1, str(fingerprint))
    operator = State(str(tmp_path))  # `ckptwatch accept`, another connection
    operator.accept("run", "ckpt-1", "intended", "alice")
    operator.close()
    (pending,) = state.pending_acceptances()
    with no_file_writes():
        state.apply_acceptance(pending)
        assert state.pending_acceptances() == [], "not applied a second time"
        assert state.last_good("run") == pending.checkpoint
    assert not state.writable()
    clock.now += 5
    state.tick()
    assert state.writable() and state.pending_acceptances() == []
    state.close()
    reopened = State(str(tmp_path))
    assert reopened.pending_acceptances() == [] and reopened.last_good("run") == pending.checkpoint
    reopened.close()


def test_a_state_dir_that_cannot_be_created_names_the_key_path_and_reason(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    try:
        DurableState(str(blocker / "state"))
    except Exception as e:
        assert type(e).__name__ == "StateUnavailable" and getattr(e, "exit_code", None) == 75
        assert str(e).startswith(f"daemon.state_dir {blocker / 'state'}: ") and "Not a directory" in str(e), e
    else:
        raise AssertionError("no error")
    assert not os.path.exists(blocker / "state")
