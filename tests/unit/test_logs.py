"""configure_logging: JSON lines and console output from structlog and stdlib loggers."""

from __future__ import annotations

import io
import json
import logging
from datetime import datetime, timedelta, timezone

import pytest
import structlog

from ckptwatch.daemon.logs import configure_logging, get_logger


@pytest.fixture(autouse=True)
def _restore_logging():
    """configure_logging changes process-wide state: put the root logger back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    ours = logging.getLogger("ckptwatch")
    our_level = ours.level
    yield
    for h in list(root.handlers):
        if h not in handlers:
            root.removeHandler(h)
    root.setLevel(level)
    ours.setLevel(our_level)
    structlog.reset_defaults()


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def lines(stream: io.StringIO) -> list[dict]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_bound_keys():
    out = io.StringIO()
    assert configure_logging("json", out) == "json"
    log = get_logger("scheduler").bind(watch="run7")
    log.info("checkpoint verified", step=12, verdict="pass")
    log.warning("queue full", depth=9)

    first, second = lines(out)
    assert first["event"] == "checkpoint verified"
    assert first["level"] == "info"
    assert first["watch"] == "run7" and first["step"] == 12 and first["verdict"] == "pass"
    assert first["logger"] == "ckptwatch.scheduler"
    ts = datetime.fromisoformat(first["timestamp"].replace("Z", "+00:00"))
    assert ts.utcoffset() == timedelta(0)  # UTC
    assert abs(datetime.now(timezone.utc) - ts) < timedelta(minutes=1)
    assert list(first)[:3] == ["timestamp", "level", "event"]
    assert second["level"] == "warning" and second["watch"] == "run7" and second["depth"] == 9


def test_level_filters_ckptwatch_loggers():
    out = io.StringIO()
    configure_logging("json", out, level="warning")
    log = get_logger()
    log.info("hidden")
    log.debug("hidden too")
    log.error("shown")
    assert [e["event"] for e in lines(out)] == ["shown"]

    out = io.StringIO()
    configure_logging("json", out, level="debug")
    get_logger("x").debug("now shown")
    assert [e["event"] for e in lines(out)] == ["now shown"]


def test_stdlib_logging_goes_through_the_same_renderer_at_warning():
    out = io.StringIO()
    configure_logging("json", out, level="debug")
    foreign = logging.getLogger("watchdog.observers.inotify_buffer")
    foreign.info("not at info")
    foreign.warning("inotify watch limit reached: %d", 8192)
    (entry,) = lines(out)
    assert entry["event"] == "inotify watch limit reached: 8192"
    assert entry["level"] == "warning"
    assert entry["logger"] == "watchdog.observers.inotify_buffer"
    assert "timestamp" in entry


def test_exceptions_are_one_json_line():
    out = io.StringIO()
    configure_logging("json", out)
    try:
        raise RuntimeError("worker died")
    except RuntimeError:
        get_logger().exception("verification lost", watch="run7")
    (entry,) = lines(out)
    assert entry["level"] == "error" and entry["watch"] == "run7"
    assert "RuntimeError: worker died" in entry["exception"]


def test_console_format():
    out = io.StringIO()
    assert configure_logging("console", out) == "console"
    get_logger("app").info("daemon started", listen="127.0.0.1:9847")
    text = out.getvalue()
    assert text.count("\n") == 1
    assert "daemon started" in text and "listen=127.0.0.1:9847" in text and "info" in text
    assert "\x1b[" not in text  # no colours when the stream is not a terminal
    with pytest.raises(json.JSONDecodeError):
        json.loads(text)


def test_auto_picks_by_tty():
    assert configure_logging("auto", io.StringIO()) == "json"
    tty = FakeTTY()
    assert configure_logging("auto", tty) == "console"
    get_logger().info("on a terminal")
    assert "on a terminal" in tty.getvalue() and not tty.getvalue().startswith("{")


def test_reconfigure_replaces_the_handler():
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", first)
    log = get_logger("early")  # made before the second configure_logging
    configure_logging("json", second)
    log.info("where")
    assert first.getvalue() == ""
    assert [e["event"] for e in lines(second)] == ["where"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="log format"):
        configure_logging("xml", io.StringIO())
    with pytest.raises(ValueError, match="log level"):
        configure_logging("json", io.StringIO(), level="loud")
