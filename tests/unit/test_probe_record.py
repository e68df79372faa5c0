"""What a run's history remembers of its probe batch: its best accuracy and whether it reached
the golden (for `golden_mode = "target"`), and that files written before this was kept still load."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ckptwatch.verify.history import SCHEMA, Entry, History, with_probe


def _entry(n: int, accuracy: float | None = None, met: bool | None = None) -> Entry:
    return Entry(
        step=float(10 * n),
        gap=10.0,
        global_change=0.1,
        tensors={"w": (0.1, 1.0, 1.0)},
        checkpoint=f"ckpt-{n}",
        accuracy=accuracy,
        golden_met=met,
    )


def _history(*entries: Entry) -> History:
    h = History.empty()
    for e in entries:
        h = h.extended(e)
    return h


def test_reached_needs_the_golden_met_several_checkpoints_in_a_row() -> None:
    flapping = _history(_entry(1, met=False), _entry(2, met=True), _entry(3, met=False), _entry(4, met=True))
    assert flapping.probe_record(3).reached is None
    arrived = _history(_entry(1, met=False), *(_entry(n, met=True) for n in (2, 3, 4)), _entry(5, met=True))
    assert arrived.probe_record(3).reached == "ckpt-4" and arrived.reached == "ckpt-4"
    assert _history(_entry(1), _entry(2)).probe_record(1).reached is None  # never compared


def test_a_run_that_starts_on_the_golden_never_arrives_at_it() -> None:
    """A golden that is the run's own start (or a fine-tune in target mode): met from the first
    kept checkpoints, then training moves away; that is not a run falling back from its target."""
    started = _history(*(_entry(n, met=True) for n in range(1, 6)), _entry(6, met=False), _entry(7, met=False))
    assert started.probe_record(3).reached is None


def test_arrival_is_remembered_beyond_the_window(tmp_path: Path) -> None:
    h = History.empty()
    for n, met in enumerate([False, True, True, True] + [True] * 6, start=1):
        h = h.extended(_entry(n, met=met), window=4)
    assert len(h) == 4 and h.reached == "ckpt-4" and h.probe_record(3).reached == "ckpt-4"
    path = str(tmp_path / "h.npz")
    h.save(path)
    assert History.load(path).probe_record(3).reached == "ckpt-4"


def test_best_accuracy_and_where(tmp_path: Path) -> None:
    h = _history(_entry(1, 0.5), _entry(2, 0.8), _entry(3), _entry(4, 0.7))
    record = h.probe_record()
    assert record.best_accuracy == 0.8 and record.best_checkpoint == "ckpt-2"
    path = str(tmp_path / "h.npz")
    h.save(path)
    again = History.load(path).probe_record()
    assert again.best_accuracy == 0.8 and again.best_checkpoint == "ckpt-2"
    assert History.empty().probe_record().best_accuracy is None


def test_with_probe_takes_the_reports_functional_figures() -> None:
    e = with_probe(_entry(1), {"functional": {"accuracy": 0.75, "golden_met": True}})
    assert e.accuracy == 0.75 and e.golden_met is True
    e = with_probe(_entry(1), {"skipped": "failed its integrity checks"})
    assert e.accuracy is None and e.golden_met is None
    assert with_probe(_entry(1), None).accuracy is None


def test_a_history_file_from_before_probe_figures_loads(tmp_path: Path) -> None:
    h = _history(_entry(1), _entry(2))
    path = tmp_path / "old.npz"
    arrays = {k: v for k, v in h.arrays.items()}
    entries = {k: h.entries[k] for k in ("step", "gap", "global_change")}
    meta = np.array(f'{{"schema": "{SCHEMA}", "checkpoints": ["ckpt-1", "ckpt-2"]}}')
    np.savez(path, meta=meta, names=np.array(h.names, dtype=str), **arrays, **entries)
    old = History.load(str(path))
    assert len(old) == 2 and old.probe_record().best_accuracy is None
    assert old.extended(_entry(3, 0.9)).probe_record().best_accuracy == 0.9


def _moved(n: int, norms: dict[str, tuple[float, float]], previous: str) -> Entry:
    e = _entry(n)
    e.tensors = {t: (0.1, 1.0, 1.0) for t in norms}
    e.norms, e.previous = norms, previous
    return e


def _report_failing_a_jump(candidate_norms: dict[str, float], previous_norms: dict[str, float]):
    from ckptwatch.verify.report import Finding, Report

    entry = _moved(9, {t: (candidate_norms[t], previous_norms[t]) for t in candidate_norms}, "ckpt-3")
    report = Report(
        checkpoint={"path": "ckpt-9", "step": 90},
        findings=[Finding("fail", "drift.jump", "whole checkpoint moved", None, "previous")],
        tensors=[],
        drift={},
        references={"previous": "ckpt-3", "golden": None},
        timings={},
    )
    report.history_entry = entry
    return report


def test_a_checkpoint_back_at_an_earlier_state_is_named() -> None:
    from ckptwatch.verify.rewind import rewind_findings

    h = _history(
        _moved(1, {"a": (2.0, 1.0), "b": (3.0, 2.0)}, "ckpt-0"),
        _moved(2, {"a": (3.0, 2.0), "b": (4.0, 3.0)}, "ckpt-1"),
        _moved(3, {"a": (4.0, 3.0), "b": (5.0, 4.0)}, "ckpt-2"),
    )
    assert h.origin == "ckpt-0" and [w for w, _ in h.places()] == ["ckpt-0", "ckpt-1", "ckpt-2", "ckpt-3"]
    previous = {"a": 4.0, "b": 5.0}
    [rewind] = rewind_findings(h, _report_failing_a_jump({"a": 1.0, "b": 2.0}, previous))  # ckpt-0's norms
    assert (
        rewind.check == "drift.rewind" and "ckpt-0" in rewind.message and "step moved forward to 90" in rewind.message
    )
    assert rewind_findings(h, _report_failing_a_jump({"a": 2.0, "b": 3.0}, previous))[0].message.count("ckpt-1") == 1
    # near but not on an earlier state (a fresh start with another seed): the jump says enough
    assert rewind_findings(h, _report_failing_a_jump({"a": 1.02, "b": 1.97}, previous)) == []
    # a candidate that did not fail a jump gets no rewind finding, whatever its norms
    quiet = _report_failing_a_jump({"a": 1.0, "b": 2.0}, previous)
    quiet.findings.clear()
    assert rewind_findings(h, quiet) == []


def test_the_origin_follows_the_window() -> None:
    h = History.empty()
    for n in range(1, 6):
        h = h.extended(_moved(n, {"a": (float(n + 1), float(n))}, f"ckpt-{n - 1}"), window=3)
    assert h.checkpoints == ["ckpt-3", "ckpt-4", "ckpt-5"] and h.origin == "ckpt-2"
    assert h.places()[0] == ("ckpt-2", {"a": 3.0})
