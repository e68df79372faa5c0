"""The daemon's life: restart on the same state dir, SIGHUP reloads, config errors at start,
what the main process has loaded, and sd_notify over a real socket."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import wait_until

from .conftest import GOOD, ROOT, Trainer, daemon_env, flip_byte_in_tensor, install, outcome, paused


def _good_then_corrupt(tf, d, run: Path, staging: Path) -> tuple[Trainer, str, str]:
    trainer = Trainer(tf, run)
    good = trainer.save()
    assert outcome(d, good)["verdict"] == "pass"
    staged = trainer.write(staging / "ckpt-2")
    flip_byte_in_tensor(tf, staged, trainer.key_of("head"))
    bad = install(staged, run, "ckpt-2")
    assert outcome(d, bad)["verdict"] == "fail"
    return trainer, good, bad


def test_restart_on_the_same_state_dir(tf, daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    trainer, good, bad = _good_then_corrupt(tf, d, run, tmp_path / "staging")
    reports_before = {r["path"]: r["verdict"] for r in d.api()}
    assert reports_before == {good: "pass", bad: "fail"}
    assert d.stop() == 0
    while_down = trainer.save(number=3)  # written while the daemon is not running

    # same config, same state_dir; the log starts afresh. Scrape at once: the worker needs
    # a second to start, so nothing is verified yet -- this is the state restored from SQLite
    d.start(ready=False)
    text = d.scrape()
    assert not d.events("worker ready"), "too slow to see the restored state"
    m = lambda name, **labels: d.metric(name, _text=text, **labels)  # noqa: E731
    assert m("ckptwatch_verifications_total", watch="run") == 0, "counters start at 0 in a new process"
    assert m("ckptwatch_last_verdict", watch="run", verdict="fail") == 1, "restored from the state"
    assert m("ckptwatch_last_verdict", watch="run", verdict="pass") == 0
    assert m("ckptwatch_last_checkpoint_step", watch="run") == 2
    assert m("ckptwatch_last_verification_timestamp_seconds", watch="run") > 0
    assert {r["path"]: r["verdict"] for r in d.api()} == reports_before

    start = d.wait_for("verification started", checkpoint=while_down)
    assert start["previous"] == good, "the last good checkpoint (ckpt-2 failed) is the previous"
    assert outcome(d, while_down)["verdict"] in GOOD, "nothing lost while the daemon was down"
    fourth = trainer.save(number=4)
    start = d.wait_for("verification started", checkpoint=fourth)
    assert start["previous"] == while_down
    assert outcome(d, fourth)["verdict"] in GOOD
    started = [e["checkpoint"] for e in d.events("verification started")]
    assert started == [while_down, fourth], "nothing re-verified"
    assert not d.events("checkpoint skipped")
    assert len(d.api()) == 4
    assert d.metric("ckptwatch_verifications_total", watch="run") == 2


def test_sighup_reload_adds_a_watch_and_keeps_running_config_on_errors(tf, daemon_factory, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    d = daemon_factory([{"name": "a", "path": str(a)}])
    pid = d.pid

    d.watches.append({"name": "b", "path": str(b)})
    d.write_config()
    mark = d.mark()
    d.signal(signal.SIGHUP)
    ev = d.wait_for("config reloaded", after=mark)
    assert ev["watches"] == ["a", "b"], ev
    d.wait_until(lambda: d.metric("ckptwatch_queue_depth", watch="b") is not None, timeout=10, what="watch b known")
    tb = Trainer(tf, b, seed=1)
    ckpt = tb.save()
    assert outcome(d, ckpt)["verdict"] == "pass"
    assert d.metric("ckptwatch_verifications_total", watch="b", verdict="pass") == 1

    cases = [
        ("[daemon\nlisten = 1\n", "invalid TOML"),
        (None, "watch.1.profile"),  # an invalid value, in a file that parses
        ("[daemon]\npoll_interval = -1.0\n[[watch]]\nname = 'a'\npath = '/tmp'\n", "daemon.poll_interval"),
    ]
    for text, named in cases:
        if text is None:
            d.watches[1]["profile"] = "sometimes"
            d.write_config()
            d.watches[1].pop("profile")
        else:
            d.write_config(text)
        mark = d.mark()
        d.signal(signal.SIGHUP)
        ev = d.wait_for("config reload failed, keeping the running config", after=mark)
        assert named in ev["error"] and str(d.config_path) in ev["error"], ev
        assert "\n" not in ev["error"]
        assert not d.events("config reloaded", after=mark)

    # still running, with the config it had: both watches are verified
    assert d.running() and d.pid == pid
    ckpt_b = tb.save()
    ckpt_a = Trainer(tf, a, seed=2).save()
    assert outcome(d, ckpt_b)["verdict"] in GOOD
    assert outcome(d, ckpt_a)["verdict"] == "pass"
    assert d.get("/readyz")[0] == 200


def test_sighup_removing_a_watch_stops_exporting_its_series(tf, daemon_factory, tmp_path):
    kept, gone = tmp_path / "kept", tmp_path / "gone"
    kept.mkdir()
    gone.mkdir()
    d = daemon_factory([{"name": "kept", "path": str(kept)}, {"name": "gone", "path": str(gone)}])
    trainer = Trainer(tf, kept)
    first = trainer.save()
    assert outcome(d, first)["verdict"] == "pass"
    assert outcome(d, Trainer(tf, gone, seed=1).save())["verdict"] == "pass"

    def series(text: str, watch: str) -> set[str]:
        return {
            s.name for f in text_string_to_metric_families(text) for s in f.samples if s.labels.get("watch") == watch
        }

    before = series(d.scrape(), "gone")
    assert {"ckptwatch_verifications_total", "ckptwatch_checkpoints_skipped_total"} <= before
    assert {"ckptwatch_verification_duration_seconds_count", "ckptwatch_last_verdict"} <= before

    d.watches = [w for w in d.watches if w["name"] != "gone"]
    d.write_config()
    mark = d.mark()
    d.signal(signal.SIGHUP)
    assert d.wait_for("config reloaded", after=mark)["watches"] == ["kept"]
    text = d.scrape()
    assert series(text, "gone") == set(), "no series names the removed watch"
    assert before <= series(text, "kept"), "the remaining watch keeps every series"
    assert d.metric("ckptwatch_verifications_total", _text=text, watch="kept", verdict="pass") == 1
    assert d.metric("ckptwatch_verification_duration_seconds_count", _text=text, watch="kept") == 1
    assert d.metric("ckptwatch_last_verdict", _text=text, watch="kept", verdict="pass") == 1

    # what happens afterwards brings nothing back: the removed directory is no longer watched
    Trainer(tf, gone, seed=1).save(number=2)
    second = trainer.save()
    assert outcome(d, second, after=mark)["verdict"] in GOOD
    text = d.scrape()
    assert series(text, "gone") == set()
    assert d.metric("ckptwatch_verifications_total", _text=text, watch="kept") == 2
    assert not d.events(None, after=mark, watch="gone")


_VALID_WATCH = "[[watch]]\nname = 'a'\npath = '/tmp/ckptwatch-e2e-nowhere'\n"
CONFIG_ERRORS = {
    "invalid-value": ("[daemon]\npoll_interval = -1.0\n" + _VALID_WATCH, "daemon.poll_interval"),
    "unknown-key": ("[daemon]\nlisten_on = '127.0.0.1:0'\n" + _VALID_WATCH, "daemon.listen_on"),
    "bad-device": ("[worker]\ndevices = ['tpu:0']\n" + _VALID_WATCH, "worker.devices.0"),
    "no-watch": ("[daemon]\nlisten = '127.0.0.1:0'\n", "watch"),
    "invalid-toml": ("[daemon\n" + _VALID_WATCH, "invalid TOML"),
    "missing-file": (None, "no such file"),
}


@pytest.mark.parametrize("command", ["watch", "check-config"])
@pytest.mark.parametrize("case", sorted(CONFIG_ERRORS))
def test_config_errors_exit_2_with_one_line(tmp_path, command, case):
    text, named = CONFIG_ERRORS[case]
    path = tmp_path / "bad.toml"
    if text is not None:
        path.write_text(text)
    args = ["watch", "--config", str(path)] if command == "watch" else ["check-config", str(path)]
    p = subprocess.run(
        [sys.executable, "-m", "ckptwatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env({"CKPTWATCH_STATE_DIR": str(tmp_path / "state")}),
        cwd=str(ROOT),
        check=False,
    )
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert len(lines) == 1, p.stderr
    assert "Traceback" not in p.stderr
    assert named in lines[0] and str(path) in lines[0], lines[0]
    assert "daemon started" not in p.stdout


def _cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "ckptwatch", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=daemon_env(),
        cwd=str(ROOT),
        check=False,
    )


def _good_config(tmp_path: Path, listen: str = "127.0.0.1:0") -> Path:
    path = tmp_path / "good.toml"
    path.write_text(
        f"[daemon]\nlisten = '{listen}'\nstate_dir = '{tmp_path / 'state'}'\nlog_format = 'json'\n"
        f"[[watch]]\nname = 'a'\npath = '{tmp_path / 'run'}'\n"
    )
    return path


def test_bad_listen_flag_exits_2_naming_the_flag(tmp_path):
    p = _cli(tmp_path, "watch", "--config", str(_good_config(tmp_path)), "--listen", "localhost")
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    assert "daemon.listen" in lines[0] and "--listen" in lines[0], lines[0]


def test_listen_address_in_use_exits_75_so_systemd_retries(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        p = _cli(tmp_path, "watch", "--config", str(_good_config(tmp_path, f"127.0.0.1:{port}")))
    errors = [line for line in p.stderr.strip().splitlines()]
    assert p.returncode == 75, (p.returncode, p.stdout, p.stderr)  # EX_TEMPFAIL: not in RestartPreventExitStatus
    assert len(errors) == 1 and f"127.0.0.1:{port}" in errors[0] and "Traceback" not in p.stderr, p.stderr
    assert '"daemon started"' not in p.stdout and '"worker started"' not in p.stdout, p.stdout


def test_main_process_never_loads_tensorflow(tf, daemon_factory, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    _good_then_corrupt(tf, d, run, tmp_path / "staging")
    maps = Path(f"/proc/{d.pid}/maps").read_text()
    libs = {line.split()[-1] for line in maps.splitlines() if len(line.split()) >= 6 and "/" in line.split()[-1]}
    assert any("python" in lib for lib in libs), "sanity: the interpreter itself is mapped"
    tf_libs = sorted(lib for lib in libs if "tensorflow" in lib.lower() or "pywrap_tensorflow" in lib)
    assert not tf_libs, tf_libs
    # the worker reads bundles without TF too; numba (llvmlite) stays in the worker
    llvm = sorted(lib for lib in libs if "llvmlite" in lib or "libllvm" in lib.lower())
    assert not llvm, llvm
    worker_maps = Path(f"/proc/{d.workers()[0].pid}/maps").read_text()
    assert "llvmlite" in worker_maps, "sanity: the worker does load numba's kernels"


class NotifyListener:
    """A bound AF_UNIX datagram socket standing in for systemd's: every sd_notify message with
    the time it arrived and the sender's pid (SCM_CREDENTIALS), read by a thread."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="ckw-", dir="/tmp")  # AF_UNIX paths are short
        self.address = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, list[str], int | None]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        size = socket.CMSG_SPACE(struct.calcsize("3i"))
        while not self._stop.is_set():
            try:
                data, ancdata, _flags, _addr = self.sock.recvmsg(4096, size)
            except TimeoutError:
                continue
            except OSError:
                return
            pid = None
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                    pid = struct.unpack("3i", payload[: struct.calcsize("3i")])[0]
            self.got.append((time.monotonic(), data.decode().splitlines(), pid))

    def messages(self, line: str) -> list[tuple[float, list[str], int | None]]:
        return [g for g in list(self.got) if line in g[1]]

    def wait(self, done, timeout: float) -> None:
        wait_until(done, timeout, "sd_notify", context=lambda: f"got only {[g[1] for g in self.got]}")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.address)
        os.rmdir(self.dir)


def test_sd_notify_ready_watchdog_stopping(daemon_factory, tmp_path, big_checkpoint):
    run = tmp_path / "run"
    run.mkdir()
    listener = NotifyListener()
    try:
        d = daemon_factory(
            [{"name": "run", "path": str(run)}], env={"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "1000000"}
        )

        def pings() -> list[float]:
            return [t for t, _, _ in listener.messages("WATCHDOG=1")]

        listener.wait(lambda: listener.messages("READY=1") and len(pings()) >= 3, timeout=15)
        (ready,) = listener.messages("READY=1")
        assert ready[2] == d.pid, "READY=1 comes from the main process (NotifyAccess=main)"

        # pings keep coming while the worker verifies a big checkpoint
        big = install(big_checkpoint, run, "ckpt-1")
        started = d.wait_for("verification started", checkpoint=big)["_t"]
        with paused(d.workers()[0]):  # a job that lasts 1.5 s
            time.sleep(1.5)
        finished = outcome(d, big, timeout=60)
        assert finished["verdict"] == "pass"
        listener.wait(lambda: pings()[-1] > finished["_t"], timeout=5)
        gaps = [b - a for a, b in zip(pings(), pings()[1:])]
        assert max(gaps) < 1.0, f"watchdog pings must come faster than WATCHDOG_USEC (1 s): {gaps}"
        assert len([t for t in pings() if started <= t <= finished["_t"]]) >= 2, "no pings while a job ran"

        d.signal(signal.SIGTERM)
        listener.wait(lambda: listener.messages("STOPPING=1"), timeout=10)
        (stopping,) = listener.messages("STOPPING=1")
        assert stopping[2] == d.pid
        assert d.stop() == 0
        assert all(pid == d.pid for _, _, pid in listener.got), "only the main process notifies"
    finally:
        listener.close()


def test_an_unscannable_watch_directory_is_reported_once_and_the_others_go_on(tf, daemon_factory, tmp_path):
    loop = tmp_path / "loop"
    loop.symlink_to(loop)  # scandir fails with ELOOP (run as root, nothing is merely unreadable)
    run = tmp_path / "run"
    run.mkdir()
    watches = [{"name": "loop", "path": str(loop)}, {"name": "run", "path": str(run)}]
    d = daemon_factory(watches, daemon={"poll_interval": 0.2})
    src = tf.train.Checkpoint(v=tf.Variable(tf.range(100.0))).write(str(tmp_path / "src" / "ckpt-1"))
    good = install(src, run, "ckpt-1", staging=tmp_path / "staging")
    assert outcome(d, good)["verdict"] in GOOD
    time.sleep(1.0)  # five more rescans of each watch
    problems = d.events("cannot scan the watch directory")
    assert [p["watch"] for p in problems] == ["loop"], problems
    assert "Too many levels of symbolic links" in problems[0]["error"]
    assert d.running() and not d.events("rescan failed")
