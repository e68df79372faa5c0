"""ckptwatch.termui: colour rules and the progress bar's arithmetic (the terminal itself is
tested through a pseudo-terminal in tests/integration/test_cli_ux.py)."""

from __future__ import annotations

import io
import os
import pty

from ckptwatch.termui import ProgressBar, color_enabled, colorize


def test_colour_needs_a_terminal_and_no_no_color() -> None:
    controller, terminal = pty.openpty()
    try:
        with os.fdopen(terminal, "w", closefd=False) as tty:
            assert color_enabled(tty, {"TERM": "xterm"})
            assert not color_enabled(tty, {"TERM": "xterm", "NO_COLOR": ""})  # any value, empty included
            assert not color_enabled(tty, {"TERM": "xterm", "NO_COLOR": "0"})
            assert not color_enabled(tty, {"TERM": "dumb"})
        assert not color_enabled(io.StringIO(), {})
    finally:
        os.close(controller)
        os.close(terminal)


def test_colorize_touches_the_verdict_and_the_severity_column_only() -> None:
    text = (
        "checkpoint  run/ckpt-3\nverdict     FAIL\n\nSEVERITY  CHECK\n--------  -----\nfail      nonfinite\n"
        "warn      drift.frozen\n\nTENSOR\n------\nfail/kernel  weight"
    )
    out = colorize(text)
    assert "verdict     \x1b[31;1mFAIL\x1b[0m" in out
    assert "\x1b[31;1mfail\x1b[0m      nonfinite" in out and "\x1b[33mwarn\x1b[0m      drift.frozen" in out
    assert out.endswith("\nfail/kernel  weight")  # a tensor named like a severity stays as it is
    assert colorize("no findings") == "no findings"


def test_progress_bar_counts_bytes_and_tensors_and_sums_up() -> None:
    now = [0.0]
    stream = io.StringIO()
    bar = ProgressBar(stream, verbose=True, clock=lambda: now[0])
    seen: list[str] = []
    bar.also = seen.append
    bar.begin("/runs/a/ckpt-7", [("w", 3 << 20), ("b", 1 << 20)])
    now[0] = 0.5
    bar("w")
    now[0] = 0.55  # within 0.1 s of the last frame, but the last tensor: drawn
    bar("b")
    bar.close()
    frames = stream.getvalue().split("\r\x1b[2K")
    assert "0/2 tensors" in frames[1] and "  0%" in frames[1]
    assert "3.0 MB / 4.0 MB  1/2 tensors" in frames[2] and " 75%" in frames[2] and frames[2].endswith("w")
    assert "100%  4.0 MB / 4.0 MB  2/2 tensors" in frames[3]
    assert frames[-1] == "read ckpt-7: 2 tensors, 4.0 MB in 0.6 s, 7.3 MB/s\n"
    assert seen == ["w", "b"]
    bar.close()  # twice: nothing more
    assert stream.getvalue().count("read ckpt-7") == 1
