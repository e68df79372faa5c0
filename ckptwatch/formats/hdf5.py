"""Keras HDF5 weight files: Keras 3 `.weights.h5` and legacy Keras 2 `.h5`.

The reader does not know the layouts: it walks the file's hard links and lists
every dataset, so `layers/<layer>/vars/0`, `<layer>/<layer>/kernel:0` and
`model_weights/...` + `optimizer_weights/...` all come out the same way.

HDF5 can make a read touch other files (external links, external raw storage,
virtual datasets); those are refused at open and reported as problems, never
followed. Keras writes no checksums into these files, so a flipped byte in the
data cannot be detected here; only structure is checked.
"""

from __future__ import annotations

import itertools
import json
import os
import re
from collections.abc import Iterator
from typing import Any, BinaryIO

import h5py
import numpy as np

from ckptwatch.formats.base import (
    CHUNK_ELEMENTS,
    META,
    IntegrityError,
    IntegrityProblem,
    TensorInfo,
    checked_size,
)
from ckptwatch.formats.dtypes import NUMERIC_DTYPES
from ckptwatch.formats.files import check_regular, open_regular
from ckptwatch.formats.hdf5_attrs import AttributeClaims
from ckptwatch.formats.known import legacy_h5_name
from ckptwatch.formats.names import display_name, kind_of, step_from_path

CHECK = "integrity.h5"

# A claimed shape above this is absurd for a weight file, whatever the file size.
_SHAPE_LIMIT = 1 << 40
# Same guard as Keras' own loader: a big dataset that stores next to nothing on disk
# (chunked, never written, only a fill value) is a shape bomb, not weights.
_BOMB_FLOOR_BYTES = 1 << 32
_BOMB_MAX_EXPANSION = 1000


class Hdf5Source:
    """A read-only view of one HDF5 weight file (see `open_hdf5`)."""

    def __init__(self, path: str, label: str | None = None):
        self.path = path
        self.format = "keras-weights-h5" if path.endswith(".weights.h5") else "keras-h5"
        self.step: int | None = step_from_path(path)
        self.problems: list[IntegrityProblem] = []
        # Legacy full-model files carry the architecture as JSON in `model_config`;
        # parsed only, never deserialized into a model.
        self.config: dict[str, Any] | None = None
        self._label = label or path
        self._tensors: list[TensorInfo] = []
        # name -> dtype to reinterpret the raw bytes as (bfloat16 is stored opaque)
        self._views: dict[str, np.dtype | None] = {}
        self._refused: dict[str, str] = {}
        # FileNotFoundError: vanished is not corrupt; a FIFO or device: NotRegularFile, never opened
        self._size = check_regular(path).st_size
        self._fileobj: BinaryIO | None = None
        self._file: h5py.File | None = None
        try:
            self._file = self._open(path)
        # h5py raises OSError, but garbage can also surface as ValueError, KeyError, ...
        except Exception as e:
            self.close()
            raise IntegrityError(CHECK, f"{self._label}: not a readable HDF5 file ({_reason(e)})") from None
        # what each attribute claims, checked before libhdf5 allocates it (hdf5_attrs.py)
        self._claims = AttributeClaims(path, self._size)
        try:
            self._scan()
        except IntegrityError:
            self.close()
            raise
        except Exception as e:  # a hostile file must not crash the caller
            self.close()
            raise IntegrityError(CHECK, f"{self._label}: not a readable HDF5 file ({_reason(e)})") from None
        finally:
            self._claims.close()  # attributes are read while listing only

    # -- protocol -------------------------------------------------------------------------

    def tensors(self) -> list[TensorInfo]:
        return list(self._tensors)

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        if name in self._refused:
            raise IntegrityError(CHECK, self._refused[name], tensor=name)
        if name not in self._views:
            raise KeyError(name)
        if self._file is None:
            raise ValueError(f"{self._label}: source is closed")
        yield from self._read(name, self._views[name], max(1, int(chunk_elements)))

    @property
    def total_bytes(self) -> int:
        return self._size

    def _open(self, path: str) -> h5py.File:
        if os.path.exists(os.path.realpath(path)):
            return h5py.File(path, "r")
        # A stand-in for a file the daemon holds open after CheckpointManager unlinked it
        # (ckptwatch.formats.held): libhdf5 resolves a link's real path, which no longer exists,
        # so the file is read through a file object instead.
        self._fileobj = open_regular(path)
        return h5py.File(self._fileobj, "r")

    def close(self) -> None:
        try:
            if self._file is not None:
                try:
                    self._file.close()
                finally:
                    self._file = None
        finally:
            if self._fileobj is not None:
                self._fileobj.close()
                self._fileobj = None

    def __enter__(self) -> Hdf5Source:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- opening --------------------------------------------------------------------------

    def _problem(self, message: str, tensor: str | None = None) -> None:
        self.problems.append(IntegrityProblem(CHECK, f"{self._label}: {message}", tensor))

    def _scan(self) -> None:
        assert self._file is not None
        root = self._file
        # Hard links can form cycles and diamonds; visit each object once, by address,
        # so a hostile file can neither loop us nor blow up the path count.
        seen: set[tuple[int, int]] = {_address(root)}
        groups: list[tuple[str, h5py.Group]] = [("", root)]
        while groups:
            prefix, group = groups.pop()
            try:
                self._check_weight_names(prefix, group)
            except Exception as e:
                self._problem(f"/{prefix}: unreadable attributes ({_reason(e)})")
            children: list[tuple[str, h5py.Group]] = []
            for key in sorted(group.keys(), key=_natural):
                name = f"{prefix}{key}"
                try:
                    child = self._visit(name, group, key, seen)
                except Exception as e:  # one broken object must not hide the rest
                    self._refuse(name, f"{name} cannot be opened ({_reason(e)})")
                    continue
                if child is not None:
                    children.append((f"{name}/", child))
            groups.extend(reversed(children))  # depth-first, in name order
        self._read_config(root)

    def _visit(self, name: str, group: h5py.Group, key: str, seen: set[tuple[int, int]]) -> h5py.Group | None:
        """List or refuse one child; return it if it is a group still to walk."""
        link = group.get(key, getlink=True)
        if isinstance(link, h5py.SoftLink):
            return None  # an alias: its target is listed under its own hard path
        if isinstance(link, h5py.ExternalLink):
            self._refuse(
                name,
                f"{name} is an external link (-> {link.filename}:{link.path}), "
                "which would make HDF5 open another file; refused",
            )
            return None
        if not isinstance(link, h5py.HardLink):
            self._refuse(name, f"{name} is a link of unknown type; refused")
            return None
        obj = group.get(key)
        addr = _address(obj)
        if addr in seen:
            return None
        seen.add(addr)
        if isinstance(obj, h5py.Group):
            return obj
        if isinstance(obj, h5py.Dataset):
            self._add_dataset(name, obj)
        return None  # named datatypes hold no values

    def _attr(self, obj: h5py.HLObject, name: str) -> Any:
        """obj.attrs[name], once its header says it can be what it claims (else _Implausible)."""
        why = self._claims.problem(_address(obj)[1], name)
        if why is not None:
            raise _Implausible(why)
        return obj.attrs[name]

    def _refuse(self, name: str, why: str) -> None:
        self._refused[name] = f"{self._label}: {why}"
        self._problem(why, tensor=name)

    def _add_dataset(self, name: str, ds: h5py.Dataset) -> None:
        if ds.is_virtual:
            self._refuse(name, f"{name} is a virtual dataset, which reads other files; refused")
            return
        if ds.external:
            files = ", ".join(str(e[0]) for e in ds.external)
            self._refuse(name, f"{name} keeps its data in external file(s) ({files}); refused")
            return
        dtype = ds.dtype
        shape = ds.shape
        if shape is None:  # HDF5 null dataspace: a typed placeholder with no values
            shape = (0,)
        tag = None
        if dtype.kind == "V" and "dtype" in ds.attrs:
            try:
                tag = self._attr(ds, "dtype")
            except _Implausible as e:
                self._refuse(name, f"{name}: {e}")
                return
        dtype_name, view = _dtype_name(ds, tag)
        try:
            nbytes = checked_size(shape, dtype.itemsize, _SHAPE_LIMIT)
        except ValueError as e:
            self._refuse(name, f"{name}: {e}")
            return
        stored = ds.id.get_storage_size()
        if nbytes > _BOMB_FLOOR_BYTES and nbytes > _BOMB_MAX_EXPANSION * stored:
            self._refuse(name, f"{name} declares {nbytes} bytes but stores only {stored}; refused")
            return
        offset = ds.id.get_offset()  # contiguous data only; None for chunked/compact/unwritten
        if offset is not None and offset + nbytes > self._size:
            self._refuse(name, f"{name}: data at offset {offset} runs past the end of the file (truncated?)")
            return
        numeric = dtype_name in NUMERIC_DTYPES
        if not numeric or h5py.check_vlen_dtype(dtype) is not None:
            nbytes = stored  # size*itemsize means nothing for variable-length values
        self._tensors.append(
            TensorInfo(
                name=name,
                dtype=dtype_name,
                shape=tuple(int(d) for d in shape),
                nbytes=int(nbytes),
                kind=kind_of(name) if numeric else META,
                display=display_name(name),
                known=legacy_h5_name(name),
            )
        )
        self._views[name] = view

    def _check_weight_names(self, prefix: str, group: h5py.Group) -> None:
        # Legacy Keras 2 files index their own contents: `layer_names` on the weights root,
        # `weight_names` on each layer group (and on optimizer_weights). Keras 2's loader
        # fails on any name that is missing, so a missing one is a broken file.
        for attr, want_group in (("layer_names", True), ("weight_names", False)):
            # Keras 2 split lists over HDF5's 64 KiB attribute limit into attr0, attr1, ...
            if attr in group.attrs:
                parts = [attr]
            else:
                numbered = (f"{attr}{i}" for i in itertools.count())
                parts = list(itertools.takewhile(group.attrs.__contains__, numbered))
            if not parts:
                continue
            try:
                names = [_text(n) for part in parts for n in np.asarray(self._attr(group, part)).reshape(-1)]
            except Exception as e:
                self._problem(f"{prefix or '/'}: unreadable attribute {attr} ({_reason(e)})")
                continue
            for n in names:
                if not isinstance(_hard_get(group, n), h5py.Group if want_group else h5py.Dataset):
                    what = "layer group" if want_group else "dataset"
                    self._problem(f"{attr} of /{prefix} names {what} {n!r}, which is missing", f"{prefix}{n}")

    def _read_config(self, root: h5py.File) -> None:
        if "model_config" not in root.attrs:
            return
        try:
            cfg = json.loads(_text(self._attr(root, "model_config")))
        except _Implausible as e:
            self._problem(f"/: unreadable attribute model_config ({e})")
            return
        except Exception:
            return  # informational only; the weights are what we verify
        self.config = cfg if isinstance(cfg, dict) else None

    # -- reading --------------------------------------------------------------------------

    def _read(self, name: str, view: np.dtype | None, chunk: int) -> Iterator[np.ndarray]:
        try:
            assert self._file is not None
            ds = self._file[name]
            shape = ds.shape
        except Exception as e:
            raise IntegrityError(CHECK, f"{self._label}: cannot open dataset {name} ({_reason(e)})", name) from None
        if shape is None:
            return
        selections: Iterator[Any] = iter([()]) if shape == () else _slabs(shape, chunk)
        for sel in selections:
            # Only the read sits in the try: an exception thrown into the generator at
            # `yield` (or GeneratorExit) must not be reported as a broken file.
            try:
                block = np.asarray(ds[sel])
                block = np.ascontiguousarray(block).reshape(-1)
                if view is not None:
                    block = block.view(view)
                elif block.dtype.byteorder not in "=|" and block.dtype.kind in "biufc":
                    block = block.astype(block.dtype.newbyteorder("="))
            except Exception as e:
                raise IntegrityError(
                    CHECK, f"{self._label}: dataset {name} cannot be read ({_reason(e)})", name
                ) from None
            yield block


def open_hdf5(path: str, *, label: str | None = None) -> Hdf5Source:
    """Open a Keras HDF5 weight file read-only and list its datasets.

    `label` names the file in messages (the `.keras` reader passes `archive!member`).
    Raises IntegrityError("integrity.h5") if the file is not readable HDF5, and
    FileNotFoundError if it does not exist (a vanished file is not a corrupt one).
    """
    return Hdf5Source(os.fspath(path), label=label)


def _slabs(shape: tuple[int, ...], chunk: int) -> Iterator[tuple[Any, ...]]:
    """Selections of C-contiguous blocks of at most `chunk` elements, in storage order.

    Rows along axis 0 when a row fits in a chunk; when one row alone is larger, the
    slicing moves to the first axis whose trailing block fits, so the bound holds
    for any shape.
    """
    if 0 in shape:
        return
    axis, inner = len(shape) - 1, 1
    while axis > 0 and inner * shape[axis] <= chunk:
        inner *= shape[axis]
        axis -= 1
    step = max(1, chunk // inner)
    n = shape[axis]
    for outer in itertools.product(*(range(d) for d in shape[:axis])):
        for start in range(0, n, step):
            yield (*outer, slice(start, min(start + step, n)))


class _Implausible(Exception):
    """An attribute whose header claims what the file cannot hold: never handed to libhdf5."""


def _dtype_name(ds: h5py.Dataset, tag: Any = None) -> tuple[str, np.dtype | None]:
    """Name for TensorInfo.dtype, and the dtype to view raw bytes as (if any); `tag`: the
    dataset's `dtype` attribute (Keras 3's tag of an opaque type), already read."""
    dt = ds.dtype
    if h5py.check_string_dtype(dt) is not None:
        return "string", None
    if dt.names is not None:
        return "compound", None
    if h5py.check_ref_dtype(dt) is not None:
        return "reference", None
    if h5py.check_vlen_dtype(dt) is not None:
        return "vlen", None
    if dt.subdtype is not None:
        return "array", None
    if dt.kind == "V":
        # Keras 3 stores bfloat16 as an opaque 2-byte type tagged with attrs["dtype"].
        tag = _text(tag) if isinstance(tag, (str, bytes)) else None
        if tag in NUMERIC_DTYPES and NUMERIC_DTYPES[tag].itemsize == dt.itemsize:
            return tag, NUMERIC_DTYPES[tag]
        return "opaque", None
    return dt.newbyteorder("=").name, None


def _hard_get(group: h5py.Group, path: str) -> h5py.HLObject | None:
    """Resolve a relative path one component at a time, through hard links only
    (HDF5's own path lookup would follow an external link into another file)."""
    obj: h5py.HLObject = group
    for part in path.split("/"):
        if not part:
            continue
        if not isinstance(obj, h5py.Group) or not isinstance(obj.get(part, getlink=True), h5py.HardLink):
            return None
        obj = obj[part]
    return obj if obj is not group else None


def _address(obj: h5py.HLObject) -> tuple[int, int]:
    info = h5py.h5o.get_info(obj.id)
    return int(info.fileno), int(info.addr)


def _natural(key: str) -> list[Any]:
    # vars/2 before vars/10, as Keras numbered them
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in re.split(r"(\d+)", key) if p]


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.ndarray) and value.shape == ():
        return _text(value[()])
    return str(value)


def _reason(e: BaseException) -> str:
    """h5py messages bury the cause in parentheses: keep that, drop the rest."""
    msg = str(e).strip() or type(e).__name__
    m = re.search(r"\(([^()]*)\)\s*$", msg)
    short = m.group(1) if m else msg
    return short if len(short) <= 200 else short[:197] + "..."
