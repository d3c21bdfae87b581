"""DHCPv4 option codes and the small typed encoders and decoders built on them.

A :class:`~pxetwist.dhcp.packet.DhcpPacket` stores every option as raw ``(code, bytes)``. That way
an option we do not understand is still kept and echoed unchanged. The helpers here turn those
bytes into typed values and back. They are pure functions, so the engine, the tests and policy
plugins all read a value the same way.

Decoders raise :class:`MalformedPacket` when the bytes do not have the shape the option defines.
Encoders raise a plain :class:`ValueError` or :class:`TypeError`: if a value cannot be encoded,
our own code passed it in, and no client is at fault.

References: protocol-reference §1.2 (TLV rules), §1.3 (message types), §2.1-2.2 (PXE options 43,
93, 94, 97), §4.1 (iPXE options 77 and 175).
"""

from __future__ import annotations

import enum
import ipaddress
import struct
import uuid
from collections.abc import Iterable
from typing import Final

from pxetwist.policy.values import Arch

__all__ = [
    "IpxeOption",
    "MalformedPacket",
    "MessageType",
    "Op",
    "OptionCode",
    "PxeVendorOption",
    "decode_arches",
    "decode_client_ndi",
    "decode_client_uuid",
    "decode_ipv4",
    "decode_ipv4_list",
    "decode_string",
    "decode_suboptions",
    "decode_uint8",
    "decode_uint16",
    "decode_uint32",
    "decode_user_classes",
    "encode_arches",
    "encode_client_ndi",
    "encode_client_uuid",
    "encode_ipv4",
    "encode_ipv4_list",
    "encode_string",
    "encode_suboptions",
    "encode_uint8",
    "encode_uint16",
    "encode_uint32",
    "encode_user_classes",
]


class MalformedPacket(ValueError):
    """Bytes from the network that are not a well-formed DHCP message or option.

    This is the one exception type the DHCP codec raises for bad input. The protocol layer catches
    it, logs it with the peer's address and drops the datagram. Its canonical import path is
    :mod:`pxetwist.dhcp.packet`. It is defined here so that the option decoders can raise it
    without a circular import.
    """


class Op(enum.IntEnum):
    """The BOOTP ``op`` field (RFC 2131 §2): who sent the message."""

    BOOTREQUEST = 1
    BOOTREPLY = 2


class MessageType(enum.IntEnum):
    """Option 53, the DHCP message type (RFC 2132 §9.6, RFC 3203, RFC 4388; reference §1.3)."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    DECLINE = 4
    ACK = 5
    NAK = 6
    RELEASE = 7
    INFORM = 8
    FORCERENEW = 9
    LEASEQUERY = 10
    LEASEUNASSIGNED = 11
    LEASEUNKNOWN = 12
    LEASEACTIVE = 13

    @property
    def op(self) -> Op:
        """The ``op`` a message of this type must carry.

        A mismatch means the datagram is corrupt or forged (reference §1.1).
        """
        return _OP_OF_TYPE[self]


_OP_OF_TYPE: Final[dict[MessageType, Op]] = {
    MessageType.DISCOVER: Op.BOOTREQUEST,
    MessageType.OFFER: Op.BOOTREPLY,
    MessageType.REQUEST: Op.BOOTREQUEST,
    MessageType.DECLINE: Op.BOOTREQUEST,
    MessageType.ACK: Op.BOOTREPLY,
    MessageType.NAK: Op.BOOTREPLY,
    MessageType.RELEASE: Op.BOOTREQUEST,
    MessageType.INFORM: Op.BOOTREQUEST,
    MessageType.FORCERENEW: Op.BOOTREPLY,
    MessageType.LEASEQUERY: Op.BOOTREQUEST,
    MessageType.LEASEUNASSIGNED: Op.BOOTREPLY,
    MessageType.LEASEUNKNOWN: Op.BOOTREPLY,
    MessageType.LEASEACTIVE: Op.BOOTREPLY,
}


class OptionCode(enum.IntEnum):
    """The DHCPv4 option codes pxetwist reads or writes (RFC 2132 and later RFCs).

    Packets store codes as plain ``int``. Any code, known or not, is carried unchanged. These
    names exist so that code and tests can say ``OptionCode.CLIENT_ARCH`` and not ``93``.
    """

    PAD = 0
    SUBNET_MASK = 1
    TIME_OFFSET = 2
    ROUTER = 3
    DNS = 6
    HOSTNAME = 12
    BOOT_FILE_SIZE = 13
    DOMAIN_NAME = 15
    ROOT_PATH = 17
    INTERFACE_MTU = 26
    BROADCAST = 28  # broadcast *address* (RFC 2132 §5.3), not the BOOTP broadcast flag
    NTP_SERVERS = 42
    VENDOR_SPECIFIC = 43
    REQUESTED_IP = 50
    LEASE_TIME = 51
    OVERLOAD = 52
    MESSAGE_TYPE = 53
    SERVER_ID = 54
    PARAMETER_REQUEST_LIST = 55
    MESSAGE = 56
    MAX_MESSAGE_SIZE = 57
    RENEWAL_T1 = 58
    REBINDING_T2 = 59
    VENDOR_CLASS = 60
    CLIENT_ID = 61
    TFTP_SERVER = 66
    BOOTFILE = 67
    USER_CLASS = 77
    CLIENT_FQDN = 81
    RELAY_AGENT_INFO = 82
    CLIENT_ARCH = 93
    CLIENT_NDI = 94
    CLIENT_UUID = 97
    SUBNET_SELECTION = 118
    DOMAIN_SEARCH = 119
    CLASSLESS_STATIC_ROUTE = 121
    IPXE_ENCAP = 175
    ISCSI_INITIATOR_IQN = 203
    PXELINUX_MAGIC = 208
    PXELINUX_CONFIGFILE = 209
    PXELINUX_PATHPREFIX = 210
    PXELINUX_REBOOTTIME = 211
    END = 255


class PxeVendorOption(enum.IntEnum):
    """PXE sub-options carried inside option 43 (PXE 2.1 Table 2-1; reference §2.2)."""

    MTFTP_IP = 1
    MTFTP_CPORT = 2
    MTFTP_SPORT = 3
    MTFTP_TMOUT = 4
    MTFTP_DELAY = 5
    DISCOVERY_CONTROL = 6
    DISCOVERY_MCAST_ADDR = 7
    BOOT_SERVERS = 8
    BOOT_MENU = 9
    MENU_PROMPT = 10
    MCAST_ADDRS_ALLOC = 11
    CREDENTIAL_TYPES = 12
    BOOT_ITEM = 71
    END = 255


class IpxeOption(enum.IntEnum):
    """iPXE sub-options inside option 175, the Etherboot encapsulation (reference §4.1-4.2)."""

    PRIORITY = 1
    KEEP_SAN = 8
    SKIP_SAN_BOOT = 9
    FEATURE_HTTP = 0x13
    FEATURE_HTTPS = 0x14
    FEATURE_TFTP = 0x15
    FEATURE_DNS = 0x17
    FEATURE_BZIMAGE = 0x18
    FEATURE_PXE = 0x21
    FEATURE_EFI = 0x24
    FEATURE_MENU = 0x27
    FEATURE_NFS = 0x29
    SCRIPTLET = 0x51
    NO_PXEDHCP = 0xB0
    BUS_ID = 0xB1
    VERSION = 0xEB


_U16: Final = struct.Struct("!H")
_U32: Final = struct.Struct("!I")


def _require_length(value: bytes, length: int, what: str) -> None:
    if len(value) != length:
        raise MalformedPacket(f"{what} must be {length} bytes, not {len(value)}")


# -- addresses -------------------------------------------------------------------------------


def encode_ipv4(address: ipaddress.IPv4Address | str | int) -> bytes:
    """One IPv4 address as 4 octets (options 1, 28, 50, 54, 118)."""
    return ipaddress.IPv4Address(address).packed


def decode_ipv4(value: bytes) -> ipaddress.IPv4Address:
    """Read exactly one IPv4 address. Any other length is malformed."""
    _require_length(value, 4, "an IPv4 address option")
    return ipaddress.IPv4Address(value)


def encode_ipv4_list(addresses: Iterable[ipaddress.IPv4Address | str | int]) -> bytes:
    """A non-empty list of IPv4 addresses (options 3, 6, 42; RFC 2132 minimum length 4)."""
    encoded = b"".join(ipaddress.IPv4Address(address).packed for address in addresses)
    if not encoded:
        raise ValueError("an address-list option needs at least one address")
    return encoded


def decode_ipv4_list(value: bytes) -> tuple[ipaddress.IPv4Address, ...]:
    """Read a list of IPv4 addresses. Its length must be a positive multiple of 4."""
    if not value or len(value) % 4:
        raise MalformedPacket(
            f"an address-list option must be a positive multiple of 4 bytes, not {len(value)}"
        )
    return tuple(ipaddress.IPv4Address(value[i : i + 4]) for i in range(0, len(value), 4))


# -- integers --------------------------------------------------------------------------------


def encode_uint8(number: int) -> bytes:
    """One octet (option 53, option 52, PXE discovery control)."""
    if not 0 <= number <= 0xFF:
        raise ValueError(f"{number} does not fit in one octet")
    return bytes((number,))


def decode_uint8(value: bytes) -> int:
    """Read exactly one octet."""
    _require_length(value, 1, "a one-octet option")
    return value[0]


def encode_uint16(number: int) -> bytes:
    """A network-order 16-bit unsigned integer (option 57 and others)."""
    if not 0 <= number <= 0xFFFF:
        raise ValueError(f"{number} does not fit in 16 bits")
    return _U16.pack(number)


def decode_uint16(value: bytes) -> int:
    """Read exactly one network-order 16-bit unsigned integer."""
    _require_length(value, 2, "a 16-bit option")
    number: int = _U16.unpack(value)[0]
    return number


def encode_uint32(number: int) -> bytes:
    """A network-order 32-bit unsigned integer (options 51, 58, 59, 211).

    For option 51, 0xFFFFFFFF means an infinite lease.
    """
    if not 0 <= number <= 0xFFFFFFFF:
        raise ValueError(f"{number} does not fit in 32 bits")
    return _U32.pack(number)


def decode_uint32(value: bytes) -> int:
    """Read exactly one network-order 32-bit unsigned integer."""
    _require_length(value, 4, "a 32-bit option")
    number: int = _U32.unpack(value)[0]
    return number


# -- text ------------------------------------------------------------------------------------


def encode_string(text: str, *, nul_terminate: bool = False) -> bytes:
    """Text option bytes (UTF-8; plain ASCII for every name a boot client reads).

    RFC 2132 §2 says not to send a trailing NUL. Old PXE ROMs still read option 67 as a C string
    (reference §5 quirk 9), so option 67 and option 66 are sent with ``nul_terminate=True``.
    """
    encoded = text.encode("utf-8")
    return encoded + b"\x00" if nul_terminate else encoded


def decode_string(value: bytes) -> str:
    """Text from an option, without the trailing NULs RFC 2132 §2 says a receiver must delete.

    Bytes that are not valid UTF-8 are replaced, not rejected, because this text is only logged
    or matched against the config.
    """
    return value.rstrip(b"\x00").decode("utf-8", "replace")


# -- PXE client options (RFC 4578) -----------------------------------------------------------


def encode_arches(arches: Iterable[Arch | int]) -> bytes:
    """Option 93: one or more 16-bit architecture types."""
    encoded = b"".join(encode_uint16(int(arch)) for arch in arches)
    if not encoded:
        raise ValueError("option 93 needs at least one architecture")
    return encoded


def decode_arches(value: bytes) -> tuple[Arch, ...]:
    """Read option 93: an even, non-zero number of bytes (RFC 4578 §2.1).

    Unknown values become ``Arch.UNKNOWN_<n>`` pseudo-members and are not rejected. A new firmware
    is then logged and given a default instead of being dropped.
    """
    arches = _DECODED_ARCHES.get(value)
    if arches is not None:
        return arches
    if not value or len(value) % 2:
        raise MalformedPacket(
            f"option 93 must be a positive, even number of bytes, not {len(value)}"
        )
    arches = tuple(Arch(value[i] << 8 | value[i + 1]) for i in range(0, len(value), 2))
    if len(_DECODED_ARCHES) >= 1024:  # a client can send any bytes: keep the memo bounded
        _DECODED_ARCHES.clear()
    _DECODED_ARCHES[value] = arches
    return arches


#: Option 93 values already read: a fleet sends a handful of them, and looking one up costs
#: a dict probe where building it costs an enum call per architecture (every packet asks).
_DECODED_ARCHES: dict[bytes, tuple[Arch, ...]] = {}


def encode_client_ndi(interface_type: int, major: int, minor: int) -> bytes:
    """Option 94: network interface type (1 = UNDI), major and minor revision (RFC 4578 §2.2)."""
    return bytes((interface_type, major, minor))


def decode_client_ndi(value: bytes) -> tuple[int, int, int]:
    """Read option 94 as ``(type, major, minor)``, e.g. ``(1, 2, 1)`` for UNDI 2.1."""
    _require_length(value, 3, "option 94")
    return value[0], value[1], value[2]


def encode_client_uuid(guid: uuid.UUID) -> bytes:
    """Option 97: type 0 followed by the 16-byte GUID in EFI (mixed-endian) byte order."""
    return b"\x00" + guid.bytes_le


def decode_client_uuid(value: bytes) -> uuid.UUID:
    """Read option 97 leniently (reference §2.1, §7.3).

    The RFC 4578 §2.3 form is type 0 followed by 16 bytes. A bare 16-byte GUID is also accepted,
    because a real fixture hints at clients that send one. The first three GUID fields are
    little-endian, as in EFI and SMBIOS. So ``str()`` of the result matches what ``dmidecode``
    prints on the machine.
    """
    if len(value) == 17 and value[0] == 0:
        return uuid.UUID(bytes_le=value[1:])
    if len(value) == 16:
        return uuid.UUID(bytes_le=value)
    raise MalformedPacket(f"option 97 must be a 0 type octet and a 16-byte GUID, not {value!r}")


# -- user class (RFC 3004 and iPXE's raw form) -----------------------------------------------


def encode_user_classes(classes: Iterable[bytes]) -> bytes:
    """Option 77 in RFC 3004 form: each class prefixed with its length."""
    parts: list[bytes] = []
    for user_class in classes:
        if not 1 <= len(user_class) <= 255:
            raise ValueError(f"a user class is 1-255 bytes, not {len(user_class)}")
        parts.append(bytes((len(user_class),)))
        parts.append(user_class)
    return b"".join(parts)


def decode_user_classes(value: bytes) -> tuple[bytes, ...]:
    """Read option 77 in either of the forms seen in the wild (reference §4.1, §5 quirk 19).

    If the bytes split exactly into RFC 3004 ``len, data`` items with non-zero lengths, they are
    read that way: ``b"\\x04iPXE"`` gives ``(b"iPXE",)``. Otherwise the whole value is one class,
    as iPXE and ISC dhcpd send it: ``b"iPXE"`` also gives ``(b"iPXE",)``. This never raises,
    because every byte string can be read one way or the other.
    """
    classes: list[bytes] = []
    position = 0
    end = len(value)
    while position < end:
        length = value[position]
        stop = position + 1 + length
        if length == 0 or stop > end:
            return (value,)
        classes.append(value[position + 1 : stop])
        position = stop
    return tuple(classes)


# -- encapsulated sub-options (43, 82, 175) --------------------------------------------------


def encode_suboptions(items: Iterable[tuple[int, bytes]], *, terminate: bool = True) -> bytes:
    """Sub-option TLVs for an encapsulating option.

    With ``terminate`` (the default), 255 is appended. PXE option 43 is sent that way by dnsmasq,
    pixiecore and PyPXE, and EDK2 expects it (reference §1.2, §2.2). Use ``terminate=False`` for
    option 82, which has no END.
    """
    parts: list[bytes] = []
    for code, value in items:
        if not 1 <= code <= 254:
            raise ValueError(f"sub-option code {code} is not in 1-254")
        if len(value) > 255:
            raise ValueError(f"sub-option {code} is {len(value)} bytes; at most 255 fit")
        parts.append(bytes((code, len(value))))
        parts.append(value)
    if terminate:
        parts.append(b"\xff")
    return b"".join(parts)


def decode_suboptions(value: bytes, *, pad_and_end: bool = True) -> tuple[tuple[int, bytes], ...]:
    """Read sub-option TLVs in order. Repeated codes are kept as separate entries.

    With ``pad_and_end`` (the default, for options 43 and 175), sub-option 0 is a single-byte PAD
    and 255 ends the list. A missing 255 is tolerated. With ``pad_and_end=False`` (option 82,
    RFC 3046), every code has a length. A sub-option whose length runs past the end raises
    :class:`MalformedPacket`.
    """
    items: list[tuple[int, bytes]] = []
    position = 0
    end = len(value)
    while position < end:
        code = value[position]
        if pad_and_end:
            if code == 0:
                position += 1
                continue
            if code == 255:
                break
        if position + 1 >= end:
            raise MalformedPacket(f"sub-option {code} at offset {position} has no length octet")
        stop = position + 2 + value[position + 1]
        if stop > end:
            raise MalformedPacket(
                f"sub-option {code} at offset {position} claims {value[position + 1]} bytes,"
                f" only {end - position - 2} remain"
            )
        items.append((code, value[position + 2 : stop]))
        position = stop
    return tuple(items)
