"""Many small tensors against a reference and with sketches (issue 15): the engine reads the
candidate's float tensors in runs and the previous checkpoint's paired tensors in runs of their
own, computes drift, reference statistics and fingerprint sketches from the slices, and must
give, bit for bit, what reading tensor by tensor gives (`Engine._tensor`, the path every tensor
took before): the whole report, the fingerprint's bytes, the history written. The checkpoints,
written by TensorFlow, hold what makes that hard: NaN or Inf on either side, signed zeros, empty
tensors, float64, values whose fourth power overflows, tensors equal on both sides, a changed
shape or dtype, a damaged tensor inside a run on either side."""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.formats.bundle import BundleSource
from ckptwatch.verify import engine
from ckptwatch.verify.engine import Engine, Options, verify_paths
from ckptwatch.verify.request import VerifyRequest
from ckptwatch.verify.verification import verify_checkpoint
from tests.tools import flip_bits

COUNT = 160


@dataclasses.dataclass
class Pair:
    previous: str
    candidate: str
    by_tensor: set[int]  # weights/<i> the run path must leave to _tensor (non-finite or empty candidates)
    healthy: str  # the previous checkpoint a little later: it passes, so the daemon extends the history


def _key(i: int) -> str:
    return f"weights/{i}/.ATTRIBUTES/VARIABLE_VALUE"


@pytest.fixture(scope="module")
def pair(tf, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    rng = np.random.default_rng(1515)
    prev = [rng.standard_normal(int(n), dtype=np.float32) for n in rng.integers(1, 3000, size=COUNT)]
    prev[14] = np.zeros(0, np.float32)  # empty on both sides
    prev[20] = prev[20].astype(np.float64)  # float64 on both sides
    prev[21] = prev[21].astype(np.float32)  # float32 here, float64 in the candidate: not paired
    prev[5][7] = np.nan  # NaN only in the reference: the masked pair kernel, candidate in a run
    prev[33] = prev[33].astype(np.float64)
    prev[6][3] = np.inf
    prev[9][:] = 0.0
    prev[10][:] = np.abs(prev[10])
    prev[10][:3] = 0.0
    cand = [v + rng.standard_normal(v.size).astype(v.dtype) * v.dtype.type(1e-3) for v in prev]
    for i in (12, 13, 40, 41, 42, 43):  # equal on both sides (frozen layers)
        cand[i] = prev[i].copy()
    cand[3][11] = np.nan  # NaN only in the candidate
    cand[5][7] = 0.5
    cand[6][3] = np.inf  # Inf at the same place on both sides
    cand[9][:] = 0.0  # all zeros on both sides
    cand[10] = prev[10].copy()
    cand[10][:3] = (-0.0, 0.0, -0.0)  # signed zeros: equal values, other signs; min is a zero
    cand[21] = prev[21].astype(np.float64)
    cand[25] = np.concatenate([cand[25], [1.0]]).astype(np.float32)  # another shape: not paired
    cand[30] = (cand[30] * 1e30).astype(np.float32)  # large values: x^4 is still finite in float64
    cand[33] = prev[33] * 1e100  # x^4 overflows: the exact path
    cand[31][:] = 7.0  # constant
    cand[32] = (cand[32] * 1e4).astype(np.float32)  # a big change
    healthy = [v + rng.standard_normal(v.size).astype(v.dtype) * v.dtype.type(1e-4) for v in prev]
    healthy[5][7] = 0.5
    healthy[6][3] = 1.0
    healthy[13] = prev[13].copy()
    root = tmp_path_factory.mktemp("paired")
    ints = tf.Variable(np.arange(10, dtype=np.int64))
    out = {}
    for role, values, step in (("previous", prev, 1), ("candidate", cand, 2), ("healthy", healthy, 3)):
        variables = [tf.Variable(v, name=f"v{i}") for i, v in enumerate(values)]
        ckpt = tf.train.Checkpoint(weights=variables, ints=ints, step=tf.Variable(step, dtype=tf.int64))
        out[role] = ckpt.write(str(root / role / f"ckpt-{step}"))
    return Pair(out["previous"], out["candidate"], {3, 6, 14, 33}, out["healthy"])


def _bits(obj):
    """Floats by their bytes (NaN, -0.0 and all), arrays by dtype and bytes."""
    if isinstance(obj, float):
        return struct.pack("<d", obj).hex()
    if isinstance(obj, dict):
        return {k: _bits(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_bits(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [obj.dtype.str, obj.shape, obj.tobytes().hex()]
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return [type(obj).__name__, _bits({f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)})]
    return obj


def _snapshot(report, prints) -> tuple:
    doc = report.to_dict()
    for k in ("created", "timings"):
        doc.pop(k)
    return json.dumps(doc), _bits([report.tensors, report.drift, report.findings]), _bits(prints)


def _per_tensor(self: Engine, cand, infos, refs):
    """The path every paired or sketched tensor took before runs: one `_tensor` each."""
    return [self._tensor(cand, info, refs) for info in infos]


@pytest.fixture
def by_tensor(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names the run path leaves to `_tensor`."""
    seen: list[str] = []
    original = Engine._tensor

    def spy(self, cand, info, refs):
        seen.append(info.name)
        return original(self, cand, info, refs)

    monkeypatch.setattr(Engine, "_tensor", spy)
    return seen


def _both(monkeypatch: pytest.MonkeyPatch, run, seen: list[str] | None = None) -> tuple:
    """(what the run path gives, what reading tensor by tensor gives); `seen` (by_tensor's list)
    is left with the names the run path left to `_tensor`."""
    if seen is not None:
        seen.clear()
    runs = run()
    left = list(seen or [])
    with monkeypatch.context() as m:
        m.setattr(Engine, "_batch", _per_tensor)
        one_by_one = run()
    if seen is not None:
        seen[:] = left
    return runs, one_by_one


def _assert_same(runs: tuple, one_by_one: tuple) -> None:
    report_json, report_bits, prints_bits = runs[:3]
    assert report_json == one_by_one[0]
    assert report_bits == one_by_one[1]
    assert prints_bits == one_by_one[2]


def _left_to_tensor(seen: list[str]) -> set[int]:
    return {int(n.split("/")[1]) for n in seen if n.startswith("weights/")}


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("sketch", [False, True])
def test_runs_against_the_previous_match_tensor_by_tensor(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, by_tensor: list[str], threads: int, sketch: bool
) -> None:
    def run() -> tuple:
        return _snapshot(*verify_paths(pair.candidate, pair.previous, options=Options(threads=threads, sketch=sketch)))

    runs, one_by_one = _both(monkeypatch, run, by_tensor)
    _assert_same(runs, one_by_one)
    # the run path took all the others: reading them one by one here would make the test vacuous
    assert _left_to_tensor(by_tensor) == pair.by_tensor
    report = json.loads(runs[0])
    tensors = {t["name"]: t for t in report["tensors"]}
    assert tensors[_key(12)]["drift"]["previous"]["changed_fraction"] == 0.0
    assert tensors[_key(32)]["drift"]["previous"]["relative_l2"] > 1
    assert tensors[_key(5)]["drift"]["previous"]["changed_fraction"] > 0  # NaN in the reference only
    assert tensors[_key(25)]["drift"]["previous"] is None and tensors[_key(21)]["drift"]["previous"] is None
    checks = {(f["check"], f["tensor"]) for f in report["findings"]}
    assert ("structure.shape", _key(25)) in checks and ("structure.dtype", _key(21)) in checks
    assert report["drift"]["previous"]["changed_fraction"] > 0.5


@pytest.mark.parametrize("threads", [1, 2])
def test_tensors_over_a_chunk_mix_with_runs(
    pair: Pair, monkeypatch: pytest.MonkeyPatch, by_tensor: list[str], threads: int
) -> None:
    """With chunks of 512 values, the larger tensors stream in chunks tensor by tensor and the
    smaller ones come in runs: still the same report as reading all of them one by one."""

    def run() -> tuple:
        options = Options(threads=threads, sketch=True, chunk_elements=512)
        return _snapshot(*verify_paths(pair.candidate, pair.previous, options=options))

    runs, one_by_one = _both(monkeypatch, run, by_tensor)
    _assert_same(runs, one_by_one)
    src = BundleSource(pair.candidate)
    small = {i for i in range(COUNT) if 0 < src.entry(_key(i)).size <= 512 * 4}
    src.close()
    assert len(small) >= 10 and not small & _left_to_tensor(by_tensor) - pair.by_tensor


def _damage_inside_a_run(prefix: str) -> str:
    """Flip a bit in the middle of a tensor that sits inside a run of at least three; its name."""
    src = BundleSource(prefix)
    names = sorted((i.name for i in src.tensors()), key=src.storage_key)
    runs = [m for _, m in src.read_runs(names) if len(m) >= 3]
    inside = [j for members in runs for j, _, _ in members[1:-1]]
    index = next(j for j in inside if names[j].startswith("weights/") and int(names[j].split("/")[1]) >= 40)
    victim = names[index]
    e = src.entry(victim)
    src.close()
    flip_bits(prefix + ".data-00000-of-00001", e.offset + e.size // 2, 0x10)
    return victim


@pytest.mark.parametrize("side", ["candidate", "previous"])
@pytest.mark.parametrize("threads", [1, 2])
def test_a_damaged_tensor_inside_a_run_on_either_side(
    pair: Pair, copy_ckpt, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, side: str, threads: int
) -> None:
    cand = copy_ckpt(pair.candidate, tmp_path / "candidate")
    prev = copy_ckpt(pair.previous, tmp_path / "previous")
    victim = _damage_inside_a_run(cand if side == "candidate" else prev)

    def run() -> tuple:
        return _snapshot(*verify_paths(cand, prev, options=Options(threads=threads, sketch=True)))

    runs, one_by_one = _both(monkeypatch, run)
    _assert_same(runs, one_by_one)
    report = json.loads(runs[0])
    named = [(f["severity"], f["check"], f["reference"]) for f in report["findings"] if f["tensor"] == victim]
    if side == "candidate":
        assert ("fail", "integrity.checksum", None) in named
    else:
        assert ("warn", "integrity.checksum", "previous") in named
        assert report["verdict"] != "fail" or any(f["check"].startswith("integrity") for f in report["findings"])


@pytest.mark.parametrize("suffix", [".fp", ".json"])
@pytest.mark.parametrize("threads", [1, 2])
def test_against_a_fingerprint_the_estimates_match(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, by_tensor: list[str], suffix: str, threads: int
) -> None:
    """A fingerprint of the previous checkpoint as the reference: the candidate's sketches come
    from its runs, and the drift estimated from them is the one `_tensor`'s sketches give."""
    fp = str(tmp_path / f"previous{suffix}")
    assert verify_checkpoint(VerifyRequest(pair.previous, fingerprint_out=fp)).fingerprint == fp

    def run() -> tuple:
        return _snapshot(*verify_paths(pair.candidate, fp, options=Options(threads=threads)))

    runs, one_by_one = _both(monkeypatch, run, by_tensor)
    _assert_same(runs, one_by_one)
    assert _left_to_tensor(by_tensor) == pair.by_tensor
    tensors = {t["name"]: t for t in json.loads(runs[0])["tensors"]}
    assert tensors[_key(12)]["drift"]["previous"]["changed_fraction"] == 0.0  # equal digests: exact
    assert tensors[_key(32)]["drift"]["previous"]["relative_l2"] > 1


@pytest.mark.parametrize("threads", [1, 2])
def test_the_daemons_case_writes_the_same_fingerprint_and_history(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, threads: int
) -> None:
    """What the daemon's worker runs: against the previous checkpoint, writing the candidate's
    fingerprint (binary, v3 today, and v1 JSON) and the run's history; every byte written is the same."""
    outputs = {}
    for suffix in (".fp", ".json"):
        request = VerifyRequest(
            pair.healthy,
            pair.previous,
            history_required=False,
            history_out=str(tmp_path / "history.json"),
            fingerprint_out=str(tmp_path / f"candidate{suffix}"),
            discovered=True,
            threads=threads,
        )

        def run(request: VerifyRequest = request) -> tuple:
            done = verify_checkpoint(request)
            assert done.fingerprint == request.fingerprint_out and done.history == request.history_out
            files = [Path(p).read_bytes() for p in (request.fingerprint_out, request.history_out)]
            return (*_snapshot(done.report, []), files)

        outputs[suffix] = _both(monkeypatch, run)
    for runs, one_by_one in outputs.values():
        _assert_same(runs, one_by_one)
        assert runs[3] == one_by_one[3]  # fingerprint and history, byte for byte
        assert len(runs[3][0]) > 1000


def test_sample_positions_compiled_are_the_formula() -> None:
    """The engine's runs take sketch samples at positions a compiled kernel computes; they must
    be sketch.sample_positions', the formula fingerprints were written with."""
    from ckptwatch.verify import kernels
    from ckptwatch.verify.sketch import SAMPLE_SIZE, sample_positions

    rng = np.random.default_rng(3)
    sizes = [*range(1, 2100), 2**31 + 7, 2**40 + 3, 10**15 + 1, 2**50, 123456789]
    sizes += [int(n) for n in rng.integers(SAMPLE_SIZE + 1, 10**9, size=500)]
    for n in sizes:
        for m in (SAMPLE_SIZE, 8, 1000):
            want = sample_positions(n, m)
            got = kernels.sample_positions(n, m)
            assert got.dtype == want.dtype and np.array_equal(got, want), (n, m)
    x = rng.standard_normal(400_000).astype(np.float32)
    ends = np.cumsum(rng.integers(1, 5000, size=100))
    ends = ends[ends <= x.size]
    starts = np.concatenate([[0], ends[:-1]])
    values = kernels.run_samples(x, starts, ends, SAMPLE_SIZE)
    want = [x[a:b][sample_positions(int(b - a))].astype(np.float64) for a, b in zip(starts, ends, strict=True)]
    assert values.tobytes() == np.concatenate(want).tobytes()
    assert engine.SAMPLE_SIZE == SAMPLE_SIZE


def test_kept_runs_stay_valid_until_the_next_kept_read(pair: Pair) -> None:
    """read_runs(keep=True) lays a call's runs one after the other in an arena of the thread's
    (grown as needed, reused by the next call): every slice of one call is still the tensor's
    bytes when the call is over, while the plain buffer holds only the last run."""
    src = BundleSource(pair.previous)
    names = sorted((i.name for i in src.tensors()), key=src.storage_key)
    for run_bytes in (4096, 1 << 20):
        kept = {names[j]: x[a:b] for x, m in src.read_runs(names, run_bytes=run_bytes, keep=True) for j, a, b in m}
        assert len(kept) >= COUNT - 10
        for _ in src.read_runs(names, run_bytes=run_bytes):  # the other buffer: kept runs untouched
            pass
        for name, values in kept.items():
            (whole,) = list(src.read(name))
            assert values.tobytes() == whole.tobytes(), name
    src.close()
