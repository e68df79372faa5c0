"""Opening a bundle (issue 15): the index's tensor entries are decoded all at once
(ckptwatch.formats.entries) and must be exactly what the general decoder (wire.parse_entry)
gives, entry for entry, on indexes TensorFlow wrote and on damaged ones, errors included; a
bundle opened that way lists the same tensors, names and kinds as one decoded entry by entry."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from ckptwatch.formats import bundle as bundle_module
from ckptwatch.formats.base import IntegrityError
from ckptwatch.formats.bundle import BundleSource
from ckptwatch.formats.entries import decode_entries
from ckptwatch.formats.table import TableError, build_table, iter_table
from ckptwatch.formats.wire import parse_entry, read_index
from tests.wire import field, varint


@pytest.fixture(scope="module")
def written(tf, tmp_path_factory: pytest.TempPathFactory, sliced_sharding) -> list[str]:
    """TF-written indexes: every dtype TF saves, scalars to rank 6, empty and large dimensions,
    strings, several shards and tensors stored in slices, and a few hundred small tensors."""
    root = tmp_path_factory.mktemp("opening")
    rng = np.random.default_rng(5)
    dtypes = [tf.float16, tf.bfloat16, tf.float32, tf.float64, tf.int8, tf.int16, tf.int32, tf.int64]
    dtypes += [tf.uint8, tf.uint16, tf.uint32, tf.uint64, tf.bool, tf.complex64, tf.complex128]
    variables = {f"d{i}": tf.Variable(tf.cast(tf.ones([3, 2]), d)) for i, d in enumerate(dtypes)}
    shapes = [[], [1], [0], [7, 0, 3], [2, 3, 4, 5, 1, 2], [1 << 21], [300, 129]]
    for i, shape in enumerate(shapes):
        variables[f"s{i}"] = tf.Variable(tf.zeros(shape, tf.float32))
    variables["empty_wide"] = tf.Variable(tf.zeros([0, 1 << 40], tf.float32))  # a dimension of 6 varint bytes
    variables["text"] = tf.Variable(tf.constant(["a", "bc" * 300, ""]))
    variables["big_int"] = tf.Variable(tf.constant([-1, 1 << 62, -(1 << 63)], tf.int64))
    many = [tf.Variable(rng.standard_normal(int(n), dtype=np.float32)) for n in rng.integers(1, 5000, size=300)]
    ckpt = tf.train.Checkpoint(many=many, step=tf.Variable(7, dtype=tf.int64), **variables)
    one = ckpt.write(str(root / "one" / "ckpt-1"))
    return [one, sliced_sharding.previous, sliced_sharding.candidate]


def _tensor_values(prefix: str) -> list[bytes]:
    with open(prefix + ".index", "rb") as f:
        data = f.read()
    return [bytes(v) for k, v in iter_table(data) if k and k[:1] != b"\x00"]


def _general(value: bytes):
    try:
        return parse_entry(memoryview(value))
    except TableError as e:
        return ("TableError", str(e))


def test_tf_written_entries_are_decoded_together_as_one_by_one(written: list[str]) -> None:
    for prefix in written:
        values = _tensor_values(prefix)
        decoded = decode_entries([memoryview(v) for v in values])
        expected = [_general(v) for v in values]
        # every entry TF writes takes the fast path but those of tensors stored in slices (parse_entry's)
        assert [d if d is not None else _general(v) for d, v in zip(decoded, values, strict=True)] == expected
        assert all((d is None) == e.sliced for d, e in zip(decoded, expected, strict=True))
        together, alone = read_index(prefix + ".index", decode=decode_entries), read_index(prefix + ".index")
        assert (together.num_shards, together.big_endian) == (alone.num_shards, alone.big_endian)
        assert together.entries == alone.entries and together.slices == alone.slices
    sliced = read_index(written[-1] + ".index")
    assert any(e.sliced for _, e in sliced.entries)  # the general decoder's case is there too


def _mutations(values: list[bytes], count: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        v = bytearray(rng.choice(values))
        op = rng.randrange(6)
        if op == 0 and v:
            v[rng.randrange(len(v))] = rng.randrange(256)
        elif op == 1 and v:
            del v[rng.randrange(len(v)) :]
        elif op == 2:
            v.insert(rng.randrange(len(v) + 1), rng.randrange(256))
        elif op == 3 and v:
            i = rng.randrange(len(v))
            v[i] ^= 1 << rng.randrange(8)
        elif op == 4:
            v += field(rng.choice([1, 2, 3, 4, 5, 7, 9]), rng.choice([0, 1, 1 << 40, b"\x12\x02\x08\x01"]))
        else:
            v = bytearray(rng.choice(values)) + bytearray(rng.choice(values))  # every field twice
        out.append(bytes(v))
    return out


def test_damaged_entries_are_decoded_as_one_by_one_or_left_to_it(written: list[str]) -> None:
    values = [v for prefix in written for v in _tensor_values(prefix)]
    crafted = [
        field(1, 1) + field(2, field(2, field(1, -3 & ((1 << 64) - 1)))) + field(5, 4),  # negative dimension
        field(1, 1) + field(2, b"") + field(4, -1 & ((1 << 64) - 1)),  # negative offset (10 varint bytes)
        field(1, 1) + field(2, field(2, field(1, 5)) + field(3, 1)),  # unknown rank
        field(1, 1) + field(2, field(2, field(1, 5) + field(2, b"x"))),  # a named dimension
        field(1, 1) + field(2, field(2, b"") * 17),  # rank 17
        field(1, 1) + field(2, field(2, field(1, 1)) * 16) + field(5, 64),  # rank 16
        field(2, b"") + field(1, 1),  # fields out of order
        field(1, 1) + varint(2 << 3 | 2) + varint(200) + b"\x12\x00" * 100,  # a shape of 200 bytes
        field(1, 1) + field(2, b"") + field(5, 1 << 62) + field(6, 0xFFFFFFFF, fixed32=True),
        field(1, 1) + field(2, b"") + field(6, 5, fixed32=True)[:-1],  # a truncated crc
        b"",
    ]
    damaged = crafted + _mutations(values, 30_000, seed=15)
    decoded = decode_entries(damaged)
    assert len(decoded) == len(damaged)
    left = 0
    for value, entry in zip(damaged, decoded, strict=True):
        if entry is None:
            left += 1
            _general(value)  # the general decoder takes it: a result or a TableError, nothing else
        else:
            assert entry == parse_entry(memoryview(value)), value.hex(" ")
    assert 0 < left < len(damaged)
    valid = decoded[len(crafted) - 3]  # 8-byte size, a crc with its top bit set: still decoded
    assert valid is not None and (valid.size, valid.crc32c) == (1 << 62, 0xFFFFFFFF)


def _read_both(path: Path) -> tuple:
    out = []
    for decode in (decode_entries, None):
        try:
            index = read_index(str(path), decode=decode)
            out.append(("ok", index.num_shards, index.big_endian, index.entries, index.slices))
        except IntegrityError as e:
            out.append(("error", str(e)))
    return tuple(out)


def test_damaged_indexes_read_the_same_errors_included(written: list[str], tmp_path: Path) -> None:
    """Indexes whose entries are damaged (their blocks' checksums right): the same entries,
    or the same error naming the same entry, decoded together or one by one."""
    with open(written[0] + ".index", "rb") as f:
        items = [(bytes(k), bytes(v)) for k, v in iter_table(f.read())]
    rng = random.Random(7)
    seen = set()
    for trial in range(150):
        entries = list(items)
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(1, len(entries))
            key, value = entries[i]
            entries[i] = (key, _mutations([value], 1, seed=trial * 10 + i)[0])
        path = tmp_path / f"damaged-{trial}.index"
        path.write_bytes(build_table(entries))
        together, alone = _read_both(path)
        assert together == alone
        seen.add(together[0])
    assert seen == {"ok", "error"}


def _opened(prefix: str) -> tuple:
    src = BundleSource(prefix)
    try:
        return src.tensors(), src.problems, src.step, src.num_shards, dict(src._entries)
    finally:
        src.close()


def test_a_bundle_opens_the_same_as_entry_by_entry(written: list[str], monkeypatch: pytest.MonkeyPatch) -> None:
    fast = [_opened(p) for p in written + written]  # twice: the second time from the caches by name and graph
    monkeypatch.setattr(bundle_module, "decode_entries", lambda values: [None] * len(values))
    bundle_module._graph_naming.cache_clear()
    slow = [_opened(p) for p in written]
    assert fast == slow + slow
    assert any(info.known or info.display != info.name for info in fast[0][0])  # the object graph named them


PEAK = """
import sys
from ckptwatch.formats.entries import decode_entries
from ckptwatch.formats.wire import read_index
index = read_index(sys.argv[1], decode=decode_entries if sys.argv[2] == "together" else None)
assert len(index.entries) == int(sys.argv[3])
print(next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) >> 10)
"""


def test_decoding_together_costs_no_more_memory_than_one_by_one(run_python, tmp_path: Path) -> None:
    """An index may hold half a million entries in a few MB (empty values, keys sharing their
    prefixes). Decoding them together held every entry's key and value (and numpy's columns of
    them all) at once: twice the memory of decoding them one by one, a GB for 4 MB."""
    from tests.wire import HEADER, raw_table

    n = 500_000
    path = tmp_path / "many.index"
    path.write_bytes(raw_table([(b"", HEADER)] + [(b"k%07d" % i, b"") for i in range(n)], 16, 4000))
    peaks = {}
    for how in ("alone", "together"):
        r = run_python(PEAK, str(path), how, str(n))
        assert r.returncode == 0, r.stderr[-2000:]
        peaks[how] = int(r.stdout.split()[-1])
    assert peaks["together"] < peaks["alone"] * 1.2 + 20, peaks
