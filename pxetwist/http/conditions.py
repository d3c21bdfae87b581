"""Validators and conditional requests (RFC 9110 §8.8, §13): ETag, Last-Modified, If-*.

Pure functions of (method, request headers, the file's validators, now).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from email.utils import formatdate
from typing import Final

import attrs
from twisted.web.http_headers import Headers

from pxetwist.http.dates import parse_http_date

__all__ = ["Validators", "if_range_holds", "parse_entity_tags", "preconditions"]


@attrs.frozen
class Validators:
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
    def from_stat(cls, st: os.stat_result) -> Validators:
        """Validators for the file *st* describes.

        The ETag is strong: size, nanosecond mtime and inode change whenever the content does
        (an image replaced by ``mv`` gets a new inode even with ``cp -p``-preserved times).
        """
        etag = b'"%x-%x-%x"' % (st.st_size, st.st_mtime_ns, st.st_ino)
        seconds = st.st_mtime_ns // 1_000_000_000
        last_modified = formatdate(seconds, usegmt=True).encode("ascii")
        return cls(st.st_size, st.st_mtime_ns, etag, last_modified)


_ENTITY_TAG: Final = re.compile(rb'\s*(W/)?("[\x21\x23-\x7e\x80-\xff]*")\s*(?:,|$)')


def parse_entity_tags(values: Sequence[bytes]) -> list[tuple[bool, bytes]] | None:
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


def strong_last_modified(validators: Validators, now: float) -> bool:
    """Whether Last-Modified may serve as a strong validator (RFC 9110 §8.8.2.2).

    Only when the file is at least a second old: otherwise it could change again within the same
    second and still present the same date.
    """
    return now - validators.mtime_ns / 1e9 >= 1.0


def preconditions(
    method: bytes, headers: Headers, validators: Validators, now: float
) -> int | None:
    """412, 304, or None to go on; RFC 9110 §13.2.2's order of evaluation, steps 1 to 4."""
    if_match = headers.getRawHeaders(b"if-match")
    if if_match is not None:
        tags = parse_entity_tags(if_match)
        if tags is not None and not any(not weak and tag == validators.etag for weak, tag in tags):
            return 412
    else:
        if_unmodified = headers.getRawHeaders(b"if-unmodified-since")
        if if_unmodified is not None:
            date = parse_http_date(if_unmodified[-1], now)
            if date is not None and validators.mtime > date:
                return 412
    if_none_match = headers.getRawHeaders(b"if-none-match")
    if if_none_match is not None:
        tags = parse_entity_tags(if_none_match)
        if tags is None or any(tag == validators.etag for _weak, tag in tags):
            return 304 if method in (b"GET", b"HEAD") else 412
    else:
        if_modified = headers.getRawHeaders(b"if-modified-since")
        if if_modified is not None and method in (b"GET", b"HEAD"):
            date = parse_http_date(if_modified[-1], now)
            if date is not None and validators.mtime <= date:
                return 304
    return None


def if_range_holds(value: bytes, validators: Validators, now: float) -> bool:
    """Whether the Range may be honoured given If-Range *value* (RFC 9110 §13.1.5).

    An entity-tag must match strongly; a date must equal Last-Modified and Last-Modified must be
    strong. Anything else means "the copy you have is stale": send the whole file.
    """
    value = value.strip()
    if value.startswith(b"W/"):
        return False
    if value.startswith(b'"'):
        return value == validators.etag
    date = parse_http_date(value, now)
    return date is not None and date == validators.mtime and strong_last_modified(validators, now)
