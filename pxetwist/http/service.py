# -*- test-case-name: tests.http.test_service_lab -*-
"""The HTTP service: boot files and generated boot scripts on ``http.port``.

**One site, two resources.** :class:`BootRoot` sends the names
:func:`~pxetwist.http.scripts.script_name` claims (``boot.ipxe``, ``<mac>.ipxe``, GRUB's
``grub.cfg`` family) to :class:`~pxetwist.http.scripts.BootScripts` and everything else to
:class:`~pxetwist.http.static.BootFiles` on ``http.root``. Scripts take precedence: a real file
called ``boot.ipxe`` under the root is only served to machines whose decision has nothing for
iPXE to run (see :mod:`pxetwist.http.scripts`), so the policy always wins over a stale file;
the service logs at start which such files it found.

**Where it listens.** One listening socket per served interface address, like TFTP, rather
than one on ``0.0.0.0``: a boot server answers every machine on its segments before any of them
is authenticated, and the operator's ``interfaces`` list (or ``--interface``) is the statement
of which segments those are. A wildcard socket would also serve the management network and
loopback. What is given up: an address added after start is not served until a restart (the
same holds for DHCP and TFTP). Generated URLs name the address a client connected to, or
``server_address`` when the config sets one (NAT, a load balancer in front). Sockets are bound in
``privilegedStartService``, so ``twistd --uid`` can drop root after binding port 80.

**Access log.** Every finished response is one ``twisted.logger`` event in the namespace
``pxetwist.http.access`` with the fields ``client``, ``method``, ``path``, ``status``, ``bytes``
(body bytes sent), ``seconds`` (from the request line to the last byte handed to the kernel) and
``mac`` when it is known: from the script's ``mac=``, else what DHCP (or the neighbour table)
knows about the client's address. A download the client abandons is logged too, with
``complete`` False.
"""

from __future__ import annotations

import itertools
from ipaddress import AddressValueError, IPv4Address
from typing import Any, Final, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pxetwist.context import IServerReactor, ServerContext, listening_address
from pxetwist.fdlimit import HEADROOM, raise_fd_limit
from pxetwist.http.scripts import MAC_ATTRIBUTE, BootScripts, script_name
from pxetwist.http.static import BootFiles
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress

__all__ = ["BootRequestLog", "BootRoot", "BootSite", "HttpService"]

log = Logger()
access_log = Logger(namespace="pxetwist.http.access")

_BACKLOG: Final = 1024
"""Pending connections per listener: a rack powering on at once opens hundreds together, and
Twisted's default of 50 would make the rest retry their SYN a second later."""

_SCAN_LIMIT: Final = 10_000  # entries of the root looked at for shadowed files at start
_FD_PER_DOWNLOAD: Final = 3  # the socket, the file, and the socket's dup for sendfile


class BootRoot(Resource):
    """The site's root: generated scripts for the names they claim, files for the rest."""

    isLeaf = True

    def __init__(self, scripts: BootScripts, files: BootFiles) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.scripts = scripts
        self.files = files

    def render(self, request: Request) -> int:
        name = self.scripts.claims(request)
        if name is not None:
            return self.scripts.serve(request, name)
        return self.files.render(request)


class BootRequestLog(Request):
    """A request that knows when it started, for the access log's ``seconds``."""

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        factory = getattr(channel, "factory", None)
        clock = getattr(factory, "reactor", None)
        self.started_at: float | None = clock.seconds() if clock is not None else None

    def connectionLost(self, reason: Failure) -> None:
        # Only responses under way are worth a line: an abandoned download, not an idle
        # keep-alive connection closing or a client that hung up while the policy decided.
        unfinished = not self.finished and self.startedWriting
        site = getattr(self.channel, "factory", None)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if unfinished and isinstance(site, BootSite):
            site.log_request(self, complete=False)


class BootSite(Site):
    """A :class:`~twisted.web.server.Site` whose access log is structured events, not a file."""

    noisy = False
    requestFactory = BootRequestLog

    def __init__(
        self, resource: Resource, reactor: Any, sightings: SightingRegistry | None = None
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.sightings = sightings

    def log(self, request: http.Request) -> None:  # called by Request.finish
        self.log_request(request, complete=True)

    def log_request(self, request: http.Request, *, complete: bool) -> None:
        typed: Any = request
        address = typed.getClientAddress()
        host = getattr(address, "host", None)
        mac = getattr(request, MAC_ATTRIBUTE, None)
        if mac is None and host is not None and self.sightings is not None:
            mac = self._mac_at(host)
        started = getattr(request, "started_at", None)
        seconds = round(self.reactor.seconds() - started, 6) if started is not None else None
        access_log.info(
            "{client} {method} {path} {status} {bytes} bytes {seconds}s{mac_note}{incomplete_note}",
            client=str(host) if host is not None else str(address),
            method=typed.method.decode("ascii", "replace"),
            path=typed.uri.decode("ascii", "backslashreplace"),
            status=typed.code,
            bytes=typed.sentLength,
            seconds=seconds,
            mac=str(mac) if mac is not None else None,
            mac_note=f" mac {mac}" if mac is not None else "",
            complete=complete,
            incomplete_note="" if complete else " (client went away)",
            user_agent=_header(typed, b"user-agent"),
        )

    def _mac_at(self, host: str) -> MacAddress | None:
        assert self.sightings is not None
        try:
            return self.sightings.mac_at(IPv4Address(host))
        except AddressValueError:
            return None


def _header(request: Any, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None


class HttpService(Service):
    """Serves ``config.http`` on every interface of the context that has an IPv4 address."""

    name = "http"

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.files = BootFiles(context.config.http.root, context.reactor)
        self.scripts = BootScripts(context)
        self.site = BootSite(BootRoot(self.scripts, self.files), context.reactor, context.sightings)
        self.ports: list[IListeningPort] = []

    @property
    def reactor(self) -> IServerReactor:
        return self.context.reactor

    def _bind(self) -> None:
        if self.ports:
            return
        _raise_fd_limit()
        addresses = list(dict.fromkeys(str(info.ip) for info in self.context.served))
        if not addresses:
            log.error("http: no interface with an IPv4 address to serve; HTTP is not served")
        for address in addresses:
            port = self.reactor.listenTCP(
                self.context.config.http.port,
                cast(ServerFactory, self.site),  # Site's channel type: Twisted's stubs disagree
                backlog=_BACKLOG,
                interface=address,
            )
            self.ports.append(port)
            log.info(
                "http: serving {root} on {address}:{port}",
                root=str(self.files.root),
                address=address,
                port=listening_address(port)[1],
            )
        self._report_shadowed()

    def _report_shadowed(self) -> None:
        """Say which files under the root have names the generated scripts answer first."""
        root = self.files.root
        try:
            # Bounded: a root full of unpacked ISO trees should not slow the start down.
            candidates = [p for p in itertools.islice(root.rglob("*"), _SCAN_LIMIT) if p.is_file()]
        except OSError:
            return
        for path in candidates:
            relative = path.relative_to(root)
            segments = [part.encode("utf-8", "surrogateescape") for part in relative.parts]
            if script_name(segments, None) is not None:
                log.info(
                    "http: {path} is a generated name; the file is sent only to machines whose "
                    "decision has nothing for {path} to run",
                    path=str(relative),
                )

    def privilegedStartService(self) -> None:
        self._bind()
        super().privilegedStartService()

    def startService(self) -> None:
        self._bind()
        super().startService()

    def stopService(self) -> Deferred[Any]:
        super().stopService()
        ports, self.ports = self.ports, []
        return DeferredList([maybeDeferred(port.stopListening) for port in ports])

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(address, port)`` of every listener, as bound."""
        return [listening_address(port) for port in self.ports]


def _raise_fd_limit() -> None:
    """Make room for a boot storm: each download holds three descriptors."""
    wanted = 2000 * _FD_PER_DOWNLOAD + HEADROOM
    limit = raise_fd_limit(wanted)
    if limit < wanted:
        log.warn("http: cannot raise the open-file limit above {soft}", soft=limit)
