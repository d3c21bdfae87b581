"""Real firmware clients for the end-to-end suite: QEMU (TCG) on a lab tap device.

:class:`Vm` runs ``qemu-system-x86_64 -accel tcg`` inside ``lab.cli`` on a tap attached to
the lab bridge, with the serial port written to a file:

* ``Firmware.BIOS``: SeaBIOS plus QEMU's NIC option ROM for virtio-net, which *is* iPXE
  (it sends DHCP option 175 and user-class "iPXE"). No non-iPXE legacy PXE ROM exists
  offline.
* ``Firmware.UEFI_PXE``: OVMF (q35, pflash, private copy of the VARS) with ``romfile=`` on
  the NIC, so EDK2's own virtio-net driver and PXE client run (DHCP client-arch 7).
* ``Firmware.UEFI_HTTP``: as UEFI_PXE, plus ``-fw_cfg opt/org.tianocore/IPv4PXESupport=n``
  (and IPv6PXESupport=n), so OVMF's first network boot option is HTTPv4 boot (DHCP
  client-arch 16, vendor class "HTTPClient").
* ``Firmware.UEFI_SECURE``: OVMF with Microsoft's keys enrolled and Secure Boot enforced
  (``OVMF_CODE_4M.ms.fd`` and a copy of ``OVMF_VARS_4M.ms.fd``); it needs SMM and a secure
  pflash, or it hangs silently (firmware notes).  PXE over IPv6 is switched off, so a refused
  NBP ends the network boot instead of waiting for a DHCPv6 server.
* ``Firmware.UEFI_ARM64``: ``qemu-system-aarch64 -M virt`` with AAVMF (DHCP client-arch 11).
* ``Firmware.UBOOT_ARM64``: the same machine with Debian's ``qemu_arm64`` U-Boot as ``-bios``
  and a ``virtio-net-device`` (U-Boot reads a wrong MAC from ``virtio-net-pci``).  U-Boot's
  console is typed into (``console_script``): the serial port is then a socket QEMU serves,
  logged to the same ``serial.log``.

KVM does not work on the lab machine (guests reset), so TCG is hard-wired. Every VM has
``-no-reboot`` (a reset ends QEMU: a firmware that gives up fails fast instead of looping),
a per-VM time limit enforced twice (by ``timeout(1)`` around QEMU, and by :meth:`Vm.stop`),
and is stopped by PID: the ``timeout`` wrapper's, then QEMU's own from its ``-pidfile``.

IPv6 router advertisements (:class:`RouterAdvertiser`): iPXE (Debian's 2019 build) runs
IPv6 autoconfiguration in parallel with DHCPv4 and waits for it to finish. Without a router
advertisement that takes ~13 s per iPXE DHCP round (twice per boot when a firmware chains
ipxe.efi). An RA with the M and O flags clear and router lifetime 0 ends iPXE's wait at
once without giving the client any IPv6 route, prefix or DNS: it changes nothing about
IPv4 DHCP/TFTP/HTTP, which is what the suite tests. The RA comes from a separate helper
process on the lab bridge (like a router on a real LAN), not from the boot server under
test, so it can neither hide nor fake a server behaviour. The suite also boots once
*without* RAs to prove the chain does not depend on them (it is only slower).
"""

from __future__ import annotations

import argparse
import contextlib
import enum
import os
import re
import select
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from pxetwist.lab import BRIDGE, NetLab

__all__ = [
    "OVMF_CODE",
    "OVMF_VARS",
    "Firmware",
    "RouterAdvertiser",
    "Vm",
    "VmError",
    "VmExited",
    "VmTimeout",
    "random_mac",
]

QEMU = "qemu-system-x86_64"
QEMU_ARM64 = "qemu-system-aarch64"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_SECURE_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")  # Microsoft keys enrolled
OVMF_SECURE_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
AAVMF_CODE = Path("/usr/share/AAVMF/AAVMF_CODE.fd")
AAVMF_VARS = Path("/usr/share/AAVMF/AAVMF_VARS.fd")
UBOOT_ARM64 = Path("/usr/lib/u-boot/qemu_arm64/u-boot.bin")
DEFAULT_TIMEOUT = 120.0  # seconds per VM
POLL = 0.05  # seconds between serial-log polls
STOP_GRACE = 5.0  # seconds between SIGTERM and SIGKILL
IMPORT_ROOT = Path(__file__).resolve().parents[3]  # the directory holding the pxetwist package


class Firmware(enum.Enum):
    BIOS = "bios"  # SeaBIOS + iPXE NIC ROM
    UEFI_PXE = "uefi-pxe"  # OVMF, EDK2 PXE (arch 7)
    UEFI_HTTP = "uefi-http"  # OVMF, EDK2 HTTP Boot (arch 16)
    UEFI_SECURE = "uefi-secure"  # OVMF, Microsoft keys, Secure Boot enforced, PXE (arch 7)
    UEFI_ARM64 = "uefi-arm64"  # AAVMF on the virt machine, EDK2 PXE (arch 11)
    UBOOT_ARM64 = "uboot-arm64"  # U-Boot qemu_arm64 on the virt machine (arch 22, or 11)

    @property
    def is_uefi(self) -> bool:
        return self in (
            Firmware.UEFI_PXE,
            Firmware.UEFI_HTTP,
            Firmware.UEFI_SECURE,
            Firmware.UEFI_ARM64,
        )

    @property
    def is_arm64(self) -> bool:
        return self in (Firmware.UEFI_ARM64, Firmware.UBOOT_ARM64)

    @property
    def qemu(self) -> str:
        return QEMU_ARM64 if self.is_arm64 else QEMU

    @property
    def files(self) -> tuple[Path, ...]:
        """The firmware images this kind of VM needs (for the tests' dependency check)."""
        return _FIRMWARE_FILES[self]


_FIRMWARE_FILES: dict[Firmware, tuple[Path, ...]] = {
    Firmware.BIOS: (),
    Firmware.UEFI_PXE: (OVMF_CODE, OVMF_VARS),
    Firmware.UEFI_HTTP: (OVMF_CODE, OVMF_VARS),
    Firmware.UEFI_SECURE: (OVMF_SECURE_CODE, OVMF_SECURE_VARS),
    Firmware.UEFI_ARM64: (AAVMF_CODE, AAVMF_VARS),
    Firmware.UBOOT_ARM64: (UBOOT_ARM64,),
}


class VmError(AssertionError):
    """A VM did not produce what was waited for; the message carries the serial tail."""


class VmTimeout(VmError):
    pass


class VmExited(VmError):
    pass


def random_mac() -> str:
    """A random unicast MAC in QEMU's 52:54:00 range."""
    return "52:54:00:" + ":".join(f"{b:02x}" for b in os.urandom(3))


def _tail(path: Path, chars: int = 3000) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no file)"
    return text[-chars:]


@dataclass
class Vm:
    """One QEMU guest. ``lab=None`` runs without any network (direct kernel boots only).

    :param workdir: private directory for serial.log, qemu.log, qemu.pid, OVMF VARS.
    :param tap: tap device in ``lab.cli`` (see ``NetLab.add_tap``).
    :param kernel: for a direct ``-kernel`` boot (no firmware network boot): (kernel,
        initrd, append).
    :param watch: name -> regex; the first time each appears on serial is recorded in
        :attr:`seen` (seconds since start) while :meth:`wait_for` polls.
    :param console_script: (regex, text) steps typed into the serial console: each text is
        sent once its regex has appeared on serial after the previous step's match (U-Boot's
        "Hit any key", then its prompt).  Steps run while :meth:`wait_for` polls.
    """

    firmware: Firmware
    workdir: Path
    lab: NetLab | None = None
    tap: str = "vmtap0"
    mac: str = field(default_factory=random_mac)
    timeout: float = DEFAULT_TIMEOUT
    memory_mb: int = 512
    nic: str = "virtio-net-pci"
    kernel: tuple[Path, Path, str] | None = None
    extra_args: Sequence[str] = ()
    watch: Mapping[str, str] = field(default_factory=dict)
    console_script: Sequence[tuple[str, str]] = ()

    def __post_init__(self) -> None:
        self.workdir = Path(self.workdir)
        self.serial_log = self.workdir / "serial.log"
        self.serial_socket = self.workdir / "serial.sock"
        self._script = [(re.compile(rx), text) for rx, text in self.console_script]
        self._script_from = 0  # serial offset after the last step's match
        self._console: socket.socket | None = None
        self.qemu_log = self.workdir / "qemu.log"
        self.pidfile = self.workdir / "qemu.pid"
        self.seen: dict[str, float] = {}
        self.started: float | None = None
        self._proc: subprocess.Popen[Any] | None = None
        self._log: IO[bytes] | None = None
        self._watch = {name: re.compile(rx) for name, rx in self.watch.items()}

    # -- command line ----------------------------------------------------------------------

    def argv(self) -> list[str]:
        """The full command: ``timeout`` + QEMU (run it inside ``lab.cli``)."""
        fw = self.firmware
        if self._script:
            serial = [
                "-chardev",
                f"socket,id=ser0,path={self.serial_socket},server=on,wait=off,"
                f"logfile={self.serial_log}",
                "-serial", "chardev:ser0",
            ]  # fmt: skip
        else:
            serial = ["-serial", f"file:{self.serial_log}"]
        qemu = [
            fw.qemu, "-accel", "tcg", "-m", str(self.memory_mb), "-smp", "1",
            "-nographic", "-monitor", "none", "-parallel", "none", *serial,
            "-pidfile", str(self.pidfile), "-no-reboot", "-name", f"pxetwist-e2e-{self.mac}",
        ]  # fmt: skip
        qemu += self._machine()
        if self.kernel is not None:
            kernel, initrd, append = self.kernel
            qemu += ["-kernel", str(kernel), "-initrd", str(initrd), "-append", append]
        if self.lab is None:
            qemu += ["-nic", "none"]
        else:
            qemu += ["-netdev", f"tap,id=n0,ifname={self.tap},script=no,downscript=no"]
            if fw is Firmware.UBOOT_ARM64:
                qemu += ["-device", f"virtio-net-device,netdev=n0,mac={self.mac}"]
            else:
                nic = f"{self.nic},netdev=n0,mac={self.mac},bootindex=1"
                if fw.is_uefi:
                    nic += ",romfile="  # EDK2's own driver and PXE/HTTP client, not iPXE's ROM
                qemu += ["-device", nic]
            if fw is Firmware.BIOS:
                qemu += ["-boot", "order=n"]
        qemu += list(self.extra_args)
        limit = f"{self.timeout:g}"
        return ["timeout", "--kill-after=5", limit, *qemu]

    def _pflash(self, code: Path, vars_template: Path) -> list[str]:
        vars_fd = self.workdir / vars_template.name
        shutil.copyfile(vars_template, vars_fd)
        return [
            "-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
            "-drive", f"if=pflash,format=raw,unit=1,file={vars_fd}",
        ]  # fmt: skip

    def _machine(self) -> list[str]:
        """Machine, CPU and firmware arguments for this kind of VM."""
        fw = self.firmware
        if fw in (Firmware.UEFI_PXE, Firmware.UEFI_HTTP):
            args = ["-machine", "q35", *self._pflash(OVMF_CODE, OVMF_VARS)]
            if fw is Firmware.UEFI_HTTP:
                for knob in ("IPv4PXESupport", "IPv6PXESupport"):
                    args += ["-fw_cfg", f"name=opt/org.tianocore/{knob},string=n"]
            return args
        if fw is Firmware.UEFI_SECURE:
            return [
                "-machine", "q35,smm=on",
                "-global", "driver=cfi.pflash01,property=secure,value=on",
                "-global", "ICH9-LPC.disable_s3=1",
                *self._pflash(OVMF_SECURE_CODE, OVMF_SECURE_VARS),
                "-fw_cfg", "name=opt/org.tianocore/IPv6PXESupport,string=n",
            ]  # fmt: skip
        if fw is Firmware.UEFI_ARM64:
            return ["-machine", "virt", "-cpu", "cortex-a57", *self._pflash(AAVMF_CODE, AAVMF_VARS)]
        if fw is Firmware.UBOOT_ARM64:
            return ["-machine", "virt", "-cpu", "cortex-a57", "-bios", str(UBOOT_ARM64)]
        return []

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> Vm:
        if self._proc is not None:
            raise VmError("VM already started")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.serial_log.write_bytes(b"")
        argv = self.argv()
        self._log = self.qemu_log.open("wb")
        if self.lab is None:
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT
            )
        else:
            self._proc = self.lab.spawn("cli", argv, stdout=self._log, stderr=subprocess.STDOUT)
        self.started = time.monotonic()
        return self

    @property
    def elapsed(self) -> float:
        return 0.0 if self.started is None else time.monotonic() - self.started

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    def serial(self) -> str:
        try:
            return self.serial_log.read_text(errors="replace")
        except OSError:
            return ""

    def _qemu_pid(self) -> int | None:
        """QEMU's PID from its pidfile, only if that process is still this VM's QEMU."""
        try:
            pid = int(self.pidfile.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        return pid if str(self.pidfile).encode() in cmdline else None

    def stop(self) -> int | None:
        """Stop QEMU by PID (SIGTERM, then SIGKILL); idempotent. Returns the exit code."""
        rc = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()  # timeout(1) passes SIGTERM on to QEMU
                try:
                    self._proc.wait(STOP_GRACE)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait(STOP_GRACE)
            rc = self._proc.returncode
        pid = self._qemu_pid()  # QEMU orphaned by a SIGKILLed timeout(1)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        if self._console is not None:
            self._console.close()
            self._console = None
        return rc

    def __enter__(self) -> Vm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- observing -------------------------------------------------------------------------

    def _note(self, text: str) -> None:
        for name, rx in self._watch.items():
            if name not in self.seen and rx.search(text):
                self.seen[name] = round(self.elapsed, 2)

    def wait_for(
        self, pattern: str | re.Pattern[str], timeout: float | None = None
    ) -> re.Match[str]:
        """Poll the serial log until ``pattern`` matches; return the match.

        Raises :class:`VmTimeout` after ``timeout`` seconds (default: what is left of the
        VM's own limit) and :class:`VmExited` if QEMU ends without the pattern appearing.
        """
        if self._proc is None or self.started is None:
            raise VmError("VM not started")
        rx = re.compile(pattern) if isinstance(pattern, str) else pattern
        limit = self.timeout - self.elapsed if timeout is None else timeout
        deadline = time.monotonic() + max(limit, 0.0)
        while True:
            exited = self._proc.poll() is not None
            text = self.serial()
            self._note(text)
            self._type(text)
            m = rx.search(text)
            if m is not None:
                return m
            if exited:
                raise VmExited(
                    f"QEMU exited (rc {self._proc.returncode}) after {self.elapsed:.1f}s "
                    f"without {rx.pattern!r}\n{self.diagnostics()}"
                )
            if time.monotonic() >= deadline:
                raise VmTimeout(
                    f"no {rx.pattern!r} on serial after {self.elapsed:.1f}s\n{self.diagnostics()}"
                )
            time.sleep(POLL)

    def _type(self, text: str) -> None:
        """Run the console script's next step if its regex has appeared (see ``console_script``)."""
        if self._console is not None:
            with contextlib.suppress(BlockingIOError, OSError):
                while self._console.recv(65536):  # output is in serial.log; keep QEMU flowing
                    pass
        if not self._script:
            return
        rx, keys = self._script[0]
        m = rx.search(text, self._script_from)
        if m is None:
            return
        if self._console is None:
            console = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                console.connect(str(self.serial_socket))
            except OSError:
                console.close()
                return  # QEMU not listening yet: next poll
            console.setblocking(False)
            self._console = console
        self._console.setblocking(True)
        for char in keys:  # a key at a time, as a person types: no UART FIFO overrun
            self._console.sendall(char.encode())
            time.sleep(0.01)
        self._console.setblocking(False)
        self._script.pop(0)
        self._script_from = m.end()

    def wait_exit(self, timeout: float = 10.0) -> int | None:
        """Wait for QEMU to end by itself (e.g. guest power-off); None if it is still up."""
        if self._proc is None:
            return None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            return None

    def diagnostics(self) -> str:
        return (
            f"--- qemu log ({self.qemu_log}) ---\n{_tail(self.qemu_log, 1000)}\n"
            f"--- serial tail ({self.serial_log}) ---\n{_tail(self.serial_log)}"
        )


# -- IPv6 router advertisements ----------------------------------------------------------

ETH_P_IPV6 = 0x86DD
RA_MAC = bytes.fromhex("02005e770001")  # locally administered, fixed: easy to spot in pcaps


def _ll_from_mac(mac: bytes) -> bytes:
    """fe80::/64 address with the modified EUI-64 interface id of ``mac``."""
    eui = bytes([mac[0] ^ 0x02]) + mac[1:3] + b"\xff\xfe" + mac[3:6]
    return b"\xfe\x80" + b"\0" * 6 + eui


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def router_advertisement(src_mac: bytes = RA_MAC) -> bytes:
    """An Ethernet frame: RA to ff02::1, M=O=0, router lifetime 0, source link-layer option."""
    src = _ll_from_mac(src_mac)
    dst = bytes.fromhex("ff020000000000000000000000000001")
    # type 134, code 0, csum, cur hop limit 0, flags 0, lifetime 0, reachable 0, retrans 0
    body = struct.pack("!BBHBBHII", 134, 0, 0, 0, 0, 0, 0, 0) + bytes([1, 1]) + src_mac
    pseudo = src + dst + struct.pack("!I3xB", len(body), 58)
    body = body[:2] + struct.pack("!H", _csum(pseudo + body)) + body[4:]
    ip6 = struct.pack("!IHBB", 6 << 28, len(body), 58, 255) + src + dst
    eth = bytes.fromhex("333300000001") + src_mac + struct.pack("!H", ETH_P_IPV6)
    return eth + ip6 + body


def _is_router_solicitation(frame: bytes) -> bool:
    return (
        len(frame) >= 14 + 40 + 4
        and frame[12:14] == b"\x86\xdd"
        and frame[14 + 6] == 58  # next header ICMPv6 (iPXE sends no extension headers)
        and frame[14 + 40] == 133
    )


def send_ras(ifname: str, duration: float, interval: float) -> int:
    """Send RAs on ``ifname`` (AF_PACKET): on every router solicitation, and unsolicited
    every ``interval`` seconds, for ``duration`` seconds. Returns the number sent."""
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_IPV6))
    sock.bind((ifname, ETH_P_IPV6))
    frame = router_advertisement()
    sent = 0
    end = time.monotonic() + duration
    next_unsolicited = 0.0
    with sock:
        while (now := time.monotonic()) < end:
            if now >= next_unsolicited:
                sock.send(frame)
                sent += 1
                next_unsolicited = now + interval
            ready, _, _ = select.select([sock], [], [], min(next_unsolicited, end) - now)
            if ready and _is_router_solicitation(sock.recv(2048)):
                sock.send(frame)
                sent += 1
    return sent


@dataclass
class RouterAdvertiser:
    """A bounded RA sender process on the lab bridge (``lab.cli``, ``br0``); see module doc.

    IPv6 stays disabled in the lab namespaces: the frames go out through a packet socket.
    """

    lab: NetLab
    duration: float = DEFAULT_TIMEOUT + 30
    interval: float = 1.0
    ns: str = "cli"
    ifname: str = BRIDGE
    _proc: subprocess.Popen[Any] | None = None

    def start(self) -> RouterAdvertiser:
        args = [
            "ra", "--ifname", self.ifname,
            "--duration", f"{self.duration:g}", "--interval", f"{self.interval:g}",
        ]  # fmt: skip
        code = f"import sys; from pxetwist.lab.e2e.vm import main; sys.exit(main({args!r}))"
        argv = [sys.executable, "-c", code]
        env = dict(os.environ, PYTHONPATH=str(IMPORT_ROOT))
        self._proc = self.lab.spawn(
            self.ns,
            argv,
            cwd=str(IMPORT_ROOT),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        return self

    def stop(self) -> None:
        if self._proc is not None:
            NetLab.stop(self._proc)
            if self._proc.stderr is not None:
                self._proc.stderr.close()
            self._proc = None


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pxetwist.lab.e2e.vm")
    sub = ap.add_subparsers(dest="cmd", required=True)
    ra = sub.add_parser("ra", help="send IPv6 router advertisements (see RouterAdvertiser)")
    ra.add_argument("--ifname", required=True)
    ra.add_argument("--duration", type=float, default=DEFAULT_TIMEOUT)
    ra.add_argument("--interval", type=float, default=1.0)
    a = ap.parse_args(argv)
    if a.cmd == "ra":
        print(f"sent {send_ras(a.ifname, a.duration, a.interval)} RAs", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
