"""The policy schema: which drift is expected and which is a failure, as thresholds.

    Policy      pydantic model: profile, thresholds, per-tensor overrides, model-aware options
    Override    thresholds for the tensors matching one glob (the last matching override wins)

Schema only, no array code: the daemon's main process validates policies from its config
with it, `ckptwatch.verify.rules` evaluates them and `ckptwatch.model` reads the restore
and probe options. It imports nothing of ckptwatch but the tensor kinds.
"""

from __future__ import annotations

import fnmatch
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from ckptwatch.formats.kinds import OPTIMIZER, WEIGHT

__all__ = ["FINETUNE_GOLDEN_DRIFT", "Override", "Policy"]

# A fine-tuned run whose weights moved as far from the golden as the golden's own norm has left it:
# that is a new model, not a fine-tune of the golden.
FINETUNE_GOLDEN_DRIFT = 1.0


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Override(_Strict):
    pattern: str = Field(description="glob on the tensor name or its display name")
    max_jump: float | None = Field(None, ge=0)
    max_golden_drift: float | None = Field(None, ge=0)
    atol: float | None = Field(None, ge=0)
    rtol: float | None = Field(None, ge=0)
    frozen: bool | None = None
    exclude: bool | None = None


class Policy(_Strict):
    profile: Literal["training", "replica"] = "training"
    include_optimizer: bool = False
    exclude: list[str] = Field(default_factory=list, description="globs: not compared at all")
    frozen: list[str] = Field(default_factory=list, description="globs: expected not to change vs previous")
    # drift vs previous (training): see ckptwatch.verify.judge for the rules and the formulas
    max_jump: float = Field(
        1.0,
        ge=0,
        description="per tensor, while there is no history to judge it by: a change vs previous (relative L2, "
        "or of its layer's scale for a tensor whose norm is near zero) above this warns",
    )
    max_global_jump: float = Field(
        0.5, ge=0, description="whole checkpoint, without history: relative L2 vs previous above this warns"
    )
    max_norm_growth: float = Field(
        10.0, gt=1, description="per tensor, without history: ||candidate|| / ||previous|| above this warns"
    )
    max_abs_value: float = Field(1e6, gt=0, description="any |weight| above this fails (explosion)")
    min_reference_rms: float = Field(
        1e-3,
        ge=0,
        description="the smallest RMS a change is measured against: a tensor whose own RMS (and its layer's) "
        "is below it has its change divided by sqrt(n) x this",
    )
    min_history: int = Field(
        3,
        ge=2,
        description="past changes a tensor needs before its own history judges it (fewer: its group's, once the "
        "run has this many; none: only clear-cut rules fail, the rest warns)",
    )
    history_window: int = Field(32, ge=2, le=4096, description="passing checkpoints a watch's history keeps")
    history_tolerance: float = Field(
        4.0,
        gt=0,
        description="a change fails above median x exp(history_tolerance x sigma), sigma the robust spread "
        "(1.4826 x MAD) of the log of the tensor's past changes",
    )
    min_history_ratio: float = Field(
        2.5, gt=1, description="the history's limit is never below this x the typical (median) past change"
    )
    clear_jump: float = Field(
        10.0, gt=0, description="per tensor: a change vs previous above this fails, with or without history"
    )
    clear_norm_growth: float = Field(
        100.0, gt=1, description="per tensor: a norm grown (or a kernel shrunk) by more than this factor fails"
    )
    reset_cosine: float = Field(
        0.2,
        ge=0,
        le=1,
        description="a kernel (64+ values) whose cosine with previous falls below this fails as re-initialised",
    )
    frozen_after: int = Field(
        3,
        ge=1,
        description="a tensor that trained and is then identical to previous this many checkpoints in a row "
        "while the rest trains fails drift.frozen (fewer: warn); likewise a whole checkpoint whose step advances",
    )
    # what the golden is to a training run (profile "replica": an exported copy, every value equal)
    golden_mode: Literal["target", "finetune"] = Field(
        "target",
        description="target: where a run from scratch is going: the functional comparison with golden fails only "
        "once the run has reached it (an earlier passing checkpoint met it) and falls back; finetune: the run "
        "starts from the golden: the functional comparison applies from the first checkpoint and the whole "
        "checkpoint's drift from golden is bounded (max_global_golden_drift, default FINETUNE_GOLDEN_DRIFT)",
    )
    max_golden_drift: float | None = Field(None, ge=0, description="per tensor: relative L2 vs golden bound")
    max_global_golden_drift: float | None = Field(
        None, ge=0, description="whole checkpoint: relative L2 vs golden bound (unset: none; 1.0 with finetune)"
    )
    atol: float = Field(1e-6, ge=0, description="replica: absolute tolerance")
    rtol: float = Field(1e-5, ge=0, description="replica: relative tolerance")
    overrides: list[Override] = Field(default_factory=list)
    # model-aware checks (restore status, functional probe)
    restore: Literal["consumed", "existing", "partial"] = Field(
        "consumed",
        description="consumed: every checkpoint value must be used (fail); existing: unused values warn; "
        "partial: unused values are reported only",
    )
    allow_unused: list[str] = Field(
        default_factory=list, description="globs on checkpoint object paths that may go unused (e.g. 'optimizer*')"
    )
    allow_unrestored: list[str] = Field(
        default_factory=list, description="globs on model object paths that may keep their initializers"
    )
    output_atol: float = Field(1e-4, ge=0, description="replica: absolute tolerance on probe outputs")
    output_rtol: float = Field(1e-3, ge=0, description="replica: relative tolerance on probe outputs")
    max_output_relative_diff: float | None = Field(
        1.0, ge=0, description="training: relative L2 difference of probe outputs vs golden above this fails"
    )
    min_agreement: float = Field(0.5, ge=0, le=1, description="training: argmax agreement with golden below this fails")
    max_accuracy_drop: float = Field(
        0.1,
        ge=0,
        le=1,
        description="training: probe accuracy drop vs golden that fails",
    )
    max_accuracy_regression: float = Field(
        0.2,
        ge=0,
        le=1,
        description="training: probe accuracy this far below the best a kept checkpoint of the run reached (its "
        "history) fails functional.regression; early training dips by 10 points on a small probe batch",
    )

    def global_golden_bound(self) -> float | None:
        """The whole checkpoint's relative L2 vs golden that fails (None: not bounded)."""
        if self.max_global_golden_drift is not None:
            return self.max_global_golden_drift
        if self.profile == "training" and self.golden_mode == "finetune":
            return FINETUNE_GOLDEN_DRIFT
        return None

    def compared_kinds(self) -> set[str]:
        """The tensor kinds (ckptwatch.formats.kinds) that drift and replica checks compare."""
        return {WEIGHT, OPTIMIZER} if self.include_optimizer else {WEIGHT}

    def settings_for(self, name: str, display: str) -> dict:
        """Effective thresholds for one tensor."""
        s = {
            "max_jump": self.max_jump,
            "max_golden_drift": self.max_golden_drift,
            "atol": self.atol,
            "rtol": self.rtol,
            "frozen": bool(self.frozen) and _matches(self.frozen, name, display),
            "exclude": bool(self.exclude) and _matches(self.exclude, name, display),
        }
        for o in self.overrides:
            if _matches([o.pattern], name, display):
                s.update({k: v for k, v in o.model_dump(exclude={"pattern"}).items() if v is not None})
        return s


def _matches(patterns: list[str], name: str, display: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(display, p) for p in patterns)
