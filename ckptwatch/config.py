"""Configuration files -> validated objects, with errors that name the key.

pydantic does the validation; we only turn its errors into one line each:
`policy.toml: overrides.0.max_jump: Input should be greater than or equal to 0`.
"""

from __future__ import annotations

import tomllib
from pydantic import BaseModel, ValidationError

from ckptwatch.errors import UsageError
from ckptwatch.verify.policy import Policy


def describe_validation_error(error: ValidationError, source: str, prefix: str = "") -> str:
    problems = []
    for e in error.errors():
        loc = ".".join(str(p) for p in (prefix, *e["loc"]) if p != "")
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"]
        problems.append(f"{loc or '(top level)'}: {msg}")
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    return f"{source}: {problems[0]}{more}"


def read_toml(path: str) -> dict:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise UsageError(f"{path}: no such file") from None
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"{path}: invalid TOML: {e}") from None


def validate(model: type[BaseModel], data: dict, source: str, prefix: str = ""):
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise UsageError(describe_validation_error(e, source, prefix)) from None


def load_policy(path: str) -> Policy:
    """A policy file: the keys of `Policy` at top level (or under [policy])."""
    data = read_toml(path)
    if set(data) == {"policy"}:
        return validate(Policy, data["policy"], path, "policy")
    return validate(Policy, data, path)
