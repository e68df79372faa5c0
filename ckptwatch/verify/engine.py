"""The verification engine: stream a candidate and its references through the checks.

    verify_paths(candidate, previous=None, golden=None, policy=Policy()) -> Report
    inspect_path(path) -> Report          (statistics only)
    (diff_paths, `ckptwatch diff`, is ckptwatch.verify.diff's)

One tensor at a time, in chunks: the candidate's chunks and the matching
reference chunks are re-sliced to common boundaries and fed to the statistics,
drift and sketch accumulators together, so each file is read once and memory
stays flat. Tensors run on a small thread pool (the kernels release the GIL).
Everything here is pure computation over readers: no TensorFlow, no processes.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import blake3
import numpy as np

from ckptwatch.errors import CheckpointNotFound, CheckpointUnreadable, UnsupportedFormat
from ckptwatch.formats import CheckpointSource, IntegrityError, open_checkpoint, resolve
from ckptwatch.formats.base import CHUNK_ELEMENTS, READ_ERRORS, TensorInfo, decode_problem
from ckptwatch.formats.layout import RELOCATED_CHECK
from ckptwatch.policy import Policy
from ckptwatch.verify import structure
from ckptwatch.verify.change import Settings, measure, record_history, training_steps
from ckptwatch.verify.drift import Drift, PairSums, ReferenceStats
from ckptwatch.verify.fingerprint import FingerprintSource
from ckptwatch.verify.history import History
from ckptwatch.verify.report import ROLES, Finding, Report, TensorResult, unverified_report
from ckptwatch.verify.rules import evaluate
from ckptwatch.verify.sketch import SAMPLE_SIZE, SketchBuilder, TensorSketch, estimate_sums
from ckptwatch.verify.stats import StatsAccumulator, TensorStats, chunk_stats, stats_kernels

DEFAULT_THREADS = min(2, os.cpu_count() or 1)
Progress = Callable[[str], None]


@dataclass
class Options:
    threads: int = DEFAULT_THREADS
    chunk_elements: int = CHUNK_ELEMENTS
    sketch: bool = False  # also build the candidate's fingerprint sketches
    # called with each tensor name before it is read; if it has them, also `begin(path, [(name, bytes)])`
    # once the candidate is open and `close()` once its tensors are read (ckptwatch.termui.ProgressBar)
    progress: Progress | None = None
    history: History | None = None  # the run's, to judge each tensor's change by (ckptwatch.verify.history)


@dataclass
class _Ref:
    role: str
    source: CheckpointSource
    infos: dict[str, TensorInfo]
    pairs: dict[str, str] = field(default_factory=dict)  # candidate name -> reference name

    @property
    def is_fingerprint(self) -> bool:
        return isinstance(self.source, FingerprintSource)


@dataclass
class _TensorOutcome:
    result: TensorResult
    sums: dict[str, PairSums] = field(default_factory=dict)
    ref_stats: dict[str, TensorStats | ReferenceStats] = field(default_factory=dict)
    sketch: TensorSketch | None = None
    findings: list[Finding] = field(default_factory=list)


class _StreamFailed(Exception):
    def __init__(self, index: int, error: IntegrityError):
        self.index, self.error = index, error


def _unreadable(e: OSError, tensor: str) -> IntegrityError:
    """A file that went away or could not be read while a tensor was streamed from it
    (CheckpointManager's max_to_keep deletes between a reader's stat and its open)."""
    where = os.path.basename(e.filename) if isinstance(e.filename, str) else "a file of the checkpoint"
    return IntegrityError("integrity.unreadable", f"{where}: {e.strerror or e}", tensor)


def _tagged(index: int, stream: Iterator[np.ndarray], tensor: str) -> Iterator[np.ndarray]:
    """The reader's chunks; what reading raises (IntegrityError, a decoding error, OSError) as _StreamFailed."""
    try:
        yield from stream
    except READ_ERRORS as e:
        raise _StreamFailed(index, decode_problem(e, tensor, tensor)) from None
    except OSError as e:
        raise _StreamFailed(index, _unreadable(e, tensor)) from None


def aligned(streams: list[Iterator[np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """Re-slice several chunk streams of equal total length to common boundaries.

    Each stream is advanced only once its current chunk is used up (readers may
    reuse their buffer), and every stream is driven to its end, so readers run
    their end-of-tensor checks (checksums).
    """
    if len(streams) == 1:  # nothing to align (inspect, fingerprint, verify without references)
        for only in streams[0]:
            if len(only):
                yield [only]
        return
    current = [np.empty(0)] * len(streams)
    pos = [0] * len(streams)
    while True:
        for i, it in enumerate(streams):
            while pos[i] >= len(current[i]):
                chunk = next(it, None)
                if chunk is None:
                    for other in streams:  # finish the others: their checks run at the end
                        for _ in other:
                            pass
                    return
                current[i], pos[i] = chunk, 0
        k = min(len(c) - p for c, p in zip(current, pos, strict=True))
        yield [c[p : p + k] for c, p in zip(current, pos, strict=True)]
        pos = [p + k for p in pos]


def _source_meta(source: CheckpointSource) -> dict:
    infos = source.tensors()
    return {
        "path": source.path,
        "format": source.format,
        "step": source.step,
        "tensors": len(infos),
        "bytes": source.total_bytes,
    }


def _problem_findings(source: CheckpointSource, role: str | None) -> list[Finding]:
    out = []
    for p in source.problems:
        severity = {"integrity.incomplete": "warn", RELOCATED_CHECK: "info"}.get(p.check, "fail")
        if role is not None:
            severity = "warn" if severity == "fail" else severity
        out.append(Finding(severity, p.check, p.message, p.tensor, role))
    return out


class Engine:
    def __init__(self, policy: Policy | None = None, options: Options | None = None):
        self.policy = policy or Policy()
        self.options = options or Options()
        self._wants_sketch = self.options.sketch  # set per run: fingerprint references need sketches too
        self._settings = Settings(self.policy)  # policy.settings_for, once per tensor (read them, never change them)

    # -- one tensor --------------------------------------------------------------

    def _tensor(self, cand: CheckpointSource, info: TensorInfo, refs: list[_Ref]) -> _TensorOutcome:
        result = TensorResult(info.name, info.label, info.kind, info.dtype, info.shape, info.nbytes, known=info.known)
        out = _TensorOutcome(result)
        if self.options.progress:
            self.options.progress(info.name)
        if not info.numeric:  # read it only for its checksum
            try:
                for _ in cand.read(info.name, self.options.chunk_elements):
                    pass
            except READ_ERRORS as e:
                problem = decode_problem(e, info.name)
                out.findings.append(Finding("fail", problem.problem.check, str(problem), info.name))
            except OSError as e:
                out.findings.append(Finding("fail", "integrity.unreadable", str(_unreadable(e, info.name)), info.name))
            return out
        s = self._settings(info.name, info.label)
        live = [r for r in refs if info.name in r.pairs and not r.is_fingerprint]
        while True:
            try:
                self._stream(cand, info, live, s, out)
                break
            except _StreamFailed as failed:
                if failed.index == 0:
                    out.result.stats = None
                    out.sums.clear()
                    out.result.error = Finding("fail", failed.error.problem.check, str(failed.error), info.name)
                    out.findings.append(out.result.error)
                    return out
                bad = live.pop(failed.index - 1)
                out.findings.append(
                    Finding(
                        "warn",
                        failed.error.problem.check,
                        f"{bad.role} unreadable here: {failed.error}",
                        info.name,
                        bad.role,
                    )
                )
        return self._finish(info, refs, s, out)

    def _finish(self, info: TensorInfo, refs: list[_Ref], s: dict, out: _TensorOutcome) -> _TensorOutcome:
        """A read tensor's estimates against fingerprints, then its drift against each reference."""
        for ref in refs:
            if ref.is_fingerprint and info.name in ref.pairs:
                self._estimate(info, ref, s, out)
        stats = out.result.stats
        for role, sums in out.sums.items():
            rs = out.ref_stats.get(role)
            mean_diff = stats.mean - rs.mean if stats and rs else 0.0
            std_diff = stats.std - rs.std if stats and rs else 0.0
            out.result.drift[role] = sums.drift(mean_diff, std_diff)
        return out

    def _batch(self, cand: CheckpointSource, infos: list[TensorInfo], refs: list[_Ref]) -> list[_TensorOutcome]:
        """The outcomes of consecutive tensors. Small float tensors go through the reader's
        `read_runs` where it has one: one read per run of tensors stored back to back, and per
        tensor one kernel call on its slice for its statistics, one for its drift against each
        checkpoint reference (whose tensors are read in runs of their own first), its sketch from
        the same slice: the very numbers `_tensor` gives. Any tensor that path leaves (a
        non-finite value, a checksum that does not match on either side, another dtype, a
        reference without `read_runs` or whose tensor it left) goes through `_tensor`, which says
        what is wrong."""
        read_runs = getattr(cand, "read_runs", None)
        if read_runs is None or len(infos) < 2:
            return [self._tensor(cand, i, refs) for i in infos]
        live = [r for r in refs if not r.is_fingerprint]
        unrunnable = [r for r in live if getattr(r.source, "read_runs", None) is None]
        simple = [k for k, i in enumerate(infos) if i.numeric and not any(i.name in r.pairs for r in unrunnable)]
        outcomes: list[_TensorOutcome | None] = [None] * len(infos)
        kernels = stats_kernels()
        moments = kernels.moments_finite
        wants_sketch = self._wants_sketch
        settings_for = self._settings
        for group, x, members, ref_slices in self._runs(read_runs, infos, simple, live):
            starts = np.array([a for _, a, _ in members], dtype=np.int64)
            ends = np.array([b for _, _, b in members], dtype=np.int64)
            # one kernel call per tensor, on its own slice: the very loop `_tensor` runs (a kernel
            # looping over the segments inlines it, and LLVM then rounds the sums differently)
            sums = [moments(x[a:b]) for _, a, b in members]
            bounds = np.empty(2 * len(members), dtype=np.int64)
            bounds[0::2], bounds[1::2] = starts, ends
            bounds = bounds[:-1] if ends[-1] == x.size else bounds
            mins = np.minimum.reduceat(x, bounds)[0::2].tolist()
            maxs = np.maximum.reduceat(x, bounds)[0::2].tolist()
            if wants_sketch:  # SketchBuilder's values: at sample_positions(n), as float64, tensor after tensor
                samples = kernels.run_samples(x, starts, ends, SAMPLE_SIZE)
                raw = x.view(np.uint8)
                itemsize = x.itemsize
            taken = 0
            for (j, a, b), (s, zeros, m2, m3, m4), mn, mx in zip(members, sums, mins, maxs, strict=True):
                n = b - a
                first, taken = taken, taken + min(n, SAMPLE_SIZE)
                if not math.isfinite(s + m4):
                    continue  # NaN/Inf (or x^4 overflowed): _tensor counts them exactly
                k = group[j]
                info = infos[k]
                c = x[a:b]
                result = TensorResult(
                    info.name, info.label, info.kind, info.dtype, info.shape, info.nbytes, known=info.known
                )
                out = _TensorOutcome(result)
                if refs:
                    settings = settings_for(info.name, info.label)
                    if not self._pair_slices(info, c, live, ref_slices, settings, out):
                        continue  # a reference's tensor that runs did not give: _tensor reads both
                if mn == 0.0 or mx == 0.0:  # a signed zero: the sign numpy's own min/max give
                    mn, mx = float(c.min()), float(c.max())
                result.stats = chunk_stats(n, s, zeros, m2, m3, m4, mn, mx)
                if wants_sketch:
                    digest = blake3.blake3(raw[a * itemsize : b * itemsize].data).hexdigest()
                    out.sketch = TensorSketch("blake3:" + digest, samples[first:taken], n)
                outcomes[k] = self._finish(info, refs, settings, out) if refs else out
        for k, info in enumerate(infos):
            if outcomes[k] is None:
                outcomes[k] = self._tensor(cand, info, refs)
        return outcomes  # type: ignore[return-value]

    def _runs(
        self, read_runs: Callable, infos: list[TensorInfo], simple: list[int], live: list[_Ref]
    ) -> Iterator[tuple[list[int], np.ndarray, list[tuple[int, int, int]], list[dict[str, np.ndarray]]]]:
        """The candidate's runs of the tensors infos[k] for k in `simple`: (the group of indices
        the members' positions refer to, the run's values, its members, per live reference its
        tensors paired with the group's). Against references the tensors go in groups of about
        GROUP_BYTES, each reference's part read just before the candidate's: both stay in the
        CPU's cache while the kernels compare them."""
        progress, ch = self.options.progress, self.options.chunk_elements
        groups: list[list[int]] = [simple]
        if live:
            groups, size = [], 0
            for k in simple:
                if not groups or size + infos[k].nbytes > GROUP_BYTES:
                    groups.append([])
                    size = 0
                groups[-1].append(k)
                size += infos[k].nbytes
        for group in groups:
            names = [infos[k].name for k in group]
            announce = progress
            if progress is not None and live:
                # each candidate tensor named once, before its reference's part or its own is read
                # (a reader stuck in a reference's tensor is reported reading it, not "opening")
                announced: set[str] = set()

                def announce(name: str, announced: set[str] = announced) -> None:
                    if name not in announced:
                        announced.add(name)
                        progress(name)

            ref_slices = [self._reference_slices(r, names, announce) for r in live]
            for x, members in read_runs(names, ch, announce=announce):
                yield group, x, members, ref_slices

    def _reference_slices(
        self, ref: _Ref, names: list[str], announce: Callable[[str], None] | None = None
    ) -> dict[str, np.ndarray]:
        """The reference tensors paired with these candidate tensors that its `read_runs` reads
        (in its own storage order, into its arena: valid until the next group), by name.
        `announce` gets the candidate tensors' names before their reference's part is read."""
        read_runs = getattr(ref.source, "read_runs", None)
        wanted = list(dict.fromkeys(ref.pairs[n] for n in names if n in ref.pairs))
        if read_runs is None or not wanted:
            return {}
        storage_key = getattr(ref.source, "storage_key", None)
        if storage_key is not None:
            wanted.sort(key=storage_key)
        tell = None
        if announce is not None:
            paired: dict[str, list[str]] = {}
            for n in names:
                if n in ref.pairs:
                    paired.setdefault(ref.pairs[n], []).append(n)

            def tell(ref_name: str) -> None:
                for n in paired[ref_name]:
                    announce(n)

        slices, held = {}, 0
        for x, members in read_runs(wanted, self.options.chunk_elements, keep=True, announce=tell):
            for j, a, b in members:
                slices[wanted[j]] = x[a:b]
            held += x.nbytes
            if held > GROUP_BYTES:
                # the group is sized by what the candidate's tensors claim: a candidate that claims
                # less than the reference holds (0 bytes, say) must not make this arena hold the
                # whole reference, nor one file's bytes many times over (entries that overlap).
                # The tensors left out go through _tensor, which gives the same numbers.
                break
        return slices

    @staticmethod
    def _pair_slices(
        info: TensorInfo,
        c: np.ndarray,
        live: list[_Ref],
        ref_slices: list[dict[str, np.ndarray]],
        s: dict,
        out: _TensorOutcome,
    ) -> bool:
        """_stream's PairSums and reference statistics for a tensor read whole (one chunk) on
        each side; False when a reference's tensor is not there as one of the same dtype and
        length (unreadable, damaged, left to `read`)."""
        atol, rtol = s["atol"], s["rtol"]
        for ref, slices in zip(live, ref_slices, strict=True):
            ref_name = ref.pairs.get(info.name)
            if ref_name is None:
                continue
            r = slices.get(ref_name)
            if r is None or r.dtype != c.dtype or r.size != c.size:
                return False
            sums = PairSums()
            sums.update(c, r, atol, rtol)
            out.ref_stats[ref.role] = sums.reference_stats()
            out.sums[ref.role] = sums
        return True

    def _stream(self, cand: CheckpointSource, info: TensorInfo, live: list[_Ref], s: dict, out: _TensorOutcome) -> None:
        ch = self.options.chunk_elements
        streams = [_tagged(0, cand.read(info.name, ch), info.name)]
        streams += [_tagged(i + 1, r.source.read(r.pairs[info.name], ch), info.name) for i, r in enumerate(live)]
        acc = StatsAccumulator()
        sums = [PairSums() for _ in live]
        sketch: SketchBuilder | None = None  # made after the first chunk: the reader checks the shape first
        atol, rtol = s["atol"], s["rtol"]
        for chunks in aligned(streams):
            c = chunks[0]
            acc.update(c)
            if self._wants_sketch:
                sketch = sketch or SketchBuilder(info.size)
                sketch.update(c)
            for j in range(len(live)):
                sums[j].update(c, chunks[j + 1], atol, rtol)
        out.result.stats = acc.result()
        out.sketch = (sketch or SketchBuilder(info.size)).result() if self._wants_sketch else None
        for r, sm in zip(live, sums, strict=True):
            out.ref_stats[r.role] = sm.reference_stats()
            out.sums[r.role] = sm

    def _estimate(self, info: TensorInfo, ref: _Ref, s: dict, out: _TensorOutcome) -> None:
        fp = ref.source
        assert isinstance(fp, FingerprintSource)
        ref_name = ref.pairs[info.name]
        ref_stats, ref_sketch = fp.stats(ref_name), fp.sketch(ref_name)
        if out.result.stats is None or out.sketch is None or ref_stats is None or ref_sketch is None:
            return
        sums, _ = estimate_sums(out.result.stats, out.sketch, ref_stats, ref_sketch, s["atol"], s["rtol"])
        out.sums[ref.role] = sums
        out.ref_stats[ref.role] = ref_stats

    # -- a whole checkpoint ----------------------------------------------------------

    def run(
        self, cand: CheckpointSource, previous: CheckpointSource | None = None, golden: CheckpointSource | None = None
    ) -> tuple[Report, list[tuple[TensorInfo, TensorStats | None, TensorSketch | None]]]:
        t0 = time.perf_counter()
        policy = self.policy
        infos = cand.tensors()
        findings = _problem_findings(cand, None)
        refs: list[_Ref] = []
        compared = policy.compared_kinds()
        severity = "fail" if policy.profile == "replica" else "warn"

        settings = self._settings = Settings(policy)  # policy.settings_for, once per tensor

        def structural(ts: list[TensorInfo]) -> list[TensorInfo]:
            return [t for t in ts if t.kind in compared and not settings(t.name, t.label)["exclude"]]

        for role, src in (("previous", previous), ("golden", golden)):
            if src is None:
                continue
            ref = _Ref(role, src, {t.name: t for t in src.tensors()})
            findings += _problem_findings(src, role)
            st = structure.compare(structural(infos), structural(list(ref.infos.values())), role, severity)
            findings += st.findings
            ref.pairs = st.pairs
            # tensors outside the structural set (optimizer state, metrics) are still compared, by identity
            ref_ids = structure.identities(list(ref.infos.values()))
            for ident, t in structure.identities(infos).items():
                r = ref_ids.get(ident)
                if t.name not in ref.pairs and r and r.numeric and (r.shape, r.dtype) == (t.shape, t.dtype):
                    ref.pairs[t.name] = r.name
            refs.append(ref)
        if policy.profile == "replica" and golden is None:
            from ckptwatch.errors import UsageError

            raise UsageError("profile 'replica' needs a golden reference (--golden)")
        self._wants_sketch = self.options.sketch or any(r.is_fingerprint for r in refs)
        begin = getattr(self.options.progress, "begin", None)
        if begin is not None:
            begin(cand.path, [(i.name, i.nbytes) for i in infos])
        t_open = time.perf_counter()
        threads = max(1, self.options.threads)
        storage_key = getattr(cand, "storage_key", None)  # read in the order the bytes lie, report in key order
        order = list(range(len(infos)))
        if storage_key is not None:
            order.sort(key=lambda k: storage_key(infos[k].name))
        work = [infos[k] for k in order]
        if threads > 1 and len(work) > 1:
            with ThreadPoolExecutor(threads, thread_name_prefix="ckptwatch-verify") as pool:
                batches = pool.map(lambda batch: self._batch(cand, batch, refs), _batches(work, threads))
                done = [o for batch in batches for o in batch]
        else:  # batches all the same: a reference's tensors are held a batch at a time
            done = [o for batch in _batches(work, 1) for o in self._batch(cand, batch, refs)]
        outcomes: list[_TensorOutcome] = [done[0]] * len(infos) if done else []
        for k, o in zip(order, done, strict=True):
            outcomes[k] = o
        t_read = time.perf_counter()
        end = getattr(self.options.progress, "close", None)
        if end is not None:
            end()
        results = [o.result for o in outcomes]
        for o in outcomes:
            findings += o.findings
        global_drift: dict[str, Drift | None] = {}
        for ref in refs:
            total = PairSums()
            for o in outcomes:
                res = o.result
                if ref.role in o.sums and res.kind in compared and not settings(res.name, res.display)["exclude"]:
                    total.add(o.sums[ref.role])
            global_drift[ref.role] = total.drift() if total.count else None
        previous_stats = {o.result.name: o.ref_stats["previous"] for o in outcomes if "previous" in o.ref_stats}
        steps = training_steps(results, previous_stats, cand.step, previous.step if previous is not None else None)
        # each tensor's change vs previous, measured once: for the rules and for the run's history
        changes = measure(policy, results, previous_stats, settings) if policy.profile == "training" else None
        findings += evaluate(policy, results, global_drift, previous_stats, self.options.history, steps, changes)
        t_end = time.perf_counter()
        report = Report(
            checkpoint=_source_meta(cand),
            findings=findings,
            tensors=results,
            drift={role: global_drift.get(role) for role in ROLES},
            references={
                role: (src.path if src is not None else None)
                for role, src in (("previous", previous), ("golden", golden))
            },
            timings={
                "open_seconds": round(t_open - t0, 4),
                "read_seconds": round(t_read - t_open, 4),
                "total_seconds": round(t_end - t0, 4),
            },
        )
        record_history(
            report, policy, results, previous_stats, steps, self.options.history, previous is not None, changes
        )
        prints = [(i, o.result.stats, o.sketch) for i, o in zip(infos, outcomes, strict=True)]
        return report, prints


BATCH_BYTES = 16 << 20  # tensors handed to a thread together: one task per ~16 MB, not one per tensor
GROUP_BYTES = 1 << 20  # _batch against references: tensors read on both sides, then compared, together


def _batches(infos: list[TensorInfo], threads: int) -> list[list[TensorInfo]]:
    """Consecutive tensors grouped into tasks of about BATCH_BYTES (a large tensor alone), and
    at least 4 tasks per thread while there are tensors, so the threads stay evenly loaded."""
    limit = max(1, min(BATCH_BYTES, sum(i.nbytes for i in infos) // (4 * threads)))
    out: list[list[TensorInfo]] = []
    batch: list[TensorInfo] = []
    size = 0
    for info in infos:
        if batch and size + info.nbytes > limit:
            out.append(batch)
            batch, size = [], 0
        batch.append(info)
        size += info.nbytes
    if batch:
        out.append(batch)
    return out


# -- path-level entry points (what the CLI and the worker call) ----------------------------


def open_reference(path: str, role: str) -> CheckpointSource:
    """Open a previous/golden reference (a checkpoint or a fingerprint); any failure is a
    tool error (exit 2)."""
    try:
        kind, location = resolve(path)
        return FingerprintSource(location) if kind == "fingerprint" else open_checkpoint(path)
    except CheckpointNotFound as e:
        raise CheckpointNotFound(f"{role} reference {e}") from None
    except UnsupportedFormat as e:
        raise UnsupportedFormat(f"{role} reference {e}") from None
    except READ_ERRORS as e:
        raise CheckpointUnreadable(f"{role} reference {path}: unreadable ({decode_problem(e, path)})") from None
    except OSError as e:
        raise CheckpointUnreadable(f"{role} reference {path}: {e.strerror or e}") from None


def verify_paths(
    candidate: str,
    previous: str | None = None,
    golden: str | None = None,
    policy: Policy | None = None,
    options: Options | None = None,
) -> tuple[Report, list]:
    """Verify a candidate path; a broken candidate is a `fail` report, a missing
    one or an unreadable reference raises CkptwatchError."""
    with gc_paused():
        return _verify_paths(candidate, previous, golden, policy, options)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off meanwhile (and on again after, if it was on): opening
    and verifying a checkpoint of 10,000 tensors makes some 100,000 objects, which would
    trigger full collections over everything the process holds (numba's, numpy's and the
    interpreter's own objects: ~0.1 s each time). They make no cycles; reference counting
    frees them as usual."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _verify_paths(
    candidate: str,
    previous: str | None,
    golden: str | None,
    policy: Policy | None,
    options: Options | None,
) -> tuple[Report, list]:
    opened: list[CheckpointSource] = []
    try:
        refs = {}
        for role, path in (("previous", previous), ("golden", golden)):
            if path:
                refs[role] = open_reference(path, role)
                opened.append(refs[role])
        try:
            cand = open_checkpoint(candidate)
        except READ_ERRORS as e:  # a decoding error on bytes the reader did not expect: the file's fault too
            p = decode_problem(e, candidate).problem
            return unverified_report(os.path.abspath(candidate), Finding("fail", p.check, p.message, p.tensor)), []
        except OSError as e:
            raise CheckpointNotFound(f"{candidate}: {e.strerror or e}") from None
        opened.append(cand)
        report, prints = Engine(policy, options).run(cand, refs.get("previous"), refs.get("golden"))
        report.references = {role: (refs[role].path if role in refs else None) for role in ROLES}
        return report, prints
    finally:
        for s in opened:
            s.close()


def inspect_path(path: str, options: Options | None = None) -> Report:
    """Every tensor's statistics; a fingerprint's are the ones it stored (no tensor data is read)."""
    try:
        kind, location = resolve(path)
    except Exception:  # verify_paths says what is wrong with it, as for any path
        kind = ""
    if kind == "fingerprint":
        return _inspect_fingerprint(path, location)
    report, _ = verify_paths(path, options=options)
    return report


def _inspect_fingerprint(path: str, location: str) -> Report:
    """A fingerprint as a report: its checkpoint's metadata and the statistics it stored."""
    try:
        fp = FingerprintSource(location)
    except READ_ERRORS as e:
        p = decode_problem(e, path).problem
        return unverified_report(os.path.abspath(path), Finding("fail", p.check, p.message, p.tensor))
    infos = fp.tensors()
    tensors = [TensorResult(i.name, i.label, i.kind, i.dtype, i.shape, i.nbytes, fp.stats(i.name)) for i in infos]
    of = fp.checkpoint.get("path")
    note = f"a fingerprint{f' of {of}' if of else ''}: the statistics stored when it was written"
    return Report(
        checkpoint={
            "path": fp.path,
            "format": "fingerprint",
            "step": fp.step,
            "tensors": len(infos),
            "bytes": fp.total_bytes,
        },
        findings=[Finding("info", "integrity.fingerprint", note)],
        tensors=tensors,
        drift={role: None for role in ROLES},
        references={role: None for role in ROLES},
        timings={},
    )
