"""What a tensor's change vs previous is, as the drift rules (ckptwatch.verify.judge) and the
run's history (ckptwatch.verify.history) use it.

    measure(policy, results, previous_stats) -> [Change]   one per compared tensor
    training_steps(results, previous_stats, ...) -> Steps   training steps from the counters
    history_entry(changes, steps, ...) -> Entry             what a passing checkpoint adds to history
    record_history(report, ...)                             both on the report (the engine's last step)

change = ||candidate - previous|| / scale, scale = max(||previous||, sqrt(n) x layer RMS,
sqrt(n) x min_reference_rms): the relative L2 vs previous, except for a tensor whose norm is
near zero (a bias, a BatchNorm offset or moving mean early in a run), whose change is measured
against its layer's scale (the RMS of the layer's largest weight in the previous checkpoint,
moving statistics left out) instead of its own tiny norm. Norm growth uses the same scale.

Groups (what a tensor with little history of its own borrows from) come from the variable's
name: kernels, biases, embeddings, normalisation scales and offsets, moving statistics; else
its rank (kernels, vectors). The layer is the name without its last component.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from ckptwatch.policy import Policy
from ckptwatch.verify.drift import TINY_NORM, Drift, ReferenceStats
from ckptwatch.verify.history import Entry, History
from ckptwatch.verify.report import Report, TensorResult
from ckptwatch.verify.stats import TensorStats

MOVING = "moving statistics"
_GROUPS = [
    (MOVING, re.compile(r"(moving|running)_(mean|var|variance|average)|^(mean|variance|count)$")),
    ("embeddings", re.compile(r"embedding")),
    ("normalisation scales", re.compile(r"^(gamma|scale)$")),
    ("normalisation offsets", re.compile(r"^(beta|offset)$")),
    ("biases", re.compile(r"bias|^b$|^b_?\d+$")),
    ("kernels", re.compile(r"kernel|^w$|^w_?\d+$|weights?$")),
]
_STEP_COUNTERS = ("global_step", "iterations", "iter")


def group_of(display: str, shape: tuple[int, ...]) -> str:
    """The kind of variable, from its name (else its rank): what a tensor with little
    history of its own borrows from."""
    global _cached_chars
    key = (display, len(shape) >= 2)
    group = _GROUP_CACHE.get(key)
    if group is None:
        group = _group_of(display.rsplit("/", 1)[-1], key[1])
        if len(display) > _CACHE_CHARS // 64:
            return group  # a name this long is not a run's: not kept (a hostile file's, likely)
        # a worker lives long: bounded in names and characters, refilled by the next checkpoint
        if len(_GROUP_CACHE) >= _CACHE_LIMIT or _cached_chars + len(display) > _CACHE_CHARS:
            _GROUP_CACHE.clear()
            _cached_chars = 0
        _GROUP_CACHE[key] = group
        _cached_chars += len(display)
    return group


# (display name, rank >= 2) -> group: one regex search per name and process, not one per
# tensor and call (a checkpoint of 10,000 tensors asks 20,000 times per verification)
_GROUP_CACHE: dict[tuple[str, bool], str] = {}
_CACHE_LIMIT = 1 << 17
_CACHE_CHARS = 4 << 20  # the display names' characters kept
_cached_chars = 0


def _group_of(last: str, matrix: bool) -> str:
    leaf = last.removesuffix(":0").split(" ")[0].lower()
    for group, pattern in _GROUPS:
        if pattern.search(leaf):
            return group
    return "kernels" if matrix else "vectors"


def layer_of(display: str) -> str:
    return display.rsplit("/", 1)[0] if "/" in display else ""


@dataclass(frozen=True)
class Change:
    result: TensorResult
    group: str
    value: float  # ||c - p|| / scale
    growth: float  # ||c|| / scale
    shrink: float  # ||p|| / max(||c||, absolute floor)
    own_scale: bool  # scale is the tensor's own norm
    previous_l2: float
    drift: Drift

    @property
    def name(self) -> str:
        return self.result.name

    @property
    def size(self) -> int:
        return self.result.stats.count if self.result.stats else 0

    @property
    def unchanged(self) -> bool:
        return self.drift.changed_fraction == 0.0 and not self.drift.estimated


@dataclass(frozen=True)
class Steps:
    candidate: float | None = None
    previous: float | None = None
    counted: bool = False  # both from training-step counters (global_step, optimizer iterations)

    @property
    def gap(self) -> float | None:
        if self.candidate is None or self.previous is None or self.candidate <= self.previous:
            return None
        return self.candidate - self.previous


def is_floating(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat", "complex"))


def compared(policy: Policy, results: list[TensorResult], settings: Settings | None = None) -> list[TensorResult]:
    kinds = policy.compared_kinds()
    settings = settings or Settings(policy)
    return [
        t for t in results
        if t.stats is not None and t.kind in kinds and is_floating(t.dtype)
        and not settings(t.name, t.display)["exclude"]
    ]  # fmt: skip


class Settings:
    """`policy.settings_for(name, display)`, computed once per tensor; for a policy without globs
    (no exclude, frozen or overrides) every tensor's are the same, and one dict serves them all.
    The dicts handed out are shared: read them, never change them."""

    def __init__(self, policy: Policy):
        self.policy = policy
        plain = not (policy.exclude or policy.frozen or policy.overrides)
        self._plain = policy.settings_for("", "") if plain else None
        self._cache: dict[tuple[str, str], dict] = {}

    def __call__(self, name: str, display: str) -> dict:
        if self._plain is not None:
            return self._plain
        s = self._cache.get((name, display))
        if s is None:
            s = self._cache[(name, display)] = self.policy.settings_for(name, display)
        return s


def measure(
    policy: Policy,
    results: list[TensorResult],
    previous_stats: Mapping[str, TensorStats | ReferenceStats],
    settings: Settings | None = None,
) -> list[Change]:
    """The change of every compared tensor that has a previous. The engine measures once and
    hands the list to the rules (ckptwatch.verify.judge) and the history (record_history)."""
    tensors = []
    for t in compared(policy, results, settings):
        p = previous_stats.get(t.name) if "previous" in t.drift else None
        if p is not None:
            display = t.display
            tensors.append((t, p, group_of(display, t.shape), display.rsplit("/", 1)[0] if "/" in display else ""))
    layer_rms: dict[str, float] = {}
    for _, p, group, layer in tensors:
        if group != MOVING and p.count:
            rms = p.l2 / math.sqrt(p.count)
            layer_rms[layer] = max(layer_rms.get(layer, 0.0), rms)
    out = []
    min_rms = policy.min_reference_rms
    for t, p, group, layer in tensors:
        stats, d = t.stats, t.drift["previous"]
        assert stats is not None
        root_n = math.sqrt(max(p.count, 1))
        floor = root_n * max(layer_rms.get(layer, 0.0), min_rms)
        scale = max(p.l2, floor, TINY_NORM)
        # relative_l2 divides by ||previous|| (by ||candidate|| when that is ~0): undo it
        diff = d.relative_l2 * (p.l2 if p.l2 > TINY_NORM else stats.l2)
        absolute = root_n * min_rms
        out.append(
            Change(
                t,
                group,
                value=diff / scale,
                growth=stats.l2 / scale,
                shrink=p.l2 / max(stats.l2, absolute, TINY_NORM),
                own_scale=p.l2 >= floor,
                previous_l2=p.l2,
                drift=d,
            )
        )
    return out


def training_steps(
    results: list[TensorResult],
    previous_stats: Mapping[str, TensorStats | ReferenceStats],
    candidate_path_step: int | None,
    previous_path_step: int | None,
) -> Steps:
    """Training steps of candidate and previous: from a step counter both have (global_step,
    optimizer iterations), else from the paths (ckpt-<N>, which may number saves)."""
    for t in results:
        leaf = t.display.rsplit("/", 1)[-1].removesuffix(":0").lstrip("_")  # Keras 3: optimizer/_iterations
        if leaf in _STEP_COUNTERS and t.stats is not None and t.stats.count == 1 and t.name in previous_stats:
            if not (math.isfinite(t.stats.mean) and math.isfinite(previous_stats[t.name].mean)):
                continue
            return Steps(round(t.stats.mean), round(previous_stats[t.name].mean), counted=True)
    if candidate_path_step is not None and previous_path_step is not None:
        return Steps(candidate_path_step, previous_path_step)
    return Steps(candidate_path_step, None)


def history_entry(
    changes: list[Change], steps: Steps, global_drift: Drift | None, checkpoint: str, previous: str = ""
) -> Entry:
    trained = [c for c in changes if c.group != MOVING] or changes
    whole = global_drift.relative_l2 if global_drift is not None else math.nan
    return Entry(
        step=steps.candidate,
        gap=steps.gap,
        # 0 when the optimizer moved nothing (moving statistics may still follow the data): what
        # a run of identical checkpoints is counted by
        global_change=0.0 if trained and all(c.unchanged for c in trained) else whole,
        tensors={c.name: (c.value, c.growth, c.drift.changed_fraction) for c in changes},
        checkpoint=checkpoint,
        norms={c.name: (c.result.stats.l2, c.previous_l2) for c in changes if c.result.stats is not None},
        previous=previous,
    )


def record_history(
    report: Report,
    policy: Policy,
    results: list[TensorResult],
    previous_stats: Mapping[str, TensorStats | ReferenceStats],
    steps: Steps,
    history: History | None,
    compared: bool,
    changes: list[Change] | None = None,
) -> None:
    """The history the report was judged against ({"entries", "tensors"}), and what this checkpoint
    adds to it if it passes (a checkpoint compared with a previous one, in the training profile).
    `changes`: measure()'s, when the caller has them (the rules used the same)."""
    report.history = {"entries": len(history), "tensors": len(history.names)} if history is not None else None
    if compared and policy.profile == "training":
        if changes is None:
            changes = measure(policy, results, previous_stats)
        report.history_entry = history_entry(
            changes,
            steps,
            report.drift.get("previous"),
            report.checkpoint["path"],
            report.references.get("previous") or "",
        )
