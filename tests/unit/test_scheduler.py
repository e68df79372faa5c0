"""Scheduler: per-watch queues in step order, watches taking turns, a bounded queue that
coalesces the oldest, requeue at the front, discard."""

from __future__ import annotations

import itertools

from ckptwatch.daemon.model import Candidate
from ckptwatch.daemon.scheduler import Scheduler


def cand(step: int | None, watch: str = "run", name: str | None = None) -> Candidate:
    path = f"/ckpt/{watch}/{name or f'ckpt-{step}'}"
    return Candidate(watch, path, "bundle", step, key=path + ":0")


def test_one_watch_in_step_order_whatever_the_order_found():
    s = Scheduler()
    for step in (3, 1, 2):
        assert s.offer(cand(step)) == []
    assert [s.next(set()).step for _ in range(3)] == [1, 2, 3]
    assert s.next(set()) is None


def test_no_step_sorts_first_then_by_path():
    s = Scheduler()
    s.offer(cand(2))
    s.offer(cand(None, name="weights.h5"))
    s.offer(cand(None, name="model.keras"))
    order = [s.next(set()).path.rsplit("/", 1)[1] for _ in range(3)]
    assert order == ["model.keras", "weights.h5", "ckpt-2"]


def test_offering_the_same_key_twice_queues_it_once():
    s = Scheduler()
    s.offer(cand(1))
    s.offer(cand(1))
    assert s.depth("run") == 1 and s.queued(cand(1).key)


def test_beyond_the_limit_the_oldest_are_returned_as_coalesced():
    s = Scheduler(limit=2)
    assert s.offer(cand(5)) == [] and s.offer(cand(6)) == []
    assert s.offer(cand(7)) == [cand(5)]
    assert s.offer(cand(1)) == [cand(1)], "an older one than all queued is itself coalesced"
    assert s.depth("run") == 2 and [s.next(set()).step for _ in range(2)] == [6, 7]


def test_limit_is_at_least_one():
    s = Scheduler(limit=0)
    s.offer(cand(1))
    assert s.offer(cand(2)) == [cand(1)] and s.depth("run") == 1


def test_watches_take_turns_and_busy_ones_wait():
    s = Scheduler()
    for step in (1, 2, 3):
        s.offer(cand(step, "a"))
        s.offer(cand(step, "b"))
    got = [s.next(set()) for _ in range(4)]
    assert [c.watch for c in got].count("a") == 2 and [c.watch for c in got].count("b") == 2
    assert all(x.watch != y.watch for x, y in itertools.pairwise(got)), "alternating"
    assert s.next({"a", "b"}) is None, "both busy"
    assert s.next({"a"}).watch == "b"
    assert s.next({"b"}) == cand(3, "a")


def test_requeue_puts_it_back_at_the_front_once():
    s = Scheduler()
    s.offer(cand(1))
    s.offer(cand(2))
    first = s.next(set())
    s.requeue(first)
    s.requeue(first)
    assert s.depth("run") == 2
    assert s.next(set()) == first


def test_discard_all_or_what_is_not_kept():
    s = Scheduler()
    for step in (1, 2, 3):
        s.offer(cand(step))
    s.offer(cand(1, "other"))
    assert s.discard("run", keep={cand(2).key}) == [cand(1), cand(3)]
    assert s.depth("run") == 1 and s.depth("other") == 1
    assert s.discard("other") == [cand(1, "other")]
    assert s.depth("other") == 0 and s.discard("never") == []
