"""The one verification sequence: what `ckptwatch verify` and a daemon worker both run.

    verify_checkpoint(request, progress=None, model_checks=None) -> Verification

In order:
1. references: a previous checkpoint deleted before or while it is read (CheckpointManager's
   max_to_keep) is replaced by its fingerprint (`request.previous_fingerprint`); a golden
   that is not there is an error, or a warning when the request says it is optional;
2. the engine streams the candidate and its references through the checks;
3. the model-aware checks, when the request asks for them: `model_checks` is the callable
   that runs them (ckptwatch.model.checks.add_model_checks), handed in by the caller so that
   this layer never imports TensorFlow; it gets what the run's history showed on the probe
   batch (whether the run reached the golden, its best accuracy);
4. the fingerprint gate: only a checkpoint that passed its integrity checks (or, for
   `ckptwatch fingerprint`, its whole verification) is fingerprinted;
5. the run's history (`request.history`, read before the engine runs): a candidate that still
   carries the jump of a checkpoint that failed, from that one's state, fails too
   (ckptwatch.verify.continues), and one whose weights went back to an earlier checkpoint of the
   run is named as such (ckptwatch.verify.rewind); the history extended by this checkpoint is written to
   `request.history_out` if it passed (pass or warn), the same history noting it if it failed a
   drift check.

A candidate whose files the daemon holds open (`request.held`, see ckptwatch.formats.held)
is read through them, so CheckpointManager deleting it meanwhile does not matter: its report
names its own path. A candidate deleted meanwhile that is not held raises CheckpointVanished
(the daemon skips it). Model checks
that cannot run raise ModelChecksError (ModelTimeout past their time limit: the calling
process must exit, the thread running TensorFlow cannot be stopped).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from ckptwatch.errors import (
    CheckpointNotFound,
    CheckpointVanished,
    CkptwatchError,
    ModelChecksError,
)
from ckptwatch.formats import checkpoint_exists
from ckptwatch.formats.layout import reference_available
from ckptwatch.policy import Policy
from ckptwatch.verify.continues import continues_findings, next_history
from ckptwatch.verify.engine import Options, Progress, verify_paths
from ckptwatch.verify.history import History, HistoryError, ProbeRecord
from ckptwatch.verify.report import Finding, Report
from ckptwatch.verify.request import ModelSpec, VerifyRequest
from ckptwatch.verify.rewind import rewind_findings

# (report, candidate, golden, spec, policy, what the run's history showed on the probe batch)
ModelChecks = Callable[[Report, str, "str | None", ModelSpec, Policy, "ProbeRecord | None"], None]


@dataclass
class Verification:
    report: Report
    fingerprint: str | None = None  # the fingerprint file written, if one was
    history: str | None = None  # the history file written (request.history_out), if one was
    not_fingerprinted: str | None = None  # why none was written although the request asked for one


@dataclass(frozen=True)
class _Standing:
    """The candidate read through the daemon's held files: `root` (the stand-in's directory)
    stands for the candidate's own directory in every name shown."""

    root: str
    original: str  # the candidate's own path
    fully: bool  # every file held (else: a file read by its path may be gone)

    def show(self, text: str) -> str:
        return text.replace(self.root, os.path.dirname(self.original))

    def shown(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.show(value)
        if isinstance(value, dict):
            return {k: self.shown(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.shown(v) for v in value]
        return value

    def fix(self, report: Report) -> None:
        """Names in the report mean the candidate, not its stand-in."""
        report.checkpoint = self.shown(report.checkpoint)
        report.findings = [replace(f, message=self.show(f.message)) for f in report.findings]
        report.model = self.shown(report.model)
        entry = report.history_entry
        if entry is not None and isinstance(getattr(entry, "checkpoint", None), str):
            report.history_entry = replace(entry, checkpoint=self.show(entry.checkpoint))


def verify_checkpoint(
    request: VerifyRequest, progress: Progress | None = None, model_checks: ModelChecks | None = None
) -> Verification:
    if not request.held:
        return _verify(request, progress, model_checks, None)
    from ckptwatch.formats.held import forget, stand_in

    with tempfile.TemporaryDirectory(prefix="ckptwatch-held-") as root:
        try:
            try:
                standing = stand_in(root, request.candidate, request.held)
            except (OSError, ValueError):  # no stand-in: read by path, as if nothing were held
                return _verify(replace(request, held=None), progress, model_checks, None)
            how = _Standing(root, request.candidate, all(request.held.values()))
            try:
                return _verify(replace(request, candidate=standing, held=None), progress, model_checks, how)
            except CkptwatchError as e:  # its message names the candidate, not the stand-in
                e.args = tuple(how.shown(list(e.args)))
                raise
        finally:
            forget(root)


def _verify(
    request: VerifyRequest, progress: Progress | None, model_checks: ModelChecks | None, standing: _Standing | None
) -> Verification:
    name = standing.original if standing else request.candidate

    def gone() -> bool:
        if not checkpoint_exists(request.candidate):
            return True
        return standing is not None and not standing.fully and not checkpoint_exists(standing.original)

    present = request.discovered or checkpoint_exists(request.candidate)
    options = Options(threads=request.threads, sketch=bool(request.fingerprint_out), progress=progress)
    golden, golden_missing = request.golden, None
    if golden and not request.golden_required and not reference_available(golden):
        golden, golden_missing = None, golden  # not mounted (yet): verify without it, and say so
    history, last, history_problem = _history(request, options)
    if last and not request.previous:  # from the run's directory: the last earlier checkpoint that passed
        request = replace(request, previous=last)
    if history is not None and history.rejected:  # the candidate's sketches: where is it vs a failed one?
        options = replace(options, sketch=True)
    try:
        report, prints = _engine(request, golden, replace(options, history=history))
    except CheckpointNotFound as e:
        if request.discovered and gone():
            raise CheckpointVanished(f"{name}: deleted before it was verified") from e
        raise
    if report.verdict == "fail" and present and gone():
        raise CheckpointVanished(f"{name}: deleted while being read")
    if standing:
        standing.fix(report)
    if golden_missing:
        report.add_findings(
            [
                Finding(
                    "warn",
                    "integrity.reference",
                    f"golden {golden_missing} is not available: not compared",
                    None,
                    "golden",
                )
            ]
        )
    if history_problem:
        report.add_findings(
            [Finding("warn", "integrity.history", f"{history_problem}: judged without the run's history")]
        )
    baseline = [request.previous, request.previous_fingerprint]
    report.add_findings(continues_findings(history, report, prints, baseline))
    report.add_findings(rewind_findings(history, report))
    if request.model is not None:
        record = history.probe_record(request.policy.min_history) if history is not None else None
        _model_checks(report, request, golden, model_checks, record, gone, name)
        if standing:
            standing.fix(report)
    verification = Verification(report)
    if request.fingerprint_out:
        verification.not_fingerprinted = _fingerprint_refusal(report, request.fingerprint_gate)
        if verification.not_fingerprinted is None and prints:
            from ckptwatch.verify.fingerprint import write_fingerprint

            try:
                write_fingerprint(request.fingerprint_out, report.checkpoint, prints)
                verification.fingerprint = request.fingerprint_out
            except OSError as e:
                if not request.discovered:
                    raise
                # the daemon's state dir is full or read-only: the verdict stands, without a fingerprint
                verification.not_fingerprinted = f"not fingerprinted: cannot write {request.fingerprint_out}: {e}"
                report.add_findings([Finding("info", "integrity.fingerprint", verification.not_fingerprinted)])
    if request.history_out:  # extended if it passed; noting it if it failed a drift check
        policy = request.policy
        written = next_history(
            history, report, verification.fingerprint, policy.history_window, baseline, policy.min_history
        )
        if written is not None:
            try:
                written.save(request.history_out)
                verification.history = request.history_out
            except OSError as e:
                if not request.discovered:
                    raise
                message = f"the run's history not extended: cannot write {request.history_out}: {e}"
                report.add_findings([Finding("info", "integrity.history", message)])
    return verification


def _history(request: VerifyRequest, options: Options) -> tuple[History | None, str | None, str | None]:
    """(the run's history, the last earlier checkpoint that passed when it came from the run's
    directory, why there is none although the request named one: the daemon's requests only,
    for the CLI that is an error)."""
    if not request.history or request.policy.profile != "training":
        return None, None, None
    from ckptwatch.verify.replay import load_history

    try:
        history, last = load_history(
            request.history, request.candidate, request.policy, replace(options, progress=None)
        )
        return history, last, None
    except HistoryError as e:
        if request.history_required:
            raise
        return None, None, str(e)


def _engine(request: VerifyRequest, golden: str | None, options: Options) -> tuple[Report, list]:
    """The engine run, with the previous checkpoint's fingerprint standing in for it if
    the checkpoint was deleted before or while it was read."""
    previous, fallback = request.previous, request.previous_fingerprint

    def previous_gone() -> bool:
        return bool(previous and fallback and previous != fallback and not checkpoint_exists(previous))

    def run(reference: str | None) -> tuple[Report, list]:
        return verify_paths(request.candidate, reference, golden, request.policy, options)

    try:
        report, prints = run(previous)
    except CkptwatchError:
        if not previous_gone():
            raise
        return run(fallback)
    touched = any(f.reference == "previous" and f.check.startswith("integrity.") for f in report.findings)
    if touched and previous_gone():  # deleted while we read it
        return run(fallback)
    return report, prints


def _model_checks(
    report: Report,
    request: VerifyRequest,
    golden: str | None,
    model_checks: ModelChecks | None,
    record: ProbeRecord | None,
    gone: Callable[[], bool],
    name: str,
) -> None:
    assert request.model is not None
    if model_checks is None:
        raise ModelChecksError("model-aware checks were asked for, but this process cannot run them")
    try:
        model_checks(report, request.candidate, golden, request.model, request.policy, record)
    except ModelChecksError:
        raise
    except CheckpointNotFound as e:
        if gone():
            raise CheckpointVanished(f"{name}: deleted while being read") from e
        raise ModelChecksError(str(e)) from e
    except CkptwatchError as e:
        raise ModelChecksError(str(e)) from e


def integrity_failed(report: Report) -> bool:
    """The candidate itself (not a reference) failed an integrity check."""
    return any(
        f.severity == "fail" and f.reference is None and f.check.startswith("integrity.") for f in report.findings
    )


def _fingerprint_refusal(report: Report, gate: str) -> str | None:
    fails = [f for f in report.findings if f.severity == "fail"]
    if gate == "integrity":
        fails = [f for f in fails if f.reference is None and f.check.startswith("integrity.")]
    if not fails:
        return None
    what = "its integrity checks" if gate == "integrity" else "verification"
    named = "; ".join(f"{f.check} {f.tensor or '-'}: {f.message}" for f in fails[:3])
    return f"not fingerprinted: the checkpoint failed {what} ({named[:300]})"
