"""Keras HDF5 and `.keras` readers against files written by real Keras.

Keras 3 cannot write the legacy Keras 2 layouts, so those are written here with
h5py exactly as Keras 2's `save_weights_to_hdf5_group` / `save_model` did.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import h5py
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
try:
    import ckptwatch  # noqa: F401
except ImportError:  # run without an installed package or a pythonpath setting
    sys.path.insert(0, str(ROOT))

from ckptwatch.formats.base import META, OPTIMIZER, WEIGHT, IntegrityError  # noqa: E402
from ckptwatch.formats.hdf5 import Hdf5Source, open_hdf5  # noqa: E402
from ckptwatch.formats.keras_archive import KerasArchiveSource, open_keras_archive  # noqa: E402

CHUNK = 7  # tiny, so every multi-element tensor is read in several chunks


@dataclass(frozen=True)
class Trained:
    dir: Path
    weights_h5: Path
    archive: Path
    layers: dict[str, list[np.ndarray]]  # layer name -> its variables, in order
    optimizer: list[np.ndarray]  # Keras 3 optimizer variables, in order
    config: dict


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    import keras

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((8,)), keras.layers.Dense(16, name="hidden"), keras.layers.Dense(4, name="out")]
    )
    model.compile(optimizer="adam", loss="mse")
    rng = np.random.default_rng(0)
    model.fit(rng.random((4, 8)), rng.random((4, 4)), epochs=1, batch_size=4, verbose=0)
    d = tmp_path_factory.mktemp("keras")
    model.save_weights(d / "model.weights.h5")
    model.save(d / "model.keras")
    return Trained(
        dir=d,
        weights_h5=d / "model.weights.h5",
        archive=d / "model.keras",
        layers={layer.name: layer.get_weights() for layer in model.layers},
        optimizer=[np.asarray(v.numpy()) for v in model.optimizer.variables],
        config=json.loads(json.dumps(model.get_config())),
    )


def stream(source: Hdf5Source | KerasArchiveSource, name: str, chunk: int = CHUNK) -> np.ndarray:
    info = {t.name: t for t in source.tensors()}[name]
    parts = list(source.read(name, chunk))
    for p in parts:
        assert p.ndim == 1 and p.size <= chunk and p.flags.c_contiguous
    if info.size > chunk:
        assert len(parts) > 1
    return np.concatenate(parts).reshape(info.shape) if parts else np.zeros(info.shape)


def keras3_expected(t: Trained) -> dict[str, np.ndarray]:
    # Keras 3 names layer groups after the class (dense, dense_1, ...), not layer.name.
    keys = ["dense", "dense_1"]
    want = {
        f"layers/{key}/vars/{j}": w for key, ws in zip(keys, t.layers.values(), strict=True) for j, w in enumerate(ws)
    }
    want.update({f"optimizer/vars/{j}": v for j, v in enumerate(t.optimizer)})
    return want


def snapshot(d: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(d.iterdir())}


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point tempfile at an empty dir we own, to see what the reader leaves behind."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(d))
    return d


# -- Keras 3 .weights.h5 ------------------------------------------------------------------


def test_weights_h5_lists_and_streams_every_variable(trained: Trained) -> None:
    want = keras3_expected(trained)
    with open_hdf5(str(trained.weights_h5)) as src:
        assert src.format == "keras-weights-h5"
        assert src.problems == []
        assert src.step is None
        assert src.total_bytes == trained.weights_h5.stat().st_size
        infos = {t.name: t for t in src.tensors()}
        assert set(infos) == set(want)
        for name, value in want.items():
            info = infos[name]
            assert info.shape == value.shape, name
            assert info.dtype == value.dtype.name
            assert info.nbytes == value.nbytes
            assert info.kind == (OPTIMIZER if name.startswith("optimizer/") else WEIGHT)
            assert info.numeric
            np.testing.assert_array_equal(stream(src, name), value, err_msg=name)
        # Keras numbered optimizer variables 0..9: listed in that order, not 0, 1, 10, ...
        opt = [t.name for t in src.tensors() if t.kind == OPTIMIZER]
        assert opt == [f"optimizer/vars/{j}" for j in range(len(trained.optimizer))]


def test_step_comes_from_the_file_name(trained: Trained, tmp_path: Path) -> None:
    p = tmp_path / "ckpt-42.weights.h5"
    shutil.copy(trained.weights_h5, p)
    with open_hdf5(str(p)) as src:
        assert src.step == 42


def test_bfloat16_weights_are_reported_and_read_as_bfloat16(tmp_path: Path) -> None:
    import keras

    model = keras.Sequential([keras.Input((5,)), keras.layers.Dense(3, dtype="bfloat16", name="bf")])
    model.save_weights(tmp_path / "bf.weights.h5")
    with open_hdf5(str(tmp_path / "bf.weights.h5")) as src:
        infos = {t.name: t for t in src.tensors()}
        for j, w in enumerate(model.layers[0].get_weights()):
            name = f"layers/dense/vars/{j}"
            assert infos[name].dtype == "bfloat16" and infos[name].numeric
            got = stream(src, name, chunk=4)
            assert got.dtype.name == "bfloat16"
            np.testing.assert_array_equal(got.astype(np.float32), np.asarray(w).astype(np.float32))


# -- .keras archive -----------------------------------------------------------------------


def test_keras_archive_streams_the_same_values(trained: Trained, private_tmp: Path) -> None:
    before = snapshot(trained.dir)
    want = keras3_expected(trained)
    src = open_keras_archive(str(trained.archive))
    try:
        assert isinstance(src, KerasArchiveSource)
        assert src.format == "keras-archive"
        assert src.path == str(trained.archive)
        assert src.problems == []
        assert src.total_bytes == trained.archive.stat().st_size
        assert src.config is not None and src.config["class_name"] == "Sequential"
        assert src.metadata is not None and "keras_version" in src.metadata
        # the extracted weights live in a private temp dir, never next to the input
        workdir = Path(src.workdir)
        assert workdir.parent == private_tmp and workdir.name.startswith("ckptwatch-")
        assert workdir.is_dir()
        assert {t.name for t in src.tensors()} == set(want)
        for name, value in want.items():
            np.testing.assert_array_equal(stream(src, name), value, err_msg=name)
    finally:
        src.close()
    assert not workdir.exists()
    assert list(private_tmp.iterdir()) == []
    assert snapshot(trained.dir) == before


def test_readers_leave_the_input_directory_unchanged(trained: Trained, tmp_path: Path) -> None:
    d = tmp_path / "in"
    d.mkdir()
    shutil.copy(trained.weights_h5, d / "model.weights.h5")
    shutil.copy(trained.archive, d / "model.keras")
    before = snapshot(d)
    for src in (open_hdf5(str(d / "model.weights.h5")), open_keras_archive(str(d / "model.keras"))):
        for t in src.tensors():
            for _ in src.read(t.name):
                pass
        src.close()
    assert snapshot(d) == before


# -- legacy Keras 2 layouts, written as Keras 2 did -----------------------------------------


def _keras2_weight_names(layer: str, n: int) -> list[str]:
    return [f"{layer}/{v}:0" for v in ("kernel", "bias")[:n]]


def _write_keras2_weights(group: h5py.Group, layers: dict[str, list[np.ndarray]]) -> None:
    """Keras 2 `save_weights_to_hdf5_group`: layer_names on the root, weight_names per layer."""
    group.attrs["backend"] = b"tensorflow"
    group.attrs["keras_version"] = b"2.15.0"
    group.attrs["layer_names"] = np.array([b"input_1", *(n.encode() for n in layers)])
    g = group.create_group("input_1")  # functional models list their weightless input layer
    g.attrs["weight_names"] = np.array([], dtype="S1")
    for layer, ws in layers.items():
        g = group.create_group(layer)
        names = _keras2_weight_names(layer, len(ws))
        g.attrs["weight_names"] = np.array([n.encode() for n in names])
        for n, w in zip(names, ws, strict=True):
            ds = g.create_dataset(n, w.shape, dtype=w.dtype)
            if w.shape:
                ds[:] = w
            else:
                ds[()] = w


def test_legacy_save_weights_h5(trained: Trained, tmp_path: Path) -> None:
    p = tmp_path / "weights.05.h5"
    with h5py.File(p, "w") as f:
        _write_keras2_weights(f, trained.layers)
    with open_hdf5(str(p)) as src:
        assert src.format == "keras-h5"
        assert src.step == 5
        assert src.problems == []
        assert src.config is None
        infos = {t.name: t for t in src.tensors()}
        want = {
            f"{layer}/{n}": w
            for layer, ws in trained.layers.items()
            for n, w in zip(_keras2_weight_names(layer, len(ws)), ws, strict=True)
        }
        assert set(infos) == set(want) == {
            "hidden/hidden/kernel:0", "hidden/hidden/bias:0", "out/out/kernel:0", "out/out/bias:0",
        }  # fmt: skip
        for name, w in want.items():
            assert infos[name].kind == WEIGHT and infos[name].shape == w.shape
            np.testing.assert_array_equal(stream(src, name), w, err_msg=name)


def _write_keras2_model(path: Path, t: Trained) -> dict[str, np.ndarray]:
    """Keras 2 `save_model(..., save_format="h5")`; returns the optimizer datasets written."""
    opt: dict[str, np.ndarray] = {"training/Adam/iter:0": t.optimizer[0].astype(np.int64)}
    slots = iter(t.optimizer[2:])  # Keras 3 order: m, v per variable, as Keras 2 kept them
    for layer, ws in t.layers.items():
        for var in ("kernel", "bias")[: len(ws)]:
            for slot in ("m", "v"):
                opt[f"training/Adam/{layer}/{var}/{slot}:0"] = next(slots)
    with h5py.File(path, "w") as f:
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.15.0"
        f.attrs["model_config"] = json.dumps({"class_name": "Sequential", "config": t.config})
        f.attrs["training_config"] = json.dumps({"loss": "mse", "optimizer_config": {"class_name": "Adam"}})
        _write_keras2_weights(f.create_group("model_weights"), t.layers)
        og = f.create_group("optimizer_weights")
        og.attrs["weight_names"] = np.array([n.encode() for n in opt])
        for n, v in opt.items():
            og.create_dataset(n, data=v)
    return opt


def test_legacy_full_model_h5(trained: Trained, tmp_path: Path) -> None:
    p = tmp_path / "model.h5"
    opt = _write_keras2_model(p, trained)
    with open_hdf5(str(p)) as src:
        assert src.format == "keras-h5"
        assert src.problems == []
        assert src.config is not None and src.config["class_name"] == "Sequential"
        infos = {t.name: t for t in src.tensors()}
        for layer, ws in trained.layers.items():
            for n, w in zip(_keras2_weight_names(layer, len(ws)), ws, strict=True):
                name = f"model_weights/{layer}/{n}"
                assert infos[name].kind == WEIGHT
                np.testing.assert_array_equal(stream(src, name), w, err_msg=name)
        assert "optimizer_weights/training/Adam/hidden/kernel/m:0" in infos
        for n, v in opt.items():
            name = f"optimizer_weights/{n}"
            assert infos[name].kind == OPTIMIZER, name
            np.testing.assert_array_equal(stream(src, name), v, err_msg=name)
        assert len(infos) == 4 + len(opt)


def test_legacy_weight_names_pointing_at_nothing_is_a_problem(trained: Trained, tmp_path: Path) -> None:
    p = tmp_path / "model.h5"
    _write_keras2_model(p, trained)
    with h5py.File(p, "a") as f:
        del f["model_weights/out/out/bias:0"]
    with open_hdf5(str(p)) as src:
        assert [(q.check, q.tensor) for q in src.problems] == [("integrity.h5", "model_weights/out/out/bias:0")]


def test_legacy_split_weight_names_attribute_is_followed(tmp_path: Path) -> None:
    p = tmp_path / "split.h5"
    with h5py.File(p, "w") as f:
        g = f.create_group("big")
        g.attrs["weight_names0"] = np.array([b"big/w0:0"])
        g.attrs["weight_names1"] = np.array([b"big/w1:0"])  # names a dataset that is missing
        g["big/w0:0"] = np.ones((2, 3))
    with open_hdf5(str(p)) as src:
        assert [q.tensor for q in src.problems] == ["big/big/w1:0"]


def test_rows_larger_than_a_chunk_are_split(tmp_path: Path) -> None:
    p = tmp_path / "wide.h5"
    value = np.arange(2 * 3 * 50, dtype=np.float32).reshape(2, 3, 50)
    with h5py.File(p, "w") as f:
        f["wide"] = value
        f["scalar"] = np.float64(2.5)
        f["empty"] = np.zeros((4, 0), dtype=np.float32)
        f["big_endian"] = value.astype(">f4")
    with open_hdf5(str(p)) as src:
        np.testing.assert_array_equal(stream(src, "wide", chunk=16), value)
        np.testing.assert_array_equal(stream(src, "big_endian", chunk=16), value)
        assert all(c.dtype == np.dtype("float32") for c in src.read("big_endian", 16))  # native order
        assert [c.tolist() for c in src.read("scalar", 1)] == [[2.5]]
        assert list(src.read("empty", 16)) == []


# -- damaged and hostile HDF5 -------------------------------------------------------------


def test_garbage_file_is_not_hdf5(tmp_path: Path) -> None:
    p = tmp_path / "junk.weights.h5"
    p.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(IntegrityError) as e:
        open_hdf5(str(p))
    assert e.value.problem.check == "integrity.h5"
    assert str(p) in e.value.problem.message and "not a readable HDF5 file" in e.value.problem.message


def test_missing_file_is_not_an_integrity_verdict(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        open_hdf5(str(tmp_path / "gone.weights.h5"))
    with pytest.raises(FileNotFoundError):
        open_keras_archive(str(tmp_path / "gone.keras"))


def test_truncated_weights_h5(trained: Trained, tmp_path: Path) -> None:
    p = tmp_path / "model.weights.h5"
    data = trained.weights_h5.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    # open may pass when the cut spares the metadata; then a read must fail
    with pytest.raises(IntegrityError) as e, open_hdf5(str(p)) as src:
        for t in src.tensors():
            for _ in src.read(t.name):
                pass
    assert e.value.problem.check == "integrity.h5"


def test_unreadable_dataset_names_the_tensor(tmp_path: Path) -> None:
    p = tmp_path / "model.weights.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("layers/d/vars/0", data=np.arange(64.0).reshape(8, 8), chunks=(4, 8), compression="gzip")
        f["layers/d/vars/1"] = np.ones(3)
        chunk = f["layers/d/vars/0"].id.get_chunk_info(0)
    with open(p, "r+b") as fh:  # a zlib stream starting with zeros has no valid header
        fh.seek(chunk.byte_offset)
        fh.write(b"\0" * chunk.size)
    with open_hdf5(str(p)) as src:
        assert src.problems == []
        with pytest.raises(IntegrityError) as e:
            list(src.read("layers/d/vars/0", 16))
        assert e.value.problem.check == "integrity.h5"
        assert e.value.problem.tensor == "layers/d/vars/0"
        np.testing.assert_array_equal(stream(src, "layers/d/vars/1"), np.ones(3))


SECRET_RAW = 12345.0
SECRET_H5 = 424242.0


def test_external_storage_links_and_virtual_datasets_are_refused(tmp_path: Path) -> None:
    np.full(10, SECRET_RAW, dtype="<f4").tofile(tmp_path / "raw.bin")
    with h5py.File(tmp_path / "secret.h5", "w") as f:
        f["data"] = np.full(4, SECRET_H5)
    p = tmp_path / "evil.weights.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("layers/a/vars/0", shape=(10,), dtype="<f4", external=[("raw.bin", 0, 40)])
        f["layers/b/vars/0"] = h5py.ExternalLink("secret.h5", "/data")
        layout = h5py.VirtualLayout(shape=(4,), dtype="f8")
        layout[:] = h5py.VirtualSource("secret.h5", "data", shape=(4,))
        f.create_virtual_dataset("layers/c/vars/0", layout)
        f["layers/d/vars/0"] = np.ones(3)
        f["layers/d/alias"] = h5py.SoftLink("/layers/d/vars/0")  # skipped: not a second tensor
        f["layers/d/loop"] = f["layers"]  # hard-link cycle: must not loop
    with open_hdf5(str(p)) as src:
        refused = {q.tensor: q for q in src.problems}
        assert set(refused) == {"layers/a/vars/0", "layers/b/vars/0", "layers/c/vars/0"}
        assert all(q.check == "integrity.h5" for q in refused.values())
        assert "external file" in refused["layers/a/vars/0"].message
        assert "external link" in refused["layers/b/vars/0"].message
        assert "virtual dataset" in refused["layers/c/vars/0"].message
        assert [t.name for t in src.tensors()] == ["layers/d/vars/0"]
        for name in refused:
            with pytest.raises(IntegrityError):
                list(src.read(name))
        seen = np.concatenate([c for t in src.tensors() for c in src.read(t.name)])
        assert not np.isin(seen, [SECRET_RAW, SECRET_H5]).any()


def test_absurd_shapes_are_refused_without_allocating(tmp_path: Path) -> None:
    p = tmp_path / "bomb.weights.h5"
    with h5py.File(p, "w") as f:
        f.create_dataset("huge", shape=(1 << 40,), dtype="f4", chunks=(1 << 16,))  # 4 TiB claimed
        f.create_dataset("sparse", shape=(1 << 31,), dtype="f4", chunks=(1 << 16,))  # 8 GiB, nothing stored
        f["ok"] = np.zeros(2)
        f["note"] = "a string"
    with open_hdf5(str(p)) as src:
        assert {q.tensor for q in src.problems} == {"huge", "sparse"}
        assert all(q.check == "integrity.h5" for q in src.problems)
        infos = {t.name: t for t in src.tensors()}
        assert set(infos) == {"ok", "note"}
        assert infos["note"].kind == META and infos["note"].dtype == "string" and not infos["note"].numeric


# -- damaged .keras -----------------------------------------------------------------------


def _member_data(path: Path, member: str) -> tuple[int, int]:
    """Offset and length of a member's stored bytes, from its local header."""
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        header = f.read(30)
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    return info.header_offset + 30 + name_len + extra_len, info.compress_size


def _flip(path: Path, member: str) -> None:
    offset, size = _member_data(path, member)
    data = bytearray(path.read_bytes())
    mid = offset + size // 2
    data[mid : mid + 8] = bytes(b ^ 0xFF for b in data[mid : mid + 8])
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("member", ["model.weights.h5", "config.json", "metadata.json"])
def test_damaged_keras_member_is_named(trained: Trained, tmp_path: Path, private_tmp: Path, member: str) -> None:
    p = tmp_path / "model.keras"
    shutil.copy(trained.archive, p)
    _flip(p, member)
    with pytest.raises(IntegrityError) as e:
        open_keras_archive(str(p))
    assert e.value.problem.check == "integrity.zip"
    assert e.value.problem.message.startswith(f"{member}: ")
    assert list(private_tmp.iterdir()) == []  # nothing left behind on failure


def test_truncated_keras_archive(trained: Trained, tmp_path: Path, private_tmp: Path) -> None:
    p = tmp_path / "model.keras"
    data = trained.archive.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(IntegrityError) as e:
        open_keras_archive(str(p))
    assert e.value.problem.check == "integrity.zip"
    assert "not a readable .keras archive" in e.value.problem.message
    assert list(private_tmp.iterdir()) == []


def test_keras_archive_without_weights(tmp_path: Path, private_tmp: Path) -> None:
    p = tmp_path / "empty.keras"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("metadata.json", "{}")
        zf.writestr("config.json", "{}")
    with pytest.raises(IntegrityError) as e:
        open_keras_archive(str(p))
    assert e.value.problem.check == "integrity.zip" and "model.weights.h5" in e.value.problem.message
    assert list(private_tmp.iterdir()) == []


def test_garbage_inside_a_valid_zip_is_an_h5_problem(tmp_path: Path, private_tmp: Path) -> None:
    p = tmp_path / "bad.keras"
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("config.json", "{}")
        zf.writestr("model.weights.h5", b"not hdf5 at all" * 100)
    with pytest.raises(IntegrityError) as e:
        open_keras_archive(str(p))
    assert e.value.problem.check == "integrity.h5"
    assert f"{p}!model.weights.h5" in e.value.problem.message
    assert list(private_tmp.iterdir()) == []


# -- the CLI must stay TensorFlow-free ----------------------------------------------------


def test_readers_do_not_import_tensorflow_or_keras() -> None:
    code = (
        "import sys, ckptwatch.formats.hdf5, ckptwatch.formats.keras_archive\n"
        "bad = [m for m in ('tensorflow', 'keras') if m in sys.modules]\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)
