"""The Twisted TFTP adapter on its production path: RFC 1350 §4 TIDs, §6.6 refusals,
concurrency limits, generated boot configs (protocol-reference §6, §7.8, §7.9).

Port 69 is a fake port (it records what the listener writes); every transfer runs on a real
UDP socket on loopback behind the transfer mux, exactly as in production, and the clients are
real sockets on loopback addresses.  Time is a ``Clock``: nothing waits for a real timer.
"""

from __future__ import annotations

import os
import select
import socket
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, cast

from twisted.internet.address import IPv4Address as TwistedAddress
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, Logger
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.bootconfig import BootConfigResolver
from pxetwist.config.model import Config
from pxetwist.context import IServerReactor, ITransferReactor, ServerContext
from pxetwist.events import BootEvent, BootEventBus, EventStage
from pxetwist.events import Outcome as EventOutcome
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.builtin import ArchPolicy, StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import Renderer, ServingContext
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress
from pxetwist.testing import config_from_yaml, make_request
from pxetwist.tftp import files as files_module
from pxetwist.tftp import protocol as protocol_module
from pxetwist.tftp import sockets as sockets_module
from pxetwist.tftp import transfer as transfer_module
from pxetwist.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
    encode_ack,
)
from pxetwist.tftp.protocol import (
    FileResolver,
    FileSource,
    ServerSettings,
    TftpListener,
    TftpServer,
    Transfer,
)
from pxetwist.tftp.service import TftpService
from pxetwist.tftp.sockets import TransferSocket
from tests.util import temp_dir

from .fakes import FakeFDReactor, FakeUDPPort, SocketReactor

SERVER = "127.77.0.1"
CLIENT = ("127.77.0.50", 20000)
OTHER = ("127.77.0.51", 20001)

CONFIG_YAML = """
tftp: {{root: {root}}}
http: {{enabled: false}}
defaults: {{kernel: debian/linux, initrd: debian/initrd.gz, cmdline: "priority=critical"}}
groups:
  compute: {{kernel: compute/vmlinuz, initrd: [compute/initrd.img], cmdline: "console=ttyS0"}}
machines:
  - {{mac: "52:54:00:77:00:10", name: node1, group: compute}}
  - {{mac: "52:54:00:77:00:12", name: node3, action: local}}
"""


def rrq(filename: str, *options: tuple[str, str], mode: str = "octet") -> bytes:
    return encode(ReadRequest(filename, mode, tuple(options)))


class TransferPort:
    """The server's TID of one transfer, as a client sees it: a real socket behind the mux."""

    def __init__(self, harness: Harness, transfer_socket: TransferSocket) -> None:
        self.harness = harness
        self.socket = transfer_socket
        self.address = transfer_socket.getHost()

    @property
    def listening(self) -> bool:
        return self.socket.fileno() >= 0

    def getHost(self) -> Any:
        host, port = self.address
        return TwistedAddress("UDP", host, port)

    def receive(self, datagram: bytes, peer: tuple[str, int]) -> None:
        """``peer`` sends ``datagram`` to this TID; the transfer reads it."""
        self.harness.client(peer).sendto(datagram, self.address)
        self.harness.settle()

    def take(self) -> list[tuple[Packet, tuple[str, int]]]:
        """Decode and forget what this TID sent to any client so far."""
        return self.harness.sent_from(self.address)


class Harness:
    """A listener on SERVER:69 with a root directory and a policy chain; transfers on loopback."""

    def __init__(
        self,
        testcase: SynchronousTestCase,
        *,
        config: Config | None = None,
        chain: Any = None,
        mtu: int = 1500,
        templates: Path | None = None,
        **settings: Any,
    ) -> None:
        self.testcase = testcase
        self.root = temp_dir(testcase)
        self.reactor = SocketReactor()
        self.config = config or config_from_yaml(CONFIG_YAML.format(root=self.root))
        self.neighbours: dict[IPv4Address, MacAddress] = {}
        self.sightings = SightingRegistry(
            self.reactor.seconds, neighbours=lambda: dict(self.neighbours)
        )
        if chain is None:
            chain = PolicyChain(
                [("static", StaticPolicy(self.config)), ("arch", ArchPolicy(self.config))],
                self.reactor,
            )
        self.bus = BootEventBus()
        self.boot_events: list[BootEvent] = []
        self.bus.subscribe(self.boot_events.append)
        self.server = TftpServer(
            ServerSettings(root=self.root, **settings),
            FileResolver(
                BootConfigResolver(
                    ServerContext.build(
                        self.config,
                        chain,
                        cast(IServerReactor, self.reactor),
                        sightings=self.sightings,
                    ),
                    Renderer(templates),
                )
            ),
            cast(ITransferReactor, self.reactor),
            self.bus,
        )
        testcase.addCleanup(self.server.abort_all, "test over")
        self.listener = TftpListener(
            self.server,
            SERVER,
            ServingContext(SERVER, 8080, 69, None, self.root),
            mtu=mtu,
            interface="srv0",
        )
        self.port = self.reactor.listenUDP(69, self.listener, interface=SERVER)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        for module in (protocol_module, files_module, transfer_module, sockets_module):
            testcase.patch(module, "log", Logger(observer=observer))
        self._clients: dict[tuple[str, int], socket.socket] = {}
        self._received: list[tuple[Packet, tuple[str, int], tuple[str, int]]] = []
        self.transfer_ports: list[TransferPort] = []

    def client(self, peer: tuple[str, int]) -> socket.socket:
        """The real socket of the client at ``peer`` (bound on first use)."""
        sock = self._clients.get(peer)
        if sock is None:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind(peer)
            sock.setblocking(False)
            self.testcase.addCleanup(sock.close)
            self._clients[peer] = sock
        return sock

    def settle(self) -> None:
        """Deliver what is in flight on loopback and let the transfer sockets read it."""
        select.select([], [], [], 0.002)
        self.reactor.read_ready()
        select.select([], [], [], 0.002)

    def advance(self, seconds: float) -> None:
        self.reactor.advance(seconds)
        self.settle()

    def sent_from(self, tid: tuple[str, int]) -> list[tuple[Packet, tuple[str, int]]]:
        self._collect()
        mine = [(packet, peer) for packet, source, peer in self._received if source == tid]
        self._received = [item for item in self._received if item[1] != tid]
        return mine

    def _collect(self) -> None:
        for peer, sock in self._clients.items():
            while True:
                try:
                    data, source = sock.recvfrom(70000)
                except OSError:
                    break
                self._received.append((decode(data), source, peer))

    def ended(self) -> list[BootEvent]:
        return [e for e in self.boot_events if e.stage is EventStage.TFTP_TRANSFER]

    def refused(self) -> list[BootEvent]:
        return [e for e in self.boot_events if e.stage is EventStage.TFTP_REQUEST]

    def file(self, name: str, content: bytes) -> bytes:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
        return content

    def request(self, datagram: bytes, peer: tuple[str, int] = CLIENT) -> TransferPort | None:
        """``peer`` sends a datagram to port 69; return the transfer port it opened, if any."""
        self.client(peer)
        mux = self.server._mux
        before = set(mux._sockets.values()) if mux is not None else set()
        self.port.receive(datagram, peer)
        self.settle()
        return self._new_port(before)

    def _new_port(self, before: set[TransferSocket]) -> TransferPort | None:
        mux = self.server._mux
        opened = [s for s in (mux._sockets.values() if mux is not None else ()) if s not in before]
        if not opened:
            return None
        (opened_socket,) = opened
        port = TransferPort(self, opened_socket)
        self.transfer_ports.append(port)
        return port

    def download(self, filename: str, peer: tuple[str, int] = CLIENT) -> bytes:
        """A whole lockstep download, ACKing every block; returns the content."""
        port = self.request(rrq(filename), peer)
        assert port is not None, self.port.take()
        content = b""
        for _ in range(100_000):
            packets = port.take()
            assert packets, "the server stopped sending"
            (packet, addr) = packets[-1]
            assert addr == peer and isinstance(packet, Data), packet
            content += packet.payload
            port.receive(encode_ack(packet.block), peer)
            if len(packet.payload) < 512:
                break
        return content


class ReadTransferTests(SynchronousTestCase):
    def test_file_from_disk_on_a_fresh_port_bound_to_the_receiving_address(self) -> None:
        """RFC 1350 §4: the answer comes from a new TID on the address the RRQ came to."""
        harness = Harness(self)
        content = harness.file("undionly.kpxe", os.urandom(1500))
        port = harness.request(rrq("undionly.kpxe"))
        assert port is not None
        self.assertEqual(port.getHost().host, SERVER)
        self.assertNotEqual(port.getHost().port, 69)
        self.assertEqual(harness.port.written, [])
        got = b""
        for block in (1, 2, 3):
            ((packet, addr),) = port.take()
            self.assertEqual(addr, CLIENT)
            assert isinstance(packet, Data)
            self.assertEqual(packet.block, block)
            got += packet.payload
            port.receive(encode_ack(block), CLIENT)
        self.assertEqual(got, content)
        self.assertFalse(port.listening)
        self.assertEqual(harness.server.busy, 0)
        (done,) = harness.ended()
        self.assertEqual(done.outcome, EventOutcome.OK)
        self.assertEqual(done.client, IPv4Address(CLIENT[0]))
        details = done.details
        self.assertEqual(
            (details["file"], details["bytes"], details["blksize"], details["windowsize"]),
            ("undionly.kpxe", 1500, 512, 1),
        )
        self.assertEqual(
            (details["ended"], details["port"], details["size"]), ("completed", CLIENT[1], 1500)
        )
        self.assertNotIn("generated", details)

    def test_options_windowsize_and_blksize_capped_by_the_mtu(self) -> None:
        """§5 #13: blksize clamped to MTU - 32; RFC 7440: a window of DATA after ACK 0."""
        harness = Harness(self, mtu=1000)
        harness.file("big", bytes(range(256)) * 40)
        port = harness.request(rrq("big", ("blksize", "1468"), ("windowsize", "4"), ("tsize", "0")))
        assert port is not None
        ((oack, _),) = port.take()
        self.assertEqual(
            oack, OptionAck((("blksize", "968"), ("windowsize", "4"), ("tsize", "10240")))
        )
        port.receive(encode_ack(0), CLIENT)
        blocks = [packet for packet, _ in port.take()]
        self.assertEqual([p.block for p in blocks if isinstance(p, Data)], [1, 2, 3, 4])

    def test_max_blksize_overrides_the_mtu(self) -> None:
        harness = Harness(self, mtu=1500, max_blksize=8192)
        harness.file("big", bytes(20000))
        port = harness.request(rrq("big", ("blksize", "65464")))
        assert port is not None
        ((oack, _),) = port.take()
        self.assertEqual(oack, OptionAck((("blksize", "8192"),)))

    def test_big_blocks_clamp_the_window_memory(self) -> None:
        """A window never holds more than WINDOW_BYTES, whatever blksize x windowsize asks."""
        harness = Harness(self, max_blksize=65464, max_windowsize=64)
        harness.file("big", bytes(65464 * 20))
        port = harness.request(rrq("big", ("blksize", "65464"), ("windowsize", "64")))
        assert port is not None
        ((oack, _),) = port.take()
        expected = str(protocol_module.WINDOW_BYTES // 65464)
        self.assertEqual(oack, OptionAck((("blksize", "65464"), ("windowsize", expected))))

    def test_stray_tid_gets_error_5_and_the_transfer_goes_on(self) -> None:
        """RFC 1350 §4 and §7.8 T6."""
        harness = Harness(self)
        content = harness.file("f", os.urandom(700))
        port = harness.request(rrq("f"))
        assert port is not None
        ((first, _),) = port.take()
        port.receive(encode_ack(1), OTHER)
        port.receive(encode_ack(1), (CLIENT[0], CLIENT[1] + 1))
        stray = port.take()
        self.assertEqual(
            stray,
            [
                (Error(ErrorCode.UNKNOWN_TRANSFER_ID, "Unknown transfer ID"), OTHER),
                (
                    Error(ErrorCode.UNKNOWN_TRANSFER_ID, "Unknown transfer ID"),
                    (CLIENT[0], CLIENT[1] + 1),
                ),
            ],
        )
        port.receive(encode_ack(1), CLIENT)
        ((second, _),) = port.take()
        assert isinstance(first, Data) and isinstance(second, Data)
        self.assertEqual(first.payload + second.payload, content)

    def test_one_timer_per_transfer_and_retransmission_on_timeout(self) -> None:
        """RFC 1123 §4.2.3.1/2: resend only on timeout; the adapter keeps one timer."""
        harness = Harness(self, timeout=1.0)
        harness.file("f", os.urandom(512 * 10))
        port = harness.request(rrq("f"))
        assert port is not None
        for block in range(1, 6):
            self.assertLessEqual(len(harness.reactor.getDelayedCalls()), 1)
            port.take()
            port.receive(encode_ack(block), CLIENT)
            port.receive(encode_ack(block), CLIENT)  # duplicate: nothing (Sorcerer's Apprentice)
        self.assertEqual(len(port.take()), 1)
        self.assertEqual(len(harness.reactor.getDelayedCalls()), 1)
        harness.reactor.advance(1.0)
        ((again, _),) = port.take()
        assert isinstance(again, Data)
        self.assertEqual(again.block, 6)

    def test_a_sooner_deadline_arms_a_fresh_call(self) -> None:
        """After a retransmission the timer is backed off, and the next ACK brings it back
        sooner.  The reactor moves a call sooner by a linear search of its heap (every
        transfer's timer, in a storm), so the transfer arms a fresh call instead."""
        harness = Harness(self, timeout=1.0)
        harness.file("f", os.urandom(512 * 10))
        port = harness.request(rrq("f"))
        assert port is not None
        port.take()
        harness.reactor.advance(1.0)  # no ACK: block 1 again, and the timeout backs off
        ((again, _),) = port.take()
        assert isinstance(again, Data)
        (backed_off,) = harness.reactor.getDelayedCalls()

        def no_reset(seconds: float) -> None:
            self.fail("a transfer's timer was moved sooner with reset()")

        backed_off.reset = no_reset  # type: ignore[method-assign,assignment]
        port.receive(encode_ack(1), CLIENT)
        port.take()
        (timer,) = harness.reactor.getDelayedCalls()
        self.assertLess(timer.getTime(), backed_off.getTime())
        self.assertFalse(backed_off.active())
        harness.reactor.advance(timer.getTime() - harness.reactor.seconds())
        ((resent, _),) = port.take()  # the fresh call retransmits block 2
        assert isinstance(resent, Data)
        self.assertEqual(resent.block, 2)

    def test_gives_up_after_the_retries(self) -> None:
        harness = Harness(self, timeout=1.0, retries=3)
        harness.file("f", os.urandom(2000))
        port = harness.request(rrq("f"))
        assert port is not None
        for _ in range(10):
            harness.reactor.advance(10)
        self.assertFalse(port.listening)
        self.assertEqual(harness.server.busy, 0)
        self.assertEqual(harness.reactor.getDelayedCalls(), [])
        (event,) = harness.ended()
        self.assertEqual(
            (event.outcome, event.details["ended"]), (EventOutcome.FAILED, "timed out")
        )
        self.assertEqual(event.details["bytes"], 0)

    def test_client_error_ends_quietly(self) -> None:
        """§7.8 T4: EDK2 answers the OACK with ERROR 8 to end its tsize probe."""
        harness = Harness(self)
        harness.file("shimx64.efi", os.urandom(3000))
        port = harness.request(rrq("shimx64.efi", ("tsize", "0"), ("blksize", "1468")))
        assert port is not None
        port.take()
        port.receive(encode(Error(ErrorCode.OPTION_NEGOTIATION_FAILED, "User aborted")), CLIENT)
        self.assertEqual(port.take(), [])
        self.assertFalse(port.listening)
        self.assertEqual(harness.server.busy, 0)

    def test_the_file_is_closed_when_the_transfer_ends(self) -> None:
        harness = Harness(self)
        harness.file("f", os.urandom(100))
        port = harness.request(rrq("f"))
        assert port is not None
        (slot,) = harness.server.table
        transfer = slot.transfer
        assert isinstance(transfer, Transfer)
        source = transfer.source
        assert isinstance(source, FileSource)
        fd = source._fd
        os.fstat(fd)
        port.receive(encode_ack(1), CLIENT)
        self.assertRaises(OSError, os.fstat, fd)

    def test_duplicate_rrq_does_not_start_a_second_transfer(self) -> None:
        harness = Harness(self)
        harness.file("f", os.urandom(2000))
        self.assertIsNotNone(harness.request(rrq("f")))
        self.assertIsNone(harness.request(rrq("f")))
        self.assertEqual(harness.server.busy, 1)

    def test_exact_multiple_of_the_block_size_ends_with_an_empty_block(self) -> None:
        """RFC 1350 §6: a file of n x blksize ends with a 0-byte DATA."""
        harness = Harness(self)
        content = harness.file("f", os.urandom(1024))
        self.assertEqual(harness.download("f"), content)

    def test_netascii(self) -> None:
        harness = Harness(self)
        harness.file("t", b"a\nb\r")
        port = harness.request(rrq("t", mode="netascii"))
        assert port is not None
        ((packet, _),) = port.take()
        self.assertEqual(packet, Data(1, b"a\r\nb\r\0"))


class RefusalTests(SynchronousTestCase):
    def test_wrq_is_an_access_violation(self) -> None:
        """§6.6: read-only; ERROR 2, no port opened."""
        harness = Harness(self)
        self.assertIsNone(harness.request(encode(WriteRequest("f", "octet"))))
        self.assertEqual(
            harness.port.take(), [(Error(ErrorCode.ACCESS_VIOLATION, "Access violation"), CLIENT)]
        )
        self.assertFalse((harness.root / "f").exists())

    def test_malformed_is_dropped_and_logged_with_the_peer(self) -> None:
        harness = Harness(self)
        for junk in (b"", b"\0", b"\0\x09abc", b"\0\x01name-without-nul", b"\xff" * 600):
            self.assertIsNone(harness.request(junk))
        self.assertEqual(harness.port.written, [])
        dropped = harness.refused()
        self.assertEqual(len(dropped), 5)
        self.assertEqual({e.outcome for e in dropped}, {EventOutcome.DROPPED})
        self.assertEqual(
            {(e.client, e.details["port"]) for e in dropped}, {(IPv4Address(CLIENT[0]), CLIENT[1])}
        )

    def test_not_found_is_error_1(self) -> None:
        """§7.8 T7: the RPi asks for bootsig.bin and expects this."""
        harness = Harness(self)
        self.assertIsNone(harness.request(rrq("bootsig.bin")))
        self.assertEqual(
            harness.port.take(), [(Error(ErrorCode.FILE_NOT_FOUND, "File not found"), CLIENT)]
        )
        self.assertEqual(harness.server.busy, 0)

    def test_traversal_is_refused(self) -> None:
        """§6.6: ``..`` above the root, absolute host paths via symlinks, NUL: ERROR 2."""
        harness = Harness(self)
        outside = temp_dir(self) / "secret"
        outside.write_bytes(b"secret")
        (harness.root / "link").symlink_to(outside)
        (harness.root / "dir").mkdir()
        for name in ("../secret", "a/../../secret", "..\\..\\etc\\passwd", "link", "dir"):
            self.assertIsNone(harness.request(rrq(name)), name)
            ((packet, _),) = harness.port.take()
            self.assertEqual(packet, Error(ErrorCode.ACCESS_VIOLATION, "Access violation"), name)
        self.assertEqual(harness.server.busy, 0)

    def test_busy_limit(self) -> None:
        """Beyond tftp.max_transfers: ERROR 0 "server busy"; room again once one ends."""
        harness = Harness(self, max_transfers=2)
        harness.file("f", os.urandom(100))
        first = harness.request(rrq("f"), ("127.77.0.50", 20011))
        self.assertIsNotNone(harness.request(rrq("f"), ("127.77.0.50", 20012)))
        self.assertIsNone(harness.request(rrq("f"), ("127.77.0.50", 20013)))
        ((packet, addr),) = harness.port.take()
        self.assertEqual(
            (packet, addr),
            (Error(ErrorCode.NOT_DEFINED, "Server busy, try again later"), ("127.77.0.50", 20013)),
        )
        assert first is not None
        first.receive(encode_ack(1), ("127.77.0.50", 20011))
        self.assertIsNotNone(harness.request(rrq("f"), ("127.77.0.50", 20013)))

    def test_no_port_for_a_transfer_is_busy_not_a_crash(self) -> None:
        harness = Harness(self)
        harness.file("f", os.urandom(100))

        def no_port(*args: object) -> None:
            raise OSError(24, "Too many open files")

        self.patch(sockets_module.TransferSocket, "bind", no_port)
        self.assertIsNone(harness.request(rrq("f")))
        ((packet, _),) = harness.port.take()
        self.assertEqual(packet, Error(ErrorCode.NOT_DEFINED, "Server busy, try again later"))
        self.assertEqual(harness.server.busy, 0)

    def test_stray_ack_to_the_listener(self) -> None:
        harness = Harness(self)
        harness.request(encode_ack(3))
        harness.request(encode(Error(ErrorCode.NOT_DEFINED, "x")))
        self.assertEqual(
            harness.port.take(),
            [(Error(ErrorCode.UNKNOWN_TRANSFER_ID, "Unknown transfer ID"), CLIENT)],
        )


class GeneratedConfigTests(SynchronousTestCase):
    def test_pxelinux_config_for_a_machine_from_the_config(self) -> None:
        harness = Harness(self)
        text = harness.download("pxelinux.cfg/01-52-54-00-77-00-10").decode()
        self.assertIn("KERNEL compute/vmlinuz\n", text)
        self.assertIn("INITRD compute/initrd.img\n", text)
        self.assertIn("APPEND console=ttyS0\n", text)
        (done,) = harness.ended()
        self.assertEqual(str(done.mac), "52:54:00:77:00:10")
        self.assertEqual((done.details["generated"], done.details["loader"]), (True, "pxelinux"))

    def test_pxelinux_below_a_directory_uses_absolute_paths(self) -> None:
        harness = Harness(self)
        text = harness.download("bios/pxelinux.cfg/01-52-54-00-77-00-10").decode()
        self.assertIn("KERNEL ::compute/vmlinuz\n", text)

    def test_local_boot(self) -> None:
        harness = Harness(self)
        text = harness.download("pxelinux.cfg/01-52-54-00-77-00-12").decode()
        self.assertIn("LOCALBOOT 0", text)

    def test_grub_config_by_address_through_the_sighting_registry(self) -> None:
        harness = Harness(self)
        harness.sightings.record(make_request("52:54:00:aa:bb:cc", arch=7), IPv4Address(CLIENT[0]))
        text = harness.download("grub/grub.cfg").decode()
        self.assertIn("linux /debian/linux priority=critical\n", text)
        self.assertIn("initrd /debian/initrd.gz\n", text)
        self.assertIn("boot\n", text)

    def test_neighbour_table_identifies_a_listed_machine(self) -> None:
        harness = Harness(self)
        harness.neighbours[IPv4Address(CLIENT[0])] = MacAddress.parse("52:54:00:77:00:10")
        text = harness.download("boot.ipxe").decode()
        self.assertTrue(text.startswith("#!ipxe\n"), text)
        self.assertIn("kernel tftp://127.77.0.1/compute/vmlinuz initrd=initrd.img", text)

    def test_hex_address_name_only_for_that_client(self) -> None:
        harness = Harness(self)
        harness.neighbours[IPv4Address(CLIENT[0])] = MacAddress.parse("52:54:00:77:00:10")
        self.assertIn(b"KERNEL", harness.download("pxelinux.cfg/7F4D0032"))
        self.assertIn(b"KERNEL", harness.download("pxelinux.cfg/7F4D", ("127.77.0.50", 20002)))
        self.assertIsNone(harness.request(rrq("pxelinux.cfg/7F4D0033"), ("127.77.0.50", 20003)))
        ((packet, _),) = harness.port.take()
        self.assertEqual(packet, Error(ErrorCode.FILE_NOT_FOUND, "File not found"))

    def test_disk_file_when_the_decision_has_no_kernel(self) -> None:
        """An unknown machine gets no kernel from ``static`` and nothing from ``arch``
        without DHCP details: the site's own ``pxelinux.cfg/default`` is served."""
        harness = Harness(self)
        content = harness.file("pxelinux.cfg/default", b"DEFAULT menu\n")
        harness.neighbours[IPv4Address(CLIENT[0])] = MacAddress.parse("52:54:00:00:00:99")
        self.assertEqual(harness.download("pxelinux.cfg/default"), content)

    def test_unknown_client_and_no_file_is_not_found(self) -> None:
        harness = Harness(self)
        self.assertIsNone(harness.request(rrq("pxelinux.cfg/default")))
        ((packet, _),) = harness.port.take()
        self.assertEqual(packet, Error(ErrorCode.FILE_NOT_FOUND, "File not found"))

    def test_generated_wins_over_a_file_on_disk(self) -> None:
        harness = Harness(self)
        harness.file("pxelinux.cfg/01-52-54-00-77-00-10", b"DEFAULT stale\n")
        self.assertIn(b"compute/vmlinuz", harness.download("pxelinux.cfg/01-52-54-00-77-00-10"))

    def test_template_error_is_error_0_and_nothing_is_sent(self) -> None:
        templates = temp_dir(self)
        (templates / "pxelinux.j2").write_text("DEFAULT x\n{{ no_such_variable }}\n")
        harness = Harness(self, templates=templates)
        self.assertIsNone(harness.request(rrq("pxelinux.cfg/01-52-54-00-77-00-10")))
        ((packet, _),) = harness.port.take()
        self.assertEqual(packet, Error(ErrorCode.NOT_DEFINED, "Config error"))
        (logged,) = [e for e in harness.events if "cannot render" in e["log_format"]]
        self.assertIn("pxelinux.j2", logged["error"])
        self.assertIn("line 2", logged["error"])

    def test_slow_policy_counts_against_the_limit_and_answers_later(self) -> None:
        pending: Deferred[BootDecision | None] = Deferred()

        class Slow:
            def decide(self, request: Any) -> Deferred[BootDecision | None]:
                return pending

        harness = Harness(self, chain=Slow(), max_transfers=1)
        self.assertIsNone(harness.request(rrq("pxelinux.cfg/01-52-54-00-77-00-10")))
        self.assertEqual(harness.server.busy, 1)
        self.assertIsNone(harness.request(rrq("x"), OTHER))
        ((busy, _),) = harness.port.take()
        self.assertEqual(busy, Error(ErrorCode.NOT_DEFINED, "Server busy, try again later"))
        pending.callback(BootDecision(kernel="k", reason="slow"))
        port = harness._new_port(set())
        assert port is not None
        ((data, _),) = port.take()
        assert isinstance(data, Data)
        self.assertIn(b"KERNEL k\n", data.payload)


class SinglePortTests(SynchronousTestCase):
    def test_transfers_share_port_69_and_are_told_apart_by_peer(self) -> None:
        harness = Harness(self, single_port=True)
        one = harness.file("one", os.urandom(600))
        two = harness.file("two", os.urandom(300))
        self.assertIsNone(harness.request(rrq("one"), CLIENT))
        self.assertIsNone(harness.request(rrq("two"), OTHER))
        self.assertEqual(len(harness.reactor.ports), 1)
        sent = harness.port.take()
        by_peer = {addr: packet for packet, addr in sent}
        self.assertEqual(by_peer[OTHER], Data(1, two))
        self.assertEqual(by_peer[CLIENT], Data(1, one[:512]))
        harness.request(encode_ack(1), CLIENT)
        self.assertEqual(harness.port.take(), [(Data(2, one[512:]), CLIENT)])
        harness.request(encode_ack(1), ("127.77.0.99", 20005))
        self.assertEqual(
            harness.port.take(),
            [(Error(ErrorCode.UNKNOWN_TRANSFER_ID, "Unknown transfer ID"), ("127.77.0.99", 20005))],
        )
        harness.request(encode_ack(1), OTHER)
        harness.request(encode_ack(2), CLIENT)
        self.assertEqual(harness.server.busy, 0)


class ServiceTests(SynchronousTestCase):
    def test_binds_per_interface_address_and_unbinds(self) -> None:
        root = temp_dir(self)
        (root / "f").write_bytes(b"x" * 700)
        config = config_from_yaml(f"tftp: {{root: {root}, port: 69}}\nhttp: {{enabled: false}}")
        reactor = SocketReactor()
        interfaces = [
            InterfaceInfo("srv0", 2, _iface("127.77.0.1/8"), 1500),
            InterfaceInfo("srv1", 3, _iface("127.88.0.1/8"), 9000),
            InterfaceInfo("dummy", 4, None, 1500),
        ]
        sightings = SightingRegistry(reactor.seconds, neighbours=dict)
        service = TftpService(
            ServerContext.build(
                config,
                PolicyChain([], reactor),
                cast(IServerReactor, reactor),  # listenUDP, descriptors and a clock
                interfaces=interfaces,
                sightings=sightings,
            )
        )
        service.privilegedStartService()
        service.startService()
        self.assertEqual(service.addresses, [("127.77.0.1", 69), ("127.88.0.1", 69)])
        listener = reactor.ports[0].protocol
        assert isinstance(listener, TftpListener)
        self.assertEqual(listener.limits.blksize_limit, 1468)
        client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(client.close)
        client.bind(CLIENT)
        client.settimeout(2)
        reactor.ports[0].receive(rrq("f"), CLIENT)
        first, tid = client.recvfrom(2048)
        self.assertEqual(tid[0], "127.77.0.1")
        self.assertEqual(decode(first), Data(1, b"x" * 512))
        done: list[object] = []
        service.stopService().addCallback(done.append)
        self.assertTrue(done)
        self.assertEqual(reactor.open_ports(), [])
        self.assertEqual(reactor.readers, [])
        last, _ = client.recvfrom(2048)
        self.assertEqual(decode(last), Error(ErrorCode.NOT_DEFINED, "server shutting down"))
        self.assertEqual(service.server.busy, 0)


def _iface(text: str) -> Any:
    from ipaddress import IPv4Interface

    return IPv4Interface(text)


__all__ = ["Ack"]


class RealSocketTests(SynchronousTestCase):
    """The production transfer path (own sockets behind one epoll mux), over loopback."""

    reactor_class: type[FakeFDReactor] = FakeFDReactor

    def setUp(self) -> None:
        self.root = temp_dir(self)
        self.content = os.urandom(512 * 4 + 100)
        (self.root / "f").write_bytes(self.content)
        self.reactor = self.reactor_class()
        config = config_from_yaml(CONFIG_YAML.format(root=self.root))
        self.server = TftpServer(
            ServerSettings(root=self.root),
            FileResolver(
                BootConfigResolver(
                    ServerContext.build(
                        config,
                        PolicyChain([("static", StaticPolicy(config))], self.reactor),
                        cast(IServerReactor, self.reactor),
                        sightings=SightingRegistry(self.reactor.seconds, neighbours=dict),
                    ),
                    Renderer(),
                )
            ),
            cast(ITransferReactor, self.reactor),
        )
        self.listener = TftpListener(
            self.server, "127.0.0.1", ServingContext("127.0.0.1", 8080, 69, None, self.root)
        )
        self.port = FakeUDPPort(self.reactor, 69, self.listener, "127.0.0.1")
        self.client = self._socket()
        self.stray = self._socket()
        self.addCleanup(self.server.abort_all, "test over")

    def _socket(self) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(2)
        self.addCleanup(sock.close)
        return sock

    def receive(self, sock: socket.socket) -> tuple[Any, tuple[str, int]]:
        data, addr = sock.recvfrom(70000)
        return decode(data), addr

    def test_transfer_stray_tid_and_in_place_serving(self) -> None:
        peer = self.client.getsockname()
        self.listener.datagramReceived(rrq("f"), peer)
        (mux,) = self.reactor.readers
        first, server_tid = self.receive(self.client)
        self.assertEqual(first, Data(1, self.content[:512]))
        self.assertEqual(server_tid[0], "127.0.0.1")
        # A stranger writes to the transfer's port: ERROR 5 to it, nothing to the client.
        self.stray.sendto(encode_ack(1), server_tid)
        self._settle()
        mux.doRead()
        stray_answer, _ = self.receive(self.stray)
        self.assertEqual(stray_answer, Error(ErrorCode.UNKNOWN_TRANSFER_ID, "Unknown transfer ID"))
        # The client ACKs block 1 and, already, block 2: the lone transfer reads the second ACK
        # in place, without going back to the reactor (one doRead, two blocks sent).
        self.client.sendto(encode_ack(1), server_tid)
        self.client.sendto(encode_ack(2), server_tid)
        self._settle()
        mux.doRead()
        second, _ = self.receive(self.client)
        third, _ = self.receive(self.client)
        self.assertEqual(second, Data(2, self.content[512:1024]))
        self.assertEqual(third, Data(3, self.content[1024:1536]))
        got = first.payload + second.payload + third.payload
        for block in range(3, 6):
            self.client.sendto(encode_ack(block), server_tid)
            self._settle()
            mux.doRead()
            if block < 5:
                packet, _ = self.receive(self.client)
                got += packet.payload
        self.assertEqual(got, self.content)
        self.assertEqual(self.server.busy, 0)

    def _settle(self) -> None:
        """Loopback delivery is immediate, but give the kernel a moment anyway."""
        import select

        select.select([], [], [], 0.01)


class DirectFDReactor(FakeFDReactor):
    """A reactor that calls each ready descriptor directly, as pxetwist's BootReactor does."""

    dispatches_directly = True


class RealSocketDirectTests(RealSocketTests):
    """The same path on a reactor that dispatches directly: each transfer socket is its reader."""

    reactor_class = DirectFDReactor

    def test_each_transfer_socket_is_the_reactors_reader(self) -> None:
        peer = self.client.getsockname()
        self.listener.datagramReceived(rrq("f"), peer)
        (reader,) = self.reactor.readers
        self.assertIsInstance(reader, TransferSocket)
        self.receive(self.client)
        self.server.abort_all("test over")
        self.assertEqual(self.reactor.readers, [])

    def test_a_socket_the_reactor_drops_ends_its_transfer(self) -> None:
        """The reactor drops a descriptor whose ``doRead`` raised: its transfer ends too, with
        an ERROR to the client, instead of retransmitting on a socket nothing reads."""
        from twisted.python.failure import Failure

        peer = self.client.getsockname()
        self.listener.datagramReceived(rrq("f"), peer)
        (reader,) = self.reactor.readers
        self.receive(self.client)
        self.assertEqual(self.server.busy, 1)
        self.reactor.removeReader(reader)
        reader.connectionLost(Failure(RuntimeError("a bug")))
        last, _ = self.receive(self.client)
        self.assertEqual(last, Error(ErrorCode.NOT_DEFINED, "transfer socket lost: a bug"))
        self.assertEqual(self.server.busy, 0)
        self.assertEqual(self.reactor.readers, [])


class FileSourceTests(SynchronousTestCase):
    def test_reads_match_the_file_across_chunks(self) -> None:
        path = temp_dir(self) / "f"
        content = os.urandom(protocol_module.READ_CHUNK * 2 + 777)
        path.write_bytes(content)
        source = FileSource.open(path)
        self.addCleanup(source.close)
        self.assertEqual(source.size, len(content))
        for blksize in (512, 1468, 8, 65464):
            got = b"".join(
                source.read(offset, blksize) for offset in range(0, len(content), blksize)
            )
            self.assertEqual(got, content, blksize)
        self.assertEqual(source.read(100, 200_000), content[100:200_100])
        self.assertEqual(source.read(len(content), 512), b"")
        source.close()
        self.assertRaises(OSError, source.read, 0, 10**6)

    def test_only_regular_files(self) -> None:
        self.assertRaises(OSError, FileSource.open, temp_dir(self))
