"""DHCPv4 messages: bytes to a frozen :class:`DhcpPacket`, and back (sans-I/O).

The decoder follows "accept what real clients send": PAD anywhere, a missing END at the end of the
datagram, options overloaded into ``file``/``sname`` (option 52), and long options split into
several instances (RFC 3396). Anything else wrong raises :class:`MalformedPacket`, and no other
exception type, whatever the bytes.

The encoder follows "send what every firmware can read": options in the caller's order with no
PAD between them, the subnet mask before the router, option 82 last, END, then zero fill to at
least 300 bytes. It never overloads ``file``/``sname``. If a reply does not fit the client's size
budget, low-priority options are dropped (reference §1.1-1.2, §1.10, §7.9).
"""

from __future__ import annotations

import ipaddress
import struct
import threading
import uuid
from collections.abc import Collection, Iterable, Mapping
from typing import Final, TypeAlias

import attrs

from pxetwist.dhcp.options import (
    MalformedPacket,
    MessageType,
    Op,
    OptionCode,
    decode_arches,
    decode_client_ndi,
    decode_client_uuid,
    decode_string,
    decode_suboptions,
    decode_user_classes,
)
from pxetwist.policy.values import Arch, MacAddress

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ESSENTIAL_OPTIONS",
    "MAGIC_COOKIE",
    "MIN_PACKET_SIZE",
    "ZERO_ADDRESS",
    "DhcpPacket",
    "MalformedPacket",
    "Options",
    "PacketTooLarge",
    "decode",
    "encode",
    "fit",
    "make_reply",
    "peek_discover",
]

Options: TypeAlias = tuple[tuple[int, bytes], ...]
"""Options as ``(code, value)`` pairs in wire order, one entry per code."""

MAGIC_COOKIE: Final = 0x63825363
"""99.130.83.99: marks the start of the options field (RFC 2131 §3, RFC 1497)."""

MIN_PACKET_SIZE: Final = 300
"""Replies are zero-filled up to the 300-byte BOOTP size. Some relays drop smaller ones (§1.1)."""

DEFAULT_MAX_SIZE: Final = 576 - 28
"""The DHCP payload every client must accept: a 576-byte IP datagram minus IP and UDP headers."""

ESSENTIAL_OPTIONS: Final[frozenset[int]] = frozenset(
    {
        OptionCode.MESSAGE_TYPE,
        OptionCode.SERVER_ID,
        OptionCode.LEASE_TIME,
        OptionCode.CLIENT_ID,
        OptionCode.RELAY_AGENT_INFO,
    }
)
"""Options :func:`encode` never drops to make a reply fit, unless the caller says otherwise.

A reply without them is wrong, not merely thinner: RFC 2131 Table 3, RFC 6842 and RFC 3046 §2.2.
"""

_HEADER: Final = struct.Struct("!BBBBIHHIIII16s64s128sI")
_OPTIONS_START: Final = _HEADER.size  # 240: the 236-byte BOOTP header plus the magic cookie
_SNAME: Final = slice(44, 108)
_FILE: Final = slice(108, 236)
_MAX_SNAME: Final = 63  # 64 bytes on the wire, always NUL-terminated (§7.9)
_MAX_FILE: Final = 127  # 128 bytes on the wire, always NUL-terminated
_BROADCAST_FLAG: Final = 0x8000
_ZERO: Final = ipaddress.IPv4Address(0)
ZERO_ADDRESS: Final = _ZERO
"""0.0.0.0, one shared value: decoded headers use it, so ``is`` finds it before ``==``."""

# Options with a typed accessor get their shape checked when a packet is built or decoded. The
# engine can then trust those accessors. Everything else stays raw bytes, so an odd value in an
# option we do not use cannot cost a client its boot.
_EXACT_LENGTH: Final[dict[int, int]] = {
    OptionCode.REQUESTED_IP: 4,
    OptionCode.LEASE_TIME: 4,
    OptionCode.MESSAGE_TYPE: 1,
    OptionCode.SERVER_ID: 4,
    OptionCode.MAX_MESSAGE_SIZE: 2,
    OptionCode.RENEWAL_T1: 4,
    OptionCode.REBINDING_T2: 4,
    OptionCode.SUBNET_SELECTION: 4,
}
_MESSAGE_TYPES: Final[dict[int, MessageType]] = {int(kind): kind for kind in MessageType}


# Plain ints for the loop that checks every option of every packet (no enum lookups there).
_MESSAGE_TYPE_CODE: Final = int(OptionCode.MESSAGE_TYPE)
_CLIENT_ARCH_CODE: Final = int(OptionCode.CLIENT_ARCH)
_RELAY_AGENT_INFO_CODE: Final = int(OptionCode.RELAY_AGENT_INFO)
_SUBNET_MASK_CODE: Final = int(OptionCode.SUBNET_MASK)
_ROUTER_CODE: Final = int(OptionCode.ROUTER)
_MESSAGE_TYPE_OPS: Final[dict[int, int]] = {int(kind): int(kind.op) for kind in MessageType}


class PacketTooLarge(ValueError):
    """A reply does not fit its size budget even after every droppable option was dropped.

    This happens only when the essential options alone are too big, for example a huge
    relay-agent option and a small budget. The engine should log it and not answer.
    """


_UNSET: Final = object()  # a lazily worked-out field not worked out yet


# -- attribute converters: accept the convenient spellings, store one canonical form -------------


def _to_ipv4(value: ipaddress.IPv4Address | str | int) -> ipaddress.IPv4Address:
    if type(value) is ipaddress.IPv4Address:
        return value
    return ipaddress.IPv4Address(value)


def _to_chaddr(value: bytes) -> bytes:
    """Pad a hardware address to the 16-byte ``chaddr`` field, so a MAC can be given as 6 bytes."""
    if not isinstance(value, bytes):
        raise TypeError(f"chaddr must be bytes, not {type(value).__name__}")
    if len(value) == 16:
        return value
    if len(value) > 16:
        raise ValueError(f"chaddr holds at most 16 bytes, not {len(value)}")
    return value + bytes(16 - len(value))


def _to_name(value: bytes | str) -> bytes:
    """``sname``/``file`` without the NUL fill, the way a C string reads them."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    elif not isinstance(value, bytes):
        raise TypeError(f"sname and file must be bytes or str, not {type(value).__name__}")
    return value.rstrip(b"\x00")


def _to_options(value: Iterable[tuple[int, bytes]] | Mapping[int, bytes]) -> Options:
    if type(value) is tuple:
        return value
    if isinstance(value, Mapping):
        return tuple(value.items())
    return tuple(value)


@attrs.frozen(kw_only=True)
class DhcpPacket:
    """One DHCPv4 message, request or reply, as an immutable value.

    The header fields mirror RFC 2131 §2 (reference §1.1). ``chaddr`` is the raw 16-byte field.
    ``sname`` and ``file`` have their NUL fill removed. They are empty when the datagram
    overloaded them with options. ``options`` keeps the wire order, with instances of one code
    already joined (RFC 3396). Option 52 is never stored: decoding uses it up, and encoding never
    overloads.

    Invariants, checked on construction: each option code appears once, lies in 1-254 and is
    not 52. Options 50, 51, 53, 54, 57, 58, 59 and 118 have their fixed length. Option 93 is a
    non-empty list of 16-bit values. The message type is known and matches ``op``. A violation
    raises :class:`MalformedPacket`, which is a ``ValueError``, so :func:`decode` needs no second
    set of checks. Header integers out of their wire range raise a plain ``ValueError``. The
    typed accessors for the checked options therefore never fail. The other accessors return
    ``None`` or ``()`` when an option is absent or its value is unusable.

    Use :func:`attrs.evolve`, :meth:`with_option` or :meth:`without_option` to derive a changed
    copy, and :func:`make_reply` to start a reply.
    """

    op: int = Op.BOOTREQUEST
    htype: int = 1
    hlen: int = 6
    hops: int = 0
    xid: int = 0
    secs: int = 0
    flags: int = 0
    ciaddr: ipaddress.IPv4Address = attrs.field(default=_ZERO, converter=_to_ipv4)
    yiaddr: ipaddress.IPv4Address = attrs.field(default=_ZERO, converter=_to_ipv4)
    siaddr: ipaddress.IPv4Address = attrs.field(default=_ZERO, converter=_to_ipv4)
    giaddr: ipaddress.IPv4Address = attrs.field(default=_ZERO, converter=_to_ipv4)
    chaddr: bytes = attrs.field(default=bytes(16), converter=_to_chaddr)
    sname: bytes = attrs.field(default=b"", converter=_to_name)
    file: bytes = attrs.field(default=b"", converter=_to_name)
    options: Options = attrs.field(default=(), converter=_to_options)
    quirks: tuple[str, ...] = attrs.field(default=(), eq=False, repr=False)
    """What the decoder tolerated (missing END, overload, joined instances), for debug logs.

    Not part of equality: two packets with the same content are equal however they were framed.
    """

    _values: Mapping[int, bytes] = attrs.field(init=False, eq=False, repr=False)
    """The options by code, built once: the engine asks a request for a dozen of them."""
    _mac: MacAddress | object | None = attrs.field(init=False, eq=False, repr=False, default=_UNSET)
    """:attr:`mac` once asked for (the engine, the policy question and the event each ask)."""

    def __attrs_post_init__(self) -> None:
        if not getattr(_checked, "by_decode", False):
            _check(self)
        object.__setattr__(self, "_values", dict(self.options))

    # -- generic option access -----------------------------------------------------------------

    def get(self, code: int) -> bytes | None:
        """The raw value of option ``code``, or ``None`` if the packet does not carry it."""
        return self._values.get(code)

    def __contains__(self, code: int) -> bool:
        return code in self._values

    @property
    def option_map(self) -> Mapping[int, bytes]:
        """The options by code (read-only; the same values as ``options``)."""
        return self._values

    def with_option(self, code: int, value: bytes) -> DhcpPacket:
        """A copy with option ``code`` set to ``value``: replaced in place, or appended."""
        options = list(self.options)
        for index, (option_code, _) in enumerate(options):
            if option_code == code:
                options[index] = (code, value)
                break
        else:
            options.append((code, value))
        return attrs.evolve(self, options=tuple(options))

    def without_option(self, *codes: int) -> DhcpPacket:
        """A copy without the given options (absent codes are ignored)."""
        return attrs.evolve(self, options=tuple(o for o in self.options if o[0] not in codes))

    # -- header views ----------------------------------------------------------------------------

    @property
    def mac(self) -> MacAddress | None:
        """The client's Ethernet address; ``None`` unless htype = 1 and hlen = 6."""
        mac = self._mac
        if mac is _UNSET:
            mac = MacAddress(self.chaddr[:6]) if self.htype == 1 and self.hlen == 6 else None
            object.__setattr__(self, "_mac", mac)
        return mac  # type: ignore[return-value]

    @property
    def broadcast(self) -> bool:
        """The BROADCAST flag (bit 15 of ``flags``): the client cannot take unicast yet (§1.6)."""
        return bool(self.flags & _BROADCAST_FLAG)

    # -- typed accessors (checked on construction: never fail) ----------------------------------

    @property
    def message_type(self) -> MessageType | None:
        """Option 53, or ``None`` for a plain BOOTP message."""
        value = self.get(OptionCode.MESSAGE_TYPE)
        return None if value is None else _MESSAGE_TYPES[value[0]]

    @property
    def requested_ip(self) -> ipaddress.IPv4Address | None:
        """Option 50: the address asked for in DISCOVER and SELECTING/INIT-REBOOT REQUEST."""
        return self._ipv4(OptionCode.REQUESTED_IP)

    @property
    def server_id(self) -> ipaddress.IPv4Address | None:
        """Option 54: which server a REQUEST selects (§1.4), or which server sent a reply."""
        return self._ipv4(OptionCode.SERVER_ID)

    @property
    def subnet_selection(self) -> ipaddress.IPv4Address | None:
        """Option 118 (RFC 3011): the subnet a relay wants the address from, instead of giaddr."""
        return self._ipv4(OptionCode.SUBNET_SELECTION)

    @property
    def lease_time(self) -> int | None:
        """Option 51 in seconds (0xFFFFFFFF means infinite)."""
        return self._uint(OptionCode.LEASE_TIME)

    @property
    def max_message_size(self) -> int | None:
        """Option 57 as sent, which may be below the legal 576. :meth:`max_reply_size` clamps it."""
        return self._uint(OptionCode.MAX_MESSAGE_SIZE)

    @property
    def client_arches(self) -> tuple[Arch, ...]:
        """Option 93 in client order, ``()`` if absent (RFC 4578 §2.1; reference §2.4)."""
        value = self.get(OptionCode.CLIENT_ARCH)
        return () if value is None else decode_arches(value)

    # -- typed accessors (lenient: odd values read as absent) -----------------------------------

    @property
    def client_id(self) -> bytes | None:
        """Option 61 raw (``01`` + MAC from iPXE, or a DUID): the lease key if present (§1.7)."""
        return self.get(OptionCode.CLIENT_ID)

    @property
    def parameter_request_list(self) -> tuple[int, ...]:
        """Option 55 as option codes in the client's order of preference, ``()`` if absent."""
        value = self.get(OptionCode.PARAMETER_REQUEST_LIST)
        return () if value is None else tuple(value)

    @property
    def vendor_class(self) -> bytes | None:
        """Option 60 raw, e.g. ``b"PXEClient:Arch:00000:UNDI:002001"`` (reference §2.1, §3.1)."""
        return self.get(OptionCode.VENDOR_CLASS)

    @property
    def user_classes(self) -> tuple[bytes, ...]:
        """Option 77 read in both its raw (iPXE) and RFC 3004 forms, ``()`` if absent (§4.1)."""
        value = self.get(OptionCode.USER_CLASS)
        return () if value is None else decode_user_classes(value)

    @property
    def hostname(self) -> str | None:
        """Option 12, with trailing NULs removed."""
        value = self.get(OptionCode.HOSTNAME)
        return None if value is None else decode_string(value)

    @property
    def client_ndi(self) -> tuple[int, int, int] | None:
        """Option 94 as ``(type, major, minor)``, ``None`` if absent or not 3 bytes."""
        value = self.get(OptionCode.CLIENT_NDI)
        if value is None:
            return None
        try:
            return decode_client_ndi(value)
        except MalformedPacket:
            return None

    @property
    def client_uuid(self) -> uuid.UUID | None:
        """Option 97's GUID, ``None`` if absent or unreadable. Echo the raw ``get(97)``."""
        value = self.get(OptionCode.CLIENT_UUID)
        if value is None:
            return None
        try:
            return decode_client_uuid(value)
        except MalformedPacket:
            return None

    @property
    def vendor_suboptions(self) -> tuple[tuple[int, bytes], ...]:
        """Option 43 read as PXE sub-option TLVs; ``()`` if absent or not TLVs."""
        return self._suboptions(OptionCode.VENDOR_SPECIFIC, pad_and_end=True)

    @property
    def pxe_boot_item(self) -> tuple[int, int] | None:
        """PXE sub-option 43.71 as ``(type, layer)``, from a boot-server request to 4011 (§2.3)."""
        for code, value in self.vendor_suboptions:
            if code == 71 and len(value) == 4:
                return value[0] << 8 | value[1], value[2] << 8 | value[3]
        return None

    @property
    def ipxe_encap(self) -> tuple[tuple[int, bytes], ...]:
        """Option 175 (iPXE features, bus id, ...) as sub-option TLVs; ``()`` if absent (§4.1)."""
        return self._suboptions(OptionCode.IPXE_ENCAP, pad_and_end=True)

    @property
    def relay_agent_info(self) -> tuple[tuple[int, bytes], ...]:
        """Option 82 sub-options (RFC 3046); ``()`` if absent. The raw value is ``get(82)``."""
        return self._suboptions(OptionCode.RELAY_AGENT_INFO, pad_and_end=False)

    @property
    def link_selection(self) -> ipaddress.IPv4Address | None:
        """Sub-option 82.5 (RFC 3527): the client's subnet when giaddr cannot say it (§1.11)."""
        for code, value in self.relay_agent_info:
            if code == 5 and len(value) == 4:
                return ipaddress.IPv4Address(value)
        return None

    def max_reply_size(self, mtu: int = 1500) -> int:
        """The DHCP payload a reply to this request may use (reference §1.10).

        The rule is min(option 57, MTU) minus 28 bytes of IP and UDP header. Option 57 is clamped
        to its legal minimum of 576, and 576 is assumed when it is absent. Pass the result to
        :func:`encode` as ``max_size``.
        """
        requested = self.max_message_size
        datagram = 576 if requested is None else max(requested, 576)
        return min(datagram, mtu) - 28

    # -- helpers -----------------------------------------------------------------------------------

    def _ipv4(self, code: int) -> ipaddress.IPv4Address | None:
        value = self.get(code)
        return None if value is None else ipaddress.IPv4Address(value)

    def _uint(self, code: int) -> int | None:
        value = self.get(code)
        return None if value is None else int.from_bytes(value, "big")

    def _suboptions(self, code: int, *, pad_and_end: bool) -> tuple[tuple[int, bytes], ...]:
        value = self.get(code)
        if value is None:
            return ()
        try:
            return decode_suboptions(value, pad_and_end=pad_and_end)
        except MalformedPacket:
            return ()


#: Set by :func:`decode` while it builds its packet (per thread: the flag never leaks into a
#: packet another thread builds meanwhile).
_checked = threading.local()


def _check(packet: DhcpPacket) -> None:
    """Enforce the invariants documented on :class:`DhcpPacket`."""
    if packet.op != 1 and packet.op != 2:
        raise MalformedPacket(f"op must be 1 (BOOTREQUEST) or 2 (BOOTREPLY), not {packet.op}")
    if not (
        0 <= packet.htype <= 0xFF
        and 0 <= packet.hlen <= 0xFF
        and 0 <= packet.hops <= 0xFF
        and 0 <= packet.xid <= 0xFFFFFFFF
        and 0 <= packet.secs <= 0xFFFF
        and 0 <= packet.flags <= 0xFFFF
    ):
        raise ValueError(f"a header field is out of range for its wire size: {packet!r}")
    if len(packet.sname) > 64 or len(packet.file) > 128:
        raise ValueError("sname holds at most 64 bytes and file at most 128")
    seen: set[int] = set()
    for item in packet.options:
        if type(item) is not tuple or len(item) != 2:
            raise TypeError(f"an option is a (code, bytes) pair, not {item!r}")
        code, value = item
        if not isinstance(value, bytes):
            raise TypeError(f"option {code} value must be bytes, not {type(value).__name__}")
        if code in seen:
            raise MalformedPacket(
                f"option {code} appears twice; keep one entry (encode splits long values)"
            )
        seen.add(code)
        if not 0 < code < 255:
            raise MalformedPacket(f"option code {code} is not in 1-254 (PAD and END are framing)")
        if code == OptionCode.OVERLOAD:
            raise MalformedPacket(
                "option 52 is framing: decode consumes it and encode never overloads"
            )
    _check_values(packet.op, packet.options)


def _check_values(op: int, options: Options) -> None:
    """The invariants on option values: fixed lengths, the message type, option 93.

    All :func:`decode` has left to check: its scan already yields each code once, in 1-254,
    without option 52, as ``bytes``, and the header fields fit by construction.
    """
    exact = _EXACT_LENGTH
    for code, value in options:
        length = exact.get(code)
        if length is not None and len(value) != length:
            raise MalformedPacket(f"option {code} must be {length} bytes, not {len(value)}")
        if code == _MESSAGE_TYPE_CODE:
            kind_op = _MESSAGE_TYPE_OPS.get(value[0])
            if kind_op is None:
                raise MalformedPacket(f"unknown DHCP message type {value[0]}")
            if kind_op != op:
                kind = _MESSAGE_TYPES[value[0]]
                raise MalformedPacket(f"{kind.name} must have op {kind_op}, not op {op}")
        elif code == _CLIENT_ARCH_CODE and (not value or len(value) % 2):
            raise MalformedPacket(
                f"option 93 must be a positive, even number of bytes, not {len(value)}"
            )


# -- decoding ------------------------------------------------------------------------------------


def _scan(
    data: bytes, start: int, end: int, found: dict[int, bytes], area: str
) -> tuple[bool, int]:
    """Read TLVs from ``data[start:end]`` into ``found``, joining repeated codes (RFC 3396).

    Returns whether an END was seen and how many instances were joined onto earlier ones.
    """
    joined = 0
    position = start
    while position < end:
        code = data[position]
        if code == 0:
            position += 1
            continue
        if code == 255:
            return True, joined
        if position + 1 >= end:
            raise MalformedPacket(
                f"option {code} at offset {position} of the {area} field has no length octet"
            )
        stop = position + 2 + data[position + 1]
        if stop > end:
            raise MalformedPacket(
                f"option {code} at offset {position} of the {area} field claims"
                f" {data[position + 1]} bytes, only {end - position - 2} remain"
            )
        value = data[position + 2 : stop]
        previous = found.get(code)
        if previous is None:
            found[code] = value
        else:
            found[code] = previous + value
            joined += 1
        position = stop
    return False, joined


def decode(data: bytes | bytearray | memoryview) -> DhcpPacket:
    """Parse one DHCP datagram (the UDP payload).

    Raises :class:`MalformedPacket`, and no other exception, for any bytes that are not a DHCP
    message: too short for the header and cookie, a wrong cookie, a bad op or message type, an
    option running past its field, a malformed option 52, or a value that breaks a
    :class:`DhcpPacket` invariant. Bytes after END are ignored. A missing END is tolerated when
    the options run exactly to the end of their field, and is noted in ``quirks``.
    """
    if type(data) is not bytes:
        data = bytes(data)
    size = len(data)
    if size < _OPTIONS_START:
        raise MalformedPacket(
            f"{size} bytes is shorter than the {_OPTIONS_START}-byte header and magic cookie"
        )
    (
        op,
        htype,
        hlen,
        hops,
        xid,
        secs,
        flags,
        ciaddr,
        yiaddr,
        siaddr,
        giaddr,
        chaddr,
        sname,
        file,
        cookie,
    ) = _HEADER.unpack_from(data)
    if cookie != MAGIC_COOKIE:
        raise MalformedPacket(f"magic cookie is {cookie:#010x}, not {MAGIC_COOKIE:#010x}")
    if op != 1 and op != 2:
        raise MalformedPacket(f"op must be 1 (BOOTREQUEST) or 2 (BOOTREPLY), not {op}")

    found: dict[int, bytes] = {}
    quirks: list[str] = []
    ended, joined = _scan(data, _OPTIONS_START, size, found, "options")
    if not ended:
        quirks.append("no END option: the options run to the end of the datagram")
    overload = found.pop(OptionCode.OVERLOAD, None)
    if overload is not None:
        if len(overload) != 1 or not 1 <= overload[0] <= 3:
            raise MalformedPacket(f"option 52 must be one octet 1, 2 or 3, not {overload!r}")
        # RFC 3396 §5: instances are joined in the order options, file, sname.
        if overload[0] & 1:
            joined += _scan(data, _FILE.start, _FILE.stop, found, "file")[1]
            file = b""
        if overload[0] & 2:
            joined += _scan(data, _SNAME.start, _SNAME.stop, found, "sname")[1]
            sname = b""
        if OptionCode.OVERLOAD in found:
            raise MalformedPacket("option 52 may only appear in the main options field")
        quirks.append(f"option 52 = {overload[0]}: options read from file/sname")
    if joined:
        quirks.append(f"{joined} repeated option instances joined (RFC 3396)")

    options = tuple(found.items())
    _check_values(op, options)
    # The rest of DhcpPacket's invariants hold by construction here: do not check them twice.
    # The four addresses are mostly 0.0.0.0 in a request: that one is a shared value.
    _checked.by_decode = True
    try:
        return DhcpPacket(
            op=op,
            htype=htype,
            hlen=hlen,
            hops=hops,
            xid=xid,
            secs=secs,
            flags=flags,
            ciaddr=_ZERO if not ciaddr else ipaddress.IPv4Address(ciaddr),
            yiaddr=_ZERO if not yiaddr else ipaddress.IPv4Address(yiaddr),
            siaddr=_ZERO if not siaddr else ipaddress.IPv4Address(siaddr),
            giaddr=_ZERO if not giaddr else ipaddress.IPv4Address(giaddr),
            chaddr=chaddr,
            sname=sname,
            file=file,
            options=options,
            quirks=tuple(quirks),
        )
    except MalformedPacket:
        raise
    except ValueError as error:  # pragma: no cover - every header value fits by construction
        raise MalformedPacket(str(error)) from error
    finally:
        _checked.by_decode = False


def peek_discover(data: bytes) -> bool:
    """Whether a datagram looks like a DHCPDISCOVER, read without decoding it.

    A BOOTREQUEST whose first option is 53 = DISCOVER: what a backlogged socket reader needs to
    tell the DISCOVERs it may shed from the REQUESTs it must not, at a few bytes per datagram.
    Most clients (perfdhcp, dhclient, udhcpc, PXE ROMs) put option 53 first; a DISCOVER that
    does not is simply read as something else, which is the safe side.
    """
    return data[0:1] == b"\x01" and data[_OPTIONS_START : _OPTIONS_START + 3] == b"\x35\x01\x01"


# -- encoding ------------------------------------------------------------------------------------


def _wire_size(value: bytes) -> int:
    """Bytes an option takes on the wire, counting one code/length pair per 255-byte instance."""
    length = len(value)
    return length + 2 * ((length + 254) // 255 or 1)


def _wire_order(options: Options) -> Options:
    """Apply the two orderings the RFCs demand and keep the caller's order otherwise.

    The subnet mask must come before the router (RFC 2132 §3.3). Option 82 must be the last
    option (RFC 3046 §2.2).
    """
    mask = router = relay = -1
    for index, (code, _) in enumerate(options):
        if code == _RELAY_AGENT_INFO_CODE:
            relay = index
        elif code == _SUBNET_MASK_CODE:
            mask = index
        elif code == _ROUTER_CODE:
            router = index
    misplaced_mask = 0 <= router < mask
    if not misplaced_mask and relay in (-1, len(options) - 1):
        return options
    ordered = list(options)
    if misplaced_mask:
        ordered.insert(router, ordered.pop(mask))
    if relay != -1:
        ordered.sort(key=lambda option: option[0] == _RELAY_AGENT_INFO_CODE)
    return tuple(ordered)


def _fit(options: Options, max_size: int, keep: Collection[int]) -> Options:
    sizes = [_wire_size(value) for _, value in options]
    total = _OPTIONS_START + sum(sizes) + 1  # + END
    if total <= max_size:
        return options
    dropped: set[int] = set()
    for index in range(len(options) - 1, -1, -1):
        if options[index][0] in keep:
            continue
        dropped.add(index)
        total -= sizes[index]
        if total <= max_size:
            break
    else:
        raise PacketTooLarge(
            f"the options to keep need {total} bytes; the budget is {max_size}"
            f" (kept codes: {sorted(code for code, _ in options if code in keep)})"
        )
    return tuple(option for index, option in enumerate(options) if index not in dropped)


def fit(
    packet: DhcpPacket,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    keep: Collection[int] = ESSENTIAL_OPTIONS,
) -> DhcpPacket:
    """The packet as :func:`encode` will send it: options in wire order, trimmed to ``max_size``.

    Options are dropped from the end of the list, skipping codes in ``keep``, until the encoded
    packet fits. So the caller lists options most-important-first (e.g. in the client's
    parameter-request order, reference §1.9). The engine can compare the result with its input
    to log what was dropped. Raises :class:`PacketTooLarge` if the kept options alone do not fit.
    """
    if max_size < MIN_PACKET_SIZE:
        raise ValueError(f"max_size {max_size} is below the {MIN_PACKET_SIZE}-byte minimum")
    options = _fit(_wire_order(packet.options), max_size, keep)
    return packet if options is packet.options else attrs.evolve(packet, options=options)


def encode(
    packet: DhcpPacket,
    *,
    max_size: int = DEFAULT_MAX_SIZE,
    keep: Collection[int] = ESSENTIAL_OPTIONS,
) -> bytes:
    """Serialise a packet into a UDP payload of ``MIN_PACKET_SIZE``..``max_size`` bytes.

    ``max_size`` is the DHCP payload budget. For a reply, pass ``request.max_reply_size(mtu)``,
    i.e. min(option 57, MTU) - 28 (reference §1.10). The default of 548 suits any client. The
    options go out as :func:`fit` returns them. Values over 255 bytes become consecutive
    instances (RFC 3396). No PAD is written between options (the Raspberry Pi 4 rejects it, §1.2).
    END follows, then zeros up to 300 bytes. ``file`` and ``sname`` are never overloaded.

    Raises :class:`ValueError` if ``sname`` exceeds 63 bytes or ``file`` exceeds 127 bytes: both
    must stay NUL-terminated for PXE ROMs (§7.9), and silent truncation would boot the wrong file.
    Raises :class:`PacketTooLarge` as :func:`fit` does.
    """
    if len(packet.sname) > _MAX_SNAME:
        raise ValueError(f"sname is {len(packet.sname)} bytes; at most {_MAX_SNAME} fit with a NUL")
    if len(packet.file) > _MAX_FILE:
        raise ValueError(f"file is {len(packet.file)} bytes; at most {_MAX_FILE} fit with a NUL")
    if max_size < MIN_PACKET_SIZE:
        raise ValueError(f"max_size {max_size} is below the {MIN_PACKET_SIZE}-byte minimum")
    parts = [
        _HEADER.pack(
            packet.op,
            packet.htype,
            packet.hlen,
            packet.hops,
            packet.xid,
            packet.secs,
            packet.flags,
            int(packet.ciaddr),
            int(packet.yiaddr),
            int(packet.siaddr),
            int(packet.giaddr),
            packet.chaddr,
            packet.sname,
            packet.file,
            MAGIC_COOKIE,
        )
    ]
    for code, value in _fit(_wire_order(packet.options), max_size, keep):
        length = len(value)
        if length <= 255:
            parts.append(bytes((code, length)))
            parts.append(value)
        else:
            for start in range(0, length, 255):
                chunk = value[start : start + 255]
                parts.append(bytes((code, len(chunk))))
                parts.append(chunk)
    parts.append(b"\xff")
    encoded = b"".join(parts)
    if len(encoded) < MIN_PACKET_SIZE:
        encoded += bytes(MIN_PACKET_SIZE - len(encoded))
    return encoded


# -- replies -------------------------------------------------------------------------------------


def make_reply(
    request: DhcpPacket,
    message_type: MessageType,
    *,
    ciaddr: ipaddress.IPv4Address | str | int | None = None,
    yiaddr: ipaddress.IPv4Address | str | int = _ZERO,
    siaddr: ipaddress.IPv4Address | str | int = _ZERO,
    sname: bytes | str = b"",
    file: bytes | str = b"",
    options: Iterable[tuple[int, bytes]] = (),
) -> DhcpPacket:
    """Start a reply to ``request`` with the header RFC 2131 Table 3 prescribes (reference §1.5).

    The reply copies ``htype``, ``hlen``, ``xid``, ``flags``, ``giaddr`` and ``chaddr``. It sets
    ``op`` = 2 and ``hops`` = ``secs`` = 0. ``ciaddr`` defaults to the request's for an ACK and to
    0 otherwise. A NAK through a relay gets the BROADCAST flag (RFC 2131 §4.3.2).

    The options are option 53 first, then ``options`` in the caller's priority order. After them
    come the request's client identifier (61, RFC 6842) and relay-agent information (82,
    RFC 3046 §2.2), echoed verbatim unless ``options`` already has them. :func:`encode` moves 82
    to the end.
    """
    if request.op != Op.BOOTREQUEST:
        raise ValueError("only a BOOTREQUEST can be replied to")
    if message_type.op != Op.BOOTREPLY:
        raise ValueError(f"{message_type.name} is not a server message")
    reply_options: list[tuple[int, bytes]] = [
        (OptionCode.MESSAGE_TYPE, bytes((message_type,))),
        *options,
    ]
    present = {code for code, _ in reply_options}
    for echoed in (OptionCode.CLIENT_ID, OptionCode.RELAY_AGENT_INFO):
        value = request.get(echoed)
        if value is not None and echoed not in present:
            reply_options.append((echoed, value))
    flags = request.flags
    if message_type == MessageType.NAK and request.giaddr != _ZERO:
        flags |= _BROADCAST_FLAG
    if ciaddr is None:
        ciaddr = request.ciaddr if message_type == MessageType.ACK else _ZERO
    return DhcpPacket(
        op=Op.BOOTREPLY,
        htype=request.htype,
        hlen=request.hlen,
        hops=0,
        xid=request.xid,
        secs=0,
        flags=flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=request.giaddr,
        chaddr=request.chaddr,
        sname=sname,
        file=file,
        options=tuple(reply_options),
    )
