"""What a model-aware check reads besides the checkpoint: the probe batch, stored golden
outputs, the operator's factory. No TensorFlow here. (ModelSpec, what to run, is plain data
in ckptwatch.verify.request: the daemon builds it and sends it to the worker.)

Probe and output files are `.npz`, always read with `allow_pickle=False`: a probe
file can hold arrays only, never objects (unpickling runs code).
"""

from __future__ import annotations

import importlib
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ckptwatch.errors import UsageError


@dataclass
class Probe:
    x: np.ndarray | dict[str, np.ndarray]  # a dict for models with several named inputs
    y: np.ndarray | None = None

    @property
    def batch(self) -> int:
        first = next(iter(self.x.values())) if isinstance(self.x, dict) else self.x
        return int(first.shape[0]) if first.ndim else 1


def resolve_callable(spec: str, python_path: list[str] | tuple[str, ...] = (), what: str = "factory") -> Callable:
    """Import `module:function` (operator-supplied code from the config or the command line,
    never from a checkpoint)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise UsageError(f'{what} "{spec}" is not "module:function"')
    for p in reversed([*python_path, os.getcwd()]):
        if p not in sys.path:
            sys.path.insert(0, p)
    try:
        obj = importlib.import_module(module_name)
    except ImportError as e:
        raise UsageError(f'{what} "{spec}": cannot import {module_name} ({e})') from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise UsageError(f'{what} "{spec}": {module_name} has no attribute {attr}') from None
    if not callable(obj):
        raise UsageError(f'{what} "{spec}" is not callable')
    return obj


def _npz(path: str, what: str) -> dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise UsageError(f"{what} {path}: no such file") from None
    except ValueError as e:  # object arrays need pickle: refused
        raise UsageError(f"{what} {path}: not a plain array file ({e})") from None
    except (OSError, EOFError) as e:
        raise UsageError(f"{what} {path}: unreadable ({e})") from None


def load_probe(spec: str, python_path: list[str] | tuple[str, ...] = ()) -> Probe:
    """A probe batch: `x` (or `x/<input name>` for several inputs) and an optional `y`."""
    if spec.endswith(".npz"):
        arrays = _npz(spec, "probe")
    else:
        made = resolve_callable(spec, python_path, "probe")()
        if isinstance(made, tuple):
            made = {"x": made[0], **({"y": made[1]} if len(made) > 1 and made[1] is not None else {})}
        elif not isinstance(made, dict):
            made = {"x": made}
        arrays = {k: np.asarray(v) for k, v in made.items()}
    named = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("x/")}
    x: np.ndarray | dict[str, np.ndarray] | None = named or arrays.get("x")
    if x is None:
        raise UsageError(f"probe {spec}: no array named x (arrays: {', '.join(sorted(arrays)) or 'none'})")
    return Probe(x, arrays.get("y"))


def load_outputs(path: str) -> dict[str, np.ndarray]:
    return _npz(path, "golden outputs")


def save_outputs(path: str, outputs: dict[str, np.ndarray]) -> None:
    try:
        np.savez(path, **outputs)  # type: ignore[arg-type]  # numpy's stub: a key could be "allow_pickle"
    except OSError as e:
        raise UsageError(f"{path}: {e.strerror or e}") from None
