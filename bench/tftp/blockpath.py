#!/usr/bin/env python3
"""The lockstep per-block path without system calls: what one ACK costs pxetwist's Python.

A storm is hundreds of thousands of lockstep blocks, and each costs the server one ``recvfrom``,
one ``sendto`` and the Python between them: the transfer socket's read, the transfer, the
session's fast path and, without shared datagrams, the block read and the DATA header.  This
drives real :class:`~pxetwist.tftp.sockets.TransferSocket` objects (on unused loopback sockets)
with ACKs handed in directly and DATA thrown away, for K transfers served in turn as a storm
interleaves them, with and without the datagrams shared between transfers
(:mod:`pxetwist.tftp.shared`), alternated::

    .venv/bin/python bench/tftp/blockpath.py                 # 1, 100, 500, 2000 transfers
    taskset -c 0 .venv/bin/python bench/tftp/blockpath.py --transfers 500 --rounds 8

The figure is the best round of each (microseconds per block); it leaves out the system calls
and the reactor's turn, which bench/README's storm sections count.
"""

from __future__ import annotations

import argparse
import gc
import os
import resource
import socket
import struct
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from pxetwist.reactor import BootReactor  # noqa: E402
from pxetwist.tftp.files import FileSource  # noqa: E402
from pxetwist.tftp.packet import ReadRequest  # noqa: E402
from pxetwist.tftp.session import ReadSession  # noqa: E402
from pxetwist.tftp.shared import SharedBlockCache  # noqa: E402
from pxetwist.tftp.sockets import TransferMux, TransferSocket  # noqa: E402
from pxetwist.tftp.transfer import Transfer  # noqa: E402

PEER = ("10.0.0.2", 2000)
BLKSIZE = 1468


class Server:
    """What a transfer asks of its server: the reactor, and a count above one (no spin)."""

    def __init__(self, reactor: BootReactor) -> None:
        self.reactor = reactor
        self.busy = 2


class Owner:
    def __init__(self, reactor: BootReactor) -> None:
        self.server = Server(reactor)

    def transfer_ended(self, transfer: Any, summary: Any) -> None:
        pass


def start(path: Path, reactor: BootReactor, cache: SharedBlockCache | None) -> TransferSocket:
    source = FileSource.open(path)
    shared = cache.blocks(source, BLKSIZE) if cache is not None else None
    request = ReadRequest(path.name, "octet", (("blksize", str(BLKSIZE)),))
    session = ReadSession(request, source, None, shared)
    transfer = Transfer(cast(Any, Owner(reactor)), PEER, session, source, reactor.seconds())
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    port = TransferSocket(TransferMux(cast(Any, reactor)), sock, transfer)
    transfer.attach(None, sock)
    transfer.start()  # the OACK, sent to a peer nobody is
    assert transfer._sender is not None
    transfer._sender.send_one = lambda datagram: None
    return port


def answering(ack: tuple[bytes, tuple[str, int]]) -> Any:
    """A stand-in for the socket's ``recvfrom``: this ACK, from the peer."""
    return lambda size: ack


def one_round(path: Path, transfers: int, blocks: int, cache: SharedBlockCache | None) -> float:
    reactor = BootReactor()
    ports = [start(path, reactor, cache) for _ in range(transfers)]
    acks = [(struct.pack("!HH", 4, block & 0xFFFF), PEER) for block in range(blocks)]
    began = time.perf_counter()
    for ack in acks:
        receive = answering(ack)
        for port in ports:
            port._recvfrom = receive
            port.doRead()
    elapsed = time.perf_counter() - began
    for port in ports:
        port.transfer.abort("done")
        port.stopListening()
    reactor._poller.close()
    return elapsed / (blocks * transfers) * 1e6


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transfers", default="1,100,500,2000", help="K, comma-separated")
    parser.add_argument("--rounds", type=int, default=4, help="alternated rounds per variant")
    parser.add_argument("--blocks", type=int, default=300, help="ACKs per transfer per round")
    args = parser.parse_args()
    counts = [int(k) for k in args.transfers.split(",")]
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 3 * max(counts) + 64)), hard))
    work = Path(tempfile.mkdtemp(prefix="blockpath-"))
    path = work / "nbp"
    path.write_bytes(os.urandom(1 << 20))
    old = time.time() - 60
    os.utime(path, (old, old))
    cache = SharedBlockCache(clock=lambda: time.time() + 60)  # the file counts as settled
    one_round(path, 4, args.blocks, cache)  # builds the shared table once
    gc.collect()
    gc.disable()
    try:
        for transfers in counts:
            own: list[float] = []
            shared: list[float] = []
            for _ in range(args.rounds):
                own.append(one_round(path, transfers, args.blocks, None))
                shared.append(one_round(path, transfers, args.blocks, cache))
            print(
                f"{transfers:5d} transfers: {min(own):.2f} us a block reading its own copy, "
                f"{min(shared):.2f} us from shared datagrams"
            )
    finally:
        gc.enable()
        path.unlink()
        work.rmdir()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
