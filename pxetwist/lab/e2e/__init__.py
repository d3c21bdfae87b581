"""End-to-end firmware boots: real QEMU firmware against a boot server in a namespace lab.

The pieces:

* :mod:`pxetwist.lab.e2e.boottree` builds the boot tree (iPXE, pxelinux, signed shim + GRUB, the
  D-I kernel, a tiny marker initrd) from Debian packages, cached in /var/tmp;
  :mod:`pxetwist.lab.e2e.arm64tree` the ARM64 one (signed grubnetaa64, ARM64 kernel and initrd).
* :mod:`pxetwist.lab.e2e.vm` runs SeaBIOS/OVMF/AAVMF/U-Boot guests under TCG on a lab tap and
  watches (and, for U-Boot, types into) serial.
* :mod:`pxetwist.lab.e2e.reference` is a :class:`BootServer` made of dnsmasq (DHCP+TFTP) and
  nginx (HTTP): the reference the scenarios are proven against.
* This module holds the data: :data:`SCENARIOS` (what each firmware chain is, what DHCP
  must answer per client class, which loader configs are needed), :class:`BootRun` (one
  boot: MAC, token, kernel command line, rendered configs) and the :class:`BootServer`
  protocol.

Tests (``tests/e2e``), the boot benchmark (``bench/boot``) and the demo
(``scripts/demo.sh``, :mod:`pxetwist.lab.e2e.demo`) all build on these; the test mixin that
boots every scenario against a server lives with the tests.

A boot passes when the initrd's marker line on serial carries this run's random
``pxetwist.token=<hex>``, which only the server's per-MAC configuration put on the
kernel command line.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pxetwist.lab import NetLab

from .boottree import BootTree
from .vm import Firmware, Vm

__all__ = [
    "SCENARIOS",
    "TAP",
    "WATCH",
    "BootRun",
    "BootServer",
    "ClientClass",
    "Firmware",
    "Scenario",
    "grub_config",
    "ipxe_script",
    "pxelinux_config",
    "scenario_vm",
    "uboot_pxe_config",
]

TAP = "vmtap0"


class ClientClass(enum.Enum):
    """How a DHCP server tells boot clients apart, in the order a server should test them."""

    IPXE = "ipxe"  # option 175 present (or user-class "iPXE"): iPXE, on any platform
    EFI_HTTP = "efi-http"  # option 93 = 16 / vendor class "HTTPClient:Arch:00016..."
    EFI_PXE = "efi-pxe"  # option 93 = 7 (or 9): EDK2 PXE, x86-64 UEFI
    EFI_ARM64 = "efi-arm64"  # option 93 = 11: EDK2 (AAVMF) PXE, or U-Boot's EFI boot step
    UBOOT = "uboot"  # option 93 = 22, option 60 "U-Boot.armv8": U-Boot's `dhcp` command
    BIOS_PXE = "bios-pxe"  # option 93 = 0: legacy PXE ROM (unused: QEMU's ROM is iPXE)


@dataclass(frozen=True)
class Scenario:
    """One firmware boot chain, as data.

    :param dhcp_boot: what DHCP answers per client class: a TFTP path relative to the
        tree root, or a URL template where ``{http}`` is the server's HTTP base
        (``http://<srv ip>:<port>``). An ``EFI_HTTP`` answer must also carry option 60
        "HTTPClient" or EDK2 ignores the offer.
    :param configs: loader configs the server must serve (see :meth:`BootRun.config_files`):
        "ipxe" (HTTP ``boot.ipxe``), "pxelinux" (TFTP ``pxelinux.cfg/01-<mac>``),
        "grub" (TFTP ``grub/grub.cfg``).
    :param kernel_via: how the final loader fetches ``boot/linux`` and ``boot/initrd.img``.
    :param platform: which boot tree (``x86``, or ``arm64``: ``arm64/linux`` and
        ``arm64/initrd.img``, :mod:`pxetwist.lab.e2e.arm64tree`).
    :param console: the kernel's ``console=`` (the machine's UART).
    :param kernel_urls: pxetwist's machine names its kernel and initrd as ``tftp://{server}/``
        URLs (the reference's hand-written config keeps paths): the server must turn them into
        what the client can fetch.
    :param console_script: typed into the serial console (see :class:`Vm`).
    :param serial_proof: regexes that must also appear on serial (e.g. Secure Boot enforced).
    :param refused: the boot must NOT reach Linux; this regex on serial is the firmware
        refusing the boot program (an unsigned NBP under Secure Boot).
    """

    name: str
    title: str
    firmware: Firmware
    dhcp_boot: Mapping[ClientClass, str]
    configs: tuple[str, ...]
    kernel_via: str  # "http" | "tftp"
    timeout: float = 120.0
    platform: str = "x86"
    console: str = "ttyS0,115200"
    kernel_urls: bool = False
    console_script: tuple[tuple[str, str], ...] = ()
    serial_proof: tuple[str, ...] = ()
    refused: str | None = None

    @property
    def kernel(self) -> str:
        return BootTree.ARM64_KERNEL if self.platform == "arm64" else BootTree.KERNEL

    @property
    def initrd(self) -> str:
        return BootTree.ARM64_INITRD if self.platform == "arm64" else BootTree.INITRD


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in [
        Scenario(
            name="bios-ipxe-http",
            title="(a) SeaBIOS + iPXE ROM -> boot.ipxe over HTTP -> kernel+initrd over HTTP",
            firmware=Firmware.BIOS,
            dhcp_boot={ClientClass.IPXE: "{http}/boot.ipxe", ClientClass.BIOS_PXE: "undionly.kpxe"},
            configs=("ipxe",),
            kernel_via="http",
        ),
        Scenario(
            name="bios-pxelinux-tftp",
            title="(b) SeaBIOS -> pxelinux.0 -> pxelinux.cfg/01-<mac> -> kernel+initrd over TFTP",
            firmware=Firmware.BIOS,
            dhcp_boot={ClientClass.IPXE: "pxelinux.0", ClientClass.BIOS_PXE: "pxelinux.0"},
            configs=("pxelinux",),
            kernel_via="tftp",
        ),
        Scenario(
            name="uefi-pxe-snponly",
            title="(c) OVMF PXE (arch 7) -> snponly.efi over TFTP -> boot.ipxe over HTTP",
            firmware=Firmware.UEFI_PXE,
            dhcp_boot={ClientClass.IPXE: "{http}/boot.ipxe", ClientClass.EFI_PXE: "snponly.efi"},
            configs=("ipxe",),
            kernel_via="http",
        ),
        Scenario(
            name="uefi-pxe-shim-grub",
            title="(d) OVMF PXE -> signed shim -> signed GRUB -> grub/grub.cfg -> TFTP kernel",
            firmware=Firmware.UEFI_PXE,
            dhcp_boot={ClientClass.EFI_PXE: "shimx64.efi"},
            configs=("grub",),
            kernel_via="tftp",
        ),
        Scenario(
            name="uefi-http-ipxe",
            title="(e) OVMF HTTP Boot (arch 16) -> ipxe.efi by URL -> boot.ipxe over HTTP",
            firmware=Firmware.UEFI_HTTP,
            dhcp_boot={
                ClientClass.IPXE: "{http}/boot.ipxe",
                ClientClass.EFI_HTTP: "{http}/ipxe.efi",
            },
            configs=("ipxe",),
            kernel_via="http",
        ),
        Scenario(
            name="arm64-uefi-grub",
            title="(h) AAVMF PXE (arch 11) -> signed grubnetaa64 -> grub/grub.cfg -> ARM64 kernel",
            firmware=Firmware.UEFI_ARM64,
            dhcp_boot={ClientClass.EFI_ARM64: BootTree.GRUB_ARM64},
            configs=("grub",),
            kernel_via="tftp",
            timeout=240.0,
            platform="arm64",
            console="ttyAMA0",
        ),
        Scenario(
            name="uboot-pxe",
            title="(i) U-Boot (arch 22): dhcp; pxe get; pxe boot -> pxelinux.cfg/01-<mac> -> "
            "kernel+initrd over TFTP (tftp:// URLs in pxetwist's config)",
            firmware=Firmware.UBOOT_ARM64,
            dhcp_boot={},  # U-Boot's `dhcp` gets an address and no boot program
            configs=("uboot",),
            kernel_via="tftp",
            timeout=240.0,
            platform="arm64",
            console="ttyAMA0",
            kernel_urls=True,
            console_script=(
                (r"Hit any key to stop autoboot", " "),
                (r"=> ", "setenv autoload no; dhcp; pxe get; pxe boot\r"),
            ),
        ),
        Scenario(
            name="uboot-bootefi",
            title="(j) U-Boot default boot: EFI PXE (arch 11) -> grubnetaa64 by bootefi -> "
            "grub/grub.cfg -> ARM64 kernel",
            firmware=Firmware.UBOOT_ARM64,
            dhcp_boot={ClientClass.EFI_ARM64: BootTree.GRUB_ARM64},
            configs=("grub",),
            kernel_via="tftp",
            timeout=240.0,
            platform="arm64",
            console="ttyAMA0",
        ),
        Scenario(
            name="secure-shim-grub",
            title="(k) OVMF, Secure Boot enforced: signed shim -> signed GRUB -> grub/grub.cfg "
            "-> signed kernel",
            firmware=Firmware.UEFI_SECURE,
            dhcp_boot={ClientClass.EFI_PXE: BootTree.SHIM},
            configs=("grub",),
            kernel_via="tftp",
            timeout=240.0,
            serial_proof=(r"secureboot: Secure boot enabled",),
        ),
        Scenario(
            name="secure-unsigned-refused",
            title="(l) OVMF, Secure Boot enforced: an unsigned NBP (ipxe.efi) is refused",
            firmware=Firmware.UEFI_SECURE,
            dhcp_boot={ClientClass.EFI_PXE: BootTree.IPXE_EFI},
            configs=(),
            kernel_via="tftp",
            timeout=180.0,
            refused=r"failed to load Boot\d+ \"UEFI PXEv4[^\n]*Access Denied",
        ),
    ]
}

# Serial milestones recorded (first appearance, seconds after QEMU start) for the timings.
WATCH = {
    "ipxe": r"iPXE initialising|iPXE \d\.\d",
    "pxelinux": r"PXELINUX \d",
    "grub": r"Welcome to GRUB|GNU GRUB|grub>",
    "linux": r"Linux version \d",
    "init": r"Run /init as init process",
    "u-boot": r"U-Boot 20\d\d",
    "secure-boot": r"secureboot: Secure boot enabled",
}


# -- loader configs ------------------------------------------------------------------------


def ipxe_script(kernel_url: str, initrd_url: str, cmdline: str) -> str:
    """An iPXE script booting kernel+initrd. ``initrd=<name>`` is needed on EFI, where the
    kernel's EFI stub loads the initrd by name from iPXE's virtual file system."""
    initrd_name = initrd_url.rstrip("/").rsplit("/", 1)[-1]
    return (
        "#!ipxe\n"
        "echo pxetwist-e2e: iPXE script on ${platform} for ${net0/mac}\n"
        f"kernel {kernel_url} initrd={initrd_name} {cmdline}\n"
        f"initrd {initrd_url}\n"
        "boot\n"
    )


def pxelinux_config(kernel: str, initrd: str, cmdline: str) -> str:
    """pxelinux config: boot at once, paths relative to pxelinux.0's TFTP directory."""
    return (
        "SERIAL 0 115200\n"
        "SAY pxetwist-e2e: pxelinux config loaded\n"
        "DEFAULT e2e\n"
        "PROMPT 0\n"
        "TIMEOUT 0\n"
        "LABEL e2e\n"
        f"  KERNEL {kernel}\n"
        f"  INITRD {initrd}\n"
        f"  APPEND {cmdline}\n"
    )


def uboot_pxe_config(kernel: str, initrd: str, cmdline: str) -> str:
    """The PXELINUX-format file U-Boot's ``pxe get`` reads: paths on its TFTP server only."""
    return f"DEFAULT e2e\nLABEL e2e\n  KERNEL {kernel}\n  INITRD {initrd}\n  APPEND {cmdline}\n"


def grub_config(kernel: str, initrd: str, cmdline: str) -> str:
    """grub.cfg for Debian's signed grubnetx64: paths on $root, which is (tftp,<server>)."""
    return (
        "set timeout=0\n"
        "set default=0\n"
        'menuentry "pxetwist e2e" {\n'
        '  echo "pxetwist-e2e: GRUB loading kernel"\n'
        f"  linux {kernel} {cmdline}\n"
        f"  initrd {initrd}\n"
        "}\n"
    )


@dataclass(frozen=True)
class BootRun:
    """One boot of a scenario: the client's MAC, its token and the configs that follow."""

    scenario: Scenario
    mac: str
    token: str
    server_ip: str
    http_port: int

    @property
    def http_base(self) -> str:
        return f"http://{self.server_ip}:{self.http_port}"

    @property
    def cmdline(self) -> str:
        """The per-MAC kernel command line the server must hand out."""
        return f"console={self.scenario.console} panic=-1 pxetwist.token={self.token}"

    @property
    def mac_hyphens(self) -> str:
        return self.mac.lower().replace(":", "-")

    def boot_file(self, cls: ClientClass) -> str | None:
        """DHCP boot file (TFTP path or URL) for a client class; None: no answer."""
        template = self.scenario.dhcp_boot.get(cls)
        return None if template is None else template.format(http=self.http_base)

    def config_files(self) -> dict[str, str]:
        """Loader configs this scenario needs, as {path in the server root: content}."""
        files: dict[str, str] = {}
        kernel, initrd = self.scenario.kernel, self.scenario.initrd
        for kind in self.scenario.configs:
            if kind == "ipxe":
                if self.scenario.kernel_via == "http":
                    base = self.http_base
                else:
                    base = f"tftp://{self.server_ip}"
                script = ipxe_script(f"{base}/{kernel}", f"{base}/{initrd}", self.cmdline)
                files["boot.ipxe"] = script
            elif kind == "pxelinux":
                cfg = pxelinux_config(kernel, initrd, self.cmdline)
                files[f"pxelinux.cfg/01-{self.mac_hyphens}"] = cfg
            elif kind == "uboot":
                cfg = uboot_pxe_config(kernel, initrd, self.cmdline)
                files[f"pxelinux.cfg/01-{self.mac_hyphens}"] = cfg
            elif kind == "grub":
                files["grub/grub.cfg"] = grub_config(f"/{kernel}", f"/{initrd}", self.cmdline)
            else:
                raise ValueError(f"unknown loader config {kind!r}")
        return files

    def write_configs(self, root: Path) -> list[Path]:
        """Write :meth:`config_files` under ``root`` (world-readable); return the paths."""
        written = []
        for rel, text in self.config_files().items():
            path = root / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.parent.chmod(0o755)
            path.write_text(text)
            path.chmod(0o644)
            written.append(path)
        return written


class BootServer(Protocol):
    """A boot server (DHCP + TFTP + HTTP) under test, run in ``lab.srv``.

    ``start`` must return once every service listens (``lab.wait_port``), serving
    ``tree.root`` over TFTP and HTTP on ``lab.srv_ip`` and answering DHCP on the lab
    subnet as ``run.boot_file(class)`` says, with ``run.config_files()`` served as well.
    ``stop`` stops every process it started, by PID; it must be idempotent.
    """

    name: str
    http_port: int

    def start(self, lab: NetLab, tree: BootTree, run: BootRun, workdir: Path) -> None: ...

    def stop(self) -> None: ...

    def diagnostics(self) -> str: ...


def scenario_vm(scenario: Scenario, workdir: Path, lab: NetLab, mac: str, tap: str = TAP) -> Vm:
    """The (unstarted) QEMU guest a scenario boots: its firmware, time limit, console script."""
    return Vm(
        scenario.firmware,
        workdir,
        lab=lab,
        tap=tap,
        mac=mac,
        timeout=scenario.timeout,
        watch=WATCH,
        console_script=scenario.console_script,
    )
