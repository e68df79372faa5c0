"""A checkpoint held in memory: named numpy arrays behind the reader protocol.

    ArraySource({"dense/kernel": w, "dense/bias": b}, step=3)

For what needs a checkpoint without TensorFlow or files: the engine's and the policy
rules' unit tests, benchmarks, tools that build a reference on the fly. Names are
classified like a bundle's keys (ckptwatch.formats.names). `corrupt` names tensors whose
read fails its checksum after the data was streamed, as a damaged shard would.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from ckptwatch.formats.base import CHUNK_ELEMENTS, IntegrityError, IntegrityProblem, TensorInfo
from ckptwatch.formats.names import display_name, kind_of


class ArraySource:
    format = "memory"

    def __init__(
        self,
        arrays: Mapping[str, np.ndarray],
        path: str = "memory",
        step: int | None = None,
        kinds: Mapping[str, str] | None = None,
        corrupt: Iterable[str] = (),
    ) -> None:
        self.path = path
        self.step = step
        self.problems: list[IntegrityProblem] = []
        self._arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
        self._corrupt = set(corrupt)
        kinds = kinds or {}
        self._infos = [
            TensorInfo(
                name, a.dtype.name, tuple(a.shape), a.nbytes, kinds.get(name) or kind_of(name), display_name(name)
            )
            for name, a in self._arrays.items()
        ]

    def tensors(self) -> list[TensorInfo]:
        return list(self._infos)

    def read(self, name: str, chunk_elements: int = CHUNK_ELEMENTS) -> Iterator[np.ndarray]:
        flat = self._arrays[name].reshape(-1)
        step = max(1, chunk_elements)
        for start in range(0, flat.size, step):
            yield flat[start : start + step]
        if name in self._corrupt:
            raise IntegrityError("integrity.checksum", "checksum does not match (simulated)", name)

    @property
    def total_bytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    def close(self) -> None:
        pass
