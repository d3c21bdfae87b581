"""Hostile DHCP traffic for the lab tests and the fuzz benchmark: mutated and malformed packets.

Run inside a lab namespace (``python -m pxetwist.lab.dhcpfuzz ...``); it only ever sends to the
server address it is given, and every loop is bounded by a count and a time limit.

* ``flood IP COUNT [SEED] [--rate N] [--malformed] [--max-seconds S]``: COUNT datagrams to
  ``IP`` port 67 (and now and then 4011): valid requests of every kind (DISCOVER, REQUEST,
  INFORM, RELEASE, DECLINE, PXE and relayed ones, overloaded and long options) mutated by bit
  flips, cuts, junk tails, broken option lengths, repeated or random options, odd headers, or
  pure noise.  With ``--malformed``, only datagrams the decoder must refuse (issue 18 defect 6:
  a log line each).  Prints ``sent``, ``seconds`` and ``rate``.

:func:`mutated` and :func:`malformed` are also used in-process by the hypothesis tests.
"""

from __future__ import annotations

import argparse
import random
import socket
import struct
import sys
import time
from collections.abc import Iterator
from typing import Final

from pxetwist.lab.flood import paced, send_bounded

SERVER_PORT: Final = 67
PXE_PORT: Final = 4011
_COOKIE: Final = b"\x63\x82\x53\x63"


def _header(
    rng: random.Random, *, op: int = 1, ciaddr: bytes = bytes(4), giaddr: bytes = bytes(4)
) -> bytes:
    chaddr = bytes((0x02, *rng.randbytes(5))) + bytes(10)
    return (
        struct.pack("!BBBBIHH", op, 1, 6, 0, rng.randrange(1 << 32), 0, 0x8000)
        + ciaddr
        + bytes(4)
        + bytes(4)
        + giaddr
        + chaddr
        + bytes(64)
        + bytes(128)
        + _COOKIE
    )


def _option(code: int, value: bytes) -> bytes:
    return bytes((code, len(value))) + value


def valid(rng: random.Random, server: bytes) -> bytes:
    """A well-formed request of one of the kinds real clients and relays send."""
    kind = rng.randrange(9)
    ip = bytes((10, 77, 1, rng.randrange(1, 255)))
    pxe = _option(60, b"PXEClient:Arch:00007:UNDI:003016") + _option(93, b"\x00\x07")
    prl = _option(55, bytes((1, 3, 6, 15, 28, 43, 60, 66, 67)))
    if kind == 0:
        return _header(rng) + _option(53, b"\x01") + prl + b"\xff"
    if kind == 1:  # a PXE ROM: 93, 60, 97, 94
        uuid = _option(97, b"\x00" + rng.randbytes(16)) + _option(94, b"\x01\x02\x01")
        return (
            _header(rng)
            + _option(53, b"\x01")
            + pxe
            + uuid
            + prl
            + _option(57, b"\x05\xc0")
            + b"\xff"
        )
    if kind == 2:  # SELECTING
        body = _option(53, b"\x03") + _option(54, server) + _option(50, ip)
        return _header(rng) + body + prl + b"\xff"
    if kind == 3:  # RENEWING / INFORM / RELEASE / DECLINE
        message = rng.choice((b"\x03", b"\x08", b"\x07", b"\x04"))
        return _header(rng, ciaddr=ip) + _option(53, message) + _option(54, server) + b"\xff"
    if kind == 4:  # relayed, with option 82
        relay = _option(82, _option(1, b"eth0/1") + _option(2, rng.randbytes(6)))
        return _header(rng, giaddr=bytes((10, 77, 0, 2))) + _option(53, b"\x01") + relay + b"\xff"
    if kind == 5:  # iPXE: user class, 175, client id
        ipxe = (
            _option(77, b"iPXE")
            + _option(175, b"\xb1\x05\x01\x10\xec\x81\x39")
            + _option(61, b"\x01" + rng.randbytes(6))
        )
        return _header(rng) + _option(53, b"\x01") + pxe + ipxe + b"\xff"
    if kind == 6:  # long options split into instances (RFC 3396), a long client id
        long_id = rng.randbytes(rng.randrange(200, 400))
        parts = b"".join(_option(61, long_id[i : i + 255]) for i in range(0, len(long_id), 255))
        return _header(rng) + _option(53, b"\x01") + parts + b"\xff"
    if kind == 7:  # options overloaded into file and sname (option 52)
        packet = bytearray(_header(rng) + _option(53, b"\x01") + _option(52, b"\x03") + b"\xff")
        packet[108:112] = _option(12, b"ab")
        packet[112] = 0xFF
        packet[44:47] = b"\x3d\x01\x07"
        return bytes(packet)
    # the port-4011 REQUEST of a UEFI client
    return (
        _header(rng, ciaddr=ip)
        + _option(53, b"\x03")
        + pxe
        + _option(43, b"\x47\x04\x80\x00\x00\x00\xff")
        + b"\xff"
    )


def mutated(rng: random.Random, server: bytes = bytes((10, 77, 0, 1))) -> bytes:
    """One hostile datagram: a valid request mutated one of several ways, or plain noise."""
    choice = rng.randrange(12)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 700))
    if choice == 1:
        return malformed(rng, server)
    packet = bytearray(valid(rng, server))
    if choice in (2, 3):  # flip bits anywhere
        for _ in range(rng.randrange(1, 10)):
            position = rng.randrange(len(packet))
            packet[position] ^= 1 << rng.randrange(8)
    elif choice == 4:  # cut short
        del packet[rng.randrange(len(packet)) :]
    elif choice == 5:  # junk after END, or instead of it
        if rng.random() < 0.5:
            packet = packet[:-1]
        packet += rng.randbytes(rng.randrange(1, 300))
    elif choice == 6:  # an option length that lies
        position = rng.randrange(241, len(packet)) if len(packet) > 241 else 241
        if position < len(packet):
            packet[position] = rng.randrange(256)
    elif choice == 7:  # random options appended before END
        extra = b"".join(
            _option(rng.randrange(1, 255), rng.randbytes(rng.randrange(0, 40)))
            for _ in range(rng.randrange(1, 30))
        )
        packet = packet[:-1] + extra + b"\xff"
    elif choice == 8:  # odd header fields: htype, hlen, op, hops, flags
        offset = rng.choice((0, 1, 2, 3, 10, 11))
        packet[offset] = rng.randrange(256)
    elif choice == 9:  # another message type, also the ones only servers send
        if len(packet) > 242 and packet[240] == 53:
            packet[242] = rng.randrange(0, 20)
    elif choice == 10:  # fixed-length options with the wrong length
        code = rng.choice((50, 51, 53, 54, 57, 93, 118))
        packet = packet[:-1] + _option(code, rng.randbytes(rng.randrange(0, 9))) + b"\xff"
    return bytes(packet)


def malformed(rng: random.Random, server: bytes = bytes((10, 77, 0, 1))) -> bytes:
    """A datagram the decoder must refuse: too short, a wrong cookie, an option running past
    the end, a bad overload or message type; each malformed a different way."""
    packet = bytearray(valid(rng, server))
    how = rng.randrange(5)
    if how == 0:
        return bytes(packet[: rng.randrange(0, 240)])
    if how == 1:
        packet[236:240] = rng.randbytes(4) if rng.random() < 0.9 else b"\x00\x00\x00\x00"
        if packet[236:240] == _COOKIE:
            packet[236] ^= 1
        return bytes(packet)
    if how == 2:  # the last option claims more bytes than there are
        return bytes(packet[:-1]) + bytes((12, 200)) + b"abc"
    if how == 3:  # option 52 out of range
        return bytes(packet[:-1]) + _option(52, b"\x07") + b"\xff"
    # a message type nobody defined, or op disagreeing with it
    packet[0] = 2
    return bytes(packet)


def stream(count: int, seed: int, *, only_malformed: bool = False) -> Iterator[bytes]:
    rng = random.Random(seed)
    make = malformed if only_malformed else mutated
    for _ in range(count):
        yield make(rng)


def run_flood(
    ip: str,
    count: int,
    seed: int,
    deadline: float,
    *,
    rate: float = 0.0,
    only_malformed: bool = False,
) -> dict[str, float]:
    """Send ``count`` datagrams to ``ip``, at most ``rate`` a second (0: as fast as the
    sockets take them); replies are not read."""
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    rng = random.Random(seed ^ 0x5EED)
    sent = 0
    began = time.monotonic()
    try:
        for sock in senders:
            sock.setblocking(False)
        for datagram in paced(stream(count, seed, only_malformed=only_malformed), rate, deadline):
            sock = senders[sent % len(senders)]
            port = PXE_PORT if rng.random() < 0.1 else SERVER_PORT
            send_bounded(sock, datagram, (ip, port))
            sent += 1
    finally:
        for sock in senders:
            sock.close()
    seconds = time.monotonic() - began
    return {"sent": sent, "seconds": round(seconds, 3), "rate": round(sent / max(seconds, 1e-9))}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pxetwist.lab.dhcpfuzz")
    sub = parser.add_subparsers(dest="command", required=True)
    flood = sub.add_parser("flood", help="mutated (or malformed) datagrams to port 67")
    flood.add_argument("ip")
    flood.add_argument("count", type=int)
    flood.add_argument("seed", type=int, nargs="?", default=1)
    flood.add_argument("--rate", type=float, default=0.0, help="datagrams a second (0: no cap)")
    flood.add_argument("--malformed", action="store_true", help="only undecodable datagrams")
    flood.add_argument("--max-seconds", type=float, default=600.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    result = run_flood(
        args.ip,
        args.count,
        args.seed,
        deadline,
        rate=args.rate,
        only_malformed=args.malformed,
    )
    for key, value in result.items():
        print(f"{key} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
