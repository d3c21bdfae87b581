"""Boot files over HTTP: kernels, initrds, ISO images and EFI programs, served from one directory.

Why not :class:`twisted.web.static.File`:

* Firmware is picky. UEFI HTTP Boot sends ``HEAD`` first and needs ``Content-Length`` and a
  ``Content-Type`` of ``application/efi``, ``application/vnd.efi-iso`` or
  ``application/vnd.efi-img`` (protocol-reference §3.1); iPXE is orders of magnitude slower
  without ``Content-Length``. So every response here carries an exact length, and the type table
  is ours, not :mod:`mimetypes`' (:mod:`pxetwist.http.content_types`).
* Speed. ``static.File`` reads every block into Python and writes it through the transport's buffer.
  On a plain TCP connection the body goes to the kernel with ``os.sendfile`` instead
  (:mod:`pxetwist.http.sendfile`), with a fallback of bounded ``pread`` chunks (never the whole
  file) where it cannot (TLS, HTTP/2, in-memory test transports; :mod:`pxetwist.http.transfer`).
* Safety. A boot server is reachable by every machine on the segment before any of them has
  authenticated; the path from the URL is checked segment by segment (``..``, encoded ``/``, NUL,
  backslash) and again after symlinks are resolved, so nothing outside the root is ever opened
  (:mod:`pxetwist.http.paths`).

Conditional and range requests follow RFC 9110 §13 and §14 (ETag, Last-Modified, If-Match,
If-None-Match, If-Modified-Since, If-Unmodified-Since, If-Range, single and multipart byte ranges),
so an interrupted multi-gigabyte ISO download can resume: :mod:`pxetwist.http.dates`,
:mod:`~pxetwist.http.conditions` and :mod:`~pxetwist.http.ranges` hold those rules, and
:func:`pxetwist.http.plan.plan_response`, a pure function of (method, request headers, file
validators, now), decides the response. This module only opens the file and starts the producer.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import cast

from twisted.internet.interfaces import IReactorFDSet, IReactorTime
from twisted.logger import Logger
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pxetwist.http.conditions import Validators
from pxetwist.http.content_types import DEFAULT_CONTENT_TYPES, content_type_for
from pxetwist.http.paths import PathRefused, resolve_path
from pxetwist.http.plan import TEXT_PLAIN, Span, plan_response
from pxetwist.http.sendfile import SENDFILE_MIN, SendfileTransfer, sendfile_transport
from pxetwist.http.transfer import (
    DEFAULT_CHUNK_SIZE,
    HTTPRequest,
    ReadTransfer,
    Transfer,
    client_of,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_CONTENT_TYPES",
    "BootFiles",
    "PathRefused",
    "content_type_for",
    "resolve_path",
    "serve_file",
]

_log = Logger()


def _respond(
    request: HTTPRequest, code: int, body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> int:
    """Send a small complete response (an error) with an exact Content-Length."""
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"Content-Type", [TEXT_PLAIN])
    for name, value in extra:
        request.responseHeaders.setRawHeaders(name, [value])
    request.responseHeaders.setRawHeaders(b"Content-Length", [b"%d" % len(body)])
    request.write(body)  # twisted.web drops the body itself for HEAD
    request.finish()
    return NOT_DONE_YET


def _open_regular(path: Path) -> tuple[int, os.stat_result] | None:
    """Open *path* for reading if it is a regular file, without following a final symlink.

    It is checked before opening (opening a device can have side effects) and again after
    (``fstat``), in case it was replaced in between; ``O_NONBLOCK`` makes the open of a FIFO put
    there in that instant return at once instead of blocking the reactor.
    """
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return None
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
    except OSError:
        os.close(fd)
        return None
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        return None
    return fd, st


def serve_file(
    request: Request,
    path: Path | str,
    reactor: IReactorTime,
    *,
    content_type: str | None = None,
    sendfile: bool = True,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
) -> int:
    """Answer a GET or HEAD *request* with the file at *path*; returns ``NOT_DONE_YET``.

    For resources other than :class:`BootFiles` that want the same behaviour for a file they
    chose themselves (generated boot scripts, per-machine files): ETag and Last-Modified,
    conditional requests, byte ranges, exact Content-Length, sendfile.

    *path* is trusted: it is not checked against any root (resolve URL paths with
    :func:`resolve_path` first), and symlinks in it are followed. A *path* that is not a regular
    file is answered 404. *content_type* defaults to :func:`content_type_for` the name of *path*
    as given. *reactor* schedules the transfer: ``callLater`` for chunked reads, ``addWriter``
    and ``removeWriter`` (if it provides ``IReactorFDSet``) for sendfile; *sendfile* False
    disables the latter.
    """
    typed = cast(HTTPRequest, request)
    method = typed.method
    if method not in (b"GET", b"HEAD"):
        return _respond(typed, 405, b"Method Not Allowed\n", [(b"Allow", b"GET, HEAD")])
    path = Path(path)
    opened = _open_regular(Path(os.path.realpath(path)))
    if opened is None:
        _log.info("No file {path} for {client}", path=str(path), client=client_of(typed))
        return _respond(typed, 404, b"Not Found\n")
    fd, st = opened
    kind = (content_type or content_type_for(path.name)).encode("ascii")
    plan = plan_response(
        method,
        typed.requestHeaders,
        Validators.from_stat(st),
        kind,
        reactor.seconds(),
        secrets.token_hex(16).encode("ascii"),
    )
    typed.setResponseCode(plan.code)
    headers = typed.responseHeaders
    headers.removeHeader(b"Content-Type")  # twisted.web's text/html default, wrong for a 304
    for name, value in plan.headers:
        headers.setRawHeaders(name, [value])
    if plan.length is not None:
        headers.setRawHeaders(b"Content-Length", [b"%d" % plan.length])
    if (
        method == b"HEAD"
        or plan.length is None
        or not any(isinstance(piece, Span) for piece in plan.body)
    ):
        os.close(fd)
        typed.write(b"".join(piece for piece in plan.body if isinstance(piece, bytes)))
        typed.finish()
        return NOT_DONE_YET
    if typed.channel is None:  # the client left while a caller was preparing this response
        os.close(fd)
        return NOT_DONE_YET
    transport = sendfile_transport(typed, reactor) if sendfile else None
    transfer: Transfer
    if transport is not None and plan.length >= SENDFILE_MIN:
        fdset = cast(IReactorFDSet, reactor)
        transfer = SendfileTransfer(typed, fd, plan.body, plan.length, str(path), fdset, transport)
    else:
        with contextlib.suppress(AttributeError, OSError):  # only a read-ahead hint
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        transfer = ReadTransfer(typed, fd, plan.body, plan.length, str(path), reactor, chunk_size)
    transfer.start()
    return NOT_DONE_YET


class BootFiles(Resource):
    """A ``twisted.web`` resource serving the files below *root*, read-only, to boot clients.

    Mount it anywhere (``parent.putChild(b"boot", BootFiles(root, reactor))``); the request path
    below the mount point is the file path below *root*. GET and HEAD only (others get 405); no
    directory listings; refusals are logged with the client's address and answered 400 or 404
    (see :class:`PathRefused`).

    :param root: the directory to serve; resolved once, here, so that later symlink tricks on
        the path leading to it change nothing.
    :param reactor: provides ``callLater`` and, for sendfile, ``addWriter``/``removeWriter``.
    :param content_types: suffix to Content-Type table, replacing :data:`DEFAULT_CONTENT_TYPES`.
    :param sendfile: False to always use the read-and-write path (e.g. for file systems where
        ``sendfile(2)`` misbehaves).
    :param chunk_size: bytes per read on the read-and-write path.
    """

    isLeaf = True
    allowedMethods = (b"GET", b"HEAD")

    def __init__(
        self,
        root: Path | str,
        reactor: IReactorTime,
        *,
        content_types: Mapping[str, str] = DEFAULT_CONTENT_TYPES,
        sendfile: bool = True,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
    ) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.root = Path(os.path.realpath(root))
        self._reactor = reactor
        self._content_types = content_types
        self._sendfile = sendfile
        self._chunk_size = chunk_size

    def render(self, request: Request) -> int:
        """Dispatch GET and HEAD to ``render_GET``/``render_HEAD``; anything else gets a plain 405
        with ``Allow`` (RFC 9110 §15.5.6) rather than twisted.web's HTML error page."""
        typed = cast(HTTPRequest, request)
        if typed.method not in self.allowedMethods:
            return _respond(typed, 405, b"Method Not Allowed\n", [(b"Allow", b"GET, HEAD")])
        result: int = super().render(request)  # type: ignore[no-untyped-call]
        return result

    def render_GET(self, request: Request) -> int:
        """Send the file, a part of it, or why not."""
        return self._serve(request)

    def render_HEAD(self, request: Request) -> int:
        """What GET would send, without the body: how UEFI HTTP Boot learns size and type."""
        return self._serve(request)

    def _serve(self, request: Request) -> int:
        typed = cast(HTTPRequest, request)
        segments = typed.postpath or []
        try:
            path = resolve_path(self.root, segments)
        except PathRefused as refusal:
            log_event = _log.warn if refusal.suspicious else _log.info
            log_event(
                "Refused {method} {path} from {client}: {reason}",
                method=typed.method.decode("ascii", "replace"),
                path=typed.path.decode("ascii", "backslashreplace"),
                client=client_of(typed),
                reason=refusal.reason,
                code=refusal.code,
            )
            body = b"Bad Request\n" if refusal.code == 400 else b"Not Found\n"
            return _respond(typed, refusal.code, body)
        # The type follows the name the client asked for: "netinst.iso", a symlink to a file
        # without a suffix, is still an ISO to the firmware that asked for it.
        requested = segments[-1].decode("utf-8")
        return serve_file(
            request,
            path,
            self._reactor,
            content_type=content_type_for(requested, self._content_types),
            sendfile=self._sendfile,
            chunk_size=self._chunk_size,
        )
