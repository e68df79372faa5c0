"""End-to-end harness: `ckptwatch watch` as a real subprocess on real directories.

Nothing is mocked. The daemon runs as `python -m ckptwatch watch --config FILE` with a TOML
config written into tmp_path; its JSON log lines are collected by a reader thread; HTTP
requests go over a real socket to the port it reports in "daemon started"; checkpoints are
written by TensorFlow's own writers (CheckpointManager, Checkpoint.write) in the test process.

    DaemonProc            one daemon: start(), wait_for(event, timeout, after=, **fields),
                          events(), mark(), get(path), api(), full_report(summary), metric(name, **labels),
                          signal(), stop(), workers()
    daemon_factory        make(watches=[...], daemon={...}, worker={...}) -> a started DaemonProc;
                          every daemon made is stopped at teardown (killed if it must be) and
                          no worker process of it may remain
    Trainer               a small tf.Module "training run" saved with CheckpointManager
    big_checkpoint        a ~256 MB TF bundle (session-scoped) to keep a worker busy
    paused(worker)        SIGSTOP ... SIGCONT: a job in flight lasts as long as a test needs
    install(...)          copy a bundle into a watched directory the way TF commits one
                          (data shards first, the index last, by rename)
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import contextlib
import json
import shutil
import signal as signals
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.tools import log_event, wait_until

ROOT = Path(__file__).resolve().parents[2]

# the log events that mean the daemon is done with a checkpoint
DONE_EVENTS = ("checkpoint verified", "checkpoint skipped")
GOOD = ("pass", "warn")


# -- TOML -------------------------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, (str, Path)):
        return json.dumps(str(value))  # a TOML basic string: JSON escapes are valid TOML escapes
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {value!r} as TOML")


def _toml_table(header: str, table: dict[str, Any]) -> list[str]:
    lines = [header]
    subtables = []
    for k, v in table.items():
        if isinstance(v, dict):
            subtables.append((k, v))
        elif v is not None:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in subtables:
        name = header.strip("[]")
        lines += ["", *_toml_table(f"[{name}.{k}]", v)]
    return lines


def toml_dumps(daemon: dict, worker: dict, watches: list[dict]) -> str:
    lines = [*_toml_table("[daemon]", daemon), "", *_toml_table("[worker]", worker)]
    for w in watches:
        lines += ["", *_toml_table("[[watch]]", w)]
    return "\n".join(lines) + "\n"


# -- the daemon process -----------------------------------------------------------------------------


def daemon_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CKPTWATCH_", "NOTIFY_SOCKET", "WATCHDOG_"))}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    env.update(extra or {})
    return env


def _matches(event: dict, name: str | None, fields: dict[str, Any]) -> bool:
    if name is not None and event.get("event") != name:
        return False
    for k, want in fields.items():
        got = event.get(k)
        if callable(want):
            if not want(got):
                return False
        elif got != want:
            return False
    return True


class DaemonProc:
    """One `ckptwatch watch` process and what it said."""

    def __init__(
        self,
        home: Path,
        watches: list[dict],
        daemon: dict | None = None,
        worker: dict | None = None,
        env: dict[str, str] | None = None,
    ):
        self.home = home
        home.mkdir(parents=True, exist_ok=True)
        self.config_path = home / "ckptwatch.toml"
        self.state_dir = home / "state"
        self.daemon_cfg = {
            "listen": "127.0.0.1:0",
            "state_dir": str(self.state_dir),
            "log_format": "json",
            "poll_interval": 0.2,
            "settle_seconds": 0.5,
            "termination_log": "",  # never the real /dev/termination-log of a CI pod
            **(daemon or {}),
        }
        self.worker_cfg = {"devices": ["cpu"], "restart_backoff": 0.2, "restart_backoff_max": 1.0, **(worker or {})}
        self.watches = [dict(w) for w in watches]
        self.env = env or {}
        self.proc: subprocess.Popen | None = None
        self.lines: list[dict] = []
        self.stderr: list[str] = []
        self._cond = threading.Condition()
        self._threads: list[threading.Thread] = []
        self.port: int | None = None
        self.started_event: dict | None = None
        self.seen_workers: dict[int, psutil.Process] = {}
        self.returncode: int | None = None
        self._stop_sent = False

    # -- config -----------------------------------------------------------------------------------

    def write_config(self, text: str | None = None) -> Path:
        """Write the config (or `text` verbatim, e.g. a broken one for a SIGHUP test)."""
        if text is None:
            text = toml_dumps(self.daemon_cfg, self.worker_cfg, self.watches)
        tmp = self.config_path.with_name(self.config_path.name + ".new")
        tmp.write_text(text)
        os.replace(tmp, self.config_path)
        return self.config_path

    # -- start and stop ---------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, ready: bool = True, timeout: float = 60) -> DaemonProc:
        """Start the daemon; wait for "daemon started" (and "worker ready" when `ready`)."""
        if not self.config_path.exists():
            self.write_config()
        self.lines, self.stderr = [], []
        self._stop_sent = False
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ckptwatch", "watch", "--config", str(self.config_path)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=daemon_env(self.env),
            cwd=str(self.home),
        )
        self.returncode = None
        self._threads = [
            threading.Thread(target=self._read_stdout, args=(self.proc,), daemon=True),
            threading.Thread(target=self._read_stderr, args=(self.proc,), daemon=True),
        ]
        for t in self._threads:
            t.start()
        self.started_event = self.wait_for("daemon started", timeout)
        self.port = int(self.started_event["listen"].rsplit(":", 1)[1])
        if ready:
            self.wait_for("worker ready", timeout)
        self.workers()  # remember them, to check at teardown that none is left behind
        return self

    def _read_stdout(self, proc: subprocess.Popen) -> None:
        assert proc.stdout is not None
        for raw in proc.stdout:
            event = log_event(raw)
            event["_t"] = time.monotonic()
            with self._cond:
                self.lines.append(event)
                self._cond.notify_all()
        with self._cond:
            self._cond.notify_all()

    def _read_stderr(self, proc: subprocess.Popen) -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            self.stderr.append(raw.decode("utf-8", "replace").rstrip("\n"))

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.workers()
        self.proc.send_signal(sig)
        if sig in (signals.SIGTERM, signals.SIGINT):
            self._stop_sent = True

    def stop(self, sig: int = signals.SIGTERM, timeout: float = 10.0) -> int:
        """Send `sig` (unless signal() already sent a stop signal: systemd and Kubernetes send one)
        and wait for the exit; returns the exit code (AssertionError past `timeout`)."""
        assert self.proc is not None
        if self.proc.poll() is None and not self._stop_sent:
            self.workers()
            self.proc.send_signal(sig)
            self._stop_sent = True
        try:
            self.returncode = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"the daemon did not exit within {timeout} s of {signals.Signals(sig).name}") from None
        for t in self._threads:
            t.join(5)
        return self.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            self.proc.wait(10)
        for t in self._threads:
            t.join(5)

    def workers(self) -> list[psutil.Process]:
        """The daemon's live worker processes (`python -m ckptwatch.worker`)."""
        if not self.running():
            return []
        found = []
        try:
            children = psutil.Process(self.pid).children()
        except psutil.NoSuchProcess:
            return []
        for child in children:
            try:
                cmd = child.cmdline()
            except (psutil.NoSuchProcess, psutil.ZombieProcess):
                continue
            if "ckptwatch.worker" in cmd:
                self.seen_workers.setdefault(child.pid, child)
                found.append(child)
        return found

    def stray_workers(self) -> list[psutil.Process]:
        """Workers of this daemon still running (call after it exited)."""
        left = []
        for p in self.seen_workers.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
        return left

    # -- the log ------------------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the log: wait_for(..., after=mark) only looks at later events."""
        with self._cond:
            return len(self.lines)

    def events(self, name: str | None = None, after: int = 0, **fields: Any) -> list[dict]:
        with self._cond:
            return [e for e in self.lines[after:] if _matches(e, name, fields)]

    def wait_for(self, name: str | None, timeout: float = 30.0, after: int = 0, **fields: Any) -> dict:
        """The first event `name` (from position `after`) whose fields match; a field's
        expected value may be a predicate. AssertionError (with the log's tail) on timeout
        or if the daemon exits first."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for e in self.lines[after:]:
                    if _matches(e, name, fields):
                        return e
                left = deadline - time.monotonic()
                exited = self.proc is not None and self.proc.poll() is not None and not self._threads[0].is_alive()
                if left <= 0 or exited:
                    why = "the daemon exited" if exited else f"{timeout} s passed"
                    raise AssertionError(f"no {name!r} event matching {fields} ({why}); log tail:\n{self.tail()}")
                self._cond.wait(min(left, 0.5))

    def wait_until(self, predicate: Callable[[], Any], timeout: float = 30.0, what: str = "condition") -> Any:
        """Poll `predicate` (e.g. over HTTP) until it returns something truthy."""
        return wait_until(
            predicate,
            timeout,
            what,
            give_up=lambda: None if self.running() else "the daemon exited",
            context=lambda: f"log tail:\n{self.tail()}",
        )

    def tail(self, n: int = 40) -> str:
        with self._cond:
            lines = self.lines[-n:]
        out = [json.dumps({k: v for k, v in e.items() if k not in ("_t", "timestamp")})[:400] for e in lines]
        return "\n".join([*out, "-- stderr --", *self.stderr[-15:]])

    # -- HTTP -----------------------------------------------------------------------------------------

    def get(self, path: str, timeout: float = 10.0) -> tuple[int, str]:
        """(status, body) of a real HTTP GET."""
        try:
            with urllib.request.urlopen(self.url + path, timeout=timeout) as r:
                return r.status, r.read().decode("utf-8", "replace")
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode("utf-8", "replace")

    def api(self, watch: str | None = None, limit: int = 1000, verdict: str | None = None) -> list[dict]:
        """Summaries of the stored reports (newest first), from /api/v1/checkpoints."""
        query = f"?limit={limit}" + (f"&watch={watch}" if watch else "") + (f"&verdict={verdict}" if verdict else "")
        status, body = self.get("/api/v1/checkpoints" + query)
        assert status == 200, body
        return json.loads(body)["checkpoints"]

    def full_report(self, summary: dict) -> dict:
        """The full report of a summary from api(), from /api/v1/checkpoints/{id}."""
        status, body = self.get(f"/api/v1/checkpoints/{summary['id']}")
        assert status == 200, body
        return json.loads(body)["checkpoint"]["report"]

    def scrape(self) -> str:
        status, body = self.get("/metrics")
        assert status == 200, body
        return body

    def metric(self, name: str, _text: str | None = None, **labels: str) -> float | None:
        """The value of sample `name` with these labels, from a real /metrics scrape; when
        several series match the given labels their sum; None when none does."""
        text = self.scrape() if _text is None else _text
        total, found = 0.0, False
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
                    found = True
        return total if found else None


@pytest.fixture
def daemon_factory(tmp_path: Path) -> Iterator[Callable[..., DaemonProc]]:
    """make(watches, daemon=None, worker=None, env=None, start=True, ready=True, home=None)."""
    made: list[DaemonProc] = []

    def make(
        watches: list[dict],
        daemon: dict | None = None,
        worker: dict | None = None,
        env: dict[str, str] | None = None,
        start: bool = True,
        ready: bool = True,
        home: Path | None = None,
    ) -> DaemonProc:
        d = DaemonProc(home or tmp_path / f"daemon{len(made)}", watches, daemon, worker, env)
        made.append(d)
        if start:
            d.start(ready=ready)
        return d

    yield make

    problems = []
    for d in made:
        if d.proc is None:
            continue
        if d.running():
            try:
                d.stop(timeout=10)
            except AssertionError as e:
                problems.append(str(e))
                d.kill()
        else:
            d.kill()  # reaps, joins the readers
        for p in d.stray_workers():
            problems.append(f"worker pid {p.pid} ({' '.join(p.cmdline())}) outlived its daemon")
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
    assert not problems, "; ".join(problems)


# -- checkpoints ------------------------------------------------------------------------------------


# `tf` (the tensorflow module, session-scoped) comes from tests/conftest.py


_NET: dict[str, type] = {}


def _net_class(tf) -> type:
    """A tf.Module with a few small float tensors (~3 KB), every one of which trains; with
    `big=(n, elements)`, n more float32 tensors of that many elements each."""
    if "Net" not in _NET:

        class Net(tf.Module):
            def __init__(self, seed: int, big: tuple[int, int] = (0, 0)):
                super().__init__()
                self.embedding = tf.Variable(tf.random.stateless_normal([32, 8], seed=[seed, 0]))
                self.kernel = tf.Variable(tf.random.stateless_normal([8, 16], seed=[seed, 1]))
                self.bias = tf.Variable(tf.random.stateless_normal([16], seed=[seed, 2]))
                self.head = tf.Variable(tf.random.stateless_normal([16, 4], seed=[seed, 3]))
                if big[0]:
                    self.big = [
                        tf.Variable(tf.random.stateless_normal([big[1]], seed=[seed, 10 + i])) for i in range(big[0])
                    ]

        _NET["Net"] = Net
    return _NET["Net"]


class Trainer:
    """A "training run": a small module, a step that moves every weight a little (a pass
    against the previous checkpoint), saved with CheckpointManager into `directory`."""

    def __init__(
        self, tf, directory: Path | str, max_to_keep: int | None = None, seed: int = 0, big: tuple[int, int] = (0, 0)
    ):
        self.tf = tf
        self.directory = str(directory)
        self.net = _net_class(tf)(seed, big)
        self.ckpt = tf.train.Checkpoint(model=self.net)
        self.manager = tf.train.CheckpointManager(self.ckpt, self.directory, max_to_keep=max_to_keep)
        self._rng = np.random.default_rng(seed)

    def step(self) -> None:
        for v in self.net.trainable_variables:
            v.assign_add(self._rng.normal(scale=0.01, size=v.shape).astype("float32"))

    def save(self, train: bool = True, number: int | None = None) -> str:
        if train:
            self.step()
        return self.manager.save(checkpoint_number=number)

    def write(self, prefix: Path | str, train: bool = True) -> str:
        """Checkpoint.write to `prefix` (no manager, no state file), e.g. outside the watch dir."""
        if train:
            self.step()
        return self.ckpt.write(str(prefix))

    def key_of(self, variable_name: str) -> str:
        return f"model/{variable_name}/.ATTRIBUTES/VARIABLE_VALUE"


@contextlib.contextmanager
def paused(process: psutil.Process) -> Iterator[None]:
    """SIGSTOP `process` (a worker in the middle of a job stays busy for as long as we need,
    whatever the machine's speed), SIGCONT it on the way out."""
    process.suspend()
    try:
        yield
    finally:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.resume()


def bundle_files(prefix: str | Path) -> list[Path]:
    prefix = Path(prefix)
    return sorted(
        f
        for f in prefix.parent.iterdir()
        if f.name.startswith(prefix.name + ".") and (f.name.endswith(".index") or ".data-" in f.name)
    )


def install(src_prefix: str | Path, dest_dir: Path, name: str, staging: Path | None = None) -> str:
    """Put a copy of the bundle `src_prefix` into `dest_dir` as `name`, committed the way TF
    commits one: data shards first, the index last, each appearing at once by rename from a
    staging directory outside `dest_dir`. Returns the new prefix."""
    src_prefix = Path(src_prefix)
    staging = staging or dest_dir.parent / f".staging-{dest_dir.name}"
    staging.mkdir(parents=True, exist_ok=True)
    dest_dir.mkdir(parents=True, exist_ok=True)
    files = bundle_files(src_prefix)
    files.sort(key=lambda f: f.name.endswith(".index"))  # the index last
    for f in files:
        new_name = name + f.name[len(src_prefix.name) :]
        tmp = staging / new_name
        shutil.copyfile(f, tmp)
        os.replace(tmp, dest_dir / new_name)
    return str(dest_dir / name)


def flip_byte_in_tensor(tf, prefix: str, key: str) -> int:
    """Flip one bit in the middle of tensor `key`'s bytes in the data shard (located with
    TF's reader, not ckptwatch's). Returns the file offset."""
    value = tf.train.load_checkpoint(prefix).get_tensor(key)
    raw = np.ascontiguousarray(value).tobytes()
    assert len(raw) >= 16, key
    for shard in (f for f in bundle_files(prefix) if ".data-" in f.name):
        data = bytearray(shard.read_bytes())
        at = bytes(data).find(raw)
        if at >= 0:
            assert bytes(data).find(raw, at + 1) < 0, "tensor bytes are not unique in the shard"
            offset = at + len(raw) // 2
            data[offset] ^= 0x40
            shard.write_bytes(bytes(data))
            return offset
    raise AssertionError(f"{key}: bytes not found in any data shard of {prefix}")


BIG_TENSORS = 4
BIG_ELEMENTS = 16 * 1024 * 1024  # float32: 64 MiB per tensor, 256 MiB in all


@pytest.fixture(scope="session")
def big_checkpoint(tf, tmp_path_factory: pytest.TempPathFactory) -> str:
    """A ~256 MiB TF bundle (4 float32 tensors): reading it keeps a worker busy for a while."""
    rng = np.random.default_rng(42)

    class Big(tf.Module):
        def __init__(self):
            super().__init__()
            self.weights = [
                tf.Variable(rng.standard_normal(BIG_ELEMENTS, dtype=np.float32)) for _ in range(BIG_TENSORS)
            ]

    d = tmp_path_factory.mktemp("big")
    return tf.train.Checkpoint(model=Big()).write(str(d / "big"))


def dir_state(directory: Path) -> dict[str, tuple]:
    """name -> (inode, size, mtime_ns) of every entry, plus the directory itself under "."."""
    out = {}
    st = os.stat(directory)
    out["."] = (st.st_ino, st.st_mtime_ns)
    for entry in os.scandir(directory):
        s = entry.stat(follow_symlinks=False)
        out[entry.name] = (s.st_ino, s.st_size, s.st_mtime_ns)
    return out


def report_of(d: DaemonProc, checkpoint: str) -> dict:
    """The stored report of `checkpoint`, from /api/v1/checkpoints (exactly one)."""
    rows = [r for r in d.api() if r["path"] == checkpoint]
    assert len(rows) == 1, f"{checkpoint}: {len(rows)} reports in /api/v1/checkpoints"
    return d.full_report(rows[0])


def outcome(d: DaemonProc, checkpoint: str, timeout: float = 30.0, after: int = 0) -> dict:
    """The "checkpoint verified" or "checkpoint skipped" event of `checkpoint`."""
    return d.wait_for(None, timeout, after, checkpoint=checkpoint, event=lambda e: e in DONE_EVENTS)
