# -*- test-case-name: tests.http.test_channel -*-
"""One HTTP/1.1 connection, with the limits a server open to every machine on a segment needs.

:class:`twisted.web.http.HTTPChannel` parses requests well but trusts the client's pace and size:
its idle timer restarts on every byte (a client sending a byte a minute keeps a connection, a
socket and a descriptor for ever), it waits as long as it takes for a body of any announced
length, and it closes a connection whose line is too long without a status.  :class:`BootChannel`
keeps its parser and adds, per connection:

* **A header deadline** (``http.header_timeout``): the request line and every header must have
  arrived within this many seconds of the connection opening, or of the first byte of a later
  request on a kept-alive connection.  Then ``408 Request Timeout`` (RFC 9110 §15.5.9) and close;
  a connection that sent nothing is just closed.  Between requests the keep-alive timer
  (``http.keepalive_timeout``, Twisted's idle timer) applies instead.
* **A body deadline** (``http.body_timeout``): a request body (a GET needs none; chunked or with
  ``Content-Length``) must be complete within this many seconds of the end of its headers, or 408.
* **A send timeout** (``http.send_timeout``): while a response is sent, a client that takes no
  more of it for this many seconds (it stopped reading, or reads a byte now and then) has its
  connection aborted, and the response is reported as not complete.
* **Size limits with the right status** instead of a silent close or Twisted's bare 400:
  a request line over ``http.max_header_line`` bytes is ``414 URI Too Long`` (RFC 9112 §3);
  a header line over it, more than ``http.max_headers`` fields or more than
  ``http.max_header_size`` bytes of header section is ``431 Request Header Fields Too Large``
  (RFC 6585 §5); a body announced or sent over ``http.max_body`` bytes is
  ``413 Content Too Large`` (RFC 9110 §15.5.14), answered at the end of the headers, without
  reading the body; a transfer coding other than chunked is ``501 Not Implemented``
  (RFC 9112 §6.1); any other malformed request (bad request line, header syntax, chunk framing,
  conflicting lengths) is ``400 Bad Request`` (RFC 9112 §2.2, §6.3).  Every one of these
  answers carries ``Content-Length`` and ``Connection: close``, and the connection is closed.
* **A cap on idle connections per client address** (``http.max_idle_per_client``): a connection
  is idle while it is not being answered (waiting for, or receiving, a request).  When one
  address holds more than the cap, its oldest idle connection is closed (408 if it had started a
  request), so a client (or an attacker) cannot hold more than the cap of descriptors doing
  nothing, and a newcomer from the same address, a real machine behind the same NAT, still gets
  in.  Only connections idle for two seconds or more make room, so a burst of parallel
  downloads from one address is never cut off before its requests arrive.

Refusals and expiries are reported to the site (:meth:`ChannelSite.channel_refused`), which turns
them into boot events like any other response.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any, Final, Protocol, cast

from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import connectionDone
from twisted.python.failure import Failure
from twisted.web.http import HTTPChannel

from pxetwist.config.model import HttpConfig

__all__ = ["BootChannel", "ChannelSite", "IdleConnections", "refusal_bytes"]

_ABORT_GRACE: Final = 5.0
"""Seconds a refused connection gets to take its answer before it is aborted: a client that does
not read must not keep the descriptor through a lingering close."""

_EVICT_AFTER: Final = 2.0
"""Seconds a connection must have been idle before a newer one from its address may displace it."""

_PHRASES: Final = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Content Too Large",
    414: b"URI Too Long",
    431: b"Request Header Fields Too Large",
    501: b"Not Implemented",
}

_LENGTH_DIGITS: Final = 18
"""A Content-Length with more digits than this is over any body limit (and stays clear of
:func:`int`'s limit on long digit strings)."""


def refusal_bytes(code: int, reason: str) -> bytes:
    """A complete ``HTTP/1.1`` error response that closes the connection."""
    body = f"{_PHRASES[code].decode()}: {reason}\n".encode()
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: %d\r\n"
        b"Connection: close\r\nCache-Control: no-store\r\n\r\n%s"
        % (code, _PHRASES[code], len(body), body)
    )


class ChannelSite(Protocol):
    """What a :class:`BootChannel` needs from its site."""

    idle: IdleConnections

    def channel_refused(
        self, channel: BootChannel, code: int | None, reason: str, request_line: bytes
    ) -> None:
        """A request refused (or a connection closed, ``code`` None) below the resource level."""


class IdleConnections:
    """The idle connections, per client address and in all, oldest first; closes the oldest
    over a cap.

    Per address (``http.max_idle_per_client``), only connections idle for :data:`_EVICT_AFTER`
    seconds or more are closed for a newcomer, so a burst of fresh connections from one address
    (parallel downloads, many machines behind one NAT) is never cut off before its requests
    arrive; the header deadline bounds those.

    In all (``total_cap``, set by the service from the open-file limit): the oldest idle
    connection of any address is closed, however fresh, so that idle connections can never
    take every descriptor.  Without this, a flood of slow clients from many addresses would
    make ``accept`` fail with EMFILE and lock real machines out until the header deadline.
    """

    def __init__(self, clock: Callable[[], float], total_cap: int | None = None) -> None:
        self._clock = clock
        self.total_cap = total_cap
        self._by_host: dict[str, collections.OrderedDict[BootChannel, float]] = {}
        self._all: collections.OrderedDict[BootChannel, None] = collections.OrderedDict()

    def count(self, host: str) -> int:
        return len(self._by_host.get(host, ()))

    def __len__(self) -> int:
        return len(self._all)

    def mark_idle(self, channel: BootChannel, cap: int) -> None:
        """``channel`` waits for (or receives) a request; close the oldest idle over the caps."""
        host = channel.peer_host
        now = self._clock()
        channels = self._by_host.setdefault(host, collections.OrderedDict())
        channels.pop(channel, None)
        channels[channel] = now
        self._all.pop(channel, None)
        self._all[channel] = None
        while len(channels) > cap:
            oldest, since = next(iter(channels.items()))
            if now - since < _EVICT_AFTER:
                break
            self._evict(oldest)
        while self.total_cap is not None and len(self._all) > self.total_cap:
            self._evict(next(iter(self._all)))

    def mark_busy(self, channel: BootChannel) -> None:
        """``channel`` is being answered, or is gone: it is not idle."""
        self._all.pop(channel, None)
        host = channel.peer_host
        channels = self._by_host.get(host)
        if channels is not None:
            channels.pop(channel, None)
            if not channels:
                del self._by_host[host]

    def _evict(self, channel: BootChannel) -> None:
        self.mark_busy(channel)
        channel.evict()


class BootChannel(HTTPChannel):
    """An :class:`~twisted.web.http.HTTPChannel` with deadlines and limits (module docstring).

    Built by :class:`~pxetwist.http.service.BootSite`, which sets ``site`` (and, through
    :meth:`limit`, the limits in force when the connection opened).
    """

    site: ChannelSite
    limits: HttpConfig = HttpConfig()
    peer_host: str = ""

    _deadline: IDelayedCall | None = None
    _deadline_code: int | None = None
    _closing: IDelayedCall | None = None
    _refused = False
    _awaiting_request_line = True
    _request_line = b""
    _in_body = False
    _body_received = 0

    def limit(self, limits: HttpConfig) -> None:
        """Apply ``limits`` to this connection (before it is connected)."""
        self.limits = limits
        self.MAX_LENGTH = limits.max_header_line
        # Twisted's own checks answer a bare 400: keep them just beyond ours, as a backstop.
        self.maxHeaders = limits.max_headers + 1
        self.totalHeadersSize = limits.max_header_size + limits.max_header_line + 2
        self.timeOut = limits.keepalive_timeout  # type: ignore[assignment]  # seconds, any number

    # -- connection life -----------------------------------------------------------------------

    def connectionMade(self) -> None:
        peer = self.transport.getPeer() if self.transport is not None else None
        self.peer_host = str(getattr(peer, "host", ""))
        super().connectionMade()  # type: ignore[no-untyped-call]
        self._arm(self.limits.header_timeout, None)
        self.site.idle.mark_idle(self, self.limits.max_idle_per_client)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._disarm()
        if self._closing is not None and self._closing.active():
            self._closing.cancel()
        self._closing = None
        self.site.idle.mark_busy(self)
        super().connectionLost(reason)  # type: ignore[no-untyped-call]

    def timeoutConnection(self) -> None:
        """Twisted's idle timer: between requests the keep-alive timeout (an idle connection is
        closed quietly, nothing was asked); while a response is sent, the send timeout (the
        client stopped reading: the connection is aborted, and the response reported as not
        complete)."""
        self._disarm()
        self.site.idle.mark_busy(self)
        if self._handlingRequest and self.transport is not None:
            cast(ITCPTransport, self.transport).abortConnection()
            return
        self._close(abort_after=_ABORT_GRACE)

    def resumeProducing(self) -> None:
        """The transport has sent what it held: the client reads, the response progresses."""
        self.resetTimeout()
        super().resumeProducing()  # type: ignore[no-untyped-call]

    def evict(self) -> None:
        """Closed to make room for a newer idle connection (:class:`IdleConnections`)."""
        if self._refused:
            return
        if self._request_started():
            self._refuse(408, "too many idle connections")
        else:
            self._refused = True
            self._disarm()
            self.site.channel_refused(self, None, "too many idle connections", b"")
            self._close(abort_after=_ABORT_GRACE)

    # -- receiving -----------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._deadline is None and not self._handlingRequest and not self._in_body:
            # The first byte of a request on a kept-alive connection starts its header deadline.
            self._arm(self.limits.header_timeout, 408)
        elif self._deadline is not None and self._deadline_code is None:
            self._deadline_code = 408  # a request has started: its expiry is worth a status
        super().dataReceived(data)

    def lineReceived(self, line: bytes) -> None:
        if self._refused:
            return
        if self._awaiting_request_line:
            if line:
                self._awaiting_request_line = False
                self._request_line = line[:200]
        elif self._receivedHeaderSize + len(line) > self.limits.max_header_size:
            self._refuse(431, f"header section over {self.limits.max_header_size} bytes")
            return
        super().lineReceived(line)  # type: ignore[no-untyped-call]

    def lineLengthExceeded(self, line: bytes) -> None:
        if self._awaiting_request_line:
            self._request_line = line[:200]
            self._refuse(414, f"request line over {self.limits.max_header_line} bytes")
        else:
            self._refuse(431, f"header line over {self.limits.max_header_line} bytes")

    def headerReceived(self, line: bytes) -> bool:
        if self._refused:
            return False
        if self._receivedHeaderCount >= self.limits.max_headers:
            self._refuse(431, f"more than {self.limits.max_headers} header fields")
            return False
        name, colon, value = line.partition(b":")
        if colon:
            field = name.strip().lower()
            value = value.strip(b" \t")
            if field == b"content-length" and value.isdigit():
                if len(value) > _LENGTH_DIGITS or int(value) > self.limits.max_body:
                    self._refuse(413, f"body over {self.limits.max_body} bytes")
                    return False
            elif field == b"transfer-encoding" and value.lower() not in (b"chunked", b"identity"):
                self._refuse(501, "transfer coding not implemented (only chunked)")
                return False
        ok: bool = super().headerReceived(line)  # type: ignore[no-untyped-call]
        return ok

    def allHeadersReceived(self) -> None:
        self._disarm()
        if self.length != 0:  # a body follows (chunked, or with a Content-Length)
            self._in_body = True
            self._body_received = 0
            self._arm(self.limits.body_timeout, 408)
        super().allHeadersReceived()  # type: ignore[no-untyped-call]

    def rawDataReceived(self, data: bytes) -> None:
        if self._refused:
            return
        if self._in_body and not self._handlingRequest:
            self._body_received += len(data)
            # Framing counts too: a chunked body may not dodge the limit in one-byte chunks.
            if self._body_received > 2 * self.limits.max_body + 1024:
                self._refuse(413, f"body over {self.limits.max_body} bytes")
                return
        super().rawDataReceived(data)

    def allContentReceived(self) -> None:
        self._disarm()
        self._in_body = False
        self._awaiting_request_line = True
        self.site.idle.mark_busy(self)
        super().allContentReceived()  # type: ignore[no-untyped-call]
        if self._handlingRequest and not self._refused:
            # Twisted stops its idle timer while a request is answered; ours measures progress
            # instead (reset when the transport drains, and by the sendfile producer), so that
            # a client that stops reading does not keep its connection and file for ever.
            self.setTimeout(self.limits.send_timeout)

    def requestDone(self, request: Any) -> None:
        super().requestDone(request)  # type: ignore[no-untyped-call]
        # Twisted may already be answering the next pipelined request: that one is not idle.
        if self.persistent and not self._refused and not self._handlingRequest:
            connected = getattr(self.transport, "connected", True)
            if (
                self.transport is not None
                and connected
                and not getattr(self.transport, "disconnecting", False)
            ):
                self.site.idle.mark_idle(self, self.limits.max_idle_per_client)

    def _respondToBadRequestAndDisconnect(self) -> None:
        """Twisted's answer to a malformed request: ours has a length and a reason."""
        self._refuse(400, "malformed request")

    # -- deadlines and refusals ----------------------------------------------------------------

    def _request_started(self) -> bool:
        return not self._awaiting_request_line or bool(getattr(self, "_buffer", b""))

    def _arm(self, seconds: float, code: int | None) -> None:
        self._disarm()
        self._deadline_code = code
        self._deadline = self.callLater(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self._refused:
            return
        if self._in_body:
            self._refuse(408, f"request body not complete within {self.limits.body_timeout:g} s")
        elif self._deadline_code is not None or self._request_started():
            self._refuse(
                408, f"request headers not complete within {self.limits.header_timeout:g} s"
            )
        else:  # connected and sent nothing: close without a word, as for an idle keep-alive
            self._refused = True
            self.site.idle.mark_busy(self)
            self.site.channel_refused(self, None, "no request", b"")
            self._close(abort_after=_ABORT_GRACE)

    def _refuse(self, code: int, reason: str) -> None:
        """Answer ``code`` with ``reason``, close, and tell the site; further input is ignored."""
        if self._refused:
            return
        self._refused = True
        self._disarm()
        self.site.idle.mark_busy(self)
        self.setTimeout(None)
        self.site.channel_refused(self, code, reason, self._request_line)
        if self.transport is not None:
            self.transport.write(refusal_bytes(code, reason))
        self._close(abort_after=_ABORT_GRACE)

    def _close(self, abort_after: float) -> None:
        transport = self.transport
        if transport is None:
            return
        self.loseConnection()  # type: ignore[no-untyped-call]
        if self._closing is None and hasattr(transport, "abortConnection"):
            self._closing = self.callLater(abort_after, transport.abortConnection)
