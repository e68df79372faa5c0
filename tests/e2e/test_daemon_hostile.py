"""The real daemon against hostile entries (issue 12): each costs only its own verdict, the
main loop keeps answering, and a reload never kills it. Inputs are built byte by byte
(tests/hostile.py); TensorFlow only for the live training run."""

from __future__ import annotations

import os
import signal
import threading
import time
import zipfile
from pathlib import Path

from tests import hostile

from .conftest import Trainer, outcome


def _scrape_seconds(d) -> float:
    t0 = time.monotonic()
    status, _ = d.get("/metrics", timeout=10)
    assert status == 200
    return time.monotonic() - t0


def test_hostile_entries_next_to_healthy_checkpoints(daemon_factory, tmp_path: Path) -> None:
    """Every hostile entry kind in one watch directory, between healthy checkpoints: each
    healthy one is verified `pass`, each hostile entry gets its own `fail` (today's main: the
    deep tree made every rescan of the watch fail, and no checkpoint got a verdict), /metrics
    answers throughout, and SIGTERM still stops the daemon within 10 s."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"settle_seconds": 0.3})
    try:
        good = [hostile.healthy(run, "ckpt-1", 1)]
        bad = hostile.every_kind(run)
        staged = hostile.keras_bomb(tmp_path / "bomb.keras", zipfile.ZIP_BZIP2, 64 << 20)
        bad["keras bomb"] = str(run / "bomb.keras")
        os.replace(staged, bad["keras bomb"])  # whole at once: not a file still being written
        good += [hostile.healthy(run, f"ckpt-{step}", step) for step in (3, 5, 7, 9, 11)]
        scrapes = []
        verdicts = {}
        for path in [*good, *bad.values()]:
            ev = outcome(d, path, timeout=60)
            verdicts[path] = (ev["event"], ev.get("verdict"), ev.get("failing") or ev.get("reason"), ev.get("detail"))
            scrapes.append(_scrape_seconds(d))
        for path in good:
            assert verdicts[path][:2] == ("checkpoint verified", "pass"), (path, verdicts[path])
        for kind, path in bad.items():
            event, verdict, failing, _ = verdicts[path]
            assert (event, verdict) == ("checkpoint verified", "fail"), (kind, verdicts[path])
            assert any(check.startswith("integrity.") for check in failing or []), (kind, failing)
        assert max(scrapes) < 1.0, scrapes
        assert not d.events("rescan failed")
        assert d.running()
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        hostile.remove_tree(run / "ckpt-export")


class _Scraper(threading.Thread):
    """GET /metrics every 50 ms until stopped; the seconds each took."""

    def __init__(self, d):
        super().__init__(daemon=True)
        self.d, self.seconds, self.halt = d, [], threading.Event()

    def run(self) -> None:
        while not self.halt.wait(0.05):
            self.seconds.append(_scrape_seconds(self.d))


def test_hostile_entries_in_a_live_training_run(tf, daemon_factory, tmp_path: Path) -> None:
    """Issue 12's e2e: a CheckpointManager training run saves into a watch directory that
    holds every hostile entry kind: every training checkpoint gets `pass`, every hostile
    entry its own `fail`, /metrics keeps answering fast throughout, SIGTERM exits in 10 s."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}], daemon={"settle_seconds": 0.3})
    scraper = _Scraper(d)
    scraper.start()
    try:
        trainer = Trainer(tf, run)
        saved = [trainer.save()]
        bad = hostile.every_kind(run, prefix="evil")
        saved += [trainer.save() for _ in range(5)]
        for path in saved:
            assert outcome(d, path, timeout=60)["verdict"] == "pass", path
        for kind, path in bad.items():
            ev = outcome(d, path, timeout=60)
            assert (ev["event"], ev.get("verdict")) == ("checkpoint verified", "fail"), (kind, ev)
        scraper.halt.set()
        scraper.join(5)
        # the figure is 100 ms; one scrape may meet a CPU stall of the shared test machine
        # (TF training runs in this process), never a blocked main loop (seconds)
        slowest = sorted(scraper.seconds)[-2:]
        assert len(scraper.seconds) > 5 and slowest[0] < 0.1 and slowest[1] < 0.5, slowest
        t0 = time.monotonic()
        assert d.stop(signal.SIGTERM, timeout=10) == 0
        assert time.monotonic() - t0 < 10
    finally:
        scraper.halt.set()
        hostile.remove_tree(run / "evil-export")


def test_reload_never_kills(daemon_factory, tmp_path: Path) -> None:
    """SIGHUP with a config the loader cannot take (nesting deeper than the parser's stack, a
    FIFO, a directory, binary garbage) keeps the running config and says so; the daemon goes
    on verifying. Today's main: the deep nesting killed it (RecursionError, exit 2) and the
    FIFO wedged its main loop."""
    run = tmp_path / "run"
    run.mkdir()
    d = daemon_factory([{"name": "run", "path": str(run)}])
    pid = d.pid
    assert outcome(d, hostile.healthy(run, "ckpt-1", 1))["verdict"] == "pass"
    cases = {
        "deep": ("a = " + "[" * 5000 + "]" * 5000 + "\n", "values nested too deeply"),
        "fifo": (None, "is a FIFO, not a TOML file"),
        "directory": (None, "is a directory, not a TOML file"),
        "garbage": ("\x00\xff" * 100, "invalid TOML"),
    }
    for name, (text, said) in cases.items():
        if d.config_path.is_dir():
            d.config_path.rmdir()
        else:
            os.unlink(d.config_path)
        if name == "fifo":
            os.mkfifo(d.config_path)
        elif name == "directory":
            d.config_path.mkdir()
        else:
            d.config_path.write_text(text)
        mark = d.mark()
        d.signal(signal.SIGHUP)
        ev = d.wait_for("config reload failed, keeping the running config", timeout=15, after=mark)
        assert said in ev["error"] and "\n" not in ev["error"], (name, ev)
        assert d.running() and d.pid == pid, name
    d.write_config()
    assert outcome(d, hostile.healthy(run, "ckpt-2", 2))["verdict"] == "pass"
    assert d.get("/readyz")[0] == 200
