"""The response to a GET or HEAD of a file, decided without I/O (RFC 9110 §13-§15).

A :class:`Plan` is status, headers and the body as literal bytes and spans of the file; the
producers in :mod:`pxetwist.http.transfer` and :mod:`pxetwist.http.sendfile` carry it out.
"""

from __future__ import annotations

from typing import Final, TypeAlias

import attrs
from twisted.web.http_headers import Headers

from pxetwist.http.conditions import Validators, if_range_holds, preconditions
from pxetwist.http.ranges import parse_ranges

__all__ = ["TEXT_PLAIN", "Piece", "Plan", "Span", "plan_response"]


@attrs.frozen
class Span:
    """*length* bytes of the file starting at *offset*; one piece of a response body."""

    offset: int
    length: int


Piece: TypeAlias = bytes | Span


@attrs.frozen
class Plan:
    """Everything about a response except the I/O: status, headers and what the body is made of.

    *length* is the exact body length (the Content-Length), None only for 304 which has no body.
    """

    code: int
    headers: tuple[tuple[bytes, bytes], ...]
    body: tuple[Piece, ...]
    length: int | None


TEXT_PLAIN: Final = b"text/plain; charset=utf-8"


def plan_response(
    method: bytes,
    headers: Headers,
    validators: Validators,
    content_type: bytes,
    now: float,
    boundary: bytes,
) -> Plan:
    """Decide status, headers and body pieces for a GET or HEAD of a file (RFC 9110 §13-§15).

    *boundary* is passed in (rather than drawn here) to keep this a pure function that tests can
    check byte for byte.
    """
    size = validators.size
    common: tuple[tuple[bytes, bytes], ...] = (
        (b"ETag", validators.etag),
        (b"Last-Modified", validators.last_modified),
    )
    condition = preconditions(method, headers, validators, now)
    if condition == 304:
        return Plan(304, common, (), None)
    if condition == 412:
        body = b"Precondition Failed\n"
        return Plan(412, ((b"Content-Type", TEXT_PLAIN),), (body,), len(body))
    ranged = (b"Accept-Ranges", b"bytes")
    ranges: list[tuple[int, int]] | None = None
    range_fields = headers.getRawHeaders(b"range")
    # Range means something for GET only (§14.2); two Range fields is not a valid request.
    if method == b"GET" and range_fields is not None and len(range_fields) == 1:
        if_range = headers.getRawHeaders(b"if-range")
        if if_range is None or if_range_holds(if_range[-1], validators, now):
            ranges = parse_ranges(range_fields[0], size)
    if ranges is None:
        full: tuple[Piece, ...] = (Span(0, size),) if size else ()
        return Plan(200, ((b"Content-Type", content_type), ranged, *common), full, size)
    if not ranges:
        body = b"Range Not Satisfiable\n"
        return Plan(
            416,
            ((b"Content-Type", TEXT_PLAIN), ranged, (b"Content-Range", b"bytes */%d" % size)),
            (body,),
            len(body),
        )
    if len(ranges) == 1:
        first, last = ranges[0]
        content_range = b"bytes %d-%d/%d" % (first, last, size)
        return Plan(
            206,
            ((b"Content-Type", content_type), ranged, (b"Content-Range", content_range), *common),
            (Span(first, last - first + 1),),
            last - first + 1,
        )
    pieces: list[Piece] = []
    for index, (first, last) in enumerate(ranges):
        pieces.append(
            b"%s--%s\r\nContent-Type: %s\r\nContent-Range: bytes %d-%d/%d\r\n\r\n"
            % (b"\r\n" if index else b"", boundary, content_type, first, last, size)
        )
        pieces.append(Span(first, last - first + 1))
    pieces.append(b"\r\n--%s--\r\n" % boundary)
    multipart = b"multipart/byteranges; boundary=" + boundary
    return Plan(
        206,
        ((b"Content-Type", multipart), ranged, *common),
        tuple(pieces),
        sum(len(p) if isinstance(p, bytes) else p.length for p in pieces),
    )
