"""`ckptwatch accept WATCH [CHECKPOINT] --reason TEXT [--config FILE | --state-dir DIR] [--by NAME]`:
what it records in the daemon's state, and its refusals (exit 2, one line on stderr)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from ckptwatch.cli import main
from ckptwatch.daemon.state import State


def verified(state: State, step: int, verdict: str = "pass", fingerprint: bool = True) -> None:
    path = f"/ckpt/run/ckpt-{step}"
    state.record_report("run", path, f"k{step}", step, {"verdict": verdict})
    if fingerprint:
        fp = state.fingerprint_path("run", path)
        Path(fp).write_bytes(b"fp")
        state.record_fingerprint("run", path, f"k{step}", step, fp)


@pytest.fixture
def state_dir(tmp_path) -> str:
    """A daemon's state: ckpt-1 passed, ckpt-2 failed drift (it has a fingerprint), ckpt-3 failed integrity."""
    state = State(str(tmp_path / "state"))
    verified(state, 1)
    verified(state, 2, "fail")
    verified(state, 3, "fail", fingerprint=False)
    state.close()
    return str(tmp_path / "state")


def accept(*args: str, env: dict | None = None):
    result = CliRunner().invoke(main, ["accept", *args], env={"SUDO_USER": "alice", **(env or {})})
    return result.exit_code, result.stdout, result.stderr


def pending(state_dir: str) -> list:
    state = State(state_dir)
    try:
        return state.pending_acceptances()
    finally:
        state.close()


def test_accept_records_who_when_why(state_dir):
    code, out, err = accept("run", "ckpt-2", "--reason", "LR schedule changed", "--state-dir", state_dir)
    assert (code, err) == (0, ""), err
    assert out == (
        "accepted /ckpt/run/ckpt-2 (step 2) as the baseline of watch run (by alice); "
        "the daemon applies it within its poll interval\n"
    )
    (done,) = pending(state_dir)
    assert (done.watch, done.checkpoint.path, done.by, done.reason) == (
        "run",
        "/ckpt/run/ckpt-2",
        "alice",
        "LR schedule changed",
    )


def test_by_overrides_the_user(state_dir):
    assert accept("run", "ckpt-1", "--reason", "x", "--state-dir", state_dir, "--by", "bob")[0] == 0
    assert pending(state_dir)[0].by == "bob"


def test_without_sudo_the_login_user(state_dir, monkeypatch):
    monkeypatch.setattr("os.getlogin", lambda: "carol")
    code, _, err = accept("run", "ckpt-1", "--reason", "x", "--state-dir", state_dir, env={"SUDO_USER": ""})
    assert code == 0, err
    assert pending(state_dir)[0].by == "carol"


def test_the_config_names_the_state_dir_and_the_watches(state_dir, tmp_path):
    config = tmp_path / "ckptwatch.toml"
    config.write_text(f'[daemon]\nstate_dir = "{state_dir}"\n\n[[watch]]\nname = "run"\npath = "{tmp_path / "run"}"\n')
    code, _, err = accept("run", "--reason", "restart", "--config", str(config), env={"CKPTWATCH_STATE_DIR": ""})
    assert code == 2 and err == (
        "ckptwatch: error: /ckpt/run/ckpt-3: verdict fail and no fingerprint (integrity failed or it could not be "
        "read): it cannot be a baseline\n"
    ), "the default is the newest verified checkpoint: ckpt-3 failed integrity"
    code, _, err = accept("gone", "--reason", "restart", "--config", str(config))
    assert (code, err) == (2, "ckptwatch: error: unknown watch 'gone': " + str(config) + " has 'run'\n")
    assert accept("run", "ckpt-1", "--reason", "restart", "--config", str(config))[0] == 0
    assert len(pending(state_dir)) == 1


def test_the_state_dir_from_the_environment(state_dir):
    code, _, err = accept("run", "ckpt-1", "--reason", "x", env={"CKPTWATCH_STATE_DIR": state_dir})
    assert code == 0, err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["run", "ckpt-1", "--reason", "  "], "--reason is empty: say why this checkpoint is the new baseline"),
        (["nope", "--reason", "x"], "unknown watch 'nope': no verified checkpoint of it in the state in"),
        (["run", "ckpt-7", "--reason", "x"], "ckpt-7: no verification record of it in watch 'run'"),
        (["run", "ckpt-3", "--reason", "x"], "/ckpt/run/ckpt-3: verdict fail and no fingerprint"),
    ],
)
def test_refusals_are_one_line_and_exit_2(state_dir, args, message):
    code, out, err = accept(*args, "--state-dir", state_dir)
    assert code == 2 and out == ""
    assert err.startswith("ckptwatch: error: " + message) and err.count("\n") == 1, err
    assert pending(state_dir) == []


def test_refusals_about_the_state(tmp_path):
    code, _, err = accept("run", "--reason", "x", "--state-dir", str(tmp_path / "none"))
    assert (code, err) == (
        2,
        f"ckptwatch: error: no ckptwatch state in {tmp_path / 'none'} (state.sqlite3 not found)\n",
    )
    code, _, err = accept("run", "--reason", "x", "--state-dir", str(tmp_path), "--config", "c.toml")
    assert (code, err) == (2, "ckptwatch: error: give --config or --state-dir, not both\n")
    code, _, err = accept("run")
    assert code == 2 and "Missing option '--reason'" in err
