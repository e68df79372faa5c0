"""formats.layout: the format facts the daemon's main process uses (no numpy), and the
light pieces under it (wire.read_index, base's dtype names)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import pytest

from ckptwatch.errors import CheckpointNotFound
from ckptwatch.formats import layout, open_checkpoint, resolve
from ckptwatch.formats.base import NUMERIC_DTYPE_NAMES, IntegrityError
from ckptwatch.formats.table import build_table
from ckptwatch.formats.wire import read_index, slice_key_name

HEADER_3_SHARDS = b"\x08\x03"  # BundleHeaderProto{num_shards: 3}


def _index(tmp_path: Path, entries: list[tuple[bytes, bytes]], name: str = "ckpt-7") -> str:
    prefix = str(tmp_path / name)
    Path(prefix + ".index").write_bytes(build_table(entries))
    return prefix


def test_shard_count_comes_from_the_header_alone(tmp_path: Path) -> None:
    prefix = _index(tmp_path, [(b"", HEADER_3_SHARDS), (b"w", b"not a BundleEntryProto")])
    assert layout.bundle_shard_count(prefix) == 3  # the entry is not decoded ...
    with pytest.raises(IntegrityError, match=r"unsupported wire type .*after entry 'w'"):
        read_index(prefix + ".index")  # ... a reader decodes it and says what is wrong


@pytest.mark.parametrize(
    ("entries", "message"),
    [
        ([(b"w", b"")], "no bundle header entry"),
        ([(b"", b"\x08\x00")], "implausible shard count 0"),
        ([(b"", b"\x08\xff\xff\xff\x7f")], "implausible shard count"),
    ],
)
def test_a_bad_header_does_not_parse(tmp_path: Path, entries, message: str) -> None:
    prefix = _index(tmp_path, entries)
    with pytest.raises(IntegrityError, match=message) as e:
        layout.bundle_shard_count(prefix)
    assert e.value.problem.check == "integrity.index"


def test_a_torn_or_empty_index_does_not_parse(tmp_path: Path) -> None:
    prefix = _index(tmp_path, [(b"", HEADER_3_SHARDS)])
    data = Path(prefix + ".index").read_bytes()
    Path(prefix + ".index").write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError, match="bad magic number"):
        layout.bundle_shard_count(prefix)
    Path(prefix + ".index").write_bytes(b"")
    with pytest.raises(IntegrityError, match="index file is empty"):
        layout.bundle_shard_count(prefix)
    os.unlink(prefix + ".index")
    with pytest.raises(OSError):
        layout.bundle_shard_count(prefix)


def test_shard_paths_and_the_data_files_present(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ckpt-2")
    assert layout.shard_path(prefix, 1, 3) == prefix + ".data-00001-of-00003"
    for k in (1, 0):
        Path(layout.shard_path(prefix, k, 2)).write_bytes(b"")
    assert layout.data_shards(prefix) == [layout.shard_path(prefix, k, 2) for k in (0, 1)]
    assert not layout.checkpoint_exists(prefix) and not layout.checkpoint_exists(None)
    Path(prefix + ".index").write_bytes(b"")
    assert layout.checkpoint_exists(prefix) and layout.checkpoint_exists(str(tmp_path))


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("ckpt-3.index", ("bundle", "ckpt-3")),
        ("w.weights.h5", ("hdf5", "w.weights.h5")),
        ("m.hdf5", ("hdf5", "m.hdf5")),
        ("m.keras", ("keras", "m.keras")),
        (".index", None),
        (".keras", None),
        ("ckpt-3.data-00000-of-00001", None),
        ("checkpoint", None),
        ("ckpt-3.index.tempstate123", None),
        ("ckpt-3_temp", None),
        ("checkpoint.tmp3f2a", None),
        ("m.keras.partial", None),
        ("temp-1700000000", None),
        (".hidden.h5", None),
    ],
)
def test_classify(name: str, expected) -> None:
    assert layout.classify(name) == expected


def test_temp_leftovers_of_a_bundle_and_a_saved_model(tmp_path: Path) -> None:
    prefix = str(tmp_path / "ckpt-4")
    assert layout.temp_leftovers(prefix) == []
    (tmp_path / "ckpt-4_temp").mkdir()
    Path(prefix + ".data-00000-of-00001.tempstate9").write_bytes(b"")
    Path(prefix + ".index.tempstate8").write_bytes(b"")
    Path(str(tmp_path / "ckpt-40") + ".index.tempstate8").write_bytes(b"")  # another checkpoint's
    assert layout.temp_leftovers(prefix) == [
        "ckpt-4.data-00000-of-00001.tempstate9",
        "ckpt-4.index.tempstate8",
        "ckpt-4_temp",
    ]
    export = tmp_path / "export" / "3"
    (export / "variables").mkdir(parents=True)
    assert layout.saved_model_marker(str(export)) is None
    (export / "saved_model.pb").write_bytes(b"")
    assert layout.saved_model_marker(str(export)) == str(export / "saved_model.pb")
    assert layout.saved_model_leftovers(str(export)) == []
    (export / "saved_model.pb.tempstate1").write_bytes(b"")
    (export / "variables" / "variables_temp").mkdir()
    assert layout.saved_model_leftovers(str(export)) == ["saved_model.pb.tempstate1", "variables/variables_temp"]


def test_a_fingerprint_is_detected_but_not_opened_by_formats(tmp_path: Path) -> None:
    doc = json.dumps({"schema": layout.FINGERPRINT_SCHEMA, "checkpoint": {}, "tensors": []}).encode()
    plain, zipped = tmp_path / "fp.json", tmp_path / "fp.json.gz"
    plain.write_bytes(doc)
    zipped.write_bytes(gzip.compress(doc))
    (tmp_path / "other.json").write_text('{"schema": "something/v1"}')
    assert layout.looks_like_fingerprint(str(plain)) and layout.looks_like_fingerprint(str(zipped))
    assert not layout.looks_like_fingerprint(str(tmp_path / "other.json"))
    assert resolve(str(zipped)) == ("fingerprint", str(zipped))
    with pytest.raises(CheckpointNotFound, match=r"is a fingerprint .*--previous or --golden"):
        open_checkpoint(str(plain))


def test_slice_key_name() -> None:
    assert slice_key_name(b"\x00a/b\x00\xffc\x00\x01\x02") == "a/b\x00c"
    assert slice_key_name(b"w") is None and slice_key_name(b"\x00unterminated") is None


def test_every_numeric_dtype_name_has_a_numpy_dtype() -> None:
    """base.NUMERIC_DTYPE_NAMES (no numpy) and dtypes.NUMERIC_DTYPES (the readers') agree."""
    from ckptwatch.formats.dtypes import NUMERIC_DTYPES

    assert set(NUMERIC_DTYPES) == NUMERIC_DTYPE_NAMES
    assert NUMERIC_DTYPES["bfloat16"].itemsize == 2 and NUMERIC_DTYPES["float8_e4m3fn"].itemsize == 1


def test_a_field_of_the_wrong_wire_type_is_a_table_error() -> None:
    """A hostile object graph with a number where a name belongs: TableError (the reader turns it
    into a finding), never bytes(<huge number>) or a TypeError."""
    from ckptwatch.formats.object_graph import parse_nodes
    from ckptwatch.formats.table import TableError
    from ckptwatch.formats.wire import parse_slice

    reference = b"\x10" + b"\x80" * 5 + b"\x20"  # ObjectReference{local_name: <varint 2**40>}
    node = b"\x0a" + bytes([len(reference)]) + reference
    with pytest.raises(TableError, match="a number where a length-delimited field belongs"):
        parse_nodes(b"\x0a" + bytes([len(node)]) + node)
    with pytest.raises(TableError, match="a length-delimited field where a number belongs"):
        parse_slice(memoryview(b"\x0a\x03" + b"\x0a\x01x"))  # an extent whose start is bytes
