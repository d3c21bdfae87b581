# -*- test-case-name: tests.tftp.test_protocol -*-
"""The TFTP service: one listener per served interface address, bound before privileges drop.

Each interface with an IPv4 address gets a :class:`~pxetwist.tftp.protocol.TftpListener` on
``tftp.port`` bound to that address (see :mod:`pxetwist.tftp.protocol` for why not
``0.0.0.0``), in ``privilegedStartService`` so that ``twistd -u/-g`` can drop root after port 69
is bound.  ``stopService`` ends running transfers (the client gets ERROR 0) and unbinds.
"""

from __future__ import annotations

import socket
from typing import Any, Final

import attrs
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import IListeningPort, IReactorFDSet, IReactorProcess
from twisted.logger import Logger

from pxetwist.bootconfig import BootConfigResolver
from pxetwist.config.model import Config
from pxetwist.context import IServerReactor, ServerContext, Settings
from pxetwist.fdlimit import HEADROOM, raise_fd_limit
from pxetwist.listening import Listeners, Listening, listening_address
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.render import ServingContext, serving_context
from pxetwist.sockbuf import enlarge_receive_buffer
from pxetwist.tftp.protocol import FileResolver, ServerSettings, TftpListener, TftpServer
from pxetwist.tftp.workers import WorkerPool, default_worker_count

log = Logger()

_MAX_PACKET: Final = 8192  # Twisted's default: a request is one small datagram


def settings_from(config: Config) -> ServerSettings:
    tftp = config.tftp
    return ServerSettings(
        root=tftp.root,
        max_transfers=tftp.max_transfers,
        max_blksize=tftp.max_blksize,
        max_windowsize=tftp.max_windowsize,
        timeout=tftp.timeout,
        retries=tftp.retries,
        single_port=tftp.single_port,
        workers=default_worker_count() if tftp.workers is None else tftp.workers,
        adaptive_window=tftp.adaptive_window,
    )


class TftpService(Service):
    """Serves ``config.tftp`` on every interface of the context that has an IPv4 address."""

    name = "tftp"

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        config = context.config
        self.settings = settings_from(config)
        self.server = TftpServer(
            self.settings,
            FileResolver(BootConfigResolver(context)),
            context.reactor,
            context.events,
        )
        self.listeners: Listeners[TftpListener] = Listeners("tftp", self._listen, self._closed)
        context.live.subscribe(self._reloaded)

    @property
    def reactor(self) -> IServerReactor:
        return self.context.reactor

    def _context(self, address: str, port: int) -> ServingContext:
        return serving_context(self.context.config, address, tftp_port=port)

    def _reloaded(self, old: Settings, new: Settings) -> None:
        """A reload: configs generated from now on point at the new ``server_address``, HTTP
        port and roots; new requests negotiate with the new limits (block and window sizes,
        timeout, retries, ``max_transfers``); listeners follow the interfaces served and the
        port.  Transfers under way keep the limits and socket they started with.  Workers and
        single-port mode stay as they are until a restart; the root files are read from and the
        policy chain are read per request anyway."""
        settings = attrs.evolve(
            settings_from(new.config),
            workers=self.settings.workers,
            single_port=self.settings.single_port,
        )
        self.settings = self.server.settings = settings
        self.server.table.limit = settings.max_transfers
        for listening in self.listeners:
            listening.protocol.limits = settings.limits(listening.interface.mtu)
            listening.protocol.context = self._context(listening.address, listening.bound)
        if self.running or self.listeners:
            self.listeners.follow(self.context.served, new.config.tftp.port)

    @property
    def ports(self) -> list[IListeningPort]:
        return self.listeners.ports

    def _bind(self) -> None:
        if self.listeners:
            return
        wanted = 2 * self.settings.max_transfers + HEADROOM
        limit = raise_fd_limit(wanted)
        if limit < wanted and not self.settings.single_port:
            log.warn(
                "tftp: only {limit} file descriptors allowed; fewer than tftp.max_transfers "
                "({max_transfers}) transfers can run at once",
                limit=limit,
                max_transfers=self.settings.max_transfers,
            )
        self.listeners.open(self.context.served, self.context.config.tftp.port)

    def _listen(self, info: InterfaceInfo, port_number: int) -> tuple[IListeningPort, TftpListener]:
        address = str(info.ip)
        listener = TftpListener(
            self.server,
            address,
            self._context(address, port_number),
            mtu=info.mtu,
            interface=info.name,
        )
        port = self.reactor.listenUDP(
            port_number, listener, interface=address, maxPacketSize=_MAX_PACKET
        )
        sock = getattr(port, "socket", None)
        if isinstance(sock, socket.socket):
            enlarge_receive_buffer(sock, name="tftp")
        _, bound = listening_address(port)
        if bound != port_number:  # port 0: tests and benchmarks
            listener.context = self._context(address, bound)
        log.info(
            "tftp: serving {root} on {address}:{port} ({interface}, mtu {mtu}, "
            "blksize up to {blksize})",
            root=str(self.context.config.tftp.root),
            address=address,
            port=bound,
            interface=info.name,
            mtu=info.mtu,
            blksize=listener.limits.blksize_limit,
        )
        return port, listener

    def _closed(self, listening: Listening[TftpListener]) -> None:
        if listening.protocol in self.server.listeners:
            self.server.listeners.remove(listening.protocol)

    def privilegedStartService(self) -> None:
        self._bind()
        self._start_workers()  # still root: the spawner becomes the service user itself
        super().privilegedStartService()

    def startService(self) -> None:
        self._bind()
        self._start_workers()
        super().startService()

    def _start_workers(self) -> None:
        """The transfer workers (once).  They need a real process reactor, and single-port
        mode keeps every transfer on the listener's socket."""
        if self.server.pool is not None or not self.ports:
            return
        workers = self.settings.workers
        if (
            workers > 0
            and not self.settings.single_port
            and IReactorProcess.providedBy(self.reactor)
            and IReactorFDSet.providedBy(self.reactor)
        ):
            pool = WorkerPool(self.reactor, workers, self.server.table, self.context.run_as)
            self.server.pool = pool
            pool.start()
            log.info("tftp: {count} transfer worker processes", count=workers)
        else:
            log.info("tftp: 0 transfer worker processes (transfers run in this process)")

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        pool, self.server.pool = self.server.pool, None
        stopping = [pool.stop()] if pool is not None else []
        self.server.abort_all("server shutting down")
        closing = self.listeners.close_all()
        self.server.listeners.clear()
        return DeferredList([*stopping, closing])

    @property
    def active_transfers(self) -> int:
        """Slots taken in the transfer table now (what the metrics gauge reads at scrape time)."""
        return self.server.busy

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(address, port)`` of every listener, as bound."""
        return self.listeners.addresses


__all__ = ["TftpService", "settings_from"]
