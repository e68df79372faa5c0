"""What the CLI shows on a terminal: colour and a progress bar. Light: no numpy, no ckptwatch imports.

    color_enabled(stream) -> bool          a TTY, and NO_COLOR (any value) unset
    colorize(text) -> str                  verdict line and severity cells of a rendered report
    style(text, color, bold=False) -> str  ANSI SGR around text
    ProgressBar(stream, verbose)           bytes and tensors of one checkpoint, redrawn in place

Colour follows https://no-color.org: NO_COLOR set to anything disables it; so does a stream
that is not a terminal, or TERM=dumb. The progress bar draws on stderr only when it is a
terminal; `-q` turns it off, `-v` adds the tensor being read and a summary line at the end.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Mapping
from typing import IO

NO_COLOR_ENV = "NO_COLOR"

_SGR = {"red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36", "dim": "2"}
VERDICT_COLORS = {"PASS": "green", "WARN": "yellow", "FAIL": "red", "ERROR": "magenta"}
SEVERITY_COLORS = {"fail": "red", "warn": "yellow", "info": "cyan"}


def is_tty(stream: IO | None) -> bool:
    try:
        return bool(stream is not None and stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def color_enabled(stream: IO | None = None, env: Mapping[str, str] | None = None) -> bool:
    """Colour on `stream` (stdout by default): a terminal, NO_COLOR unset, TERM not dumb."""
    env = os.environ if env is None else env
    if NO_COLOR_ENV in env or env.get("TERM") == "dumb":
        return False
    return is_tty(sys.stdout if stream is None else stream)


def style(text: str, color: str, bold: bool = False) -> str:
    codes = ([_SGR[color]] if color in _SGR else []) + (["1"] if bold else [])
    return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text


_VERDICT_LINE = re.compile(r"^(verdict\s+)(PASS|WARN|FAIL|ERROR)\b", re.M)
_SEVERITY_CELL = re.compile(r"^(fail|warn|info)(?=\s)")


def colorize(text: str) -> str:
    """A rendered report (verify, inspect, diff) with its verdict and the severity column of its
    findings in colour: FAIL red, WARN yellow, PASS green, ERROR magenta; info cyan."""
    text = _VERDICT_LINE.sub(lambda m: m[1] + style(m[2], VERDICT_COLORS[m[2]], bold=True), text)
    out, in_findings = [], False
    for line in text.split("\n"):
        if line.startswith("SEVERITY "):
            in_findings = True
        elif not line.strip():
            in_findings = False
        m = _SEVERITY_CELL.match(line)
        if m and (in_findings or line[5:6] == " "):  # the findings table, or diff's notes ("fail  check ...")
            line = style(m[1], SEVERITY_COLORS[m[1]], bold=m[1] == "fail") + line[len(m[1]) :]
        out.append(line)
    return "\n".join(out)


def _size(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.0f} B"  # pragma: no cover


class ProgressBar:
    """One checkpoint's progress, redrawn in place on a terminal (at most 10 times a second).

    Call `begin(path, sizes)` with each tensor's bytes, then the bar itself with a tensor name
    as each tensor starts (from reading threads: it locks), and `close()` before printing
    anything else: it erases the bar (with `verbose`, leaves a summary line instead)."""

    WIDTH = 24
    INTERVAL = 0.1

    def __init__(self, stream: IO[str], verbose: bool = False, also=None, clock=time.monotonic):
        self.stream, self.verbose, self.clock = stream, verbose, clock
        self.also = also  # another callback to pass each tensor name on to (the isolating parent's)
        self._lock = threading.Lock()
        self._sizes: dict[str, int] = {}
        self._path = ""
        self._total_bytes = self._total = self._done = self._bytes = 0
        self._current = ""
        self._started = self._drawn_at = 0.0
        self._shown = False
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        self._fill, self._empty = ("█", "░") if encoding.startswith("utf") else ("#", "-")

    def begin(self, path: str, sizes: list[tuple[str, int]]) -> None:
        with self._lock:
            if self._total:  # the previous checkpoint of this command (diff reads two in one pass)
                self._finish()
            self._path = os.path.basename(path.rstrip(os.sep)) or path
            self._sizes = dict(sizes)
            self._total, self._total_bytes = len(sizes), sum(n for _, n in sizes)
            self._done = self._bytes = 0
            self._started = self.clock()
            self._draw(force=True)

    def __call__(self, name: str) -> None:
        if self.also is not None:
            self.also(name)
        with self._lock:
            if not self._total:
                return
            self._done = min(self._total, self._done + 1)
            self._bytes += self._sizes.get(name, 0)
            self._current = name
            self._draw(force=self._done == self._total)

    def close(self) -> None:
        with self._lock:
            if self._total:
                self._finish()

    def _finish(self) -> None:
        self._erase()
        if self.verbose:
            seconds = max(self.clock() - self._started, 1e-9)
            rate = f", {_size(self._total_bytes / seconds)}/s" if self._total_bytes else ""
            self._write(
                f"read {self._path}: {self._total} tensors, {_size(self._total_bytes)} in {seconds:.1f} s{rate}\n"
            )
        self._total = 0

    def _line(self) -> str:
        frac = self._bytes / self._total_bytes if self._total_bytes else self._done / max(1, self._total)
        filled = round(frac * self.WIDTH)
        bar = self._fill * filled + self._empty * (self.WIDTH - filled)
        line = (
            f"{self._path}  {bar} {100 * frac:3.0f}%  {_size(self._bytes)} / {_size(self._total_bytes)}  "
            f"{self._done}/{self._total} tensors  {self.clock() - self._started:.1f} s"
        )
        try:
            width = os.get_terminal_size(self.stream.fileno()).columns or 100  # 0: a terminal that never said
        except (OSError, ValueError, AttributeError):
            width = 100
        room = width - 1 - len(line) - 2
        if self.verbose and self._current and room >= 12:  # the tensor being read, its end if it is long
            name = self._current
            line += "  " + (name if len(name) <= room else "…" + name[-(room - 1) :])
        return line[: max(20, width - 1)]

    def _draw(self, force: bool = False) -> None:
        now = self.clock()
        if not force and now - self._drawn_at < self.INTERVAL:
            return
        self._drawn_at = now
        self._write("\r\x1b[2K" + self._line())
        self._shown = True

    def _erase(self) -> None:
        if self._shown:
            self._write("\r\x1b[2K")
            self._shown = False

    def _write(self, text: str) -> None:
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            pass
