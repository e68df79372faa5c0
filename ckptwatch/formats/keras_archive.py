"""Keras 3 `.keras` archives: a zip of `metadata.json`, `config.json`, `model.weights.h5`.

Every member is read to its end and its CRC-32 checked (the only checksum these
files carry), inflated by formats.zipmember with a counted limit: a member that
produces more than it declares (a bomb that lies about its size) is refused as
soon as it does. The weights member is extracted into a private temporary
directory, never next to the input, and read by the HDF5 reader. `config.json`
is parsed as JSON and nothing more: no Keras object is built from it.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import replace
from typing import Any, BinaryIO

import numpy as np

from ckptwatch.formats.base import CHUNK_ELEMENTS, IntegrityError, IntegrityProblem, TensorInfo
from ckptwatch.formats.files import open_regular
from ckptwatch.formats.hdf5 import Hdf5Source, open_hdf5
from ckptwatch.formats.known import keras_archive_names
from ckptwatch.formats.names import step_from_path
from ckptwatch.formats.zipmember import MemberError, member_chunks

CHECK = "integrity.zip"
WEIGHTS_MEMBER = "model.weights.h5"
CONFIG_MEMBER = "config.json"
METADATA_MEMBER = "metadata.json"

_COPY_BYTES = 1 << 20
# Keras refuses to extract a member that expands more than 100x past 256 MiB; so do we
# (it would fill the temp disk from a few KB of archive).
_BOMB_FLOOR_BYTES = 1 << 28
_BOMB_MAX_EXPANSION = 100
# JSON members are read into memory; a real config is at most a few MB.
_JSON_LIMIT = 64 << 20


class KerasArchiveSource:
    """A `.keras` archive: tensors come from its extracted `model.weights.h5`."""

    format = "keras-archive"

    def __init__(self, path: str, weights: Hdf5Source, workdir: str, problems: list[IntegrityProblem]):
        self.path = path
        self.step: int | None = step_from_path(path)
        self.problems = problems + weights.problems
        self.config: dict[str, Any] | None = None  # parsed config.json; never deserialized
        self.metadata: dict[str, Any] | None = None  # parsed metadata.json (keras_version, date_saved)
        self.workdir = workdir  # private temp dir holding the extracted weights; removed by close()
        self._weights = weights
        self._size = os.stat(path).st_size

    def tensors(self) -> list[TensorInfo]:
        infos = self._weights.tensors()
        names = keras_archive_names(self.config, [i.name for i in infos])
        return [replace(i, known=names[i.name]) if i.name in names else i for i in infos]

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        return self._weights.read(name, chunk_elements)

    @property
    def total_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        try:
            self._weights.close()
        finally:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> KerasArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_keras_archive(path: str) -> KerasArchiveSource:
    """Open a `.keras` archive read-only, checking every member's CRC-32.

    Raises IntegrityError("integrity.zip") for a damaged archive or member (naming
    the member), IntegrityError("integrity.h5") for a damaged weights file inside,
    and FileNotFoundError if the archive does not exist.
    """
    path = os.fspath(path)
    fp, zf = _open_zip(path)
    try:
        workdir = tempfile.mkdtemp(prefix="ckptwatch-")  # private (0700), never next to the input
    except BaseException:
        zf.close()
        fp.close()
        raise
    try:
        problems: list[IntegrityProblem] = []
        texts: dict[str, bytes] = {}
        with fp, zf:
            infos = zf.infolist()
            members = {info.filename: info for info in infos}
            if len(members) != len(infos):  # zip readers disagree on which copy is meant: a hostile archive
                counts = Counter(info.filename for info in infos)
                name, times = max(counts.items(), key=lambda kv: kv[1])
                raise IntegrityError(CHECK, f"{path}: member {name} appears {times} times (which one is meant?)")
            if WEIGHTS_MEMBER not in members:
                extra = ""
                if "model.weights.npz" in members:
                    extra = " (weights stored as model.weights.npz, pickled objects: never unpickled here)"
                raise IntegrityError(CHECK, f"{path}: no {WEIGHTS_MEMBER} member{extra}")
            for info in members.values():
                _check_bomb(path, info)
            h5_path = os.path.join(workdir, WEIGHTS_MEMBER)
            _extract(path, fp, members[WEIGHTS_MEMBER], h5_path)
            for name, info in members.items():
                if name == WEIGHTS_MEMBER or info.is_dir():
                    continue
                if name in (CONFIG_MEMBER, METADATA_MEMBER):
                    texts[name] = _read_small(path, fp, info)
                else:
                    _drain(path, fp, info)  # assets: only their CRC matters here
        if CONFIG_MEMBER not in members:
            problems.append(IntegrityProblem(CHECK, f"{path}: no {CONFIG_MEMBER} member"))
        config = _parse_json(path, CONFIG_MEMBER, texts.get(CONFIG_MEMBER), problems)
        metadata = _parse_json(path, METADATA_MEMBER, texts.get(METADATA_MEMBER), problems)
        weights = open_hdf5(h5_path, label=f"{path}!{WEIGHTS_MEMBER}")
        try:
            source = KerasArchiveSource(path, weights, workdir, problems)
        except BaseException:
            weights.close()
            raise
        source.config, source.metadata = config, metadata
        return source
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def read_config(path: str) -> dict[str, Any] | None:
    """Only `config.json`, parsed (never deserialized); None if it is missing or not JSON.
    For the safe-mode scan, after the archive has been verified as a whole."""
    try:
        fp, zf = _open_zip(path)
        with fp, zf:
            info = zf.getinfo(CONFIG_MEMBER)
            _check_bomb(path, info)
            text = _read_small(path, fp, info)
    except (KeyError, IntegrityError, zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None
    return _parse_json(path, CONFIG_MEMBER, text, [])


def _open_zip(path: str) -> tuple[BinaryIO, zipfile.ZipFile]:
    """The archive (a regular file: a FIFO or device is refused, never opened for reading)
    and its directory. Raises IntegrityError for what is not a readable zip, OSError (a
    vanished file, permissions) unchanged."""
    fp = open_regular(path)
    try:
        return fp, zipfile.ZipFile(fp, "r")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, ValueError) as e:
        fp.close()
        raise IntegrityError(CHECK, f"{path}: not a readable .keras archive ({_reason(e)})") from None
    except BaseException:
        fp.close()
        raise


def _member_limit(info: zipfile.ZipInfo) -> int:
    """The most bytes a member may produce, whatever it declares: the bomb rule of _check_bomb."""
    return max(_BOMB_FLOOR_BYTES, _BOMB_MAX_EXPANSION * max(info.compress_size, 1))


def _check_bomb(path: str, info: zipfile.ZipInfo) -> None:
    if info.file_size > _member_limit(info):
        raise IntegrityError(
            CHECK,
            f"{info.filename}: expands {info.compress_size} bytes to {info.file_size} in {path}; "
            "refusing a potential decompression bomb",
        )


def _chunks(path: str, fp: BinaryIO, info: zipfile.ZipInfo, limit: int | None = None) -> Iterator[bytes]:
    """The member's bytes, inflated with a counted limit; its CRC-32 is checked once the
    last chunk is read."""
    try:
        yield from member_chunks(fp, info, _member_limit(info) if limit is None else limit, _COPY_BYTES)
    except MemberError as e:
        raise IntegrityError(CHECK, f"{info.filename}: {e} in {path}") from None
    except (EOFError, OSError) as e:
        # Only archive reads run inside this frame: a failed write of the extracted copy
        # (disk full) raises in the caller's loop body and propagates unchanged.
        raise IntegrityError(CHECK, f"{info.filename}: cannot be read ({_reason(e)}) in {path}") from None


def _extract(path: str, fp: BinaryIO, info: zipfile.ZipInfo, dest: str) -> None:
    # O_EXCL in our own 0700 mkdtemp dir: nothing else can have put a file or link there.
    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        for data in _chunks(path, fp, info):
            out.write(data)


def _read_small(path: str, fp: BinaryIO, info: zipfile.ZipInfo) -> bytes:
    if info.file_size > _JSON_LIMIT:
        raise IntegrityError(
            CHECK, f"{info.filename}: declares {info.file_size} bytes, too large for a JSON member in {path}"
        )
    return b"".join(_chunks(path, fp, info, _JSON_LIMIT))


def _drain(path: str, fp: BinaryIO, info: zipfile.ZipInfo) -> None:
    for _ in _chunks(path, fp, info):
        pass


def _parse_json(path: str, member: str, data: bytes | None, problems: list[IntegrityProblem]) -> dict | None:
    if data is None:
        return None
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        problems.append(IntegrityProblem(CHECK, f"{member}: not valid JSON ({e}) in {path}"))
        return None
    except RecursionError:
        problems.append(IntegrityProblem(CHECK, f"{member}: JSON nested too deeply in {path}"))
        return None
    return value if isinstance(value, dict) else None


def _reason(e: BaseException) -> str:
    msg = str(e).strip() or type(e).__name__
    return msg if len(msg) <= 200 else msg[:197] + "..."
