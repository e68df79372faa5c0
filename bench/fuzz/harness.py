"""The campaign: worker processes that run one case at a time under a time limit and report
what happened, and the parent that makes cases, classifies outcomes and keeps the figures.

Outcomes: ok (opened and verified), clean (IntegrityError, a CkptwatchError, a `fail` report
with an integrity check, a refusal), internal (any other exception, or a worker that died),
hang (past the time limit: the worker is killed and replaced), memory (MemoryError under the
worker's address-space limit, or a peak RSS over the limit)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import resource
import shutil
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing import get_context
from multiprocessing.connection import Connection, wait

from bench.fuzz.targets import BY_NAME, TARGETS, Target

RSS_LIMIT_MB = 400
ADDRESS_SPACE = 6 << 30  # a light worker's RLIMIT_AS: a runaway allocation is a MemoryError, not an OOM kill
CRASHES_KEPT = 3  # inputs saved per distinct internal error


def _hwm_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _reset_hwm() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def _last_frame(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    if not frames:
        return "?"
    f = frames[-1]
    path = f.filename
    for marker in ("/ckptwatch/", "/site-packages/", "/bench/"):
        if marker in path:
            path = path[path.index(marker) + 1 :]
            break
    return f"{path}:{f.lineno} {f.name}"


def _preload(tf: bool) -> None:
    if tf:
        from tensorflow.core.protobuf import saved_model_pb2  # noqa: F401  (TF's protobufs, once)

        import ckptwatch.model.safety
    else:
        import ckptwatch.config
        import ckptwatch.formats.hdf5
        import ckptwatch.formats.keras_archive
        import ckptwatch.model.safety
        import ckptwatch.verify.engine
        import ckptwatch.verify.fingerprint  # noqa: F401


def _worker(conn: Connection, tf: bool) -> None:
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    if not tf:
        resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    _preload(tf)
    from ckptwatch.errors import CkptwatchError
    from ckptwatch.formats.base import IntegrityError

    conn.send(("ready", _hwm_kb()))
    while True:
        msg = conn.recv()
        if msg is None:
            return
        name, case = msg
        _reset_hwm()
        t0 = time.perf_counter()
        detail = ""
        try:
            outcome = BY_NAME[name].run(case)
            kind = "ok" if outcome.startswith("ok") else "clean"
        except MemoryError as e:
            kind, outcome, detail = "memory", f"MemoryError@{_last_frame(e)}", traceback.format_exc()
        except IntegrityError as e:
            kind, outcome = "clean", f"clean:IntegrityError[{e.problem.check}]"
        except CkptwatchError as e:
            kind, outcome = "clean", f"clean:{type(e).__name__}"
        except BaseException as e:
            kind, outcome, detail = "internal", f"{type(e).__name__}@{_last_frame(e)}", traceback.format_exc()
        conn.send((kind, outcome, detail, _hwm_kb(), time.perf_counter() - t0))


@dataclass
class Figures:
    cases: int = 0
    outcomes: Counter = field(default_factory=Counter)
    internal: dict[str, int] = field(default_factory=dict)  # signature -> count
    hangs: int = 0
    memory: int = 0
    peak_rss_mb: float = 0.0
    baseline_rss_mb: float = 0.0
    slowest_s: float = 0.0
    slowest: str = ""

    def as_dict(self) -> dict:
        return {
            "cases": self.cases, "distinct_outcomes": len(self.outcomes), "outcomes": dict(self.outcomes.most_common()),
            "internal_errors": sum(self.internal.values()), "internal": self.internal, "hangs": self.hangs,
            "memory": self.memory, "peak_rss_mb": round(self.peak_rss_mb, 1),
            "baseline_rss_mb": round(self.baseline_rss_mb, 1),
            "slowest_s": round(self.slowest_s, 3), "slowest": self.slowest,
        }  # fmt: skip


@dataclass
class _Slot:
    index: int
    tf: bool
    proc: object = None
    conn: Connection | None = None
    baseline_kb: int = 0
    busy: tuple | None = None  # (target, case number, mutation label, deadline)


class Campaign:
    def __init__(self, seeds: str, out: str, *, seed: int = 0, jobs: int = 2, timeout: float = 5.0,
                 targets: list[str] | None = None, rss_limit_mb: float = RSS_LIMIT_MB, log=print):  # fmt: skip
        self.seeds, self.out, self.seed, self.timeout, self.log = seeds, out, seed, timeout, log
        self.rss_limit_mb = rss_limit_mb
        self.targets: list[Target] = [BY_NAME[n] for n in targets] if targets else list(TARGETS)
        self.figures = {t.name: Figures() for t in self.targets}
        self.crashes = os.path.join(out, "crashes")
        self.work = tempfile.mkdtemp(prefix="ckptwatch-fuzz-")
        self.ctx = get_context("fork")
        light = [t for t in self.targets if not t.tf]
        self.slots = [_Slot(i, False) for i in range(jobs if light else 0)]
        if any(t.tf for t in self.targets):
            self.slots.append(_Slot(len(self.slots), True))
        self.number = 0

    # -- workers ---------------------------------------------------------------------------

    def _start(self, slot: _Slot) -> None:
        parent, child = self.ctx.Pipe()
        proc = self.ctx.Process(target=_worker, args=(child, slot.tf), daemon=True)
        proc.start()
        child.close()
        if not parent.poll(120):
            raise RuntimeError("a fuzz worker did not start within 120 s")
        _, slot.baseline_kb = parent.recv()
        slot.proc, slot.conn, slot.busy = proc, parent, None

    def _kill(self, slot: _Slot) -> None:
        proc = slot.proc
        if proc is not None and proc.is_alive():  # type: ignore[attr-defined]
            proc.kill()  # type: ignore[attr-defined]
        if proc is not None:
            proc.join(5)  # type: ignore[attr-defined]
        if slot.conn is not None:
            slot.conn.close()

    # -- cases -----------------------------------------------------------------------------

    def _pick(self, slot: _Slot) -> Target | None:
        light = [t for t in self.targets if not t.tf]
        if slot.tf:
            (t,) = [t for t in self.targets if t.tf]
            least = min((self.figures[x.name].cases for x in light), default=0)
            return t if not light or self.figures[t.name].cases <= least else None
        return min(
            light, key=lambda t: self.figures[t.name].cases + sum(1 for s in self.slots if s.busy and s.busy[0] is t)
        )

    def _submit(self, slot: _Slot, target: Target) -> None:
        self.number += 1
        rng = random.Random(f"{self.seed}:{self.number}")
        case = os.path.join(self.work, f"slot{slot.index}")
        shutil.rmtree(case, ignore_errors=True)
        os.makedirs(case)
        with open(os.path.join(self.seeds, target.splice_from), "rb") as f:
            other = f.read()
        label = target.prepare(rng, self.seeds, case, other)
        assert slot.conn is not None
        slot.conn.send((target.name, case))
        slot.busy = (target, self.number, label, time.monotonic() + self.timeout)

    def _save(self, slot: _Slot, target: Target, signature: str, detail: str) -> None:
        count = self.figures[target.name].internal.get(signature, 0) if not signature.startswith("hang") else 0
        if count > CRASHES_KEPT:
            return
        digest = hashlib.sha1(signature.encode()).hexdigest()[:10]
        dest = os.path.join(self.crashes, f"{target.name}-{digest}-{slot.busy[1] if slot.busy else 0}")
        shutil.rmtree(dest, ignore_errors=True)
        shutil.copytree(os.path.join(self.work, f"slot{slot.index}"), dest, symlinks=True)
        with open(os.path.join(dest, "OUTCOME.txt"), "w") as f:
            label = slot.busy[2] if slot.busy else ""
            f.write(f"target: {target.name}\nsignature: {signature}\nmutation: {label}\n\n{detail}\n")

    def _record(self, slot: _Slot, kind: str, outcome: str, detail: str, hwm_kb: int, secs: float) -> None:
        assert slot.busy is not None
        target, number, label, _ = slot.busy
        fig = self.figures[target.name]
        fig.cases += 1
        rss_mb = hwm_kb / 1024
        fig.peak_rss_mb = max(fig.peak_rss_mb, rss_mb)
        fig.baseline_rss_mb = slot.baseline_kb / 1024
        over = (rss_mb - fig.baseline_rss_mb) if slot.tf else rss_mb
        if kind in ("ok", "clean") and over > self.rss_limit_mb:
            kind, outcome = "memory", f"rss {rss_mb:.0f} MB: {outcome}"
        fig.outcomes[kind if kind in ("internal", "memory", "hang") else outcome] += 1
        if secs > fig.slowest_s:
            fig.slowest_s, fig.slowest = secs, f"case {number} ({label}): {outcome}"
        if kind == "internal":
            fig.internal[outcome] = fig.internal.get(outcome, 0) + 1
            self._save(slot, target, outcome, detail)
            self.log(f"  internal error in {target.name} (case {number}, {label}): {outcome}")
        elif kind == "hang":
            fig.hangs += 1
            self._save(slot, target, "hang", detail)
            self.log(f"  hang in {target.name} (case {number}, {label})")
        elif kind == "memory":
            fig.memory += 1
            self._save(slot, target, "memory:" + outcome, detail)
            self.log(f"  memory in {target.name} (case {number}, {label}): {outcome}")
        slot.busy = None

    def run(self, seconds: float, cases: int | None = None) -> dict:
        end = time.monotonic() + seconds
        try:
            for slot in self.slots:
                self._start(slot)
            while True:
                stopping = time.monotonic() >= end or (cases is not None and self.number >= cases)
                if not stopping:
                    for slot in self.slots:
                        if slot.busy is None:
                            target = self._pick(slot)
                            if target is not None:
                                self._submit(slot, target)
                busy = [s for s in self.slots if s.busy]
                if not busy:
                    break
                deadline = min(s.busy[3] for s in busy if s.busy)
                ready = wait([s.conn for s in busy if s.conn], timeout=max(0.0, deadline - time.monotonic()))
                for slot in busy:
                    if slot.conn in ready:
                        try:
                            self._record(slot, *slot.conn.recv())
                        except (EOFError, OSError):  # the worker died: a segfault in a C library, an OOM kill
                            code = slot.proc.exitcode if slot.proc else None  # type: ignore[attr-defined]
                            self._record(slot, "internal", f"worker died (exit {code})", "", 0, 0.0)
                            self._kill(slot)
                            self._start(slot)
                    elif slot.busy and time.monotonic() >= slot.busy[3]:
                        self._record(slot, "hang", f"past {self.timeout:.0f} s", "", 0, self.timeout)
                        self._kill(slot)
                        self._start(slot)
        finally:
            for slot in self.slots:
                if slot.conn is not None and slot.busy is None:
                    with contextlib.suppress(OSError):
                        slot.conn.send(None)
                self._kill(slot)
            shutil.rmtree(self.work, ignore_errors=True)
        return {name: fig.as_dict() for name, fig in self.figures.items()}


def table(summary: dict) -> str:
    rows = [("target", "cases", "outcomes", "internal", "hangs", "memory", "peak RSS MB", "slowest s")]
    for name, f in summary.items():
        rows.append((name, str(f["cases"]), str(f["distinct_outcomes"]), str(f["internal_errors"]), str(f["hangs"]),
                     str(f["memory"]), f"{f['peak_rss_mb']:.0f}", f"{f['slowest_s']:.2f}"))  # fmt: skip
    total = [sum(f[k] for f in summary.values()) for k in ("cases", "internal_errors", "hangs", "memory")]
    rows.append(("total", str(total[0]), "", str(total[1]), str(total[2]), str(total[3]),
                 f"{max((f['peak_rss_mb'] for f in summary.values()), default=0):.0f}",
                 f"{max((f['slowest_s'] for f in summary.values()), default=0):.2f}"))  # fmt: skip
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def save_summary(summary: dict, out: str, meta: dict) -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "summary.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "targets": summary}, f, indent=1)
    return path
