"""Reference boot server: dnsmasq (DHCP + TFTP) and nginx (HTTP) in the lab's server netns.

These prove the boot tree and the VM harness, and are the baseline for ``bench/boot``.

* dnsmasq: ``--port=0`` (no DNS), bound to ``srv0`` only, ``no-ping`` (its ICMP probe
  costs ~3 s per new client), leases in memory, a range inside the lab subnet, TFTP from
  the tree root, ``log-dhcp`` to a file, and by default iPXE's ``no-pxedhcp`` setting
  (option 175.176 = 1) for iPXE clients, which spares them a ~3 s wait for ProxyDHCP
  offers that will never come (``ipxe_no_proxydhcp=False`` restores the plain
  behaviour). Client classes are tags (see
  :class:`pxetwist.lab.e2e.ClientClass`); the scenario's ``dhcp_boot`` becomes ``dhcp-boot=``
  lines with mutually exclusive tag sets, so their order does not matter.
* nginx: 1 worker, ``sendfile on``, serves the same root on ``<srv ip>:<http_port>``,
  ``.efi`` as ``application/efi`` (EDK2 HTTP Boot looks at the Content-Type), access log
  with ``$msec`` timestamps.

Both run in the foreground, are stopped by PID, and the lab's ``down()`` catches anything
left in the namespace.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pxetwist.lab import SRV_IF, NetLab

from . import BootRun, ClientClass
from .boottree import BootTree

__all__ = ["DnsmasqNginx", "dnsmasq_config", "nginx_config"]

START_TIMEOUT = 5.0
# iPXE's encapsulated option 175.176 ("no-pxedhcp" = 1): iPXE then takes the first offer
# instead of waiting ~3 s per DHCP round for ProxyDHCP offers (measured: 3.1 s saved).
NO_PROXYDHCP = "dhcp-option-force=tag:ipxe,encap:175,176,1b"

# dnsmasq tag expressions for each client class; mutually exclusive, first class wins
_TAGS = {
    ClientClass.IPXE: "tag:ipxe",
    ClientClass.EFI_HTTP: "tag:!ipxe,tag:efihttp",
    ClientClass.EFI_PXE: "tag:!ipxe,tag:!efihttp,tag:efi64",
    ClientClass.EFI_ARM64: "tag:!ipxe,tag:efiarm64",
    ClientClass.UBOOT: "tag:!ipxe,tag:uboot",
    ClientClass.BIOS_PXE: "tag:!ipxe,tag:!efihttp,tag:!efi64,tag:!efiarm64,tag:!uboot",
}


def dnsmasq_config(
    lab: NetLab, run: BootRun, root: Path, workdir: Path, extra: Sequence[str] = ()
) -> str:
    net = lab.subnet
    first, last = net.network_address + 100, net.network_address + 250
    if last not in net:  # pragma: no cover - NetLab allows /29 and up
        first, last = net.network_address + 4, net.broadcast_address - 1
    lines = [
        "port=0",
        f"interface={SRV_IF}",
        "bind-interfaces",
        "dhcp-authoritative",
        "no-ping",
        f"dhcp-range={first},{last},{net.netmask},1h",
        "leasefile-ro",
        "log-dhcp",
        f"log-facility={workdir / 'dnsmasq.log'}",
        "enable-tftp",
        f"tftp-root={root}",
        "dhcp-match=set:ipxe,175",
        "dhcp-userclass=set:ipxe,iPXE",
        "dhcp-match=set:efi64,option:client-arch,7",
        "dhcp-match=set:efi64,option:client-arch,9",
        "dhcp-match=set:efihttp,option:client-arch,16",
        "dhcp-match=set:efiarm64,option:client-arch,11",
        "dhcp-match=set:uboot,option:client-arch,22",
        "dhcp-vendorclass=set:uboot,U-Boot",
        "dhcp-vendorclass=set:efihttp,HTTPClient",
        # EDK2 HTTP Boot only takes an offer that says "HTTPClient" in option 60
        "dhcp-option-force=tag:efihttp,60,HTTPClient",
    ]
    for cls, tags in _TAGS.items():
        boot = run.boot_file(cls)
        if boot is not None:
            lines.append(f"dhcp-boot={tags},{boot}")
    lines += extra
    return "\n".join(lines) + "\n"


def nginx_config(ip: str, port: int, root: Path, workdir: Path) -> str:
    return f"""worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/nginx-error.log;
events {{ worker_connections 64; }}
http {{
  sendfile on;
  tcp_nopush on;
  types {{ application/efi efi; text/plain ipxe cfg; }}
  default_type application/octet-stream;
  log_format t '$msec $remote_addr "$request" $status $body_bytes_sent';
  access_log {workdir}/access.log t;
  client_body_temp_path {workdir}/tmp; proxy_temp_path {workdir}/tmp;
  fastcgi_temp_path {workdir}/tmp; uwsgi_temp_path {workdir}/tmp; scgi_temp_path {workdir}/tmp;
  server {{ listen {ip}:{port}; root {root}; }}
}}
"""


def _tail(path: Path, chars: int = 2500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return "(no file)"


@dataclass
class DnsmasqNginx:
    """The reference :class:`pxetwist.lab.e2e.BootServer`: dnsmasq for DHCP+TFTP, nginx for HTTP."""

    http_port: int = 8080
    name: str = "dnsmasq+nginx"
    dnsmasq: str = "dnsmasq"
    nginx: str = "nginx"
    ipxe_no_proxydhcp: bool = True
    extra_dnsmasq: Sequence[str] = ()
    workdir: Path | None = None
    _procs: list[subprocess.Popen[Any]] = field(default_factory=list)

    def start(self, lab: NetLab, tree: BootTree, run: BootRun, workdir: Path) -> None:
        self.workdir = workdir
        (workdir / "tmp").mkdir(parents=True, exist_ok=True)
        workdir.chmod(0o755)
        run.write_configs(tree.root)
        conf = workdir / "nginx.conf"
        conf.write_text(nginx_config(lab.srv_ip, self.http_port, tree.root, workdir))
        ng = self._spawn(
            lab,
            [self.nginx, "-p", str(workdir), "-e", str(workdir / "nginx-error.log"),
             "-c", str(conf), "-g", "daemon off;"],
            workdir / "nginx.out",
        )  # fmt: skip
        dconf = workdir / "dnsmasq.conf"
        extra = [NO_PROXYDHCP] if self.ipxe_no_proxydhcp else []
        dconf.write_text(
            dnsmasq_config(lab, run, tree.root, workdir, [*extra, *self.extra_dnsmasq])
        )
        dm = self._spawn(
            lab,
            [self.dnsmasq, "--keep-in-foreground", f"--conf-file={dconf}", "--user=root"],
            workdir / "dnsmasq.out",
        )
        lab.wait_port("srv", "tcp", self.http_port, START_TIMEOUT, proc=ng)
        lab.wait_port("srv", "udp", 67, START_TIMEOUT, proc=dm)
        lab.wait_port("srv", "udp", 69, START_TIMEOUT, proc=dm)

    def _spawn(self, lab: NetLab, argv: list[str], out: Path) -> subprocess.Popen[Any]:
        with out.open("wb") as f:
            proc = lab.spawn("srv", argv, stdout=f, stderr=subprocess.STDOUT)
        self._procs.append(proc)
        return proc

    def stop(self) -> None:
        while self._procs:
            NetLab.stop(self._procs.pop())

    def diagnostics(self) -> str:
        wd = self.workdir
        if wd is None:
            return "(server not started)"
        return "\n".join(
            f"--- {name} ---\n{_tail(wd / name)}"
            for name in ("dnsmasq.log", "dnsmasq.out", "access.log", "nginx-error.log")
        )
