"""Which checkpoint to verify next.

Per watch, checkpoints are verified in step order, one at a time: the next
one's "previous" is the result of this one. Watches take turns. Under a burst
the queue stays bounded: beyond `limit` pending checkpoints the oldest are
skipped as "coalesced" (returned to the caller, which counts and logs each one:
nothing is dropped silently); the newest are always kept.
"""

from __future__ import annotations

from ckptwatch.daemon.model import Candidate


class Scheduler:
    def __init__(self, limit: int = 8):
        self.limit = max(1, limit)
        self._queues: dict[str, list[Candidate]] = {}
        self._turn = 0

    def offer(self, candidate: Candidate) -> list[Candidate]:
        """Queue a complete checkpoint; return the ones coalesced away by it."""
        queue = self._queues.setdefault(candidate.watch, [])
        if any(c.key == candidate.key for c in queue):
            return []
        queue.append(candidate)
        queue.sort(key=lambda c: c.sort_key)
        dropped = queue[: max(0, len(queue) - self.limit)]
        del queue[: len(dropped)]
        return dropped

    def queued(self, key: str) -> bool:
        return any(c.key == key for q in self._queues.values() for c in q)

    def next(self, busy_watches: set[str]) -> Candidate | None:
        """The oldest pending checkpoint of the next watch in turn that is not busy."""
        names = [n for n, q in self._queues.items() if q and n not in busy_watches]
        if not names:
            return None
        self._turn = (self._turn + 1) % len(names)
        return self._queues[names[self._turn]].pop(0)

    def requeue(self, candidate: Candidate) -> None:
        """Put a checkpoint back at the front (its worker died; it will be retried)."""
        queue = self._queues.setdefault(candidate.watch, [])
        if all(c.key != candidate.key for c in queue):
            queue.insert(0, candidate)

    def discard(self, watch: str, keep: set[str] | None = None) -> list[Candidate]:
        """Drop a watch's queue (or the entries whose key is not in `keep`); return them."""
        queue = self._queues.get(watch, [])
        gone = [c for c in queue if keep is None or c.key not in keep]
        self._queues[watch] = [c for c in queue if c not in gone]
        return gone

    def depth(self, watch: str) -> int:
        return len(self._queues.get(watch, []))
