"""systemd/ckptwatch.service and ckptwatch@.service: `systemd-analyze verify`, and the daemon started
the way systemd starts it (the unit's ExecStart, Environment=, WorkingDirectory=, State/CacheDirectory=,
NOTIFY_SOCKET, WATCHDOG_USEC/WATCHDOG_PID) speaking sd_notify to a real datagram socket."""

from __future__ import annotations

import itertools
import re
import shlex
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.tools import wait_until

from .conftest import ROOT, VENV_BIN, clean_env, require_tool, write_config

SYSTEMD = ROOT / "systemd"
INSTALLED_BIN = "/opt/ckptwatch/venv/bin/ckptwatch"
# (unit file, instance, the config path in its ExecStart)
UNITS = [
    ("ckptwatch.service", None, "/etc/ckptwatch/config.toml"),
    ("ckptwatch@.service", "job1", "/etc/ckptwatch/job1.toml"),
]


def parse_unit(text: str) -> dict[str, list[tuple[str, str]]]:
    """{section: [(key, value), ...]} in order, keys repeated as written."""
    sections: dict[str, list[tuple[str, str]]] = {}
    current = None
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line[0] in "#;"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
            continue
        assert current is not None, line
        key, sep, value = line.partition("=")
        assert sep, line
        current.append((key.strip(), value.strip()))
    return sections


def values(unit: dict, key: str, section: str = "Service") -> list[str]:
    return [v for k, v in unit[section] if k == key]


def single(unit: dict, key: str, section: str = "Service") -> str:
    found = values(unit, key, section)
    assert len(found) == 1, (key, found)
    return found[0]


def expand(value: str, instance: str | None, state: Path, cache: Path) -> str:
    """systemd's specifiers used by our units (system manager): %S, %C, %i, %%."""
    table = {"S": str(state), "C": str(cache), "i": instance or "", "%": "%"}

    def sub(m: re.Match) -> str:
        assert m.group(1) in table, f"specifier %{m.group(1)} not handled by this test"
        return table[m.group(1)]

    return re.sub(r"%(.)", sub, value)


def seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|min|m)?", value)
    assert m, value
    return float(m.group(1)) * {"ms": 0.001, "s": 1, None: 1, "min": 60, "m": 60}[m.group(2)]


@pytest.fixture(params=UNITS, ids=[u[0] for u in UNITS])
def unit(request):
    name, instance, config_path = request.param
    return name, instance, config_path, parse_unit((SYSTEMD / name).read_text())


# -- systemd-analyze verify ---------------------------------------------------------------------------


def verify(path: Path) -> subprocess.CompletedProcess:
    analyze = require_tool("systemd-analyze", "Debian package `systemd`")
    return subprocess.run(
        [analyze, "verify", "--man=no", str(path)], capture_output=True, text=True, timeout=60, check=False
    )


def installable_copy(name: str, instance: str | None, tmp_path: Path, text: str | None = None) -> Path:
    """The unit as installed, with ExecStart's binary where this checkout has it (verify checks it is
    executable); a template is verified as an instance, the way it runs."""
    text = (SYSTEMD / name).read_text() if text is None else text
    assert INSTALLED_BIN in text
    target = tmp_path / (name.replace("@.", f"@{instance}.") if instance else name)
    target.write_text(text.replace(INSTALLED_BIN, str(VENV_BIN / "ckptwatch")))
    return target


def test_systemd_analyze_verify_is_clean(unit, tmp_path: Path):
    name, instance, _, _ = unit
    p = verify(installable_copy(name, instance, tmp_path))
    assert (p.returncode, p.stdout, p.stderr) == (0, "", ""), p.stdout + p.stderr
    if instance:  # the bare template too
        p = verify(installable_copy(name, None, tmp_path))
        assert (p.returncode, p.stderr) == (0, ""), p.stderr


@pytest.mark.parametrize(
    "breakage",
    [("ProtectSystem=strict", "ProtectSytem=strict"), ("WatchdogSec=60s", "WatchdogSec=a minute")],
    ids=["unknown-key", "bad-value"],
)
def test_systemd_analyze_verify_catches_mistakes(breakage, tmp_path: Path):
    """The check above can fail: a misspelt key and an unparsable value are reported."""
    text = (SYSTEMD / "ckptwatch.service").read_text()
    assert breakage[0] in text
    p = verify(installable_copy("ckptwatch.service", None, tmp_path, text.replace(breakage[0], breakage[1])))
    assert p.stderr.strip(), p


# -- what the units promise -------------------------------------------------------------------------------


def test_unit_contract(unit):
    _, instance, config_path, u = unit
    assert single(u, "Type") == "notify"
    assert single(u, "NotifyAccess") == "main"
    assert single(u, "Restart") == "on-failure"
    assert seconds(single(u, "WatchdogSec")) >= 10
    assert shlex.split(single(u, "ExecStart")) == [
        INSTALLED_BIN, "watch", "--config", config_path.replace(instance or "@@", "%i")
    ]  # fmt: skip
    state = single(u, "StateDirectory")
    assert state == ("ckptwatch/%i" if instance else "ckptwatch")
    assert single(u, "DynamicUser") == "yes"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "ProtectSystem"):
        assert values(u, key), key
    assert single(u, "ProtectSystem") == "strict"
    assert single(u, "DevicePolicy") == "closed"
    allowed = {v.split()[0] for v in values(u, "DeviceAllow")}
    assert {"/dev/nvidiactl", "/dev/nvidia-uvm", "char-nvidia-frontend"} <= allowed
    assert values(u, "ReadOnlyPaths")
    assert not values(u, "MemoryDenyWriteExecute"), "numba's JIT needs writable+executable memory"
    assert not values(u, "PrivateDevices"), "it would hide /dev/nvidia*"
    assert single(u, "WantedBy", "Install") == "multi-user.target"


def test_template_differs_only_by_instance():
    plain = parse_unit((SYSTEMD / "ckptwatch.service").read_text())["Service"]
    template = parse_unit((SYSTEMD / "ckptwatch@.service").read_text())["Service"]
    untemplated = [(k, v.replace("/%i.toml", "/config.toml").replace("/%i", "")) for k, v in template]
    assert untemplated == plain


def test_restart_prevent_exit_status_is_the_config_error_code(unit, tmp_path: Path):
    """A broken config exits with RestartPreventExitStatus: systemd does not restart it in a loop."""
    _, _, config_path, u = unit
    prevent = {int(x) for x in single(u, "RestartPreventExitStatus").split()}
    bad = tmp_path / "bad.toml"
    bad.write_text('[daemon]\nlisten = "nowhere"\n')
    argv = [str(bad) if a == config_path else a for a in shlex.split(single(u, "ExecStart"))]
    argv[0] = str(VENV_BIN / "ckptwatch")
    p = subprocess.run(argv, env=clean_env(), capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode in prevent, (p.returncode, p.stderr)
    assert p.stderr.count("\n") == 1 and "Traceback" not in p.stderr, p.stderr


# -- run it as systemd would ---------------------------------------------------------------------------------


class NotifySocket:
    """A bound AF_UNIX datagram socket standing in for systemd's; collects (time, message)."""

    def __init__(self, path: Path):
        if len(str(path)) > 100:
            pytest.skip("tmp_path too long for an AF_UNIX socket path")
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self._stop = False
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:
                return
            self.messages.append((time.monotonic(), data.decode("utf-8")))

    def wait(self, predicate, timeout: float, what: str) -> list[tuple[float, str]]:
        return wait_until(
            lambda: [m for m in list(self.messages) if predicate(m[1])],
            timeout,
            what,
            context=lambda: f"got {self.messages}",
        )

    def close(self) -> None:
        self._stop = True
        self._thread.join(2)
        self.sock.close()


def test_daemon_under_the_unit_notifies_systemd(unit, daemons, tmp_path: Path):
    _, instance, config_path, u = unit
    state_root, cache_root = tmp_path / "var-lib", tmp_path / "var-cache"
    state_dir = state_root / expand(single(u, "StateDirectory"), instance, state_root, cache_root)
    cache_dir = cache_root / expand(single(u, "CacheDirectory"), instance, state_root, cache_root)
    state_dir.mkdir(parents=True)  # systemd creates them before ExecStart
    cache_dir.mkdir(parents=True)
    config = write_config(tmp_path / "config.toml", tmp_path / "ckpts", tmp_path / "config-state-dir")

    argv = [expand(a, instance, state_root, cache_root) for a in shlex.split(single(u, "ExecStart"))]
    assert argv[0] == INSTALLED_BIN and config_path in argv
    argv = [str(VENV_BIN / "ckptwatch") if a == INSTALLED_BIN else str(config) if a == config_path else a for a in argv]

    env = clean_env({"STATE_DIRECTORY": str(state_dir), "CACHE_DIRECTORY": str(cache_dir)})
    for line in values(u, "Environment"):
        for item in shlex.split(line):
            key, _, value = item.partition("=")
            env[key] = expand(value, instance, state_root, cache_root)
    notify = NotifySocket(tmp_path / "notify.sock")
    env.update(NOTIFY_SOCKET=str(notify.path), WATCHDOG_USEC="2000000")  # WatchdogSec=2s: a ping every second
    cwd = Path(expand(single(u, "WorkingDirectory"), instance, state_root, cache_root))
    try:
        # WATCHDOG_PID is the main PID: the shell's $$ is the daemon's PID after exec
        daemon = daemons(["sh", "-c", 'WATCHDOG_PID=$$ exec "$@"', "sh", *argv], env, cwd=cwd)
        started = daemon.wait_for("daemon started")
        assert started["state_dir"] == str(state_dir), started  # the unit's CKPTWATCH_STATE_DIR wins
        ready = notify.wait(lambda m: "READY=1" in m.split("\n"), 30, "READY=1")
        assert "STATUS=watching 1 directories" in ready[0][1].split("\n")
        if instance is None:  # the template's paths differ only by %i (test_template_differs_only_by_instance)
            daemon.wait_for("worker ready", timeout=120)  # it compiled numba's kernels: the cache is written

        notify.wait(lambda m: m == "WATCHDOG=1", 10, "WATCHDOG=1")
        time.sleep(2.5)
        pings = [t for t, m in notify.messages if m == "WATCHDOG=1"]
        assert len(pings) >= 3, notify.messages
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert max(gaps) < 2.0, gaps  # systemd kills the service after WATCHDOG_USEC without one

        # ExecReload
        reload_argv = [a.replace("$MAINPID", str(daemon.pid)) for a in shlex.split(single(u, "ExecReload"))]
        subprocess.run(reload_argv, check=True, timeout=10)
        daemon.wait_for("config reloaded", timeout=30)

        # where the unit said: state in StateDirectory, numba's kernel cache in CacheDirectory
        assert (state_dir / "state.sqlite3").is_file()
        assert Path(env["NUMBA_CACHE_DIR"]).is_relative_to(cache_dir)
        if instance is None:
            assert list(Path(env["NUMBA_CACHE_DIR"]).rglob("*.nbi")), "numba cache not under CacheDirectory"
        assert not (tmp_path / "config-state-dir").exists()

        t0 = time.monotonic()
        assert daemon.stop(signal.SIGTERM, timeout=seconds(single(u, "TimeoutStopSec"))) == 0, daemon.tail()
        assert time.monotonic() - t0 < 10
        notify.wait(lambda m: m == "STOPPING=1", 5, "STOPPING=1")
        order = [m for _, m in notify.messages if m != "WATCHDOG=1"]
        assert order[0].startswith("READY=1") and order[-1] == "STOPPING=1", order
    finally:
        notify.close()
