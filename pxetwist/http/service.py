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

**What it reports.** Every response, finished, abandoned or refused by the connection's limits,
is one boot event on ``context.events`` (:mod:`pxetwist.http.site`); the access log is the log
observer's line for it. Connections are :class:`~pxetwist.http.channel.BootChannel`: header and
body deadlines, size limits with their 4xx statuses, a cap on idle connections per client.
"""

from __future__ import annotations

import itertools
import resource
from collections.abc import Sequence
from ipaddress import IPv4Address
from typing import Any, Final, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger

from pxetwist.context import IServerReactor, ServerContext, Settings
from pxetwist.fdlimit import HEADROOM, raise_fd_limit
from pxetwist.http.callback import BootDone
from pxetwist.http.scripts import BootScripts, script_name
from pxetwist.http.site import BootRoot, BootSite
from pxetwist.http.static import BootFiles
from pxetwist.listening import Listeners, listening_address
from pxetwist.netinfo import InterfaceInfo

__all__ = ["HttpService"]

log = Logger()

_BACKLOG: Final = 1024
"""Pending connections per listener: a rack powering on at once opens hundreds together, and
Twisted's default of 50 would make the rest retry their SYN a second later."""

_SCAN_LIMIT: Final = 10_000  # entries of the root looked at for shadowed files at start
_FD_PER_DOWNLOAD: Final = 3  # the socket, the file, and the socket's dup for sendfile


class HttpService(Service):
    """Serves ``config.http`` on every interface of the context that has an IPv4 address."""

    name = "http"

    def __init__(self, context: ServerContext) -> None:
        self.context = context
        self.files = BootFiles(context.config.http.root, context.reactor)
        self.scripts = BootScripts(context)
        self.root = BootRoot(self.scripts, self.files, BootDone(context))
        self.site = BootSite(
            self.root,
            context.reactor,
            events=context.events,
            sightings=context.sightings,
            limits=lambda: context.config.http,
        )
        self.listeners: Listeners[BootSite] = Listeners("http", self._listen)
        context.live.subscribe(self._reloaded)

    @property
    def reactor(self) -> IServerReactor:
        return self.context.reactor

    @property
    def ports(self) -> list[IListeningPort]:
        return self.listeners.ports

    def _bind(self) -> None:
        if self.listeners:
            return
        self.site.idle.total_cap = idle_cap(_raise_fd_limit())
        self.listeners.open(_one_per_address(self.context.served), self.context.config.http.port)
        self._report_shadowed()

    def _listen(self, info: InterfaceInfo, number: int) -> tuple[IListeningPort, BootSite]:
        address = str(info.ip)
        port = self.reactor.listenTCP(
            number,
            cast(ServerFactory, self.site),  # Site's channel type: Twisted's stubs disagree
            backlog=_BACKLOG,
            interface=address,
        )
        log.info(
            "http: serving {root} on {address}:{port}",
            root=str(self.files.root),
            address=address,
            port=listening_address(port)[1],
        )
        return port, self.site

    def _reloaded(self, old: Settings, new: Settings) -> None:
        """A reload: the new root for the next requests, listeners for the interfaces served.

        Downloads under way keep their connection and their open file: closing a listening
        socket does not touch the connections it accepted.
        """
        if new.config.http.root != old.config.http.root:
            self.files = BootFiles(new.config.http.root, self.reactor)
            self.root.files = self.files
        if not self.running:
            return
        self.listeners.follow(_one_per_address(self.context.served), new.config.http.port)

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
        return self.listeners.close_all()

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """``(address, port)`` of every listener, as bound."""
        return self.listeners.addresses


def _one_per_address(interfaces: Sequence[InterfaceInfo]) -> list[InterfaceInfo]:
    """The interfaces with an IPv4 address, the first of any that share one (a TCP port can be
    bound once per address)."""
    first: dict[IPv4Address, InterfaceInfo] = {}
    for info in interfaces:
        if info.ip is not None:
            first.setdefault(info.ip, info)
    return list(first.values())


def _raise_fd_limit() -> int:
    """Make room for a boot storm: each download holds three descriptors; returns the limit."""
    wanted = 2000 * _FD_PER_DOWNLOAD + HEADROOM
    limit = raise_fd_limit(wanted)
    if limit < wanted:
        log.warn("http: cannot raise the open-file limit above {soft}", soft=limit)
    return limit


def idle_cap(fd_limit: int) -> int | None:
    """Idle connections allowed in all with ``fd_limit`` descriptors: half of what is left
    after the process's own (listeners, logs, the lease database), so that slow clients can
    never take the descriptors that new connections and downloads need.  None: no limit."""
    if fd_limit == resource.RLIM_INFINITY or fd_limit < 0:
        return None
    reserve = min(HEADROOM, fd_limit // 4)
    return max(16, (fd_limit - reserve) // 2)
