"""What an operator sees and can do, with a real daemon: misconfigured watches are visible (log
once, `ckptwatch_watch_armed{reason}`, /readyz), reloads export success and time, the watch's own
limits and learnt save cadence are exported for the alert rules, and a finished run can be retired
(`ckptwatch retire`, or `retired = true`) so its series and alerts go while its history stays.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

from .conftest import GOOD, Trainer, daemon_env, outcome


def _retire(d, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckptwatch", "retire", *args, "--config", str(d.config_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
        check=False,
    )


def test_misconfigured_watches_are_not_armed_say_why_once_and_fail_readyz(daemon_factory, tmp_path):
    good, afile, missing = tmp_path / "good", tmp_path / "model.weights.h5", tmp_path / "tpyo" / "run"
    good.mkdir()
    afile.write_bytes(b"not a directory")
    d = daemon_factory(
        [
            {"name": "good", "path": str(good)},
            {"name": "file", "path": str(afile)},
            {"name": "missing", "path": str(missing)},
        ]
    )
    file_ev = d.wait_for("watch not armed", watch="file")
    assert file_ev["reason"] == "not_a_directory" and str(afile) in file_ev["detail"], file_ev
    missing_ev = d.wait_for("watch not armed", watch="missing")
    assert missing_ev["reason"] == "missing" and str(missing) in missing_ev["detail"], missing_ev
    time.sleep(1.0)  # five poll intervals: said once, not once per poll
    assert len(d.events("watch not armed", watch="file")) == 1
    assert len(d.events("watch not armed", watch="missing")) == 1
    assert not d.events("watch not armed", watch="good")

    text = d.scrape()
    assert d.metric("ckptwatch_watch_armed", text, watch="good", reason="none") == 1
    assert d.metric("ckptwatch_watch_armed", text, watch="file", reason="not_a_directory") == 0
    assert d.metric("ckptwatch_watch_armed", text, watch="missing", reason="missing") == 0
    assert d.metric("ckptwatch_watch_armed", text, watch="file") == 0, "one series per watch"
    status, body = d.get("/readyz")
    assert status == 503, body
    assert f"watch file not armed: not_a_directory ({afile}" in body, body
    assert f"watch missing not armed: missing ({missing}" in body, body
    assert d.get("/healthz")[0] == 200
    status, body = d.get("/api/v1/watches")  # and the API
    watches = {w["name"]: w for w in json.loads(body)["watches"]}
    assert (watches["file"]["armed"], watches["file"]["unarmed_reason"]) == (False, "not_a_directory"), body
    assert watches["good"]["armed"] is True and watches["good"]["unarmed_reason"] is None, body
    status, page = d.get("/")  # the status page says it too
    assert status == 200 and "not armed: not_a_directory" in page and ">no: missing<" in page, page

    assert d.metric("ckptwatch_config_reload_success", text) == 1
    loaded = d.metric("ckptwatch_config_reload_timestamp_seconds", text)
    assert loaded is not None and abs(loaded - time.time()) < 120, loaded

    # a broken reload: exported as failed, the time of the last good load unchanged
    d.write_config("[daemon\nlisten = 1\n")
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_for("config reload failed, keeping the running config", after=mark)
    assert d.metric("ckptwatch_config_reload_success") == 0
    assert d.metric("ckptwatch_config_reload_timestamp_seconds") == loaded

    # fixed: the file's watch points at a directory now, the typo is removed
    (tmp_path / "fixed").mkdir()
    d.watches = [{"name": "good", "path": str(good)}, {"name": "file", "path": str(tmp_path / "fixed")}]
    d.write_config()
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_for("config reloaded", after=mark)
    text = d.scrape()
    assert d.metric("ckptwatch_config_reload_success", text) == 1
    assert d.metric("ckptwatch_config_reload_timestamp_seconds", text) > loaded
    d.wait_until(lambda: d.metric("ckptwatch_watch_armed", watch="file", reason="none") == 1, what="file armed")
    assert d.metric("ckptwatch_watch_armed", watch="missing") is None, "a removed watch leaves no series"
    assert d.wait_until(lambda: d.get("/readyz") == (200, "ok\n"), what="/readyz ready")


def test_thresholds_save_cadence_and_retiring_a_finished_run(tf, daemon_factory, tmp_path):
    run, other, goldens = tmp_path / "run", tmp_path / "other", tmp_path / "goldens"
    for p in (run, other, goldens):
        p.mkdir()
    trainer = Trainer(tf, run)
    golden = trainer.write(goldens / "start", train=False)
    d = daemon_factory(
        [
            {"name": "run", "path": str(run), "golden": golden, "stall_intervals": 4.0,
             "policy": {"max_global_golden_drift": 5.0}},
            {"name": "other", "path": str(other)},
        ]
    )  # fmt: skip
    text = d.scrape()
    # the watch's own limits, for the alert rules (CkptwatchGoldenDriftHigh, CkptwatchRunStoppedSaving)
    assert d.metric("ckptwatch_policy_threshold", text, watch="run", threshold="max_global_golden_drift") == 5.0
    assert d.metric("ckptwatch_policy_threshold", text, watch="run", threshold="stall_intervals") == 4.0
    assert d.metric("ckptwatch_policy_threshold", text, watch="other", threshold="max_global_golden_drift") is None
    assert d.metric("ckptwatch_policy_threshold", text, watch="other", threshold="stall_intervals") == 3.0

    # the save cadence is learnt from the run's own checkpoints (three at least, 1.5 s apart)
    ckpts = []
    for i in range(3):
        if i:
            time.sleep(1.5)
        ckpts.append(trainer.save())
        assert outcome(d, ckpts[-1])["verdict"] in GOOD
    interval = d.metric("ckptwatch_save_interval_seconds", watch="run")
    assert interval is not None and 1.2 < interval < 10, interval
    assert d.metric("ckptwatch_save_interval_seconds", watch="other") is None
    assert d.metric("ckptwatch_last_checkpoint_seen_timestamp_seconds", watch="run") is not None
    assert d.metric("ckptwatch_watch_retired", watch="run") == 0

    # retire the finished run: its series go (its alerts with them), its history stays
    mark = d.mark()
    p = _retire(d, "run", "--reason", "run finished at step 3")
    assert p.returncode == 0, p.stdout + p.stderr
    assert "retired watch run" in p.stdout, p.stdout
    ev = d.wait_for("watch retired", after=mark, watch="run")
    assert ev["reason"] == "run finished at step 3", ev
    text = d.scrape()
    assert d.metric("ckptwatch_watch_retired", text, watch="run") == 1
    for gone in (
        "ckptwatch_last_verdict",
        "ckptwatch_verifications_total",
        "ckptwatch_watch_armed",
        "ckptwatch_save_interval_seconds",
        "ckptwatch_last_checkpoint_seen_timestamp_seconds",
        "ckptwatch_policy_threshold",
        "ckptwatch_drift_relative_l2",
    ):
        assert d.metric(gone, text, watch="run") is None, f"{gone} of a retired watch"
    assert d.metric("ckptwatch_last_verdict", text, watch="other") is None  # no verdict yet, but watched
    assert d.metric("ckptwatch_watch_armed", text, watch="other", reason="none") == 1
    assert {r["path"] for r in d.api(watch="run")} == set(ckpts), "its history stays"
    assert d.get("/readyz") == (200, "ok\n"), "a retired watch does not make the daemon unready"
    assert ">retired<" in d.get("/")[1], "the status page shows it retired"

    # a retired watch is not watched: a new checkpoint in its directory is left alone
    late = trainer.save()
    time.sleep(1.5)
    assert not d.events("verification started", after=mark, checkpoint=late)

    # --undo watches it again: the new checkpoint is verified, the series come back
    mark = d.mark()
    p = _retire(d, "run", "--undo")
    assert p.returncode == 0, p.stdout + p.stderr
    d.wait_for("watch no longer retired", after=mark, watch="run")
    assert outcome(d, late, after=mark)["verdict"] in GOOD
    assert d.metric("ckptwatch_watch_retired", watch="run") == 0
    assert d.metric("ckptwatch_verifications_total", watch="run") == 1  # counted again from 0

    # the config key does the same, through a reload
    d.watches[1]["retired"] = True
    d.write_config()
    mark = d.mark()
    d.signal(signal.SIGHUP)
    d.wait_for("watch retired", after=mark, watch="other")
    assert d.metric("ckptwatch_watch_retired", watch="other") == 1
    assert d.metric("ckptwatch_watch_armed", watch="other") is None

    # a retirement by command survives a restart
    mark = d.mark()
    assert _retire(d, "run", "--reason", "done for good").returncode == 0
    d.wait_for("watch retired", after=mark, watch="run")
    assert d.stop() == 0
    d.start()
    assert d.wait_for("watch retired", watch="run")
    assert d.metric("ckptwatch_watch_retired", watch="run") == 1
    assert d.metric("ckptwatch_last_verdict", watch="run") is None
    status, body = d.get("/readyz")
    assert status == 503 and "every watch retired" in body, body


def test_retire_needs_a_reason_and_a_known_watch(daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    p = _retire(d, "run")
    assert p.returncode == 2 and "--reason" in p.stderr, p.stderr
    p = _retire(d, "nope", "--reason", "x")
    assert p.returncode == 2 and "unknown watch 'nope'" in p.stderr, p.stderr


def test_the_daemon_sees_every_command_another_process_writes_into_its_state(tf, daemon_factory, tmp_path):
    """Regression: the daemon's check of its database file's header (each second) opened and closed
    the file, which drops every POSIX lock the process holds on it, SQLite's included; the first
    `ckptwatch accept` that closed its connection then took itself for the database's last user,
    checkpointed it and deleted the -wal/-shm files under the daemon, which never saw a command
    written after that (a second acceptance, a `retire --undo`)."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer = Trainer(tf, run)
    ckpts = [trainer.save(), trainer.save()]
    for c in ckpts:
        assert outcome(d, c)["verdict"] in GOOD
    for n, ckpt in enumerate((ckpts[0], ckpts[1], ckpts[0])):
        time.sleep(1.5)  # the header is checked in between
        mark = d.mark()
        cli = subprocess.run(
            [sys.executable, "-m", "ckptwatch", "accept", "run", ckpt, "--reason", f"take {n}", "--config",
             str(d.config_path)],
            env=daemon_env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )  # fmt: skip
        assert cli.returncode == 0, cli.stderr
        ev = d.wait_for("baseline accepted", timeout=10, after=mark, watch="run")
        assert (ev["checkpoint"], ev["reason"]) == (ckpt, f"take {n}"), ev
