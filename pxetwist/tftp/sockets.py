# -*- test-case-name: tests.tftp.test_protocol -*-
"""The sockets under TFTP transfers: the server's TID per transfer, read and written directly.

On a real reactor every transfer has a plain non-blocking UDP socket (:class:`TransferSocket`),
and all of them sit behind one private epoll set (:class:`TransferMux`) that the reactor sees
as a single descriptor, so a rack of clients costs one reactor dispatch per wake-up, not one per
datagram.  Datagrams go straight to the socket (:class:`Sender`: ``sendto``, or one ``sendmsg``
per window with UDP generic segmentation offload when the blocks fit the MTU).  A full socket
buffer drops the rest of the window quietly; the session's retransmission timer resends it, as
after any loss.  While exactly one transfer runs, it waits for the client's next ACK in place
(see :class:`TransferSocket`).

These work the same in the main process and in a transfer worker
(:mod:`pxetwist.tftp.worker`); the transfer they carry needs only ``receive``, ``finished``,
``peer`` and ``owner.server.busy``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import struct
import time
from collections.abc import Callable, Iterable
from typing import Any, Final

from twisted.internet.interfaces import IReadDescriptor
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from pxetwist.context import ITransferReactor
from pxetwist.tftp.packet import ErrorCode, error_datagram, is_error

log = Logger()

Address = tuple[str, int]


def peer_text(address: Address) -> str:
    """``ip:port``, as every TFTP log line writes a peer."""
    return f"{address[0]}:{address[1]}"


_UDP_SEGMENT: Final = 103  # linux/udp.h; not exported by the socket module
_GSO_MAX_BYTES: Final = 65000  # one GSO send must fit an IP datagram
_GSO_MAX_SEGMENTS: Final = 64  # UDP_MAX_SEGMENTS on kernels before 6.x


class Sender:
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
        self.send_one: Callable[[bytes], None] = (
            self._sendto_peer(self._socket) if self._socket is not None else self._write_one
        )
        """Send one datagram: lockstep's every block, so no checks on the way."""

    def _sendto_peer(self, sock: socket.socket) -> Callable[[bytes], None]:
        sendto = sock.sendto
        peer = self.peer
        failed = self._failed

        def send_one(datagram: bytes) -> None:
            try:
                sendto(datagram, peer)
            except OSError as error:
                failed(error)

        return send_one

    def _write_one(self, datagram: bytes) -> None:
        with contextlib.suppress(OSError):
            self._transport.write(datagram, self.peer)

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


_SPIN_SLICE: Final = 0.002
"""Longest a lone transfer keeps the reactor waiting for its next ACK (see TransferSocket)."""


@implementer(IReadDescriptor)
class TransferMux:
    """The transfer sockets, watched by the reactor directly or behind one private epoll set.

    Twisted's reactors wrap every readable descriptor in a logging context and a dispatch that
    cost more than serving the datagram.  On those, with many transfers at once (a rack
    booting), this mux is the only transfer descriptor the reactor watches; when it is
    readable, one ``epoll.poll(0)`` lists every transfer socket with data, and each is served
    in turn, without a reactor round per datagram.  (An epoll descriptor is itself pollable,
    and level-triggered: anything left unread makes the reactor call again.)

    A reactor that says it ``dispatches_directly`` (:class:`pxetwist.reactor.BootReactor`, what
    ``twistd pxe`` runs on) calls a ready descriptor for less than that second ``epoll_wait``
    costs, and in a storm of lockstep transfers nearly every wake-up finds one socket ready
    (bench/README, "Storm"): there each transfer socket is the reactor's own reader.
    """

    def __init__(self, reactor: ITransferReactor) -> None:
        self.reactor = reactor
        self.direct = bool(getattr(reactor, "dispatches_directly", False))
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
        self._sockets[fd] = transfer_socket
        if self.direct:
            self.reactor.addReader(transfer_socket)
            return
        self._epoll.register(fd, select.EPOLLIN)
        if not self._registered:
            self.reactor.addReader(self)
            self._registered = True

    def remove(self, transfer_socket: TransferSocket) -> None:
        fd = transfer_socket.fileno()
        if self._sockets.pop(fd, None) is not None:
            if self.direct:
                self.reactor.removeReader(transfer_socket)
                return
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

    def __init__(self, mux: TransferMux, sock: socket.socket, transfer: Any) -> None:
        sock.setblocking(False)
        self.socket = sock
        self.mux = mux
        self.reactor = mux.reactor
        self.transfer = transfer
        self._peer = transfer.peer
        self._fileno = sock.fileno()
        # Fixed for the transfer's life (the table, or the worker's host): looked up once, not
        # through two properties on every block.
        self._server: Any = getattr(getattr(transfer, "owner", None), "server", None)
        self._spin = self._server is not None and callable(getattr(self.reactor, "timeout", None))
        # Bound once: the per-block read below runs hundreds of thousands of times a storm.
        self._recvfrom = sock.recvfrom
        self._receive = transfer.receive
        mux.add(self)

    @classmethod
    def bind(cls, mux: TransferMux, address: str, transfer: Any) -> TransferSocket:
        """A fresh port on ``address`` (the address the RRQ came to) for ``transfer``."""
        return cls(mux, bound_socket(address), transfer)

    def fileno(self) -> int:
        return self._fileno

    def logPrefix(self) -> str:
        return "tftp-transfer"

    def connectionLost(self, reason: Failure) -> None:
        """The reactor dropped this socket (its ``doRead`` raised): the transfer ends with it,
        rather than waiting out its retransmissions on a socket nothing reads."""
        self.transfer.abort(f"transfer socket lost: {reason.getErrorMessage()}")
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
        # The per-block path (in a storm, once per block of every transfer): one datagram,
        # checked against the peer, handed on.
        try:
            data, addr = self._recvfrom(2048)  # ACK or ERROR: small
        except OSError:  # EAGAIN, or an ICMP error reported on the socket: nothing to read
            return
        if addr != self._peer:
            self._stray(data, addr)
            return
        self._receive(data)
        # In a storm many transfers run, so the count (not ``finished``) is asked first.
        if self._spin and self._server.busy == 1 and not self.transfer.finished:
            self._wait_here()

    def _stray(self, data: bytes, addr: Address) -> None:
        if not is_error(data):  # never answer an ERROR with an ERROR (RFC 1350 §4)
            log.info(
                "tftp: stray datagram from {stray} on the transfer to {peer}",
                stray=peer_text(addr),
                peer=peer_text(self._peer),
            )
            with contextlib.suppress(OSError):
                self.socket.sendto(error_datagram(ErrorCode.UNKNOWN_TRANSFER_ID), addr)

    def _wait_here(self) -> None:
        reactor = self.reactor
        others = select.poll()
        for reader in reactor.getReaders():
            # The mux (or the reactor) holds only this socket while one transfer runs.
            if reader is not self.mux and reader is not self:
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


def bound_socket(address: str) -> socket.socket:
    """A non-blocking UDP socket on an ephemeral port of ``address``: a transfer's TID."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setblocking(False)
        sock.bind((address, 0))
    except BaseException:
        sock.close()
        raise
    return sock


def _timeval(seconds: float) -> bytes:
    whole = int(seconds)
    return struct.pack("@ll", whole, max(1, int((seconds - whole) * 1e6)))


_CHECK_EVERY: Final = 8
"""Blocks handled between checks for other work while a lone transfer is served in place."""


__all__ = [
    "Address",
    "Sender",
    "TransferMux",
    "TransferSocket",
    "bound_socket",
    "peer_text",
]
