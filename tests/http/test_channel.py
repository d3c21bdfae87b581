"""Slow and oversized HTTP clients (issue 18, defect 5): :mod:`pxetwist.http.channel`, in memory.

Each test opens connections on a :class:`BootSite` with a fake clock and a string transport, and
checks what the client reads and when the connection is closed: a deadline for the headers, one
for the body, the right 4xx status (with a length and ``Connection: close``) for whatever is too
large or malformed, and the cap on idle connections per client address.
"""

from __future__ import annotations

import resource
import shutil
import tempfile
from pathlib import Path

from twisted.internet import address
from twisted.internet.error import ConnectionDone
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config import parse_config
from pxetwist.config.model import HttpConfig
from pxetwist.events import BootEvent, BootEventBus, Outcome
from pxetwist.http.channel import BootChannel
from pxetwist.http.service import idle_cap
from pxetwist.http.site import BootSite
from pxetwist.http.static import BootFiles
from tests.config.test_load import error_for

_HOST = address.IPv4Address("TCP", "10.77.0.1", 8080)
_BODY = b"kernel bytes\n"
_GET = b"GET /linux HTTP/1.1\r\nHost: x\r\n\r\n"

LIMITS = HttpConfig(
    header_timeout=5.0,
    body_timeout=4.0,
    keepalive_timeout=30.0,
    max_header_line=1024,
    max_header_size=4096,
    max_headers=20,
    max_body=1000,
    max_idle_per_client=3,
    send_timeout=3.0,
)


def _peer(host: str = "10.77.1.5", port: int = 40000) -> address.IPv4Address:
    return address.IPv4Address("TCP", host, port)


class _Connection:
    """One client connection to the site, driven by hand."""

    def __init__(self, case: ChannelTestCase, peer: address.IPv4Address) -> None:
        channel = case.site.buildProtocol(peer)
        assert isinstance(channel, BootChannel)
        self.channel = channel
        self.transport = StringTransport(hostAddress=_HOST, peerAddress=peer)
        channel.makeConnection(self.transport)
        case.addCleanup(self.lose)

    def send(self, data: bytes) -> None:
        self.channel.dataReceived(data)

    def read(self) -> bytes:
        data: bytes = self.transport.value()
        return data

    @property
    def closed(self) -> bool:
        return bool(self.transport.disconnecting or self.transport.disconnected)

    def lose(self) -> None:
        if self.channel.transport is not None and not getattr(self, "_lost", False):
            self._lost = True
            self.channel.connectionLost(Failure(ConnectionDone()))


class ChannelTestCase(SynchronousTestCase):
    limits = LIMITS

    def setUp(self) -> None:
        root = Path(tempfile.mkdtemp(prefix="pxetwist-http-channel-"))
        self.addCleanup(shutil.rmtree, root, True)
        (root / "linux").write_bytes(_BODY)
        (root / "big").write_bytes(b"b" * (4 << 20))
        self.clock = MemoryReactorClock()
        self.events: list[BootEvent] = []
        bus = BootEventBus()
        bus.subscribe(self.events.append)
        self.site = BootSite(
            BootFiles(root, self.clock), self.clock, events=bus, limits=lambda: self.limits
        )

    def connect(self, peer: address.IPv4Address | None = None) -> _Connection:
        return _Connection(self, peer or _peer())

    def settle(self) -> None:
        for _ in range(20):
            self.clock.advance(0)

    def assertRefused(self, connection: _Connection, status: int, since: int = 0) -> None:
        """``connection`` got ``status`` (after its first ``since`` bytes) and was closed."""
        response = connection.read()[since:]
        self.assertTrue(response.startswith(b"HTTP/1.1 %d " % status), response[:200])
        head, _, body = response.partition(b"\r\n\r\n")
        self.assertIn(b"\r\nConnection: close\r\n", head + b"\r\n")
        self.assertIn(b"\r\nContent-Length: %d" % len(body), head)
        self.assertTrue(connection.closed, "the connection is closed after the refusal")
        [event] = [e for e in self.events if e.details["status"] == status]
        self.assertIs(event.outcome, Outcome.DROPPED)
        self.assertEqual(str(event.client), connection.transport.getPeer().host)


class HeaderDeadlineTests(ChannelTestCase):
    def test_a_byte_a_second_is_cut_off_at_the_deadline(self) -> None:
        """The defect: Twisted's idle timer restarts on every byte, so a slow client is never
        closed.  Headers get 5 s in all, however the bytes trickle in."""
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\n")
        for _ in range(4):
            self.clock.advance(1.0)
            connection.send(b"X")
        self.assertFalse(connection.closed)
        self.clock.advance(1.0)
        self.assertRefused(connection, 408)
        self.assertEqual(self.events[0].details["path"], "/linux")
        # Once refused, more bytes change nothing.
        connection.send(b"-Header: y\r\n\r\n")
        self.assertEqual(len(self.events), 1)

    def test_silent_connection_is_closed_without_a_status(self) -> None:
        connection = self.connect()
        self.clock.advance(4.9)
        self.assertFalse(connection.closed)
        self.clock.advance(0.2)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.read(), b"")
        self.assertEqual([e.details["status"] for e in self.events], [None])
        self.assertEqual(self.events[0].message, "")  # nothing asked: nothing worth a log line

    def test_headers_in_time_are_served(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\n")
        self.clock.advance(4.0)
        connection.send(b"Host: x\r\n\r\n")
        self.settle()
        self.assertTrue(connection.read().endswith(_BODY))
        self.assertFalse(connection.closed)

    def test_kept_alive_connection_waits_for_the_keepalive_timeout(self) -> None:
        """Between requests the keep-alive timer applies; the next request's first byte starts
        its own header deadline."""
        connection = self.connect()
        connection.send(_GET)
        self.settle()
        answered = len(connection.read())
        self.clock.advance(20.0)  # longer than the header deadline, shorter than keep-alive
        self.assertFalse(connection.closed)
        connection.send(b"GET /linux HT")
        self.clock.advance(4.0)
        self.assertFalse(connection.closed)
        self.clock.advance(1.5)
        self.assertRefused(connection, 408, since=answered)

    def test_idle_kept_alive_connection_is_closed_quietly(self) -> None:
        connection = self.connect()
        connection.send(_GET)
        self.settle()
        before = connection.read()
        self.clock.advance(31.0)
        self.assertTrue(connection.closed)
        self.assertEqual(connection.read(), before)

    def test_pipelined_requests_are_all_answered(self) -> None:
        connection = self.connect()
        connection.send(_GET * 3)
        self.settle()
        self.assertEqual(connection.read().count(_BODY), 3)
        self.assertEqual([e.details["status"] for e in self.events], [200, 200, 200])

    def test_unanswered_client_is_aborted(self) -> None:
        """A refused client that does not read its answer loses the connection anyway."""
        connection = self.connect()
        connection.send(b"GET /")
        self.clock.advance(5.0)
        self.assertTrue(connection.transport.disconnecting)
        self.clock.advance(5.0)
        self.assertTrue(connection.transport.disconnected)


class BodyTests(ChannelTestCase):
    def test_huge_content_length_is_413_at_once(self) -> None:
        """The defect: Twisted waits for the whole announced body and the client hears nothing."""
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999\r\n\r\n")
        self.assertRefused(connection, 413)

    def test_absurd_content_length_is_413(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nContent-Length: " + b"9" * 900 + b"\r\n\r\n")
        self.assertRefused(connection, 413)

    def test_small_body_is_read_and_the_file_served(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
        self.settle()
        self.assertTrue(connection.read().startswith(b"HTTP/1.1 200 "))
        self.assertTrue(connection.read().endswith(_BODY))

    def test_stalled_body_gets_408(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\nabc")
        self.clock.advance(3.0)
        connection.send(b"d")  # a byte now and then does not extend the body deadline
        self.assertFalse(connection.closed)
        self.clock.advance(1.0)
        self.assertRefused(connection, 408)

    def test_stalled_chunked_body_gets_408(self) -> None:
        """The defect's other half: a chunked body that never ends got no answer."""
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nab")
        self.clock.advance(4.0)
        self.assertRefused(connection, 408)

    def test_malformed_chunked_body_gets_400_with_a_length(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        self.assertRefused(connection, 400)

    def test_chunked_body_over_the_limit_is_413(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n")
        for _ in range(1000):
            connection.send(b"1\r\nx\r\n")
            if connection.closed:
                break
        self.assertRefused(connection, 413)

    def test_chunked_body_within_the_limit(self) -> None:
        connection = self.connect()
        connection.send(
            b"GET /linux HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
        )
        self.settle()
        self.assertTrue(connection.read().endswith(_BODY))

    def test_unknown_transfer_coding_is_501(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n")
        self.assertRefused(connection, 501)


class SizeTests(ChannelTestCase):
    def test_long_request_line_is_414(self) -> None:
        """The defect: an oversized line closed the connection without a status."""
        connection = self.connect()
        connection.send(b"GET /" + b"a" * 2000 + b" HTTP/1.1\r\n\r\n")
        self.assertRefused(connection, 414)
        self.assertTrue(str(self.events[0].details["path"]).startswith("/aaaa"))

    def test_long_request_line_without_end_is_414(self) -> None:
        connection = self.connect()
        connection.send(b"GET /" + b"a" * 2000)
        self.assertRefused(connection, 414)

    def test_long_header_line_is_431(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nX-Big: " + b"b" * 2000 + b"\r\n\r\n")
        self.assertRefused(connection, 431)
        self.assertEqual(self.events[0].details["path"], "/linux")

    def test_too_many_headers_is_431(self) -> None:
        connection = self.connect()
        fields = b"".join(b"X-H%d: v\r\n" % i for i in range(21))
        connection.send(b"GET /linux HTTP/1.1\r\n" + fields + b"\r\n")
        self.assertRefused(connection, 431)

    def test_as_many_headers_as_allowed_are_fine(self) -> None:
        connection = self.connect()
        fields = b"".join(b"X-H%d: v\r\n" % i for i in range(20))
        connection.send(b"GET /linux HTTP/1.1\r\n" + fields + b"\r\n")
        self.settle()
        self.assertTrue(connection.read().startswith(b"HTTP/1.1 200 "))

    def test_header_section_too_large_is_431(self) -> None:
        connection = self.connect()
        fields = b"".join(b"X-H%d: %s\r\n" % (i, b"v" * 900) for i in range(6))
        connection.send(b"GET /linux HTTP/1.1\r\n" + fields + b"\r\n")
        self.assertRefused(connection, 431)

    def test_malformed_request_line_is_400(self) -> None:
        connection = self.connect()
        connection.send(b"NONSENSE\r\n\r\n")
        self.assertRefused(connection, 400)

    def test_malformed_header_is_400(self) -> None:
        connection = self.connect()
        connection.send(b"GET /linux HTTP/1.1\r\nno colon here\r\n\r\n")
        self.assertRefused(connection, 400)


class SendTimeoutTests(ChannelTestCase):
    """A client that stops reading a response does not keep its connection (and file) for ever."""

    def test_stalled_download_is_aborted(self) -> None:
        connection = self.connect()
        connection.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        channel = connection.channel
        channel.pauseProducing()  # what the transport does when the client's window is full
        for _ in range(2):  # the client reads now and then: each bit of progress counts
            self.clock.advance(2.5)
            channel.resumeProducing()
            channel.pauseProducing()
        self.assertFalse(connection.closed)
        self.clock.advance(3.0)
        self.assertTrue(connection.transport.disconnected, "aborted, not closed gracefully")
        connection.lose()
        [event] = self.events
        self.assertEqual((event.details["complete"], event.outcome), (False, Outcome.FAILED))
        self.assertEqual(event.details["status"], 200)

    def test_keepalive_timer_is_back_after_the_response(self) -> None:
        connection = self.connect()
        connection.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        self.settle()
        self.assertTrue(connection.read().endswith(b"b" * 1000))
        self.clock.advance(10.0)  # past the send timeout, within keep-alive
        self.assertFalse(connection.closed)
        self.clock.advance(21.0)
        self.assertTrue(connection.closed)
        self.assertFalse(connection.transport.disconnected, "closed gracefully, not aborted")


class IdleCapTests(ChannelTestCase):
    def test_oldest_idle_connection_makes_room(self) -> None:
        """A fourth idle connection from one address closes the oldest idle one."""
        first = self.connect(_peer(port=1))
        first.send(b"GET /li")  # started a request: it is told why it is closed
        self.clock.advance(2.0)
        others = [self.connect(_peer(port=p)) for p in (2, 3)]
        self.assertFalse(first.closed)
        newest = self.connect(_peer(port=4))
        self.assertRefused(first, 408)
        self.assertFalse(any(c.closed for c in [*others, newest]))
        # The newest one is served.
        newest.send(_GET)
        self.settle()
        self.assertTrue(newest.read().endswith(_BODY))

    def test_other_addresses_do_not_count(self) -> None:
        mine = [self.connect(_peer(port=p)) for p in range(3)]
        self.clock.advance(3.0)
        theirs = [self.connect(_peer("10.77.1.6", p)) for p in range(3)]
        self.assertFalse(any(c.closed for c in mine + theirs))

    def test_a_burst_of_fresh_connections_is_not_cut(self) -> None:
        """Parallel downloads from one address open many connections at once: none of them has
        been idle long enough to be displaced before its request arrives."""
        burst = [self.connect(_peer(port=p)) for p in range(10)]
        self.assertFalse(any(c.closed for c in burst))
        for connection in burst:
            connection.send(_GET)
        self.settle()
        self.assertTrue(all(c.read().endswith(_BODY) for c in burst))

    def test_busy_connections_are_not_idle(self) -> None:
        """A connection is idle while it waits for or receives a request, not while answered."""
        busy = [self.connect(_peer(port=p)) for p in range(4)]
        for connection in busy:
            connection.send(b"GET /big HTTP/1.1\r\nContent-Length: 3\r\n\r\nab")
        self.assertEqual(self.site.idle.count("10.77.1.5"), 4)  # over the cap, all fresh
        self.clock.advance(3.0)
        for connection in busy:
            connection.send(b"c")  # the body is complete: a 4 MiB answer is under way
        self.assertEqual(self.site.idle.count("10.77.1.5"), 0)
        self.connect(_peer(port=9))  # one idle connection: nobody has to make room
        self.assertFalse(any(c.closed for c in busy))
        self.settle()
        self.assertEqual(self.site.idle.count("10.77.1.5"), 1 + 4)  # answered: idle again

    def test_total_cap_closes_the_oldest_of_any_address_at_once(self) -> None:
        """Over the total cap (set from the open-file limit) the oldest idle connection of any
        address is closed, however fresh: idle connections never take every descriptor."""
        self.site.idle.total_cap = 4
        first = self.connect(_peer("10.77.1.1"))
        others = [self.connect(_peer(f"10.77.1.{n}")) for n in range(2, 5)]
        self.assertFalse(first.closed)
        newest = self.connect(_peer("10.77.1.9"))
        self.assertTrue(first.closed)
        self.assertFalse(any(c.closed for c in [*others, newest]))
        self.assertEqual(len(self.site.idle), 4)

    def test_pipelined_request_being_answered_is_not_idle(self) -> None:
        """A request that arrived during a long answer is started as soon as that one ends: the
        connection stays busy, it is never marked idle while answering."""
        busy_when_marked: list[bool] = []
        mark_idle = self.site.idle.mark_idle

        def recording(channel: BootChannel, cap: int) -> None:
            busy_when_marked.append(channel._handlingRequest)
            mark_idle(channel, cap)

        self.patch(self.site.idle, "mark_idle", recording)
        connection = self.connect()
        connection.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        connection.send(b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")  # buffered meanwhile
        self.settle()
        self.assertEqual(len(connection.read()) // (4 << 20), 2)
        self.assertEqual(busy_when_marked, [False, False])  # on connect, after the second
        self.assertEqual(self.site.idle.count("10.77.1.5"), 1)

    def test_idle_keepalive_connection_is_displaced_quietly(self) -> None:
        first = self.connect(_peer(port=1))
        first.send(_GET)
        self.settle()
        answered = first.read()
        self.clock.advance(3.0)
        for port in (2, 3, 4):
            self.connect(_peer(port=port))
        self.assertTrue(first.closed)
        self.assertEqual(first.read(), answered)


class IdleCapFromLimitTests(SynchronousTestCase):
    def test_half_of_what_is_left(self) -> None:
        self.assertEqual(idle_cap(6512), 3000)  # the limit the service asks for
        self.assertEqual(idle_cap(1024), 384)
        self.assertEqual(idle_cap(300), 112)
        self.assertEqual(idle_cap(40), 16)
        self.assertIsNone(idle_cap(resource.RLIM_INFINITY))


class ConfigTests(SynchronousTestCase):
    def test_keys_and_defaults(self) -> None:
        default = parse_config("").http
        self.assertEqual(
            (default.header_timeout, default.body_timeout, default.max_idle_per_client),
            (HttpConfig().header_timeout, HttpConfig().body_timeout, 64),
        )
        http = parse_config(
            "http:\n  header_timeout: 2.5\n  body_timeout: 3\n  keepalive_timeout: 15\n"
            "  send_timeout: 20\n"
            "  max_header_line: 4096\n  max_header_size: 8192\n  max_headers: 50\n"
            "  max_body: 0\n  max_idle_per_client: 8\n"
        ).http
        self.assertEqual(
            (
                http.header_timeout,
                http.body_timeout,
                http.keepalive_timeout,
                http.send_timeout,
                http.max_header_line,
                http.max_header_size,
                http.max_headers,
                http.max_body,
                http.max_idle_per_client,
            ),
            (2.5, 3.0, 15.0, 20.0, 4096, 8192, 50, 0, 8),
        )

    def test_bad_values(self) -> None:
        self.assertIn(
            "http.header_timeout: 0 must be more than 0", error_for("http: {header_timeout: 0}")
        )
        self.assertIn("http.max_idle_per_client", error_for("http: {max_idle_per_client: 0}"))
