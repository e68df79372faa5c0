"""structlog set-up for the daemon: one renderer for structlog events and stdlib `logging`.

Every event, from structlog loggers and from stdlib loggers of other libraries (watchdog, ...),
goes through one `logging.StreamHandler` on the root logger, whose `ProcessorFormatter` renders
it as one JSON object per line ("json") or with structlog's ConsoleRenderer ("console"; in colour
only on a terminal and when NO_COLOR, any value, is unset: https://no-color.org). One
handler means one lock: lines from different threads never interleave.

Levels: loggers under the ``ckptwatch`` name log at `level`; everything else at WARNING.
All global logging state of the daemon lives in this module.
"""

from __future__ import annotations

import logging
import sys
from typing import IO, Any

import structlog

from ckptwatch.termui import color_enabled

FORMATS = ("auto", "json", "console")
LEVELS = ("debug", "info", "warning", "error", "critical")
ROOT = "ckptwatch"

_handler: logging.Handler | None = None


def _timestamper() -> structlog.processors.TimeStamper:
    return structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp")


def _leading_keys(_logger: Any, _method: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """Put timestamp, level, event and logger first, for people reading raw JSON lines."""
    head: dict[str, Any] = {k: event_dict.pop(k) for k in ("timestamp", "level", "event", "logger") if k in event_dict}
    head.update(event_dict)
    return head


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """ "auto" -> "console" on a TTY, else "json"; other values are checked and returned."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    try:
        return "console" if stream.isatty() else "json"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "json"


def configure_logging(fmt: str = "auto", stream: IO[str] | None = None, level: str = "info") -> str:
    """Configure structlog and the stdlib root logger; returns the format in use ("json" or "console").

    `stream` defaults to sys.stdout (the config's `log_format = "auto"` is documented as "json when
    stdout is not a TTY"). Calling it again replaces the previous configuration.
    """
    global _handler
    if level.lower() not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}, got {level!r}")
    stream = sys.stdout if stream is None else stream
    resolved = resolve_format(fmt, stream)

    # processors shared by structlog events and foreign (stdlib) records
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        _timestamper(),
    ]
    if resolved == "json":
        render: list[Any] = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            structlog.processors.UnicodeDecoder(),
            _leading_keys,
            structlog.processors.JSONRenderer(default=str),
        ]
    else:
        colors = color_enabled(stream)  # a terminal, and NO_COLOR (any value) unset
        render = [
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.StackInfoRenderer(),
            structlog.dev.ConsoleRenderer(colors=colors),
        ]

    formatter = structlog.stdlib.ProcessorFormatter(foreign_pre_chain=shared, processors=render)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(formatter)

    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)
    logging.getLogger(ROOT).setLevel(level.upper())
    _handler = handler

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,  # skip the work for events below the level
            *shared,
            structlog.stdlib.PositionalArgumentsFormatter(),
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        # not cached: a logger made at import time must pick up a later configure_logging()
        cache_logger_on_first_use=False,
    )
    return resolved


def get_logger(name: str | None = None, **initial: Any) -> Any:
    """A structlog logger named ``ckptwatch`` or ``ckptwatch.<name>`` (so it logs at the configured level)."""
    if not name:
        full = ROOT
    elif name == ROOT or name.startswith(ROOT + "."):
        full = name
    else:
        full = f"{ROOT}.{name}"
    return structlog.get_logger(full, **initial)
