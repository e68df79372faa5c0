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

A fault replaces the checkpoint at its position: it is verified against the baseline that
healthy checkpoint had, and a fault spanning several saves continues with the same rule.
"""

from __future__ import annotations

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

    @property
    def label(self) -> str:
        return f"{self.baseline}:{self.golden}" + (":model" if self.model else "")

    @classmethod
    def parse(cls, text: str) -> Config:
        """BASELINE[:GOLDEN[:model]]"""
        parts = text.split(":")
        config = cls(parts[0], parts[1] if len(parts) > 1 else "none", parts[2:] == ["model"])
        if config.baseline not in BASELINES or config.golden not in GOLDENS or parts[2:] not in ([], ["model"]):
            raise ValueError(
                f"{text!r}: expected BASELINE:GOLDEN[:model] with BASELINE in {BASELINES}, GOLDEN in {GOLDENS}"
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


class Verifier:
    def __init__(self, worker: Worker, policy: Policy, config: Config) -> None:
        self.worker, self.policy, self.config = worker, policy, config

    def model_spec(self, run: Run) -> ModelSpec | None:
        if not self.config.model or RUNS[run.name].build is None:
            return None
        return ModelSpec(
            factory=f"bench.quality.models:{run.name}", probe=str(run.dir / "probe.npz"), python_path=(str(ROOT),)
        )

    def verify(self, candidate: str, previous: str | None, golden: str | None, model: ModelSpec | None) -> Outcome:
        request = VerifyRequest(
            candidate, previous, golden=golden, golden_required=False, policy=self.policy, model=model, discovered=True
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
        rule, golden, model = self.config.baseline, self.config.golden_for(run), self.model_spec(run)
        previous: str | None = None
        baseline_at: list[str | None] = []
        healthy = []
        for ckpt in run.checkpoints:
            baseline_at.append(previous)
            outcome = self.verify(ckpt, previous, golden, model)
            healthy.append(outcome)
            if outcome.advances(rule):
                previous = ckpt
        result = RunResult(run, healthy)
        for fault in faults:
            previous = baseline_at[fault.position]
            outcomes = []
            for ckpt in fault.checkpoints:
                outcome = self.verify(ckpt, previous, golden, model)
                outcomes.append(outcome)
                if outcome.advances(rule):
                    previous = ckpt
            names = None
            if fault.tensors is not None:  # model-aware findings name variables by their paths
                names = {*fault.tensors, *(run.tensors[k]["path"] for k in fault.tensors if k in run.tensors)}
            result.faults.append(FaultOutcome(fault, outcomes, names))
        return result
