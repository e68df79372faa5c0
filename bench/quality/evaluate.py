"""Verify every checkpoint the way the daemon does, and score the verdicts.

For each run, checkpoint by checkpoint in step order, one VerifyRequest as the daemon builds it
(ckptwatch.daemon.app: previous = the watch's baseline, golden optional and not required, the
watch's policy, discovered=True) goes to a real worker process. What becomes the baseline
after a verification is the BASELINE RULE, a parameter:

    passed      the last checkpoint that did not fail (pass or warn): how the daemon is meant to
                behave (DESIGN.md, "Baselines"); a failed checkpoint never becomes "previous"
    integrity   the last checkpoint whose integrity checks passed: what the daemon's code does
                today (the worker fingerprints it, and the fingerprint makes it "previous")
    previous    simply the checkpoint before, whatever its verdict

Golden modes: none, first (the run's first checkpoint), final (its last one). With ":model",
the request also asks for the model-aware checks (restore, functional probe vs golden) with the
run's factory (bench/quality/models.py) and probe batch, as a watch's [watch.model] would.

The run's history (ckptwatch.verify.history) is kept as the daemon keeps a watch's
(ckptwatch.daemon.history): each request gets it and a place to write it extended, and what the
worker wrote becomes the history when the checkpoint becomes the baseline. ":nohistory" leaves it
out: every checkpoint is judged by the conservative rules, as `ckptwatch verify` without --history.

A fault replaces the checkpoint at its position: it is verified against the baseline that
healthy checkpoint had, and a fault spanning several saves continues with the same rule.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field

from bench.quality.faults import Fault
from bench.quality.runs import ROOT, RUNS, Run
from bench.quality.worker import Worker
from ckptwatch.policy import Policy
from ckptwatch.verify.request import ModelSpec, VerifyRequest

BASELINES = ("passed", "integrity", "previous")
GOLDENS = ("none", "first", "final")
VERDICTS = ("pass", "warn", "fail", "error")
_RANK = {"pass": 0, "warn": 1, "error": 2, "fail": 3}


@dataclass(frozen=True)
class Config:
    baseline: str = "passed"
    golden: str = "none"
    model: bool = False  # model-aware checks too (factory bench.quality.models:<run>, the run's probe batch)
    history: bool = True  # the run's history, kept as the daemon keeps it

    @property
    def label(self) -> str:
        return (
            f"{self.baseline}:{self.golden}" + (":model" if self.model else "") + ("" if self.history else ":nohistory")
        )

    @classmethod
    def parse(cls, text: str) -> Config:
        """BASELINE[:GOLDEN[:model][:nohistory]]"""
        parts = text.split(":")
        extras = parts[2:]
        config = cls(parts[0], parts[1] if len(parts) > 1 else "none", "model" in extras, "nohistory" not in extras)
        if (
            config.baseline not in BASELINES
            or config.golden not in GOLDENS
            or not set(extras) <= {"model", "nohistory"}
            or len(set(extras)) != len(extras)
        ):
            raise ValueError(
                f"{text!r}: expected BASELINE:GOLDEN[:model][:nohistory] with BASELINE in {BASELINES}, "
                f"GOLDEN in {GOLDENS}"
            )
        return config

    def golden_for(self, run: Run) -> str | None:
        return {"none": None, "first": run.checkpoints[0], "final": run.checkpoints[-1]}[self.golden]


@dataclass
class Outcome:
    """One verification."""

    checkpoint: str
    previous: str | None
    verdict: str
    findings: list[dict]  # the fail and warn findings
    seconds: float
    message: str = ""  # why an error

    def advances(self, rule: str) -> bool:
        """Whether this checkpoint becomes the baseline under `rule`."""
        if rule == "previous":
            return True
        if rule == "passed":
            return self.verdict in ("pass", "warn")
        return self.verdict != "error" and not any(
            f["severity"] == "fail" and f["reference"] is None and f["check"].startswith("integrity.")
            for f in self.findings
        )

    def caught(self, fault: Fault, names: set[str] | None) -> bool:
        """A fail finding with an expected check that names a damaged tensor (`names`: its
        checkpoint keys and variable paths; None: a whole-checkpoint fault, no tensor needed)."""
        return any(
            f["severity"] == "fail" and f["check"].startswith(fault.expect) and (names is None or f["tensor"] in names)
            for f in self.findings
        )


@dataclass
class FaultOutcome:
    fault: Fault
    outcomes: list[Outcome]
    names: set[str] | None  # what a finding may call the damaged tensors: checkpoint keys, variable paths

    @property
    def verdict(self) -> str:
        """The worst verdict of the sequence (score "any"), or the mildest (score "all")."""
        pick = max if self.fault.score == "any" else min
        return pick((o.verdict for o in self.outcomes), key=_RANK.__getitem__)

    @property
    def caught(self) -> bool:
        hits = [o.caught(self.fault, self.names) for o in self.outcomes]
        return any(hits) if self.fault.score == "any" else all(hits)


@dataclass
class RunResult:
    run: Run
    healthy: list[Outcome]
    faults: list[FaultOutcome] = field(default_factory=list)


class _History:
    """A run's history as the daemon keeps a watch's (ckptwatch.daemon.history): the current file
    and the checkpoint it ends at; the worker writes the next one for a candidate (extended if it
    passed, noting it if it failed a drift check); a request gets the history only if it ends at
    the request's previous. Snapshots let a fault start from the history its position had."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.dir = tempfile.mkdtemp(prefix="ckptwatch-bench-history-")
        self.current, self.next = os.path.join(self.dir, "run.npz"), os.path.join(self.dir, "next.npz")
        self.ends_at: str | None = None
        self.count = 0

    def request(self, previous: str) -> dict:
        if not self.enabled:
            return {}
        if os.path.exists(self.next):
            os.remove(self.next)
        usable = os.path.exists(self.current) and self.ends_at == previous
        self.count += 1  # every verified checkpoint gets its fingerprint, as the daemon's do
        return {
            "history": self.current if usable else None,
            "history_required": False,
            "history_out": self.next,
            "fingerprint_out": os.path.join(self.dir, f"{self.count}.fp.json"),
        }

    def update(self, candidate: str, outcome: Outcome, baseline: bool) -> None:
        """After a verification: the worker's file becomes the history; it ends at the candidate if
        that passed and became the baseline, else still where it did."""
        if not (self.enabled and os.path.exists(self.next)):
            return
        if outcome.verdict in ("pass", "warn") and not baseline:
            return  # passed, but not made the baseline: the daemon would not adopt it
        os.replace(self.next, self.current)
        if outcome.verdict in ("pass", "warn"):
            self.ends_at = candidate

    def snapshot(self, position: int) -> tuple[str | None, str | None]:
        if not os.path.exists(self.current):
            return None, self.ends_at
        return shutil.copyfile(self.current, os.path.join(self.dir, f"at-{position}.npz")), self.ends_at

    def restore(self, snapshot: tuple[str | None, str | None]) -> None:
        path, self.ends_at = snapshot
        if path is None:
            if os.path.exists(self.current):
                os.remove(self.current)
        else:
            shutil.copyfile(path, self.current)

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


class Verifier:
    def __init__(self, worker: Worker, policy: Policy, config: Config) -> None:
        self.worker, self.policy, self.config = worker, policy, config
        self.history = _History(False)

    def model_spec(self, run: Run) -> ModelSpec | None:
        if not self.config.model or RUNS[run.name].build is None:
            return None
        return ModelSpec(
            factory=f"bench.quality.models:{run.name}", probe=str(run.dir / "probe.npz"), python_path=(str(ROOT),)
        )

    def verify(self, candidate: str, previous: str | None, golden: str | None, model: ModelSpec | None) -> Outcome:
        history = self.history.request(previous) if previous is not None else {}
        request = VerifyRequest(
            candidate,
            previous,
            golden=golden,
            golden_required=False,
            policy=self.policy,
            model=model,
            discovered=True,
            **history,
        )
        t0 = time.perf_counter()
        result = self.worker.verify(request)
        seconds = time.perf_counter() - t0
        if result.status != "ok" or result.report is None:
            return Outcome(candidate, previous, "error", [], seconds, f"{result.status}: {result.message}")
        report = result.report
        problems = [f for f in report["findings"] if f["severity"] in ("fail", "warn")]
        return Outcome(candidate, previous, report["verdict"], problems, seconds)

    def run(self, run: Run, faults: list[Fault]) -> RunResult:
        self.history = _History(self.config.history)
        try:
            return self._run(run, faults)
        finally:
            self.history.close()

    def _run(self, run: Run, faults: list[Fault]) -> RunResult:
        rule, golden, model = self.config.baseline, self.config.golden_for(run), self.model_spec(run)
        previous: str | None = None
        baseline_at: list[str | None] = []
        history_at: list[tuple[str | None, str | None]] = []
        healthy = []
        for i, ckpt in enumerate(run.checkpoints):
            baseline_at.append(previous)
            history_at.append(self.history.snapshot(i))
            outcome = self.verify(ckpt, previous, golden, model)
            healthy.append(outcome)
            self.history.update(ckpt, outcome, outcome.advances(rule))
            if outcome.advances(rule):
                previous = ckpt
        result = RunResult(run, healthy)
        for fault in faults:
            previous = baseline_at[fault.position]
            self.history.restore(history_at[fault.position])
            outcomes = []
            for ckpt in fault.checkpoints:
                outcome = self.verify(ckpt, previous, golden, model)
                outcomes.append(outcome)
                self.history.update(ckpt, outcome, outcome.advances(rule))
                if outcome.advances(rule):
                    previous = ckpt
            names = None
            if fault.tensors is not None:  # model-aware findings name variables by their paths
                names = {*fault.tensors, *(run.tensors[k]["path"] for k in fault.tensors if k in run.tensors)}
            result.faults.append(FaultOutcome(fault, outcomes, names))
        return result
