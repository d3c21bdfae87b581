"""The DHCP engine against protocol-reference §1.4-§1.7, §2.2-§2.3, §3.1, §4, §7.7 and §7.9."""

from ipaddress import IPv4Address, IPv4Network

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config.model import Config
from pxetwist.dhcp.engine import (
    BROADCAST,
    DhcpEngine,
    Exchange,
    Incoming,
    Interface,
    Outcome,
    Verdict,
    pools_for,
)
from pxetwist.dhcp.leases import LeaseTable
from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, decode, encode
from pxetwist.policy.builtin import ArchPolicy, StaticPolicy
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.request import unique_arches
from pxetwist.policy.values import Arch
from pxetwist.testing import config_from_yaml, run_chain
from tests.dhcp.test_packet import V1, V3, V5, V6

SERVER = IPv4Address("192.0.2.10")
ETH0 = Interface("eth0", SERVER, IPv4Network("192.0.2.0/24"))
MAC_A = bytes.fromhex("525400000001")
MAC_B = bytes.fromhex("525400000002")

AUTHORITATIVE = """
dhcp:
  mode: authoritative
  offer_hold: 60
  decline_quarantine: 600
  subnets:
    - network: 192.0.2.0/24
      range: [192.0.2.50, 192.0.2.52]
      unknown_limit: 3  # the default would keep one of the three for listed machines
      router: 192.0.2.1
      dns: [192.0.2.1]
      lease_time: 3600
    - network: 198.51.100.0/24
      range: [198.51.100.20, 198.51.100.30]
      router: 198.51.100.1
http: {port: 8080}
boot: {efi-x86_64: ipxe.efi, bios: undionly.kpxe, http-efi-x86_64: efi/ipxe.efi}
machines:
  - mac: 52:54:00:00:00:09
    address: 192.0.2.200
    name: reserved
  - mac: 52:54:00:00:00:0a
    action: ignore
"""


def option(packet: DhcpPacket, code: int) -> bytes | None:
    return packet.get(code)


def message(
    kind: MessageType,
    mac: bytes = MAC_A,
    *,
    xid: int = 1,
    ciaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    flags: int = 0,
    options: tuple[tuple[int, bytes], ...] = (),
) -> DhcpPacket:
    return DhcpPacket(
        xid=xid,
        flags=flags,
        ciaddr=ciaddr,
        giaddr=giaddr,
        chaddr=mac,
        options=((OptionCode.MESSAGE_TYPE, bytes((kind,))), *options),
    )


class EngineTestCase(SynchronousTestCase):
    config_text = AUTHORITATIVE

    def setUp(self) -> None:
        self.config: Config = config_from_yaml(self.config_text)
        self.table = LeaseTable(pools_for(self.config))
        self.engine = DhcpEngine(self.config, self.table, [SERVER])
        self.policies = [("static", StaticPolicy(self.config)), ("arch", ArchPolicy(self.config))]
        self.now = 1_000_000.0

    def handle(
        self,
        packet: DhcpPacket,
        *,
        port: int = 67,
        to_broadcast: bool = True,
        source: tuple[str, int] = ("0.0.0.0", 68),
        decision: BootDecision | None = None,
    ) -> Outcome:
        # Every packet goes over the wire once, so the engine sees what a socket would deliver.
        received = self.engine.receive(
            encode(packet, max_size=1400),
            interface=ETH0,
            port=port,
            source=source,
            to_broadcast=to_broadcast,
            now=self.now,
        )
        if isinstance(received, Outcome):
            return received
        if decision is None and received.request is not None:
            decision = run_chain(self.policies, received.request)
        return self.engine.answer(received.decided(decision), self.now)

    def reply(self, outcome: Outcome) -> DhcpPacket:
        self.assertEqual(len(outcome.replies), 1, outcome.reason)
        reply = outcome.replies[0]
        [datagram] = outcome.datagrams
        wire = datagram.data
        self.assertGreaterEqual(len(wire), 300)  # §1.1
        self.assertLessEqual(len(wire), reply.max_size)
        return decode(wire)

    def dora(self, mac: bytes = MAC_A, *, client_id: bytes | None = None) -> IPv4Address:
        extra = ((OptionCode.CLIENT_ID, client_id),) if client_id else ()
        offer = self.reply(self.handle(message(MessageType.DISCOVER, mac, options=extra)))
        ack = self.handle(
            message(
                MessageType.REQUEST,
                mac,
                options=(
                    (OptionCode.SERVER_ID, SERVER.packed),
                    (OptionCode.REQUESTED_IP, offer.yiaddr.packed),
                    *extra,
                ),
            )
        )
        packet = self.reply(ack)
        self.assertEqual(packet.message_type, MessageType.ACK)
        self.assertTrue(ack.durable, "an ACK must come with a lease to persist first")
        return packet.yiaddr


class DiscoverTests(EngineTestCase):
    """§1.4 DISCOVER and §1.5 reply contents."""

    def test_offer(self) -> None:
        outcome = self.handle(
            message(
                MessageType.DISCOVER,
                options=((OptionCode.PARAMETER_REQUEST_LIST, bytes((3, 1, 6))),),
            )
        )
        offer = self.reply(outcome)
        self.assertEqual(offer.message_type, MessageType.OFFER)
        self.assertIn(offer.yiaddr, IPv4Network("192.0.2.48/30"))
        self.assertEqual(offer.server_id, SERVER)
        self.assertEqual(offer.lease_time, 3600)
        codes = [code for code, _ in offer.options]
        self.assertLess(codes.index(OptionCode.SUBNET_MASK), codes.index(OptionCode.ROUTER))
        self.assertEqual((offer.hops, offer.secs, offer.xid), (0, 0, 1))
        self.assertFalse(outcome.durable, "an OFFER is not persisted")
        self.assertEqual(outcome.replies[0].address, BROADCAST)

    def test_retransmitted_discover_gets_the_same_address(self) -> None:
        first = self.reply(self.handle(message(MessageType.DISCOVER)))
        again = self.reply(self.handle(message(MessageType.DISCOVER)))
        self.assertEqual(first.yiaddr, again.yiaddr)

    def test_exhausted_pool_stays_silent_and_never_double_assigns(self) -> None:
        given = {self.dora(bytes.fromhex(f"5254000001{n:02x}")) for n in range(3)}
        self.assertEqual(len(given), 3)
        outcome = self.handle(message(MessageType.DISCOVER, bytes.fromhex("5254000001ff")))
        self.assertIs(outcome.verdict, Verdict.REFUSED)
        self.assertEqual(outcome.replies, ())

    def test_reservation(self) -> None:
        self.assertEqual(self.dora(bytes.fromhex("525400000009")), IPv4Address("192.0.2.200"))

    def test_policy_ignore_means_no_answer(self) -> None:
        outcome = self.handle(message(MessageType.DISCOVER, bytes.fromhex("52540000000a")))
        self.assertIs(outcome.verdict, Verdict.IGNORED)
        self.assertEqual(outcome.replies, ())

    def test_rom_then_ipxe_keep_one_address(self) -> None:
        """§1.7: ROM without 61, then iPXE with 61 = 01+MAC."""
        rom = self.dora(MAC_A)
        ipxe = self.dora(MAC_A, client_id=b"\x01" + MAC_A)
        self.assertEqual(rom, ipxe)


class RequestTests(EngineTestCase):
    """§1.4 REQUEST in its four states, §1.6 reply addressing."""

    def test_selecting_another_server_is_silent(self) -> None:
        offer = self.reply(self.handle(message(MessageType.DISCOVER)))
        outcome = self.handle(
            message(
                MessageType.REQUEST,
                options=(
                    (OptionCode.SERVER_ID, IPv4Address("192.0.2.99").packed),
                    (OptionCode.REQUESTED_IP, offer.yiaddr.packed),
                ),
            )
        )
        self.assertEqual((outcome.verdict, outcome.replies), (Verdict.IGNORED, ()))

    def test_selecting_a_wrong_address_naks(self) -> None:
        self.handle(message(MessageType.DISCOVER))
        self.dora(MAC_B)
        taken = self.table.find_client(
            None, decode(encode(message(MessageType.DISCOVER, MAC_B))).mac, self.now
        )
        assert taken is not None
        outcome = self.handle(
            message(
                MessageType.REQUEST,
                options=(
                    (OptionCode.SERVER_ID, SERVER.packed),
                    (OptionCode.REQUESTED_IP, taken.address.packed),
                ),
            )
        )
        self.assertEqual(self.reply(outcome).message_type, MessageType.NAK)

    def test_init_reboot_wrong_network_naks_by_broadcast(self) -> None:
        outcome = self.handle(
            message(
                MessageType.REQUEST,
                options=((OptionCode.REQUESTED_IP, IPv4Address("10.9.9.9").packed),),
            )
        )
        nak = self.reply(outcome)
        self.assertEqual(nak.message_type, MessageType.NAK)
        self.assertEqual((nak.yiaddr, nak.ciaddr, nak.siaddr), (IPv4Address(0),) * 3)
        self.assertIsNone(nak.lease_time)
        self.assertEqual((outcome.replies[0].address, outcome.replies[0].port), (BROADCAST, 68))

    def test_nak_through_a_relay_goes_to_the_relay_with_broadcast_bit(self) -> None:
        outcome = self.handle(
            message(
                MessageType.REQUEST,
                giaddr="198.51.100.1",
                options=((OptionCode.REQUESTED_IP, IPv4Address("192.0.2.50").packed),),
            )
        )
        nak = self.reply(outcome)
        self.assertTrue(nak.broadcast)
        self.assertEqual(
            (outcome.replies[0].address, outcome.replies[0].port), (IPv4Address("198.51.100.1"), 67)
        )

    def test_renewing_is_acked_to_ciaddr(self) -> None:
        address = self.dora()
        outcome = self.handle(message(MessageType.REQUEST, ciaddr=str(address)), to_broadcast=False)
        ack = self.reply(outcome)
        self.assertEqual(
            (ack.message_type, ack.yiaddr, ack.ciaddr), (MessageType.ACK, address, address)
        )
        self.assertEqual((outcome.replies[0].address, outcome.replies[0].port), (address, 68))

    def test_rebinding_a_foreign_lease_is_silent(self) -> None:
        outcome = self.handle(message(MessageType.REQUEST, ciaddr="192.0.2.51"), to_broadcast=True)
        self.assertEqual((outcome.verdict, outcome.replies), (Verdict.IGNORED, ()))

    def test_renewing_a_foreign_lease_naks(self) -> None:
        outcome = self.handle(message(MessageType.REQUEST, ciaddr="192.0.2.51"), to_broadcast=False)
        self.assertEqual(self.reply(outcome).message_type, MessageType.NAK)


class RelayTests(EngineTestCase):
    """§1.11: subnet from giaddr, replies to the relay's port 67, option 82 echoed last."""

    def test_relayed_discover(self) -> None:
        outcome = self.handle(
            message(
                MessageType.DISCOVER,
                giaddr="198.51.100.1",
                options=((OptionCode.RELAY_AGENT_INFO, b"\x01\x04abcd"),),
            )
        )
        offer = self.reply(outcome)
        self.assertIn(offer.yiaddr, IPv4Network("198.51.100.0/24"))
        self.assertEqual(offer.options[-1], (OptionCode.RELAY_AGENT_INFO, b"\x01\x04abcd"))
        self.assertEqual(
            (outcome.replies[0].address, outcome.replies[0].port), (IPv4Address("198.51.100.1"), 67)
        )

    def test_unknown_relay_network_is_dropped(self) -> None:
        outcome = self.handle(message(MessageType.DISCOVER, giaddr="203.0.113.1"))
        self.assertIs(outcome.verdict, Verdict.DROPPED)


class OtherMessageTests(EngineTestCase):
    def test_inform(self) -> None:
        outcome = self.handle(message(MessageType.INFORM, ciaddr="192.0.2.77"), to_broadcast=False)
        ack = self.reply(outcome)
        self.assertEqual(
            (ack.message_type, ack.yiaddr, ack.lease_time), (MessageType.ACK, IPv4Address(0), None)
        )
        self.assertEqual(outcome.replies[0].address, IPv4Address("192.0.2.77"))

    def test_decline_quarantines(self) -> None:
        address = self.dora()
        self.handle(
            message(
                MessageType.DECLINE,
                options=(
                    (OptionCode.SERVER_ID, SERVER.packed),
                    (OptionCode.REQUESTED_IP, address.packed),
                ),
            )
        )
        offers = {
            self.reply(
                self.handle(message(MessageType.DISCOVER, bytes.fromhex(f"52540000020{n}")))
            ).yiaddr
            for n in range(2)
        }
        self.assertNotIn(address, offers)

    def test_release_frees(self) -> None:
        address = self.dora()
        outcome = self.handle(message(MessageType.RELEASE, ciaddr=str(address)), to_broadcast=False)
        self.assertTrue(outcome.durable)
        self.assertIsNone(self.table.find_address(address, self.now))


class PxeAuthoritativeTests(EngineTestCase):
    """§2.2 shape B in full DHCP mode (R3), §4 iPXE (R4), §3.1 HTTP Boot (R5)."""

    def test_uefi_pxe_offer(self) -> None:
        offer = self.reply(self.handle(decode(V3)))
        self.assertEqual(option(offer, OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertEqual(option(offer, OptionCode.VENDOR_SPECIFIC), b"\x06\x01\x08\xff")
        self.assertEqual(offer.file, b"ipxe.efi")
        self.assertEqual(option(offer, OptionCode.BOOTFILE), b"ipxe.efi\x00")
        self.assertEqual(offer.siaddr, SERVER)
        self.assertEqual(
            option(offer, OptionCode.CLIENT_UUID), decode(V3).get(OptionCode.CLIENT_UUID)
        )
        self.assertIsNotNone(offer.lease_time)

    def test_ipxe_gets_the_script_url(self) -> None:
        offer = self.reply(self.handle(decode(V5)))
        self.assertEqual(
            offer.file,
            b"http://192.0.2.10:8080/boot.ipxe?mac=${mac}&uuid=${uuid}&arch=${buildarch}",
        )
        self.assertEqual(option(offer, OptionCode.CLIENT_ID), b"\x01\x52\x54\x00\x12\x34\x56")
        # §4.2: as the DHCP server we tell iPXE not to wait for ProxyDHCP offers (175.176 = 1).
        self.assertEqual(option(offer, OptionCode.IPXE_ENCAP), b"\xb0\x01\x01")

    def test_http_boot_gets_a_url(self) -> None:
        offer = self.reply(self.handle(decode(V6)))
        self.assertEqual(option(offer, OptionCode.VENDOR_CLASS), b"HTTPClient")
        self.assertEqual(offer.file, b"http://192.0.2.10:8080/efi/ipxe.efi")
        self.assertEqual(option(offer, OptionCode.BOOTFILE), offer.file + b"\x00")

    def test_plain_client_gets_no_boot_options(self) -> None:
        offer = self.reply(self.handle(message(MessageType.DISCOVER)))
        self.assertIsNone(option(offer, OptionCode.VENDOR_CLASS))
        self.assertIsNone(option(offer, OptionCode.VENDOR_SPECIFIC))
        self.assertEqual(offer.file, b"")


class ProxyTests(EngineTestCase):
    """§2.3 proxyDHCP: DISCOVERs of boot clients only, no address, 4011 for UEFI."""

    config_text = "dhcp: {mode: proxy}\nboot: {efi-x86_64: ipxe.efi, bios: undionly.kpxe}\n"

    def test_bios_gets_r1(self) -> None:
        outcome = self.handle(decode(V1))
        offer = self.reply(outcome)
        self.assertEqual(offer.yiaddr, IPv4Address(0))
        self.assertIsNone(offer.lease_time)
        self.assertIsNone(option(offer, OptionCode.SUBNET_MASK))
        self.assertEqual(option(offer, OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertEqual(option(offer, OptionCode.VENDOR_SPECIFIC), b"\x06\x01\x08\xff")
        self.assertEqual(
            option(offer, OptionCode.CLIENT_UUID), decode(V1).get(OptionCode.CLIENT_UUID)
        )
        self.assertEqual((offer.siaddr, offer.file), (SERVER, b"undionly.kpxe"))
        self.assertEqual((outcome.replies[0].address, outcome.replies[0].port), (BROADCAST, 68))

    def test_uefi_gets_r2_redirect_then_4011_ack(self) -> None:
        offer = self.reply(self.handle(decode(V3)))
        self.assertEqual(option(offer, OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertIsNone(option(offer, OptionCode.VENDOR_SPECIFIC))
        self.assertEqual((offer.siaddr, offer.sname), (SERVER, b"192.0.2.10"))
        v3 = decode(V3)
        request = DhcpPacket(
            xid=v3.xid,
            ciaddr="192.0.2.77",
            chaddr=v3.chaddr,
            options=(
                (OptionCode.MESSAGE_TYPE, bytes((MessageType.REQUEST,))),
                *[(c, v) for c, v in v3.options if c != OptionCode.MESSAGE_TYPE],
                (OptionCode.VENDOR_SPECIFIC, b"\x47\x04\x80\x00\x00\x00\xff"),
            ),
        )
        outcome = self.handle(request, port=4011, to_broadcast=False, source=("192.0.2.77", 4011))
        ack = self.reply(outcome)
        self.assertEqual(ack.message_type, MessageType.ACK)
        self.assertEqual(
            (ack.ciaddr, ack.yiaddr, ack.siaddr),
            (IPv4Address("192.0.2.77"), IPv4Address(0), SERVER),
        )
        self.assertEqual(ack.file, b"ipxe.efi")
        self.assertEqual(option(ack, OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertEqual(option(ack, OptionCode.VENDOR_SPECIFIC), b"\x47\x04\x80\x00\x00\x00\xff")
        self.assertEqual(
            (outcome.replies[0].address, outcome.replies[0].port), (IPv4Address("192.0.2.77"), 4011)
        )

    def test_request_on_67_is_ignored(self) -> None:
        request = decode(V3)
        request = DhcpPacket(
            xid=request.xid,
            chaddr=request.chaddr,
            options=(
                (OptionCode.MESSAGE_TYPE, bytes((MessageType.REQUEST,))),
                *request.options[1:],
            ),
        )
        self.assertEqual(self.handle(request).replies, ())

    def test_plain_discover_is_ignored(self) -> None:
        self.assertEqual(self.handle(message(MessageType.DISCOVER)).replies, ())

    def test_ipxe_and_http_boot_in_proxy_mode(self) -> None:
        ipxe = self.reply(self.handle(decode(V5)))
        self.assertEqual(option(ipxe, OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertTrue(ipxe.file.startswith(b"http://192.0.2.10:8080/boot.ipxe"))
        http = self.reply(self.handle(decode(V6)))
        self.assertEqual(option(http, OptionCode.VENDOR_CLASS), b"HTTPClient")
        self.assertEqual(http.yiaddr, IPv4Address(0))


class QuirkTests(EngineTestCase):
    """Issue 4 quirk controls (protocol-reference §5): per machine, per group, or global."""

    config_text = AUTHORITATIVE.replace(
        "machines:\n",
        "groups:\n"
        "  slowroms: {quirks: {reply_delay: 1.5}}\n"
        "machines:\n"
        "  - mac: 52:54:00:00:00:20\n"
        "    group: slowroms\n"
        "  - mac: 52:54:00:00:00:21\n"
        "    quirks: {force_broadcast: true, omit_pxe_options: true, boot_file: legacy.0}\n",
    )

    def test_group_reply_delay(self) -> None:
        v3 = decode(V3)
        outcome = self.handle(
            DhcpPacket(xid=v3.xid, chaddr=bytes.fromhex("525400000020"), options=v3.options)
        )
        self.assertEqual(outcome.replies[0].delay, 1.5)

    def test_machine_quirks(self) -> None:
        v3 = decode(V3)
        mac = bytes.fromhex("525400000021")
        offer = self.reply(self.handle(DhcpPacket(xid=v3.xid, chaddr=mac, options=v3.options)))
        self.assertEqual(offer.file, b"legacy.0")
        self.assertEqual(option(offer, OptionCode.BOOTFILE), b"legacy.0\x00")
        self.assertIsNone(option(offer, OptionCode.VENDOR_CLASS))
        self.assertIsNone(option(offer, OptionCode.VENDOR_SPECIFIC))
        address = offer.yiaddr
        renew = DhcpPacket(
            xid=7,
            ciaddr=address,
            chaddr=mac,
            options=((OptionCode.MESSAGE_TYPE, bytes((MessageType.REQUEST,))), *v3.options[1:]),
        )
        self.handle(
            DhcpPacket(
                xid=7,
                chaddr=mac,
                options=(
                    (OptionCode.MESSAGE_TYPE, bytes((MessageType.REQUEST,))),
                    (OptionCode.SERVER_ID, SERVER.packed),
                    (OptionCode.REQUESTED_IP, address.packed),
                    *v3.options[1:],
                ),
            )
        )
        outcome = self.handle(renew, to_broadcast=False)
        self.assertEqual(outcome.replies[0].address, BROADCAST)  # forced, although ciaddr is set

    def test_global_quirks_apply_to_unlisted_machines(self) -> None:
        config = config_from_yaml(
            AUTHORITATIVE.replace(
                "  offer_hold: 60\n", "  offer_hold: 60\n  quirks: {reply_delay: 0.25}\n"
            )
        )
        engine = DhcpEngine(config, LeaseTable(pools_for(config)), [SERVER])
        incoming = Incoming(decode(V3), ETH0, ("0.0.0.0", 68), 67, True)
        request = engine.boot_request(incoming)
        assert request is not None
        decision = run_chain([("arch", ArchPolicy(config))], request)
        outcome = engine.answer(Exchange(incoming, request, decision), self.now)
        self.assertEqual(outcome.replies[0].delay, 0.25)


class BootRequestArchTests(EngineTestCase):
    """Option 93 as the policy chain sees it (RFC 4578 §2.1, reference §2.4)."""

    def arches(self, value: bytes) -> tuple[Arch, ...]:
        config = config_from_yaml(AUTHORITATIVE)
        engine = DhcpEngine(config, LeaseTable(pools_for(config)), [SERVER])
        packet = message(MessageType.DISCOVER, options=((OptionCode.CLIENT_ARCH, value),))
        request = engine.boot_request(Incoming(packet, ETH0, ("0.0.0.0", 68), 67, True))
        assert request is not None
        return request.arches

    def test_client_order_kept_and_repeats_dropped(self) -> None:
        self.assertEqual(
            self.arches(b"\x00\x09\x00\x07\x00\x09\x00\x07"), (Arch.EFI_BC, Arch.EFI_X86_64)
        )

    def test_unknown_values_kept_once(self) -> None:
        (arch,) = self.arches(b"\x10\x92\x10\x92")
        self.assertEqual(int(arch), 4242)
        self.assertFalse(arch.is_known)

    def test_plain_ints_are_read_as_arches(self) -> None:
        """Plain option-93 integers are read as ``Arch`` members, as before."""
        self.assertEqual(unique_arches([7, 0, 7]), (Arch.EFI_X86_64, Arch.BIOS))
        self.assertIs(type(unique_arches([7])[0]), Arch)
