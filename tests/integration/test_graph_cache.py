"""What a worker keeps of a checkpoint's object graph between files: the names made of the last few
graphs (a run's checkpoints share theirs: parsed once), but nothing of a graph past
CACHED_GRAPH_BYTES, so one file with a huge object graph does not stay in a long-running
worker's memory after its verdict. A large graph is parsed again each time, to the same names."""

from __future__ import annotations

from pathlib import Path

import pytest

from ckptwatch.formats import bundle as bundle_module
from ckptwatch.formats import object_graph
from ckptwatch.formats.bundle import BundleSource

CACHES = (object_graph._parsed, object_graph._key_paths, bundle_module._graph_naming)


def _clear() -> None:
    for cache in CACHES:
        cache.cache_clear()


def _kept() -> list[int]:
    return [cache.cache_info().currsize for cache in CACHES]


def _names(prefix: str) -> list[tuple[str, str, str, str]]:
    source = BundleSource(prefix)
    try:
        return [(t.name, t.display, t.kind, t.known) for t in source.tensors()]
    finally:
        source.close()


@pytest.fixture(scope="module")
def two_saves(tf, tmp_path_factory) -> tuple[str, str]:
    root: Path = tmp_path_factory.mktemp("graph-cache")
    dense = tf.keras.layers.Dense(4, name="logits")
    dense.build((None, 3))
    ckpt = tf.train.Checkpoint(model=dense, step=tf.Variable(1))
    first = ckpt.write(str(root / "ckpt-1"))
    dense.kernel.assign_add(tf.ones_like(dense.kernel))
    second = ckpt.write(str(root / "ckpt-2"))
    return first, second


def test_a_runs_graph_is_parsed_once_and_kept(two_saves):
    _clear()
    first = _names(two_saves[0])
    assert _kept() == [1, 1, 1]
    assert _names(two_saves[1]) == first  # the same graph: taken from what was kept
    assert bundle_module._graph_naming.cache_info().hits >= 1 and _kept() == [1, 1, 1]


def test_a_graph_past_the_limit_is_parsed_each_time_and_not_kept(two_saves, monkeypatch):
    _clear()
    kept_names = _names(two_saves[0])
    _clear()
    monkeypatch.setattr(object_graph, "CACHED_GRAPH_BYTES", 16)  # every real graph is larger
    assert _names(two_saves[0]) == kept_names
    assert _names(two_saves[1]) == kept_names
    assert _kept() == [0, 0, 0]
    assert any(display != name for name, display, _, _ in kept_names)  # the graph did name them
