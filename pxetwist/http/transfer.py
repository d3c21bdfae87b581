"""Sending a planned body: the producer's life cycle, and the portable read-and-write way.

:class:`Transfer` owns the open file and closes it exactly once, whichever way the response ends;
:class:`ReadTransfer` moves the bytes with ``pread`` and ``request.write``. The fast way, with
``os.sendfile``, is :mod:`pxetwist.http.sendfile`.
"""

from __future__ import annotations

import collections
import os
from collections.abc import Iterable
from typing import Any, Final, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IAddress, IDelayedCall, IPushProducer, IReactorTime
from twisted.logger import Logger
from twisted.web.http_headers import Headers
from zope.interface import implementer

from pxetwist.http.plan import Piece, Span

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "HTTPRequest",
    "ReadTransfer",
    "Transfer",
    "TruncatedError",
    "client_of",
]

_log = Logger()

DEFAULT_CHUNK_SIZE: Final = 256 * 1024
"""Bytes per ``pread`` on the fallback path: large enough that per-chunk overhead vanishes, small
enough that a hundred parallel downloads hold at most a few tens of MiB between them."""

_CHUNKS_PER_TURN: Final = 4
"""The fallback producer writes at most this many chunks before yielding to the reactor, so that a
consumer that never pushes back (an in-memory transport) cannot monopolise it."""


class HTTPRequest(Protocol):
    """The typed subset of :class:`twisted.web.server.Request` used here; its own is untyped."""

    method: bytes
    path: bytes
    postpath: list[bytes] | None
    requestHeaders: Headers
    responseHeaders: Headers
    channel: Any  # the HTTPChannel; None once the connection is lost
    sentLength: int

    def setResponseCode(self, code: int) -> None: ...
    def write(self, data: bytes) -> None: ...
    def finish(self) -> None: ...
    def registerProducer(self, producer: IPushProducer, streaming: bool) -> None: ...
    def unregisterProducer(self) -> None: ...
    def notifyFinish(self) -> Deferred[None]: ...
    def getClientAddress(self) -> IAddress: ...


def client_of(request: HTTPRequest) -> str:
    """The peer as ``host:port`` for logs."""
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class TruncatedError(Exception):
    """The file got shorter than the Content-Length already promised; the response cannot end."""


@implementer(IPushProducer)
class Transfer:
    """A response body being sent: owns the file descriptor and closes it exactly once.

    Subclasses move the bytes; this class does the lifecycle common to both ways of moving them:
    register as the request's producer, notice a vanished client through ``notifyFinish``, and
    end with :meth:`_complete` (all sent), :meth:`_abort` (cannot go on) or :meth:`_close`
    (connection already gone).
    """

    def __init__(
        self, request: HTTPRequest, fd: int, body: Iterable[Piece], length: int, name: str
    ) -> None:
        self._request = request
        self._fd = fd
        self._pieces: collections.deque[Piece] = collections.deque(body)
        self._length = length
        self._sent = 0
        self._name = name
        self._done = False

    def start(self) -> None:
        """Begin sending; called once, after the status and headers are set on the request."""
        self._request.registerProducer(self, True)
        self._request.notifyFinish().addErrback(self._connection_lost)
        self._begin()

    def _begin(self) -> None:
        raise NotImplementedError

    def _release(self) -> None:
        """Subclass hook: free what the subclass holds besides the file."""

    def _close(self) -> bool:
        """Free the file (and whatever :meth:`_release` frees); False if that already happened."""
        if self._done:
            return False
        self._done = True
        self._release()
        os.close(self._fd)
        return True

    def _complete(self) -> None:
        if self._close():
            self._request.unregisterProducer()
            self._request.finish()

    def _abort(self, why: str) -> None:
        """End a response that can no longer be completed by dropping the connection, so that the
        client sees a short body rather than waiting forever for what Content-Length promised."""
        if not self._close():
            return
        _log.warn(
            "Aborted {path} for {client} after {sent} of {length} bytes: {why}",
            path=self._name,
            client=client_of(self._request),
            sent=self._sent,
            length=self._length,
            why=why,
        )
        channel = self._request.channel
        if channel is not None:
            self._request.unregisterProducer()
            channel.transport.abortConnection()

    def _connection_lost(self, reason: object) -> None:
        if self._close():
            _log.info(
                "Client {client} went away after {sent} of {length} bytes of {path}",
                client=client_of(self._request),
                sent=self._sent,
                length=self._length,
                path=self._name,
            )

    def stopProducing(self) -> None:
        """The consumer is going away: free the file, write nothing more."""
        self._close()

    def pauseProducing(self) -> None:
        raise NotImplementedError

    def resumeProducing(self) -> None:
        raise NotImplementedError


class ReadTransfer(Transfer):
    """The portable way: ``pread`` a chunk, ``request.write`` it, stop when the transport says so.

    A push producer: a TCP transport pauses it once its buffer passes 64 KiB, which with 256 KiB
    chunks is after every write, and resumes it when the buffer has drained; so about one chunk
    per connection sits in memory. When nothing pushes back (an in-memory transport) it still
    yields to the reactor every few chunks, through the injected reactor's ``callLater``.
    """

    def __init__(
        self,
        request: HTTPRequest,
        fd: int,
        body: Iterable[Piece],
        length: int,
        name: str,
        reactor: IReactorTime,
        chunk_size: int,
    ) -> None:
        super().__init__(request, fd, body, length, name)
        self._reactor = reactor
        self._chunk_size = chunk_size
        self._paused = False
        self._producing = False
        self._call: IDelayedCall | None = None

    def _begin(self) -> None:
        self._produce()

    def _release(self) -> None:
        self._cancel()

    def _cancel(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None

    def pauseProducing(self) -> None:
        self._paused = True
        self._cancel()

    def resumeProducing(self) -> None:
        self._paused = False
        if not self._producing and self._call is None and not self._done:
            self._produce()

    def _next(self) -> bytes:
        head = self._pieces[0]
        if isinstance(head, bytes):
            self._pieces.popleft()
            return head
        data = os.pread(self._fd, min(head.length, self._chunk_size), head.offset)
        if not data:
            raise TruncatedError()
        if len(data) == head.length:
            self._pieces.popleft()
        else:
            self._pieces[0] = Span(head.offset + len(data), head.length - len(data))
        return data

    def _produce(self) -> None:
        self._call = None
        self._producing = True
        try:
            for _ in range(_CHUNKS_PER_TURN):
                if self._paused or self._done:
                    return
                data = self._next()
                self._sent += len(data)
                self._request.write(data)  # may call pauseProducing() before it returns
                if not self._pieces:
                    self._complete()
                    return
        except TruncatedError:
            self._abort("file shrank while being sent")
            return
        except OSError as e:
            self._abort(f"read failed: {e}")
            return
        finally:
            self._producing = False
        if not self._paused and not self._done:
            self._call = self._reactor.callLater(0, self._produce)
