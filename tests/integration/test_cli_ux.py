"""The CLI on a terminal and in scripts: progress bar, colour, NO_COLOR, -q/-v, `-` for stdout,
the JSON error object, tool and time in the report, check-config's full list, completion scripts.

Terminal behaviour is tested through a real pseudo-terminal (the `pty` module): the real
`python -m ckptwatch` (and its reading child) sees a TTY on stdout and stderr, as on a desktop.
"""

from __future__ import annotations

import gzip
import json
import os
import pty
import re
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

import ckptwatch
from ckptwatch.formats.layout import FINGERPRINT_MAGICS

ROOT = Path(__file__).resolve().parents[2]
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
BAR = re.compile(r"(\d+)/(\d+) tensors")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "CKPTWATCH_DEBUG", "CKPTWATCH_VERBOSE")}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    env["TERM"] = "xterm-256color"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def on_terminal(*args: object, timeout: float = 240, **env: str) -> tuple[int, str]:
    """Run `python -m ckptwatch ARGS` with stdin, stdout and stderr on one pseudo-terminal;
    return its exit status and everything it wrote there (\\r\\n as the terminal got it)."""
    controller, terminal = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ckptwatch", *map(str, args)],
        stdin=terminal,
        stdout=terminal,
        stderr=terminal,
        env=_env(**env),
        cwd=ROOT,
        close_fds=True,
    )
    os.close(terminal)
    out = bytearray()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            try:
                chunk = os.read(controller, 1 << 16)
            except OSError:  # EIO: every writer closed the terminal
                break
            if not chunk:
                break
            out += chunk
        code = proc.wait(max(1.0, deadline - time.monotonic()))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(controller)
    return code, out.decode("utf-8", "replace")


def piped(*args: object, **env: str) -> subprocess.CompletedProcess:
    """The same, with stdout and stderr on pipes (a CI job, a script)."""
    return subprocess.run(
        [sys.executable, "-m", "ckptwatch", *map(str, args)],
        capture_output=True,
        env=_env(**env),
        cwd=ROOT,
        timeout=240,
        check=False,
    )


# -- progress --------------------------------------------------------------------------------------


def test_progress_bar_on_a_terminal_counts_bytes_and_tensors(keras_run) -> None:
    code, out = on_terminal("verify", keras_run.candidate, "--previous", keras_run.previous)
    assert code == 0, out
    name = os.path.basename(keras_run.candidate)
    frames = [f for f in out.split("\r") if BAR.search(f) and name in f]
    assert frames, out
    done, total = map(int, BAR.search(frames[-1]).groups())  # type: ignore[union-attr]
    assert done == total > 5
    assert "100%" in frames[-1] and " / " in frames[-1]  # bytes read / bytes in all
    assert "\x1b[2K" in out  # redrawn in place and erased before the report
    report = out[out.index("checkpoint  ") :]
    assert "tensors  " not in report.split("\n")[0]  # the bar does not run into the report


def test_no_progress_with_q_nor_when_stderr_is_not_a_terminal(keras_run) -> None:
    code, out = on_terminal("-q", "inspect", keras_run.candidate)
    assert code == 0 and "checkpoint  " in out
    assert not BAR.search(out), out
    code, out = on_terminal("inspect", keras_run.candidate, "-q")  # after the command too
    assert code == 0 and not BAR.search(out), out
    r = piped("verify", keras_run.candidate, "--previous", keras_run.previous)
    assert r.returncode == 0
    assert b"tensors  " not in r.stderr and b"\r" not in r.stderr and b"\x1b" not in r.stderr + r.stdout


def test_verbose_names_tensors_and_sums_up(keras_run) -> None:
    code, out = on_terminal("diff", keras_run.candidate, keras_run.previous, "-v")
    assert code == 0, out
    assert re.search(r"read ckpt-3: \d+ tensors, [\d.]+ [KM]?B in [\d.]+ s", out), out
    assert "/VARIABLE_VALUE" in "".join(f for f in out.split("\r") if BAR.search(f)), out
    code, out = on_terminal("diff", keras_run.candidate, keras_run.previous)
    assert code == 0 and "read ckpt-3:" not in out


def test_q_and_v_together_are_a_usage_error(keras_run) -> None:
    r = piped("-q", "verify", keras_run.candidate, "-v")
    assert r.returncode == 2
    assert r.stderr.decode().strip() == "ckptwatch: error: give -q (quiet) or -v (verbose), not both"


# -- colour ----------------------------------------------------------------------------------------


def test_verdict_and_severities_in_colour_on_a_terminal(keras_run) -> None:
    code, out = on_terminal("verify", keras_run.nan, "--previous", keras_run.candidate)
    assert code == 1, out
    assert "verdict     \x1b[31;1mFAIL\x1b[0m" in out
    assert re.search(r"^\x1b\[31;1mfail\x1b\[0m +nonfinite ", out, re.M), out
    code, out = on_terminal("verify", keras_run.candidate, "--previous", keras_run.previous)
    assert code == 0 and re.search(r"verdict     \x1b\[3[23](;1)?m(PASS|WARN)\x1b\[0m", out), out


@pytest.mark.parametrize("value", ["1", "", "0"])
def test_no_color_any_value_turns_colour_off(keras_run, value: str) -> None:
    code, out = on_terminal("verify", keras_run.nan, "--previous", keras_run.candidate, NO_COLOR=value)
    assert code == 1
    report = out[out.index("checkpoint  ") :]
    assert "\x1b[" not in report, report[:400]
    assert "verdict     FAIL" in report
    assert BAR.search(out)  # the progress bar is not colour: it stays


def test_no_colour_when_stdout_is_not_a_terminal(keras_run) -> None:
    r = piped("verify", keras_run.nan, "--previous", keras_run.candidate)
    assert r.returncode == 1 and b"verdict     FAIL" in r.stdout and b"\x1b" not in r.stdout


_DAEMON_LOG = (
    "from ckptwatch.daemon.logs import configure_logging, get_logger; configure_logging('console'); "
    "get_logger('t').warning('checkpoint failed', watch='run7')"
)


@pytest.mark.parametrize("no_color", [None, "1"])
def test_daemon_console_logs_respect_no_color(no_color: str | None) -> None:
    controller, terminal = pty.openpty()
    env = _env(**({"NO_COLOR": no_color} if no_color is not None else {}))
    proc = subprocess.Popen([sys.executable, "-c", _DAEMON_LOG], stdout=terminal, stderr=terminal, env=env)
    os.close(terminal)
    out = bytearray()
    while True:
        try:
            chunk = os.read(controller, 1 << 16)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    assert proc.wait(60) == 0
    os.close(controller)
    text = out.decode()
    assert "checkpoint failed" in text and "run7" in text
    assert ("\x1b[" in text) is (no_color is None), text


# -- `-` is stdout ---------------------------------------------------------------------------------


def test_fingerprint_to_stdout_is_the_fingerprint(keras_run, tmp_path: Path) -> None:
    r = piped("fingerprint", keras_run.previous, "-o", "-")
    assert r.returncode == 0, r.stderr
    assert not Path(ROOT, "-").exists()
    if not r.stdout.startswith(FINGERPRINT_MAGICS):  # v2 and v3 are binary (issue 15); v1 is JSON
        doc = json.loads(gzip.decompress(r.stdout) if r.stdout[:2] == b"\x1f\x8b" else r.stdout)
        assert doc["schema"].startswith("ckptwatch.fingerprint/")
    assert re.fullmatch(rb"wrote stdout: \d+ tensors, .*\n", r.stderr), r.stderr
    piped_fp, file_fp = tmp_path / "from-stdout.fp", tmp_path / "from-o.fp"
    piped_fp.write_bytes(r.stdout)
    assert piped("fingerprint", keras_run.previous, "-o", file_fp).returncode == 0
    # what went to stdout works as a reference exactly like the file `-o FILE` writes
    reports = []
    for fp in (piped_fp, file_fp):
        v = piped("verify", keras_run.candidate, "--previous", fp, "--json")
        assert v.returncode == 0, v.stderr
        reports.append(json.loads(v.stdout))
    assert reports[0]["drift"] == reports[1]["drift"] and reports[0]["verdict"] == reports[1]["verdict"]
    assert reports[0]["drift"]["previous"]["relative_l2"] > 0
    q = piped("fingerprint", keras_run.previous, "-o", "-", "-q")
    assert q.returncode == 0 and q.stderr == b"" and q.stdout[:2] == r.stdout[:2]


def test_verify_write_options_refuse_stdout_in_one_line(keras_run) -> None:
    for option in ("--write-fingerprint", "--write-history"):
        r = piped("verify", keras_run.candidate, option, "-")
        assert r.returncode == 2
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"ckptwatch: error: {option} -: stdout carries the report")
        assert not Path(ROOT, "-").exists()


def test_a_fingerprint_as_path_is_inspected_or_refused_in_one_line(keras_run, tmp_path: Path) -> None:
    fp = tmp_path / "ckpt-3.fp.json.gz"
    assert piped("fingerprint", keras_run.candidate, "-o", fp).returncode == 0
    r = piped("inspect", fp, "--json")
    assert r.returncode == 0, r.stderr
    doc = json.loads(r.stdout)
    assert doc["checkpoint"]["format"] == "fingerprint"
    real = json.loads(piped("inspect", keras_run.candidate, "--json").stdout)
    means = {t["name"]: t["stats"]["mean"] for t in real["tensors"] if t["stats"]}
    stored = {t["name"]: t["stats"]["mean"] for t in doc["tensors"] if t["stats"]}
    assert stored and stored == pytest.approx(means)
    human = piped("inspect", fp)
    assert human.returncode == 0 and b"(fingerprint, step 3," in human.stdout
    for command in (["verify", fp], ["diff", fp, keras_run.candidate]):
        r = piped(*command)
        assert r.returncode == 2
        lines = r.stderr.decode().splitlines()
        assert len(lines) == 1 and "is a fingerprint" in lines[0] and "internal error" not in lines[0], lines


# -- the report and errors as JSON -----------------------------------------------------------------


def test_report_names_the_tool_and_when(keras_run) -> None:
    before = datetime.now(timezone.utc) - timedelta(seconds=1)
    r = piped("verify", keras_run.nan, "--previous", keras_run.candidate, "--json")
    assert r.returncode == 1
    doc = json.loads(r.stdout)
    assert doc["tool"] == {"name": "ckptwatch", "version": ckptwatch.__version__}
    assert doc["created"].endswith("Z")
    created = datetime.fromisoformat(doc["created"].replace("Z", "+00:00"))
    assert before <= created <= datetime.now(timezone.utc)
    nonfinite = next(f for f in doc["findings"] if f["check"] == "nonfinite")
    assert nonfinite["value"] == keras_run.nan_count and nonfinite["limit"] == 0


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["verify", "/nonexistent/ckpt-1", "--json"], "/nonexistent/ckpt-1: no such file"),
        (["inspect", "--json", "/nonexistent/ckpt-1"], "/nonexistent/ckpt-1: no such file"),
        (["diff", "/nonexistent/a", "/nonexistent/b", "--json"], "B reference /nonexistent/b"),
        (["verify", "PATH", "--json", "--no-such-option"], "No such option"),
    ],
)
def test_exit_2_with_json_puts_an_error_object_on_stdout(args: list[str], needle: str) -> None:
    r = piped(*args)
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert set(doc) == {"schema", "error", "exit"}
    assert doc["schema"] == "ckptwatch.error/v1" and doc["exit"] == 2 and needle in doc["error"], doc
    assert r.stderr.strip()  # the one line for people is still there
    plain = piped(*[a for a in args if a != "--json"])
    assert plain.returncode == 2 and plain.stdout == b""


def test_a_timed_out_diff_with_json_puts_an_error_object_on_stdout(keras_run) -> None:
    r = piped("diff", keras_run.candidate, keras_run.previous, "--json", "--timeout", "0.001")
    assert r.returncode == 2
    doc = json.loads(r.stdout)
    assert doc["schema"] == "ckptwatch.error/v1" and "timed out" in doc["error"]


# -- check-config ----------------------------------------------------------------------------------


def test_check_config_lists_every_error(tmp_path: Path) -> None:
    config = tmp_path / "ckptwatch.toml"
    config.write_text(
        "[daemon]\nqueue_limit = 0\nmax_attempts = 0\n"
        f'[[watch]]\nname = "a"\npath = "{tmp_path}"\nprofil = "training"\n'
        '[[watch]]\npath = "/elsewhere"\n'
    )
    r = piped("check-config", config)
    assert r.returncode == 2
    lines = r.stderr.decode().splitlines()
    assert lines[0] == f"ckptwatch: error: {config}: 4 problems"
    assert sorted(line.strip().split(":")[0] for line in lines[1:]) == [
        "daemon.max_attempts",
        "daemon.queue_limit",
        "watch.0.profil",
        "watch.1.name",
    ]
    assert "did you mean profile?" in r.stderr.decode()
    assert "more)" not in r.stderr.decode()
    # the daemon refuses the same file naming every problem in its one line
    w = piped("watch", "--config", config)
    assert w.returncode == 2
    (line,) = w.stderr.decode().splitlines()
    assert all(key in line for key in ("daemon.max_attempts", "daemon.queue_limit", "watch.0.profil", "watch.1.name"))


def test_check_config_q_says_nothing_when_valid(tmp_path: Path) -> None:
    config = tmp_path / "ok.toml"
    config.write_text(
        f'[daemon]\nstate_dir = "{tmp_path / "state"}"\n[[watch]]\nname = "a"\npath = "{tmp_path / "w"}"\n'
    )
    assert piped("check-config", config).stdout.startswith(str(config).encode() + b": ok: ")
    r = piped("check-config", "-q", config)
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b""


# -- completion ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shell", "marker"),
    [
        ("bash", "complete -o nosort -F _ckptwatch_completion ckptwatch"),
        ("zsh", "#compdef ckptwatch"),
        ("fish", "complete --no-files --command ckptwatch"),
    ],
)
def test_completion_script_for_each_shell(shell: str, marker: str) -> None:
    r = piped("completion", shell)
    assert r.returncode == 0, r.stderr
    script = r.stdout.decode()
    assert marker in script and "_CKPTWATCH_COMPLETE" in script


def test_completion_script_completes_commands_and_options() -> None:
    """What the script asks for (`_CKPTWATCH_COMPLETE=bash_complete`) names our commands."""
    r = piped(_CKPTWATCH_COMPLETE="bash_complete", COMP_WORDS="ckptwatch ver", COMP_CWORD="1")
    assert r.returncode == 0 and "plain,verify" in r.stdout.decode().splitlines()
    r = piped(_CKPTWATCH_COMPLETE="bash_complete", COMP_WORDS="ckptwatch verify --prev", COMP_CWORD="2")
    assert "plain,--previous" in r.stdout.decode().splitlines()


def test_completion_refuses_an_unknown_shell() -> None:
    r = piped("completion", "powershell")
    assert r.returncode == 2 and b"powershell" in r.stderr
