"""Tensor names: what kind of value a key holds, and a friendlier name for people.

TF2 object-based keys look like
``model/layer_with_weights-0/kernel/.ATTRIBUTES/VARIABLE_VALUE``; optimizer slots
``model/.../kernel/.OPTIMIZER_SLOT/optimizer/m/.ATTRIBUTES/VARIABLE_VALUE``;
TF1 keys are graph names (``scope/dense/kernel``); Keras 3 ``.weights.h5`` uses
``layers/dense/vars/0`` and ``optimizer/vars/3``; legacy Keras 2 ``.h5`` uses
``model_weights/dense/dense/kernel:0`` and ``optimizer_weights/...``.
"""

from __future__ import annotations

import re

from ckptwatch.formats.kinds import COUNTER, META, METRIC, OPTIMIZER, WEIGHT

OBJECT_GRAPH_KEY = "_CHECKPOINTABLE_OBJECT_GRAPH"
_ATTRIBUTE_SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"
_SLOT_RE = re.compile(r"^(?P<var>.*)/\.OPTIMIZER_SLOT/(?P<opt>[^/]+)/(?P<slot>[^/]+)$")

_OPTIMIZER_PREFIXES = ("optimizer/", "optimizer_weights/", "training/", "optimizer_state/")
_METRIC_MARKERS = ("keras_api/metrics/", "metrics/")
_COUNTER_NAMES = {"save_counter", "global_step", "iter", "iterations"}
_METRIC_ROOTED = tuple("/" + m for m in _METRIC_MARKERS)
_TF1_SLOT_RE = re.compile(r"/(Adam|Adam_\d|Momentum|RMSProp|RMSProp_\d|Adagrad|Ftrl|Ftrl_\d)$")


def kind_of(name: str) -> str:
    """Classify a key: weight, optimizer, metric, counter or meta."""
    if name == OBJECT_GRAPH_KEY or name.startswith("_"):
        return META
    base = name.removesuffix(_ATTRIBUTE_SUFFIX)
    if ".OPTIMIZER_SLOT/" in base or base.startswith(_OPTIMIZER_PREFIXES) or "/optimizer/" in f"/{base}/":
        return OPTIMIZER
    rooted = "/" + base
    if any(m in rooted for m in _METRIC_ROOTED):
        return METRIC
    leaf = base.rsplit("/", 1)[-1].removesuffix(":0")
    if leaf in _COUNTER_NAMES and base.count("/") <= 1:
        return COUNTER
    # TF1 Adam/Momentum slots live next to the variable: dense/kernel/Adam, .../Adam_1
    if _TF1_SLOT_RE.search(base) or leaf in ("beta1_power", "beta2_power"):
        return OPTIMIZER
    return WEIGHT


def display_name(name: str) -> str:
    """`model/dense/kernel/.ATTRIBUTES/VARIABLE_VALUE` -> `model/dense/kernel`;
    slots -> `model/dense/kernel [optimizer m]`."""
    base = name.removesuffix(_ATTRIBUTE_SUFFIX)
    m = _SLOT_RE.match(base)
    if m:
        return f"{m['var']} [{m['opt']} {m['slot']}]"
    return base


def named(name: str) -> tuple[str, str]:
    """(kind_of(name), display_name(name)), worked out once per name and process: the
    checkpoints a process opens (a candidate and its previous, every save of a run the daemon
    sees) share their keys, thousands of them."""
    global _named_chars
    got = _NAMED.get(name)
    if got is None:
        got = (kind_of(name), display_name(name))
        chars = len(name) + len(got[1])
        if chars > _NAMED_CHARS // 64:
            return got  # a name this long is not a run's: not kept (a hostile file's, likely)
        # bounded in names and in characters: a long-lived worker sees many runs, and hostile files
        if len(_NAMED) >= _NAMED_LIMIT or _named_chars + chars > _NAMED_CHARS:
            _NAMED.clear()
            _named_chars = 0
        _NAMED[name] = got
        _named_chars += chars
    return got


_NAMED: dict[str, tuple[str, str]] = {}
_NAMED_LIMIT = 1 << 17
_NAMED_CHARS = 4 << 20  # the names' and displays' characters kept, together
_named_chars = 0

_STEP_RE = re.compile(r"(?:^|[-_.])(\d+)(?:\.weights)?(?:\.h5|\.hdf5|\.keras)?$")


def step_from_path(path: str) -> int | None:
    """`run/ckpt-42` -> 42, `model.ckpt-1000` -> 1000, `weights.05.h5` -> 5, else None."""
    base = path.rstrip("/").rsplit("/", 1)[-1]
    m = _STEP_RE.search(base)
    return int(m.group(1)) if m else None
