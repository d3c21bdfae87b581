# -*- test-case-name: tests.tftp.test_protocol -*-
"""The Twisted side of TFTP: listeners on port 69, one UDP port per transfer, files and configs.

Shape (RFC 1350 §4, protocol-reference §6.2):

* A :class:`TftpListener` is bound to one interface address on ``tftp.port``.  Binding per
  address, not to ``0.0.0.0``, is what tells it which address a request came to: Twisted's UDP
  port has no ``IP_PKTINFO``, and a transfer must be answered *from* that address, or a client
  on a multi-homed server sees DATA from an address it never talked to and drops it.  (The cost:
  addresses that appear after start-up are not served until a restart.)
* An RRQ is checked (path confinement, concurrency limit), resolved to a file on disk or a
  generated boot config, and served by a :class:`Transfer`: a sans-I/O
  :class:`~pxetwist.tftp.session.ReadSession` plus a fresh UDP port bound to the receiving
  address (the server's TID).  Packets from any other address or port get ERROR 5 and do not
  disturb the transfer (RFC 1350 §4, §7.8 T6).  In ``single_port`` mode the listener's own port
  carries every transfer, demultiplexed by the client's address and port.
* A WRQ gets ERROR 2 (read-only server, §6.6); junk is logged with its sender and dropped;
  nothing a client sends can raise out of a protocol.

Which file answers a name (:class:`FileResolver`): boot-loader config names
(:mod:`pxetwist.tftp.generated`: ``pxelinux.cfg/01-<mac>``, ``grub.cfg-<mac>``, ``*.ipxe``, ...)
are rendered for the asking machine *when its policy decision has something to say there* (a
kernel, "boot locally", an iPXE script); otherwise the name is looked up on disk like any other.
So generated configs win over files of the same name, and a site's hand-written
``pxelinux.cfg/default`` still serves every machine the policies have no kernel for.  The machine
is the MAC in the name when there is one, else whoever the sighting registry says is at the
client's address (what DHCP saw, then the neighbour table).

Reading files: each transfer opens its file once and reads the blocks it is about to send with
``os.pread`` on that descriptor: a window at a time (at most :data:`WINDOW_BYTES`; the window is
clamped so big blocks do not multiply into megabytes per transfer), or, for lockstep's one block
per ACK, :data:`READ_CHUNK` (64 KiB) at a time.  Nothing ever loads a whole file.  The reads
happen on the reactor thread: boot files are small and hot in the page cache, where a ``pread``
costs microseconds, far less than handing each read to a thread would.  A cold read from local
disk stalls the reactor for about a disk seek; ``POSIX_FADV_SEQUENTIAL`` asks the kernel to read
ahead so that happens once per readahead window, not per block.  A TFTP root on a slow network
file system would hurt every transfer at once; keep it local.

The hot path, on a real reactor (test doubles get Twisted UDP ports instead):

* Each transfer's socket is a plain non-blocking UDP socket, and all of them sit behind one
  private epoll set (:class:`TransferMux`) that the reactor sees as a single descriptor, so a
  rack of clients costs one reactor dispatch per wake-up, not one per datagram.
* Datagrams go straight to the socket (``sendto``, or one ``sendmsg`` per window with UDP
  generic segmentation offload when the blocks fit the MTU: one system call for a 32-block
  window instead of 32).  A full socket buffer drops the rest of the window quietly; the
  session's retransmission timer resends it, as after any loss.
* While exactly one transfer runs, it waits for the client's next ACK in place, in a blocking
  receive with a kernel timeout, instead of a reactor round per block (lockstep TFTP is bound by
  round trips); it hands back to the reactor within milliseconds, and within a few blocks when
  anything else is readable (:class:`TransferSocket`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import struct
import time
from collections.abc import Iterable
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Final

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFDSet, IReadDescriptor
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import (
    LoaderKind,
    Renderer,
    RenderError,
    ServingContext,
    has_boot_config,
)
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress, Stage
from pxetwist.tftp.generated import match_generated
from pxetwist.tftp.packet import (
    Ack,
    Error,
    ErrorCode,
    MalformedPacket,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    error_datagram,
)
from pxetwist.tftp.paths import PathRefused, normalize_request_path, resolve_path
from pxetwist.tftp.session import (
    Actions,
    BlockSource,
    BytesSource,
    Outcome,
    ReadSession,
    SessionLimits,
    negotiate,
)

log = Logger()

Address = tuple[str, int]

READ_CHUNK: Final = 64 * 1024
"""Octets one ``pread`` fetches for small (lockstep) reads; at most one such buffer per file."""

WINDOW_BYTES: Final = 512 * 1024
"""Most octets one transfer keeps in flight (and in its window cache): window x blksize."""

_UDP_SEGMENT: Final = 103  # linux/udp.h; not exported by the socket module
_GSO_MAX_BYTES: Final = 65000  # one GSO send must fit an IP datagram
_GSO_MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS on kernels before 6.x
_BUSY: Final = "Server busy, try again later"


class Refusal(Exception):
    """An RRQ answered with an ERROR: ``code``/``message`` go on the wire, ``reason`` to the log."""

    def __init__(self, code: ErrorCode, reason: str, message: str | None = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.message = code.default_message if message is None else message


class FileSource:
    """A :class:`BlockSource` over an open file descriptor, read with ``os.pread``.

    ``pread`` keeps no file position, so the same descriptor serves random-access window reads
    and retransmissions without seeking.  The size is fixed when the file is opened: a file that
    shrinks under a transfer yields a short read, which the session reports as an error instead
    of sending a short block the client would take for the end.
    """

    def __init__(self, fd: int, size: int) -> None:
        self._fd = fd
        self._size = size
        self._chunk_start = 0
        self._chunk = b""

    @classmethod
    def open(cls, path: Path) -> FileSource:
        """Open a regular file read-only (not following a symlink swapped in since the check)."""
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IsADirectoryError(errno.EISDIR, "not a regular file", str(path))
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        except BaseException:
            os.close(fd)
            raise
        return cls(fd, info.st_size)

    @property
    def size(self) -> int:
        return self._size

    def read(self, offset: int, length: int) -> bytes:
        """``length`` octets at ``offset`` (fewer at the end of the file).

        Small reads (lockstep: one block per ACK) are served from a :data:`READ_CHUNK` buffer
        filled by one ``pread``, so a 512-octet transfer costs one system call per 128 blocks
        instead of one per block; larger reads (a window) go to the file directly.
        """
        # The hot path first: a lockstep block inside the buffer (which never extends past the
        # end of the file, so a read running past it falls through to be clipped below).
        position = offset - self._chunk_start
        if position >= 0 and position + length <= len(self._chunk):
            return self._chunk[position : position + length]
        length = min(length, self._size - offset)
        if length <= 0:
            return b""
        start = self._chunk_start
        if start <= offset and offset + length <= start + len(self._chunk):
            return self._chunk[offset - start : offset - start + length]
        if length < READ_CHUNK // 4:
            chunk = self._pread(offset, min(READ_CHUNK, self._size - offset))
            self._chunk_start, self._chunk = offset, chunk
            return chunk[:length]
        return self._pread(offset, length)

    def _pread(self, offset: int, length: int) -> bytes:
        if self._fd < 0:
            raise OSError(errno.EBADF, "source closed")
        data = os.pread(self._fd, length, offset)
        if len(data) == length or not data:
            return data
        parts = [data]  # a short read of a regular file: only at EOF, or interrupted
        got = len(data)
        while got < length:
            more = os.pread(self._fd, length - got, offset + got)
            if not more:
                break
            parts.append(more)
            got += len(more)
        return b"".join(parts)

    def close(self) -> None:
        self._chunk = b""
        if self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)


@attrs.frozen
class Resolved:
    """What an RRQ will be served from, and who asked (for the transfer log)."""

    source: BlockSource
    path: str
    mac: MacAddress | None = None
    generated: LoaderKind | None = None


class FileResolver:
    """Turns a requested name into a :class:`Resolved` source, or fails with :class:`Refusal`."""

    def __init__(
        self,
        root: Path,
        renderer: Renderer,
        chain: PolicyChain | Any,
        sightings: SightingRegistry,
    ) -> None:
        self.root = root
        self.renderer = renderer
        self.chain = chain
        self.sightings = sightings

    def resolve(
        self,
        filename: str,
        client: IPv4Address | None,
        context: ServingContext,
        interface: str | None = None,
    ) -> Deferred[Resolved]:
        """Resolve ``filename`` for the client at ``client``; the Deferred may fire at once."""
        try:
            relative = normalize_request_path(filename)
        except PathRefused as refused:
            return fail(Refusal(ErrorCode.ACCESS_VIOLATION, refused.reason))
        name = match_generated(relative, client)
        if name is None:
            return self._disk(relative, client, None)
        request = self.sightings.request_for(
            stage=Stage.TFTP, address=client, mac=name.mac, path=relative
        )
        if request is None:
            return self._disk(relative, client, None)
        request = attrs.evolve(
            request, server_address=IPv4Address(context.server), interface=interface
        )
        decided: Deferred[BootDecision | None] = self.chain.decide(request)

        def render(decision: BootDecision | None) -> Deferred[Resolved]:
            if not has_boot_config(name.kind, decision):
                return self._disk(relative, client, request.mac)
            assert decision is not None
            try:
                text = self.renderer.render(
                    name.kind, decision, request, context, absolute_paths=bool(name.directory)
                )
            except RenderError as error:
                log.error(
                    "tftp: cannot render {path} for {mac}: {error}",
                    path=relative,
                    mac=str(request.mac),
                    error=str(error),
                )
                return fail(Refusal(ErrorCode.NOT_DEFINED, str(error), "Config error"))
            return succeed(Resolved(BytesSource(text.encode()), relative, request.mac, name.kind))

        return decided.addCallback(render)

    def _disk(
        self, relative: str, client: IPv4Address | None, mac: MacAddress | None
    ) -> Deferred[Resolved]:
        try:
            path = resolve_path(self.root, relative)
            source = FileSource.open(path)
        except PathRefused as refused:
            return fail(Refusal(ErrorCode.ACCESS_VIOLATION, refused.reason))
        except (FileNotFoundError, NotADirectoryError):
            return fail(Refusal(ErrorCode.FILE_NOT_FOUND, "no such file"))
        except PermissionError as error:
            return fail(Refusal(ErrorCode.ACCESS_VIOLATION, f"cannot open: {error.strerror}"))
        except OSError as error:
            if error.errno == errno.ELOOP:  # the final component became a symlink
                return fail(Refusal(ErrorCode.ACCESS_VIOLATION, "symlink swapped in"))
            return fail(Refusal(ErrorCode.NOT_DEFINED, f"cannot open: {error}", "Read error"))
        if mac is None and client is not None:
            mac = self.sightings.mac_at(client)
        return succeed(Resolved(source, relative, mac))


class _Sender:
    """Writes datagrams to one peer, straight to the socket when there is one.

    ``transport.write`` re-validates the address on every call and raises on a full socket
    buffer; a transfer sends tens of thousands of datagrams to one fixed address and treats a
    full buffer like a lost window, so it is bypassed.  Without a real socket (test transports)
    it falls back to ``transport.write``.
    """

    def __init__(self, transport: Any, peer: Address, mtu: int) -> None:
        self.peer = peer
        sock = (
            transport
            if isinstance(transport, socket.socket)
            else getattr(transport, "socket", None)
        )
        self._socket: socket.socket | None = sock if isinstance(sock, socket.socket) else None
        self._transport = transport
        # A GSO segment must fit the MTU with IP and UDP headers.
        self._gso_limit = mtu - 28 if self._socket is not None else 0

    def send(self, datagrams: tuple[bytes, ...]) -> None:
        sock = self._socket
        if sock is None:
            for datagram in datagrams:
                try:
                    self._transport.write(datagram, self.peer)
                except OSError:
                    return
            return
        count = len(datagrams)
        if count > 1 and self._gso_limit:
            self._send_segmented(sock, datagrams)
            return
        sendto = sock.sendto
        peer = self.peer
        try:
            for datagram in datagrams:
                sendto(datagram, peer)
        except OSError as error:
            self._failed(error)

    def _send_segmented(self, sock: socket.socket, datagrams: tuple[bytes, ...]) -> None:
        """One ``sendmsg`` per run of equal-size datagrams (the kernel splits them, UDP GSO)."""
        size = len(datagrams[0])
        if size > self._gso_limit:  # blocks larger than the MTU: IP fragments, one by one
            self._send_plain(sock, datagrams)
            return
        per_send = min(_GSO_MAX_SEGMENTS, _GSO_MAX_BYTES // size)
        control = [(socket.SOL_UDP, _UDP_SEGMENT, struct.pack("=H", size))]
        peer = self.peer
        index = 0
        count = len(datagrams)
        try:
            while index < count:
                end = min(index + per_send, count)
                # Only the last segment of a send may be shorter: the final block of the file.
                if end - index == 1:
                    sock.sendto(datagrams[index], peer)
                else:
                    sock.sendmsg([b"".join(datagrams[index:end])], control, 0, peer)
                index = end
        except OSError as error:
            if error.errno in (errno.EIO, errno.EINVAL, errno.ENOPROTOOPT, errno.EOPNOTSUPP):
                # No GSO on this path (old kernel, no checksum offload): plain sends from now on.
                self._gso_limit = 0
                self._send_plain(sock, datagrams[index:])
                return
            self._failed(error)

    def _send_plain(self, sock: socket.socket, datagrams: Iterable[bytes]) -> None:
        try:
            for datagram in datagrams:
                sock.sendto(datagram, self.peer)
        except OSError as error:
            self._failed(error)

    def _failed(self, error: OSError) -> None:
        if error.errno in (errno.EAGAIN, errno.ENOBUFS, errno.ECONNREFUSED, errno.EINTR):
            return  # like a lost window: the retransmission timer recovers
        log.warn(
            "tftp: cannot send to {peer}: {error}",
            peer=f"{self.peer[0]}:{self.peer[1]}",
            error=os.strerror(error.errno) if error.errno else str(error),
        )


class Transfer:
    """One running read transfer: a session, its source, its peer, its one timer.

    The session is driven by :meth:`receive` (packets from the peer) and by the timer.  Per the
    contract in :mod:`pxetwist.tftp.session`, one ``IDelayedCall`` is kept per transfer: it is
    moved only when a deadline comes *earlier* than the armed one, and re-armed from what an
    early firing returns, so a fast transfer costs about one timer per retransmission interval
    instead of one per block.
    """

    def __init__(
        self,
        owner: TftpListener,
        peer: Address,
        session: ReadSession,
        resolved: Resolved,
        started: float,
    ) -> None:
        self.owner = owner
        self.peer = peer
        self.session = session
        self.resolved = resolved
        self.started = started
        self.finished = False
        self._clock = owner.server.reactor
        self._timer: IDelayedCall | None = None
        self._armed = 0.0
        self._sender: _Sender | None = None
        self._port: Any = None

    def attach(self, port: Any, transport: Any) -> None:
        """Use ``transport`` to send; ``port`` (if any) is closed when the transfer ends."""
        self._port = port
        self._sender = _Sender(transport, self.peer, self.owner.mtu)

    def start(self) -> None:
        self._apply(self.session.start(self._clock.seconds()))

    def receive(self, data: bytes) -> None:
        """A datagram from the peer's TID."""
        if self.finished:
            return
        if len(data) >= 4 and data[0] == 0 and data[1] == 4:  # ACK: the hot path
            block = (data[2] << 8) | data[3]
            now = self._clock.seconds()
            if self._timer is not None:
                datagrams = self.session.receive_ack(block, now)
                if datagrams is not None:
                    # The session's fast path never moves the deadline earlier: the armed
                    # timer stays as it is (see ReadSession.receive_ack).
                    sender = self._sender
                    if sender is not None:
                        sender.send(datagrams)
                    return
            self._apply(self.session.receive(Ack(block), now))
            return
        try:
            packet = decode(data)
        except MalformedPacket as error:
            log.debug(
                "tftp: malformed datagram from {peer} during a transfer: {error}",
                peer=_text(self.peer),
                error=str(error),
            )
            return
        self.receive_packet(packet)

    def receive_packet(self, packet: Packet) -> None:
        if self.finished:
            return
        self._apply(self.session.receive(packet, self._clock.seconds()))

    def abort(self, reason: str) -> None:
        """End the transfer now (service stopping, client restarted): ERROR 0 to the client."""
        if self.finished:
            return
        if self._sender is not None:
            self._sender.send((error_datagram(ErrorCode.NOT_DEFINED, reason),))
        self._finish(Outcome.ERROR, reason)

    def _apply(self, actions: Actions) -> None:
        if actions.datagrams and self._sender is not None:
            self._sender.send(actions.datagrams)
        if actions.outcome is not None:
            self._finish(actions.outcome, actions.detail)
            return
        deadline = actions.deadline
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        # ``_timer`` is set exactly while the call is pending (it clears itself when it fires),
        # and ``_armed`` is its time: no IDelayedCall method on the per-block path.
        if timer is None:
            self._armed = deadline
            self._timer = self._clock.callLater(
                max(0.0, deadline - self._clock.seconds()), self._timer_fired
            )
        elif deadline < self._armed:
            self._armed = deadline
            timer.reset(max(0.0, deadline - self._clock.seconds()))

    def _timer_fired(self) -> None:
        self._timer = None
        if self.finished:
            return
        try:
            self._apply(self.session.timer_fired(self._clock.seconds()))
        except Exception:
            log.failure("tftp: transfer to {peer} failed", peer=_text(self.peer))
            self._finish(Outcome.ERROR, "internal error")

    def _finish(self, outcome: Outcome, detail: str) -> None:
        if self.finished:
            return
        self.finished = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        source = self.resolved.source
        if isinstance(source, FileSource):
            source.close()
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()
        self.owner.transfer_ended(self)
        session = self.session
        seconds = self._clock.seconds() - self.started
        delivered = (
            session.size
            if outcome.delivered
            else min(session.size, session.acked_blocks * session.blksize)
        )
        fields = {
            "peer": _text(self.peer),
            "mac": str(self.resolved.mac) if self.resolved.mac is not None else None,
            "path": self.resolved.path,
            "generated": self.resolved.generated.value if self.resolved.generated else None,
            "bytes": delivered,
            "size": session.size,
            "seconds": round(seconds, 6),
            "outcome": outcome.value,
            "detail": detail,
            "blksize": session.blksize,
            "windowsize": session.windowsize,
            "retransmissions": session.retransmissions,
        }
        text = (
            "tftp {outcome}: {path} to {peer} (mac {mac}): {bytes} of {size} bytes in "
            "{seconds}s, blksize {blksize}, windowsize {windowsize}, "
            "{retransmissions} retransmitted {detail}"
        )
        if outcome.delivered or outcome is Outcome.ABORTED_BY_CLIENT:
            log.info(text, **fields)
        else:
            log.warn(text, **fields)


def _text(address: Address) -> str:
    return f"{address[0]}:{address[1]}"


class TransferProtocol(DatagramProtocol):
    """The server's TID for one transfer: a UDP port that talks to exactly one client port."""

    noisy = False

    def __init__(self, transfer: Transfer) -> None:
        self.transfer = transfer
        self._peer = transfer.peer

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        if addr == self._peer:
            self.transfer.receive(datagram)
            return
        # RFC 1350 §4: an unknown TID gets ERROR 5 and the transfer goes on; never answer an
        # ERROR with an ERROR.
        if len(datagram) >= 2 and datagram[1] == 5 and datagram[0] == 0:
            return
        log.info(
            "tftp: stray datagram from {stray} on the transfer to {peer}",
            stray=_text(addr),
            peer=_text(self._peer),
        )
        transport = self.transport
        if transport is not None:
            with contextlib.suppress(OSError):
                transport.write(error_datagram(ErrorCode.UNKNOWN_TRANSFER_ID), addr)


_SPIN_SLICE: Final = 0.002
"""Longest a lone transfer keeps the reactor waiting for its next ACK (see TransferSocket)."""


@implementer(IReadDescriptor)
class TransferMux:
    """All transfer sockets behind one descriptor of the reactor: a private epoll set.

    The reactor wraps every readable descriptor in a logging context and a dispatch that cost
    more than serving the datagram.  With many transfers at once (a rack booting), this mux is
    the only transfer descriptor the reactor watches; when it is readable, one ``epoll.poll(0)``
    lists every transfer socket with data, and each is served in turn, without a reactor
    round per datagram.  (An epoll descriptor is itself pollable, and level-triggered: anything
    left unread makes the reactor call again.)
    """

    def __init__(self, reactor: Any) -> None:
        self.reactor = reactor
        self._epoll = select.epoll()
        self._sockets: dict[int, TransferSocket] = {}
        self._registered = False

    def fileno(self) -> int:
        return self._epoll.fileno()

    def logPrefix(self) -> str:
        return "tftp-transfers"

    def connectionLost(self, reason: Failure) -> None:
        self.close()

    def add(self, transfer_socket: TransferSocket) -> None:
        fd = transfer_socket.fileno()
        self._epoll.register(fd, select.EPOLLIN)
        self._sockets[fd] = transfer_socket
        if not self._registered:
            self.reactor.addReader(self)
            self._registered = True

    def remove(self, transfer_socket: TransferSocket) -> None:
        fd = transfer_socket.fileno()
        if self._sockets.pop(fd, None) is not None:
            with contextlib.suppress(OSError, ValueError):
                self._epoll.unregister(fd)

    def doRead(self) -> None:
        sockets = self._sockets
        for fd, _ in self._epoll.poll(0, 512):
            transfer_socket = sockets.get(fd)
            if transfer_socket is not None:
                transfer_socket.doRead()

    def close(self) -> None:
        if self._registered:
            self.reactor.removeReader(self)
            self._registered = False
        for transfer_socket in list(self._sockets.values()):
            transfer_socket.transfer.abort("server shutting down")
        if not self._epoll.closed:
            self._epoll.close()


@implementer(IReadDescriptor)
class TransferSocket:
    """The server's TID for one transfer on a real reactor: a plain UDP socket it reads itself.

    Twisted's ``udp.Port`` costs a protocol dispatch, an ``EAGAIN`` exception per wake-up and two
    log lines per transfer; this reader takes one datagram per wake-up (epoll is level-triggered,
    so anything left wakes it again), answers strangers with ERROR 5 (RFC 1350 §4) and hands the
    peer's datagrams to the transfer.

    Lockstep TFTP is bound by round trips, and a reactor iteration costs several times the
    handful of microseconds the work itself takes.  So while this is the only transfer running,
    after sending it waits for the client's answer right here, in a blocking ``recvfrom`` with a
    kernel timeout (``SO_RCVTIMEO``): one system call per block, and a synchronous wake-up that
    lets the scheduler keep client and server on one CPU.  It goes back to the reactor when the
    answer does not come within :data:`_SPIN_SLICE` (or before the reactor's next timed call),
    when a stranger writes, or when a check every :data:`_CHECK_EVERY` blocks finds another
    descriptor the reactor watches readable.  So other work (DHCP, HTTP, new RRQs) waits at most
    a few milliseconds (the timeout rounds up to the kernel's tick) and only while exactly one
    transfer runs; the wait sleeps in the kernel, it burns no CPU.  With two or more transfers
    running this is never used and the reactor multiplexes as usual.
    """

    def __init__(self, mux: TransferMux, address: str, transfer: Transfer) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.bind((address, 0))
        except BaseException:
            sock.close()
            raise
        self.socket = sock
        self.mux = mux
        self.reactor = mux.reactor
        self.transfer = transfer
        self._peer = transfer.peer
        self._fileno = sock.fileno()
        self._spin = callable(getattr(self.reactor, "timeout", None))
        mux.add(self)

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "tftp-transfer"

    def connectionLost(self, reason: Failure) -> None:
        self.stopListening()

    def getHost(self) -> tuple[str, int]:
        host, port = self.socket.getsockname()
        return host, port

    def stopListening(self) -> None:
        if self._fileno >= 0:
            self.mux.remove(self)
            self._fileno = -1
            self.socket.close()

    def doRead(self) -> None:
        if self._read_one() is not _PEER:
            return
        transfer = self.transfer
        if self._spin and not transfer.finished and transfer.owner.server.busy == 1:
            self._wait_here()

    def _read_one(self) -> int:
        """Read one datagram: :data:`_PEER`, :data:`_STRAY` or :data:`_NOTHING` (EAGAIN)."""
        try:
            data, addr = self.socket.recvfrom(2048)  # ACK or ERROR: small
        except OSError:  # EAGAIN, or an ICMP error reported on the socket: nothing to read
            return _NOTHING
        if addr == self._peer:
            self.transfer.receive(data)
            return _PEER
        self._stray(data, addr)
        return _STRAY

    def _stray(self, data: bytes, addr: Address) -> None:
        if data[:2] != b"\0\x05":  # never answer an ERROR with an ERROR
            log.info(
                "tftp: stray datagram from {stray} on the transfer to {peer}",
                stray=_text(addr),
                peer=_text(self._peer),
            )
            with contextlib.suppress(OSError):
                self.socket.sendto(error_datagram(ErrorCode.UNKNOWN_TRANSFER_ID), addr)

    def _wait_here(self) -> None:
        reactor = self.reactor
        others = select.poll()
        for reader in reactor.getReaders():
            # The mux holds only this socket while one transfer runs: leave it out.
            if reader is not self.mux:
                with contextlib.suppress(Exception):
                    others.register(reader.fileno(), select.POLLIN)
        slice_ = _SPIN_SLICE
        due = reactor.timeout()  # the reactor's next timed call; ours only ever move later
        if due is not None and due < slice_:
            slice_ = due
        if slice_ <= 0:
            return
        give_back = time.monotonic() + slice_
        sock = self.socket
        # A blocking receive with a kernel timeout: one system call per block, and the
        # sender's wake-up is a synchronous one, which keeps client and server on one CPU.
        sock.setblocking(True)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _timeval(slice_))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _timeval(slice_))  # never stuck
        try:
            transfer = self.transfer
            server = transfer.owner.server
            receive = transfer.receive
            recvfrom = sock.recvfrom
            peer = self._peer
            handled = 0
            while not transfer.finished and server.busy == 1:
                try:
                    data, addr = recvfrom(2048)
                except OSError:
                    return  # timed out (nothing to read): back to the reactor
                if addr != peer:
                    self._stray(data, addr)
                    return  # a stranger: back to the reactor
                receive(data)
                handled += 1
                if handled % _CHECK_EVERY == 0 and (
                    others.poll(0) or time.monotonic() >= give_back
                ):
                    return
        finally:
            if self._fileno >= 0:
                sock.setblocking(False)


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, max(1, int((seconds - whole) * 1e6)))


_CHECK_EVERY: Final = 8
"""Blocks handled between checks for other work while a lone transfer is served in place."""


_NOTHING: Final = 0
_PEER: Final = 1
_STRAY: Final = 2


@attrs.frozen
class ServerSettings:
    """The parts of the configuration the TFTP server runs with (mapped by the service)."""

    root: Path
    max_transfers: int = 2000
    max_blksize: int | None = None
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 6
    single_port: bool = False

    def limits(self, mtu: int) -> SessionLimits:
        """Session limits for an interface: blocks fit its MTU unless ``max_blksize`` is set.

        An explicit ``max_blksize`` wins over the MTU (it may be larger, for networks whose
        clients reassemble fragments), as the configuration documents.
        """
        timeout = max(self.timeout, 0.01)
        if self.max_blksize is not None:
            mtu = self.max_blksize + 32
        return SessionLimits(
            mtu=max(mtu, 68),
            max_blksize=self.max_blksize or 65464,
            timeout=timeout,
            max_timeout=max(8.0, timeout),
            max_retries=max(self.retries - 1, 0),
            max_window=self.max_windowsize,
        )


class TftpServer:
    """State shared by every listener: the resolver, the transfer limit, the reactor."""

    def __init__(self, settings: ServerSettings, resolver: FileResolver, reactor: Any) -> None:
        self.settings = settings
        self.resolver = resolver
        self.reactor = reactor
        self.busy = 0  # transfers running plus requests being resolved
        self.listeners: list[TftpListener] = []
        self._mux: TransferMux | None = None

    @property
    def transfers(self) -> list[Transfer]:
        return [t for listener in self.listeners for t in listener.transfers.values()]

    def abort_all(self, reason: str) -> None:
        for transfer in self.transfers:
            transfer.abort(reason)
        mux, self._mux = self._mux, None
        if mux is not None:
            mux.close()

    def mux(self) -> TransferMux:
        """The transfer-socket multiplexer, made on first use (real reactors only)."""
        if self._mux is None:
            self._mux = TransferMux(self.reactor)
        return self._mux


class TftpListener(DatagramProtocol):
    """Port 69 on one interface address: takes RRQs and starts transfers.

    ``context`` says how clients reach this server (for generated configs); ``mtu`` is the
    interface's, which bounds ``blksize`` (§5 #13).
    """

    noisy = False

    def __init__(
        self,
        server: TftpServer,
        address: str,
        context: ServingContext,
        mtu: int = 1500,
        interface: str | None = None,
    ) -> None:
        self.server = server
        self.address = address
        self.context = context
        self.mtu = mtu
        self.interface = interface
        self.limits = server.settings.limits(mtu)
        self.single_port = server.settings.single_port
        self.transfers: dict[Address, Transfer] = {}
        self._pending: dict[Address, str] = {}
        server.listeners.append(self)

    # Datagrams.

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        try:
            self._received(datagram, addr)
        except Exception:
            log.failure("tftp: error handling a datagram from {peer}", peer=_text(addr))

    def _received(self, datagram: bytes, addr: Address) -> None:
        if self.single_port:
            transfer = self.transfers.get(addr)
            if transfer is not None and datagram[:2] not in (b"\0\x01", b"\0\x02"):
                transfer.receive(datagram)
                return
        try:
            packet = decode(datagram)
        except MalformedPacket as error:
            log.info(
                "tftp: malformed datagram from {peer} dropped: {error}",
                peer=_text(addr),
                error=str(error),
            )
            return
        if isinstance(packet, ReadRequest):
            self._read_request(packet, addr)
        elif isinstance(packet, WriteRequest):
            log.info(
                "tftp: write request for {path} from {peer} refused (read-only)",
                path=packet.filename,
                peer=_text(addr),
            )
            self._send(error_datagram(ErrorCode.ACCESS_VIOLATION), addr)
        elif isinstance(packet, Error):
            return  # never answer an ERROR (RFC 1350 §7)
        else:
            log.debug(
                "tftp: {kind} from {peer}, which has no transfer here",
                kind=type(packet).__name__,
                peer=_text(addr),
            )
            self._send(error_datagram(ErrorCode.UNKNOWN_TRANSFER_ID), addr)

    def _send(self, datagram: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            transport.write(datagram, addr)
        except OSError as error:
            log.debug("tftp: cannot send to {peer}: {error}", peer=_text(addr), error=str(error))

    # Requests.

    def _read_request(self, request: ReadRequest, addr: Address) -> None:
        running = self.transfers.get(addr)
        if self._pending.get(addr) == request.filename or (
            running is not None and running.session.request.filename == request.filename
        ):
            # A retransmitted RRQ (our first answer was lost or is slow): the transfer that is
            # already running retransmits on its own timer.
            return
        if running is not None:
            running.abort("superseded by a new request")
        server = self.server
        if server.busy >= server.settings.max_transfers:
            log.warn(
                "tftp: {busy} transfers running, refusing {path} to {peer}",
                busy=server.busy,
                path=request.filename,
                peer=_text(addr),
            )
            self._send(error_datagram(ErrorCode.NOT_DEFINED, _BUSY), addr)
            return
        server.busy += 1
        self._pending[addr] = request.filename
        try:
            client: IPv4Address | None = IPv4Address(addr[0])
        except ValueError:
            client = None
        started = server.reactor.seconds()
        try:
            resolving = server.resolver.resolve(
                request.filename, client, self.context, self.interface
            )
        except Exception:
            resolving = fail()
        resolving.addCallbacks(
            self._resolved,
            self._refused,
            callbackArgs=(request, addr, started),
            errbackArgs=(request, addr),
        )
        resolving.addErrback(self._internal_error, addr)

    def _resolved(
        self, resolved: Resolved, request: ReadRequest, addr: Address, started: float
    ) -> None:
        self._pending.pop(addr, None)
        server = self.server
        if self.transport is None:  # stopped while resolving
            server.busy -= 1
            _close(resolved.source)
            return
        try:
            limits = self.limits
            blksize = negotiate(request, resolved.source.size, limits).blksize
            if blksize * limits.max_window > WINDOW_BYTES:
                limits = attrs.evolve(limits, max_window=max(1, WINDOW_BYTES // blksize))
            session = ReadSession(request, resolved.source, limits)
        except Exception:
            server.busy -= 1
            _close(resolved.source)
            raise
        transfer = Transfer(self, addr, session, resolved, started)
        if self.single_port:
            transfer.attach(None, self.transport)
        else:
            try:
                port, transport = self._transfer_port(transfer)
            except Exception as error:
                server.busy -= 1
                _close(resolved.source)
                log.error(
                    "tftp: no port for a transfer to {peer}: {error}",
                    peer=_text(addr),
                    error=str(error),
                )
                self._send(error_datagram(ErrorCode.NOT_DEFINED, _BUSY), addr)
                return
            transfer.attach(port, transport)
        self.transfers[addr] = transfer
        transfer.start()

    def _transfer_port(self, transfer: Transfer) -> tuple[Any, Any]:
        """A fresh UDP port on the receiving address: our own socket reader on a reactor that
        watches file descriptors, else (test doubles) a Twisted UDP port."""
        reactor = self.server.reactor
        if IReactorFDSet.providedBy(reactor) and hasattr(select, "epoll"):
            port = TransferSocket(self.server.mux(), self.address, transfer)
            return port, port.socket
        protocol = TransferProtocol(transfer)
        port = reactor.listenUDP(0, protocol, interface=self.address)
        return port, protocol.transport

    def _refused(self, failure: Failure, request: ReadRequest, addr: Address) -> None:
        self._pending.pop(addr, None)
        self.server.busy -= 1
        refusal = failure.value
        if not isinstance(refusal, Refusal):
            log.failure(
                "tftp: cannot serve {path} to {peer}",
                failure=failure,
                path=request.filename,
                peer=_text(addr),
            )
            refusal = Refusal(ErrorCode.NOT_DEFINED, "internal error", "Internal error")
        else:
            log.info(
                "tftp refused {path} to {peer}: {reason} (error {code})",
                path=request.filename,
                peer=_text(addr),
                reason=refusal.reason,
                code=int(refusal.code),
                outcome="refused",
            )
        self._send(error_datagram(refusal.code, refusal.message), addr)

    def _internal_error(self, failure: Failure, addr: Address) -> None:
        log.failure("tftp: internal error serving {peer}", failure=failure, peer=_text(addr))

    def transfer_ended(self, transfer: Transfer) -> None:
        if self.transfers.get(transfer.peer) is transfer:
            del self.transfers[transfer.peer]
        self.server.busy -= 1


def _close(source: BlockSource) -> None:
    if isinstance(source, FileSource):
        source.close()


__all__ = [
    "WINDOW_BYTES",
    "FileResolver",
    "FileSource",
    "Refusal",
    "Resolved",
    "ServerSettings",
    "TftpListener",
    "TftpServer",
    "Transfer",
    "TransferProtocol",
]
