"""Validation errors -> every problem, each naming the key path and the reason.

    describe_validation_error(error, source, prefix, model, notes) -> ConfigInvalid
    invalid(source, problems, prefix, notes) -> ConfigInvalid   (key path, reason) pairs -> the error
    one_line(source, problems, prefix, notes) -> str            the same as one line
    quoted(value) -> str                                         a value as it appears in a message

    ckptwatch.toml: watch.0.policy.max_jump: Input should be greater than or equal to 0; watch.0.name: ...

A ConfigInvalid's str() is that one line (for the daemon's start-up error and its logs);
`check-config` prints its `problems` one per line.

List items are dotted by index (`watch.1.name`); an unknown key suggests a close known one
when the validated model is given; `notes` say where a value came from (an environment
variable or a command-line flag).
"""

from __future__ import annotations

import difflib
import types
import typing
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails

from ckptwatch.errors import ConfigInvalid

__all__ = ["describe_validation_error", "invalid", "one_line", "quoted"]


def quoted(value: object) -> str:
    text = str(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


_TOML_TYPES = ((bool, "boolean"), (int, "integer"), (float, "float"), (str, "string"), (dict, "table"), (list, "array"))


def _got(value: object) -> str:
    kind = next((n for t, n in _TOML_TYPES if isinstance(value, t)), type(value).__name__)
    if isinstance(value, str):
        return f"{kind} {quoted(value)}"
    if isinstance(value, bool):
        return f"{kind} {str(value).lower()}"
    if isinstance(value, (int, float)):
        return f"{kind} {value!r}"
    return kind


def _unwrap(tp: Any) -> Any:
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            tp = args[0] if len(args) == 1 else None
        else:
            return tp


def _keys_at(model: type[BaseModel] | None, loc: tuple) -> list[str]:
    """The keys a table at `loc` accepts (for "did you mean"), or []."""
    tp: Any = model
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(part, int):
            tp = typing.get_args(tp)[0] if typing.get_origin(tp) is list else None
        elif isinstance(tp, type) and issubclass(tp, BaseModel):
            fields = {(f.alias or n): f for n, f in tp.model_fields.items()}
            tp = fields[part].annotation if part in fields else None
        else:
            return []
    tp = _unwrap(tp)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return [f.alias or n for n, f in tp.model_fields.items()]
    return []


def _reason(e: ErrorDetails, model: type[BaseModel] | None) -> str:
    kind, loc = e["type"], tuple(e["loc"])
    if kind == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _keys_at(model, loc[:-1]), n=1)
        if len(loc) == 4 and loc[0] == "watch" and loc[2:] == ("policy", "profile"):
            return "set profile on the watch itself ([[watch]] profile = ...), not in its policy table"
        return "unknown key" + (f" (did you mean {close[0]}?)" if close else "")
    if loc == ("watch",) and kind in ("missing", "too_short"):
        return "at least one [[watch]] table is required"
    if loc == ("watch",) and kind == "list_type" and isinstance(e.get("input"), dict):
        return "write [[watch]] (an array of tables), not [watch]"
    if kind in ("model_type", "dict_type"):
        return f"must be a table (got {_got(e.get('input'))})"
    if kind == "list_type":
        return f"must be an array (got {_got(e.get('input'))})"
    if kind == "missing":
        return "required key is missing"
    if kind == "too_short" and (e.get("ctx") or {}).get("min_length") == 1:
        return "must not be empty"
    msg = e["msg"]
    if kind.endswith("_type") or kind.endswith("_parsing") or kind in ("literal_error", "finite_number"):
        msg += f" (got {_got(e.get('input'))})"
    return msg


def _loc_text(loc: tuple, prefix: str = "") -> str:
    return ".".join(str(p) for p in (prefix, *loc) if p != "") or "(top level)"


def invalid(
    source: str, problems: list[tuple[tuple, str]], prefix: str = "", notes: Mapping | None = None
) -> ConfigInvalid:
    """Every (key path, reason) as `key.path (from ORIGIN): reason`, each on one line."""
    lines = []
    for loc, reason in problems:
        where = _loc_text(loc, prefix)
        origin = next((label for key, label in (notes or {}).items() if tuple(loc[: len(key)]) == key), None)
        if origin:
            where += f" (from {origin})"
        lines.append(" ".join(f"{where}: {reason}".split()))  # one line each, whatever a value held
    return ConfigInvalid(source, lines)


def one_line(source: str, problems: list[tuple[tuple, str]], prefix: str = "", notes: Mapping | None = None) -> str:
    return str(invalid(source, problems, prefix, notes))


def describe_validation_error(
    error: ValidationError,
    source: str,
    prefix: str = "",
    model: type[BaseModel] | None = None,
    notes: Mapping[tuple, str] | None = None,
) -> ConfigInvalid:
    """The error to raise: every problem as `key.path: reason` (str(): `SOURCE: a: why; b: why`).
    `model` (the validated class) lets an unknown key suggest a close known one; `notes` maps key
    paths to where a value came from (`{("daemon", "listen"): "CKPTWATCH_LISTEN"}`)."""
    problems = [(tuple(e["loc"]), _reason(e, model)) for e in error.errors()]
    return invalid(source, problems, prefix, notes)
