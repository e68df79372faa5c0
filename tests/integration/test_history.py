"""The run's history through the real processes: a simulated run written as TF bundles (TF's own
SaveV2 op), verified checkpoint by checkpoint by a real worker (`python -m ckptwatch.worker`)
the way the daemon does, and one-shot by `ckptwatch verify --history`."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.formats import bundle as bundle_module
from ckptwatch.formats import names as names_module
from ckptwatch.policy import Override, Policy
from ckptwatch.verify import engine
from ckptwatch.verify.change import Change, Settings
from ckptwatch.verify.engine import verify_paths
from ckptwatch.verify.history import Expected, History, _series
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.verify.verification import verify_checkpoint
from tests.integration.test_one_sequence import WorkerProcess
from tests.simulated_run import HIDDEN, simulate

STEPS = list(range(0, 200, 10))


@dataclass
class WrittenRun:
    dir: Path  # the run's checkpoints: ckpt-0 ... ckpt-190
    prefixes: list[str]
    noisy: str  # ckpt-190 with noise of 5x HIDDEN's typical change, in another directory


def save_bundle(tf, prefix: str, arrays: dict[str, np.ndarray]) -> str:
    names = sorted(arrays)
    tensors = [tf.constant(arrays[n]) for n in names]
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names), tensors=tensors)
    return prefix


@pytest.fixture(scope="module")
def written(tf, tmp_path_factory) -> WrittenRun:
    root = tmp_path_factory.mktemp("history")
    run = simulate(STEPS)
    prefixes = [save_bundle(tf, str(root / "run" / f"ckpt-{step}"), arrays) for step, arrays in run]
    typical = np.median([np.linalg.norm(b[HIDDEN] - a[HIDDEN]) for (_, a), (_, b) in itertools.pairwise(run)])
    arrays = dict(run[-1][1])
    unit = np.random.default_rng(3).normal(size=arrays[HIDDEN].shape)
    arrays[HIDDEN] = (arrays[HIDDEN] + 5 * typical * unit / np.linalg.norm(unit)).astype(np.float32)
    noisy = save_bundle(tf, str(root / "faulty" / f"ckpt-{STEPS[-1]}"), arrays)
    return WrittenRun(root / "run", prefixes, noisy)


@pytest.fixture(scope="module")
def worker():
    w = WorkerProcess()
    yield w
    w.close()


def fails(report: dict) -> set[tuple[str, str | None]]:
    """(check, tensor) of the fail findings, the whole checkpoint's (tensor None) left out."""
    return {(f["check"], f["tensor"]) for f in report["findings"] if f["severity"] == "fail" and f["tensor"]}


def test_the_worker_builds_the_history_and_judges_by_it(worker, written: WrittenRun, tmp_path: Path) -> None:
    """The daemon's loop: each request gets the history so far and a place to write it extended;
    only a passing checkpoint's file is adopted."""
    history, extended = str(tmp_path / "run.npz"), str(tmp_path / "next.npz")
    previous = None
    for prefix in written.prefixes[:-1]:
        request = VerifyRequest(
            prefix, previous, history=history if os.path.exists(history) else None, history_out=extended
        )
        result = worker.verify(request)
        assert result.status == "ok" and result.report is not None
        assert result.report["verdict"] == "pass", result.report["findings"]
        if previous is not None:
            assert os.path.exists(extended)
            os.replace(extended, history)
        previous = prefix
    request = VerifyRequest(written.noisy, previous, history=history, history_out=extended, history_required=False)
    report = worker.verify(request).report
    assert report is not None and fails(report) == {("drift.jump", HIDDEN)}
    (jump,) = [f for f in report["findings"] if f["check"] == "drift.jump" and f["tensor"]]
    assert jump["basis"] == "history" and jump["value"] > jump["limit"] and jump["expected"]["count"] == 18
    assert report["history"] == {"entries": 18, "tensors": 10}
    assert not os.path.exists(extended)  # a failed checkpoint never extends the history
    healthy = worker.verify(VerifyRequest(written.prefixes[-1], previous, history=history)).report
    assert healthy is not None and healthy["verdict"] == "pass"


def test_a_history_the_worker_cannot_read_is_a_warning_for_the_daemon(worker, written, tmp_path: Path) -> None:
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"garbage")
    prefixes = written.prefixes
    request = VerifyRequest(prefixes[2], prefixes[1], history=str(bad), history_required=False)
    report = worker.verify(request).report
    assert report is not None and report["verdict"] == "warn"
    assert {f["check"] for f in report["findings"]} == {"integrity.history"}


def test_verify_without_history_is_conservative(run_cli, written: WrittenRun) -> None:
    r = run_cli("verify", written.noisy, "--previous", written.prefixes[-2], "--json")
    assert r.returncode == 0, r.stdout[-2000:]  # 5x a healthy step, but nothing to know that by


def test_verify_with_the_runs_directory(run_cli, written: WrittenRun) -> None:
    r = run_cli("verify", written.noisy, "--history", written.dir, "--json")
    assert r.returncode == 1, (r.stdout[-2000:], r.stderr)
    report = r.json()
    assert fails(report) == {("drift.jump", HIDDEN)}
    assert report["references"]["previous"] == written.prefixes[-2]  # the last earlier one that passed
    assert report["history"]["entries"] == len(STEPS) - 2
    healthy = run_cli("verify", written.prefixes[-1], "--history", written.dir, "--json")
    assert healthy.returncode == 0 and healthy.json()["verdict"] == "pass", healthy.stdout[-2000:]


def test_verify_writes_and_reads_a_history_file(run_cli, written: WrittenRun, tmp_path: Path) -> None:
    history = tmp_path / "h.npz"
    p = written.prefixes
    r = run_cli("verify", p[-2], "--history", written.dir, "--write-history", history)
    assert r.returncode == 0 and history.exists(), r.stderr
    r = run_cli("verify", written.noisy, "--previous", p[-2], "--history", history, "--json")
    assert r.returncode == 1 and fails(r.json()) == {("drift.jump", HIDDEN)}
    missing = run_cli("verify", p[-1], "--previous", p[-2], "--history", tmp_path / "nope.npz")
    assert missing.returncode == 2 and "no such file" in missing.stderr and "Traceback" not in missing.stderr


def test_a_state_dir_that_cannot_take_the_workers_files_costs_no_verdict(worker, written: WrittenRun, tmp_path):
    """The daemon's state dir full or read-only: the worker cannot write the fingerprint or the
    extended history there. The verdict stands (an `info` finding says what was not written)."""
    blocker = tmp_path / "state"
    blocker.write_text("a regular file: nothing can be written below it")  # ENOTDIR, as root too
    request = VerifyRequest(
        written.prefixes[1],
        written.prefixes[0],
        fingerprint_out=str(blocker / "fingerprints" / "ckpt-10.fp.json.gz"),
        history_out=str(blocker / "history" / "run.next.npz"),
        discovered=True,
    )
    result = worker.verify(request)
    assert result.status == "ok" and result.report is not None, result  # today's main: "error" (NotADirectoryError)
    assert result.report["verdict"] == "pass" and result.fingerprint is None
    infos = {f["check"]: f["message"] for f in result.report["findings"] if f["severity"] == "info"}
    assert "cannot write" in infos["integrity.fingerprint"], infos
    assert list(tmp_path.iterdir()) == [blocker]


# -- issue 15: the serial Python before and after reading, made cheap, must judge the same ------------


def _judged_run(written: WrittenRun, tmp_path: Path, tag: str, policy: Policy) -> tuple[list[dict], list[dict]]:
    """The daemon's sequence in this process: each checkpoint against the last one and the history
    so far, then the noisy one; the reports (without their times) and the history files' arrays."""
    reports, files = [], []
    history, previous = None, None
    for i, prefix in enumerate([*written.prefixes, written.noisy]):
        if prefix == written.noisy:
            previous = written.prefixes[-2]
        out = tmp_path / f"{tag}-{i}.npz"
        request = VerifyRequest(
            prefix, previous, policy=policy, history=history, history_out=str(out), history_required=False
        )
        verification = verify_checkpoint(request)
        report = verification.report.to_dict()
        for key in ("created", "timings", "tool"):
            report.pop(key)
        reports.append(report)
        if verification.history:
            with np.load(out, allow_pickle=False) as z:
                files.append({k: (z[k].dtype.str, z[k].shape, z[k].tobytes()) for k in z.files})
            history = str(out)
        previous = prefix
    return reports, files


def _one_by_one(self: History, names: list[str], gap: float | None) -> dict[str, Expected]:
    """History.expected as it was: _series tensor by tensor."""
    rows = [self.index[n] for n in names if n in self.index]
    scaled = self.arrays["change"][rows].astype(np.float64) * self.scale_to(gap)
    stats = {self.names[r]: _series(row) for r, row in zip(rows, scaled, strict=True)}
    return {name: e for name, e in stats.items() if e is not None}


POLICIES = {
    "default": Policy(),
    "strict": Policy(min_history=2, max_jump=0.005, max_norm_growth=1.001, history_tolerance=0.5),
    "globs": Policy(
        exclude=["*layer_with_weights-3/bias*"],
        frozen=["*beta*"],
        overrides=[Override(pattern="*kernel*", max_jump=0.001), Override(pattern="*gamma*", exclude=True)],
    ),
}


@pytest.mark.parametrize("name", sorted(POLICIES))
def test_a_run_is_judged_the_same_as_tensor_by_tensor(
    written: WrittenRun, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """Reports (findings and their messages, drift, tensors) and history files, bit for bit, as
    with every shortcut taken out: the history's expectations tensor by tensor, each tensor's
    change measured anew by the rules and by the history, the policy's settings asked per call,
    the index decoded entry by entry and names worked out per checkpoint."""
    policy = POLICIES[name]
    fast = _judged_run(written, tmp_path, "fast", policy)
    monkeypatch.setattr(History, "expected", _one_by_one)
    monkeypatch.setattr(engine, "measure", lambda *args, **kwargs: None)  # the rules and the history measure
    monkeypatch.setattr(Settings, "__call__", lambda self, n, d: self.policy.settings_for(n, d))
    monkeypatch.setattr(bundle_module, "decode_entries", lambda values: [None] * len(values))
    monkeypatch.setattr(names_module, "_NAMED_LIMIT", 0)  # nothing kept
    bundle_module._graph_naming.cache_clear()
    slow = _judged_run(written, tmp_path, "slow", policy)
    assert fast[0] == slow[0]
    assert fast[1] == slow[1]
    findings = {(f["check"], f.get("basis")) for report in fast[0] for f in report["findings"]}
    assert ("drift.jump", "history") in findings  # judged by the history, with its expectations


def test_each_change_is_measured_once(written: WrittenRun, monkeypatch: pytest.MonkeyPatch) -> None:
    """The rules and the run's history share one measurement of each tensor's change (today's
    main measured every tensor twice per verification)."""
    made = []
    init = Change.__init__

    def counted(self, *args, **kwargs):
        made.append(args[0].name if args else kwargs["result"].name)
        init(self, *args, **kwargs)

    monkeypatch.setattr(Change, "__init__", counted)
    report, _ = verify_paths(written.prefixes[3], written.prefixes[2])
    assert report.history_entry is not None
    assert len(made) == len(set(made)) == len(report.history_entry.tensors) > 0
