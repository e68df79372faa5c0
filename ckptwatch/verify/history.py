"""A run's history of per-tensor change: what healthy training looked like so far.

    History.load(path) / history.save(path)     the file (.npz, numeric arrays only, no pickle)
    history.extended(entry, window)             a new History with one more transition
    history.expected(names, gap, ...)           per tensor: typical change, spread, count

One *entry* is one transition between two checkpoints that passed (previous -> candidate):
per compared tensor its change (||candidate - previous|| / scale, see ckptwatch.verify.judge),
its norm growth and the fraction of its elements that changed, and for the whole checkpoint
the candidate's training step, the steps since the previous and the global relative L2.
A history keeps the last `window` entries: arrays of shape (tensors, window), oldest first,
NaN where a tensor was absent. 10,000 tensors x 32 entries x 3 figures is 3.8 MB.

Steps. Healthy change grows with the steps between two saves: linearly while updates keep
a direction (warm-up, momentum, early training), like a square root once they are noise
(late training, Adam near a minimum). A past change v_i over g_i steps is scaled to the
candidate's g steps by the more lenient of the two: (g / g_i) when g > g_i, sqrt(g / g_i)
when g < g_i. A checkpoint judged against an older baseline (after a failure) is therefore
never held to a too-small change, and frequent saves after sparse ones are not held to a
too-large one. Without steps, changes are compared as they are.

The file is written by the worker (numpy) and only handed around by path: the daemon's
main process never reads it.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from ckptwatch.errors import CkptwatchError
from ckptwatch.verify.report import Report

SCHEMA = "ckptwatch.history/v1"
DEFAULT_WINDOW = 32
PASSING = ("pass", "warn")  # the verdicts that extend a history (and make a baseline)
_PER_TENSOR = ("change", "growth", "changed")
_NORMS = ("norm", "previous_norm")  # per tensor: ||candidate||, ||previous|| (where a run has been: rewinds)
_PER_ENTRY = ("step", "gap", "global_change", "accuracy", "golden_met")
_OPTIONAL_ENTRY = ("accuracy", "golden_met")  # absent from files written before they were kept


class HistoryError(CkptwatchError):
    """A history file that cannot be used (an error, exit 2: it says nothing about the checkpoint)."""


@dataclass
class Entry:
    """One passing transition, previous -> candidate."""

    step: float | None  # the candidate's training step
    gap: float | None  # steps since the previous checkpoint
    global_change: float  # whole-checkpoint relative L2 vs previous
    tensors: dict[str, tuple[float, float, float]] = field(default_factory=dict)  # change, growth, changed fraction
    checkpoint: str = ""  # the candidate's path, for people reading the file
    norms: dict[str, tuple[float, float]] = field(default_factory=dict)  # ||candidate||, ||previous||
    previous: str = ""  # the path of the checkpoint it was measured from
    # the model-aware checks' figures on the probe batch (None: not run, or no labels / no golden)
    accuracy: float | None = None  # the candidate's probe accuracy
    golden_met: bool | None = None  # whether it met the functional comparison with golden


@dataclass(frozen=True)
class ProbeRecord:
    """What the run's passing checkpoints (its history) showed on the probe batch."""

    reached: str | None = None  # where the run had met the functional comparison with golden for good
    best_accuracy: float | None = None  # the best probe accuracy of a kept checkpoint
    best_checkpoint: str | None = None


@dataclass
class Expected:
    """A tensor's (or a pool's) past changes scaled to the candidate's gap, on a log scale."""

    count: int
    median: float  # the level a next change is expected at (see _series)
    maximum: float
    log_mad: float  # robust spread (sigma) of log(change)

    def to_dict(self) -> dict:
        return {"median": self.median, "max": self.maximum, "count": self.count}


def _nan(shape) -> np.ndarray:
    return np.full(shape, np.nan, dtype=np.float32)


class History:
    def __init__(
        self,
        names: list[str],
        arrays: dict[str, np.ndarray] | None = None,
        entries: dict[str, np.ndarray] | None = None,
        checkpoints: list[str] | None = None,
    ):
        self.names = list(names)
        self.index = {n: i for i, n in enumerate(self.names)}
        width = len(next(iter(entries.values()))) if entries else 0
        self.arrays = arrays or {k: _nan((len(self.names), width)) for k in _PER_TENSOR + _NORMS}
        self.entries = entries or {k: np.full(width, np.nan) for k in _PER_ENTRY}
        self.checkpoints = checkpoints or [""] * width
        self.origin = ""  # the checkpoint the oldest entry was measured from
        self.reached = ""  # where the run arrived at the golden (ProbeRecord.reached), once it has
        # The last checkpoint that failed a drift check against the baseline this history ends at,
        # if any (ckptwatch.verify.continues): {"checkpoint", "fingerprint", "baseline", "tensors":
        # {name: its change vs the baseline}}. A checkpoint that passes clears it.
        self.rejected: dict | None = None

    def __len__(self) -> int:
        return len(self.entries["step"])

    @classmethod
    def empty(cls) -> History:
        return cls([])

    # -- the file ------------------------------------------------------------------------------

    @classmethod
    def load(cls, path: str) -> History:
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                if meta.get("schema") != SCHEMA:
                    raise HistoryError(f"history {path}: not a {SCHEMA} file")
                names = [str(n) for n in z["names"]]
                width = len(z["step"])
                arrays = {
                    k: np.asarray(z[k], dtype=np.float32) if k in z.files else _nan((len(names), width))
                    for k in _PER_TENSOR + _NORMS
                }
                entries = {
                    k: np.asarray(z[k], dtype=np.float64) if k in z.files else np.full(width, np.nan)
                    for k in _PER_ENTRY
                }
        except HistoryError:
            raise
        except FileNotFoundError:
            raise HistoryError(f"history {path}: no such file") from None
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise HistoryError(f"history {path}: unreadable ({e})") from None
        width = len(entries["step"])
        if any(a.shape != (len(names), width) for a in arrays.values()) or any(
            len(e) != width for e in entries.values()
        ):
            raise HistoryError(f"history {path}: inconsistent array shapes")
        checkpoints = [str(c) for c in meta.get("checkpoints", [])][:width]
        history = cls(names, arrays, entries, checkpoints + [""] * (width - len(checkpoints)))
        rejected = meta.get("rejected")
        history.rejected = rejected if isinstance(rejected, dict) else None
        history.origin = str(meta.get("origin") or "")
        history.reached = str(meta.get("reached") or "")
        return history

    def save(self, path: str) -> None:
        """Written to a temporary file and renamed: a reader never sees half a file."""
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        meta = {
            "schema": SCHEMA,
            "checkpoints": self.checkpoints,
            "rejected": self.rejected,
            "origin": self.origin,
            "reached": self.reached,
        }
        try:
            with open(tmp, "wb") as f:
                arrays: dict[str, Any] = {"meta": np.array(json.dumps(meta)), "names": np.array(self.names, dtype=str)}
                np.savez(f, **{**arrays, **self.arrays, **self.entries})
            os.replace(tmp, path)
        except OSError:  # a full disk: no half-written file left behind
            with contextlib.suppress(OSError):
                os.remove(tmp)
            raise

    # -- growing it ------------------------------------------------------------------------------

    def with_rejected(self, rejected: dict | None) -> History:
        """The same history, noting the checkpoint that just failed against its baseline."""
        copy = History(self.names, self.arrays, self.entries, self.checkpoints)
        copy.rejected, copy.origin, copy.reached = rejected, self.origin, self.reached
        return copy

    def after(self, report: Report, window: int = DEFAULT_WINDOW) -> History:
        """The history once `report`'s checkpoint is judged: one entry longer if it passed
        (pass or warn) against a previous checkpoint, else as it was."""
        entry = report.history_entry
        if report.verdict in PASSING and isinstance(entry, Entry):
            return self.extended(entry, window)
        return self

    def extended(self, entry: Entry, window: int = DEFAULT_WINDOW, in_a_row: int = 3) -> History:
        """This history plus `entry`, keeping the newest `window` entries; tensors absent from
        every kept entry are dropped."""
        names = self.names + [n for n in entry.tensors if n not in self.index]
        index = {n: i for i, n in enumerate(names)}
        width = len(self) + 1
        arrays = {k: _nan((len(names), width)) for k in _PER_TENSOR + _NORMS}
        for k, a in self.arrays.items():
            arrays[k][: len(self.names), :-1] = a
        rows = np.array([index[n] for n in entry.tensors], dtype=np.int64)
        figures = np.array(list(entry.tensors.values()), dtype=np.float64).reshape(len(rows), len(_PER_TENSOR))
        for j, k in enumerate(_PER_TENSOR):
            arrays[k][rows, -1] = figures[:, j]
        for name, pair in entry.norms.items():
            if name in entry.tensors:
                arrays["norm"][index[name], -1], arrays["previous_norm"][index[name], -1] = pair
        entries = {k: np.append(v, np.nan) for k, v in self.entries.items()}
        entries["step"][-1] = _or_nan(entry.step)
        entries["gap"][-1] = _or_nan(entry.gap)
        entries["global_change"][-1] = entry.global_change
        entries["accuracy"][-1] = _or_nan(entry.accuracy)
        entries["golden_met"][-1] = _or_nan(entry.golden_met)
        checkpoints = [*self.checkpoints, entry.checkpoint]
        origin = self.origin if len(self) else entry.previous
        # where the run arrived at the golden, judged before the window drops what showed it
        reached = self.reached or _arrival(entries["golden_met"], checkpoints, in_a_row) or ""
        if width > window:
            cut = width - window
            origin = checkpoints[cut - 1]
            arrays = {k: a[:, cut:] for k, a in arrays.items()}
            entries = {k: v[cut:] for k, v in entries.items()}
            checkpoints = checkpoints[cut:]
        alive = ~np.all(np.isnan(arrays["change"]), axis=1) if width else np.zeros(0, bool)
        if not alive.all():
            names = [n for n, keep in zip(names, alive, strict=True) if keep]
            arrays = {k: a[alive] for k, a in arrays.items()}
        grown = History(names, arrays, entries, checkpoints)
        grown.origin, grown.reached = origin, reached
        return grown

    # -- reading it ----------------------------------------------------------------------------

    def scale_to(self, gap: float | None) -> np.ndarray:
        """Per entry: the factor that scales its change to a transition of `gap` steps."""
        gaps = self.entries["gap"]
        factors = np.ones(len(self))
        if gap is None or not gap > 0:
            return factors
        ok = np.isfinite(gaps) & (gaps > 0)
        ratio = np.where(ok, gap / np.where(ok, gaps, 1.0), 1.0)
        return np.where(ratio > 1.0, ratio, np.sqrt(ratio))

    def expected(self, names: list[str], gap: float | None) -> dict[str, Expected]:
        """For each name with at least one past change: its changes scaled to `gap`."""
        rows = [self.index[n] for n in names if n in self.index]
        if not rows:
            return {}
        scaled = self.arrays["change"][rows].astype(np.float64) * self.scale_to(gap)
        stats = {self.names[r]: e for r, e in zip(rows, _series_of_rows(scaled), strict=True)}
        return {name: e for name, e in stats.items() if e is not None}

    def pooled(self, names: list[str], gap: float | None) -> Expected | None:
        """The changes of several tensors (a group) together, scaled to `gap`."""
        rows = [self.index[n] for n in names if n in self.index]
        if not rows:
            return None
        scaled = self.arrays["change"][rows].astype(np.float64) * self.scale_to(gap)
        return _pool(scaled.reshape(-1))

    def expected_global(self, gap: float | None) -> Expected | None:
        scaled = self.entries["global_change"] * self.scale_to(gap)
        return _series(scaled)

    def unchanged_run(self, name: str) -> tuple[int, bool]:
        """(how many of the newest entries in a row show `name` unchanged, whether it changed
        in any kept entry)."""
        row = self.index.get(name)
        if row is None:
            return 0, False
        changed = self.arrays["changed"][row]
        present = changed[np.isfinite(changed)]
        return _trailing_zeros(changed), bool(np.any(present > 0))

    def probe_record(self, in_a_row: int = 3) -> ProbeRecord:
        """`reached`: where the run arrived at the golden: after a kept checkpoint that missed it,
        `in_a_row` kept checkpoints in a row that met it. A run that met it from its first kept
        checkpoints started there (a fine-tune, or a golden that is the run's own start): it never
        arrives. Once arrived, the history remembers it (`self.reached`), beyond its window."""
        accuracy = self.entries["accuracy"]
        reached = self.reached or _arrival(self.entries["golden_met"], self.checkpoints, in_a_row)
        if not np.any(np.isfinite(accuracy)):
            return ProbeRecord(reached)
        best = int(np.nanargmax(accuracy))
        return ProbeRecord(reached, float(accuracy[best]), self.checkpoints[best] or None)

    def places(self) -> list[tuple[str, dict[str, float]]]:
        """Where the run has been, oldest first: (checkpoint, {tensor: norm}) for the baseline of the
        oldest kept entry and each kept entry's checkpoint."""
        if not len(self):
            return []
        first = self.origin or f"the checkpoint before {self.checkpoints[0] or 'the oldest kept one'}"
        out = [(first, self._norms("previous_norm", 0))]
        out += [(self.checkpoints[i] or f"entry {i}", self._norms("norm", i)) for i in range(len(self))]
        return out

    def _norms(self, key: str, column: int) -> dict[str, float]:
        values = self.arrays[key][:, column]
        return {n: float(v) for n, v in zip(self.names, values, strict=True) if np.isfinite(v)}

    def global_unchanged_run(self) -> tuple[int, bool]:
        g = self.entries["global_change"]
        present = g[np.isfinite(g)]
        return _trailing_zeros(g), bool(np.any(present > 0))


def with_probe(entry: Entry, model: dict | None) -> Entry:
    """`entry` with the probe figures of the model-aware checks' section of its report."""
    functional = (model or {}).get("functional") or {}
    accuracy, met = functional.get("accuracy"), functional.get("golden_met")
    return replace(
        entry,
        accuracy=float(accuracy) if isinstance(accuracy, (int, float)) else None,
        golden_met=met if isinstance(met, bool) else None,
    )


def _arrival(met: np.ndarray, checkpoints: list[str], in_a_row: int) -> str | None:
    """The checkpoint where `in_a_row` met (1) in a row first follow a miss (0)."""
    missed, run = False, 0
    for i, m in enumerate(met):
        missed = missed or m == 0
        run = run + 1 if m == 1 and missed else 0
        if run >= in_a_row:
            return checkpoints[i] or f"entry {i}"
    return None


def _or_nan(x: float | None) -> float:
    return math.nan if x is None else float(x)


def _trailing_zeros(values: np.ndarray) -> int:
    n = 0
    for v in values[::-1]:
        if v != 0:  # NaN (absent) or a change ends the run
            break
        n += 1
    return n


RECENT = 8  # the newest changes whose steps give a series' trend and spread
LATEST = 3  # the newest changes whose median is its level


def _series(scaled: np.ndarray) -> Expected | None:
    """One tensor's past changes, oldest first. Training drifts (a 32-change window spans a
    learning-rate schedule, a norm that grows), so the level a next change is expected at is the
    median of the LATEST changes, one trend step further when they rise (a warm-up), never
    lowered when they fall; the spread is the robust spread of the steps between consecutive
    recent changes around their median (the trend), divided by sqrt(2)."""
    values = scaled[np.isfinite(scaled) & (scaled > 0)]
    if not len(values):
        return None
    logs = np.log(values)
    level = float(np.median(logs[-LATEST:]))
    sigma = 0.0
    recent = logs[-RECENT:]
    if len(recent) >= 3:
        steps = np.diff(recent)
        trend = float(np.median(steps))
        sigma = 1.4826 * float(np.median(np.abs(steps - trend))) / math.sqrt(2)
        level += max(trend, 0.0)
    return Expected(len(values), math.exp(level), float(values.max()), sigma)


def _series_of_rows(scaled: np.ndarray) -> list[Expected | None]:
    """_series of each row of `scaled`, all rows at once: the same numbers, bit for bit (the
    same elementwise log and differences, medians picked from sorted values as np.median
    picks them, the scalar arithmetic in Python floats as _series does it). A history of
    10,000 tensors costs milliseconds, not half a second of numpy calls per tensor."""
    n, width = scaled.shape
    out: list[Expected | None] = [None] * n
    if n == 0 or width == 0:
        return out
    valid = np.isfinite(scaled) & (scaled > 0)
    count = valid.sum(axis=1)
    logs = np.full(scaled.shape, np.nan)
    logs[valid] = np.log(scaled[valid])
    maxima = np.where(valid, scaled, -np.inf).max(axis=1)
    # the newest RECENT logs of each row, oldest first, right-aligned (NaN before them)
    from_end = np.cumsum(valid[:, ::-1], axis=1)[:, ::-1]  # 1 at the newest value
    keep = valid & (from_end <= RECENT)
    r, c = np.nonzero(keep)
    recent = np.full((n, RECENT), np.nan)
    recent[r, RECENT - from_end[r, c]] = logs[r, c]
    latest = np.minimum(count, LATEST)
    levels = _medians(recent[:, RECENT - LATEST :], latest)
    steps = np.diff(recent, axis=1)  # the newest min(count, RECENT) - 1 are steps, NaN before
    moves = np.maximum(np.minimum(count, RECENT) - 1, 0)
    trends = _medians(steps, moves)
    spreads = _medians(np.abs(steps - trends[:, None]), moves)
    for i, (k, level, trend, spread, top) in enumerate(
        zip(count.tolist(), levels.tolist(), trends.tolist(), spreads.tolist(), maxima.tolist(), strict=True)
    ):
        if not k:
            continue
        sigma = 0.0
        if min(k, RECENT) >= 3:
            sigma = 1.4826 * spread / math.sqrt(2)
            level += max(trend, 0.0)
        out[i] = Expected(k, math.exp(level), top, sigma)
    return out


def _medians(values: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per row, np.median of its `counts` non-NaN values (NaN where it has none): the middle
    value, or the mean of the two middle ones ((a + b) / 2, as np.mean gives it)."""
    ordered = np.sort(values, axis=1)  # NaN last
    k = np.maximum(counts, 1)[:, None]
    lo = np.take_along_axis(ordered, (k - 1) // 2, axis=1)[:, 0]
    hi = np.take_along_axis(ordered, k // 2, axis=1)[:, 0]
    out = np.where(k[:, 0] % 2 == 1, lo, (lo + hi) / 2)
    return np.where(counts > 0, out, np.nan)


def _pool(scaled: np.ndarray) -> Expected | None:
    """Several tensors' changes together (a group): median and robust spread of them all."""
    values = scaled[np.isfinite(scaled) & (scaled > 0)]
    if not len(values):
        return None
    logs = np.log(values)
    level = float(np.median(logs))
    sigma = 1.4826 * float(np.median(np.abs(logs - level)))
    return Expected(len(values), math.exp(level), float(values.max()), sigma)
