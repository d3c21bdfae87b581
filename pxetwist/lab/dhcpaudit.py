"""Audit DHCP traffic captured by tcpdump: was an address ever held by two clients at once?

Used by the scale-out lab tests and the PostgreSQL benchmark (issue 15), where several servers
answer the same clients.  :func:`read_pcap` reads a classic pcap file (``tcpdump -w``, Ethernet)
and decodes every DHCP packet with pxetwist's own codec; :func:`audit` replays them in capture
order:

* an ACK gives its ``yiaddr`` to its client until ``now + lease time``;
* the client gives it up when it is seen starting over (a DISCOVER) or requesting another
  address, or releasing it;
* an ACK of an address that another client still holds is a *duplicate address*; a client
  that holds two addresses at once is a *duplicate client*.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator
from ipaddress import IPv4Address
from pathlib import Path

import attrs

from pxetwist.dhcp.options import MessageType
from pxetwist.dhcp.packet import DhcpPacket, decode

_ETHERNET = 1
_LINUX_SLL = 113


@attrs.frozen
class Captured:
    when: float
    source: IPv4Address
    packet: DhcpPacket


def read_pcap(path: str | Path) -> Iterator[Captured]:
    """Every decodable DHCP packet (UDP 67/68) in a pcap file, in capture order."""
    data = Path(path).read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1"):
        endian = "<"
    elif magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        endian = ">"
    else:
        raise ValueError(f"{path}: not a pcap file")
    nano = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
    link = struct.unpack(endian + "I", data[20:24])[0]
    offset = 24
    while offset + 16 <= len(data):
        seconds, fraction, length, _ = struct.unpack(endian + "IIII", data[offset : offset + 16])
        offset += 16
        frame = data[offset : offset + length]
        offset += length
        when = seconds + fraction / (1e9 if nano else 1e6)
        if link == _ETHERNET:
            if len(frame) < 14 or frame[12:14] != b"\x08\x00":
                continue
            ip = frame[14:]
        elif link == _LINUX_SLL:
            if len(frame) < 16 or frame[14:16] != b"\x08\x00":
                continue
            ip = frame[16:]
        else:
            raise ValueError(f"{path}: link type {link} not supported")
        if len(ip) < 20 or ip[9] != 17:
            continue
        header = (ip[0] & 0x0F) * 4
        udp = ip[header:]
        if len(udp) < 8:
            continue
        ports = struct.unpack("!HH", udp[:4])
        if not {67, 68} & set(ports):
            continue
        try:
            packet = decode(udp[8:])
        except ValueError:
            continue
        yield Captured(when, IPv4Address(ip[12:16]), packet)


@attrs.define
class AuditReport:
    acks: int = 0
    naks: int = 0
    duplicate_addresses: list[str] = attrs.field(factory=list)
    duplicate_clients: list[str] = attrs.field(factory=list)
    ack_times: list[float] = attrs.field(factory=list)
    acked: list[tuple[IPv4Address, bytes]] = attrs.field(factory=list)  # (address, chaddr)


def audit(packets: Iterable[Captured]) -> AuditReport:
    report = AuditReport()
    holder: dict[IPv4Address, tuple[bytes, float]] = {}  # address -> (client, until)
    holding: dict[bytes, dict[IPv4Address, float]] = {}  # client -> address -> until

    def give_up(client: bytes, keep: IPv4Address | None) -> None:
        for address in list(holding.get(client, {})):
            if address != keep:
                del holding[client][address]
                if holder.get(address, (b"",))[0] == client:
                    del holder[address]

    for captured in packets:
        packet = captured.packet
        client = packet.chaddr[: packet.hlen] if packet.hlen else packet.chaddr[:6]
        kind = packet.message_type
        now = captured.when
        if kind is MessageType.DISCOVER:
            give_up(client, None)
        elif kind is MessageType.REQUEST:
            wanted = packet.requested_ip or (packet.ciaddr if int(packet.ciaddr) else None)
            give_up(client, wanted)
        elif kind is MessageType.RELEASE:
            give_up(client, None)
        elif kind is MessageType.NAK:
            report.naks += 1
        elif kind is MessageType.ACK and int(packet.yiaddr):
            report.acks += 1
            report.ack_times.append(now)
            address = packet.yiaddr
            report.acked.append((address, client))
            until = now + float(packet.lease_time or 0)
            held = holder.get(address)
            if held is not None and held[0] != client and held[1] > now:
                report.duplicate_addresses.append(
                    f"{address} ACKed to {client.hex(':')} at {now:.3f} while "
                    f"{held[0].hex(':')} holds it"
                )
            others = [a for a, end in holding.get(client, {}).items() if a != address and end > now]
            if others:
                report.duplicate_clients.append(
                    f"{client.hex(':')} ACKed {address} at {now:.3f} while holding "
                    + ", ".join(map(str, others))
                )
            holder[address] = (client, until)
            holding.setdefault(client, {})[address] = until
    return report
