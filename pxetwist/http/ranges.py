"""The Range request field (RFC 9110 §14): which bytes of a file a client asked for."""

from __future__ import annotations

import re
from typing import Final

__all__ = ["MAX_DIGITS", "MAX_RANGES", "parse_ranges"]

MAX_RANGES: Final = 64
"""More ranges than this in one request and the Range field is ignored (RFC 9110 §14.2 allows it):
a guard against requests that cost the server far more than they cost the client."""

MAX_DIGITS: Final = 20
"""Longest byte position accepted (2**64 has 20 digits); longer ones make the Range field invalid
instead of reaching :func:`int`, which refuses very long strings with an exception."""


_RANGE_SPEC: Final = re.compile(rb"(\d*)-(\d*)")


def parse_ranges(value: bytes, size: int) -> list[tuple[int, int]] | None:
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
    if not specs or len(specs) > MAX_RANGES:
        return None
    ranges: list[tuple[int, int]] = []
    for spec in specs:
        match = _RANGE_SPEC.fullmatch(spec)
        if match is None:
            return None
        first_text, last_text = match.groups()
        if len(first_text) > MAX_DIGITS or len(last_text) > MAX_DIGITS:
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
