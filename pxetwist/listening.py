"""One protocol's listening sockets: one per served interface address, following reloads.

TFTP and HTTP both listen on each served interface's address rather than on ``0.0.0.0`` (see
:mod:`pxetwist.http.service` for why), bind at start before privileges drop, and after a reload
close the sockets of interfaces no longer served (or of a port no longer configured) and open
the new ones.  :class:`Listeners` is that bookkeeping, once; each service says how it listens
on one interface.  Closing a listening socket does not touch what it already accepted: TFTP
transfers and HTTP downloads under way finish.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Generic, TypeVar, cast

import attrs
from twisted.internet import address as twisted_address
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import Logger

from pxetwist.netinfo import InterfaceInfo

__all__ = ["Listeners", "Listening", "listening_address"]

log = Logger()

P = TypeVar("P")


def listening_address(port: IListeningPort) -> tuple[str, int]:
    """``(address, port)`` a listening TCP or UDP port is bound to."""
    host = cast(twisted_address.IPv4Address, port.getHost())
    return host.host, host.port


@attrs.frozen
class Listening(Generic[P]):
    """One listening socket: on which interface, the port asked for and the one bound (they
    differ when port 0 was asked: tests and benchmarks), and what listens (``protocol``)."""

    interface: InterfaceInfo
    asked: int
    bound: int
    port: IListeningPort
    protocol: P

    @property
    def address(self) -> str:
        return str(self.interface.ip)


Listen = Callable[[InterfaceInfo, int], tuple[IListeningPort, P]]


class Listeners(Generic[P]):
    """The listening sockets of the protocol ``name``.

    ``listen(interface, port)`` opens one (and logs that it serves); ``closed(listening)``, if
    given, is told of each one closed, after it stopped listening.
    """

    def __init__(
        self,
        name: str,
        listen: Listen[P],
        closed: Callable[[Listening[P]], None] = lambda listening: None,
    ) -> None:
        self.name = name
        self._listen = listen
        self._closed = closed
        self._open: list[Listening[P]] = []

    def __iter__(self) -> Iterator[Listening[P]]:
        return iter(list(self._open))

    def __len__(self) -> int:
        return len(self._open)

    @property
    def ports(self) -> list[IListeningPort]:
        return [listening.port for listening in self._open]

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(address, port)`` of every socket, as bound."""
        return [listening_address(listening.port) for listening in self._open]

    def open(self, interfaces: Sequence[InterfaceInfo], number: int) -> None:
        """At start: listen on port ``number`` of every interface with an IPv4 address.

        A failure to bind is raised: a server that cannot listen where it was told to must
        not start as if it did.
        """
        served = [info for info in interfaces if info.ip is not None]
        if not served:
            log.error(
                "{name}: no interface with an IPv4 address to serve; {protocol} is not served",
                name=self.name,
                protocol=self.name.upper(),
            )
        for info in served:
            self._add(info, number)

    def follow(self, interfaces: Sequence[InterfaceInfo], number: int) -> None:
        """After a reload: close what is no longer wanted, then open what is missing.

        A socket that cannot be opened now is logged, not raised: the rest of the reload (and
        the sockets that are fine) must still take effect.
        """
        wanted = {str(info.ip): info for info in interfaces if info.ip is not None}
        for listening in list(self._open):
            if listening.address in wanted and listening.asked == number:
                continue
            self._open.remove(listening)
            _stop(listening.port)
            self._closed(listening)
            log.info(
                "{name}: no longer listening on {address}:{port}",
                name=self.name,
                address=listening.address,
                port=listening.bound,
            )
        listening_on = {listening.address for listening in self._open}
        for address, info in wanted.items():
            if address in listening_on:
                continue
            try:
                self._add(info, number)
            except Exception as error:
                log.error(
                    "{name}: cannot listen on {address}:{port}: {error}",
                    name=self.name,
                    address=address,
                    port=number,
                    error=str(error),
                )

    def close_all(self) -> Deferred[None]:
        """Stop listening everywhere; the Deferred fires when every socket is closed."""
        closing, self._open = self._open, []
        stopped = [_stop(listening.port) for listening in closing]
        for listening in closing:
            self._closed(listening)
        return DeferredList(stopped).addCallback(lambda _: None)

    def _add(self, info: InterfaceInfo, number: int) -> Listening[P]:
        port, protocol = self._listen(info, number)
        listening = Listening(info, number, listening_address(port)[1], port, protocol)
        self._open.append(listening)
        return listening


def _stop(port: IListeningPort) -> Deferred[None]:
    stopping = port.stopListening()
    return stopping if stopping is not None else succeed(None)
