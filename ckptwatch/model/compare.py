"""The functional check as pure arithmetic: outputs in, figures and findings out.

Outputs are flattened to {name: array}: a single tensor is "output", a tuple or
list gives "0", "1", ..., a dict (SavedModel signatures) keeps its keys, nested
ones joined with "/". Every output is compared; the figures of the whole check
are the worst over outputs.

    replica   every element within output_atol + output_rtol * |reference|
    training  relative L2 difference <= max_output_relative_diff, argmax agreement
              >= min_agreement, accuracy (when labels are given) not lower than
              the reference's by more than max_accuracy_drop

What a training checkpoint that misses the golden means depends on what the golden is to the
run (policy.golden_mode) and on what the run's history showed (`record`):
    finetune  the run starts from the golden: missing it fails, from the first checkpoint
    target    the golden is where a run from scratch is going: early checkpoints naturally miss
              it, so missing it is reported (info) until the run has met it at min_history kept
              checkpoints in a row (one marginal pass early in training is not arrival); from
              then on, falling back fails
In both, probe accuracy more than max_accuracy_regression below the best a kept checkpoint of the run
reached fails `functional.regression` (a sudden drop against the run's own best).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np

from ckptwatch.policy import Policy
from ckptwatch.verify.history import ProbeRecord
from ckptwatch.verify.report import Finding

CHECK = "functional"


def flatten_outputs(outputs, prefix: str = "") -> dict[str, np.ndarray]:
    """{name: float64-or-native ndarray} for a tensor, a tuple/list or a (nested) dict of them."""
    if isinstance(outputs, Mapping):
        flat: dict[str, np.ndarray] = {}
        for key in sorted(outputs, key=str):
            flat.update(flatten_outputs(outputs[key], f"{prefix}{key}/"))
        return flat
    if isinstance(outputs, (list, tuple)):
        if len(outputs) == 1 and not prefix:
            return flatten_outputs(outputs[0], prefix)
        flat = {}
        for i, item in enumerate(outputs):
            flat.update(flatten_outputs(item, f"{prefix}{i}/"))
        return flat
    return {prefix.rstrip("/") or "output": np.asarray(outputs)}


def _argmax_agreement(c: np.ndarray, r: np.ndarray) -> float | None:
    if c.ndim < 2 or c.shape[-1] < 2:
        return None
    return float(np.mean(np.argmax(c, axis=-1) == np.argmax(r, axis=-1)))


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float | None:
    """Top-1 accuracy for class scores [batch, classes] with integer or one-hot labels."""
    if outputs.ndim != 2 or outputs.shape[-1] < 2 or labels.shape[:1] != outputs.shape[:1]:
        return None
    truth = np.argmax(labels, axis=-1) if labels.ndim == 2 and labels.shape == outputs.shape else labels.reshape(-1)
    if truth.shape[0] != outputs.shape[0] or not np.issubdtype(truth.dtype, np.number):
        return None
    return float(np.mean(np.argmax(outputs, axis=-1) == truth.astype(np.int64)))


def _first_accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float | None:
    if labels is None:
        return None
    for value in outputs.values():
        acc = accuracy(value, labels)
        if acc is not None:
            return acc
    return None


def nonfinite_findings(outputs: dict[str, np.ndarray]) -> tuple[int, list[Finding]]:
    total, findings = 0, []
    for name, value in outputs.items():
        if not np.issubdtype(value.dtype, np.floating):
            continue
        bad = int(value.size - np.count_nonzero(np.isfinite(value)))
        total += bad
        if bad:
            findings.append(
                Finding(
                    "fail",
                    "functional.nonfinite",
                    f"output {name!r}: {bad} of {value.size} values are NaN or Inf on the probe batch",
                )
            )
    return total, findings


def compare_outputs(
    candidate: dict[str, np.ndarray],
    reference: dict[str, np.ndarray] | None,
    labels: np.ndarray | None,
    policy: Policy,
    reference_name: str = "golden",
    record: ProbeRecord | None = None,
) -> tuple[dict, list[Finding]]:
    """Figures for the report's model.functional section, and the findings."""
    figures, findings, vs_golden = _compare(candidate, reference, labels, policy, reference_name)
    if policy.profile == "replica":
        return figures, findings + vs_golden
    if reference is not None and not figures["nonfinite_outputs"] and figures["outputs"]:
        figures["golden_met"] = not vs_golden
    findings += _as_judged(vs_golden, policy, record)
    findings += _regression(figures["accuracy"], policy, record)
    return figures, findings


def _as_judged(vs_golden: list[Finding], policy: Policy, record: ProbeRecord | None) -> list[Finding]:
    """The functional comparison's failures as the golden's meaning for this run makes them."""
    if not vs_golden or policy.golden_mode == "finetune":
        return vs_golden
    if record is not None and record.reached:
        note = f"; this run met the golden at {record.reached} and has fallen back (golden_mode = target)"
        return [replace(f, message=f.message + note, basis=f"met at {record.reached}") for f in vs_golden]
    note = "; not judged: the run has not reached the golden yet (golden_mode = target)"
    return [replace(f, severity="info", message=f.message + note, basis="golden_mode = target") for f in vs_golden]


def _regression(acc: float | None, policy: Policy, record: ProbeRecord | None) -> list[Finding]:
    if acc is None or record is None or record.best_accuracy is None:
        return []
    best, allowed = record.best_accuracy, policy.max_accuracy_regression
    if not best - acc > allowed + 1e-12:
        return []
    return [
        Finding(
            "fail",
            "functional.regression",
            f"accuracy on the probe batch {acc:.1%}, this run's best {best:.1%} ({record.best_checkpoint}): "
            f"a drop of {best - acc:.1%} (allowed: {allowed:.0%})",
            value=acc,
            limit=best - allowed,
            expected={"min": best - allowed, "best": best},
            basis="history: the run's best probe accuracy; policy: max_accuracy_regression",
        )
    ]


def _compare(
    candidate: dict[str, np.ndarray],
    reference: dict[str, np.ndarray] | None,
    labels: np.ndarray | None,
    policy: Policy,
    reference_name: str,
) -> tuple[dict, list[Finding], list[Finding]]:
    """(figures, findings, the findings that say the candidate misses the reference's
    criteria: divergence, agreement, accuracy and, for a replica, any mismatch)."""
    nonfinite, findings = nonfinite_findings(candidate)
    figures: dict = {
        "reference": reference_name if reference is not None else None,
        "outputs": {},
        "max_abs_diff": None,
        "relative_diff": None,
        "agreement": None,
        "nonfinite_outputs": nonfinite,
        "accuracy": _first_accuracy(candidate, labels),
        "reference_accuracy": _first_accuracy(reference, labels) if reference is not None else None,
    }
    vs: list[Finding] = []
    if reference is None:
        return figures, findings, vs
    missing = sorted(set(reference) - set(candidate))
    extra = sorted(set(candidate) - set(reference))
    if missing or extra:
        findings.append(
            Finding(
                "fail",
                "functional.outputs",
                f"outputs differ from the {reference_name}: missing {missing or 'none'}, unexpected {extra or 'none'}",
                reference=reference_name,
            )
        )
    replica = policy.profile == "replica"
    if nonfinite:  # already a failure; differences with NaN in them say nothing more
        return figures, findings, vs
    for name in sorted(set(candidate) & set(reference)):
        c, r = candidate[name], reference[name]
        if c.shape != r.shape:
            findings.append(
                Finding(
                    "fail",
                    "functional.outputs",
                    f"output {name!r} has shape {list(c.shape)}, the {reference_name} {list(r.shape)}",
                    reference=reference_name,
                )
            )
            continue
        c64, r64 = c.astype(np.float64), r.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(c64 - r64)
            max_abs = float(np.max(diff)) if diff.size else 0.0
            ref_norm = float(np.linalg.norm(r64))
            rel = float(np.linalg.norm(c64 - r64)) / (ref_norm if ref_norm > 0 else 1.0)
            outside = int(np.count_nonzero(~(diff <= policy.output_atol + policy.output_rtol * np.abs(r64))))
        agreement = _argmax_agreement(c64, r64)
        figures["outputs"][name] = {
            "max_abs_diff": max_abs,
            "relative_diff": rel,
            "agreement": agreement,
            "outside_tolerance": outside,
        }
        where = f"output {name!r} vs the {reference_name}"
        if replica and outside:
            vs.append(
                Finding(
                    "fail",
                    "functional.mismatch",
                    f"{where}: {outside} of {c.size} values differ by more than "
                    f"{policy.output_atol:g} + {policy.output_rtol:g}*|ref| (max abs diff {max_abs:.3g})",
                    reference=reference_name,
                    value=outside,
                    limit=0,
                    expected={"atol": policy.output_atol, "rtol": policy.output_rtol},
                    basis="policy: output_atol, output_rtol",
                )
            )
        if not replica and policy.max_output_relative_diff is not None and not rel <= policy.max_output_relative_diff:
            vs.append(
                Finding(
                    "fail",
                    "functional.divergence",
                    f"{where}: relative difference {rel:.3g} > {policy.max_output_relative_diff:g} "
                    f"(max abs diff {max_abs:.3g})",
                    reference=reference_name,
                    value=rel,
                    limit=policy.max_output_relative_diff,
                    basis="policy: max_output_relative_diff",
                )
            )
        if not replica and agreement is not None and agreement < policy.min_agreement:
            vs.append(
                Finding(
                    "fail",
                    "functional.agreement",
                    f"{where}: argmax agrees on {agreement:.1%} of the probe batch (< {policy.min_agreement:.0%})",
                    reference=reference_name,
                    value=agreement,
                    limit=policy.min_agreement,
                    basis="policy: min_agreement",
                )
            )
    per = figures["outputs"].values()
    if per:
        figures["max_abs_diff"] = max(o["max_abs_diff"] for o in per)
        figures["relative_diff"] = max(o["relative_diff"] for o in per)
        agreements = [o["agreement"] for o in per if o["agreement"] is not None]
        figures["agreement"] = min(agreements) if agreements else None
    acc, ref_acc = figures["accuracy"], figures["reference_accuracy"]
    if acc is not None and ref_acc is not None:
        allowed = 0.0 if replica else policy.max_accuracy_drop
        if ref_acc - acc > allowed + 1e-12:
            vs.append(
                Finding(
                    "fail",
                    "functional.accuracy",
                    f"accuracy on the probe batch {acc:.1%}, the {reference_name} {ref_acc:.1%} "
                    f"(drop allowed: {allowed:.0%})",
                    reference=reference_name,
                    value=acc,
                    limit=ref_acc - allowed,
                    expected={"min": ref_acc - allowed, "reference": ref_acc},
                    basis="policy: max_accuracy_drop",
                )
            )
    return figures, findings, vs
