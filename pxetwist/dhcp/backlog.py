"""DISCOVERs waiting while the server is behind: which to answer next and which to drop.

When a power-on burst or a flood arrives faster than the server answers, the socket's reader
answers REQUESTs at once (each finishes an exchange already paid for with an OFFER) and holds
the DISCOVERs here.  They are answered oldest first; one older than ``stale_after`` is dropped,
since its client has retransmitted it by then (RFC 2131 §4.1) and the retransmission is the one
worth answering; past ``limit`` held, the oldest go.  Pure: time is passed in.
"""

from __future__ import annotations

from collections import deque
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
    """A first-in, first-out queue of DISCOVERs, each with the time it was queued."""

    def __init__(self, stale_after: float = STALE_AFTER, limit: int = HELD_LIMIT) -> None:
        self.stale_after = stale_after
        self.limit = limit
        self.stale = 0  # dropped since the start: older than a client waits
        self.overflow = 0  # dropped since the start: more than ``limit`` held
        self._queue: deque[tuple[float, T]] = deque()

    def __len__(self) -> int:
        return len(self._queue)

    def hold(self, queued_at: float, discover: T) -> None:
        self._queue.append((queued_at, discover))

    def take(self, count: int, now: float) -> list[T]:
        """Drop what is too old or too many, then the ``count`` oldest of the rest."""
        queue = self._queue
        cutoff = now - self.stale_after
        while queue and queue[0][0] < cutoff:
            queue.popleft()
            self.stale += 1
        while len(queue) > self.limit:
            queue.popleft()
            self.overflow += 1
        return [queue.popleft()[1] for _ in range(min(count, len(queue)))]

    def clear(self) -> None:
        self._queue.clear()


__all__ = ["HELD_LIMIT", "STALE_AFTER", "HeldDiscovers"]
