"""The engine (and ``pxetwist explain``) against the PXE rules of protocol-reference §2-§5, §7.9.

A review of :mod:`pxetwist.dhcp.engine` and :mod:`pxetwist.dhcp.boot` while writing the lab
tests.  Each test names the rule and its section.  Some of these tests FAIL on purpose: they
pin rules the code breaks today, and pass once it is fixed.  They are:

* ``RedirectTests.test_redirect_offer_points_siaddr_at_the_proxy`` (§2.3, R2 of §7.7)
* ``VendorOptionTests.test_proxy_never_sends_pxeclient_without_43_when_4011_is_off``
  (§2.2, §5 quirk 8, §7.9)
* ``RaspberryPiTests.test_raspberry_pi_gets_the_pi_boot_menu`` (§5 quirks 2-4, §7.9)
* ``ArchTests.test_unknown_arch_is_ignored_by_default`` (§2.4, §7.9)
* ``ProxyScopeTests.test_proxy_ignores_a_discover_without_option_93`` (§2.3)
* ``IpxeTests.test_custom_user_class_gives_vendor_ipxe_the_nbp`` (§4.2, §7.9)
* ``ExplainConsistencyTests.test_server_address_flag_wins_over_the_config`` (explain)
* ``ExplainConsistencyTests.test_json_bytes_are_the_bytes_the_server_sends`` (explain)

Every other test here passes and documents a rule checked in the review.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path

import attrs
from twisted.trial.unittest import SynchronousTestCase

from pxetwist import cli
from pxetwist.config.model import Config
from pxetwist.dhcp.engine import (
    DhcpEngine,
    Exchange,
    Interface,
    Outcome,
    Verdict,
    pools_for,
)
from pxetwist.dhcp.leases import LeaseTable
from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, decode, encode
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.plugins import build_policies
from pxetwist.testing import config_from_yaml, run_chain
from tests.dhcp.test_packet import V1, V3, V5, V6

SERVER = IPv4Address("192.0.2.10")
ETH0 = Interface("eth0", SERVER, IPv4Network("192.0.2.0/24"))
CLIENT = IPv4Address("192.0.2.77")
PXE_BOOT = b"\x06\x01\x08\xff"


def proxy(dhcp: str = "", boot: str = "", top: str = "") -> str:
    """A proxy-mode config; the arguments add flow-mapping entries or top-level lines."""
    return (
        f"dhcp: {{mode: proxy{dhcp}}}\n"
        f"boot: {{bios: undionly.kpxe, efi-x86_64: ipxe.efi{boot}}}\n"
        "policy: {plugin_dirs: []}\n" + top
    )


PROXY = proxy()
AUTHORITATIVE = """
dhcp:
  mode: authoritative
  subnets:
    - network: 192.0.2.0/24
      range: [192.0.2.50, 192.0.2.60]
      router: 192.0.2.1
boot: {bios: undionly.kpxe, efi-x86_64: ipxe.efi}
policy: {plugin_dirs: []}
"""


def request_from(discover: bytes | DhcpPacket, ciaddr: IPv4Address = CLIENT) -> DhcpPacket:
    """The client's REQUEST to port 4011: its DISCOVER with 53 = REQUEST and ``ciaddr`` set."""
    packet = decode(discover) if isinstance(discover, bytes) else discover
    return attrs.evolve(packet, ciaddr=ciaddr).with_option(
        OptionCode.MESSAGE_TYPE, bytes((MessageType.REQUEST,))
    )


class RuleCase(SynchronousTestCase):
    """The engine with the config's own policy chain, as ``twistd pxe`` builds it."""

    config_text = PROXY

    def setUp(self) -> None:
        self.use(self.config_text)

    def use(self, text: str) -> Config:
        self.config = config_from_yaml(text)
        self.engine = DhcpEngine(self.config, LeaseTable(pools_for(self.config)), [SERVER])
        self.policies = build_policies(self.config)
        return self.config

    def handle(
        self,
        packet: bytes | DhcpPacket,
        *,
        port: int = 67,
        source: tuple[str, int] = ("0.0.0.0", 68),
        decision: BootDecision | None = None,
    ) -> Outcome:
        if isinstance(packet, DhcpPacket):
            packet = encode(packet, max_size=1400)
        received = self.engine.receive(
            packet, interface=ETH0, port=port, source=source, to_broadcast=port == 67, now=1e6
        )
        if isinstance(received, Outcome):
            return received
        if decision is None and received.request is not None:
            decision = run_chain(self.policies, received.request)
        return self.engine.answer(received.decided(decision), 1e6)

    def reply(self, outcome: Outcome) -> DhcpPacket:
        self.assertEqual(len(outcome.replies), 1, outcome.reason)
        [datagram] = outcome.datagrams
        return decode(datagram.data)

    def assert_no_pxeclient_without_43_and_file(self, reply: DhcpPacket, why: str) -> None:
        """§2.2 "Never" / §5 quirk 8 / §7.9, for a server that does not answer on 4011."""
        if reply.get(OptionCode.VENDOR_CLASS) == b"PXEClient":
            self.assertIsNotNone(reply.get(OptionCode.VENDOR_SPECIFIC), f"{why}: 60 without 43")
            self.assertTrue(
                reply.file or reply.get(OptionCode.BOOTFILE), f"{why}: 60 without a boot file"
            )


class RedirectTests(RuleCase):
    """§2.3 strategy 1: PXEClient without 43 sends EDK2 to ``siaddr``:4011 (falling back to 54)."""

    def test_redirect_offer_points_siaddr_at_the_proxy(self) -> None:
        """R2: "siaddr = proxy, sname = proxy IP string"; the file may live elsewhere.

        FAILS today: with a policy's ``next_server`` (another TFTP host), the redirect offer
        carries that host in ``siaddr`` (engine.py ``_proxy`` takes ``fields.siaddr`` from
        boot.py ``boot_fields``: ``siaddr=next_server``), so EDK2 sends its port-4011 REQUEST
        to the TFTP host, which has no boot server: PXE-E55 / no boot.
        """
        elsewhere = IPv4Address("192.0.2.99")
        decision = BootDecision(program="ipxe.efi", next_server=elsewhere, reason="test")
        offer = self.reply(self.handle(V3, decision=decision))
        self.assertEqual(offer.get(OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertIsNone(offer.get(OptionCode.VENDOR_SPECIFIC))
        self.assertEqual(offer.server_id, SERVER)
        self.assertEqual(offer.siaddr, SERVER, "the 4011 REQUEST goes to siaddr")
        # The ACK from 4011 is where the TFTP server belongs.
        ack = self.reply(
            self.handle(request_from(V3), port=4011, source=(str(CLIENT), 68), decision=decision)
        )
        self.assertEqual((ack.siaddr, ack.file), (elsewhere, b"ipxe.efi"))

    def test_4011_ack_echoes_the_boot_item(self) -> None:
        """§2.3: 43.71 echoed in the ACK from 4011, sent to the request's source ip:port."""
        request = request_from(V3).with_option(
            OptionCode.VENDOR_SPECIFIC, b"\x47\x04\x80\x00\x00\x00\xff"
        )
        outcome = self.handle(request, port=4011, source=(str(CLIENT), 4011))
        ack = self.reply(outcome)
        self.assertEqual(ack.get(OptionCode.VENDOR_SPECIFIC), b"\x47\x04\x80\x00\x00\x00\xff")
        self.assertEqual(ack.get(OptionCode.VENDOR_CLASS), b"PXEClient")
        self.assertEqual(ack.get(OptionCode.CLIENT_UUID), decode(V3).get(OptionCode.CLIENT_UUID))
        self.assertEqual((outcome.replies[0].address, outcome.replies[0].port), (CLIENT, 4011))


class VendorOptionTests(RuleCase):
    """§7.9: "DHCP mode never emits 60=PXEClient without 43+file unless 4011 is served"."""

    def test_authoritative_without_4011(self) -> None:
        self.use(
            AUTHORITATIVE.replace(
                "mode: authoritative", "mode: authoritative\n  boot_server: false"
            )
        )
        for name, vector in (("V1", V1), ("V3", V3), ("V5", V5)):
            offer = self.reply(self.handle(vector))
            self.assertEqual(offer.get(OptionCode.VENDOR_SPECIFIC), PXE_BOOT, name)
            self.assert_no_pxeclient_without_43_and_file(offer, name)

    def test_proxy_without_4011(self) -> None:
        self.use(proxy(dhcp=", boot_server: false"))
        for name, vector in (("V1", V1), ("V3", V3), ("V5", V5)):
            offer = self.reply(self.handle(vector))
            self.assert_no_pxeclient_without_43_and_file(offer, name)
        # With 4011 off, UEFI gets strategy 2 (boot straight from the offer) instead of R2.
        self.assertEqual(self.reply(self.handle(V3)).get(OptionCode.VENDOR_SPECIFIC), PXE_BOOT)

    def test_proxy_never_sends_pxeclient_without_43_when_4011_is_off(self) -> None:
        """FAILS today: proxy + ``omit_pxe_options`` + ``boot_server: false``.

        boot.py drops 60 and 43 for the quirk; engine.py ``_proxy`` then puts 60 = PXEClient
        back ("a proxy offer without PXEClient is not a proxy offer") but not 43, so a BIOS
        ROM or EDK2 goes to port 4011, where nothing listens (§5 quirk 8, PXE-E55).
        """
        self.use(proxy(dhcp=", boot_server: false, quirks: {omit_pxe_options: true}"))
        for name, vector in (("V1", V1), ("V3", V3)):
            outcome = self.handle(vector)
            if outcome.replies:  # no answer at all would be correct too
                self.assert_no_pxeclient_without_43_and_file(self.reply(outcome), name)


class RaspberryPiTests(RuleCase):
    """§5 quirks 2-4 and §7.9: "Raspberry Pi (OUI) -> 43 'Raspberry Pi Boot', 66 = TFTP IP"."""

    def test_raspberry_pi_gets_the_pi_boot_menu(self) -> None:
        """FAILS today: no Raspberry Pi profile; a Pi gets the BIOS answer (43 = 06 01 08 ff).

        The Pi 3/4 ROM looks for "Raspberry Pi Boot" in 43 and ignores ``siaddr``.
        """
        pi = attrs.evolve(decode(V1), chaddr=bytes.fromhex("dca632000001"))  # RPi 4 OUI
        for text in (PROXY, AUTHORITATIVE):
            self.use(text)
            offer = self.reply(self.handle(pi))
            self.assertEqual(offer.get(OptionCode.VENDOR_CLASS), b"PXEClient")
            self.assertIn(b"Raspberry Pi Boot", offer.get(OptionCode.VENDOR_SPECIFIC) or b"")
            self.assertEqual(offer.get(OptionCode.TFTP_SERVER), b"192.0.2.10\x00")


class ArchTests(RuleCase):
    """§2.1 and §2.4: option 93 is authoritative, 9 is treated as 7, several values allowed."""

    def test_arch_9_is_treated_as_7(self) -> None:
        for text in (PROXY, AUTHORITATIVE):
            self.use(text)
            v9 = decode(V3).with_option(OptionCode.CLIENT_ARCH, b"\x00\x09")
            v7 = self.reply(self.handle(V3))
            offer = self.reply(self.handle(v9))
            self.assertEqual(offer.file, b"ipxe.efi")
            self.assertEqual(
                offer.get(OptionCode.VENDOR_SPECIFIC), v7.get(OptionCode.VENDOR_SPECIFIC)
            )

    def test_several_architectures_first_known_wins(self) -> None:
        cases = {
            b"\x00\x07\x00\x00": b"ipxe.efi",  # 7 first
            b"\x00\x00\x00\x07": b"undionly.kpxe",  # BIOS first
            b"\x12\x34\x00\x07": b"ipxe.efi",  # unknown value skipped
            b"\x12\x34\x00\x09": b"ipxe.efi",  # ... and 9 read as 7
        }
        for value, expected in cases.items():
            packet = decode(V3).with_option(OptionCode.CLIENT_ARCH, value)
            self.assertEqual(self.reply(self.handle(packet)).file, expected, value.hex())

    def test_unknown_arch_goes_to_the_configured_default(self) -> None:
        """§7.9 "unknown arch -> configurable"; issues 2 and 4 fix the default: an unknown
        value is logged and sent to ``policy.arch_default`` (``bios``), never dropped.  It
        gets shape B (43 + file), not the UEFI 4011 redirect."""
        packet = decode(V1).with_option(OptionCode.CLIENT_ARCH, b"\x12\x34")
        offer = self.reply(self.handle(packet))
        self.assertEqual(offer.file, b"undionly.kpxe")
        self.assertEqual(offer.get(OptionCode.VENDOR_SPECIFIC), b"\x06\x01\x08\xff")

    def test_unknown_arch_with_ignore_default_is_not_answered(self) -> None:
        self.use(
            PROXY.replace(
                "policy: {plugin_dirs: []}", "policy: {plugin_dirs: [], arch_default: ignore}"
            )
        )
        packet = decode(V1).with_option(OptionCode.CLIENT_ARCH, b"\x12\x34")
        outcome = self.handle(packet)
        self.assertEqual(len(outcome.replies), 0, f"answered: {outcome.reason}")


class ProxyScopeTests(RuleCase):
    """§2.3: "On port 67 answer only DISCOVERs of PXE clients (option 60 prefix PXEClient/
    HTTPClient and 93 present) ... ignore REQUESTs on 67"."""

    def test_request_on_67_and_plain_discover_are_ignored(self) -> None:
        self.assertEqual(self.handle(request_from(V3, IPv4Address(0))).replies, ())
        plain = DhcpPacket(
            chaddr=bytes.fromhex("525400000001"),
            options=((OptionCode.MESSAGE_TYPE, bytes((MessageType.DISCOVER,))),),
        )
        self.assertEqual(self.handle(plain).verdict, Verdict.IGNORED)

    def test_proxy_ignores_a_discover_without_option_93(self) -> None:
        """FAILS today (minor): 60 = PXEClient alone is answered, with ``arch_default``.

        policy/request.py ``BootRequest.firmware`` takes 60 *or* 93 as a boot client and
        engine.py ``_proxy`` answers any non-PLAIN firmware; pixiecore and the reference
        require both.
        """
        packet = decode(V1).without_option(OptionCode.CLIENT_ARCH)
        outcome = self.handle(packet)
        self.assertEqual(len(outcome.replies), 0, f"answered: {outcome.reason}")


class IpxeTests(RuleCase):
    """§4.1, §4.2, §7.9: "V5 (user class iPXE, raw) -> script URL; \\x04iPXE also recognised;
    custom class supported"."""

    config_text = proxy(boot=", ipxe: script")

    def test_raw_and_rfc3004_user_class(self) -> None:
        for value in (b"iPXE", b"\x04iPXE"):
            packet = decode(V5).with_option(OptionCode.USER_CLASS, value).without_option(175)
            self.assertEqual(self.reply(self.handle(packet)).file, b"script", value)

    def test_custom_user_class(self) -> None:
        self.use(proxy(dhcp=", ipxe_user_classes: [pxetwist]", boot=", ipxe: script"))
        packet = decode(V5).with_option(OptionCode.USER_CLASS, b"pxetwist")
        self.assertEqual(self.reply(self.handle(packet)).file, b"script")

    def test_custom_user_class_gives_vendor_ipxe_the_nbp(self) -> None:
        """FAILS today: with a custom class configured, a vendor iPXE ROM (user class ``iPXE``,
        175 present, e.g. QEMU/OVMF) must get *our* iPXE first, not the script (§4.2).

        policy/request.py ``BootRequest.firmware`` classifies any request carrying option 175
        as iPXE whatever ``dhcp.ipxe_user_classes`` says, so the custom class cannot work.
        """
        self.use(proxy(dhcp=", ipxe_user_classes: [pxetwist]", boot=", ipxe: script"))
        offer = self.reply(self.handle(V5))
        self.assertEqual(offer.file, b"ipxe.efi")


class HttpBootTests(RuleCase):
    """§3.1: HTTPClient echoed to HTTP clients only, with a URL; no 43."""

    def test_http_client(self) -> None:
        for text in (PROXY, AUTHORITATIVE):
            self.use(text)
            offer = self.reply(self.handle(V6))
            self.assertEqual(offer.get(OptionCode.VENDOR_CLASS), b"HTTPClient")
            self.assertIsNone(offer.get(OptionCode.VENDOR_SPECIFIC))
            self.assertTrue(offer.file.startswith(b"http://192.0.2.10:"), offer.file)
            for vector in (V1, V3):
                self.assertNotEqual(
                    self.reply(self.handle(vector)).get(OptionCode.VENDOR_CLASS), b"HTTPClient"
                )


class ExplainConsistencyTests(SynchronousTestCase):
    """``pxetwist explain`` must print what the server would send, byte for byte."""

    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pxetwist-rules-"))
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)

    def explain(self, config: str, *args: str) -> list[list[str]]:
        path = self.base / "pxe.yaml"
        path.write_text(config)
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = cli.main(["explain", "--config", str(path), "--json", *args])
        self.assertEqual(code, 0)
        return [[r["hex"] for r in step["replies"]] for step in json.loads(out.getvalue())["steps"]]

    def test_server_address_flag_wins_over_the_config(self) -> None:
        """FAILS today: ``--server-address`` ("our address (default: config or 192.0.2.1)") is
        ignored when the config sets ``server_address``: explain.py ``run`` only uses it for
        the fake interface, and engine.py ``server_address`` prefers the config's value.
        """
        config = proxy(top="server_address: 192.0.2.10\n")
        [[offer]] = self.explain(config, "--packet", V1.hex(), "--server-address", "198.51.100.7")
        self.assertEqual(decode(bytes.fromhex(offer)).siaddr, IPv4Address("198.51.100.7"))

    def test_json_bytes_are_the_bytes_the_server_sends(self) -> None:
        """A reply that must be trimmed to the client's size budget: explain shows the bytes
        the server's path (``DhcpEngine.receive`` then ``answer``) produces, trimmed alike."""
        # 244 characters once expanded: over the budget with option 66, under it without.
        url = "http://{server}:{http_port}/boot.ipxe?pad=" + "x" * 207
        config = proxy(boot=f', ipxe: "{url}"')
        discover = decode(V5).without_option(OptionCode.MAX_MESSAGE_SIZE)  # 576: 548 B budget
        [[predicted]] = self.explain(
            config,
            "--packet",
            encode(discover, max_size=1400).hex(),
            "--server-address",
            str(SERVER),
        )
        # What DhcpEndpoint sends for the same datagram.
        parsed = config_from_yaml(config)
        engine = DhcpEngine(parsed, LeaseTable(pools_for(parsed)), [SERVER])
        received = engine.receive(
            encode(discover, max_size=1400),
            interface=ETH0,
            port=67,
            source=("0.0.0.0", 68),
            to_broadcast=True,
            now=0.0,
        )
        assert isinstance(received, Exchange) and received.request is not None
        decision = run_chain(build_policies(parsed), received.request)
        [datagram] = engine.answer(received.decided(decision), 0.0).datagrams
        sent = datagram.data
        self.assertIsNotNone(decode(sent).get(OptionCode.BOOTFILE))
        self.assertEqual(
            decode(bytes.fromhex(predicted)).get(OptionCode.BOOTFILE),
            decode(sent).get(OptionCode.BOOTFILE),
            "explain trimmed a different option than the server",
        )
        self.assertEqual(predicted, sent.hex())
