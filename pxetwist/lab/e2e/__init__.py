"""End-to-end firmware boots: real QEMU firmware against a boot server in a namespace lab.

The pieces:

* :mod:`pxetwist.lab.e2e.boottree` builds the boot tree (iPXE, pxelinux, signed shim + GRUB, the
  D-I kernel, a tiny marker initrd) from Debian packages, cached in /var/tmp.
* :mod:`pxetwist.lab.e2e.vm` runs SeaBIOS/OVMF guests under TCG on a lab tap and watches serial.
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
from .vm import Firmware

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
]

TAP = "vmtap0"


class ClientClass(enum.Enum):
    """How a DHCP server tells boot clients apart, in the order a server should test them."""

    IPXE = "ipxe"  # option 175 present (or user-class "iPXE"): iPXE, on any platform
    EFI_HTTP = "efi-http"  # option 93 = 16 / vendor class "HTTPClient:Arch:00016..."
    EFI_PXE = "efi-pxe"  # option 93 = 7 (or 9): EDK2 PXE, x86-64 UEFI
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
    """

    name: str
    title: str
    firmware: Firmware
    dhcp_boot: Mapping[ClientClass, str]
    configs: tuple[str, ...]
    kernel_via: str  # "http" | "tftp"
    timeout: float = 120.0


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
    ]
}

# Serial milestones recorded (first appearance, seconds after QEMU start) for the timings.
WATCH = {
    "ipxe": r"iPXE initialising|iPXE \d\.\d",
    "pxelinux": r"PXELINUX \d",
    "grub": r"Welcome to GRUB|GNU GRUB|grub>",
    "linux": r"Linux version \d",
    "init": r"Run /init as init process",
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
        return f"console=ttyS0,115200 panic=-1 pxetwist.token={self.token}"

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
        kernel, initrd = BootTree.KERNEL, BootTree.INITRD
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
