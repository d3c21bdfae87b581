"""PXE over real sockets: ``twistd -n pxe`` in a :class:`~pxetwist.lab.NetLab`, scripted clients.

Each test builds its own lab, starts the venv's ``twistd -n pxe`` (DHCP only) in ``<lab>-srv``
and runs :mod:`tests.dhcp.pxeclient` in bare client namespaces as a BIOS PXE ROM, a UEFI PXE
stack, iPXE and UEFI HTTP Boot (the V1/V3/V5/V6 shapes of protocol-reference §7).  The replies
are checked against the R1-R5 shapes of §7.7 and the PXE part of the §7.9 checklist:

* :class:`AuthoritativeLabTests`: pxetwist is the DHCP server (DISCOVER/OFFER/REQUEST/ACK).
* :class:`ProxyLabTests`: pxetwist is a proxyDHCP server; the UEFI client takes a fixed
  address for its port-4011 REQUEST, as if some DHCP server had given it one.
* :class:`ProxyBesideDnsmasqTests`: proxyDHCP next to a real DHCP server (dnsmasq in
  ``<lab>-cli`` on the bridge, addresses only, no boot options): the two answers together
  boot the client (§2.3).

Every reply pxetwist sent is also compared, byte for byte, with what ``pxetwist explain
--json`` prints for the same captured request (``--packet``), so the operator's tool tells
the truth about the server.

All traffic stays inside the namespaces these tests create.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import yaml
from twisted.trial.unittest import SynchronousTestCase

from pxetwist import cli
from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.dhcp.packet import DhcpPacket, decode
from pxetwist.lab import NetLab, require_binary, require_lab

VENV_BIN = Path(sys.executable).parent
TWISTD = VENV_BIN / "twistd"
PXECLIENT = Path(__file__).resolve().with_name("pxeclient.py")
NETWORK = "10.77.0.0/16"
POOL_START = IPv4Address("10.77.1.10")
FIXED = "10.77.0.100"  # the UEFI client's address for the 4011 step; explain assumes .100
DNSMASQ_IP = "10.77.0.2"  # br0 in <lab>-cli, where dnsmasq runs
BROADCAST = "255.255.255.255"
HTTP_PORT = 8080
MACS = {
    "bios": "52:54:00:77:01:01",
    "uefi": "52:54:00:77:01:02",
    "ipxe": "52:54:00:77:01:03",
    "http": "52:54:00:77:01:04",
}
FILES = {
    "bios": b"undionly.kpxe",
    "uefi": b"ipxe.efi",
    "ipxe": b"http://10.77.0.1:8080/boot.ipxe?mac=${mac}",
    "http": b"http://10.77.0.1:8080/efi/ipxe.efi",
}
DISCOVERY_CONTROL_BOOT = b"\x06\x01\x08\xff"  # 43: boot the file in this packet (§2.2)
ADDRESS_OPTIONS = (
    OptionCode.LEASE_TIME,
    OptionCode.SUBNET_MASK,
    OptionCode.ROUTER,
    OptionCode.DNS,
)


def _config(base: Path, mode: str) -> dict[str, Any]:
    return {
        "interfaces": ["srv0"],
        "data_dir": str(base / "data"),
        "dhcp": {
            "mode": mode,
            "subnets": [
                {
                    "network": NETWORK,
                    "range": [str(POOL_START), "10.77.1.200"],
                    "router": "10.77.0.1",
                    "dns": ["10.77.0.1"],
                    "lease_time": 3600,
                }
            ],
        },
        "tftp": {"enabled": False},
        "http": {"enabled": False, "port": HTTP_PORT},
        "boot": {
            "bios": "undionly.kpxe",
            "efi-x86_64": "ipxe.efi",
            "ipxe": "http://{server}:{http_port}/boot.ipxe?mac=${mac}",
            "http-efi-x86_64": "efi/ipxe.efi",  # made a URL for HTTP Boot clients
        },
        "policy": {"chain": ["static", "arch"], "plugin_dirs": []},
    }


class Received:
    """One reply as the scripted client got it."""

    def __init__(self, item: dict[str, str]) -> None:
        self.step = item["step"]
        self.source = item["source"]
        self.destination = item["destination"]
        self.hex = item["hex"]
        self.packet: DhcpPacket = decode(bytes.fromhex(item["hex"]))

    def __repr__(self) -> str:
        return f"<{self.step} from {self.source} to {self.destination}: {self.packet!r}>"


class Run:
    """The JSON a pxeclient run printed, with the replies decoded."""

    def __init__(self, output: dict[str, Any]) -> None:
        self.raw = output
        self.address: str | None = output["address"]
        self.sent = {item["step"]: bytes.fromhex(item["hex"]) for item in output["sent"]}
        self.replies = [Received(item) for item in output["replies"]]

    def step(self, step: str, source: str | None = None) -> list[Received]:
        return [
            r
            for r in self.replies
            if r.step == step and (source is None or r.source.startswith(source + ":"))
        ]


class PxeLabCase(SynchronousTestCase):
    """A lab, one client namespace per kind of firmware, and ``twistd -n pxe`` in the server."""

    mode = "proxy"
    kinds: tuple[str, ...] = ("bios", "uefi", "ipxe", "http")

    def setUp(self) -> None:
        require_lab(self)
        if not TWISTD.exists():
            require_binary(str(TWISTD), self)
        self.base = Path(tempfile.mkdtemp(prefix="pxetwist-pxelab-"))
        os.chmod(self.base, 0o755)
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)
        self.lab = NetLab(clients=len(self.kinds)).up()
        self.addCleanup(self.lab.down)
        self.namespaces = dict(zip(self.kinds, self.lab.clients, strict=True))
        for kind, ns in self.namespaces.items():
            self.lab.run(ns, ["ip", "link", "set", "eth0", "address", MACS[kind]], check=True)
        self.server_ip = self.lab.srv_ip
        self.config = self.base / "pxe.yaml"
        self.config.write_text(yaml.safe_dump(_config(self.base, self.mode)))
        self.log = self.base / "twistd.log"
        argv = [str(TWISTD), "-n", "--pidfile", str(self.base / "twistd.pid")]
        argv += ["--logfile", str(self.log), "pxe", "--config", str(self.config)]
        self.server = self.lab.spawn(self.lab.srv, argv)
        try:
            for port in (67, 4011):
                self.lab.wait_port(self.lab.srv, "udp", port, timeout=20, proc=self.server)
        except Exception:
            NetLab.stop(self.server)
            raise AssertionError(f"twistd pxe did not start:\n{self.log_text()}") from None
        self.addCleanup(NetLab.stop, self.server)

    def log_text(self) -> str:
        return self.log.read_text() if self.log.exists() else "(no log)"

    def wait_for_log(self, *parts: str, timeout: float = 3.0) -> None:
        """Until one line of the server's log holds every part (the log may lag the reply)."""
        deadline = time.monotonic() + timeout
        while True:
            if any(all(part in line for part in parts) for line in self.log_text().splitlines()):
                return
            if time.monotonic() >= deadline:
                self.fail(f"no log line with {parts}:\n{self.log_text()}")
            time.sleep(0.05)

    def client(self, kind: str, *args: str) -> Run:
        """Run the scripted client of ``kind`` in its namespace; its parsed output."""
        argv = [str(VENV_BIN / "python"), str(PXECLIENT), "--kind", kind, *args]
        done = self.lab.run(self.namespaces[kind], argv, timeout=20)
        self.assertEqual(done.returncode, 0, f"{done.stderr}\n{self.log_text()}")
        return Run(json.loads(done.stdout))

    def only(self, replies: list[Received], what: str) -> Received:
        self.assertEqual(len(replies), 1, f"{what}: {replies}\n{self.log_text()}")
        return replies[0]

    # -- the shapes of §7.7 ----------------------------------------------------------------------

    def assert_boot(self, reply: Received, kind: str, sent: DhcpPacket) -> None:
        """What every boot reply carries (§2.2, §5 quirks 1 and 9, §7.9)."""
        packet = reply.packet
        self.assertEqual(packet.op, 2)
        self.assertEqual((packet.xid, packet.chaddr), (sent.xid, sent.chaddr))
        self.assertEqual((packet.hops, packet.secs), (0, 0))
        self.assertEqual(packet.file, FILES[kind])
        self.assertEqual(packet.get(OptionCode.BOOTFILE), packet.file + b"\x00")
        self.assertEqual(packet.get(OptionCode.CLIENT_UUID), sent.get(OptionCode.CLIENT_UUID))
        self.assertEqual(packet.server_id, IPv4Address(self.server_ip))
        if kind == "http":
            # R5: HTTPClient and a URL, never the PXE vendor options (§3.1).
            self.assertEqual(packet.get(OptionCode.VENDOR_CLASS), b"HTTPClient")
            self.assertIsNone(packet.get(OptionCode.VENDOR_SPECIFIC))
        else:
            self.assertEqual(packet.get(OptionCode.VENDOR_CLASS), b"PXEClient")
            self.assertEqual(packet.siaddr, IPv4Address(self.server_ip))
            self.assertEqual(packet.sname, self.server_ip.encode())
        if kind == "ipxe":
            self.assertEqual(packet.client_id, sent.client_id)  # R4: 61 echoed (RFC 6842)

    def assert_from_67(self, reply: Received, *, broadcast: bool = True) -> None:
        self.assertEqual(reply.source, f"{self.server_ip}:67")
        if broadcast:
            self.assertEqual(reply.destination, BROADCAST)

    def assert_proxy_offer(self, reply: Received, kind: str, sent: DhcpPacket) -> None:
        """R1/R2 and the proxy rules of §2.3: no address configuration at all."""
        packet = reply.packet
        self.assert_from_67(reply)
        self.assertEqual(packet.message_type, MessageType.OFFER)
        self.assertEqual(packet.yiaddr, IPv4Address(0))
        for code in ADDRESS_OPTIONS:
            self.assertNotIn(code, packet, f"option {code} in a proxy offer")
        self.assert_boot(reply, kind, sent)
        if kind in ("bios", "ipxe"):
            # R1: boot this file now; 43 ends with PXE_END.
            self.assertEqual(packet.get(OptionCode.VENDOR_SPECIFIC), DISCOVERY_CONTROL_BOOT)
        elif kind == "uefi":
            # R2: PXEClient without 43 sends EDK2 to port 4011 (strategy 1 of §2.3).
            self.assertIsNone(packet.get(OptionCode.VENDOR_SPECIFIC))

    def assert_4011_ack(self, reply: Received, sent: DhcpPacket, client: str) -> None:
        """R2's ACK: from port 4011 to the request's source, ciaddr copied, yiaddr 0."""
        packet = reply.packet
        self.assertEqual(reply.source, f"{self.server_ip}:4011")
        self.assertEqual(reply.destination, client)
        self.assertEqual(packet.message_type, MessageType.ACK)
        self.assertEqual(packet.ciaddr, IPv4Address(client))
        self.assertEqual(packet.yiaddr, IPv4Address(0))
        self.assert_boot(reply, "uefi", sent)
        for code in ADDRESS_OPTIONS:
            self.assertNotIn(code, packet)

    def assert_address_reply(
        self, reply: Received, kind: str, sent: DhcpPacket, message: MessageType
    ) -> None:
        """R3/R4/R5: an address and the boot fields in one packet (shape B)."""
        packet = reply.packet
        self.assert_from_67(reply)
        self.assertEqual(packet.message_type, message)
        self.assertEqual(packet.yiaddr, POOL_START)
        self.assertEqual(packet.lease_time, 3600)
        self.assertEqual(packet.get(OptionCode.SUBNET_MASK), IPv4Address("255.255.0.0").packed)
        self.assertEqual(packet.get(OptionCode.ROUTER), IPv4Address("10.77.0.1").packed)
        self.assert_boot(reply, kind, sent)
        if kind != "http":
            # §7.9: full DHCP never sends PXEClient without 43 + file unless 4011 is served.
            self.assertEqual(packet.get(OptionCode.VENDOR_SPECIFIC), DISCOVERY_CONTROL_BOOT)

    # -- pxetwist explain ------------------------------------------------------------------------

    def explain(self, discover: bytes) -> list[list[str]]:
        """``pxetwist explain --json --packet`` for a request: reply hex per step."""
        out = io.StringIO()
        argv = ["explain", "--config", str(self.config), "--packet", discover.hex(), "--json"]
        argv += ["--server-address", self.server_ip, "--network", NETWORK, "--mode", self.mode]
        with contextlib.redirect_stdout(out):
            code = cli.main(argv)
        self.assertEqual(code, 0)
        steps = json.loads(out.getvalue())["steps"]
        return [[reply["hex"] for reply in step["replies"]] for step in steps]

    def assert_same_reply(self, predicted: str, actual: Received) -> None:
        """Option by option first (for a readable failure), then byte for byte."""
        mine = decode(bytes.fromhex(predicted))
        theirs = actual.packet
        self.assertEqual(dict(mine.options), dict(theirs.options))
        self.assertEqual(list(mine.options), list(theirs.options))
        self.assertEqual(mine, theirs)
        self.assertEqual(predicted, actual.hex)


class AuthoritativeLabTests(PxeLabCase):
    """pxetwist as the DHCP server: every kind of client gets address and boot file at once."""

    mode = "authoritative"

    def dora(self, kind: str) -> None:
        run = self.client(kind, "--dora", "--expect", "1")
        sent = decode(run.sent["discover"])
        offer = self.only(run.step("discover"), f"{kind} offers")
        ack = self.only(run.step("request"), f"{kind} acks")
        self.assert_address_reply(offer, kind, sent, MessageType.OFFER)
        self.assert_address_reply(ack, kind, decode(run.sent["request"]), MessageType.ACK)
        self.assertEqual(run.address, str(POOL_START))
        self.assertNotIn("pxe-4011", run.sent, "a shape-B offer needs no port-4011 step")
        [predicted] = self.explain(run.sent["discover"])
        self.assert_same_reply(self.only_hex(predicted), offer)

    def only_hex(self, replies: list[str]) -> str:
        self.assertEqual(len(replies), 1, replies)
        return replies[0]

    def test_bios(self) -> None:
        self.dora("bios")

    def test_uefi(self) -> None:
        """R3: full-DHCP OFFER with PXE extensions, no detour through port 4011."""
        self.dora("uefi")

    def test_ipxe(self) -> None:
        """R4: the script URL ends the chainload loop; 61 echoed."""
        self.dora("ipxe")

    def test_http_boot(self) -> None:
        """R5: HTTPClient and a URL."""
        self.dora("http")


class ProxyLabTests(PxeLabCase):
    """pxetwist as proxyDHCP only: no addresses, R1 for BIOS, R2 and port 4011 for UEFI."""

    mode = "proxy"

    def proxy(self, kind: str) -> Run:
        run = self.client(kind, "--address", f"{FIXED}/16", "--expect", "1")
        sent = decode(run.sent["discover"])
        offer = self.only(run.step("discover"), f"{kind} offers")
        self.assert_proxy_offer(offer, kind, sent)
        predicted = self.explain(run.sent["discover"])
        self.assertEqual(len(predicted[0]), 1, predicted)
        self.assert_same_reply(predicted[0][0], offer)
        if kind != "uefi":
            self.assertNotIn("pxe-4011", run.sent)
            self.assertEqual(len(predicted), 1, "explain shows no 4011 step")
        return run

    def test_bios(self) -> None:
        """R1: proxy OFFER with 43 = 06 01 08 ff, broadcast from port 67."""
        self.proxy("bios")

    def test_uefi(self) -> None:
        """R2: redirect, then the ACK from port 4011 to the request's source."""
        run = self.proxy("uefi")
        request = decode(run.sent["pxe-4011"])
        self.assertEqual(request.ciaddr, IPv4Address(FIXED))
        self.assertEqual(request.message_type, MessageType.REQUEST)
        ack = self.only(run.step("pxe-4011"), "4011 replies")
        self.assert_4011_ack(ack, request, FIXED)
        predicted = self.explain(run.sent["discover"])
        self.assertEqual(len(predicted), 2, "explain follows the redirect to port 4011")
        self.assertEqual(len(predicted[1]), 1, predicted)
        self.assert_same_reply(predicted[1][0], ack)

    def test_ipxe(self) -> None:
        """iPXE takes a proxy offer with siaddr and a file as complete (§4.2)."""
        self.proxy("ipxe")

    def test_http_boot(self) -> None:
        """§3.1: proxy mode works for HTTP Boot: HTTPClient + URL, no 4011 step."""
        self.proxy("http")


class ProxyBesideDnsmasqTests(PxeLabCase):
    """proxyDHCP next to a real DHCP server that hands out addresses and nothing else."""

    mode = "proxy"
    kinds = ("bios", "uefi")

    def setUp(self) -> None:
        super().setUp()
        dnsmasq = require_binary("dnsmasq", self)
        argv = [
            dnsmasq,
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--port=0",  # no DNS
            "--interface=br0",
            "--bind-interfaces",
            "--dhcp-range=10.77.0.120,10.77.0.150,255.255.0.0,1h",
            # A fixed address for the UEFI client, so explain's 4011 step (ciaddr .100) matches.
            f"--dhcp-host={MACS['uefi']},{FIXED}",
            "--dhcp-broadcast",  # the client has no raw socket to take unicast OFFERs
            "--no-ping",
            f"--dhcp-leasefile={self.base / 'dnsmasq.leases'}",
            "--pid-file=",
            "--user=root",
            "--group=root",
            "--log-facility=-",
        ]
        self.dnsmasq_log = self.base / "dnsmasq.log"
        with self.dnsmasq_log.open("wb") as log:
            self.dnsmasq = self.lab.spawn(self.lab.cli, argv, stdout=log, stderr=subprocess.STDOUT)
        self.addCleanup(NetLab.stop, self.dnsmasq)
        self.lab.wait_port(self.lab.cli, "udp", 67, timeout=10, proc=self.dnsmasq)

    def two_offers(self, run: Run) -> tuple[Received, Received]:
        offers = run.step("discover")
        self.assertEqual(len(offers), 2, f"{offers}\n{self.dnsmasq_log.read_text()}")
        dhcp = self.only(run.step("discover", DNSMASQ_IP), "dnsmasq offers")
        proxy = self.only(run.step("discover", self.server_ip), "pxetwist offers")
        # dnsmasq without --pxe-service: an address, no boot information (§7.4 shape A).
        self.assertEqual(dhcp.packet.message_type, MessageType.OFFER)
        self.assertNotEqual(dhcp.packet.yiaddr, IPv4Address(0))
        self.assertIsNone(dhcp.packet.get(OptionCode.VENDOR_CLASS))
        self.assertEqual(dhcp.packet.file, b"")
        return dhcp, proxy

    def assert_explained(self, run: Run, offer: Received) -> list[list[str]]:
        predicted = self.explain(run.sent["discover"])
        self.assertEqual(len(predicted[0]), 1, predicted)
        self.assert_same_reply(predicted[0][0], offer)
        return predicted

    def assert_request_left_to_dnsmasq(self, run: Run) -> None:
        """§2.3: in proxy mode a REQUEST on 67 belongs to the DHCP server."""
        ack = self.only(run.step("request"), "acks")
        self.assertEqual(ack.source, f"{DNSMASQ_IP}:67")
        self.assertEqual(ack.packet.message_type, MessageType.ACK)
        self.wait_for_log(f"REQUEST from {ack.packet.mac}", "proxy mode answers DISCOVERs only")

    def test_uefi_address_from_dnsmasq_boot_file_from_4011(self) -> None:
        run = self.client("uefi", "--dora", "--expect", "2", "--window", "3")
        sent = decode(run.sent["discover"])
        dhcp, proxy = self.two_offers(run)
        self.assertEqual(dhcp.packet.yiaddr, IPv4Address(FIXED))
        self.assert_proxy_offer(proxy, "uefi", sent)
        self.assert_request_left_to_dnsmasq(run)
        self.assertEqual(run.address, FIXED)
        request = decode(run.sent["pxe-4011"])
        ack = self.only(run.step("pxe-4011"), "4011 replies")
        self.assert_4011_ack(ack, request, FIXED)
        predicted = self.assert_explained(run, proxy)
        self.assertEqual(len(predicted), 2, predicted)
        self.assert_same_reply(predicted[1][0], ack)

    def test_bios_boot_file_in_the_proxy_offer(self) -> None:
        run = self.client("bios", "--dora", "--expect", "2", "--window", "3")
        sent = decode(run.sent["discover"])
        _, proxy = self.two_offers(run)
        self.assert_proxy_offer(proxy, "bios", sent)
        self.assert_request_left_to_dnsmasq(run)
        self.assertIsNotNone(run.address)
        self.assertNotIn("pxe-4011", run.sent, "43.6 = 8 + file: nothing more to ask")
        self.assert_explained(run, proxy)
