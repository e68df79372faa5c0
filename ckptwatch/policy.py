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

__all__ = ["Override", "Policy"]


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
    max_jump: float = Field(1.0, ge=0, description="per tensor: relative L2 vs previous above this fails")
    max_global_jump: float = Field(0.5, ge=0, description="whole checkpoint: relative L2 vs previous above this fails")
    max_norm_growth: float = Field(10.0, gt=1, description="per tensor: ||candidate|| / ||previous|| above this fails")
    max_abs_value: float = Field(1e6, gt=0, description="any |weight| above this fails (explosion)")
    min_reference_rms: float = Field(
        1e-3, ge=0, description="tensors whose previous RMS is below this skip the per-tensor jump test"
    )
    max_golden_drift: float | None = Field(None, ge=0, description="per tensor: relative L2 vs golden bound")
    max_global_golden_drift: float | None = Field(None, ge=0)
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
    max_accuracy_drop: float = Field(0.1, ge=0, le=1, description="training: probe accuracy drop vs golden that fails")

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
            "frozen": _matches(self.frozen, name, display),
            "exclude": _matches(self.exclude, name, display),
        }
        for o in self.overrides:
            if _matches([o.pattern], name, display):
                s.update({k: v for k, v in o.model_dump(exclude={"pattern"}).items() if v is not None})
        return s


def _matches(patterns: list[str], name: str, display: str) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or fnmatch.fnmatchcase(display, p) for p in patterns)
