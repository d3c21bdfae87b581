# -*- test-case-name: tests.tftp.test_protocol -*-
"""The Twisted side of TFTP: listeners on port 69 that accept requests and start transfers.

Shape (RFC 1350 §4, protocol-reference §6.2):

* A :class:`TftpListener` is bound to one interface address on ``tftp.port``.  Binding per
  address, not to ``0.0.0.0``, is what tells it which address a request came to: Twisted's UDP
  port has no ``IP_PKTINFO``, and a transfer must be answered *from* that address, or a client
  on a multi-homed server sees DATA from an address it never talked to and drops it.  (The cost:
  addresses that appear after start-up are not served until a restart.)
* An RRQ is checked (path confinement, concurrency limit), resolved to a file on disk or a
  generated boot config (:mod:`pxetwist.tftp.files`), and served by a
  :class:`~pxetwist.tftp.transfer.Transfer`: a sans-I/O
  :class:`~pxetwist.tftp.session.ReadSession` plus a fresh UDP port bound to the receiving
  address (the server's TID, :mod:`pxetwist.tftp.sockets`).  Packets from any other address or
  port get ERROR 5 and do not disturb the transfer (RFC 1350 §4, §7.8 T6).  In ``single_port``
  mode the listener's own port carries every transfer, demultiplexed by the client's address and
  port.
* With transfer workers (``tftp.workers``, :mod:`pxetwist.tftp.workers`), the bound port and the
  open file are handed to a worker process, which runs the transfer and reports its end; this
  process still decides everything and writes the transfer's log line.  Without workers, or
  when none is ready, the transfer runs here.
* A WRQ gets ERROR 2 (read-only server, §6.6); junk is logged with its sender and dropped;
  nothing a client sends can raise out of a protocol.

File reads happen on the thread that runs the transfer: boot files are small and hot in the
page cache, where a ``pread`` costs microseconds, far less than handing each read to a thread
would.  A cold read from local disk stalls that reactor for about a disk seek;
``POSIX_FADV_SEQUENTIAL`` asks the kernel to read ahead so that happens once per readahead
window, not per block.  A TFTP root on a slow network file system would hurt every transfer at
once; keep it local.
"""

from __future__ import annotations

import os
import select
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any, Final

import attrs
from twisted.internet.defer import fail
from twisted.internet.interfaces import IReactorFDSet
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from pxetwist.config.model import TftpConfig
from pxetwist.policy.render import ServingContext
from pxetwist.tftp.files import (
    READ_CHUNK,
    FileResolver,
    FileSource,
    Refusal,
    Resolved,
    close_source,
)
from pxetwist.tftp.handoff import Handoff
from pxetwist.tftp.packet import (
    Error,
    ErrorCode,
    MalformedPacket,
    ReadRequest,
    WriteRequest,
    decode,
    error_datagram,
)
from pxetwist.tftp.session import (
    Outcome,
    ReadSession,
    SessionLimits,
    TransferSummary,
    negotiate,
)
from pxetwist.tftp.sockets import Address, TransferMux, TransferSocket, bound_socket, peer_text
from pxetwist.tftp.transfer import Transfer, TransferProtocol
from pxetwist.tftp.workers import WorkerPool

log = Logger()

WINDOW_BYTES: Final = 512 * 1024
"""Most octets one transfer keeps in flight (and in its window cache): window x blksize."""
_BUSY: Final = "Server busy, try again later"


_DEFAULTS: Final = TftpConfig()


@attrs.frozen
class ServerSettings:
    """The parts of the configuration the TFTP server runs with (mapped by the service).

    The defaults are the config model's (:class:`~pxetwist.config.model.TftpConfig`), for tests
    and benchmarks that build settings without a config.
    """

    root: Path
    max_transfers: int = _DEFAULTS.max_transfers
    max_blksize: int | None = _DEFAULTS.max_blksize
    max_windowsize: int = _DEFAULTS.max_windowsize
    timeout: float = _DEFAULTS.timeout
    retries: int = _DEFAULTS.retries
    single_port: bool = _DEFAULTS.single_port
    workers: int = 0
    """Transfer worker processes (0: every transfer runs in the listening process)."""
    adaptive_window: bool = _DEFAULTS.adaptive_window
    """Shrink a negotiated window under loss and grow it back (see SessionLimits)."""

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
            adaptive_window=self.adaptive_window,
        )


class TftpServer:
    """State shared by every listener: the resolver, the transfer limit, the reactor."""

    def __init__(self, settings: ServerSettings, resolver: FileResolver, reactor: Any) -> None:
        self.settings = settings
        self.resolver = resolver
        self.reactor = reactor
        self.busy = 0  # transfers running plus requests being resolved
        self.listeners: list[TftpListener] = []
        self.pool: WorkerPool | None = None
        self._mux: TransferMux | None = None

    @property
    def transfers(self) -> list[Transfer | RemoteTransfer]:
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
        self.transfers: dict[Address, Transfer | RemoteTransfer] = {}
        self._pending: dict[Address, str] = {}
        server.listeners.append(self)

    # Datagrams.

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        try:
            self._received(datagram, addr)
        except Exception:
            log.failure("tftp: error handling a datagram from {peer}", peer=peer_text(addr))

    def _received(self, datagram: bytes, addr: Address) -> None:
        if self.single_port:
            transfer = self.transfers.get(addr)
            if isinstance(transfer, Transfer) and datagram[:2] not in (b"\0\x01", b"\0\x02"):
                transfer.receive(datagram)
                return
        try:
            packet = decode(datagram)
        except MalformedPacket as error:
            log.info(
                "tftp: malformed datagram from {peer} dropped: {error}",
                peer=peer_text(addr),
                error=str(error),
            )
            return
        if isinstance(packet, ReadRequest):
            self._read_request(packet, addr)
        elif isinstance(packet, WriteRequest):
            log.info(
                "tftp: write request for {path} from {peer} refused (read-only)",
                path=packet.filename,
                peer=peer_text(addr),
            )
            self._send(error_datagram(ErrorCode.ACCESS_VIOLATION), addr)
        elif isinstance(packet, Error):
            return  # never answer an ERROR (RFC 1350 §7)
        else:
            log.debug(
                "tftp: {kind} from {peer}, which has no transfer here",
                kind=type(packet).__name__,
                peer=peer_text(addr),
            )
            self._send(error_datagram(ErrorCode.UNKNOWN_TRANSFER_ID), addr)

    def _send(self, datagram: bytes, addr: Address) -> None:
        transport = self.transport
        if transport is None:
            return
        try:
            transport.write(datagram, addr)
        except OSError as error:
            log.debug(
                "tftp: cannot send to {peer}: {error}", peer=peer_text(addr), error=str(error)
            )

    # Requests.

    def _read_request(self, request: ReadRequest, addr: Address) -> None:
        running = self.transfers.get(addr)
        if self._pending.get(addr) == request.filename or (
            running is not None and running.filename == request.filename
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
                peer=peer_text(addr),
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
            close_source(resolved.source)
            return
        try:
            limits = self.limits
            blksize = negotiate(request, resolved.source.size, limits).blksize
            if blksize * limits.max_window > WINDOW_BYTES:
                limits = attrs.evolve(limits, max_window=max(1, WINDOW_BYTES // blksize))
            # A worker builds its own session (netascii conversion scans the whole file): only
            # a transfer that stays here gets one here.
            if not self.single_port and self._hand_off(request, resolved, addr, started, limits):
                return
            session = ReadSession(request, resolved.source, limits)
        except Exception:
            server.busy -= 1
            close_source(resolved.source)
            raise
        transfer = Transfer(self, addr, session, resolved.source, started, self.mtu)
        transfer.origin = resolved
        if self.single_port:
            transfer.attach(None, self.transport)
        else:
            try:
                port, transport = self._transfer_port(transfer)
            except Exception as error:
                server.busy -= 1
                close_source(resolved.source)
                log.error(
                    "tftp: no port for a transfer to {peer}: {error}",
                    peer=peer_text(addr),
                    error=str(error),
                )
                self._send(error_datagram(ErrorCode.NOT_DEFINED, _BUSY), addr)
                return
            transfer.attach(port, transport)
        self.transfers[addr] = transfer
        transfer.start()

    def _hand_off(
        self,
        request: ReadRequest,
        resolved: Resolved,
        addr: Address,
        started: float,
        limits: SessionLimits,
    ) -> bool:
        """Give the transfer to a worker process; False (nothing changed) when none takes it."""
        pool = self.server.pool
        if pool is None or not pool.ready:
            return False
        try:
            sock = bound_socket(self.address)
        except OSError:
            return False  # the in-process path reports it
        try:
            file_fd = _descriptor(resolved)
        except OSError as error:
            sock.close()
            log.warn("tftp: cannot hand off {path}: {error}", path=resolved.path, error=str(error))
            return False
        remote = RemoteTransfer(self, addr, request.filename, resolved, started)
        try:
            transfer_id = pool.hand_off(
                lambda transfer_id: Handoff(transfer_id, addr, request, limits, self.mtu),
                sock,
                file_fd,
                resolved.source.size,
                remote.ended,
            )
        finally:
            sock.close()
            if file_fd != _fileno(resolved):
                os.close(file_fd)
        if transfer_id is None:
            return False
        close_source(resolved.source)
        remote.transfer_id = transfer_id
        self.transfers[addr] = remote
        return True

    def _transfer_port(self, transfer: Transfer) -> tuple[Any, Any]:
        """A fresh UDP port on the receiving address: our own socket reader on a reactor that
        watches file descriptors, else (test doubles) a Twisted UDP port."""
        reactor = self.server.reactor
        if IReactorFDSet.providedBy(reactor) and hasattr(select, "epoll"):
            port = TransferSocket.bind(self.server.mux(), self.address, transfer)
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
                peer=peer_text(addr),
            )
            refusal = Refusal(ErrorCode.NOT_DEFINED, "internal error", "Internal error")
        else:
            log.info(
                "tftp refused {path} to {peer}: {reason} (error {code})",
                path=request.filename,
                peer=peer_text(addr),
                reason=refusal.reason,
                code=int(refusal.code),
                outcome="refused",
            )
        self._send(error_datagram(refusal.code, refusal.message), addr)

    def _internal_error(self, failure: Failure, addr: Address) -> None:
        log.failure("tftp: internal error serving {peer}", failure=failure, peer=peer_text(addr))

    def transfer_ended(self, transfer: Transfer | RemoteTransfer, summary: TransferSummary) -> None:
        if self.transfers.get(transfer.peer) is transfer:
            del self.transfers[transfer.peer]
        self.server.busy -= 1
        origin = transfer.origin
        _log_transfer(transfer.peer, origin if isinstance(origin, Resolved) else None, summary)


class RemoteTransfer:
    """A transfer a worker process runs, as the listener tracks it (see :mod:`.workers`)."""

    def __init__(
        self,
        owner: TftpListener,
        peer: Address,
        filename: str,
        origin: Resolved,
        started: float,
    ) -> None:
        self.owner = owner
        self.peer = peer
        self.filename = filename
        self.origin = origin
        self.started = started
        self.transfer_id = 0
        self.finished = False

    def abort(self, reason: str) -> None:
        pool = self.owner.server.pool
        if not self.finished and pool is not None:
            pool.cancel(self.transfer_id, reason)

    def ended(self, summary: TransferSummary) -> None:
        if self.finished:
            return
        self.finished = True
        seconds = self.owner.server.reactor.seconds() - self.started
        self.owner.transfer_ended(self, attrs.evolve(summary, seconds=round(seconds, 6)))


def _fileno(resolved: Resolved) -> int:
    source = resolved.source
    return source.fileno() if isinstance(source, FileSource) else -1


def _descriptor(resolved: Resolved) -> int:
    """A descriptor of what ``resolved`` serves: its open file, or a memfd of generated text."""
    fd = _fileno(resolved)
    if fd >= 0:
        return fd
    source = resolved.source
    memfd = os.memfd_create("pxetwist-tftp", os.MFD_CLOEXEC)
    try:
        data = source.read(0, source.size)
        written = 0
        while written < len(data):
            written += os.write(memfd, data[written:])
    except BaseException:
        os.close(memfd)
        raise
    return memfd


def _log_transfer(peer: Address, resolved: Resolved | None, summary: TransferSummary) -> None:
    outcome = summary.outcome
    fields = {
        "peer": peer_text(peer),
        "mac": str(resolved.mac) if resolved is not None and resolved.mac is not None else None,
        "path": resolved.path if resolved is not None else None,
        "generated": resolved.generated.value
        if resolved is not None and resolved.generated
        else None,
        "bytes": summary.bytes,
        "size": summary.size,
        "seconds": summary.seconds,
        "outcome": outcome.value,
        "detail": summary.detail,
        "blksize": summary.blksize,
        "windowsize": summary.windowsize,
        "retransmissions": summary.retransmissions,
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


__all__ = [
    "READ_CHUNK",
    "WINDOW_BYTES",
    "FileResolver",
    "FileSource",
    "Refusal",
    "RemoteTransfer",
    "Resolved",
    "ServerSettings",
    "TftpListener",
    "TftpServer",
    "Transfer",
    "TransferProtocol",
]
