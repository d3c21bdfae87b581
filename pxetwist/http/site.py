# -*- test-case-name: tests.http.test_scripts,tests.http.test_channel -*-
"""The HTTP site: which resource answers, and one boot event per response.

**Dispatch.** :class:`BootRoot` sends the names :func:`~pxetwist.http.scripts.script_name`
claims (``boot.ipxe``, ``<mac>.ipxe``, GRUB's ``grub.cfg`` family) to
:class:`~pxetwist.http.scripts.BootScripts` and everything else to
:class:`~pxetwist.http.static.BootFiles`.

**Events.** Every response is one :class:`~pxetwist.events.BootEvent` (stage ``http-request``)
on the server's event bus, emitted in one place, :meth:`BootSite.report`, whichever way the
response ended: finished (``Request.finish`` calls :meth:`BootSite.log`), abandoned by the client
half-way through the body, or refused by the connection itself before any resource saw it (a
request too slow, too large or malformed: :mod:`pxetwist.http.channel`).  The details are
``method``, ``path``, ``status``, ``bytes`` (body bytes sent), ``seconds`` (from the request
line to the last byte handed to the kernel), ``range`` (the request's Range field, if any),
``generated`` (a script or config written for this machine, not a file), ``complete`` (False
when the client went away), ``user_agent``; for a script, the decision (``loader``, ``policy``,
``action``, ``reason``) or ``why`` there is none; for refusals, ``reason``.  The event's MAC is the
script's ``mac=`` if there was one, else what DHCP (or the neighbour table) knows about the
client's address.  The log observer writes each as the access-log line in ``pxetwist.http``.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from ipaddress import IPv4Address
from typing import Any, Final

from twisted.internet.interfaces import IReactorTime
from twisted.logger import LogLevel
from twisted.python.failure import Failure
from twisted.web import http
from twisted.web.resource import Resource
from twisted.web.server import Request, Site

from pxetwist.config.model import HttpConfig
from pxetwist.events import BootEvent, BootEventBus, EventProtocol, EventStage, Outcome
from pxetwist.http.callback import BootDone
from pxetwist.http.channel import BootChannel, IdleConnections
from pxetwist.http.scripts import (
    GENERATED_ATTRIBUTE,
    MAC_ATTRIBUTE,
    NOTE_ATTRIBUTE,
    BootScripts,
)
from pxetwist.http.static import BootFiles
from pxetwist.netinfo import ipv4_host
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.policy.values import MacAddress

__all__ = ["BootRequestLog", "BootRoot", "BootSite"]

_LINE: Final = "{client} {method} {path} {status} {bytes} bytes {seconds}s"
"""The access-log line; :func:`_message` adds the MAC, the range, the decision and why."""


def _message(*, mac: bool, ranged: bool, decided: bool, why: bool, complete: bool) -> str:
    return (
        _LINE
        + (" mac {mac}" if mac else "")
        + (" range {range}" if ranged else "")
        + (" {loader} config: {action} by {policy}" if decided else "")
        + (": {why}" if why else "")
        + ("" if complete else " (client went away)")
    )


_REFUSED: Final = "{client} {status} refused: {reason}; request {path}"
_PATH_LIMIT: Final = 200  # characters of a refused request line that reach the event


class BootRoot(Resource):
    """The site's root: generated scripts for the names they claim, files for the rest."""

    isLeaf = True

    def __init__(
        self, scripts: BootScripts, files: BootFiles, done: BootDone | None = None
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.scripts = scripts
        self.files = files
        self.done = done  # the OS call-back, /boot/done

    def render(self, request: Request) -> int | bytes:
        if self.done is not None and self.done.claims(request):
            return self.done.render(request)
        name = self.scripts.claims(request)
        if name is not None:
            return self.scripts.serve(request, name)
        return self.files.render(request)


class BootRequestLog(Request):
    """A request that knows when it started (for ``seconds``) and reports an abandoned body."""

    def __init__(self, channel: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(channel, *args, **kwargs)
        factory = getattr(channel, "factory", None)
        clock = getattr(factory, "reactor", None)
        self.started_at: float | None = clock.seconds() if clock is not None else None

    def gotLength(self, length: int | None) -> None:
        """Keep a request body in memory: the channel caps it (``http.max_body``), so Twisted's
        temporary file for bodies of unknown or large length is never needed."""
        self.content = io.BytesIO()

    def connectionLost(self, reason: Failure) -> None:
        # Only responses under way are worth an event: an abandoned download, not an idle
        # keep-alive connection closing or a client that hung up while the policy decided.
        unfinished = not self.finished and self.startedWriting
        site = getattr(self.channel, "factory", None)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]
        if unfinished and isinstance(site, BootSite):
            site.report(self, complete=False)


class BootSite(Site):
    """A :class:`~twisted.web.server.Site` of :class:`BootChannel` connections that reports each
    response as a boot event (see the module docstring).

    :param events: the bus the events go to.
    :param sightings: tells the MAC behind a client address, for files.
    :param limits: the ``http`` config in force, read for each new connection (so a reload
        applies to new connections): deadlines and size limits of :mod:`pxetwist.http.channel`.
    """

    noisy = False
    protocol = BootChannel  # type: ignore[assignment]  # Twisted's stubs want its generic channel
    requestFactory = BootRequestLog

    def __init__(
        self,
        resource: Resource,
        reactor: IReactorTime,
        *,
        events: BootEventBus,
        sightings: SightingRegistry | None = None,
        limits: Callable[[], HttpConfig] = HttpConfig,
    ) -> None:
        super().__init__(resource, reactor=reactor)
        self.events = events
        self.sightings = sightings
        self.limits = limits
        self.idle = IdleConnections(self.reactor.seconds)

    def buildProtocol(self, addr: Any) -> Any:
        channel = super().buildProtocol(addr)
        if isinstance(channel, BootChannel):
            channel.limit(self.limits())
        return channel

    def log(self, request: http.Request) -> None:  # called by Request.finish
        self.report(request, complete=True)

    def report(self, request: http.Request, *, complete: bool) -> None:
        """The one place an HTTP response becomes a :class:`BootEvent`."""
        typed: Any = request
        client = ipv4_host(typed.getClientAddress())
        mac = getattr(request, MAC_ATTRIBUTE, None)
        if mac is None:
            mac = self._mac_at(client)
        started = getattr(request, "started_at", None)
        now = self.reactor.seconds()
        seconds = round(now - started, 6) if started is not None else None
        status: int = typed.code
        ranged = _header(typed, b"range")
        note: dict[str, str] = getattr(request, NOTE_ATTRIBUTE, None) or {}
        if not complete or status >= 500:
            outcome = Outcome.FAILED
        elif status >= 400:
            outcome = Outcome.REFUSED
        else:
            outcome = Outcome.OK
        self.events.emit(
            BootEvent(
                time=now,
                protocol=EventProtocol.HTTP,
                stage=EventStage.HTTP_REQUEST,
                outcome=outcome,
                mac=mac,
                client=client,
                details={
                    **note,
                    "method": typed.method.decode("ascii", "replace"),
                    "path": typed.uri.decode("ascii", "backslashreplace"),
                    "status": status,
                    "bytes": typed.sentLength,
                    "seconds": seconds,
                    "range": ranged,
                    "generated": bool(getattr(request, GENERATED_ATTRIBUTE, False)),
                    "complete": complete,
                    "user_agent": _header(typed, b"user-agent"),
                },
                message=_message(
                    mac=mac is not None,
                    ranged=ranged is not None,
                    decided="loader" in note,
                    why="why" in note,
                    complete=complete,
                ),
            )
        )

    def channel_refused(
        self, channel: BootChannel, code: int | None, reason: str, request_line: bytes
    ) -> None:
        """A connection refused a request (or closed an idle connection, ``code`` None) before
        any resource saw it: the same event as a response, outcome ``dropped``."""
        client = ipv4_host(channel.transport.getPeer() if channel.transport is not None else None)
        method, _, rest = request_line.partition(b" ")
        target = rest.rpartition(b" ")[0] or rest
        self.events.emit(
            BootEvent(
                time=self.reactor.seconds(),
                protocol=EventProtocol.HTTP,
                stage=EventStage.HTTP_REQUEST,
                outcome=Outcome.DROPPED,
                mac=self._mac_at(client),
                client=client,
                details={
                    "method": method.decode("ascii", "replace")[:_PATH_LIMIT],
                    "path": target.decode("ascii", "backslashreplace")[:_PATH_LIMIT],
                    "status": code,
                    "bytes": 0,
                    "seconds": None,
                    "range": None,
                    "generated": False,
                    "complete": False,
                    "user_agent": None,
                    "reason": reason,
                },
                message=_REFUSED if code is not None else "",
                level=LogLevel.info,
            )
        )

    def _mac_at(self, client: IPv4Address | None) -> MacAddress | None:
        if client is None or self.sightings is None:
            return None
        return self.sightings.mac_at(client)


def _header(request: Any, name: bytes) -> str | None:
    values = request.requestHeaders.getRawHeaders(name)
    return values[0].decode("latin-1") if values else None
