"""The reader protocol every checkpoint format implements.

A *source* lists its tensors from metadata alone (no tensor data is read) and
then streams one tensor at a time, in chunks, so peak memory never depends on
the size of the checkpoint or of its largest tensor.

Readers never trust what a file claims: a shape, a size or an offset is checked
against the file before anything is allocated from it, and a problem is raised
as `IntegrityError` naming the tensor, never as a crash.
"""

from __future__ import annotations

import contextlib
import lzma
import os
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from ckptwatch.formats.kinds import COUNTER, META, METRIC, OPTIMIZER, WEIGHT  # noqa: F401 - re-exported

if TYPE_CHECKING:  # numpy is the readers' (formats.dtypes): this module stays light for the daemon
    import numpy as np

# The dtype names a reader may report that hold numbers (formats.dtypes maps each to its numpy
# dtype); any other name (string, resource, variant, qint8, ...) is not numeric.
NUMERIC_DTYPE_NAMES = frozenset(
    {
        "float16", "float32", "float64", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64", "bool", "complex64", "complex128", "bfloat16",
        "float8_e5m2", "float8_e4m3fn", "float8_e4m3fnuz", "float8_e4m3b11fnuz", "float8_e5m2fnuz",
    }
)  # fmt: skip

# What parsing raises on bytes it did not expect, beyond a reader's own IntegrityError: from a
# candidate, a corrupt or hostile file, which is a `fail` ("integrity.format"), never an error of
# the tool (DESIGN.md). OSError is not here: it is I/O (a vanished file, permissions).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # UnicodeDecodeError, json's errors, numpy's "array is too big"
    TypeError,
    IndexError,
    KeyError,
    OverflowError,  # a shape product above 2**63
    RecursionError,  # nesting deeper than the interpreter's stack
    EOFError,
    struct.error,
    zlib.error,
    lzma.LZMAError,
)


# Elements per chunk handed to the checks (~4 MB of float32). Small enough to
# stay in cache while several passes run over it.
CHUNK_ELEMENTS = 1 << 20


@dataclass(frozen=True)
class TensorInfo:
    name: str  # the key exactly as stored in the file
    dtype: str  # numpy-style name: float32, bfloat16, int64, string, ...
    shape: tuple[int, ...]
    nbytes: int  # bytes on disk (0 if unknown)
    kind: str = WEIGHT
    display: str = ""  # the object path (keys matched across checkpoints by it); defaults to `name`
    known: str = ""  # the Keras layer and variable where the file says them (formats.known); else ""

    @property
    def size(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def numeric(self) -> bool:
        return self.kind != META and self.dtype in NUMERIC_DTYPE_NAMES

    @property
    def label(self) -> str:
        return self.display or self.name

    @property
    def display_name(self) -> str:
        """The name to show people: the layer and variable, else the object path."""
        return self.known or self.display or self.name


@dataclass(frozen=True)
class IntegrityProblem:
    """Something wrong with the file itself, found at open or while reading."""

    check: str  # e.g. "integrity.checksum"
    message: str
    tensor: str | None = None


class IntegrityError(Exception):
    """Raised by readers; carries the problem so the engine can report it."""

    def __init__(self, check: str, message: str, tensor: str | None = None):
        super().__init__(message)
        self.problem = IntegrityProblem(check, message, tensor)


# what reading a candidate may raise that is the file's fault: decode_problem(e) says it as an IntegrityError
READ_ERRORS: tuple[type[BaseException], ...] = (IntegrityError, *DECODE_ERRORS)


def decode_problem(e: BaseException, what: str, tensor: str | None = None) -> IntegrityError:
    """An exception of DECODE_ERRORS raised while reading `what` (a file, a tensor) as the
    IntegrityError ("integrity.format") it stands for; an IntegrityError as it is."""
    if isinstance(e, IntegrityError):
        return e
    reason = "nested too deeply" if isinstance(e, RecursionError) else f"{type(e).__name__}: {e}"
    if len(reason) > 300:
        reason = reason[:297] + "..."
    return IntegrityError("integrity.format", f"{what} cannot be decoded ({reason})", tensor)


class CheckpointSource(Protocol):
    """What the verification engine needs from a checkpoint (or fingerprint)."""

    path: str  # resolved path (prefix for bundles)
    format: str  # "tf-bundle", "savedmodel", "tf-v1", "keras-h5", "keras-weights-h5", "keras-archive", "fingerprint"
    step: int | None
    problems: list[IntegrityProblem]  # found while opening: missing shards, leftover temp files ...

    def tensors(self) -> list[TensorInfo]: ...

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        """Yield the tensor's values as 1-D arrays in storage (C) order.

        Raises IntegrityError when the data cannot be read or fails its checksum
        (the checksum is checked once the last chunk has been read).
        """
        ...

    @property
    def total_bytes(self) -> int: ...

    def close(self) -> None: ...


def checked_size(shape: tuple[int, ...], itemsize: int, limit: int) -> int:
    """Number of bytes a shape needs, refusing negative dims or sizes above `limit`."""
    n = itemsize
    for d in shape:
        if d < 0:
            raise ValueError(f"negative dimension in shape {list(shape)}")
        n *= d
        if n > limit:
            raise ValueError(f"shape {list(shape)} needs more bytes than the file holds")
    return n


@dataclass
class FileSet:
    """Files that make up one checkpoint, for byte counts."""

    paths: list[str] = field(default_factory=list)

    @property
    def total_bytes(self) -> int:
        total = 0
        for p in self.paths:
            with contextlib.suppress(OSError):
                total += os.path.getsize(p)
        return total
