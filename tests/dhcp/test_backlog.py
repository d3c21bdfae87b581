"""The held DISCOVERs of a server that is behind: oldest first, dropped when stale or too many.

Pure, time passed in.  The 4 s age limit is a client's wait before it retransmits a DISCOVER
(RFC 2131 §4.1); the socket reader that feeds this queue is in test_sockets.py.
"""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp.backlog import STALE_AFTER, HeldDiscovers


class HeldDiscoversTests(SynchronousTestCase):
    def test_oldest_first_a_batch_at_a_time(self) -> None:
        held: HeldDiscovers[str] = HeldDiscovers()
        for n in range(5):
            held.hold(100.0 + n * 0.1, f"d{n}")
        self.assertEqual(held.take(2, now=101.0), ["d0", "d1"])
        self.assertEqual(held.take(10, now=101.0), ["d2", "d3", "d4"])
        self.assertEqual((len(held), held.take(3, now=101.0)), (0, []))
        self.assertEqual((held.stale, held.overflow), (0, 0))

    def test_older_than_a_client_waits_is_dropped(self) -> None:
        held: HeldDiscovers[str] = HeldDiscovers()
        held.hold(100.0, "old")
        held.hold(100.0 + STALE_AFTER, "edge")
        held.hold(103.0, "young")
        now = 100.0 + STALE_AFTER + 0.001  # "old" waited past the limit; "edge" just now
        self.assertEqual(held.take(10, now), ["edge", "young"])
        self.assertEqual((held.stale, held.overflow), (1, 0))

    def test_past_the_limit_the_oldest_go(self) -> None:
        held: HeldDiscovers[int] = HeldDiscovers(limit=3)
        for n in range(7):
            held.hold(100.0, n)
        self.assertEqual(held.take(2, now=100.5), [4, 5])
        self.assertEqual((len(held), held.overflow, held.stale), (1, 4, 0))

    def test_sources_take_turns(self) -> None:
        """A flood through one relay does not hold back a client elsewhere: one each in turn."""
        held: HeldDiscovers[str] = HeldDiscovers()
        for n in range(1000):
            held.hold(100.0, f"flood{n}", "10.0.0.2")
        held.hold(100.5, "lan", "0.0.0.0")
        held.hold(100.6, "rack", "10.0.9.1")
        self.assertEqual(held.take(4, now=101.0), ["flood0", "lan", "rack", "flood1"])
        self.assertEqual(held.take(2, now=101.0), ["flood2", "flood3"])
        self.assertEqual(len(held), 996)

    def test_past_the_limit_the_largest_source_gives_way(self) -> None:
        held: HeldDiscovers[str] = HeldDiscovers(limit=4)
        held.hold(100.0, "lan", "0.0.0.0")
        for n in range(10):
            held.hold(100.0 + n * 0.01, f"flood{n}", "10.0.0.2")
        self.assertEqual((len(held), held.overflow), (4, 7))
        self.assertEqual(held.take(10, now=100.5), ["lan", "flood7", "flood8", "flood9"])

    def test_stale_ones_are_dropped_from_every_source(self) -> None:
        held: HeldDiscovers[str] = HeldDiscovers()
        held.hold(100.0, "old-a", "a")
        held.hold(100.0, "old-b", "b")
        held.hold(104.5, "new-b", "b")
        self.assertEqual(held.take(10, now=104.6), ["new-b"])
        self.assertEqual((len(held), held.stale), (0, 2))

    def test_clear(self) -> None:
        held: HeldDiscovers[int] = HeldDiscovers()
        held.hold(1.0, 1)
        held.clear()
        self.assertEqual((len(held), held.take(1, now=1.0)), (0, []))
