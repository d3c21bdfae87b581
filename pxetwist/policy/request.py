"""What a machine asks: the :class:`BootRequest` every front end builds for the policy chain."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from ipaddress import IPv4Address

import attrs

from pxetwist.policy.values import Arch, Firmware, MacAddress, Stage

#: User classes (option 77) that mean "this client is iPXE"; operators can add their own builds'.
DEFAULT_IPXE_USER_CLASSES: tuple[bytes, ...] = (b"iPXE",)


@attrs.frozen
class BootRequest:
    """Everything pxetwist knows about a booting machine at the moment it asks.

    DHCP fills most fields from the packet; TFTP and HTTP fill what they can (the MAC from what
    pxetwist has seen at that address, the path asked for).  Policies must treat every field but
    ``mac`` and ``stage`` as possibly missing.
    """

    mac: MacAddress
    stage: Stage
    arches: tuple[Arch, ...] = ()
    vendor_class: bytes | None = None
    user_classes: tuple[bytes, ...] = ()
    uuid: uuid.UUID | None = None
    ipxe_encap: bytes | None = None  # option 175: present only in iPXE's requests
    relay_address: IPv4Address | None = None  # giaddr
    relay_info: bytes | None = None  # option 82, raw
    client_address: IPv4Address | None = None
    server_address: IPv4Address | None = None
    interface: str | None = None
    path: str | None = None  # the file a TFTP or HTTP request names
    ipxe_user_classes: tuple[bytes, ...] = DEFAULT_IPXE_USER_CLASSES

    @property
    def arch(self) -> Arch | None:
        """The first architecture the client offers, normalised (9 is treated as 7).

        Option 93 may list several; the first known one wins, as smee does; an unknown one is
        still returned when nothing else is offered, so a policy can log it and default.
        """
        for arch in self.arches:
            if arch.is_known:
                return arch.normalized()
        return self.arches[0] if self.arches else None

    @property
    def firmware(self) -> Firmware:
        """Classify the client, iPXE first: an iPXE ROM also says ``PXEClient``."""
        if any(user_class in self.ipxe_user_classes for user_class in self.user_classes):
            return Firmware.IPXE
        if self.ipxe_encap is not None and b"iPXE" in self.ipxe_user_classes:
            # Option 175 marks any iPXE; with only a custom class configured, a vendor iPXE ROM
            # (QEMU, OVMF) must get our iPXE build first (protocol-reference §4.2).
            return Firmware.IPXE
        vendor = self.vendor_class or b""
        if vendor.startswith(b"HTTPClient"):
            return Firmware.HTTP_BOOT
        if vendor.startswith(b"PXEClient"):
            return Firmware.PXE_ROM
        arch = self.arch
        if arch is not None:
            return Firmware.HTTP_BOOT if arch.is_http_boot else Firmware.PXE_ROM
        return Firmware.PLAIN


def parse_user_class(raw: bytes) -> tuple[bytes, ...]:
    """Decode option 77 in either form real clients send.

    iPXE sends the bare string ``iPXE``; RFC 3004 wants length-prefixed items (``\\x04iPXE``).
    A value that does not parse cleanly as RFC 3004 is taken as one raw class.
    """
    items: list[bytes] = []
    offset = 0
    while offset < len(raw):
        length = raw[offset]
        end = offset + 1 + length
        if length == 0 or end > len(raw):
            return (raw,)
        items.append(raw[offset + 1 : end])
        offset = end
    return tuple(items) if items else ((raw,) if raw else ())


def unique_arches(values: Iterable[int]) -> tuple[Arch, ...]:
    return tuple(dict.fromkeys(Arch(value) for value in values))
