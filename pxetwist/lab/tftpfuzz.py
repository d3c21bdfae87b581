"""Hostile TFTP traffic for the lab tests and the fuzz benchmark: oversized and mutated packets.

Run inside a lab client namespace (``python -m pxetwist.lab.tftpfuzz ...``); it only ever sends
to the server address it is given, and every loop is bounded by a count and a time limit.

* ``oversized IP FILE COUNT``: COUNT read requests of 6 KB or more (issue 18, defect 1), one
  at a time from a fresh port: ``FILE`` followed by hundreds of ``blksize`` pairs, or the name
  behind thousands of ``./``.  Each answer is read; an OACK or DATA is ended with ERROR 0 at
  once (the client gives up, as an EFI ``tsize`` probe does), so the server's slot ends too.
  Prints ``sent N``, ``answered N``, ``unanswered N``.
* ``flood IP FILE COUNT [SEED] [--rate N]``: COUNT mutated datagrams (valid packets with bits
  flipped, cut, extended, duplicated fields, random opcodes, giant option lists, pure noise) to
  port 69 and to the transfer ports the server answers from, at most N a second.  Prints
  ``sent``, ``seconds``, ``rate`` and how many answers came back.
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

TFTP_PORT: Final = 69
ANSWER_TIMEOUT: Final = 2.0
"""Seconds an oversized request waits for its answer before it counts as unanswered."""
GIVE_UP_AFTER: Final = 20
"""Consecutive unanswered oversized requests after which the run stops (the server is stuck)."""


def oversized_request(filename: str, index: int) -> bytes:
    """An RRQ of 6 KB or more, in one of the two shapes the probe used (issue 18, defect 1)."""
    if index % 2 == 0:
        options = b"blksize\x00512\x00" * 550
        return b"\x00\x01" + filename.encode() + b"\x00octet\x00" + options
    return b"\x00\x01" + b"./" * 3000 + filename.encode() + b"\x00octet\x00"


def _valid_packets(filename: str, rng: random.Random) -> list[bytes]:
    name = filename.encode()
    return [
        b"\x00\x01" + name + b"\x00octet\x00",
        b"\x00\x01" + name + b"\x00octet\x00blksize\x001468\x00tsize\x000\x00",
        b"\x00\x01" + name + b"\x00netascii\x00windowsize\x0016\x00timeout\x002\x00",
        b"\x00\x02" + name + b"\x00octet\x00",
        struct.pack("!HH", 4, rng.randrange(65536)),
        struct.pack("!HH", 3, rng.randrange(65536)) + rng.randbytes(rng.randrange(600)),
        struct.pack("!HH", 5, rng.randrange(10)) + b"oops\x00",
        b"\x00\x06blksize\x00512\x00",
    ]


def mutated(filename: str, rng: random.Random) -> bytes:
    """One hostile datagram: a valid packet mutated one of several ways, or plain noise."""
    choice = rng.randrange(10)
    if choice == 0:
        return rng.randbytes(rng.randrange(0, 600))
    if choice == 1:  # a known or unknown opcode and a few bytes
        return struct.pack("!H", rng.randrange(12)) + rng.randbytes(rng.randrange(0, 8))
    if choice == 2:  # many options, some repeated, some without values, some huge
        parts = [b"\x00\x01", filename.encode(), b"\x00", rng.choice([b"octet", b"OCTET", b"x"])]
        for _ in range(rng.randrange(1, 200)):
            name = rng.choice([b"blksize", b"tsize", b"windowsize", b"timeout", b"z" * 300])
            value = rng.choice([b"0", b"8", b"65464", b"99999999999", b"-1", b"", b"1468"])
            parts += [b"\x00", name, b"\x00", value]
        if rng.random() < 0.8:
            parts.append(b"\x00")
        return b"".join(parts)
    if choice == 3:  # a path that tries to leave the root
        trick = rng.choice([b"../" * 20 + b"etc/passwd", b"/" + b"./" * 500, b"..\\..\\x", b"\xff"])
        return b"\x00\x01" + trick + b"\x00octet\x00"
    packet = bytearray(rng.choice(_valid_packets(filename, rng)))
    if choice in (4, 5):  # flip bits
        for _ in range(rng.randrange(1, 8)):
            position = rng.randrange(len(packet))
            packet[position] ^= 1 << rng.randrange(8)
    elif choice == 6:  # cut short
        del packet[rng.randrange(len(packet)) :]
    elif choice == 7:  # trailing junk
        packet += rng.randbytes(rng.randrange(1, 200))
    elif choice == 8:  # NULs in odd places
        for _ in range(rng.randrange(1, 4)):
            packet.insert(rng.randrange(len(packet) + 1), 0)
    return bytes(packet)


def mutated_stream(filename: str, count: int, seed: int) -> Iterator[bytes]:
    rng = random.Random(seed)
    for _ in range(count):
        yield mutated(filename, rng)


def run_oversized(ip: str, filename: str, count: int, deadline: float) -> dict[str, int]:
    answered = unanswered = sent = streak = 0
    for index in range(count):
        if time.monotonic() > deadline or streak >= GIVE_UP_AFTER:
            break
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(ANSWER_TIMEOUT)
            client.sendto(oversized_request(filename, index), (ip, TFTP_PORT))
            sent += 1
            try:
                answer, server = client.recvfrom(70000)
            except TimeoutError:
                unanswered += 1
                streak += 1
                continue
            streak = 0
            answered += 1
            if answer[:2] in (b"\x00\x03", b"\x00\x06"):  # DATA or OACK: give up, as EFI does
                client.sendto(b"\x00\x05\x00\x00client gives up\x00", server)
    return {"sent": sent, "answered": answered, "unanswered": unanswered}


def run_flood(
    ip: str, filename: str, count: int, seed: int, deadline: float, rate: float = 0.0
) -> dict[str, float]:
    """Send ``count`` mutated datagrams, at most ``rate`` a second (0: as fast as the sockets
    take them); answers are drained (and the ports they come from targeted too)."""
    senders = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(8)]
    targets: list[tuple[str, int]] = [(ip, TFTP_PORT)]
    answers = sent = 0
    rng = random.Random(seed ^ 0x5EED)
    began = time.monotonic()
    try:
        for sock in senders:
            sock.setblocking(False)
        for datagram in paced(mutated_stream(filename, count, seed), rate, deadline):
            sock = senders[sent % len(senders)]
            # Mostly port 69; now and then a transfer port the server answered from.
            target = targets[0] if len(targets) == 1 or rng.random() < 0.8 else rng.choice(targets)
            send_bounded(sock, datagram, target)
            sent += 1
            if sent % 16 == 0:
                for other in senders:
                    while True:
                        try:
                            _, source = other.recvfrom(70000)
                        except OSError:
                            break
                        answers += 1
                        if source[1] != TFTP_PORT and len(targets) < 64:
                            targets.append(source)
    finally:
        for sock in senders:
            sock.close()
    seconds = max(time.monotonic() - began, 1e-9)
    return {
        "sent": sent,
        "seconds": round(seconds, 3),
        "rate": round(sent / seconds),
        "answers": answers,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="hostile TFTP traffic for the lab (bounded)")
    parser.add_argument("mode", choices=["oversized", "flood"])
    parser.add_argument("ip")
    parser.add_argument("filename")
    parser.add_argument("count", type=int)
    parser.add_argument("seed", type=int, nargs="?", default=1)
    parser.add_argument("--max-seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=0.0, help="datagrams a second (0: no limit)")
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.max_seconds
    if args.mode == "oversized":
        counts: dict[str, float] = dict(run_oversized(args.ip, args.filename, args.count, deadline))
    else:
        counts = run_flood(args.ip, args.filename, args.count, args.seed, deadline, args.rate)
    for key, value in counts.items():
        print(key, value, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())


def udp_counters(snmp: str) -> dict[str, int]:
    """The ``Udp:`` counters of a ``/proc/net/snmp`` text (InDatagrams, RcvbufErrors...)."""
    rows = [line.split()[1:] for line in snmp.splitlines() if line.startswith("Udp:")]
    if len(rows) < 2:
        return {}
    return {name: int(value) for name, value in zip(rows[0], rows[1], strict=False)}
