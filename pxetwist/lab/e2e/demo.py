"""A one-minute demo: pxetwist boots a real (emulated) BIOS machine, shown as it happens.

Run ``scripts/demo.sh`` (as root). It builds a throw-away namespace lab, the boot tree
(cached after the first run), starts ``twistd -n pxe`` in the lab's server namespace with
a config naming one machine, boots that machine (SeaBIOS + the iPXE NIC ROM, under QEMU)
and prints, on one time line (seconds since the VM started), pxetwist's stage events
(DHCP offer/ack, TFTP transfers, HTTP requests) and the VM's serial console. It ends when
the machine's initrd prints its marker with the token pxetwist's policy put on its kernel
command line and powers off, or after ``--timeout`` seconds; the lab, pxetwist and QEMU are
stopped (by PID) and removed on every exit, Ctrl-C included.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

from pxetwist.lab import NetLab, lab_available, remove_stale_labs

from . import SCENARIOS, TAP, WATCH, BootRun
from .boottree import MARKER_RE, build_tree, missing_inputs
from .pxetwist_server import PxetwistServer, stage_events
from .vm import RouterAdvertiser, Vm, random_mac

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b[()][A-Z0-9]|[\x00-\x08\x0b-\x1f\x7f]")
_COLOURS = {"dhcp": "33", "tftp": "36", "http": "35", "policy": "32", "vm": "0", "demo": "1"}
_KERNEL_LINE = re.compile(r"^\[\s*\d+\.\d+\] ")
# kernel lines worth showing without --verbose
_KERNEL_KEEP = re.compile(r"Linux version|Command line:|Freeing initrd|Run /init|Power down")


class _Printer:
    def __init__(self, colour: bool) -> None:
        self.colour = colour
        self.t0 = time.monotonic()

    def __call__(self, source: str, text: str) -> None:
        stamp = f"{time.monotonic() - self.t0:7.2f}s"
        label = f"{source:>6}"
        if self.colour:
            label = f"\x1b[{_COLOURS.get(source, '0')}m{label}\x1b[0m"
            if source != "vm":
                text = f"\x1b[{_COLOURS.get(source, '0')}m{text}\x1b[0m"
        print(f"{stamp} {label} | {text}", flush=True)


class _Follower:
    """New complete lines of a growing file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self.partial = ""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        text = self.partial + data.decode(errors="replace").replace("\r\n", "\n")
        *done, self.partial = re.split(r"[\r\n]", text)
        return done


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def demo(timeout: float, keep: bool, colour: bool, verbose: bool = False) -> int:
    scenario = SCENARIOS["bios-ipxe-http"]
    say = _Printer(colour)
    workdir = Path(tempfile.mkdtemp(prefix="pxetwist-demo-"))
    workdir.chmod(0o755)
    remove_stale_labs()
    lab = NetLab(clients=0, taps=[TAP])
    server = PxetwistServer()
    ra: RouterAdvertiser | None = None
    vm: Vm | None = None
    try:
        say("demo", "building the boot tree (iPXE, pxelinux, shim+GRUB, kernel, marker initrd)")
        tree = build_tree(workdir / "root")
        lab.up()
        say("demo", f"lab up: pxetwist on {lab.srv_ip} (netns {lab.srv}), VM on {lab.cli}")
        run = BootRun(scenario, random_mac(), secrets.token_hex(8), lab.srv_ip, server.http_port)
        server.start(lab, tree, run, workdir / "server")
        say("demo", f"pxetwist up: config {server.config_path}")
        say("demo", f"machine {run.mac} -> cmdline {run.cmdline!r} (only in pxetwist's config)")
        ra = RouterAdvertiser(lab, duration=timeout + 30).start()
        vm = Vm(
            scenario.firmware,
            workdir / "vm",
            lab=lab,
            tap=TAP,
            mac=run.mac,
            timeout=timeout,
            watch=WATCH,
        )
        log = _Follower(server.log_path)
        log.lines()  # skip start-up lines
        serial = _Follower(vm.serial_log)
        say = _Printer(colour)  # the time line starts with the VM
        vm.start()
        say("demo", f"VM started: {scenario.title}")
        found = None
        skipped = 0
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in stage_events("\n".join(log.lines())):
                say(event.stage, event.text)
            for line in serial.lines():
                clean = _ANSI.sub("", line).strip()
                if "Linux version" in clean:  # "Probing EDD... ok[ 0.0] Linux version"
                    clean = clean[clean.find("[") :]
                if not clean:
                    continue
                if verbose or not _KERNEL_LINE.match(clean) or _KERNEL_KEEP.search(clean):
                    say("vm", clean)
                else:
                    skipped += 1
                m = MARKER_RE.search(clean)
                if m is not None:
                    found = m
            if found is not None and not vm.running:
                break
            if not vm.running and found is None:
                break
            time.sleep(0.05)
        for event in stage_events("\n".join(log.lines())):
            say(event.stage, event.text)
        if found is not None and f"pxetwist.token={run.token}" in found.group("cmdline").split():
            if skipped:
                say("demo", f"({skipped} other kernel lines not shown; --verbose shows them)")
            say("demo", f"booted: the marker carries this run's token {run.token}")
            return 0
        say("demo", "FAILED: no marker with the token\n" + server.diagnostics())
        return 1
    except KeyboardInterrupt:
        say("demo", "interrupted")
        return 130
    finally:
        if vm is not None:
            vm.stop()
        if ra is not None:
            ra.stop()
        server.stop()
        lab.down()
        if keep:
            say("demo", f"kept {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
        say("demo", "cleaned up: VM, pxetwist and the lab are gone")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="scripts/demo.sh", description=__doc__)
    ap.add_argument("--timeout", type=float, default=90.0, help="seconds the VM may take")
    ap.add_argument("--keep", action="store_true", help="keep logs and serial in /tmp")
    ap.add_argument("--verbose", action="store_true", help="show every kernel line")
    ap.add_argument("--no-colour", action="store_true")
    args = ap.parse_args(argv)
    ok, why = lab_available()
    if not ok:
        print(f"demo: needs root and network namespaces: {why}", file=sys.stderr)
        return 2
    missing = missing_inputs()
    if missing:
        print("demo: missing boot inputs (run scripts/setup.sh --test): " + ", ".join(missing))
        return 2
    # Ctrl-C even when started from a script that ignores SIGINT for background jobs
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    colour = not args.no_colour and sys.stdout.isatty() and "NO_COLOR" not in os.environ
    return demo(args.timeout, args.keep, colour, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
