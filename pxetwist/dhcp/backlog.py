"""DISCOVERs waiting while the server is behind: which to answer next and which to drop.

When a power-on burst or a flood arrives faster than the server answers, the socket's reader
answers REQUESTs at once (each finishes an exchange already paid for with an OFFER) and holds
the DISCOVERs here.  They are queued by where they came from (a relay's address, or a client on
the server's own link) and the sources take turns, one DISCOVER each: a flood through one relay
cannot hold back the machines behind another, nor a client on the link, however many DISCOVERs
it has queued.  From one source they are answered oldest first; one older than ``stale_after``
is dropped, since its client has retransmitted it by then (RFC 2131 §4.1) and the
retransmission is the one worth answering; past ``limit`` held, the oldest of the source
holding the most go.  Pure: time is passed in.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable
from typing import Final, Generic, TypeVar

T = TypeVar("T")

STALE_AFTER: Final = 4.0
"""Seconds a held DISCOVER may wait since the kernel queued it and still be answered: the 4 s a
client waits before retransmitting it (RFC 2131 §4.1; PXE ROMs).  iPXE retries sooner (1, 2, 4,
8 s) but keeps its ``xid``, so an OFFER to an earlier DISCOVER serves it too
(protocol-reference §1.4)."""

HELD_LIMIT: Final = 8192
"""DISCOVERs held at most (a few MiB): a flood cannot grow the queue without bound."""


class HeldDiscovers(Generic[T]):
    """DISCOVERs by source, each with the time it was queued; the sources take turns."""

    def __init__(self, stale_after: float = STALE_AFTER, limit: int = HELD_LIMIT) -> None:
        self.stale_after = stale_after
        self.limit = limit
        self.stale = 0  # dropped since the start: older than a client waits
        self.overflow = 0  # dropped since the start: more than ``limit`` held
        self._queues: dict[Hashable, deque[tuple[float, T]]] = {}
        self._turns: deque[Hashable] = deque()  # the sources with something held, in turn
        self._count = 0
        self._largest: Hashable = None  # about the source holding the most (the flood's)

    def __len__(self) -> int:
        return self._count

    def hold(self, queued_at: float, discover: T, source: Hashable = None) -> None:
        queues = self._queues
        queue = queues.get(source)
        if queue is None:
            queue = queues[source] = deque()
            self._turns.append(source)
        queue.append((queued_at, discover))
        self._count += 1
        largest = queues.get(self._largest)
        if largest is None or len(queue) > len(largest):
            self._largest = source
            largest = queue
        if self._count > self.limit:
            largest.popleft()  # never empty: the largest holds at least what was just added
            self._count -= 1
            self.overflow += 1

    def take(self, count: int, now: float) -> list[T]:
        """Up to ``count`` DISCOVERs, one per source in turn, each source's oldest first; what
        is too old is dropped on the way."""
        queues = self._queues
        turns = self._turns
        cutoff = now - self.stale_after
        taken: list[T] = []
        while turns and len(taken) < count:
            source = turns.popleft()
            queue = queues[source]
            while queue and queue[0][0] < cutoff:
                queue.popleft()
                self._count -= 1
                self.stale += 1
            if queue:
                taken.append(queue.popleft()[1])
                self._count -= 1
            if queue:
                turns.append(source)
            else:
                del queues[source]
        return taken

    def clear(self) -> None:
        self._queues.clear()
        self._turns.clear()
        self._count = 0


__all__ = ["HELD_LIMIT", "STALE_AFTER", "HeldDiscovers"]
