"""The daemon's TOML config: defaults, every validation rule as ONE line that names the
file, the key path and the reason, paths resolved against the file, environment and
flag overrides, and a light import (the daemon's main process imports this module)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from ckptwatch.config import (
    ENV_OVERRIDES,
    Config,
    Policy,
    changes,
    describe,
    load_config,
    load_policy,
    override_daemon,
    parse_listen,
)
from ckptwatch.errors import UsageError

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "deploy" / "config.example.toml"
WATCH = '[[watch]]\nname = "a"\npath = "/data/runs/a"\n'


def write(tmp_path: Path, text: str, name: str = "ckptwatch.toml") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None, **kwargs) -> Config:
    return load_config(str(write(tmp_path, text)), env={} if env is None else env, **kwargs)


def error(tmp_path: Path, text: str, env: dict[str, str] | None = None, **kwargs) -> str:
    """The one-line message of the UsageError that loading `text` raises."""
    path = write(tmp_path, text)
    with pytest.raises(UsageError) as info:
        load_config(str(path), env={} if env is None else env, **kwargs)
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert_one_clean_line(message)
    return message[len(f"{path}: ") :]


def assert_one_clean_line(message: str) -> None:
    assert "\n" not in message and "\r" not in message, message
    for junk in ("Traceback", 'File "', "pydantic", "errors.pydantic.dev", "Value error,", "For further information"):
        assert junk not in message, message


# -- the example and the defaults -------------------------------------------------------------


def test_the_example_validates_and_shows_every_key() -> None:
    config = load_config(str(EXAMPLE), env={})
    assert [w.name for w in config.watches] == ["resnet50-run7", "resnet50-export"]
    assert config.source == str(EXAMPLE)
    text = EXAMPLE.read_text()
    for section, model in (("daemon", config.daemon), ("worker", config.worker), ("watch", config.watches[0])):
        for key in type(model).model_fields:
            if key in ("policy", "model"):
                assert f"\n[{section}.{key}]\n" in text, f"[{section}.{key}] is missing from the example"
                continue
            assert f"\n{key} = " in text, f"{section}.{key} is missing from the example"
    for key in set(Policy.model_fields) - {"profile", "overrides"}:
        assert f"\n{key} = " in text, f"watch.policy.{key} is missing from the example"
    for key in ("factory", "probe", "smoke_step", "golden_outputs", "python_path", "timeout"):
        assert f"\n{key} = " in text
    assert "[[watch.policy.overrides]]" in text
    replica = config.watch("resnet50-export").policy_model()
    assert replica.profile == "replica"


def test_defaults(tmp_path: Path) -> None:
    config = load(tmp_path, WATCH)
    d, w = config.daemon, config.worker
    assert (d.listen, d.host, d.port) == ("127.0.0.1:9847", "127.0.0.1", 9847)
    assert d.state_dir == "/var/lib/ckptwatch"
    assert (d.log_format, d.log_level, d.observer) == ("auto", "info", "auto")
    assert (d.poll_interval, d.settle_seconds, d.top_k_tensors, d.queue_limit) == (1.0, 2.0, 10, 8)
    assert (d.job_timeout, d.max_attempts, d.reports_kept) == (900.0, 3, 10000)
    assert d.liveness_timeout == 30.0
    assert (w.devices, w.threads, w.memory_limit_mb) == (["cpu"], 2, None)
    assert (w.heartbeat_interval, w.heartbeat_timeout, w.restart_backoff, w.restart_backoff_max) == (
        2.0,
        30.0,
        1.0,
        60.0,
    )
    (watch,) = config.watches
    assert (watch.name, watch.path, watch.golden, watch.profile, watch.publish_dir) == (
        "a",
        "/data/runs/a",
        None,
        "training",
        None,
    )
    assert (watch.include, watch.exclude, watch.policy, watch.model) == (["*"], [], None, None)
    assert watch.policy_model() == Policy()
    assert config.overridden == {}


def test_watch_lookup_policy_model_and_globs(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        WATCH + 'include = ["ckpt-*", "*.weights.h5"]\nexclude = ["*-tmp*"]\n'
        "[watch.policy]\nmax_jump = 2\n[[watch.policy.overrides]]\npattern = '*bias*'\natol = 0.1\n"
        '[[watch]]\nname = "b"\npath = "/data/b"\ngolden = "/g/ckpt-1"\nprofile = "replica"\n',
    )
    a = config.watch("a")
    policy = a.policy_model()
    assert type(policy) is Policy and not isinstance(a.policy, Policy)  # only policy_model() goes to the verifier
    assert (policy.profile, policy.max_jump, policy.overrides[0].atol) == ("training", 2.0, 0.1)
    assert policy.settings_for("dense/bias", "dense/bias")["atol"] == 0.1
    assert config.watch("b").policy_model() == Policy(profile="replica")
    assert a.wants("/data/runs/a/ckpt-3") and a.wants("/data/runs/a/w.weights.h5")
    assert not a.wants("/data/runs/a/ckpt-3-tmp1") and not a.wants("/data/runs/a/model.keras")
    with pytest.raises(KeyError, match="nope"):
        config.watch("nope")


def test_config_is_immutable(tmp_path: Path) -> None:
    config = load(tmp_path, WATCH)
    with pytest.raises(Exception, match="frozen"):
        config.daemon.listen = "0.0.0.0:1"  # type: ignore[misc]


def test_describe_is_one_line(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        '[worker]\ndevices = ["gpu:0", "gpu:1"]\n' + WATCH + '[[watch]]\nname = "b"\npath = "/data/b"\n',
        env={"CKPTWATCH_LISTEN": "0.0.0.0:9000"},
    )
    line = describe(config)
    assert line.startswith("2 watches (a, b), devices [gpu:0, gpu:1], listen 0.0.0.0:9000")
    assert "CKPTWATCH_LISTEN" in line and "\n" not in line


# -- every rule: one line, key path and reason ------------------------------------------------

CASES = [
    # (id, toml, expected start of the message after "FILE: ")
    (
        "unknown key",
        '[daemon]\nlisten_on = "1.2.3.4:1"\n' + WATCH,
        "daemon.listen_on: unknown key (did you mean listen?)",
    ),
    ("unknown section", "[deamon]\n" + WATCH, "deamon: unknown key (did you mean daemon?)"),
    ("unknown watch key", WATCH + 'glob = "x"\n', "watch.0.glob: unknown key"),
    ("unknown policy key", WATCH + "[watch.policy]\nmax_jumpp = 1.0\n", "watch.0.policy.max_jumpp: unknown key"),
    (
        "wrong type int",
        '[worker]\nthreads = "2"\n' + WATCH,
        'worker.threads: Input should be a valid integer (got string "2")',
    ),
    ("wrong type bool", WATCH + '[watch.model]\nfactory = "m:f"\nsmoke_step = "yes"\n', "watch.0.model.smoke_step:"),
    ("wrong type table", "daemon = 3\n" + WATCH, "daemon: must be a table (got integer 3)"),
    (
        "wrong type list",
        '[worker]\ndevices = "gpu:0"\n' + WATCH,
        'worker.devices: must be an array (got string "gpu:0")',
    ),
    ("bad device", '[worker]\ndevices = ["tpu:0"]\n' + WATCH, 'worker.devices.0: "tpu:0" is not a device'),
    ("bad gpu index", '[worker]\ndevices = ["cpu", "gpu:x"]\n' + WATCH, 'worker.devices.1: "gpu:x" is not a device'),
    (
        "duplicate device",
        '[worker]\ndevices = ["gpu:0", "gpu:0"]\n' + WATCH,
        'worker.devices.1: duplicate device "gpu:0"',
    ),
    ("duplicate cpu", '[worker]\ndevices = ["cpu", "cpu"]\n' + WATCH, 'worker.devices.1: duplicate device "cpu"'),
    ("no devices", "[worker]\ndevices = []\n" + WATCH, "worker.devices: must not be empty"),
    ("threads", "[worker]\nthreads = 0\n" + WATCH, "worker.threads: Input should be greater than or equal to 1"),
    (
        "memory limit",
        "[worker]\nmemory_limit_mb = 0\n" + WATCH,
        "worker.memory_limit_mb: Input should be greater than 0",
    ),
    (
        "heartbeat timeout",
        "[worker]\nheartbeat_interval = 5.0\nheartbeat_timeout = 5.0\n" + WATCH,
        "worker.heartbeat_timeout: must be greater than heartbeat_interval (5)",
    ),
    (
        "heartbeat timeout default",
        "[worker]\nheartbeat_interval = 45.0\n" + WATCH,
        "worker.heartbeat_timeout: must be greater than heartbeat_interval (45)",
    ),
    (
        "backoff max",
        "[worker]\nrestart_backoff = 10.0\nrestart_backoff_max = 5.0\n" + WATCH,
        "worker.restart_backoff_max: must be at least restart_backoff (10)",
    ),
    ("listen no port", '[daemon]\nlisten = "localhost"\n' + WATCH, 'daemon.listen: "localhost" is not HOST:PORT'),
    ("listen port range", '[daemon]\nlisten = "127.0.0.1:70000"\n' + WATCH, 'daemon.listen: "70000" is not a port'),
    ("listen port text", '[daemon]\nlisten = "127.0.0.1:http"\n' + WATCH, 'daemon.listen: "http" is not a port'),
    (
        "listen ipv6",
        '[daemon]\nlisten = "::1:9847"\n' + WATCH,
        'daemon.listen: "::1:9847": an IPv6 address goes in brackets',
    ),
    (
        "listen bad ipv6",
        '[daemon]\nlisten = "[fe::zz]:80"\n' + WATCH,
        'daemon.listen: "fe::zz" in brackets is not an IPv6',
    ),
    (
        "listen bad ipv4",
        '[daemon]\nlisten = "300.1.1.1:80"\n' + WATCH,
        'daemon.listen: "300.1.1.1" is not an IPv4 address',
    ),
    ("listen no host", '[daemon]\nlisten = ":9847"\n' + WATCH, 'daemon.listen: ":9847" has no HOST'),
    ("listen bad host", '[daemon]\nlisten = "my_host!:80"\n' + WATCH, 'daemon.listen: "my_host!" is not a host name'),
    (
        "log format",
        '[daemon]\nlog_format = "jsn"\n' + WATCH,
        "daemon.log_format: Input should be 'auto', 'json' or 'console'",
    ),
    ("log level", '[daemon]\nlog_level = "loud"\n' + WATCH, "daemon.log_level: Input should be 'debug'"),
    (
        "observer",
        '[daemon]\nobserver = "fanotify"\n' + WATCH,
        "daemon.observer: Input should be 'auto', 'inotify' or 'polling'",
    ),
    ("poll interval", "[daemon]\npoll_interval = 0\n" + WATCH, "daemon.poll_interval: Input should be greater than 0"),
    (
        "poll interval inf",
        "[daemon]\npoll_interval = inf\n" + WATCH,
        "daemon.poll_interval: Input should be a finite number",
    ),
    (
        "settle",
        "[daemon]\nsettle_seconds = -1.0\n" + WATCH,
        "daemon.settle_seconds: Input should be greater than or equal to 0",
    ),
    (
        "top k",
        "[daemon]\ntop_k_tensors = 1000\n" + WATCH,
        "daemon.top_k_tensors: Input should be less than or equal to 100",
    ),
    (
        "queue limit",
        "[daemon]\nqueue_limit = 0\n" + WATCH,
        "daemon.queue_limit: Input should be greater than or equal to 1",
    ),
    ("job timeout", "[daemon]\njob_timeout = 0\n" + WATCH, "daemon.job_timeout: Input should be greater than 0"),
    (
        "liveness timeout",
        "[daemon]\nliveness_timeout = 0\n" + WATCH,
        "daemon.liveness_timeout: Input should be greater than 0",
    ),
    (
        "max attempts",
        "[daemon]\nmax_attempts = 0\n" + WATCH,
        "daemon.max_attempts: Input should be greater than or equal to 1",
    ),
    ("empty path", '[daemon]\nstate_dir = ""\n' + WATCH, "daemon.state_dir: must not be empty"),
    ("no watch", "[daemon]\n", "watch: at least one [[watch]] table is required"),
    (
        "watch not array",
        '[watch]\nname = "a"\npath = "/x"\n',
        "watch: write [[watch]] (an array of tables), not [watch]",
    ),
    ("missing name", '[[watch]]\npath = "/x"\n', "watch.0.name: required key is missing"),
    ("missing path", '[[watch]]\nname = "a"\n', "watch.0.path: required key is missing"),
    ("bad name", '[[watch]]\nname = "run 7"\npath = "/x"\n', 'watch.0.name: "run 7": use only letters, digits'),
    ("bad name braces", '[[watch]]\nname = "a{b}"\npath = "/x"\n', 'watch.0.name: "a{b}": use only letters'),
    (
        "duplicate names",
        WATCH + '[[watch]]\nname = "b"\npath = "/y"\n[[watch]]\nname = "a"\npath = "/z"\n',
        'watch.2.name: duplicate name "a" (also watch.0.name)',
    ),
    ("profile", WATCH + 'profile = "copy"\n', "watch.0.profile: Input should be 'training' or 'replica'"),
    ("replica without golden", WATCH + 'profile = "replica"\n', 'watch.0.golden: required with profile = "replica"'),
    (
        "publish_dir inside path",
        WATCH + 'publish_dir = "/data/runs/a/verified"\n',
        "watch.0.publish_dir: /data/runs/a/verified is inside its own path (/data/runs/a)",
    ),
    (
        "publish_dir is path",
        WATCH + 'publish_dir = "/data/runs/a"\n',
        "watch.0.publish_dir: /data/runs/a is its own path",
    ),
    (
        "path inside publish_dir",
        WATCH + 'publish_dir = "/data"\n',
        "watch.0.publish_dir: /data contains its own path (/data/runs/a)",
    ),
    (
        "publish_dir inside another watch",
        WATCH + 'publish_dir = "/pub/a"\n[[watch]]\nname = "b"\npath = "/pub"\n',
        "watch.0.publish_dir: /pub/a is inside watch.1.path (/pub)",
    ),
    (
        "same publish_dir",
        WATCH + 'publish_dir = "/pub/x"\n[[watch]]\nname = "b"\npath = "/y"\npublish_dir = "/pub/x/"\n',
        "watch.1.publish_dir: same directory as watch.0.publish_dir",
    ),
    (
        "state_dir inside a watch",
        '[daemon]\nstate_dir = "/data/runs/a/.ckptwatch"\n' + WATCH,
        "daemon.state_dir: /data/runs/a/.ckptwatch is inside watch.0.path (/data/runs/a)",
    ),
    (
        "glob with a path",
        WATCH + 'include = ["runs/ckpt-*"]\n',
        'watch.0.include.0: "runs/ckpt-*": globs match checkpoint names',
    ),
    ("empty include", WATCH + "include = []\n", "watch.0.include: must not be empty"),
    ("empty glob", WATCH + 'exclude = [""]\n', "watch.0.exclude.0: an empty glob matches nothing"),
    (
        "policy value",
        WATCH + "[watch.policy]\nmax_jump = -1.0\n",
        "watch.0.policy.max_jump: Input should be greater than or equal to 0",
    ),
    (
        "policy override",
        WATCH + "[[watch.policy.overrides]]\npattern = '*'\nrtol = -1.0\n",
        "watch.0.policy.overrides.0.rtol: Input should be greater than or equal to 0",
    ),
    (
        "policy type",
        WATCH + '[watch.policy]\nmax_jump = "big"\n',
        'watch.0.policy.max_jump: Input should be a valid number (got string "big")',
    ),
    (
        "policy profile",
        WATCH + '[watch.policy]\nprofile = "replica"\n',
        "watch.0.policy.profile: set profile on the watch itself",
    ),
    (
        "factory no colon",
        WATCH + '[watch.model]\nfactory = "mypkg.models.build"\n',
        'watch.0.model.factory: "mypkg.models.build" is not "module:function"',
    ),
    (
        "factory empty function",
        WATCH + '[watch.model]\nfactory = "mypkg:"\n',
        'watch.0.model.factory: "mypkg:" is not "module:function"',
    ),
    (
        "factory bad module",
        WATCH + '[watch.model]\nfactory = "my-pkg:build"\n',
        'watch.0.model.factory: "my-pkg:build" is not',
    ),
    (
        "model with neither factory nor probe",
        WATCH + "[watch.model]\nsmoke_step = true\n",
        "watch.0.model.probe: give a factory, a probe, or both",
    ),
    (
        "probe not npz",
        WATCH + '[watch.model]\nfactory = "m:f"\nprobe = "p.npy"\n',
        'watch.0.model.probe: must be a .npz file (numpy.savez), got "p.npy"',
    ),
    (
        "golden outputs without probe",
        WATCH + '[watch.model]\nfactory = "m:f"\ngolden_outputs = "o.npz"\n',
        "watch.0.model.golden_outputs: needs probe",
    ),
    (
        "two problems",
        "[daemon]\nqueue_limit = 0\nmax_attempts = 0\n" + WATCH,
        "daemon.queue_limit: Input should be greater than or equal to 1; "
        "daemon.max_attempts: Input should be greater than or equal to 1",
    ),
]


@pytest.mark.parametrize(("text", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_rule_names_the_key_and_the_reason(tmp_path: Path, text: str, expected: str) -> None:
    message = error(tmp_path, text)
    assert message.startswith(expected), message


def test_valid_listen_forms() -> None:
    assert parse_listen("[::1]:9847") == ("::1", 9847)
    assert parse_listen("0.0.0.0:0") == ("0.0.0.0", 0)
    assert parse_listen("metrics.internal:65535") == ("metrics.internal", 65535)
    assert parse_listen("[fe80::1%eth0]:80") == ("fe80::1%eth0", 80)


def test_lenient_spelling_is_normalised(tmp_path: Path) -> None:
    config = load(tmp_path, '[daemon]\nlog_level = "WARNING"\n[worker]\ndevices = ["GPU:01", "CPU"]\n' + WATCH)
    assert config.daemon.log_level == "warning" and config.worker.devices == ["gpu:1", "cpu"]


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(UsageError) as info:
        load_config(str(path), env={})
    assert str(info.value) == f"{path}: no such file"


def test_a_directory_is_not_a_config(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="is a directory"):
        load_config(str(tmp_path), env={})


def test_invalid_toml_names_the_line(tmp_path: Path) -> None:
    message = error(tmp_path, '[daemon]\nlisten = "127.0.0.1:9847"\nstate_dir = /var/lib\n' + WATCH)
    assert message.startswith("line 3, column 13: invalid TOML"), message


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes(b'# caf\xe9\n[[watch]]\nname = "a"\npath = "/x"\n')
    with pytest.raises(UsageError) as info:
        load_config(str(path), env={})
    assert str(info.value) == f"{path}: invalid TOML: not UTF-8 text"


# -- paths ------------------------------------------------------------------------------------


def test_relative_paths_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir("/")
    conf = tmp_path / "etc"
    config = load(
        conf,
        '[daemon]\nstate_dir = "state"\n[[watch]]\nname = "a"\npath = "../runs/a"\ngolden = "golden/ckpt-1"\n'
        'publish_dir = "./verified/a"\n[watch.model]\nfactory = "m:f"\nprobe = "probe.npz"\n'
        'golden_outputs = "out/g.npz"\n',
    )
    w = config.watches[0]
    assert config.daemon.state_dir == str(conf / "state")
    assert w.path == str(tmp_path / "runs" / "a")
    assert w.golden == str(conf / "golden" / "ckpt-1")
    assert w.publish_dir == str(conf / "verified" / "a")
    assert w.model is not None and w.model.probe == str(conf / "probe.npz")
    assert w.model.golden_outputs == str(conf / "out" / "g.npz")


def test_home_is_expanded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    config = load(tmp_path, '[[watch]]\nname = "a"\npath = "~/runs/a"\n')
    assert config.watches[0].path == str(tmp_path / "home" / "runs" / "a")


def test_containment_follows_symlinks(tmp_path: Path) -> None:
    (tmp_path / "runs" / "a").mkdir(parents=True)
    (tmp_path / "alias").symlink_to(tmp_path / "runs" / "a")
    message = error(tmp_path, '[daemon]\nstate_dir = "alias/state"\n[[watch]]\nname = "a"\npath = "runs/a"\n')
    assert message.startswith("daemon.state_dir:") and "watch.0.path" in message


def test_sibling_with_a_common_prefix_is_not_inside(tmp_path: Path) -> None:
    config = load(
        tmp_path, '[daemon]\nstate_dir = "/data/runs/ab"\n' + WATCH + 'publish_dir = "/data/runs/a-verified"\n'
    )
    assert config.watches[0].publish_dir == "/data/runs/a-verified"


# -- environment and flags --------------------------------------------------------------------


def test_environment_overrides(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    env = {
        "CKPTWATCH_LISTEN": "[::]:9100",
        "CKPTWATCH_STATE_DIR": "relative-state",
        "CKPTWATCH_LOG_FORMAT": "json",
        "CKPTWATCH_LOG_LEVEL": "DEBUG",
        "CKPTWATCH_OBSERVER": "polling",
        "CKPTWATCH_DEVICES": "gpu:0, gpu:1",
        "CKPTWATCH_WEB_CONFIG_FILE": "web.yml",
        "CKPTWATCH_UNRELATED": "ignored",
    }
    config = load(tmp_path / "conf", '[daemon]\nlisten = "127.0.0.1:1"\nlog_format = "console"\n' + WATCH, env=env)
    d = config.daemon
    assert (d.listen, d.port, d.log_format, d.log_level, d.observer) == ("[::]:9100", 9100, "json", "debug", "polling")
    assert d.state_dir == str(tmp_path / "relative-state")  # from the environment: relative to the working directory
    assert config.worker.devices == ["gpu:0", "gpu:1"]
    assert d.web_config_file == str(tmp_path / "web.yml")
    assert config.overridden == {".".join(key): var for var, key in ENV_OVERRIDES.items()}


def test_environment_defaults_to_os_environ(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CKPTWATCH_OBSERVER", "inotify")
    monkeypatch.setenv("CKPTWATCH_LISTEN", "")  # empty: unset
    config = load_config(str(write(tmp_path, WATCH)))
    assert config.daemon.observer == "inotify" and config.daemon.listen == "127.0.0.1:9847"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"CKPTWATCH_DEVICES": "gpu:0,tpu:0"}, 'worker.devices.1 (from CKPTWATCH_DEVICES): "tpu:0" is not a device'),
        ({"CKPTWATCH_DEVICES": "gpu:0,gpu:0"}, 'worker.devices.1 (from CKPTWATCH_DEVICES): duplicate device "gpu:0"'),
        ({"CKPTWATCH_LISTEN": "localhost:99999"}, 'daemon.listen (from CKPTWATCH_LISTEN): "99999" is not a port'),
        ({"CKPTWATCH_LOG_FORMAT": "xml"}, "daemon.log_format (from CKPTWATCH_LOG_FORMAT): Input should be"),
        ({"CKPTWATCH_LOG_LEVEL": "chatty"}, "daemon.log_level (from CKPTWATCH_LOG_LEVEL): Input should be"),
        ({"CKPTWATCH_OBSERVER": "magic"}, "daemon.observer (from CKPTWATCH_OBSERVER): Input should be"),
        (
            {"CKPTWATCH_STATE_DIR": "/data/runs/a/s"},
            "daemon.state_dir (from CKPTWATCH_STATE_DIR): /data/runs/a/s is inside",
        ),
    ],
)
def test_a_bad_override_names_the_variable(tmp_path: Path, env: dict[str, str], expected: str) -> None:
    message = error(tmp_path, WATCH, env=env)
    assert message.startswith(expected), message


def test_the_file_s_own_errors_are_not_blamed_on_the_environment(tmp_path: Path) -> None:
    message = error(tmp_path, "[worker]\nthreads = 0\n" + WATCH, env={"CKPTWATCH_DEVICES": "gpu:0"})
    assert message.startswith("worker.threads: ") and "CKPTWATCH" not in message


def test_command_line_flags_beat_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    config = load(tmp_path / "conf", WATCH, env={"CKPTWATCH_LISTEN": "0.0.0.0:1", "CKPTWATCH_LOG_FORMAT": "json"})
    new = override_daemon(config, {"listen": "127.0.0.1:2", "log_format": None, "state_dir": "st"})
    assert (new.daemon.listen, new.daemon.log_format, new.daemon.state_dir) == (
        "127.0.0.1:2",
        "json",
        str(tmp_path / "st"),
    )
    assert new.watches == config.watches and new.source == config.source
    assert new.overridden == {
        "daemon.listen": "--listen",
        "daemon.log_format": "CKPTWATCH_LOG_FORMAT",
        "daemon.state_dir": "--state-dir",
    }
    assert override_daemon(config, {}) == config


@pytest.mark.parametrize(
    ("updates", "expected"),
    [
        ({"listen": "nope"}, 'daemon.listen (from --listen): "nope" is not HOST:PORT'),
        ({"log_format": "xml"}, "daemon.log_format (from --log-format): Input should be"),
        ({"state_dir": "/data/runs/a/state"}, "daemon.state_dir (from --state-dir): /data/runs/a/state is inside"),
    ],
)
def test_a_bad_flag_is_named(tmp_path: Path, updates: dict[str, str], expected: str) -> None:
    config = load(tmp_path, WATCH)
    with pytest.raises(UsageError) as info:
        override_daemon(config, updates)
    message = str(info.value)
    assert_one_clean_line(message)
    assert message.startswith(f"{config.source}: {expected}"), message


# -- reload, the policy file, the policy schema, the import -----------------------------------


def test_changes_lists_what_a_reload_changes(tmp_path: Path) -> None:
    old = load(tmp_path, WATCH + '[[watch]]\nname = "b"\npath = "/b"\n')
    new = load(
        tmp_path,
        '[daemon]\nlisten = "0.0.0.0:9847"\n' + WATCH + 'golden = "/g"\n[[watch]]\nname = "c"\npath = "/c"\n',
    )
    assert changes(old, new) == ["daemon.listen", 'watch "a".golden', 'watch "c" added', 'watch "b" removed']
    assert changes(old, old) == []


def test_load_policy_still_works(tmp_path: Path) -> None:
    path = write(tmp_path, "max_jump = 0.01\n[[overrides]]\npattern = '*bias*'\nmax_jump = 2\n", "p.toml")
    policy = load_policy(str(path))
    assert policy.max_jump == 0.01 and policy.settings_for("d/bias", "d/bias")["max_jump"] == 2.0
    assert load_policy(str(write(tmp_path, '[policy]\nprofile = "replica"\n', "q.toml"))).profile == "replica"
    bad = write(tmp_path, "[[overrides]]\npattern = '*'\nmax_jump = -1\n", "r.toml")
    with pytest.raises(UsageError, match=r"r\.toml: overrides\.0\.max_jump: "):
        load_policy(str(bad))


def test_importing_config_stays_light() -> None:
    code = (
        "import sys, ckptwatch.config\n"
        "heavy = [m for m in ('tensorflow', 'numba', 'keras', 'h5py') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True, cwd=ROOT)
    assert out.stdout.strip() == "", f"ckptwatch.config imports {out.stdout.strip()}"


# -- issue 14: exporter and deployment keys ----------------------------------------------------------


@pytest.mark.parametrize(("value", "mode"), [('"0644"', 0o644), ('"640"', 0o640), ('"0o600"', 0o600), ("0o755", 0o755)])
def test_publish_mode_octal(tmp_path: Path, value: str, mode: int) -> None:
    config = load(tmp_path, WATCH + f"publish_mode = {value}\n")
    assert config.watches[0].publish_mode == mode


def test_publish_mode_defaults_to_0644_and_refuses_what_is_not_a_mode(tmp_path: Path) -> None:
    assert load(tmp_path, WATCH).watches[0].publish_mode == 0o644
    assert "not an octal file mode" in error(tmp_path, WATCH + 'publish_mode = "rw-r--r--"\n')
    assert "not an octal file mode" in error(tmp_path, WATCH + 'publish_mode = "0999"\n')
    assert "is not a file mode" in error(tmp_path, WATCH + "publish_mode = 0o7777\n")


def test_drain_termination_log_and_web_config_keys(tmp_path: Path) -> None:
    d = load(tmp_path, WATCH).daemon
    assert (d.drain_seconds, d.termination_log, d.web_config_file) == (15.0, "/dev/termination-log", None)
    text = '[daemon]\ndrain_seconds = 0.0\ntermination_log = ""\nweb_config_file = "web.yml"\n' + WATCH
    d = load(tmp_path, text).daemon
    assert (d.drain_seconds, d.termination_log, d.web_config_file) == (0.0, None, str(tmp_path / "web.yml"))
    assert "daemon.drain_seconds" in error(tmp_path, "[daemon]\ndrain_seconds = -1.0\n" + WATCH)
