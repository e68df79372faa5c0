"""TensorFlow bundle checkpoints: TF2 tf.train.Checkpoint, TF1 Saver, SavedModel variables.

A bundle is `<prefix>.index` (an SSTable mapping tensor names to BundleEntryProto:
dtype, shape, shard, offset, size, masked CRC32C) plus `<prefix>.data-K-of-N`
shards holding the raw bytes. We decode the protos with a tiny wire-format
reader (no TensorFlow import) and stream each tensor from its shard in chunks,
checking the CRC32C when the last chunk has been read.
"""

from __future__ import annotations

import os
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import BinaryIO

import crc32c
import numpy as np

from ckptwatch.formats.base import (
    CHUNK_ELEMENTS,
    META,
    OPTIMIZER,
    WEIGHT,
    FileSet,
    IntegrityError,
    IntegrityProblem,
    TensorInfo,
    checked_size,
)
from ckptwatch.formats.dtypes import NUMERIC_DTYPES
from ckptwatch.formats.entries import decode_entries
from ckptwatch.formats.files import NotRegularFile, check_regular, open_regular
from ckptwatch.formats.known import bundle_names
from ckptwatch.formats.layout import INDEX_SUFFIX, data_shards, shard_path, temp_leftovers
from ckptwatch.formats.names import OBJECT_GRAPH_KEY, named, step_from_path
from ckptwatch.formats.object_graph import decode_scalar_string, key_paths, parse_nodes, per_graph, preferred_path
from ckptwatch.formats.sliced import Part, SliceMismatch, resolve_slices, stream_sliced
from ckptwatch.formats.table import TableError, unmask_crc
from ckptwatch.formats.wire import DTYPE_NAMES, BundleEntry, check_entry_crc, read_index

__all__ = ["DTYPE_NAMES", "OBJECT_GRAPH_KEY", "BundleEntry", "BundleSource", "shard_path"]

STEP_KEYS = (
    "global_step",
    "global_step/.ATTRIBUTES/VARIABLE_VALUE",
    "optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE",  # Keras 2 optimizers
    "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",  # Keras 3
    "optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE",
)
RUN_BYTES = 1 << 20  # read_runs: small tensors read together, up to this many bytes a pread
_RUN_DTYPES: dict[int, np.dtype] = {1: np.dtype("<f4"), 2: np.dtype("<f8")}  # float32, float64: what read_runs reads
MISSING_NAMED = 8  # missing data shards named one by one; more are counted in one finding


@per_graph
def _graph_naming(graph: bytes, wanted: frozenset[str]) -> dict[str, tuple[str, bool, str]]:
    """key -> (the object path shown, whether only the optimizer holds it, the Keras name or ""),
    for the keys in `wanted` (the non-meta tensors listed) that the object graph reaches. Once
    per graph: the checkpoints of a run (a candidate and its previous, every save the daemon
    sees) store the same graph and list the same keys."""
    paths = key_paths(graph)
    chosen = {name: preferred_path(paths[name]) for name in paths if name in wanted}
    known = bundle_names(paths, {name: path for name, (path, _) in chosen.items()})
    return {
        name: ("/".join(path), optimizer_only, known.get(name, "")) for name, (path, optimizer_only) in chosen.items()
    }


class BundleSource:
    """A TF bundle opened for verification. See `CheckpointSource`."""

    def __init__(self, prefix: str, format: str = "tf-bundle"):
        self.path = prefix
        self.format = format
        self.step = step_from_path(prefix) if format == "tf-bundle" else None
        self.problems: list[IntegrityProblem] = []
        self._entries: dict[str, BundleEntry] = {}
        self._infos: list[TensorInfo] = []  # set once the index and the object graph are read
        # Data shards opened once (on first read) and read with pread, shared by the engine's
        # threads: no open/stat per tensor. shard id -> (file, its size when opened).
        self._shards: dict[int, tuple[BinaryIO, int]] = {}
        self._shards_lock = threading.Lock()
        self._local = threading.local()  # read_runs' buffer, one per thread
        index_path = prefix + INDEX_SUFFIX
        try:
            check_regular(index_path)  # a FIFO or device: NotRegularFile, a finding
        except NotRegularFile:
            raise
        except OSError:
            shards = data_shards(prefix)
            raise IntegrityError(
                "integrity.index",
                f"{index_path}: index file missing" + (f" ({len(shards)} data shard(s) present)" if shards else ""),
            ) from None
        # what tensors() lists, per key in index order: [name, dtype, shape, nbytes, kind, display,
        # known], made into TensorInfo once the object graph has named them
        self._rows: list[list] = []
        self._load_index(index_path)
        if self.step is None:
            self.step = self._stored_step()
        self._apply_object_graph()
        self._infos = [TensorInfo(*row) for row in self._rows]
        del self._rows
        self._files = FileSet([index_path] + [shard_path(prefix, k, self.num_shards) for k in range(self.num_shards)])
        self._check_files()

    # -- opening -------------------------------------------------------------

    def _load_index(self, index_path: str) -> None:
        index = read_index(index_path, decode=decode_entries)
        self.num_shards, self.big_endian = index.num_shards, index.big_endian
        add = self._add
        for name, entry in index.entries:
            add(name, entry)
        self._parts: dict[str, list[Part]] = {}
        for name, entry in [(n, e) for n, e in self._entries.items() if e.slices]:
            if entry.sliced:
                self._resolve_slices(name, entry, index.slices.get(name, []))

    def _stored_step(self) -> int | None:
        """The training step a bundle holds, for one whose path does not say it (a SavedModel's
        variables, `Checkpoint.write("weights")`): the scalar integer `global_step` (TF1 and
        Estimator graphs; a TF2 module's attribute), else a Keras optimizer's iteration count.
        Eight bytes read and checksummed; a damaged one gives None (reading it says why)."""
        for key in STEP_KEYS:
            entry = self._entries.get(key)
            if entry is None or entry.sliced or entry.shape != () or entry.dtype not in (3, 9):  # int32, int64
                continue
            try:
                (chunk,) = list(self.read(key))
            except (IntegrityError, OSError, ValueError):
                return None
            value = int(chunk[0])
            return value if value >= 0 else None
        return None

    def _apply_object_graph(self) -> None:
        """Rename and reclassify keys by the object graph (see object_graph.py)."""
        if OBJECT_GRAPH_KEY not in self._entries:
            return
        try:
            graph = decode_scalar_string(self.read_string_bytes(OBJECT_GRAPH_KEY))
            wanted = frozenset(row[0] for row in self._rows if row[4] != META)
            naming = _graph_naming(graph, wanted)
        except (IntegrityError, TableError) as e:
            problem = e.problem if isinstance(e, IntegrityError) else None
            self.problems.append(
                problem or IntegrityProblem("integrity.index", f"unreadable object graph: {e}", OBJECT_GRAPH_KEY)
            )
            return
        for row in self._rows:
            named_by_graph = naming.get(row[0])
            if named_by_graph is None:
                continue
            display, optimizer_only, known = named_by_graph
            kind = row[4]
            if kind == OPTIMIZER and not optimizer_only:
                row[4] = WEIGHT
            elif kind == WEIGHT and optimizer_only:
                row[4] = OPTIMIZER
            row[5] = display or row[5]
            row[6] = known

    def object_graph(self) -> list | None:
        """The TrackableObjectGraph's nodes (object_graph.GraphNode), or None for a
        name-based (TF1) checkpoint. Raises IntegrityError if it is unreadable."""
        if OBJECT_GRAPH_KEY not in self._entries:
            return None
        try:
            return parse_nodes(decode_scalar_string(self.read_string_bytes(OBJECT_GRAPH_KEY)))
        except TableError as e:
            raise IntegrityError("integrity.index", f"unreadable object graph: {e}", OBJECT_GRAPH_KEY) from None

    def _add(self, name: str, entry: BundleEntry) -> None:
        dtype_name = DTYPE_NAMES.get(entry.dtype) or f"dtype{entry.dtype}"
        kind, display = named(name)
        if dtype_name not in NUMERIC_DTYPES:
            kind = META
        elif entry.shape and min(entry.shape) < 0:
            self.problems.append(
                IntegrityProblem("integrity.index", f"negative dimension in shape {list(entry.shape)}", name)
            )
            return  # unreadable: not listed, so references report it missing too
        self._entries[name] = entry
        self._rows.append([name, dtype_name, entry.shape, max(entry.size, 0), kind, display, ""])

    def _resolve_slices(self, name: str, entry: BundleEntry, stored: list[BundleEntry]) -> None:
        itemsize = NUMERIC_DTYPES.get(DTYPE_NAMES.get(entry.dtype, ""), np.dtype(np.uint8)).itemsize
        try:
            parts = resolve_slices(entry, stored, itemsize)
        except SliceMismatch as e:
            self.problems.append(IntegrityProblem("integrity.sliced", str(e), name))
            self._rows = [row for row in self._rows if row[0] != name]
            return
        self._parts[name] = parts
        total = sum(p.entry.size for p in parts)
        for row in self._rows:
            if row[0] == name:
                row[3] = total

    def _check_files(self) -> None:
        """Every data file the header claims is there and regular. Bounded by the files that
        exist: an index claiming 65,536 shards costs one directory listing, not 65,536 stats,
        and its missing shards are named up to MISSING_NAMED, then counted."""
        present = set(data_shards(self.path))
        tensors = Counter(e.shard_id for e in self._entries.values())
        expected = [shard_path(self.path, k, self.num_shards) for k in range(self.num_shards)]
        named = 0
        for k, p in enumerate(expected):
            if p not in present:
                named += 1
                if named <= MISSING_NAMED:
                    self.problems.append(
                        IntegrityProblem(
                            "integrity.shard_missing", f"{os.path.basename(p)} is missing ({tensors[k]} tensors)"
                        )
                    )
                continue
            try:
                check_regular(p)
            except NotRegularFile as e:
                self.problems.append(e.problem)
            except OSError:
                pass  # vanished meanwhile: reading it says so
        if named > MISSING_NAMED:
            self.problems.append(
                IntegrityProblem(
                    "integrity.shard_missing",
                    f"{named} of {self.num_shards} data shards are missing (the first {MISSING_NAMED} are named)",
                )
            )
        leftovers = temp_leftovers(self.path)
        if leftovers:
            self.problems.append(
                IntegrityProblem(
                    "integrity.incomplete",
                    f"temporary files of an unfinished save remain: {leftovers[0]}",
                )
            )

    # -- the protocol ----------------------------------------------------------

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def entry(self, name: str) -> BundleEntry:
        """Where a tensor lives: shard, offset, size, checksum (for tools and tests)."""
        return self._entries[name]

    @property
    def total_bytes(self) -> int:
        return self._files.total_bytes

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        entry = self._entries[name]
        dtype_name = DTYPE_NAMES.get(entry.dtype, "")
        numeric = dtype_name in NUMERIC_DTYPES
        dtype = NUMERIC_DTYPES[dtype_name] if numeric else np.dtype(np.uint8)
        if self.big_endian:
            dtype = dtype.newbyteorder(">")
        path = shard_path(self.path, entry.shard_id, self.num_shards)
        if entry.sliced:
            parts = self._parts.get(name)
            if parts is None:
                raise IntegrityError("integrity.sliced", "slices could not be matched to the index", name)
            yield from stream_sliced(self.path, self.num_shards, name, entry, parts, dtype, chunk_elements)
            return
        fd, file_size = self._shard(entry.shard_id, name)
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > file_size:
            raise IntegrityError(
                "integrity.truncated",
                f"needs bytes [{entry.offset}, {entry.offset + entry.size}) of {os.path.basename(path)}, "
                f"which has {file_size} bytes",
                name,
            )
        if dtype_name == "string":
            yield np.frombuffer(self.read_string_bytes(name), dtype=np.uint8)
            return
        if numeric:
            try:
                expected = checked_size(entry.shape, dtype.itemsize, file_size)
            except ValueError as e:
                raise IntegrityError("integrity.index", str(e), name) from None
            if expected != entry.size:
                raise IntegrityError(
                    "integrity.index",
                    f"shape {list(entry.shape)} needs {expected} bytes, index says {entry.size}",
                    name,
                )
        chunk_bytes = max(1, chunk_elements) * dtype.itemsize
        if entry.size <= chunk_bytes:  # one chunk (most tensors): one pread, no buffer to manage
            data = os.pread(fd, entry.size, entry.offset)
            if len(data) != entry.size:
                raise _ended_early(path, name)
            check_entry_crc(entry, crc32c.crc32c(data), name, where=os.path.basename(path))
            if entry.size:
                yield np.frombuffer(data, dtype=dtype)
            return
        yield from self._stream(fd, path, entry, dtype, chunk_bytes, name)

    def storage_key(self, name: str) -> tuple[int, int]:
        """Where a tensor's bytes lie (shard, offset): reading in this order reads each shard
        front to back, and lets read_runs find tensors stored back to back (keys sort as
        strings, "v10" before "v2", which is not the order TF wrote them in)."""
        entry = self._entries.get(name)
        return (entry.shard_id, entry.offset) if entry is not None else (-1, -1)

    def read_runs(
        self,
        names: list[str],
        chunk_elements: int = CHUNK_ELEMENTS,
        run_bytes: int = RUN_BYTES,
        announce: Callable[[str], None] | None = None,
        keep: bool = False,
    ) -> Iterator[tuple[np.ndarray, list[tuple[int, int, int]]]]:
        """Many small tensors at once, for the engine's fast path: float32/float64 tensors of one
        chunk or less that lie back to back in one shard are read with one pread per run (up to
        `run_bytes`) into a buffer of this thread's, and their checksums checked. Yields, per run,
        the run's values and, per tensor, (its position in `names`, first element, end element);
        a run's values are only valid until the next is asked for (the buffer is reused). The
        tensors it leaves out (any other kind, a shape or size that does not add up, a checksum
        that does not match, a read that failed) are left to `read`, which says what is wrong,
        exactly as for any tensor. `announce` gets each tensor's name before its run is read (the
        CLI's reading child names the tensors it was reading if native code kills it). `keep`:
        the runs of this call lie one after the other in an arena of this thread's, so all of them
        stay valid until the next `read_runs(keep=True)` in this thread (the engine reads a
        reference's tensors of a batch this way, before the candidate's). The arena is reused:
        a fresh buffer per run costs the kernel's zeroing of new pages, ~0.5 s per GB."""
        pending: list[tuple[int, BundleEntry]] = []
        run_dtype: np.dtype | None = None
        run_fd = run_end = -1
        kept = 0  # bytes of the arena this call's runs took so far

        def flush() -> tuple[np.ndarray, list[tuple[int, int, int]]] | None:
            if not pending:
                return None
            nonlocal kept
            first = pending[0][1].offset
            total = run_end - first
            start = kept  # where this run lies in the arena (keep): given back when nothing of it is kept
            if keep:
                arena = getattr(self._local, "arena", None)
                if arena is None or kept + total > len(arena):  # a larger one; earlier runs keep the old
                    arena = self._local.arena = bytearray(max(total, 2 * len(arena or b""), run_bytes))
                    kept = 0
                start = kept
                view = memoryview(arena)[kept : kept + total]
                kept += total
            else:
                buf = getattr(self._local, "buf", None)
                if buf is None or len(buf) < total:
                    buf = self._local.buf = bytearray(max(total, run_bytes))
                view = memoryview(buf)[:total]
            if announce is not None:
                for i, _ in pending:
                    announce(names[i])
            try:
                got = os.preadv(run_fd, [view], first)
            except OSError:
                got = -1
            if got != total:
                kept = start
                return None
            assert run_dtype is not None
            size = run_dtype.itemsize
            members = []
            for i, entry in pending:
                a = entry.offset - first
                b = a + entry.size
                if entry.crc32c is None or unmask_crc(entry.crc32c) == crc32c.crc32c(view[a:b]):
                    members.append((i, a // size, b // size))
            if not members:
                kept = start
                return None
            return np.frombuffer(view, dtype=run_dtype), members

        chunk_limit = max(1, chunk_elements)
        for i, name in enumerate(names):
            entry = self._entries.get(name)
            dtype = _RUN_DTYPES.get(entry.dtype) if entry is not None and not self.big_endian else None
            if entry is None or dtype is None or entry.sliced or entry.size <= 0 or entry.offset < 0:
                continue
            try:
                fd, file_size = self._shard(entry.shard_id, name)
                ok = (
                    entry.offset + entry.size <= file_size
                    and entry.size <= chunk_limit * dtype.itemsize
                    and checked_size(entry.shape, dtype.itemsize, file_size) == entry.size
                )
            except (IntegrityError, OSError, ValueError):
                ok = False
            if not ok:
                continue
            if (
                fd != run_fd
                or entry.offset != run_end
                or dtype != run_dtype
                or (pending and run_end - pending[0][1].offset + entry.size > run_bytes)
            ):
                run = flush()
                if run is not None:
                    yield run
                pending = []
                run_fd, run_dtype = fd, dtype
            pending.append((i, entry))
            run_end = entry.offset + entry.size
        run = flush()
        if run is not None:
            yield run

    def _stream(
        self, fd: int, path: str, entry: BundleEntry, dtype: np.dtype, chunk_bytes: int, name: str
    ) -> Iterator[np.ndarray]:
        buf = bytearray(min(chunk_bytes, max(entry.size, 1)))
        view = memoryview(buf)
        crc, left, pos = 0, entry.size, entry.offset
        while left > 0:
            want = min(left, len(buf))
            got = os.preadv(fd, [view[:want]], pos)
            if got != want:
                raise _ended_early(path, name)
            crc = crc32c.crc32c(view[:want], crc)
            left -= want
            pos += want
            yield np.frombuffer(buf, dtype=dtype, count=want // dtype.itemsize)
        check_entry_crc(entry, crc, name, where=os.path.basename(path))

    def _shard(self, shard_id: int, name: str) -> tuple[int, int]:
        """The descriptor and size of a data shard, opened on first use (a regular file, else
        NotRegularFile; missing: integrity.shard_missing naming `name`)."""
        held = self._shards.get(shard_id)
        if held is None:
            with self._shards_lock:
                held = self._shards.get(shard_id)
                if held is None:
                    path = shard_path(self.path, shard_id, self.num_shards)
                    try:
                        f = open_regular(path, name, buffering=0)
                    except NotRegularFile:
                        raise
                    except FileNotFoundError:
                        raise IntegrityError(
                            "integrity.shard_missing", f"{os.path.basename(path)} is missing", name
                        ) from None
                    held = (f, os.fstat(f.fileno()).st_size)
                    self._shards[shard_id] = held
        return held[0].fileno(), held[1]

    def read_string_bytes(self, name: str, limit: int = 256 << 20) -> bytes:
        """The raw bytes of a string tensor, after checking its checksum.

        TF checksums string tensors specially: each element length as a uint32,
        then the 4-byte checksum of the lengths, then the string bytes.
        """
        entry = self._entries[name]
        path = shard_path(self.path, entry.shard_id, self.num_shards)
        fd, file_size = self._shard(entry.shard_id, name)
        if entry.offset < 0 or entry.size < 0 or entry.offset + entry.size > file_size or entry.size > limit:
            raise IntegrityError("integrity.truncated", f"string entry lies outside {os.path.basename(path)}", name)
        raw = os.pread(fd, entry.size, entry.offset)
        count = 1
        for d in entry.shape:
            count *= d
            if count > len(raw):  # every element takes at least one byte (its length)
                raise IntegrityError(
                    "integrity.index",
                    f"shape {list(entry.shape)} claims more strings than the entry's {len(raw)} bytes can hold",
                    name,
                )
        try:
            lengths, pos = string_lengths(raw, count)
            if pos + 4 + int(lengths.sum()) != len(raw):
                raise TableError("string lengths do not add up to the entry size")
        except TableError as e:
            raise IntegrityError("integrity.checksum", f"malformed string tensor: {e}", name) from None
        crc = crc32c.crc32c(lengths.astype("<u4").tobytes())  # TF sums each length as a uint32
        crc = crc32c.crc32c(raw[pos:], crc)
        check_entry_crc(entry, crc, name)
        return raw

    def close(self) -> None:
        with self._shards_lock:
            shards, self._shards = self._shards, {}
        for f, _ in shards.values():
            f.close()


def _ended_early(path: str, name: str) -> IntegrityError:
    return IntegrityError(
        "integrity.truncated", f"{os.path.basename(path)} ended early (read less bytes than requested)", name
    )


def string_lengths(raw: bytes, count: int) -> tuple[np.ndarray, int]:
    """The `count` varint lengths at the start of a string tensor's bytes (as uint64), and
    where they end; vectorised, so a claimed count of millions costs milliseconds. Raises
    TableError when they run past the bytes or one is longer than 10 bytes."""
    if count == 0:
        return np.zeros(0, dtype=np.uint64), 0
    return decode_varints(np.frombuffer(raw, dtype=np.uint8), count)


def decode_varints(data: np.ndarray, count: int | None = None) -> tuple[np.ndarray, int]:
    """The first `count` varints in `data` (uint8), or all of them when None (then they must
    end exactly at its end), as uint64, and where they end; vectorised. Raises TableError when
    they run past the bytes or one is longer than 10 bytes."""
    if data.size == 0 or count == 0:
        if count:
            raise TableError("varint runs past the end of its buffer")
        return np.zeros(0, dtype=np.uint64), 0
    ends = np.flatnonzero(data < 0x80)  # the last byte of each varint
    if count is None:
        if ends.size == 0 or ends[-1] != data.size - 1:
            raise TableError("varint runs past the end of its buffer")
    else:
        ends = ends[:count]
        if len(ends) < count:
            raise TableError("varint runs past the end of its buffer")
    starts = np.empty_like(ends)
    starts[0], starts[1:] = 0, ends[:-1] + 1
    widths = ends - starts + 1
    if int(widths.max()) > 10:
        raise TableError("varint longer than 10 bytes")
    values = np.zeros(ends.size, dtype=np.uint64)
    for i in range(int(widths.max())):
        has = widths > i
        values[has] |= (data[starts[has] + i] & 0x7F).astype(np.uint64) << np.uint64(7 * i)
    return values, int(ends[-1]) + 1
