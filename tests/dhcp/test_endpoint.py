"""The DHCP endpoint (the I/O layer) without a lab: one event per packet, logged within the
config's log budget, malformed packets included (issue 18 defect 6)."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.logger import ILogObserver, formatEvent, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config.load import parse_config
from pxetwist.dhcp.engine import DhcpEngine, Interface, pools_for
from pxetwist.dhcp.leases import LeaseTable
from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, encode
from pxetwist.dhcp.protocol import DhcpEndpoint
from pxetwist.dhcp.store import MemoryLeaseStore
from pxetwist.events import BootEvent, BootEventBus, EventStage, LogObserver
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.plugins import build_policies
from pxetwist.policy.sightings import SightingRegistry
from tests.util import temp_dir


class _Socket:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []

    def sendto(self, data: bytes, address: tuple[str, int]) -> int:
        self.sent.append((data, address))
        return len(data)


class EndpointCase(SynchronousTestCase):
    lines = 3

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.logged: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.logged.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        work = temp_dir(self)
        config = parse_config(
            f"interfaces: [eth0]\ndata_dir: {work}\n"
            "dhcp:\n  mode: authoritative\n  subnets:\n"
            "    - network: 10.9.0.0/16\n      range: [10.9.1.0, 10.9.1.255]\n"
            f"tftp: {{enabled: false, root: {work}}}\nhttp: {{enabled: false, root: {work}}}\n",
            "<test>",
            work,
        )
        self.socket = _Socket()
        self.events: list[BootEvent] = []
        bus = BootEventBus()
        bus.subscribe(self.events.append)
        bus.subscribe(LogObserver(self.clock, lines=self.lines, interval=1.0))
        interface = Interface("eth0", IPv4Address("10.9.0.1"), IPv4Network("10.9.0.0/16"))
        self.endpoint = DhcpEndpoint(
            sock=self.socket,  # type: ignore[arg-type]
            interface=interface,
            port=67,
            engine=DhcpEngine(config, LeaseTable(pools_for(config)), [interface.address]),
            chain=PolicyChain(tuple(build_policies(config)), self.clock),
            store=MemoryLeaseStore(),
            sightings=SightingRegistry(self.clock.seconds),
            clock=self.clock,
            events=bus,
        )

    def discover(self, n: int) -> None:
        packet = DhcpPacket(
            xid=n,
            chaddr=bytes.fromhex("5254000000") + bytes((n,)),
            options=[(OptionCode.MESSAGE_TYPE, bytes((MessageType.DISCOVER,)))],
        )
        self.endpoint.datagram_received(encode(packet), ("0.0.0.0", 68), None)

    def lines_logged(self) -> list[str]:
        return [
            str(formatEvent(event))
            for event in self.logged
            if str(event.get("log_namespace", "")).startswith("pxetwist.dhcp")
        ]


class LogBudgetTests(EndpointCase):
    """Past ``log_budget.lines`` per interval, lines are counted and summed up; packets are
    still answered and still reported as events."""

    def test_over_budget_packets_are_answered_and_summed_up(self) -> None:
        for n in range(7):
            self.discover(n)
        self.assertEqual(len(self.socket.sent), 7)  # every one answered
        self.assertEqual(len(self.events), 7)  # and reported
        lines = self.lines_logged()
        self.assertEqual(len(lines), 3, lines)
        self.assertTrue(all("DISCOVER from 52:54:00:00:00:0" in line for line in lines), lines)
        self.clock.advance(1.0)
        self.assertEqual(
            self.lines_logged()[3:],
            ["4 more DHCP lines in 1 s, over the budget of 3 lines logged one by one: "
             "4 discover ok"],
        )  # fmt: skip
        # A new interval starts a new budget.
        self.discover(8)
        self.assertEqual(len(self.lines_logged()), 5)
        self.clock.advance(5.0)
        self.assertEqual(len(self.lines_logged()), 5)  # nothing more to sum up

    def test_malformed_packets_are_within_the_budget(self) -> None:
        """Defect 6: each malformed packet logged its own warning, outside any budget."""
        for n in range(1000):
            self.endpoint.datagram_received(bytes((n % 256,)) * 250, ("10.9.0.7", 68), None)
        self.assertEqual(len(self.events), 1000)
        self.assertTrue(all(event.stage is EventStage.INVALID for event in self.events))
        self.clock.advance(1.0)
        lines = self.lines_logged()
        self.assertEqual(len(lines), 4, lines)
        self.assertIn("dropped a malformed DHCP packet from 10.9.0.7:68 on eth0", lines[0])
        self.assertEqual(
            lines[3],
            "997 more DHCP lines in 1 s, over the budget of 3 lines logged one by one: "
            "997 invalid dropped",
        )
        self.assertEqual(self.socket.sent, [])


class UnlimitedTests(EndpointCase):
    lines = 0  # log_budget.lines: 0 writes every line

    def test_every_line(self) -> None:
        for n in range(20):
            self.discover(n)
        self.clock.advance(2.0)
        self.assertEqual(len(self.lines_logged()), 20)


class _SharedStoreLosing(MemoryLeaseStore):
    """A shared store whose claims fail as the database would decide (issue 15)."""

    def __init__(self, error: Exception) -> None:
        super().__init__()
        self.error = error

    def write(self, changes: Any) -> Any:
        from twisted.internet.defer import fail

        return fail(self.error)


class SharedStoreTests(EndpointCase):
    """A REQUEST whose address another server claimed first gets a NAK; with the database
    unreachable nothing is sent (no ACK without a committed lease)."""

    def request(self) -> None:
        packet = DhcpPacket(
            xid=77,
            chaddr=bytes.fromhex("525400000009"),
            options=[
                (OptionCode.MESSAGE_TYPE, bytes((MessageType.REQUEST,))),
                (OptionCode.REQUESTED_IP, IPv4Address("10.9.1.5").packed),
            ],
        )
        self.endpoint.datagram_received(encode(packet), ("0.0.0.0", 68), None)

    def sent_types(self) -> list[MessageType | None]:
        from pxetwist.dhcp.packet import decode

        return [decode(data).message_type for data, _ in self.socket.sent]

    def test_claim_lost_is_a_nak(self) -> None:
        from pxetwist.dhcp.pgstore import AddressClaimed

        self.endpoint.store = _SharedStoreLosing(AddressClaimed("10.9.1.5"))
        self.request()
        self.assertEqual(self.sent_types(), [MessageType.NAK])
        self.assertIn(b"another server", self.socket.sent[0][0])

    def test_database_unreachable_sends_nothing(self) -> None:
        from pxetwist.dhcp.pgstore import StoreUnavailable

        self.endpoint.store = _SharedStoreLosing(StoreUnavailable("down"))
        self.request()
        self.request()
        self.assertEqual(self.sent_types(), [])
        self.assertEqual(self.events[-1].details.get("reason"), "lease not stored")


class BugTests(EndpointCase):
    """A bug that raises on every packet is logged with its traceback, not once per packet."""

    def test_an_error_on_every_packet_is_logged_every_ten_seconds(self) -> None:
        def broken(*args: object, **kwargs: object) -> None:
            raise ZeroDivisionError("a bug")

        self.endpoint.engine.answer = broken  # type: ignore[method-assign,assignment]
        for n in range(50):
            self.discover(n)
        self.assertEqual(self.endpoint.unexpected_errors, 50)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.clock.advance(10)
        self.discover(99)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.assertIn("(51 so far; logged every 10 s)", self.lines_logged()[-1])
