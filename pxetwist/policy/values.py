"""Small frozen values every protocol and plugin shares: MAC addresses, architectures, stages.

They live here, not in a protocol package, because DHCP, TFTP, HTTP and third-party policies all
speak about the same machine and must agree on how it is named.
"""

from __future__ import annotations

import enum
import re

import attrs

_HEX_ONLY = re.compile(r"[0-9a-fA-F]{12}")
_SEPARATED = re.compile(r"[0-9a-fA-F]{1,2}([:-][0-9a-fA-F]{1,2}){5}")
_CISCO = re.compile(r"[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}\.[0-9a-fA-F]{4}")


class InvalidMacAddress(ValueError):
    """Text that no common MAC notation matches."""


@attrs.frozen(order=True)
class MacAddress:
    """A 48-bit Ethernet hardware address.

    Kept as six raw octets so that every notation (``52:54:00:12:34:56``, ``52-54-00-12-34-56``,
    ``5254.0012.3456``, ``525400123456``) compares equal, and so that lookups by MAC from DHCP
    (raw ``chaddr``) and from the config (text) meet in one key.
    """

    octets: bytes = attrs.field()

    @octets.validator
    def _six_octets(self, _attribute: object, value: bytes) -> None:
        if not isinstance(value, bytes) or len(value) != 6:
            raise InvalidMacAddress(f"a MAC address has 6 octets, not {value!r}")

    @classmethod
    def parse(cls, text: str) -> MacAddress:
        """Read any common notation; raise :class:`InvalidMacAddress` otherwise."""
        cleaned = text.strip()
        if _SEPARATED.fullmatch(cleaned):
            parts = re.split(r"[:-]", cleaned)
            return cls(bytes(int(part, 16) for part in parts))
        if _CISCO.fullmatch(cleaned) or _HEX_ONLY.fullmatch(cleaned):
            return cls(bytes.fromhex(cleaned.replace(".", "")))
        raise InvalidMacAddress(f"{text!r} is not a MAC address")

    def __str__(self) -> str:
        return ":".join(f"{octet:02x}" for octet in self.octets)

    @property
    def dashed(self) -> str:
        """``52-54-00-12-34-56``, as pxelinux and GRUB spell it in file names."""
        return "-".join(f"{octet:02x}" for octet in self.octets)

    @property
    def pxelinux_name(self) -> str:
        """The ``01-<mac>`` name pxelinux asks for first (ARP hardware type 1 prefix)."""
        return "01-" + self.dashed


class Arch(enum.IntEnum):
    """Client system architecture from DHCP option 93 (IANA "Processor Architecture Types").

    Values follow protocol-reference §2.4, with RFC 4578 erratum 4624 applied (7 is x64 UEFI,
    9 is EBC).  Unknown values are kept, not rejected: ``Arch(4242)`` is a pseudo-member named
    ``UNKNOWN_4242``, so a new firmware is logged and sent to a default instead of dropped.
    """

    BIOS = 0
    NEC_PC98 = 1
    ITANIUM = 2
    DEC_ALPHA = 3
    ARC_X86 = 4
    INTEL_LEAN = 5
    EFI_IA32 = 6
    EFI_X86_64 = 7
    EFI_XSCALE = 8
    EFI_BC = 9
    EFI_ARM32 = 10
    EFI_ARM64 = 11
    PPC_OPEN_FIRMWARE = 12
    PPC_EPAPR = 13
    POWER_OPAL = 14
    HTTP_EFI_IA32 = 15
    HTTP_EFI_X86_64 = 16
    HTTP_EFI_BC = 17
    HTTP_EFI_ARM32 = 18
    HTTP_EFI_ARM64 = 19
    HTTP_BIOS = 20
    UBOOT_ARM32 = 21
    UBOOT_ARM64 = 22
    HTTP_UBOOT_ARM32 = 23
    HTTP_UBOOT_ARM64 = 24
    EFI_RISCV32 = 25
    HTTP_EFI_RISCV32 = 26
    EFI_RISCV64 = 27
    HTTP_EFI_RISCV64 = 28
    EFI_RISCV128 = 29
    HTTP_EFI_RISCV128 = 30
    S390_BASIC = 31
    S390_EXTENDED = 32
    EFI_MIPS32 = 33
    EFI_MIPS64 = 34
    EFI_SUNWAY32 = 35
    EFI_SUNWAY64 = 36
    EFI_LOONGARCH32 = 37
    HTTP_EFI_LOONGARCH32 = 38
    EFI_LOONGARCH64 = 39
    HTTP_EFI_LOONGARCH64 = 40
    ARM_RPIBOOT = 41

    @classmethod
    def _missing_(cls, value: object) -> Arch | None:
        if isinstance(value, int) and 0 <= value <= 0xFFFF:
            member = int.__new__(cls, value)
            member._name_ = f"UNKNOWN_{value}"
            member._value_ = value
            return cls._value2member_map_.setdefault(value, member)  # type: ignore[return-value]
        return None

    @property
    def is_known(self) -> bool:
        return not self.name.startswith("UNKNOWN_")

    def normalized(self) -> Arch:
        """Arch 9 (EBC) is what some x64 firmware still sends for x64 UEFI: treat it as 7."""
        if self is Arch.EFI_BC:
            return Arch.EFI_X86_64
        if self is Arch.HTTP_EFI_BC:
            return Arch.HTTP_EFI_X86_64
        return self

    @property
    def is_http_boot(self) -> bool:
        return self.normalized() in _HTTP_ARCHES

    @property
    def boot_key(self) -> str | None:
        """The key of the config's ``boot`` table this architecture boots from, if any."""
        return _BOOT_KEYS.get(self.normalized())


_HTTP_ARCHES = frozenset(
    {
        Arch.HTTP_EFI_IA32,
        Arch.HTTP_EFI_X86_64,
        Arch.HTTP_EFI_ARM32,
        Arch.HTTP_EFI_ARM64,
        Arch.HTTP_BIOS,
        Arch.HTTP_UBOOT_ARM32,
        Arch.HTTP_UBOOT_ARM64,
        Arch.HTTP_EFI_RISCV32,
        Arch.HTTP_EFI_RISCV64,
        Arch.HTTP_EFI_RISCV128,
        Arch.HTTP_EFI_LOONGARCH32,
        Arch.HTTP_EFI_LOONGARCH64,
    }
)

_BOOT_KEYS: dict[Arch, str] = {
    Arch.BIOS: "bios",
    Arch.EFI_IA32: "efi-ia32",
    Arch.EFI_X86_64: "efi-x86_64",
    Arch.EFI_ARM32: "efi-arm32",
    Arch.EFI_ARM64: "efi-arm64",
    Arch.EFI_RISCV64: "efi-riscv64",
    Arch.EFI_LOONGARCH64: "efi-loongarch64",
    Arch.HTTP_EFI_IA32: "http-efi-ia32",
    Arch.HTTP_EFI_X86_64: "http-efi-x86_64",
    Arch.HTTP_EFI_ARM32: "http-efi-arm32",
    Arch.HTTP_EFI_ARM64: "http-efi-arm64",
    Arch.HTTP_EFI_RISCV64: "http-efi-riscv64",
    Arch.HTTP_EFI_LOONGARCH64: "http-efi-loongarch64",
    Arch.HTTP_BIOS: "http-bios",
}

#: Every key the ``boot`` table may hold, in the order the example config documents them.
BOOT_KEYS: tuple[str, ...] = ("ipxe", *dict.fromkeys(_BOOT_KEYS.values()))


class Firmware(enum.Enum):
    """What kind of network-boot client is asking, which decides the shape of the answer."""

    PXE_ROM = "pxe"  # a PXE ROM or UEFI PXE stack: wants an NBP over TFTP
    IPXE = "ipxe"  # iPXE: wants a script URL (ends the chainload loop)
    HTTP_BOOT = "http-boot"  # UEFI HTTP Boot: wants an http:// URL to an EFI program
    PLAIN = "plain"  # an ordinary DHCP client (an installed OS): no boot answer


class Stage(enum.Enum):
    """Which of pxetwist's front ends is asking the policy."""

    DHCP = "dhcp"
    PROXY = "proxy"  # proxyDHCP answer on port 67
    PROXY_4011 = "proxy-4011"
    TFTP = "tftp"
    HTTP = "http"


class BootAction(enum.Enum):
    """The three things a policy can tell a machine."""

    BOOT = "boot"  # boot what the decision names
    LOCAL = "local"  # boot from the local disk
    IGNORE = "ignore"  # do not answer this machine at all
