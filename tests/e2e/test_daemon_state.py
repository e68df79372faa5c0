"""The state directory fails under a running daemon: it degrades, never dies.

Real parts only: a real `ckptwatch watch` process, real SQLite files, real write errors. A full
(or otherwise unwritable) state disk is made with RLIMIT_FSIZE set on the running daemon's main
process (`prlimit`): every write it makes to a regular file fails with EFBIG, as root too (root
ignores file modes, not resource limits); CPython ignores SIGXFSZ, so the write just fails. Its
workers, started before, keep writing: that is the daemon's side under test.
"""

from __future__ import annotations

import os
import resource
import sqlite3
import subprocess
import sys
from pathlib import Path

from .conftest import GOOD, ROOT, Trainer, daemon_env, outcome

SQLITE_MAGIC = b"SQLite format 3\x00"


def _reports(database: Path) -> dict[str, str]:
    """path -> verdict of the reports in a state database, read with a connection of our own."""
    db = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    try:
        return dict(db.execute("SELECT path, verdict FROM reports").fetchall())
    finally:
        db.close()


def _ready(d) -> tuple[int, str]:
    return d.get("/readyz")


def test_a_full_state_disk_degrades_then_writes_what_it_kept(tf, daemon_factory, tmp_path):
    """(a) the state cannot be written: every checkpoint still gets its verdict, the daemon says
    so once (log, metric, /readyz) and keeps running; (c) once it can write again, what it kept
    in memory is written, and survives a restart."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run)
    first = trainer.save()
    assert outcome(d, first)["verdict"] in GOOD
    assert _ready(d)[0] == 200

    soft, hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)
    mark = d.mark()
    resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (0, hard))  # the daemon can no longer write a byte
    try:
        kept = []
        for _ in range(4):
            ckpt = trainer.save()
            assert outcome(d, ckpt, after=mark, timeout=60)["verdict"] in GOOD, "verified against its baseline"
            kept.append(ckpt)
        down = d.wait_for("state not writable", after=mark)
        assert down["state_dir"] == str(d.state_dir) and down["reason"], down
        status, body = _ready(d)
        assert status == 503 and "state" in body, body
        assert d.metric("ckptwatch_state_writable") == 0
        assert d.metric("ckptwatch_state_errors_total") >= 1
        assert d.metric("ckptwatch_state_pending_records") >= len(kept)
        api = {r["path"] for r in d.api()}
        assert set(kept) <= api, "what is kept in memory is shown"
        # the chain of baselines goes on in memory: each one is judged against the one before it
        starts = [e for e in d.events("verification started", after=mark)]
        assert [e["previous"] for e in starts] == [first, *kept[:-1]]
        assert d.running()
    finally:
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (soft, hard))

    up = d.wait_for("state writable again", after=mark, timeout=30)
    assert up["written"] >= len(kept) and up["lost"] == 0, up
    assert len(d.events("state not writable", after=mark)) == 1, "said once per change, not per failure"
    assert d.wait_until(lambda: _ready(d)[0] == 200, what="/readyz ready again")
    assert d.metric("ckptwatch_state_writable") == 1
    assert d.metric("ckptwatch_state_pending_records") == 0
    on_disk = _reports(d.state_dir / "state.sqlite3")
    assert set(on_disk) == {first, *kept}, on_disk

    # a restart on the same state: nothing is verified again, the last one is the baseline
    assert d.stop() == 0
    d.start()
    after_restart = trainer.save()
    start = d.wait_for("verification started", checkpoint=after_restart)
    assert start["previous"] == kept[-1]
    assert outcome(d, after_restart)["verdict"] in GOOD
    assert [e["checkpoint"] for e in d.events("verification started")] == [after_restart]


def test_the_backlog_kept_in_memory_is_bounded(tf, daemon_factory, tmp_path):
    """Beyond state_backlog records per watch the oldest are dropped, and counted as lost."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"state_backlog": 2})
    trainer = Trainer(tf, run)
    assert outcome(d, trainer.save())["verdict"] in GOOD
    soft, hard = resource.prlimit(d.pid, resource.RLIMIT_FSIZE)
    mark = d.mark()
    resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (0, hard))
    try:
        saved = []
        for _ in range(4):
            saved.append(trainer.save())
            assert outcome(d, saved[-1], after=mark, timeout=60)["verdict"] in GOOD
        d.wait_for("state not writable", after=mark)
        assert d.metric("ckptwatch_state_pending_records") == 2  # a report with its fingerprint is one record
    finally:
        resource.prlimit(d.pid, resource.RLIMIT_FSIZE, (soft, hard))
    up = d.wait_for("state writable again", after=mark, timeout=30)
    assert up["lost"] > 0, up
    on_disk = _reports(d.state_dir / "state.sqlite3")
    assert saved[-1] in on_disk and saved[0] not in on_disk, on_disk


def test_a_database_corrupted_while_running_is_moved_aside(tf, daemon_factory, tmp_path):
    """(b) its header overwritten under the running daemon: the file is moved aside (in the state
    dir), a new one started, the log says what was lost, and later checkpoints get verdicts."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run)
    before = [trainer.save() for _ in range(2)]
    for ckpt in before:
        assert outcome(d, ckpt)["verdict"] in GOOD
    database = d.state_dir / "state.sqlite3"
    mark = d.mark()
    with open(database, "r+b") as f:  # a disk, a bad copy or a stray write wrecks the header
        f.write(b"\xde\xad\xbe\xef" * 25)

    event = d.wait_for("state database corrupt", after=mark, timeout=30)
    moved = Path(event["moved_to"])
    assert moved.parent == d.state_dir and moved.name.startswith("state.sqlite3.corrupt-"), moved
    assert moved.read_bytes()[:16] != SQLITE_MAGIC, "the damaged file is kept for an operator, as it was"
    assert event["database"] == str(database) and event["lost"], event
    assert database.read_bytes()[:16] == SQLITE_MAGIC, "a new database"
    assert not any(p.is_relative_to(run) for p in d.state_dir.rglob("*"))

    later = []
    for _ in range(3):
        later.append(trainer.save())
        start = d.wait_for("verification started", after=mark, checkpoint=later[-1])
        assert start["previous"] == (later[-2] if len(later) > 1 else before[-1]), "the baseline was kept"
        assert outcome(d, later[-1], after=mark)["verdict"] in GOOD
    assert set(later) <= set(_reports(database)), "verdicts are stored in the new database"
    assert d.running() and _ready(d)[0] == 200
    assert d.stop() == 0
    d.start()  # and the daemon starts on it
    assert d.get("/readyz")[0] == 200


def test_a_corrupt_database_at_start_is_moved_aside(tf, daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], start=False)
    d.state_dir.mkdir(parents=True)
    (d.state_dir / "state.sqlite3").write_bytes(os.urandom(8192))
    d.start()
    event = d.wait_for("state database corrupt")
    assert Path(event["moved_to"]).parent == d.state_dir and event["lost"], event
    trainer = Trainer(tf, run)
    ckpt = trainer.save()
    assert outcome(d, ckpt)["verdict"] in GOOD
    assert ckpt in _reports(d.state_dir / "state.sqlite3")


def test_a_state_dir_that_cannot_be_created_is_one_line_naming_it(tmp_path):
    """Not a config error (exit 2, never restarted): a one-line message naming daemon.state_dir,
    the path and why, and an exit code the shipped systemd unit restarts."""
    blocker = tmp_path / "file"
    blocker.write_text("a regular file where a directory should be")
    state_dir = blocker / "state"
    config = tmp_path / "ckptwatch.toml"
    config.write_text(
        f"[daemon]\nlisten = '127.0.0.1:0'\nstate_dir = '{state_dir}'\nlog_format = 'json'\n"
        f"[[watch]]\nname = 'a'\npath = '{tmp_path / 'run'}'\n"
    )
    p = subprocess.run(
        [sys.executable, "-m", "ckptwatch", "watch", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
        cwd=str(ROOT),
        check=False,
    )
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "internal error" not in lines[0]
    assert "daemon.state_dir" in lines[0] and str(state_dir) in lines[0], lines[0]
    assert p.returncode == 75, (p.returncode, p.stderr)  # EX_TEMPFAIL: restarted (RestartPreventExitStatus=2 only)
    unit = (ROOT / "systemd" / "ckptwatch.service").read_text()
    assert "RestartPreventExitStatus=2\n" in unit and "Restart=on-failure" in unit
