"""The policy schema (ckptwatch.policy): one class for the config, the verifier and the
model-aware checks, its kinds the readers' kinds, per-tensor settings with overrides."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import ValidationError

from ckptwatch import config
from ckptwatch.formats import kinds
from ckptwatch.policy import Override, Policy
from ckptwatch.verify import rules

PACKAGE = Path(__file__).resolve().parents[2] / "ckptwatch"


def test_one_policy_schema() -> None:
    assert config.Policy is Policy and config.Override is Override
    assert rules.evaluate.__module__ == "ckptwatch.verify.rules"
    assert config.WatchPolicy.model_fields.keys() == Policy.model_fields.keys() - {"profile"}


def test_compared_kinds_are_the_readers_kinds() -> None:
    assert Policy().compared_kinds() == {kinds.WEIGHT}
    assert Policy(include_optimizer=True).compared_kinds() == {kinds.WEIGHT, kinds.OPTIMIZER}


def test_settings_for_applies_globs_and_the_last_matching_override() -> None:
    policy = Policy(
        frozen=["encoder/*"],
        exclude=["*step*"],
        overrides=[
            Override(pattern="*bias*", max_jump=2.0, atol=0.5),
            Override(pattern="head/bias", max_jump=3.0),
        ],
    )
    assert policy.settings_for("encoder/kernel", "encoder/kernel")["frozen"] is True
    assert policy.settings_for("model/.ATTRIBUTES/x", "global_step")["exclude"] is True  # display name matches
    head = policy.settings_for("head/bias", "head/bias")
    assert head["max_jump"] == 3.0 and head["atol"] == 0.5 and head["frozen"] is False
    assert policy.settings_for("head/kernel", "head/kernel")["max_jump"] == policy.max_jump


def test_policy_rejects_unknown_keys_and_bad_bounds() -> None:
    with pytest.raises(ValidationError):
        Policy.model_validate({"max_jmp": 1})
    with pytest.raises(ValidationError):
        Policy(max_norm_growth=1.0)


@pytest.mark.parametrize("layer", ["verify", "model"])
def test_verify_and_model_do_not_import_the_config_loader(layer: str) -> None:
    offenders = []
    for path in sorted((PACKAGE / layer).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            if any(n == "ckptwatch.config" or n.startswith("ckptwatch.config.") for n in names):
                offenders.append(path.name)
    assert offenders == [], f"ckptwatch.{layer} imports ckptwatch.config (use ckptwatch.policy): {offenders}"
