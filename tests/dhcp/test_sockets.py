"""The DHCP socket's reader when the server is behind: what it answers and what it sheds.

A full batch means the server is behind: it reads ahead, answers every REQUEST at once and holds
the DISCOVERs, a batch of them answered per turn of the reactor.  One that waited more than
``stale_after`` since the kernel queued it is dropped (its client retransmits at 4 s, RFC 2131
§4.1), and so are the oldest past ``held_max``.  A power-on burst the server can answer in time
is answered whole.
The first tests feed the reader a scripted socket; the last ones use a real socket on
loopback, so the kernel's own timestamps and buffer accounting are what is read.
"""

from __future__ import annotations

import select
import socket
import struct
import time
from collections.abc import Callable
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp.backlog import STALE_AFTER
from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, decode, encode
from pxetwist.dhcp.sockets import DatagramReader, open_udp_socket

_SO_TIMESTAMPNS = 35
NOW = 1_800_000_000.0  # the scripted wall clock


def datagram(kind: MessageType, n: int) -> bytes:
    options = [(OptionCode.MESSAGE_TYPE, bytes((kind,)))]
    return encode(DhcpPacket(xid=n, chaddr=bytes(5) + bytes((n,)), options=options))


def stamp(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@qq", whole, int((seconds - whole) * 1e9))


class _QueuedSocket:
    """Datagrams waiting, each queued ``age`` seconds before ``NOW``."""

    def __init__(
        self, waiting: list[tuple[bytes, float]], sources: dict[int, tuple[str, int]] | None = None
    ) -> None:
        self.waiting = list(waiting)
        self.sources = sources or {}  # by position in ``waiting``; else a relay's
        self.read = 0
        self.closed = False

    def recvmsg(self, size: int, ancillary: int) -> tuple[bytes, list[Any], int, tuple[str, int]]:
        if not self.waiting:
            raise BlockingIOError
        data, age = self.waiting.pop(0)
        source = self.sources.get(self.read, ("10.9.0.2", 67))
        self.read += 1
        return data, [(socket.SOL_SOCKET, _SO_TIMESTAMPNS, stamp(NOW - age))], 0, source

    def close(self) -> None:
        self.closed = True


D, R = MessageType.DISCOVER, MessageType.REQUEST


class BehindTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.seen: list[int] = []
        self.soon: list[Callable[[], None]] = []

    def reader(
        self,
        kinds: list[tuple[MessageType, float]],
        sources: dict[int, tuple[str, int]] | None = None,
        **kwargs: Any,
    ) -> tuple[_QueuedSocket, DatagramReader]:
        """A reader of a socket with ``(kind, age)`` datagrams queued, each numbered (xid)."""
        sock = _QueuedSocket(
            [(datagram(kind, n), age) for n, (kind, age) in enumerate(kinds)], sources
        )
        reader = DatagramReader(
            sock,  # type: ignore[arg-type]
            lambda data, source, destination: self.seen.append(decode(data).xid),
            batch=4,
            call_soon=self.soon.append,
            wall_clock=lambda: NOW,
            **kwargs,
        )
        return sock, reader

    def run_soon(self) -> None:
        while self.soon:
            self.soon.pop(0)()

    def test_keeping_up_everything_in_order(self) -> None:
        """Less than a batch waiting: handled as it came, even old (the reactor was paused)."""
        old = STALE_AFTER * 3
        _, reader = self.reader([(D, old), (R, old), (D, old)])
        reader.doRead()
        self.assertEqual((self.seen, reader.held, reader.stale, self.soon), ([0, 1, 2], 0, 0, []))

    def test_behind_requests_first_then_discovers_a_batch_a_turn(self) -> None:
        _, reader = self.reader(
            [(D, 0.1), (R, 0.1), (D, 0.1), (D, 0.1), (D, 0.1), (R, 0.1), (D, 0)]
        )
        reader.doRead()
        self.assertEqual(self.seen, [1, 5, 0, 2, 3, 4])  # all read at once: REQUESTs jump
        self.assertEqual((reader.held, len(self.soon)), (1, 1))
        self.run_soon()  # the next turn of the reactor, with nothing new on the socket
        self.assertEqual(self.seen[6:], [6])
        self.assertEqual((reader.held, reader.stale, reader.overflow), (0, 0, 0))

    def test_a_flood_through_one_relay_does_not_hold_back_a_client_on_the_link(self) -> None:
        """The held DISCOVERs' sources take turns: the client on the link (from 0.0.0.0:68)
        is answered in the first turn, not after the flood's 20 (the lab's mutated flood)."""
        _, reader = self.reader([(D, 0.1)] * 20 + [(D, 0)], sources={20: ("0.0.0.0", 68)})
        reader.doRead()
        self.assertEqual(self.seen, [0, 20, 1, 2])
        self.run_soon()
        self.assertEqual(sorted(self.seen), list(range(21)))

    def test_a_burst_answered_in_time_is_answered_whole(self) -> None:
        """A power-on burst: many turns' worth of DISCOVERs, none shed while young enough."""
        _, reader = self.reader([(D, 0.5)] * 40)
        reader.doRead()
        self.run_soon()
        self.assertEqual(sorted(self.seen), list(range(40)))
        self.assertEqual((reader.stale, reader.overflow), (0, 0))

    def test_discovers_waiting_too_long_are_dropped(self) -> None:
        """Older than ``stale_after``: DISCOVERs dropped, the REQUEST answered all the same."""
        old = STALE_AFTER + 0.5
        _, reader = self.reader([(D, old), (R, old), (D, old), (D, 1.0), (D, 0.5)])
        reader.doRead()
        self.assertEqual(self.seen, [1, 3, 4])
        self.assertEqual((reader.stale, reader.overflow, reader.held), (2, 0, 0))

    def test_held_discovers_age_while_they_wait(self) -> None:
        clock = [NOW]
        sock = _QueuedSocket([(datagram(D, n), 0.0) for n in range(10)])
        reader = DatagramReader(
            sock,  # type: ignore[arg-type]
            lambda data, source, destination: self.seen.append(decode(data).xid),
            batch=4,
            call_soon=self.soon.append,
            wall_clock=lambda: clock[0],
        )
        reader.doRead()
        self.assertEqual((self.seen, reader.held), ([0, 1, 2, 3], 6))
        clock[0] += STALE_AFTER + 0.1  # a slow turn: the rest went stale meanwhile
        self.run_soon()
        self.assertEqual((self.seen, reader.held, reader.stale), ([0, 1, 2, 3], 0, 6))

    def test_at_most_held_max_are_held(self) -> None:
        _, reader = self.reader([(D, 0.1)] * 10, held_max=6)
        reader.doRead()
        self.assertEqual((self.seen, reader.overflow), ([4, 5, 6, 7], 4))  # the oldest went first
        self.run_soon()
        self.assertEqual((self.seen[4:], reader.held), ([8, 9], 0))

    def test_without_timestamps_the_reading_time_counts(self) -> None:
        class Unstamped(_QueuedSocket):
            def recvmsg(self, size: int, ancillary: int) -> Any:
                data, _, flags, source = super().recvmsg(size, ancillary)
                return data, [], flags, source

        waiting = [(datagram(kind, n), 60.0) for n, kind in enumerate([D, R, D, D])]
        reader = DatagramReader(
            Unstamped(waiting),  # type: ignore[arg-type]
            lambda data, source, destination: self.seen.append(decode(data).xid),
            batch=4,
            wall_clock=lambda: NOW,
        )
        reader.doRead()
        self.assertEqual((sorted(self.seen), reader.stale), ([0, 1, 2, 3], 0))

    def test_closed_a_reader_handles_nothing_more(self) -> None:
        sock, reader = self.reader([(D, 0.1)] * 6)
        reader.doRead()
        reader.close()
        self.run_soon()
        self.assertEqual((self.seen, reader.held, sock.closed), ([0, 1, 2, 3], 0, True))


class KernelTimestampTests(SynchronousTestCase):
    """A real socket on loopback: the kernel stamps each datagram as it queues it."""

    def setUp(self) -> None:
        self.server = open_udp_socket(None, 0, "127.0.0.1")
        self.addCleanup(self.server.close)
        self.client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.client.close)
        self.wait_for_arrival_stamps()

    def wait_for_arrival_stamps(self) -> None:
        """Linux turns receive timestamps on through deferred work (``net_enable_timestamp``):
        until then a datagram is stamped when it is read, not when it arrived.  Probe until a
        datagram's stamp is older than its reading."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            self.client.sendto(b"probe", self.server.getsockname())
            time.sleep(0.05)
            _, ancillary, _, _ = self.server.recvmsg(64, 256)
            read_at = time.time()
            for _level, kind, value in ancillary:
                if kind == _SO_TIMESTAMPNS:
                    seconds, nanoseconds = struct.unpack("@qq", value)
                    if seconds + nanoseconds * 1e-9 < read_at - 0.03:
                        return
        self.fail("the kernel never stamped a datagram on arrival")

    def queue(self, kinds: list[MessageType], first: int = 0) -> float:
        """Send ``kinds`` (xids from ``first``); return the time just before they were sent."""
        sent_at = time.time()
        for n, kind in enumerate(kinds, first):
            self.client.sendto(datagram(kind, n), self.server.getsockname())
        # loopback queues a datagram before sendto returns
        self.assertEqual(select.select([self.server], [], [], 5)[0], [self.server])
        return sent_at

    def read_at(self, wall_clock: float) -> tuple[list[int], DatagramReader]:
        seen: list[int] = []
        reader = DatagramReader(
            self.server,
            lambda data, source, destination: seen.append(decode(data).xid),
            batch=4,
            wall_clock=lambda: wall_clock,
        )
        reader.doRead()
        return seen, reader

    def test_each_datagram_is_aged_by_the_kernels_timestamp(self) -> None:
        self.queue([D, R, D])
        time.sleep(0.3)
        later = self.queue([D, D, D], first=3)
        # as if the reader came STALE_AFTER - 0.1 s after the second group was sent: the
        # first group's DISCOVERs, queued 0.3 s before, are stale; the second's are not
        seen, reader = self.read_at(later + STALE_AFTER - 0.1)
        self.assertEqual((seen, reader.stale, reader.held), ([1, 3, 4, 5], 2, 0))

    def test_fresh_datagrams_are_all_answered(self) -> None:
        self.queue([D, R, D, D, D, D])
        seen, reader = self.read_at(time.time())
        self.assertEqual((seen, reader.stale, reader.held), ([1, 0, 2, 3, 4], 0, 1))
