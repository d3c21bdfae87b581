"""A scripted PXE client for the lab tests: it plays one kind of network-boot firmware.

Run it inside a client namespace of a :class:`pxetwist.lab.NetLab` with the venv's Python::

    ip netns exec <lab>-c1 .venv/bin/python tests/dhcp/pxeclient.py --kind uefi --dora

Standard library only, so it checks the server with code that shares nothing with pxetwist.
The DISCOVERs are shaped like the vectors of protocol-reference §7:

* ``bios``: a BIOS PXE ROM (V1): 60 ``PXEClient:Arch:00000:UNDI:002001``, 93 = 0, 94 UNDI 2.1,
  97, 57 = 1260 and V1's parameter request list.
* ``uefi``: an x64 UEFI PXE stack (V3): arch 7, UNDI 3.16, EDK2's 35-item list.  If an offer
  holds 60 = ``PXEClient`` without option 43 (the EDK2 "ProxyBinl"/"DhcpBinl" case, §2.3), it
  sends its REQUEST to ``siaddr`` (else option 54) port 4011, with ``ciaddr`` set, from an
  ephemeral port, and waits for the ACK.
* ``ipxe``: iPXE (V5): user class ``iPXE`` (raw), 175 bus id, 61 = 01 + MAC, ``flags`` = 0.
* ``http``: UEFI HTTP Boot (V6): 60 ``HTTPClient:Arch:00016:UNDI:003000``, 93 = 16.

Steps: DISCOVER broadcast from port 68 (``SO_BINDTODEVICE`` + ``SO_BROADCAST``), collect offers
for a window; with ``--dora`` REQUEST the first offer that has an address and, once ACKed,
configure it on the interface (``ip addr add``); with ``--address`` configure a fixed address
instead (proxyDHCP without any DHCP server); then the port-4011 step when an offer asks for
it.  The address is removed again before the script exits.

Output, one JSON object on stdout: the MAC and xid used, the address configured, every
datagram sent (step, destination, hex) and every reply received that matches our xid and
``chaddr`` (step, source ``ip:port``, the IP destination it was sent to, hex).  Exit status
0, or 3 when the 4011 step was needed but there was no address to do it from.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import select
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

CLIENT_PORT = 68
SERVER_PORT = 67
PXE_PORT = 4011
COOKIE = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, ACK, NAK = 1, 2, 3, 5, 6
MAX_DATAGRAMS = 256  # per collection window: a bound on the receive loop
IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
PKTINFO = struct.Struct("=I4s4s")  # ipi_ifindex, ipi_spec_dst, ipi_addr (the header's target)

# Parameter request lists of the vectors in protocol-reference §7.1, §7.3, §7.5 and §7.6.
PRL_BIOS = bytes.fromhex("0102030405060b0c0d0f10111216171c28292a2b3233363a3b3c42438081828384858687")
PRL_UEFI = bytes.fromhex("0102030405060c0d0f111216171c28292a2b3233363a3b3c4243618081828384858687")
PRL_IPXE = bytes.fromhex("010306070c0f111a2a2b3c424377798081828384858687afcb")
PRL_HTTP = bytes.fromhex("0102030405060c0d0f111216171c28292a2b3233363a3b3c424361")

KINDS = ("bios", "uefi", "ipxe", "http")
#: Default xid per kind (the vectors' own), so a run is reproducible.
XIDS = {"bios": 0x9B4E0557, "uefi": 0x0C41E8DC, "ipxe": 0x5A5A0001, "http": 0x0BADF00D}


def guid_option(mac: bytes) -> bytes:
    """Option 97: type 0 and a GUID made from the MAC, so each client has its own."""
    return b"\x00" + bytes.fromhex("8b5a3c1e2f444c1a9d2e") + mac


def discover_options(kind: str, mac: bytes) -> list[tuple[int, bytes]]:
    """The options of the kind's DISCOVER, in the order of its §7 vector."""
    uuid = guid_option(mac)
    if kind == "bios":
        return [
            (53, bytes((DISCOVER,))),
            (55, PRL_BIOS),
            (57, (1260).to_bytes(2, "big")),
            (97, uuid),
            (93, b"\x00\x00"),
            (94, b"\x01\x02\x01"),
            (60, b"PXEClient:Arch:00000:UNDI:002001"),
        ]
    if kind == "uefi":
        return [
            (53, bytes((DISCOVER,))),
            (57, (1472).to_bytes(2, "big")),
            (55, PRL_UEFI),
            (97, uuid),
            (94, b"\x01\x03\x10"),
            (93, b"\x00\x07"),
            (60, b"PXEClient:Arch:00007:UNDI:003016"),
        ]
    if kind == "ipxe":
        return [
            (53, bytes((DISCOVER,))),
            (57, (1472).to_bytes(2, "big")),
            (93, b"\x00\x07"),
            (94, b"\x01\x03\x0a"),
            (60, b"PXEClient:Arch:00007:UNDI:003010"),
            (77, b"iPXE"),
            (55, PRL_IPXE),
            (175, bytes.fromhex("b1 05 01 80 86 10 0e")),
            (61, b"\x01" + mac),
            (97, uuid),
        ]
    if kind == "http":
        return [
            (53, bytes((DISCOVER,))),
            (57, (1472).to_bytes(2, "big")),
            (55, PRL_HTTP),
            (97, uuid),
            (94, b"\x01\x03\x00"),
            (93, b"\x00\x10"),
            (60, b"HTTPClient:Arch:00016:UNDI:003000"),
        ]
    raise ValueError(f"unknown kind {kind!r}")


def encode(
    *,
    xid: int,
    mac: bytes,
    options: list[tuple[int, bytes]],
    flags: int = 0,
    secs: int = 0,
    ciaddr: str = "0.0.0.0",
    size: int = 300,
) -> bytes:
    """A BOOTREQUEST (RFC 2131 §2), options in the given order, END, zero fill to ``size``."""
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1,
        1,
        6,
        0,
        xid,
        secs,
        flags,
        ipaddress.IPv4Address(ciaddr).packed,
        bytes(4),
        bytes(4),
        bytes(4),
        mac.ljust(16, b"\x00"),
        b"",
        b"",
    )
    body = b"".join(bytes((code, len(value))) + value for code, value in options)
    data = header + COOKIE + body + b"\xff"
    return data.ljust(size, b"\x00")


def decode(data: bytes) -> dict[str, Any] | None:
    """The fields this script needs from a reply; ``None`` if it is not a DHCP message."""
    if len(data) < 240 or data[236:240] != COOKIE:
        return None
    op, _htype, _hlen, _hops, xid, _secs, flags = struct.unpack_from("!BBBBIHH", data)
    options: dict[int, bytes] = {}
    position = 240
    while position < len(data):
        code = data[position]
        if code == 0:
            position += 1
            continue
        if code == 255 or position + 1 >= len(data):
            break
        length = data[position + 1]
        value = data[position + 2 : position + 2 + length]
        options[code] = options.get(code, b"") + value
        position += 2 + length
    return {
        "op": op,
        "xid": xid,
        "flags": flags,
        "ciaddr": str(ipaddress.IPv4Address(data[12:16])),
        "yiaddr": str(ipaddress.IPv4Address(data[16:20])),
        "siaddr": str(ipaddress.IPv4Address(data[20:24])),
        "chaddr": data[28:34],
        "file": data[108:236].split(b"\x00", 1)[0],
        "options": options,
    }


def with_message_type(options: list[tuple[int, bytes]], kind: int) -> list[tuple[int, bytes]]:
    """The same options with option 53 replaced in place."""
    return [(code, bytes((kind,)) if code == 53 else value) for code, value in options]


def parse_options(data: bytes) -> list[tuple[int, bytes]]:
    """Options of a request given as bytes (``--packet``), in order."""
    found: list[tuple[int, bytes]] = []
    position = 240
    while position < len(data) and data[position] != 255:
        if data[position] == 0:
            position += 1
            continue
        length = data[position + 1]
        found.append((data[position], data[position + 2 : position + 2 + length]))
        position += 2 + length
    return found


class Client:
    def __init__(self, iface: str, mac: bytes, xid: int) -> None:
        self.iface = iface
        self.mac = mac
        self.xid = xid
        self.sent: list[dict[str, str]] = []
        self.replies: list[dict[str, Any]] = []
        self.address: str | None = None
        self.configured: str | None = None

    def open_socket(self, address: str, port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.iface.encode())
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        sock.bind((address, port))
        return sock

    def send(self, sock: socket.socket, step: str, data: bytes, to: tuple[str, int]) -> None:
        sock.sendto(data, to)
        self.sent.append({"step": step, "to": f"{to[0]}:{to[1]}", "hex": data.hex()})

    def collect(
        self,
        sock: socket.socket,
        step: str,
        window: float,
        done: Callable[[list[dict[str, Any]]], bool],
    ) -> list[dict[str, Any]]:
        """Replies to our xid and MAC until ``done`` says so or ``window`` seconds pass."""
        got: list[dict[str, Any]] = []
        deadline = time.monotonic() + window
        for _ in range(MAX_DATAGRAMS):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            readable, _, _ = select.select([sock], [], [], remaining)
            if not readable:
                break
            data, ancillary, _flags, (host, port) = sock.recvmsg(
                4096, socket.CMSG_SPACE(PKTINFO.size)
            )
            destination = None
            for level, kind, value in ancillary:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(value) >= 12:
                    destination = str(ipaddress.IPv4Address(PKTINFO.unpack_from(value)[2]))
            reply = decode(data)
            if (
                reply is None
                or reply["op"] != 2
                or reply["xid"] != self.xid
                or reply["chaddr"] != self.mac
            ):
                continue
            got.append(reply)
            self.replies.append(
                {
                    "step": step,
                    "source": f"{host}:{port}",
                    "destination": destination,
                    "hex": data.hex(),
                }
            )
            if done(got):
                break
        return got

    def configure(self, cidr: str) -> None:
        subprocess.run(
            ["ip", "addr", "add", cidr, "dev", self.iface], check=True, capture_output=True
        )
        self.configured = cidr
        self.address = cidr.split("/")[0]

    def unconfigure(self) -> None:
        if self.configured is not None:
            subprocess.run(
                ["ip", "addr", "del", self.configured, "dev", self.iface],
                check=False,
                capture_output=True,
            )
            self.configured = None


def message_type(reply: dict[str, Any]) -> int | None:
    value = reply["options"].get(53)
    return value[0] if value else None


def needs_4011(reply: dict[str, Any]) -> bool:
    """EDK2's "Binl" offers: ``PXEClient`` without PXE vendor options (§2.3, §5 quirk 8)."""
    options = reply["options"]
    return options.get(60, b"").startswith(b"PXEClient") and 43 not in options


def prefix_length(reply: dict[str, Any], default: int) -> int:
    mask = reply["options"].get(1)
    if mask is None or len(mask) != 4:
        return default
    return ipaddress.IPv4Network(f"0.0.0.0/{ipaddress.IPv4Address(mask)}").prefixlen


def run(args: argparse.Namespace) -> int:
    mac = bytes.fromhex(args.mac.replace(":", "")) if args.mac else read_mac(args.iface)
    if args.packet:
        discover = bytes.fromhex(args.packet)
        xid = struct.unpack_from("!I", discover, 4)[0]
        mac = discover[28:34]
        options = parse_options(discover)
        flags = struct.unpack_from("!H", discover, 10)[0]
        secs = struct.unpack_from("!H", discover, 8)[0]
    else:
        xid = args.xid if args.xid is not None else XIDS[args.kind]
        options = discover_options(args.kind, mac)
        flags = 0 if args.kind == "ipxe" else 0x8000
        secs = 0
        discover = encode(xid=xid, mac=mac, options=options, flags=flags, secs=secs)
    client = Client(args.iface, mac, xid)
    status = 0
    try:
        with client.open_socket("0.0.0.0", CLIENT_PORT) as sock:
            client.send(sock, "discover", discover, ("255.255.255.255", SERVER_PORT))
            offers = client.collect(
                sock,
                "discover",
                args.window,
                lambda got: len(got) >= args.expect if args.expect else False,
            )
            with_address = [
                o for o in offers if message_type(o) == OFFER and o["yiaddr"] != "0.0.0.0"
            ]
            if args.dora and with_address:
                offer = with_address[0]
                server_id = offer["options"].get(54, b"")
                request_options = [(53, bytes((REQUEST,)))]
                if len(server_id) == 4:
                    request_options.append((54, server_id))
                request_options.append((50, ipaddress.IPv4Address(offer["yiaddr"]).packed))
                request_options += [o for o in options if o[0] not in (50, 53, 54)]
                request = encode(xid=xid, mac=mac, options=request_options, flags=flags, secs=secs)
                client.send(sock, "request", request, ("255.255.255.255", SERVER_PORT))
                answers = client.collect(
                    sock,
                    "request",
                    args.timeout,
                    lambda got: any(message_type(r) in (ACK, NAK) for r in got),
                )
                acks = [r for r in answers if message_type(r) == ACK]
                if acks:
                    ack = acks[0]
                    client.configure(f"{ack['yiaddr']}/{prefix_length(ack, args.prefix)}")
        if client.address is None and args.address:
            client.configure(args.address)
        binl = [o for o in offers if needs_4011(o)]
        if binl and not args.no_4011:
            offer = binl[0]
            target = offer["siaddr"]
            if target == "0.0.0.0" and len(offer["options"].get(54, b"")) == 4:
                target = str(ipaddress.IPv4Address(offer["options"][54]))
            if client.address is None:
                status = 3
            else:
                request = encode(
                    xid=xid,
                    mac=mac,
                    options=with_message_type(options, REQUEST),
                    flags=flags,
                    secs=secs,
                    ciaddr=client.address,
                )
                with client.open_socket(client.address, 0) as sock:
                    client.send(sock, "pxe-4011", request, (target, PXE_PORT))
                    client.collect(
                        sock,
                        "pxe-4011",
                        args.timeout,
                        lambda got: any(message_type(r) == ACK for r in got),
                    )
    finally:
        client.unconfigure()
    json.dump(
        {
            "kind": args.kind,
            "mac": mac.hex(":"),
            "xid": f"{xid:08x}",
            "address": client.address,
            "sent": client.sent,
            "replies": client.replies,
        },
        sys.stdout,
    )
    sys.stdout.write("\n")
    return status


def read_mac(iface: str) -> bytes:
    with open(os.path.join("/sys/class/net", iface, "address")) as f:
        return bytes.fromhex(f.read().strip().replace(":", ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kind", choices=KINDS, required=True)
    parser.add_argument("--iface", default="eth0")
    parser.add_argument("--mac", help="chaddr (default: the interface's MAC)")
    parser.add_argument("--xid", type=lambda text: int(text, 0))
    parser.add_argument("--packet", help="send this DISCOVER (hex) instead of building one")
    parser.add_argument("--window", type=float, default=1.0, help="seconds to collect offers")
    parser.add_argument("--expect", type=int, default=0, help="stop collecting after N offers")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds to wait for an ACK")
    parser.add_argument("--dora", action="store_true", help="REQUEST an offered address")
    parser.add_argument("--address", help="CIDR to configure when no DHCP server gives one")
    parser.add_argument("--prefix", type=int, default=24, help="prefix if the ACK has no 1")
    parser.add_argument("--no-4011", action="store_true", help="never do the port-4011 step")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
