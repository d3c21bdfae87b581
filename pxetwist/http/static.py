"""Boot files over HTTP: kernels, initrds, ISO images and EFI programs, served from one directory.

Why not :class:`twisted.web.static.File`:

* Firmware is picky. UEFI HTTP Boot sends ``HEAD`` first and needs ``Content-Length`` and a
  ``Content-Type`` of ``application/efi``, ``application/vnd.efi-iso`` or
  ``application/vnd.efi-img`` (protocol-reference §3.1); iPXE is orders of magnitude slower
  without ``Content-Length``. So every response here carries an exact length, and the type table
  is ours, not :mod:`mimetypes`'.
* Speed. ``static.File`` reads every block into Python and writes it through the transport's buffer.
  On a plain TCP connection this module hands the file to the kernel with ``os.sendfile`` instead,
  and falls back to bounded ``pread`` chunks (never the whole file) where it cannot (TLS, HTTP/2,
  in-memory test transports).
* Safety. A boot server is reachable by every machine on the segment before any of them has
  authenticated; the path from the URL is checked segment by segment (``..``, encoded ``/``, NUL,
  backslash) and again after symlinks are resolved, so nothing outside the root is ever opened.

Conditional and range requests follow RFC 9110 §13 and §14 (ETag, Last-Modified, If-Match,
If-None-Match, If-Modified-Since, If-Unmodified-Since, If-Range, single and multipart byte ranges),
so an interrupted multi-gigabyte ISO download can resume.

The HTTP decisions are made by a pure function of (method, request headers, file validators, now);
only :func:`serve_file` and the two transfer producers do I/O.
"""

from __future__ import annotations

import collections
import contextlib
import datetime
import errno
import os
import re
import secrets
import socket
import stat
from collections.abc import Iterable, Mapping, Sequence
from email.utils import formatdate
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Protocol, TypeAlias, cast

import attrs
from twisted.internet import tcp
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IPushProducer,
    IReactorFDSet,
    IReactorTime,
    ISSLTransport,
    IWriteDescriptor,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.http_headers import Headers
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

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

DEFAULT_CHUNK_SIZE: Final = 256 * 1024
"""Bytes per ``pread`` on the fallback path: large enough that per-chunk overhead vanishes, small
enough that a hundred parallel downloads hold at most a few tens of MiB between them."""

_CHUNKS_PER_TURN: Final = 4
"""The fallback producer writes at most this many chunks before yielding to the reactor, so that a
consumer that never pushes back (an in-memory transport) cannot monopolise it."""

_SENDFILE_BUDGET: Final = 8 * 1024 * 1024
"""Bytes one connection may push per reactor wake-up, so a hundred clients share the loop fairly."""

_SENDFILE_MIN: Final = 64 * 1024
"""Bodies smaller than this go through the transport: one buffered write is cheaper than a dup(2),
an extra reactor registration and a turn of the loop to let the headers drain."""

_MAX_RANGES: Final = 64
"""More ranges than this in one request and the Range field is ignored (RFC 9110 §14.2 allows it):
a guard against requests that cost the server far more than they cost the client."""

_MAX_DIGITS: Final = 20
"""Longest byte position accepted (2**64 has 20 digits); longer ones make the Range field invalid
instead of reaching :func:`int`, which refuses very long strings with an exception."""


# --- Content types -------------------------------------------------------------------------------

DEFAULT_CONTENT_TYPES: Final[Mapping[str, str]] = MappingProxyType(
    {
        # UEFI HTTP Boot decides what to do with a download from these three (UEFI spec, "HTTP
        # Boot"; EDK2 HttpBootSupport.c); anything else and it refuses the image.
        ".efi": "application/efi",
        ".iso": "application/vnd.efi-iso",
        ".img": "application/vnd.efi-img",
        # Compressed initrds and archives: never Content-Encoding, or clients would decompress them.
        ".gz": "application/gzip",
        ".xz": "application/x-xz",
        ".zst": "application/zstd",
        ".lz4": "application/x-lz4",
        ".lzma": "application/x-lzma",
        ".bz2": "application/x-bzip2",
        ".cpio": "application/x-cpio",
        ".tar": "application/x-tar",
        # Scripts and configs that iPXE, GRUB and installers read as text.
        ".ipxe": "text/plain; charset=utf-8",
        ".cfg": "text/plain; charset=utf-8",
        ".conf": "text/plain; charset=utf-8",
        ".txt": "text/plain; charset=utf-8",
        ".ks": "text/plain; charset=utf-8",
        ".seed": "text/plain; charset=utf-8",
        ".json": "application/json",
        ".yaml": "application/yaml",
        ".yml": "application/yaml",
    }
)
"""File-name suffix (lower case, with the dot) to ``Content-Type``. Kernels have no suffix and get
``application/octet-stream``, as do ``.0``, ``.kpxe`` and anything not listed. Note that ``.img``
means a disk image to UEFI, so a Debian-style ``initrd.img`` is labelled as one too; iPXE and GRUB
ignore the type."""

_DEFAULT_TYPE: Final = "application/octet-stream"


def content_type_for(name: str, table: Mapping[str, str] = DEFAULT_CONTENT_TYPES) -> str:
    """The ``Content-Type`` for a file called *name*, from its last suffix, case-insensitively.

    Case matters because the ESP convention is upper case (``BOOTX64.EFI``), and UEFI would refuse
    that file as ``application/octet-stream``.
    """
    suffix = os.path.splitext(name)[1].lower()
    return table.get(suffix, _DEFAULT_TYPE)


# --- Path resolution -----------------------------------------------------------------------------


_OUTSIDE: Final = "outside the root"


class PathRefused(Exception):
    """A request path that must not be served: the HTTP status to answer and the reason to log.

    400 is for paths no honest client sends (``..``, encoded ``/``, NUL, backslash, non-UTF-8);
    404 for paths that are well formed but name nothing servable (missing, a directory, or a
    symlink out of the root), so that a refusal does not reveal what exists outside the root.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(code, reason)
        self.code = code
        self.reason = reason

    @property
    def suspicious(self) -> bool:
        """Whether this looks like an attack rather than a typo; such refusals are warnings."""
        return self.code == 400 or self.reason == _OUTSIDE


def resolve_path(root: Path, segments: Sequence[bytes]) -> Path:
    """The real path of the file that URL path *segments* name below *root*, or :exc:`PathRefused`.

    *segments* are what twisted.web puts in ``request.postpath``: the path split on ``/`` and then
    percent-decoded one by one, so ``%2e%2e`` arrives as ``..`` and ``%2f`` as a ``/`` inside a
    segment. Both are refused here rather than trusted to the file system. Empty segments (``//``,
    common when boot scripts join ``${base}/`` and ``/file``) are skipped, except a trailing one,
    which names a directory. *root* must already be absolute and free of symlinks
    (``os.path.realpath``), because the final check compares against it.

    The result exists, is inside *root* once every symlink is resolved, and was a regular file
    when looked at; :func:`serve_file` checks the open file again, so a race leaves no gap.
    """
    if not segments or segments[-1] == b"":
        raise PathRefused(404, "directory")
    names: list[str] = []
    for segment in segments:
        if segment == b"":
            continue
        if segment in (b".", b".."):
            raise PathRefused(400, "dot segment")
        if b"/" in segment:
            raise PathRefused(400, "encoded slash")
        if b"\\" in segment:
            raise PathRefused(400, "backslash")
        if b"\x00" in segment:
            raise PathRefused(400, "NUL byte")
        try:
            names.append(segment.decode("utf-8"))
        except UnicodeDecodeError:
            raise PathRefused(400, "not UTF-8") from None
    if not names:
        raise PathRefused(404, "directory")
    try:
        real = root.joinpath(*names).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, ENOTDIR, EACCES, ELOOP (RuntimeError before 3.13)
        raise PathRefused(404, "not found") from None
    if not real.is_relative_to(root):
        raise PathRefused(404, _OUTSIDE)
    try:
        mode = real.stat().st_mode
    except OSError:
        raise PathRefused(404, "not found") from None
    if stat.S_ISDIR(mode):
        raise PathRefused(404, "directory")
    if not stat.S_ISREG(mode):
        # Opening a FIFO would block the reactor, a device could have side effects on open.
        raise PathRefused(404, "not a regular file")
    return real


# --- Validators and preconditions (RFC 9110 §8.8, §13) ------------------------------------------


@attrs.frozen
class _Validators:
    """What identifies one version of a file: for ETag, Last-Modified and their comparisons."""

    size: int
    mtime_ns: int
    etag: bytes
    last_modified: bytes

    @property
    def mtime(self) -> int:
        """Modification time in whole seconds, the resolution of an HTTP-date."""
        return self.mtime_ns // 1_000_000_000

    @classmethod
    def from_stat(cls, st: os.stat_result) -> _Validators:
        """Validators for the file *st* describes.

        The ETag is strong: size, nanosecond mtime and inode change whenever the content does
        (an image replaced by ``mv`` gets a new inode even with ``cp -p``-preserved times).
        """
        etag = b'"%x-%x-%x"' % (st.st_size, st.st_mtime_ns, st.st_ino)
        seconds = st.st_mtime_ns // 1_000_000_000
        last_modified = formatdate(seconds, usegmt=True).encode("ascii")
        return cls(st.st_size, st.st_mtime_ns, etag, last_modified)


_WEEKDAYS: Final = rb"(?:Mon|Tue|Wed|Thu|Fri|Sat|Sun)"
_LONG_WEEKDAYS: Final = rb"(?:Monday|Tuesday|Wednesday|Thursday|Friday|Saturday|Sunday)"
_MONTHS: Final = tuple(b"Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
_MONTH: Final = rb"(" + b"|".join(_MONTHS) + rb")"
_TIME: Final = rb"(\d{2}):(\d{2}):(\d{2})"
_IMF_FIXDATE: Final = re.compile(
    _WEEKDAYS + rb", (\d{2}) " + _MONTH + rb" (\d{4}) " + _TIME + b" GMT"
)
_RFC850_DATE: Final = re.compile(
    _LONG_WEEKDAYS + rb", (\d{2})-" + _MONTH + rb"-(\d{2}) " + _TIME + b" GMT"
)
_ASCTIME_DATE: Final = re.compile(
    _WEEKDAYS + b" " + _MONTH + rb" ([ \d]\d) " + _TIME + rb" (\d{4})"
)


def _parse_http_date(value: bytes, now: float) -> int | None:
    """Seconds since the epoch for an HTTP-date (RFC 9110 §5.6.7, all three formats), else None.

    Written here rather than using :func:`twisted.web.http.stringToDatetime` because that one
    accepts junk and raises assorted exceptions on malformed input, and RFC 9110 says an invalid
    date makes a conditional field be ignored, never an error.
    """
    value = value.strip()
    if match := _IMF_FIXDATE.fullmatch(value):
        day, month, year, hh, mm, ss = match.groups()
    elif match := _RFC850_DATE.fullmatch(value):
        day, month, yy, hh, mm, ss = match.groups()
        # A two-digit year more than 50 years ahead means the century before (RFC 9110 §5.6.7).
        this_year = datetime.datetime.fromtimestamp(now, datetime.UTC).year
        full = this_year - this_year % 100 + int(yy)
        year = b"%d" % (full - 100 if full > this_year + 50 else full)
    elif match := _ASCTIME_DATE.fullmatch(value):
        month, day, hh, mm, ss, year = match.groups()
    else:
        return None
    try:
        moment = datetime.datetime(
            int(year),
            _MONTHS.index(month) + 1,
            int(day),
            int(hh),
            int(mm),
            int(ss),
            tzinfo=datetime.UTC,
        )
    except ValueError:
        return None
    return int(moment.timestamp())


_ENTITY_TAG: Final = re.compile(rb'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def _parse_entity_tags(values: Sequence[bytes]) -> list[tuple[bool, bytes]] | None:
    """The (weak, opaque-tag) pairs of an If-Match / If-None-Match field, or None for ``*``.

    An element that is not a valid entity-tag is skipped: for If-None-Match that errs towards
    sending the file, for If-Match towards 412, both of which are safe.
    """
    joined = b",".join(values).strip()
    if joined == b"*":
        return None
    tags: list[tuple[bool, bytes]] = []
    position = 0
    while position < len(joined):
        match = _ENTITY_TAG.match(joined, position)
        if match is None:
            comma = joined.find(b",", position)
            if comma == -1:
                break
            position = comma + 1
            continue
        tags.append((match.group(1) is not None, match.group(2)))
        position = match.end()
    return tags


def _strong_last_modified(validators: _Validators, now: float) -> bool:
    """Whether Last-Modified may serve as a strong validator (RFC 9110 §8.8.2.2).

    Only when the file is at least a second old: otherwise it could change again within the same
    second and still present the same date.
    """
    return now - validators.mtime_ns / 1e9 >= 1.0


def _preconditions(
    method: bytes, headers: Headers, validators: _Validators, now: float
) -> int | None:
    """412, 304, or None to go on; RFC 9110 §13.2.2's order of evaluation, steps 1 to 4."""
    if_match = headers.getRawHeaders(b"if-match")
    if if_match is not None:
        tags = _parse_entity_tags(if_match)
        if tags is not None and not any(not weak and tag == validators.etag for weak, tag in tags):
            return 412
    else:
        if_unmodified = headers.getRawHeaders(b"if-unmodified-since")
        if if_unmodified is not None:
            date = _parse_http_date(if_unmodified[-1], now)
            if date is not None and validators.mtime > date:
                return 412
    if_none_match = headers.getRawHeaders(b"if-none-match")
    if if_none_match is not None:
        tags = _parse_entity_tags(if_none_match)
        if tags is None or any(tag == validators.etag for _weak, tag in tags):
            return 304 if method in (b"GET", b"HEAD") else 412
    else:
        if_modified = headers.getRawHeaders(b"if-modified-since")
        if if_modified is not None and method in (b"GET", b"HEAD"):
            date = _parse_http_date(if_modified[-1], now)
            if date is not None and validators.mtime <= date:
                return 304
    return None


def _if_range_holds(value: bytes, validators: _Validators, now: float) -> bool:
    """Whether the Range may be honoured given If-Range *value* (RFC 9110 §13.1.5).

    An entity-tag must match strongly; a date must equal Last-Modified and Last-Modified must be
    strong. Anything else means "the copy you have is stale": send the whole file.
    """
    value = value.strip()
    if value.startswith(b"W/"):
        return False
    if value.startswith(b'"'):
        return value == validators.etag
    date = _parse_http_date(value, now)
    return date is not None and date == validators.mtime and _strong_last_modified(validators, now)


# --- Ranges (RFC 9110 §14) ------------------------------------------------------------------------

_RANGE_SPEC: Final = re.compile(rb"(\d*)-(\d*)")


def _parse_ranges(value: bytes, size: int) -> list[tuple[int, int]] | None:
    """Satisfiable ranges as (first, last) inclusive byte positions, or None to ignore the field.

    None means: not the ``bytes`` unit, syntactically invalid, or too many ranges, all of which
    RFC 9110 §14.2 answers by ignoring Range and sending 200. An empty list means every range lies
    beyond the end of the file: 416. Ranges are kept in the client's order unless they overlap;
    then they are merged into ascending order (§14.3 allows it), so that no byte is sent twice
    (the "many overlapping ranges" amplification attack).
    """
    unit, eq, rest = value.partition(b"=")
    if not eq or unit.strip().lower() != b"bytes":
        return None
    specs = [spec.strip() for spec in rest.split(b",")]
    specs = [spec for spec in specs if spec]
    if not specs or len(specs) > _MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first_text, last_text = match.groups()
        if len(first_text) > _MAX_DIGITS or len(last_text) > _MAX_DIGITS:
            return None
        if first_text:
            first = int(first_text)
            if last_text:
                last = int(last_text)
                if last < first:
                    return None
            else:
                last = size - 1
            if first < size:
                ranges.append((first, min(last, size - 1)))
        elif last_text:
            suffix = int(last_text)
            if suffix > 0 and size > 0:
                ranges.append((max(0, size - suffix), size - 1))
        else:
            return None
    if sum(last - first + 1 for first, last in ranges) > size:
        merged: list[tuple[int, int]] = []
        for first, last in sorted(ranges):
            if merged and first <= merged[-1][1] + 1:
                merged[-1] = (merged[-1][0], max(last, merged[-1][1]))
            else:
                merged.append((first, last))
        ranges = merged
    return ranges


# --- The response plan (pure) ---------------------------------------------------------------------


@attrs.frozen
class _Span:
    """*length* bytes of the file starting at *offset*; one piece of a response body."""

    offset: int
    length: int


_Piece: TypeAlias = bytes | _Span


@attrs.frozen
class _Plan:
    """Everything about a response except the I/O: status, headers and what the body is made of.

    *length* is the exact body length (the Content-Length), None only for 304 which has no body.
    """

    code: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: tuple[_Piece, ...]
    length: int | None


_TEXT: Final = b"text/plain; charset=utf-8"


def _plan_response(
    method: bytes,
    headers: Headers,
    validators: _Validators,
    content_type: bytes,
    now: float,
    boundary: bytes,
) -> _Plan:
    """Decide status, headers and body pieces for a GET or HEAD of a file (RFC 9110 §13-§15).

    *boundary* is passed in (rather than drawn here) to keep this a pure function that tests can
    check byte for byte.
    """
    size = validators.size
    common: tuple[tuple[bytes, bytes], ...] = (
        (b"ETag", validators.etag),
        (b"Last-Modified", validators.last_modified),
    )
    condition = _preconditions(method, headers, validators, now)
    if condition == 304:
        return _Plan(304, common, (), None)
    if condition == 412:
        body = b"Precondition Failed\n"
        return _Plan(412, ((b"Content-Type", _TEXT),), (body,), len(body))
    ranged = (b"Accept-Ranges", b"bytes")
    ranges: list[tuple[int, int]] | None = None
    range_fields = headers.getRawHeaders(b"range")
    # Range means something for GET only (§14.2); two Range fields is not a valid request.
    if method == b"GET" and range_fields is not None and len(range_fields) == 1:
        if_range = headers.getRawHeaders(b"if-range")
        if if_range is None or _if_range_holds(if_range[-1], validators, now):
            ranges = _parse_ranges(range_fields[0], size)
    if ranges is None:
        full: tuple[_Piece, ...] = (_Span(0, size),) if size else ()
        return _Plan(200, ((b"Content-Type", content_type), ranged, *common), full, size)
    if not ranges:
        body = b"Range Not Satisfiable\n"
        return _Plan(
            416,
            ((b"Content-Type", _TEXT), ranged, (b"Content-Range", b"bytes */%d" % size)),
            (body,),
            len(body),
        )
    if len(ranges) == 1:
        first, last = ranges[0]
        content_range = b"bytes %d-%d/%d" % (first, last, size)
        return _Plan(
            206,
            ((b"Content-Type", content_type), ranged, (b"Content-Range", content_range), *common),
            (_Span(first, last - first + 1),),
            last - first + 1,
        )
    pieces: list[_Piece] = []
    for index, (first, last) in enumerate(ranges):
        pieces.append(
            b"%s--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
            % (b"\r\n" if index else b"", boundary, content_type, first, last, size)
        )
        pieces.append(_Span(first, last - first + 1))
    pieces.append(b"\r\n--%s--\r\n" % boundary)
    multipart = b"multipart/byteranges; boundary=" + boundary
    return _Plan(
        206,
        ((b"Content-Type", multipart), ranged, *common),
        tuple(pieces),
        sum(len(p) if isinstance(p, bytes) else p.length for p in pieces),
    )


# --- Transfers (I/O) ------------------------------------------------------------------------------


class _HTTPRequest(Protocol):
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


class _TCPTransport(Protocol):
    """The typed subset of :class:`twisted.internet.tcp.Connection` the sendfile path relies on."""

    connected: int
    disconnecting: int
    dataBuffer: bytes
    offset: int
    _tempDataLen: int

    def getHandle(self) -> socket.socket: ...
    def abortConnection(self) -> None: ...


def _client(request: _HTTPRequest) -> str:
    """The peer as ``host:port`` for logs."""
    address = request.getClientAddress()
    host = getattr(address, "host", None)
    port = getattr(address, "port", None)
    return f"{host}:{port}" if host is not None else str(address)


class _TruncatedError(Exception):
    """The file got shorter than the Content-Length already promised; the response cannot end."""


@implementer(IPushProducer)
class _Transfer:
    """A response body being sent: owns the file descriptor and closes it exactly once.

    Subclasses move the bytes; this class does the lifecycle common to both ways of moving them:
    register as the request's producer, notice a vanished client through ``notifyFinish``, and
    end with :meth:`_complete` (all sent), :meth:`_abort` (cannot go on) or :meth:`_close`
    (connection already gone).
    """

    def __init__(
        self, request: _HTTPRequest, fd: int, body: Iterable[_Piece], length: int, name: str
    ) -> None:
        self._request = request
        self._fd = fd
        self._pieces: collections.deque[_Piece] = collections.deque(body)
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
            client=_client(self._request),
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
                client=_client(self._request),
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


class _ReadTransfer(_Transfer):
    """The portable way: ``pread`` a chunk, ``request.write`` it, stop when the transport says so.

    A push producer: a TCP transport pauses it once its buffer passes 64 KiB, which with 256 KiB
    chunks is after every write, and resumes it when the buffer has drained; so about one chunk
    per connection sits in memory. When nothing pushes back (an in-memory transport) it still
    yields to the reactor every few chunks, through the injected reactor's ``callLater``.
    """

    def __init__(
        self,
        request: _HTTPRequest,
        fd: int,
        body: Iterable[_Piece],
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
            raise _TruncatedError()
        if len(data) == head.length:
            self._pieces.popleft()
        else:
            self._pieces[0] = _Span(head.offset + len(data), head.length - len(data))
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
        except _TruncatedError:
            self._abort("file shrank while being sent")
            return
        except OSError as e:
            self._abort(f"read failed: {e}")
            return
        finally:
            self._producing = False
        if not self._paused and not self._done:
            self._call = self._reactor.callLater(0, self._produce)


@implementer(IWriteDescriptor)
class _SendfileTransfer(_Transfer):
    """The fast way: ``os.sendfile`` from the file straight into the connection's socket.

    Twisted's transport buffers in user space and knows nothing of sendfile, so this takes the
    socket over for the body, in three steps:

    1. ``request.write(b"")`` queues the status line and headers in the transport's buffer.
    2. A ``dup`` of the socket's descriptor is registered with the reactor as a writer of its own
       (another descriptor number, so the transport's own registration is left alone). Each time
       the socket is writable *and* the transport's buffer is empty (the headers are out, and
       nothing else writes to a connection while its request is being answered) this sends
       until the kernel says EAGAIN or a per-wake-up budget is spent; the reactor calls back when
       the socket is writable again.
    3. With every byte sent, it unregisters, closes its descriptors, and finishes the request,
       which hands the connection back to the HTTP channel for the next request.

    The socket is corked (``TCP_CORK``, nginx's ``tcp_nopush``) from step 1 to the end of the
    body, so the headers leave in the first full segment of the body and every segment is full
    size; this raised the best single-stream rate over veth from about 2.8 to about 4.2 GB/s
    (bench/http). Uncorking when the transfer ends, however it ends, pushes out the last
    partial segment at once instead of after the kernel's 200 ms cork timeout.

    Literal pieces of the body (multipart boundaries) are written with ``os.write`` on the same
    descriptor, so multipart ranges take this path too.
    """

    def __init__(
        self,
        request: _HTTPRequest,
        fd: int,
        body: Iterable[_Piece],
        length: int,
        name: str,
        reactor: IReactorFDSet,
        transport: _TCPTransport,
    ) -> None:
        super().__init__(request, fd, body, length, name)
        self._reactor = reactor
        self._transport = transport
        self._out = -1
        self._watching = False
        self._paused = False

    def _begin(self) -> None:
        self._request.write(b"")
        try:
            self._out = os.dup(self._transport.getHandle().fileno())
        except OSError as e:  # EMFILE: the headers are out, all that is left is to give up
            self._abort(f"cannot dup the socket: {e}")
            return
        self._cork(True)
        self._watch()

    def _cork(self, on: bool) -> None:
        """Hold back partial segments (on) or send what is held (off); only a performance hint,
        so a socket that refuses (not TCP, already closed) is left as it is."""
        with contextlib.suppress(OSError, AttributeError):
            self._transport.getHandle().setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, int(on))

    def _watch(self) -> None:
        if not (self._watching or self._paused or self._done):
            self._watching = True
            self._reactor.addWriter(self)

    def _unwatch(self) -> None:
        if self._watching:
            self._watching = False
            self._reactor.removeWriter(self)

    def _release(self) -> None:
        self._unwatch()
        if self._out != -1:
            self._cork(False)
            os.close(self._out)
            self._out = -1

    def pauseProducing(self) -> None:
        self._paused = True
        self._unwatch()

    def resumeProducing(self) -> None:
        self._paused = False
        self._watch()

    # IWriteDescriptor

    def fileno(self) -> int:
        return self._out

    def logPrefix(self) -> str:
        return "pxetwist.http.sendfile"

    def connectionLost(self, reason: Failure) -> None:
        """The reactor gave up on our descriptor (it failed in a way ``doWrite`` did not catch)."""
        self._watching = False
        self._abort(f"socket lost: {reason.getErrorMessage()}")

    def doWrite(self) -> None:
        if self._done or not _buffer_empty(self._transport):
            return
        try:
            finished = self._pump()
        except BlockingIOError:
            finished = False
        except _TruncatedError:
            self._abort("file shrank while being sent")
            return
        except OSError as e:
            if e.errno in (errno.EPIPE, errno.ECONNRESET):
                # The transport would notice on its next read; this just gets there first.
                self._connection_lost(e)
                self._transport.abortConnection()
            else:
                self._abort(f"sendfile failed: {e}")
            return
        channel = self._request.channel
        if channel is not None and hasattr(channel, "resetTimeout"):
            # Bytes that bypass the channel would not count as activity for its idle timeout.
            channel.resetTimeout()
        if finished:
            self._complete()

    def _pump(self) -> bool:
        """Send until the socket is full or the budget is spent; True once the body is all sent."""
        budget = _SENDFILE_BUDGET
        while self._pieces:
            if budget <= 0:
                return False  # still writable: the reactor calls again after the others' turn
            head = self._pieces[0]
            rest: _Piece
            if isinstance(head, bytes):
                wanted = len(head)
                sent = os.write(self._out, head)
                rest = head[sent:]
                left = len(rest)
            else:
                wanted = min(head.length, budget)
                sent = os.sendfile(self._out, self._fd, head.offset, wanted)
                if sent == 0:
                    raise _TruncatedError()
                rest = _Span(head.offset + sent, head.length - sent)
                left = rest.length
            self._sent += sent
            self._request.sentLength += sent  # for the access log
            budget -= sent
            if left:
                self._pieces[0] = rest
            else:
                self._pieces.popleft()
            if sent < wanted:
                return False  # the socket buffer is full: wait until it is writable again
        return True


def _buffer_empty(transport: _TCPTransport) -> bool:
    """Whether the transport has handed all its buffered bytes (our headers) to the kernel.

    Reads :class:`twisted.internet.abstract.FileDescriptor`'s buffer bookkeeping, which has no
    public accessor; :func:`_sendfile_transport` checks the attributes exist before choosing
    sendfile, and the socket tests check that headers and body arrive in order.
    """
    return len(transport.dataBuffer) - transport.offset + transport._tempDataLen == 0


def _sendfile_transport(request: _HTTPRequest, reactor: IReactorTime) -> _TCPTransport | None:
    """The request's TCP transport if the body can be sent with ``os.sendfile``, else None.

    Only a plain, non-blocking TCP (or Unix) stream socket qualifies: not TLS (the bytes must be
    encrypted in user space), not HTTP/2 (frames), not a test double; and the reactor must
    accept file descriptors.
    """
    if not hasattr(os, "sendfile") or not IReactorFDSet.providedBy(reactor):
        return None
    transport = getattr(request.channel, "transport", None)
    if not isinstance(transport, tcp.Connection):
        return None
    if ISSLTransport.providedBy(transport) or getattr(transport, "TLS", False):
        return None
    if not transport.connected or transport.disconnecting:
        return None
    if not all(hasattr(transport, a) for a in ("dataBuffer", "offset", "_tempDataLen")):
        return None
    sock = transport.getHandle()
    if not isinstance(sock, socket.socket) or sock.type != socket.SOCK_STREAM:
        return None
    if sock.fileno() < 0 or sock.getblocking():
        return None
    return cast(_TCPTransport, transport)


# --- Serving --------------------------------------------------------------------------------------


def _respond(
    request: _HTTPRequest, code: int, body: bytes, extra: Iterable[tuple[bytes, bytes]] = ()
) -> int:
    """Send a small complete response (an error) with an exact Content-Length."""
    request.setResponseCode(code)
    request.responseHeaders.setRawHeaders(b"Content-Type", [_TEXT])
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
    typed = cast(_HTTPRequest, request)
    method = typed.method
    if method not in (b"GET", b"HEAD"):
        return _respond(typed, 405, b"Method Not Allowed\n", [(b"Allow", b"GET, HEAD")])
    path = Path(path)
    opened = _open_regular(Path(os.path.realpath(path)))
    if opened is None:
        _log.info("No file {path} for {client}", path=str(path), client=_client(typed))
        return _respond(typed, 404, b"Not Found\n")
    fd, st = opened
    kind = (content_type or content_type_for(path.name)).encode("ascii")
    plan = _plan_response(
        method,
        typed.requestHeaders,
        _Validators.from_stat(st),
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
        or not any(isinstance(piece, _Span) for piece in plan.body)
    ):
        os.close(fd)
        typed.write(b"".join(piece for piece in plan.body if isinstance(piece, bytes)))
        typed.finish()
        return NOT_DONE_YET
    if typed.channel is None:  # the client left while a caller was preparing this response
        os.close(fd)
        return NOT_DONE_YET
    transport = _sendfile_transport(typed, reactor) if sendfile else None
    transfer: _Transfer
    if transport is not None and plan.length >= _SENDFILE_MIN:
        fdset = cast(IReactorFDSet, reactor)
        transfer = _SendfileTransfer(typed, fd, plan.body, plan.length, str(path), fdset, transport)
    else:
        with contextlib.suppress(AttributeError, OSError):  # only a read-ahead hint
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        transfer = _ReadTransfer(typed, fd, plan.body, plan.length, str(path), reactor, chunk_size)
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
        typed = cast(_HTTPRequest, request)
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
        typed = cast(_HTTPRequest, request)
        segments = typed.postpath or []
        try:
            path = resolve_path(self.root, segments)
        except PathRefused as refusal:
            log_event = _log.warn if refusal.suspicious else _log.info
            log_event(
                "Refused {method} {path} from {client}: {reason}",
                method=typed.method.decode("ascii", "replace"),
                path=typed.path.decode("ascii", "backslashreplace"),
                client=_client(typed),
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
