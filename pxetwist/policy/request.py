"""What a machine asks: the :class:`BootRequest` every front end builds for the policy chain."""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from ipaddress import IPv4Address

import attrs

from pxetwist.policy.values import Arch, Firmware, Isa, MacAddress, Stage

#: User classes (option 77) that mean "this client is iPXE"; operators can add their own builds'.
DEFAULT_IPXE_USER_CLASSES: tuple[bytes, ...] = (b"iPXE",)


@attrs.frozen
class BootRequest:
    """Everything pxetwist knows about a booting machine at the moment it asks.

    DHCP fills most fields from the packet; TFTP and HTTP fill what they can (the MAC from what
    pxetwist has seen at that address, the path asked for).  Policies must treat every field but
    ``mac`` and ``stage`` as possibly missing.

    ``firmware`` is worked out on first use and kept: every DHCP packet asks for it several
    times (engine, policies, the event), and the request never changes.
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
    _firmware: Firmware | None = attrs.field(init=False, default=None, eq=False, repr=False)

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
        """Classify the client (see :meth:`_classify`), once."""
        firmware = self._firmware
        if firmware is None:
            firmware = self._classify()
            object.__setattr__(self, "_firmware", firmware)
        return firmware

    def _classify(self) -> Firmware:
        """iPXE first: an iPXE ROM also says ``PXEClient``."""
        if any(user_class in self.ipxe_user_classes for user_class in self.user_classes):
            return Firmware.IPXE
        if self.ipxe_encap is not None and b"iPXE" in self.ipxe_user_classes:
            # Option 175 marks any iPXE; with only a custom class configured, a vendor iPXE ROM
            # (QEMU, OVMF) must get our iPXE build first (protocol-reference §4.2).
            return Firmware.IPXE
        vendor = self.vendor_class or b""
        if vendor.startswith(b"U-Boot"):
            # U-Boot's `dhcp` names its build in 60 (protocol-reference firmware notes); its EFI
            # boot step says PXEClient instead and is a UEFI client like any other.
            return Firmware.UBOOT
        if vendor.startswith(b"HTTPClient"):
            return Firmware.HTTP_BOOT
        if vendor.startswith(b"PXEClient"):
            return Firmware.PXE_ROM
        arch = self.arch
        if arch is not None:
            if arch in _UBOOT_ARCHES:
                return Firmware.UBOOT
            return Firmware.HTTP_BOOT if arch.is_http_boot else Firmware.PXE_ROM
        return Firmware.PLAIN

    @property
    def isa(self) -> Isa | None:
        """The client's processor family: from option 93, else from U-Boot's option 60.

        Older U-Boot builds send 93 = 0x100 (not an IANA value) and name the CPU only in 60
        (``U-Boot.armv7``, ``U-Boot.armv8``); a client whose family is unknown is ``None``.
        """
        arch = self.arch
        if arch is not None and arch.isa is not None:
            return arch.isa
        vendor = self.vendor_class or b""
        for prefix, isa in _UBOOT_VENDOR_ISA:
            if vendor.startswith(prefix):
                return isa
        return None


#: Option 93 values only U-Boot sends (RFC 4578 registry: "ARM 32/64-bit uboot").
_UBOOT_ARCHES = frozenset({Arch.UBOOT_ARM32, Arch.UBOOT_ARM64})

#: U-Boot's option 60 (CONFIG_BOOTP_VCI_STRING defaults), most specific first.
_UBOOT_VENDOR_ISA: tuple[tuple[bytes, Isa], ...] = (
    (b"U-Boot.armv8", Isa.ARM64),
    (b"U-Boot.arm", Isa.ARM32),  # U-Boot.arm and U-Boot.armv7
    (b"U-Boot.riscv64", Isa.RISCV64),
    (b"U-Boot.riscv32", Isa.RISCV32),
)


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
    """Option 93's architectures, first of each kept; values already ``Arch`` are not looked up
    again (DHCP hands over decoded members, and an enum call costs on every packet)."""
    return tuple(dict.fromkeys(value if type(value) is Arch else Arch(value) for value in values))
