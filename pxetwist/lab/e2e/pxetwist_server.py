"""pxetwist as a :class:`pxetwist.lab.e2e.BootServer`: ``twistd -n pxe`` in the lab's server netns.

Unlike the reference (:mod:`pxetwist.lab.e2e.reference`), nothing is written into the boot tree:
the per-MAC kernel command line (with the run's token) exists only in pxetwist's config, as
a ``machines:`` entry, and pxetwist's policy renders ``boot.ipxe``, ``pxelinux.cfg/01-<mac>``
and ``grub/grub.cfg`` from it. A pxetwist that serves nothing cannot make the token appear.

:func:`pxetwist_config` maps a scenario's ``dhcp_boot`` onto pxetwist's ``boot:`` table:

* ``ClientClass.IPXE`` -> ``boot.ipxe`` (a URL) or ``bios`` + ``ipxe`` machine overrides
  (scenario b: ``{bios: pxelinux.0, ipxe: pxelinux.0}``, even the iPXE ROM gets pxelinux);
* ``ClientClass.EFI_PXE`` -> ``efi-x86_64``; ``ClientClass.EFI_HTTP`` -> ``http-efi-x86_64``;
  ``ClientClass.EFI_ARM64`` -> ``efi-arm64``; ``ClientClass.UBOOT`` -> ``uboot-arm64``;
  ``ClientClass.BIOS_PXE`` -> ``bios``.

The server logs to ``twistd.log`` in its work dir (``--logfile``); :func:`stage_events`
picks pxetwist's own stage lines (DHCP replies, TFTP transfers, HTTP requests) out of it,
which the tests assert on and the demo prints.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from pxetwist.lab import SRV_IF, NetLab

from . import BootRun, ClientClass
from .boottree import BootTree

__all__ = [
    "PxetwistProxy",
    "PxetwistServer",
    "StageEvent",
    "address_only_dnsmasq",
    "machine_entry",
    "pxetwist_config",
    "stage_events",
]

START_TIMEOUT = 15.0  # twistd imports Twisted, the config, the plugins: a few seconds at worst
IMPORT_ROOT = Path(__file__).resolve().parents[3]  # the directory holding the pxetwist package
TWISTD = Path(sys.executable).with_name("twistd")

# Where each client class's answer goes in pxetwist's `boot:` table.
_BOOT_KEYS = {
    ClientClass.IPXE: "ipxe",
    ClientClass.EFI_HTTP: "http-efi-x86_64",
    ClientClass.EFI_PXE: "efi-x86_64",
    ClientClass.EFI_ARM64: "efi-arm64",
    ClientClass.UBOOT: "uboot-arm64",
    ClientClass.BIOS_PXE: "bios",
}


def _as_pxetwist(boot: str) -> str:
    """A scenario boot file (``{http}`` already expanded, or not) in pxetwist's URL syntax."""
    return boot.replace("{http}", "http://{server}:{http_port}")


def boot_table(run: BootRun) -> tuple[dict[str, str], dict[str, str]]:
    """(global ``boot:`` table, the machine's ``boot:`` overrides) for the run's scenario.

    A TFTP loader (not a URL) answering iPXE clients is a per-machine override: globally,
    iPXE must get a script URL or every iPXE would chain the loader forever.
    """
    table: dict[str, str] = {}
    machine: dict[str, str] = {}
    for cls, template in run.scenario.dhcp_boot.items():
        key = _BOOT_KEYS[cls]
        value = _as_pxetwist(template)
        if cls is ClientClass.IPXE and "://" not in value:
            machine[key] = value
            if ClientClass.BIOS_PXE in run.scenario.dhcp_boot:
                machine["bios"] = _as_pxetwist(run.scenario.dhcp_boot[ClientClass.BIOS_PXE])
        else:
            table[key] = value
    table.setdefault("ipxe", "http://{server}:{http_port}/boot.ipxe?mac=${mac}")
    return table, machine


def machine_entry(
    mac: str,
    cmdline: str,
    *,
    name: str | None = None,
    boot: Mapping[str, str] | None = None,
    kernel: str = BootTree.KERNEL,
    initrd: str = BootTree.INITRD,
) -> dict[str, Any]:
    """One ``machines:`` entry booting the tree's kernel and initrd with ``cmdline``."""
    entry: dict[str, Any] = {"mac": mac}
    if name:
        entry["name"] = name
    entry.update(kernel=kernel, initrd=initrd, cmdline=cmdline)
    if boot:
        entry["boot"] = dict(boot)
    return entry


def pxetwist_config(
    lab: NetLab,
    run: BootRun,
    root: Path,
    workdir: Path,
    *,
    mode: str = "authoritative",
    machines: Sequence[Mapping[str, Any]] | None = None,
    defaults: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The config for one boot: ``srv0`` only, the tree as TFTP and HTTP root, the run's MAC
    as a machine (unless ``machines`` is given) and, in authoritative mode, the same range as
    the reference's dnsmasq."""
    net = lab.subnet
    first, last = net.network_address + 100, net.network_address + 250
    if last not in net:  # pragma: no cover - NetLab allows /29 and up
        first, last = net.network_address + 4, net.broadcast_address - 1
    table, overrides = boot_table(run)
    if machines is None:
        scenario = run.scenario
        url = "tftp://{server}/" if scenario.kernel_urls else ""
        machines = [
            machine_entry(
                run.mac,
                run.cmdline,
                name="e2e",
                boot=overrides,
                kernel=url + scenario.kernel,
                initrd=url + scenario.initrd,
            )
        ]
    dhcp: dict[str, Any] = {"mode": mode, "raspberry_pi": False}
    if mode == "authoritative":
        dhcp["subnets"] = [
            {
                "network": str(net),
                "range": [str(first), str(last)],
                "lease_time": "1h",
            }
        ]
        dhcp["offer_hold"] = "60s"
    config: dict[str, Any] = {
        "interfaces": [SRV_IF],
        "data_dir": str(workdir / "data"),
        "templates": str(workdir / "templates"),  # empty: the bundled templates
        "dhcp": dhcp,
        "tftp": {"enabled": True, "root": str(root), "port": 69},
        "http": {"enabled": True, "root": str(root), "port": run.http_port},
        "boot": table,
        "machines": [dict(m) for m in machines],
        "policy": {"chain": ["static", "arch"], "plugin_dirs": []},
    }
    if defaults is not None:
        config["defaults"] = dict(defaults)
    return config


@dataclass(frozen=True)
class StageEvent:
    """One line of pxetwist's log that marks a boot stage."""

    stamp: str  # as twistd wrote it
    stage: str  # "dhcp" | "tftp" | "http" | "policy"
    text: str


_LOG_LINE = re.compile(r"^(?P<stamp>\S+) \[(?P<system>[^\]#]*)(#\w+)?\] (?P<text>.*)$")
_STAGES = {
    # the boot events' log lines (pxetwist.events.LogObserver: pxetwist.<protocol>)
    "pxetwist.dhcp": "dhcp",
    "pxetwist.tftp": "tftp",
    "pxetwist.http": "http",
    # lines a protocol still logs itself
    "pxetwist.dhcp.protocol": "dhcp",
    "pxetwist.http.scripts": "http",
    "pxetwist.policy.chain": "policy",
}


def stage_events(log: str) -> list[StageEvent]:
    """pxetwist's per-client lines (DHCP replies, TFTP transfers, HTTP requests, policy
    decisions) in log order; start-up and shut-down lines are left out."""
    events = []
    for line in log.splitlines():
        m = _LOG_LINE.match(line)
        if m is None:
            continue
        stage = _STAGES.get(m.group("system"))
        if stage is not None:
            events.append(StageEvent(m.group("stamp"), stage, m.group("text")))
    return events


def _tail(path: Path, chars: int = 6000) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no file)"


@dataclass
class PxetwistServer:
    """:class:`pxetwist.lab.e2e.BootServer` running ``twistd -n pxe --config <workdir>/pxe.yaml``.

    ``mode``: ``authoritative`` (the default, like the reference) or ``proxy`` (another DHCP
    server hands out addresses). ``machines``/``defaults`` replace the single machine of the
    run when a test needs several (scenario g).
    """

    http_port: int = 8080
    name: str = "pxetwist"
    mode: str = "authoritative"
    machines: Sequence[Mapping[str, Any]] | None = None
    defaults: Mapping[str, Any] | None = None
    twistd: Path = TWISTD
    workdir: Path | None = None
    config_path: Path | None = None
    mac: str | None = None  # the run's MAC, once started
    _proc: subprocess.Popen[Any] | None = field(default=None, repr=False)

    @property
    def log_path(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("server not started")
        return self.workdir / "twistd.log"

    def start(self, lab: NetLab, tree: BootTree, run: BootRun, workdir: Path) -> None:
        self.workdir = workdir
        self.mac = run.mac.lower()
        (workdir / "data").mkdir(parents=True, exist_ok=True)
        (workdir / "templates").mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        config = pxetwist_config(
            lab,
            run,
            tree.root,
            workdir,
            mode=self.mode,
            machines=self.machines,
            defaults=self.defaults,
        )
        self.config_path = workdir / "pxe.yaml"
        self.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        argv = [
            str(self.twistd), "-n", "--logfile", str(self.log_path),
            "--pidfile", str(workdir / "twistd.pid"),
            "pxe", "--config", str(self.config_path),
        ]  # fmt: skip
        with (workdir / "twistd.out").open("wb") as out:
            self._proc = lab.spawn(
                "srv", argv, cwd=str(IMPORT_ROOT), stdout=out, stderr=subprocess.STDOUT
            )
        ports: list[tuple[Any, int]] = [("tcp", run.http_port), ("udp", 69), ("udp", 67)]
        if self.mode == "proxy":
            ports.append(("udp", 4011))
        try:
            for proto, port in ports:
                lab.wait_port("srv", proto, port, START_TIMEOUT, proc=self._proc)
        except Exception as e:
            raise AssertionError(f"pxetwist did not start: {e}\n{self.diagnostics()}") from e

    def stop(self) -> None:
        if self._proc is not None:
            NetLab.stop(self._proc)
            self._proc = None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, RuntimeError):
            return ""

    def events(self) -> list[StageEvent]:
        return stage_events(self.log())

    def diagnostics(self) -> str:
        wd = self.workdir
        if wd is None:
            return "(server not started)"
        return "\n".join(
            f"--- {name} ---\n{_tail(wd / name)}"
            for name in ("pxe.yaml", "twistd.out", "twistd.log")
        )


def address_only_dnsmasq(lab: NetLab, workdir: Path) -> str:
    """A plain DHCP server for the LAN (no TFTP, no boot options): proxyDHCP's other half."""
    net = lab.subnet
    first, last = net.network_address + 100, net.network_address + 250
    return (
        "\n".join(
            [
                "port=0",
                "interface=br0",
                "bind-interfaces",
                "dhcp-authoritative",
                "no-ping",
                f"dhcp-range={first},{last},{net.netmask},1h",
                "leasefile-ro",
                "log-dhcp",
                f"log-facility={workdir / 'dnsmasq.log'}",
            ]
        )
        + "\n"
    )


@dataclass
class PxetwistProxy:
    """:class:`pxetwist.lab.e2e.BootServer` for proxyDHCP: dnsmasq hands out addresses only (in
    ``lab.cli``, on the bridge, 10.77.0.2), pxetwist in ``dhcp.mode: proxy`` adds the boot
    answers (and serves UEFI's follow-up request on port 4011)."""

    pxetwist: PxetwistServer = field(default_factory=lambda: PxetwistServer(mode="proxy"))
    name: str = "pxetwist (proxyDHCP beside dnsmasq)"
    http_port: int = 8080
    workdir: Path | None = None
    _dnsmasq: subprocess.Popen[Any] | None = field(default=None, repr=False)

    def start(self, lab: NetLab, tree: BootTree, run: BootRun, workdir: Path) -> None:
        self.workdir = workdir
        self.pxetwist.http_port = self.http_port
        workdir.mkdir(parents=True, exist_ok=True)
        conf = workdir / "dnsmasq.conf"
        conf.write_text(address_only_dnsmasq(lab, workdir))
        with (workdir / "dnsmasq.out").open("wb") as out:
            self._dnsmasq = lab.spawn(
                "cli",
                ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}", "--user=root"],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        lab.wait_port("cli", "udp", 67, START_TIMEOUT, proc=self._dnsmasq)
        self.pxetwist.start(lab, tree, run, workdir / "pxetwist")

    def stop(self) -> None:
        self.pxetwist.stop()
        if self._dnsmasq is not None:
            NetLab.stop(self._dnsmasq)
            self._dnsmasq = None

    @property
    def mac(self) -> str | None:
        return self.pxetwist.mac

    def log(self) -> str:
        return self.pxetwist.log()

    def dnsmasq_log(self) -> str:
        return "" if self.workdir is None else _tail(self.workdir / "dnsmasq.log", 1 << 20)

    def diagnostics(self) -> str:
        wd = self.workdir
        if wd is None:
            return "(server not started)"
        return f"--- dnsmasq.log ---\n{_tail(wd / 'dnsmasq.log')}\n{self.pxetwist.diagnostics()}"
