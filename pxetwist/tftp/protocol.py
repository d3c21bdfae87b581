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
* Every accepted RRQ takes a slot in the server's :class:`~pxetwist.tftp.table.TransferTable`
  (``tftp.max_transfers`` of them) until it is refused or its transfer ends; the table reports
  both as boot events, which is what the log shows.  Options are negotiated once, here, when the
  request is accepted.
* With transfer workers (``tftp.workers``, :mod:`pxetwist.tftp.workers`), the bound port, the
  open file and the negotiated options are handed to a worker process, which runs the transfer
  and reports its end; this process still decides everything.  Without workers, or when none is
  ready, the transfer runs here, on the same sockets (:mod:`pxetwist.tftp.sockets`).
* A WRQ gets ERROR 2 (read-only server, §6.6); junk is reported with its sender and dropped;
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
from ipaddress import IPv4Address
from pathlib import Path
from typing import Final

import attrs
from twisted.internet.defer import fail
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from pxetwist.config.model import TftpConfig
from pxetwist.context import ITransferReactor
from pxetwist.events import BootEventBus, LogObserver
from pxetwist.events import Outcome as EventOutcome
from pxetwist.policy.render import ServingContext
from pxetwist.tftp.files import (
    READ_CHUNK,
    FileResolver,
    FileSource,
    Refusal,
    Resolved,
    close_source,
)
from pxetwist.tftp.handoff import Handoff, MessageTooLarge, encode_message
from pxetwist.tftp.packet import (
    Error,
    ErrorCode,
    MalformedPacket,
    ReadRequest,
    WriteRequest,
    decode,
    error_datagram,
    is_request,
)
from pxetwist.tftp.session import ReadSession, SessionLimits, negotiate
from pxetwist.tftp.shared import SharedBlockCache
from pxetwist.tftp.sockets import Address, TransferMux, TransferSocket, bound_socket, peer_text
from pxetwist.tftp.table import RequestReport, TransferSlot, TransferTable
from pxetwist.tftp.transfer import Transfer
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
            window_bytes=WINDOW_BYTES,
        )


def logging_bus() -> BootEventBus:
    """A bus whose only observer writes the log lines (until the server context supplies one)."""
    bus = BootEventBus()
    bus.subscribe(LogObserver())
    return bus


class TftpServer:
    """State shared by every listener: the resolver, the transfer table, the reactor."""

    def __init__(
        self,
        settings: ServerSettings,
        resolver: FileResolver,
        reactor: ITransferReactor,
        bus: BootEventBus | None = None,
    ) -> None:
        self.settings = settings
        self.resolver = resolver
        self.reactor = reactor
        self.table = TransferTable(settings.max_transfers, reactor, bus or logging_bus())
        self.listeners: list[TftpListener] = []
        self.pool: WorkerPool | None = None
        self._mux: TransferMux | None = None
        self.shared_blocks = SharedBlockCache()
        """DATA datagrams of the files being served, shared by their transfers here."""

    @property
    def busy(self) -> int:
        """Slots taken in the transfer table (running transfers and requests being resolved)."""
        return self.table.busy

    def abort_all(self, reason: str) -> None:
        for slot in self.table:
            slot.abort(reason)
        self.table.close()
        mux, self._mux = self._mux, None
        if mux is not None:
            mux.close()

    def mux(self) -> TransferMux:
        """The transfer-socket multiplexer, made on first use."""
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
        self.table = server.table
        self.address = address
        self.context = context
        self.mtu = mtu
        self.interface = interface
        self.limits = server.settings.limits(mtu)
        self.single_port = server.settings.single_port
        server.listeners.append(self)

    # Datagrams.

    def datagramReceived(self, datagram: bytes, addr: Address) -> None:
        try:
            self._received(datagram, addr)
        except Exception:
            log.failure("tftp: error handling a datagram from {peer}", peer=peer_text(addr))

    def _received(self, datagram: bytes, addr: Address) -> None:
        if self.single_port and not is_request(datagram):
            slot = self.table.at(self.address, addr)
            if slot is not None and slot.transfer is not None:
                slot.transfer.receive(datagram)
                return
        try:
            packet = decode(datagram)
        except MalformedPacket as error:
            self._report(
                None,
                RequestReport.of(
                    addr,
                    "a malformed datagram",
                    str(error),
                    outcome=EventOutcome.DROPPED,
                    verb="dropped",
                ),
            )
            return
        if isinstance(packet, ReadRequest):
            self._read_request(packet, addr)
        elif isinstance(packet, WriteRequest):
            self._refuse(
                None, addr, packet.filename, Refusal(ErrorCode.ACCESS_VIOLATION, "read-only")
            )
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

    def _report(self, slot: TransferSlot | None, report: RequestReport) -> None:
        self.table.refuse(slot, report)

    def _refuse(
        self,
        slot: TransferSlot | None,
        addr: Address,
        filename: str,
        refusal: Refusal,
        level: LogLevel = LogLevel.info,
    ) -> None:
        """Answer with ERROR (code and text from ``refusal``), release the slot, report."""
        self._send(error_datagram(refusal.code, refusal.message), addr)
        self._report(
            slot,
            RequestReport.of(addr, filename, refusal.reason, code=int(refusal.code), level=level),
        )

    # Requests.

    def _read_request(self, request: ReadRequest, addr: Address) -> None:
        table = self.table
        running = table.at(self.address, addr)
        if running is not None:
            if running.filename == request.filename:
                # A retransmitted RRQ (our first answer was lost or is slow): the transfer that
                # is already running retransmits on its own timer.
                return
            running.abort("superseded by a new request")
        negotiation = negotiate(request, self.limits)
        if not negotiation.mode_supported:
            self._refuse(
                None,
                addr,
                request.filename,
                Refusal(
                    ErrorCode.ILLEGAL_OPERATION,
                    f"unsupported mode {request.mode[:40]!r}",
                    f"Unsupported mode {request.mode[:40]}",
                ),
            )
            return
        slot = table.claim(self.address, addr, request.filename)
        if slot is None:
            self._refuse(
                None,
                addr,
                request.filename,
                Refusal(
                    ErrorCode.NOT_DEFINED, f"server busy ({table.busy} transfers running)", _BUSY
                ),
                LogLevel.warn,
            )
            return
        slot.negotiation = negotiation
        client = slot.key[1][0]
        try:
            resolving = self.server.resolver.resolve(
                request.filename, _address(client), self.context, self.interface
            )
        except Exception:
            resolving = fail()
        resolving.addCallbacks(
            self._resolved, self._refused, callbackArgs=(slot,), errbackArgs=(slot,)
        )
        resolving.addErrback(self._internal_error, slot)

    def _resolved(self, resolved: Resolved, slot: TransferSlot) -> None:
        slot.resolved = resolved
        if slot.aborted is not None or self.transport is None:  # given up while resolving
            self._report(
                slot,
                RequestReport.of(
                    slot.peer,
                    slot.filename,
                    slot.aborted or "server stopping",
                    outcome=EventOutcome.DROPPED,
                    verb="dropped",
                ),
            )
            return
        if not self.single_port and self._hand_off(slot, resolved):
            return
        assert slot.negotiation is not None
        shared = self.server.shared_blocks.blocks(resolved.source, slot.negotiation.blksize)
        session = ReadSession(slot.negotiation, resolved.source, self.limits, shared)
        transfer = Transfer(
            slot, slot.peer, session, resolved.source, slot.started, self.mtu, slot.filename
        )
        if self.single_port:
            transfer.attach(None, self.transport)
        else:
            try:
                port = TransferSocket.bind(self.server.mux(), self.address, transfer)
            except OSError as error:
                log.error(
                    "tftp: no port for a transfer to {peer}: {error}",
                    peer=peer_text(slot.peer),
                    error=str(error),
                )
                self._refuse(
                    slot,
                    slot.peer,
                    slot.filename,
                    Refusal(ErrorCode.NOT_DEFINED, f"no port: {error}", _BUSY),
                    LogLevel.warn,
                )
                return
            transfer.attach(port, port.socket)
        slot.transfer = transfer
        try:
            transfer.start()
        except Exception:
            transfer.abort("internal error")
            raise

    def _hand_off(self, slot: TransferSlot, resolved: Resolved) -> bool:
        """Give the transfer to a worker process; False (nothing changed) when none takes it.

        The hand-off carries the negotiated options, not the request, so its size is bounded
        whatever the client sent; should it still not fit, the request is refused here with an
        ERROR rather than handed over in pieces (issue 18)."""
        pool = self.server.pool
        if pool is None or not pool.ready:
            return False
        assert slot.negotiation is not None
        try:
            message = encode_message(
                Handoff(slot.id, slot.peer, slot.negotiation, self.limits, self.mtu)
            )
        except MessageTooLarge as error:
            self._refuse(
                slot,
                slot.peer,
                slot.filename,
                Refusal(ErrorCode.NOT_DEFINED, str(error), "Request too large"),
            )
            return True
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
        try:
            worker = pool.hand_off(message, sock, file_fd, slot)
        finally:
            sock.close()
            if file_fd != _fileno(resolved):
                os.close(file_fd)
        if worker is None:
            return False
        close_source(resolved.source)  # the worker has its own copy; the size stays known
        return True

    def _refused(self, failure: Failure, slot: TransferSlot) -> None:
        refusal = failure.value
        if not isinstance(refusal, Refusal):
            log.failure(
                "tftp: cannot serve {path} to {peer}",
                failure=failure,
                path=slot.filename,
                peer=peer_text(slot.peer),
            )
            refusal = Refusal(ErrorCode.NOT_DEFINED, "internal error", "Internal error")
        self._refuse(slot, slot.peer, slot.filename, refusal)

    def _internal_error(self, failure: Failure, slot: TransferSlot) -> None:
        log.failure(
            "tftp: internal error serving {peer}", failure=failure, peer=peer_text(slot.peer)
        )
        if not slot.released and slot.transfer is None and slot.worker is None:
            self._refuse(
                slot,
                slot.peer,
                slot.filename,
                Refusal(ErrorCode.NOT_DEFINED, "internal error", "Internal error"),
            )


def _address(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


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


__all__ = [
    "READ_CHUNK",
    "WINDOW_BYTES",
    "FileResolver",
    "FileSource",
    "Refusal",
    "Resolved",
    "ServerSettings",
    "TftpListener",
    "TftpServer",
    "Transfer",
    "logging_bus",
]
