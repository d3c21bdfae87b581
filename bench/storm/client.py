#!/usr/bin/env python3
"""Simulated PXE clients for ``bench/storm/run.py``: one asyncio process, many machines.

Run by ``run.py`` inside the lab's client namespace (never by hand against anything else)::

    client.py --spec SPEC.json --out RESULTS.json

The spec says which clients this process plays (global indexes ``first .. first+count-1``),
the relay address (giaddr) it speaks from, the server's address and ports, the shared start
time, the ramp, and the expected SHA-256 of every file.  Each client:

1. DHCP, relayed: DISCOVER -> OFFER -> REQUEST -> ACK, sent from ``giaddr:67`` with
   ``giaddr`` set and ``hops = 1`` (protocol-reference §1: a relay's unicast to port 67; the
   server answers the relay at port 67), carrying a PXE ROM's options 60, 93, 94 and 97 (BIOS
   arch 0 or x86-64 UEFI arch 7).  Retransmissions as a PXE ROM: 4, 8, 16 s, then it gives up.
2. TFTP: the ACK's boot file from the ACK's next server (which must be the lab server), RRQ
   with ``blksize 1468`` and ``tsize 0`` (RFC 2347/2348/2349), lockstep, the last ACK re-sent
   after ``tftp_timeout`` seconds of silence, at most ``tftp_retries`` times.
3. HTTP: GET the kernel, then the initrd (HTTP/1.1; one connection per file unless
   ``keepalive``), Content-Length checked; each connection advertises at most ``window``
   bytes (iPXE's 256 KiB by default, see :func:`connect`).

Every ``sample``-th client hashes what it downloads (SHA-256) and compares.  Timestamps are
``time.time()`` (so that several processes share a clock) for: start, OFFER, ACK, NBP done,
kernel done, initrd done.  A failure records its stage and reason.  The whole process is
bounded by ``deadline`` seconds after the start; whatever is not done then fails as "deadline".
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import socket
import struct
import time
from typing import Any, cast

MAGIC = b"\x63\x82\x53\x63"
DISCOVER, OFFER, REQUEST, DECLINE, ACK, NAK = 1, 2, 3, 4, 5, 6
DHCP_RETRIES = (4.0, 8.0, 16.0)  # PXE ROM timeouts (PXE 2.1 spec §2.2.1: 4, 8, 16, 32 s)
VENDOR = {0: b"PXEClient:Arch:00000:UNDI:002001", 7: b"PXEClient:Arch:00007:UNDI:003016"}


class Failed(Exception):
    def __init__(self, stage: str, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason


# -- DHCP ------------------------------------------------------------------------------------


def dhcp_packet(
    msg: int, xid: int, mac: bytes, giaddr: bytes, arch: int, guid: bytes, extra: bytes = b""
) -> bytes:
    header = struct.pack(
        "!BBBBIHH4s4s4s4s16s64s128s",
        1, 1, 6, 1, xid, 4, 0, b"\0" * 4, b"\0" * 4, b"\0" * 4, giaddr,
        mac, b"", b"",
    )  # fmt: skip
    vendor = VENDOR[arch]
    options = (
        bytes([53, 1, msg])
        + bytes([55, 7, 1, 3, 43, 60, 66, 67, 54])
        + bytes([57, 2]) + struct.pack("!H", 1472)
        + bytes([60, len(vendor)]) + vendor
        + bytes([93, 2]) + struct.pack("!H", arch)
        + bytes([94, 3, 1, 2, 1])
        + bytes([97, 17, 0]) + guid
        + extra
        + b"\xff"
    )  # fmt: skip
    return header + MAGIC + options


def parse_options(data: bytes) -> dict[int, bytes]:
    options: dict[int, bytes] = {}
    i = 240
    while i < len(data):
        code = data[i]
        if code == 255:
            break
        if code == 0:
            i += 1
            continue
        if i + 1 >= len(data):
            break
        length = data[i + 1]
        options[code] = options.get(code, b"") + data[i + 2 : i + 2 + length]
        i += 2 + length
    return options


class Relay:
    """The process's relay socket (giaddr:67): replies are matched to clients by xid.

    Read in a loop until the socket is empty at every wake-up.  (asyncio's datagram transport
    reads one datagram per turn of the loop; one socket carries the replies of hundreds of
    machines while the same loop also runs their TFTP and HTTP, so at one per turn replies
    waited in the socket for seconds and machines timed out on ACKs the server had sent: the
    harness, not the server, was the bottleneck.  Real machines each have their own NIC.)
    """

    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[bytes]] = {}
        self.stray = 0
        self.sock: socket.socket | None = None

    def open(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        self.sock = sock
        asyncio.get_running_loop().add_reader(sock.fileno(), self._drain)

    def sendto(self, packet: bytes, server: tuple[str, int]) -> None:
        assert self.sock is not None
        with contextlib.suppress(BlockingIOError, InterruptedError):
            self.sock.sendto(packet, server)  # a full buffer is a lost packet: retransmitted

    def _drain(self) -> None:
        assert self.sock is not None
        recvfrom = self.sock.recvfrom
        for _ in range(4096):  # bounded: the loop's other work gets its turn
            try:
                data, _addr = recvfrom(2048)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                continue  # an ICMP error reported on the socket
            self.datagram_received(data)

    def datagram_received(self, data: bytes) -> None:
        if len(data) < 240 or data[0] != 2 or data[236:240] != MAGIC:
            self.stray += 1
            return
        future = self.waiting.pop(struct.unpack_from("!I", data, 4)[0], None)
        if future is None or future.done():
            self.stray += 1
            return
        future.set_result(data)


async def dhcp_exchange(
    relay: Relay, server: tuple[str, int], packet: bytes, xid: int, want: int, rec: dict[str, Any]
) -> bytes:
    loop = asyncio.get_running_loop()
    for attempt, timeout in enumerate(DHCP_RETRIES):
        if attempt:
            rec["dhcp_retransmits"] += 1
        relay.sendto(packet, server)
        give_up = loop.time() + timeout
        # Wait out this attempt's timeout for the wanted reply: a late answer to an earlier
        # packet (an OFFER for a retransmitted DISCOVER) is counted and ignored, as a PXE ROM
        # ignores it, instead of cutting the wait short.
        while (left := give_up - loop.time()) > 0:
            future: asyncio.Future[bytes] = loop.create_future()
            relay.waiting[xid] = future
            try:
                reply = await asyncio.wait_for(future, left)
            except TimeoutError:
                relay.waiting.pop(xid, None)
                break
            kind = parse_options(reply).get(53, b"\0")[0]
            if kind == NAK:
                raise Failed("dhcp", "NAK")
            if kind == want:
                return reply
            rec["dhcp_stray"] = rec.get("dhcp_stray", 0) + 1
    raise Failed("dhcp", "no OFFER" if want == OFFER else "no ACK")


# -- TFTP ------------------------------------------------------------------------------------


class TftpDownload(asyncio.DatagramProtocol):
    """One lockstep RRQ with blksize and tsize; the server answers from a new port (its TID)."""

    def __init__(
        self,
        request: bytes,
        blksize: int,
        hasher: Any,
        done: asyncio.Future[int],
        stall: bool = False,
    ) -> None:
        self.stall = stall  # stop at block 1 without acknowledging it: a transfer held open
        self.request = request
        self.blksize = blksize
        self.hasher = hasher
        self.done = done
        self.expected = 1
        self.size = 0
        self.peer: tuple[str, int] | None = None
        self.last_sent = request
        self.last_seen = time.monotonic()
        self.retries = 0
        self.retransmits = 0
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def send(self, packet: bytes, addr: tuple[str, int]) -> None:
        self.last_sent = packet
        assert self.transport is not None
        self.transport.sendto(packet, addr)

    def fail(self, reason: str) -> None:
        if not self.done.done():
            self.done.set_exception(Failed("tftp", reason))

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if self.done.done():
            return
        if self.peer is None:
            self.peer = addr
        elif addr != self.peer:
            assert self.transport is not None
            self.transport.sendto(b"\0\5\0\5unknown TID\0", addr)
            return
        self.last_seen = time.monotonic()
        self.retries = 0
        opcode = data[1] if len(data) >= 4 and data[0] == 0 else 0
        if opcode == 3:
            block = (data[2] << 8) | data[3]
            if self.stall:
                self.done.set_result(-1)
                return
            if block == (self.expected & 0xFFFF):
                payload = data[4:]
                self.size += len(payload)
                if self.hasher is not None:
                    self.hasher.update(payload)
                self.send(b"\0\4" + data[2:4], addr)
                self.expected += 1
                if len(payload) < self.blksize:
                    self.done.set_result(self.size)
            elif block == ((self.expected - 1) & 0xFFFF):
                self.retransmits += 1
                self.send(self.last_sent, addr)  # our ACK was lost: send it again
        elif opcode == 6:
            opts = data[2:].split(b"\0")
            values = dict(zip(opts[0::2], opts[1::2], strict=False))
            if b"blksize" in values:
                self.blksize = int(values[b"blksize"])
            self.send(b"\0\4\0\0", addr)
        elif opcode == 5:
            code = (data[2] << 8) | data[3]
            self.fail(f"error {code} {data[4:-1].decode(errors='replace')[:60]}")
        else:
            self.fail("bad packet")

    def error_received(self, exc: Exception) -> None:
        self.fail(f"socket {type(exc).__name__}")

    def tick(self, now: float, timeout: float, retries: int, server: tuple[str, int]) -> None:
        """Called a few times a second by the process's sweeper: re-send after silence."""
        if self.done.done() or now - self.last_seen < timeout:
            return
        if self.retries >= retries:
            self.fail("timeout" if self.peer else "no answer to RRQ")
            return
        self.retries += 1
        self.retransmits += 1
        self.last_seen = now
        self.send(self.last_sent, self.peer or server)


# -- HTTP ------------------------------------------------------------------------------------


class HttpGet(asyncio.BufferedProtocol):
    """GETs on one connection; the body is counted (and hashed) straight from the buffer."""

    def __init__(self) -> None:
        self.buffer = bytearray(256 * 1024)
        self.view = memoryview(self.buffer)
        self.head = b""
        self.remaining = -1
        self.size = 0
        self.hasher: Any = None
        self.done: asyncio.Future[int] | None = None
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def get(self, path: str, host: str, hasher: Any, keepalive: bool) -> asyncio.Future[int]:
        self.done = asyncio.get_running_loop().create_future()
        self.head, self.remaining, self.size, self.hasher = b"", -1, 0, hasher
        connection = "keep-alive" if keepalive else "close"
        assert self.transport is not None
        self.transport.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: storm/1\r\n"
            f"Connection: {connection}\r\n\r\n".encode()
        )
        return self.done

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.view

    def buffer_updated(self, nbytes: int) -> None:
        data = self.view[:nbytes]
        if self.done is None or self.done.done():
            return
        if self.remaining < 0:
            self.head += bytes(data)
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                if len(self.head) > 16384:
                    self.done.set_exception(Failed("http", "header too long"))
                return
            status = self.head.split(b" ", 2)[1:2]
            if status != [b"200"]:
                code = status[0].decode(errors="replace") if status else "?"
                self.done.set_exception(Failed("http", f"status {code}"))
                return
            length = -1
            for line in self.head[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if length < 0:
                self.done.set_exception(Failed("http", "no Content-Length"))
                return
            body = self.head[end + 4 :]
            self.remaining = length
            data = memoryview(body)
        take = min(len(data), self.remaining)
        if self.hasher is not None:
            self.hasher.update(data[:take])
        self.size += take
        self.remaining -= take
        if self.remaining == 0:
            self.done.set_result(self.size)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(Failed("http", "connection closed early"))
        if not self.closed.done():
            self.closed.set_result(None)


async def connect(address: str, server: tuple[str, int], window: int) -> socket.socket:
    """A TCP connection from ``address`` to ``server``, advertising at most ``window`` bytes.

    A PXE machine's TCP stack is its firmware's or iPXE's, whose receive window is fixed (iPXE:
    256 KiB, ``TCP_MAX_WINDOW_SIZE``), not Linux's autotuned one.  Here every machine's socket
    shares one kernel, whose receive autotuning would let each hold up to ``tcp_rmem``'s 6 MiB:
    500 machines' queues then push the whole lab into TCP memory pressure, with drops and
    retransmission timeouts no rack of real machines would see.  A fixed ``SO_RCVBUF`` (set
    before connecting, so the SYN's window scale follows it) turns autotuning off; Linux
    doubles the value for its bookkeeping, so half the window is asked for, and the queue holds
    about the window.  (``TCP_WINDOW_CLAMP`` alone does not hold: autotuning raises the clamp
    with the buffer.)  0 leaves Linux's autotuning.
    """
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        if window:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, window // 2)
        sock.bind((address, 0))
        await asyncio.get_running_loop().sock_connect(sock, server)
    except BaseException:
        sock.close()
        raise
    return sock


# -- one machine -----------------------------------------------------------------------------


class Machine:
    def __init__(self, index: int, spec: dict[str, Any], procs: Process) -> None:
        self.index = index
        self.spec = spec
        self.procs = procs
        self.mac = bytes([0x02, 0x5C]) + struct.pack("!I", 0x10000000 + index)
        self.arch = 7 if random.Random(index).random() < spec["uefi_share"] else 0
        self.sample = spec["sample"] > 0 and index % spec["sample"] == 0
        self.rec: dict[str, Any] = {
            "index": index,
            "arch": "uefi" if self.arch == 7 else "bios",
            "dhcp_retransmits": 0,
            "tftp_retransmits": 0,
            "sampled": self.sample,
        }

    def hasher(self) -> Any:
        return hashlib.sha256() if self.sample else None

    def check(self, name: str, size: int, hasher: Any, stage: str) -> None:
        want_size, want_sha = self.spec["files"][name]
        if size != want_size:
            raise Failed(stage, f"size {size} != {want_size}")
        if hasher is not None and hasher.hexdigest() != want_sha:
            raise Failed(stage, "SHA-256 mismatch")

    async def boot(self) -> None:
        rec, spec, loop = self.rec, self.spec, asyncio.get_running_loop()
        rec["start"] = time.time()
        stage = "dhcp"
        try:
            xid = random.getrandbits(32)
            giaddr = socket.inet_aton(spec["giaddr"])
            guid = hashlib.md5(self.mac).digest()
            server = (spec["server"], 67)
            offer = await dhcp_exchange(
                self.procs.relay, server,
                dhcp_packet(DISCOVER, xid, self.mac, giaddr, self.arch, guid),
                xid, OFFER, rec,
            )  # fmt: skip
            rec["offer"] = time.time()
            opts = parse_options(offer)
            server_id = opts.get(54)
            if server_id is None:
                raise Failed("dhcp", "OFFER without server id")
            extra = bytes([50, 4]) + offer[16:20] + bytes([54, 4]) + server_id
            ack = await dhcp_exchange(
                self.procs.relay, server,
                dhcp_packet(REQUEST, xid, self.mac, giaddr, self.arch, guid, extra),
                xid, ACK, rec,
            )  # fmt: skip
            rec["ack"] = time.time()
            opts = parse_options(ack)
            boot = opts.get(67) or ack[108:236].split(b"\0", 1)[0]
            if not boot:
                raise Failed("dhcp", "ACK without boot file")
            next_server = socket.inet_ntoa(ack[20:24])
            if 66 in opts:
                next_server = opts[66].decode(errors="replace").strip("\0")
            if next_server != spec["server"]:
                raise Failed("dhcp", f"next server {next_server} is not the lab server")
            address = socket.inet_ntoa(ack[16:20])  # yiaddr: from now on the machine's own
            name = boot.split(b"\0", 1)[0].decode(errors="replace").lstrip("/")
            if name not in spec["files"]:
                raise Failed("dhcp", f"unexpected boot file {name!r}")
            if spec.get("stages") == "dhcp":
                rec["end"] = rec["ack"]
                return
            stall = spec.get("stages") == "tftp-hold"

            stage = "tftp"
            hasher = self.hasher()
            done: asyncio.Future[int] = loop.create_future()
            request = b"\0\1" + name.encode() + b"\0octet\0blksize\0001468\0tsize\0000\0"
            transport, tftp = await loop.create_datagram_endpoint(
                lambda: TftpDownload(request, 512, hasher, done, stall),
                local_addr=(address, 0),
            )
            self.procs.tftp.add(tftp)
            try:
                tftp.send(request, (spec["server"], spec["tftp_port"]))
                size = await done
                if stall:
                    rec["end"] = time.time()
                    await asyncio.sleep(spec.get("hold", 10.0))
                    return
            finally:
                self.procs.tftp.discard(tftp)
                rec["tftp_retransmits"] = tftp.retransmits
                transport.close()
            self.check(name, size, hasher, "tftp")
            rec["nbp"] = time.time()

            stage = "http"
            proto: HttpGet | None = None
            for key, path in (("kernel", spec["kernel"]), ("initrd", spec["initrd"])):
                if proto is None or not spec["keepalive"]:
                    if proto is not None and proto.transport is not None:
                        proto.transport.close()
                    sock = await connect(
                        address, (spec["server"], spec["http_port"]), spec["window"]
                    )
                    _, proto = await loop.create_connection(HttpGet, sock=sock)
                hasher = self.hasher()
                size = await proto.get("/" + path, spec["server"], hasher, spec["keepalive"])
                self.check(path, size, hasher, "http")
                rec[key] = time.time()
            if proto is not None and proto.transport is not None:
                proto.transport.close()
            rec["end"] = rec["initrd"]
        except Failed as e:
            rec["failed"] = [e.stage, e.reason]
        except OSError as e:
            rec["failed"] = [stage, f"{type(e).__name__} errno {e.errno}"]
        except asyncio.CancelledError:
            rec["failed"] = [stage, "deadline"]
        except Exception as e:  # a client bug must show in the table, not hang the storm
            rec["failed"] = [stage, f"client {type(e).__name__}: {e}"[:80]]


class Process:
    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.relay = Relay()
        self.tftp: set[TftpDownload] = set()

    async def sweep(self) -> None:
        spec, server = self.spec, (self.spec["server"], self.spec["tftp_port"])
        while True:
            await asyncio.sleep(0.2)
            now = time.monotonic()
            for download in list(self.tftp):
                download.tick(now, spec["tftp_timeout"], spec["tftp_retries"], server)

    async def run(self) -> list[dict[str, Any]]:
        spec = self.spec
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        sock.bind((spec["giaddr"], 67))
        self.relay.open(sock)
        machines = [Machine(spec["first"] + i, spec, self) for i in range(spec["count"])]
        total = max(1, spec["total"])
        tasks = []
        sweeper = asyncio.ensure_future(self.sweep())

        async def launch(machine: Machine) -> None:
            position = (machine.index - spec.get("base", 0)) / total
            delay = spec["start_at"] + spec["ramp"] * position - time.time()
            if delay > 0:
                await asyncio.sleep(delay)
            await machine.boot()

        tasks = [asyncio.ensure_future(launch(m)) for m in machines]
        deadline = spec["start_at"] + spec["ramp"] + spec["deadline"] - time.time()
        _, pending = await asyncio.wait(tasks, timeout=max(1.0, deadline))
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=10)
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        for machine in machines:
            if "end" not in machine.rec and "failed" not in machine.rec:
                machine.rec["failed"] = ["?", "deadline"]
        return [m.rec for m in machines]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--spec", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    with open(args.spec) as f:
        spec = json.load(f)
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with contextlib.suppress(ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    cpu0 = time.process_time()
    records = asyncio.run(Process(spec).run())
    out = {"records": records, "cpu": time.process_time() - cpu0, "pid": os.getpid()}
    with open(args.out, "w") as f:
        json.dump(out, f)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
