"""TFTP wire format: datagrams to frozen packet values and back (RFC 1350 §5, RFC 2347).

Everything that comes off the network goes through :func:`decode`, which either returns one of the
six packet values or raises :class:`MalformedPacket`; nothing else escapes it, whatever the bytes
(checked by a hypothesis property), so the protocol layer needs a single ``except`` to drop junk.

Text fields are decoded as latin-1: every byte maps to exactly one code point, so a file name
with high bytes (firmware garbage such as a trailing ``0xFF``, protocol-reference §5 #9) survives
the round trip unchanged and can be logged or refused later, instead of failing here with a
``UnicodeError``.
"""

from __future__ import annotations

import enum
import struct
from typing import Final, TypeAlias

import attrs


class MalformedPacket(ValueError):
    """A datagram that is not a TFTP packet; the only exception :func:`decode` raises."""


class Opcode(enum.IntEnum):
    """The two-octet opcode that starts every packet (RFC 1350 §5, OACK from RFC 2347)."""

    RRQ = 1
    WRQ = 2
    DATA = 3
    ACK = 4
    ERROR = 5
    OACK = 6


class ErrorCode(enum.IntEnum):
    """ERROR packet codes: 0-7 from RFC 1350 (Appendix), 8 from RFC 2347."""

    NOT_DEFINED = 0
    FILE_NOT_FOUND = 1
    ACCESS_VIOLATION = 2
    DISK_FULL = 3
    ILLEGAL_OPERATION = 4
    UNKNOWN_TRANSFER_ID = 5
    FILE_EXISTS = 6
    NO_SUCH_USER = 7
    OPTION_NEGOTIATION_FAILED = 8

    @property
    def default_message(self) -> str:
        """The customary text for this code, as tftpd-hpa, dnsmasq and §7.8 T6/T7 send it."""
        return _DEFAULT_MESSAGES[self]


_DEFAULT_MESSAGES: Final[dict[ErrorCode, str]] = {
    ErrorCode.NOT_DEFINED: "Undefined error",
    ErrorCode.FILE_NOT_FOUND: "File not found",
    ErrorCode.ACCESS_VIOLATION: "Access violation",
    ErrorCode.DISK_FULL: "Disk full or allocation exceeded",
    ErrorCode.ILLEGAL_OPERATION: "Illegal TFTP operation",
    ErrorCode.UNKNOWN_TRANSFER_ID: "Unknown transfer ID",
    ErrorCode.FILE_EXISTS: "File already exists",
    ErrorCode.NO_SUCH_USER: "No such user",
    ErrorCode.OPTION_NEGOTIATION_FAILED: "Option negotiation failed",
}

Options: TypeAlias = tuple[tuple[str, str], ...]
"""Option ``(name, value)`` pairs in wire order; names lower-cased (RFC 2347: case-insensitive)."""


@attrs.frozen
class ReadRequest:
    """RRQ (RFC 1350 §5, options per RFC 2347).

    ``mode`` and option names are lower-cased when decoded, because both are case-insensitive on the
    wire and every consumer would otherwise have to fold them; option values and the file name are
    kept exactly as sent.  Repeated option names are kept too; the session honours the first.
    """

    filename: str
    mode: str
    options: Options = ()


@attrs.frozen
class WriteRequest:
    """WRQ (RFC 1350 §5); decoded so the server can refuse it properly (read-only, §6.6)."""

    filename: str
    mode: str
    options: Options = ()


@attrs.frozen
class Data:
    """DATA (RFC 1350 §5): a 16-bit wire block number and up to ``blksize`` octets."""

    block: int
    payload: bytes


@attrs.frozen
class Ack:
    """ACK (RFC 1350 §5); block 0 acknowledges an OACK (RFC 2347)."""

    block: int


@attrs.frozen
class Error:
    """ERROR (RFC 1350 §5).

    ``code`` is an :class:`ErrorCode` when the wire value is one of the known ones, else the raw
    integer (clients do send private codes; they still end the transfer).
    """

    code: int
    message: str


@attrs.frozen
class OptionAck:
    """OACK (RFC 2347): the options the server accepted, in the order the client asked for them."""

    options: Options


Packet: TypeAlias = ReadRequest | WriteRequest | Data | Ack | Error | OptionAck

_HEADER = struct.Struct("!HH")
_pack_header = _HEADER.pack
_MAX_WIRE = 0xFFFF
_OPCODE_DATA = int(Opcode.DATA)
_OPCODE_ACK = int(Opcode.ACK)
_ERROR_CODES: Final[dict[int, ErrorCode]] = {int(code): code for code in ErrorCode}


def encode_data(block: int, payload: bytes) -> bytes:
    """Build a DATA datagram; the hot path of every transfer, hence no packet object in between.

    ``block`` is the 16-bit wire number (the caller maps its absolute index with ``& 0xFFFF``).
    """
    return _pack_header(_OPCODE_DATA, block) + payload


def encode_ack(block: int) -> bytes:
    """Build an ACK datagram (used by tests and by any future client side)."""
    return _pack_header(_OPCODE_ACK, block)


def error_datagram(code: ErrorCode, message: str | None = None) -> bytes:
    """Build an ERROR datagram with the customary text, e.g. T7 ``File not found`` (§7.8)."""
    return encode(Error(code, code.default_message if message is None else message))


def _text(value: str, what: str) -> bytes:
    """Encode a string field as latin-1; refuse an embedded NUL, which would split the field."""
    raw = value.encode("latin-1", errors="replace")
    if b"\0" in raw:
        raise ValueError(f"{what} {value!r} contains a NUL octet")
    return raw


def _wire_number(value: int) -> int:
    """Check a block number or error code fits its 16-bit field."""
    if not 0 <= value <= _MAX_WIRE:
        raise ValueError(f"{value} does not fit in 16 bits")
    return value


def _encode_options(options: Options) -> bytes:
    parts: list[bytes] = []
    for name, value in options:
        if not name:
            raise ValueError("an option name cannot be empty")
        parts.append(_text(name, "option name") + b"\0" + _text(value, "option value") + b"\0")
    return b"".join(parts)


def encode(packet: Packet) -> bytes:
    """Turn a packet value into its datagram.

    Raises :class:`ValueError` for values that have no wire form (a NUL inside a text field, a
    number outside 16 bits), since sending such a datagram would be our bug, not the peer's.
    """
    if isinstance(packet, Data):
        return encode_data(_wire_number(packet.block), packet.payload)
    if isinstance(packet, Ack):
        return encode_ack(_wire_number(packet.block))
    if isinstance(packet, OptionAck):
        return b"\0\x06" + _encode_options(packet.options)
    if isinstance(packet, Error):
        header = _pack_header(Opcode.ERROR, _wire_number(packet.code))
        return header + _text(packet.message, "error message") + b"\0"
    opcode = b"\0\x01" if isinstance(packet, ReadRequest) else b"\0\x02"
    if not packet.filename or not packet.mode:
        raise ValueError("a request needs a file name and a mode")
    return (
        opcode
        + _text(packet.filename, "file name")
        + b"\0"
        + _text(packet.mode, "mode")
        + b"\0"
        + _encode_options(packet.options)
    )


def _decode_request(data: bytes, opcode: int) -> ReadRequest | WriteRequest:
    """RRQ/WRQ: ``filename 0 mode 0 [name 0 value 0]...`` (RFC 1350 §5, RFC 2347)."""
    fields = data[2:].split(b"\0")
    # The body must end with a NUL, so the split leaves an empty last piece.
    if len(fields) < 3 or fields[-1]:
        raise MalformedPacket("request fields are not NUL-terminated")
    del fields[-1]
    filename, mode = fields[0], fields[1]
    if not filename:
        raise MalformedPacket("request without a file name")
    if not mode:
        raise MalformedPacket("request without a mode")
    rest = fields[2:]
    # Tolerate NUL padding after the last option, as some ROMs pad requests; an option with an
    # empty value before the padding keeps its (empty) value.
    while rest and not rest[-1]:
        rest.pop()
    if len(rest) % 2:
        rest.append(b"")
    options: list[tuple[str, str]] = []
    for index in range(0, len(rest), 2):
        name = rest[index]
        if not name:
            raise MalformedPacket("request option with an empty name")
        options.append((name.lower().decode("latin-1"), rest[index + 1].decode("latin-1")))
    cls = ReadRequest if opcode == Opcode.RRQ else WriteRequest
    return cls(filename.decode("latin-1"), mode.lower().decode("latin-1"), tuple(options))


def _decode_oack(data: bytes) -> OptionAck:
    """OACK: ``[name 0 value 0]...`` (RFC 2347)."""
    body = data[2:]
    if not body:
        return OptionAck(())
    fields = body.split(b"\0")
    if fields[-1]:
        raise MalformedPacket("OACK fields are not NUL-terminated")
    del fields[-1]
    if len(fields) % 2:
        raise MalformedPacket("OACK option without a value")
    options: list[tuple[str, str]] = []
    for index in range(0, len(fields), 2):
        name = fields[index]
        if not name:
            raise MalformedPacket("OACK option with an empty name")
        options.append((name.lower().decode("latin-1"), fields[index + 1].decode("latin-1")))
    return OptionAck(tuple(options))


def ack_block(data: bytes) -> int | None:
    """The block number of an ACK datagram, or ``None`` for anything else.

    The per-block hot path of every transfer: an ACK is classified without building a packet
    value (``decode`` would give ``Ack(block)`` for the same bytes, trailing octets ignored).
    """
    if len(data) >= 4 and data[0] == 0 and data[1] == _OPCODE_ACK:
        return (data[2] << 8) | data[3]
    return None


def is_request(data: bytes) -> bool:
    """True when ``data`` starts like an RRQ or a WRQ (its body unchecked): what a port that
    carries both transfers and requests (``tftp.single_port``) routes to the request path."""
    return len(data) >= 2 and data[0] == 0 and (data[1] == Opcode.RRQ or data[1] == Opcode.WRQ)


def is_error(data: bytes) -> bool:
    """True when ``data`` starts like an ERROR, which is never answered (RFC 1350 §7)."""
    return len(data) >= 2 and data[0] == 0 and data[1] == Opcode.ERROR


def decode(data: bytes) -> Packet:
    """Parse one datagram, or raise :class:`MalformedPacket` (and nothing else).

    Leniencies, each for a real client: trailing octets after an ACK's block number are ignored,
    and an ERROR whose message lacks its NUL is still an ERROR, so that a client's abort (EDK2's
    ``tsize`` probe, §5 #12) ends the transfer instead of being dropped and retransmitted against.
    """
    length = len(data)
    if length < 2:
        raise MalformedPacket("datagram shorter than an opcode")
    opcode = (data[0] << 8) | data[1]
    if opcode == _OPCODE_ACK:
        if length < 4:
            raise MalformedPacket("ACK without a block number")
        return Ack((data[2] << 8) | data[3])
    if opcode == _OPCODE_DATA:
        if length < 4:
            raise MalformedPacket("DATA without a block number")
        return Data((data[2] << 8) | data[3], bytes(data[4:]))
    if opcode == Opcode.RRQ or opcode == Opcode.WRQ:
        return _decode_request(data, opcode)
    if opcode == Opcode.ERROR:
        if length < 4:
            raise MalformedPacket("ERROR without a code")
        raw_code = (data[2] << 8) | data[3]
        message = data[4:].split(b"\0", 1)[0].decode("latin-1")
        return Error(_ERROR_CODES.get(raw_code, raw_code), message)
    if opcode == Opcode.OACK:
        return _decode_oack(data)
    raise MalformedPacket(f"unknown opcode {opcode}")


__all__ = [
    "Ack",
    "Data",
    "Error",
    "ErrorCode",
    "MalformedPacket",
    "Opcode",
    "OptionAck",
    "Options",
    "Packet",
    "ReadRequest",
    "WriteRequest",
    "ack_block",
    "decode",
    "encode",
    "encode_ack",
    "encode_data",
    "error_datagram",
    "is_error",
    "is_request",
]
