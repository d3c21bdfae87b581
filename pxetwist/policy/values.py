"""Small frozen values every protocol and plugin shares: MAC addresses, architectures, stages.

They live here, not in a protocol package, because DHCP, TFTP, HTTP and third-party policies all
speak about the same machine and must agree on how it is named.
"""

from __future__ import annotations

import enum
import re

import attrs

from pxetwist.identityenum import IdentityEnum

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
        # C speed: every log line and session record spells a MAC
        return self.octets.hex(":")

    @property
    def dashed(self) -> str:
        """``52-54-00-12-34-56``, as pxelinux and GRUB spell it in file names."""
        return self.octets.hex("-")

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

    @property
    def isa(self) -> Isa | None:
        """The processor family this architecture's programs run on; ``None`` if unknown."""
        return _ARCH_ISA.get(self.normalized())


class Isa(IdentityEnum):
    """The processor family a client runs and a boot program is built for.

    ``policy.arch_default`` only ever applies within one family: an x86 program offered to an
    ARM client would be downloaded and then fail (or, with U-Boot's ``autoload``, be loaded
    over memory), so a client of a known family with no program of its own gets none.  The
    value is the suffix boot keys use (``efi-arm64``, ``uboot-arm64``).
    """

    X86 = "x86"
    ARM32 = "arm32"
    ARM64 = "arm64"
    RISCV32 = "riscv32"
    RISCV64 = "riscv64"
    RISCV128 = "riscv128"
    LOONGARCH32 = "loongarch32"
    LOONGARCH64 = "loongarch64"
    ITANIUM = "itanium"
    ALPHA = "alpha"
    POWER = "power"
    S390 = "s390"
    MIPS32 = "mips32"
    MIPS64 = "mips64"
    SUNWAY32 = "sunway32"
    SUNWAY64 = "sunway64"


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
    Arch.UBOOT_ARM32: "uboot-arm32",
    Arch.UBOOT_ARM64: "uboot-arm64",
    Arch.HTTP_UBOOT_ARM32: "http-uboot-arm32",
    Arch.HTTP_UBOOT_ARM64: "http-uboot-arm64",
}

_ISA_MEMBERS: dict[Isa, tuple[int, ...]] = {
    Isa.X86: (0, 1, 4, 5, 6, 7, 9, 15, 16, 17, 20),
    Isa.ARM32: (8, 10, 18, 21, 23),
    Isa.ARM64: (11, 19, 22, 24),
    Isa.RISCV32: (25, 26),
    Isa.RISCV64: (27, 28),
    Isa.RISCV128: (29, 30),
    Isa.LOONGARCH32: (37, 38),
    Isa.LOONGARCH64: (39, 40),
    Isa.ITANIUM: (2,),
    Isa.ALPHA: (3,),
    Isa.POWER: (12, 13, 14),
    Isa.S390: (31, 32),
    Isa.MIPS32: (33,),
    Isa.MIPS64: (34,),
    Isa.SUNWAY32: (35,),
    Isa.SUNWAY64: (36,),
}
_ARCH_ISA: dict[Arch, Isa] = {
    Arch(value): isa for isa, values in _ISA_MEMBERS.items() for value in values
}

#: U-Boot's boot keys, by the family its build is for (it names itself in option 60).
UBOOT_BOOT_KEYS: dict[Isa, str] = {
    Isa.ARM32: "uboot-arm32",
    Isa.ARM64: "uboot-arm64",
    Isa.RISCV32: "uboot-riscv32",
    Isa.RISCV64: "uboot-riscv64",
}

#: Every key the ``boot`` table may hold, in the order the example config documents them.
BOOT_KEYS: tuple[str, ...] = (
    "ipxe",
    *dict.fromkeys(_BOOT_KEYS.values()),
    *(key for key in UBOOT_BOOT_KEYS.values() if key not in _BOOT_KEYS.values()),
)

_KEY_SUFFIX_ISA: dict[str, Isa] = {"bios": Isa.X86, "ia32": Isa.X86, "x86_64": Isa.X86} | {
    isa.value: isa for isa in Isa
}


def boot_key_isa(key: str) -> Isa | None:
    """The family a ``boot`` table entry's program is for (``None`` for ``ipxe``: any)."""
    return _KEY_SUFFIX_ISA.get(key.rpartition("-")[2]) if key != "ipxe" else None


class Firmware(IdentityEnum):
    """What kind of network-boot client is asking, which decides the shape of the answer."""

    PXE_ROM = "pxe"  # a PXE ROM or UEFI PXE stack: wants an NBP over TFTP
    IPXE = "ipxe"  # iPXE: wants a script URL (ends the chainload loop)
    HTTP_BOOT = "http-boot"  # UEFI HTTP Boot: wants an http:// URL to an EFI program
    UBOOT = "u-boot"  # U-Boot's dhcp/pxe commands: fetch paths over TFTP, no PXE options
    PLAIN = "plain"  # an ordinary DHCP client (an installed OS): no boot answer


class Stage(IdentityEnum):
    """Which of pxetwist's front ends is asking the policy."""

    DHCP = "dhcp"
    PROXY = "proxy"  # proxyDHCP answer on port 67
    PROXY_4011 = "proxy-4011"
    TFTP = "tftp"
    HTTP = "http"
    NFS = "nfs"  # the NFS export wrapper asking which exports a machine holds


class BootAction(IdentityEnum):
    """The three things a policy can tell a machine."""

    BOOT = "boot"  # boot what the decision names
    LOCAL = "local"  # boot from the local disk
    IGNORE = "ignore"  # do not answer this machine at all
