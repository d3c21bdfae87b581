#!/usr/bin/env python3
"""TFTP windows under packet loss: pxetwist with and without adaptive windowing, and atftpd.

Issue #5 asks for adaptive windowing (shrink a client's RFC 7440 window when blocks are lost,
grow it back as ACKs arrive) measured under loss in the lab.  This runs, at the same time in
the lab's server namespace:

* pxetwist with ``tftp.adaptive_window: false`` (the default) on port 69,
* pxetwist with ``tftp.adaptive_window: true`` on port 3069,
* atftpd (RFC 7440 windows, Debian's patch) on port 2069,

drops a given share of the packets leaving the server (``tc netem`` where the kernel has it, else
a random classic-BPF drop filter, :func:`pxetwist.lab.add_loss`), and downloads a file with
``atftp --option "blksize 1468" --option "windowsize N"`` from the client namespace.  Every
download is SHA-256 checked; reported is the median time per download and the goodput.

Run as root from the repository (bounded: every download has a timeout; the lab and every
process in it are removed at the end, by PID)::

    sudo .venv/bin/python bench/tftp/loss.py --loss 1,5,20 --windows 8,32 --repeats 5
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import NetLab, add_loss, exit_on_sigterm, remove_loss, require_binary  # noqa: E402

SERVERS = {"pxetwist": 69, "pxetwist-adaptive": 3069, "atftpd": 2069}
MB = 1e6


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class LossBench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="pxetwist-tftp-loss-"))
        os.chmod(self.work, 0o755)
        self.root = self.work / "root"
        self.root.mkdir()
        self.out = self.work / "out"
        self.out.mkdir()
        os.chmod(self.out, 0o777)
        self.name = "file.bin"
        (self.root / self.name).write_bytes(os.urandom(args.kib << 10))
        self.want = sha256(self.root / self.name)
        self.lab = NetLab(clients=0)
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    def start(self) -> None:
        lab = self.lab.up()
        twistd = Path(sys.executable).with_name("twistd")
        for name, adaptive in (("pxetwist", False), ("pxetwist-adaptive", True)):
            config = self.work / f"{name}.yaml"
            config.write_text(
                "interfaces: [srv0]\n"
                f"data_dir: {self.work / name}\n"
                'dhcp: {mode: "off"}\n'
                "http: {enabled: false}\n"
                f"tftp: {{root: {self.root}, port: {SERVERS[name]}, "
                f"timeout: {self.args.timeout}, retries: 20, "
                f"adaptive_window: {str(adaptive).lower()}}}\n"
                "policy: {plugin_dirs: []}\n"
            )
            self.procs[name] = lab.spawn(
                "srv",
                [str(twistd), "-n", "--pidfile=", "--logfile", str(self.work / f"{name}.log"),
                 "pxe", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                cwd=str(REPO),
            )  # fmt: skip
        self.procs["atftpd"] = lab.spawn(
            "srv",
            ["atftpd", "--daemon", "--no-fork", "--user", "root.root", "--bind-address",
             lab.srv_ip, "--port", str(SERVERS["atftpd"]), "--logfile",
             str(self.work / "atftpd.log"), str(self.root)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        for name, port in SERVERS.items():
            lab.wait_port("srv", "udp", port, timeout=20, proc=self.procs[name])
        time.sleep(2)  # pxetwist's transfer workers

    def stop(self) -> None:
        try:
            for proc in self.procs.values():
                self.lab.stop(proc)
            self.lab.down()
        finally:
            shutil.rmtree(self.work, ignore_errors=True)

    def download(self, server: str, window: int) -> float | None:
        out = self.out / server
        if out.exists():
            out.unlink()
        argv = ["atftp", "--get", "-r", self.name, "-l", str(out),
                "--option", "blksize 1468", "--option", f"windowsize {window}",
                self.lab.srv_ip, str(SERVERS[server])]  # fmt: skip
        began = time.monotonic()
        try:
            result = self.lab.run("cli", argv, timeout=self.args.deadline)
        except subprocess.TimeoutExpired:
            return None
        seconds = time.monotonic() - began
        if result.returncode != 0 or not out.exists() or sha256(out) != self.want:
            return None
        return seconds

    def conditions(self) -> list[tuple[str, list[str] | int]]:
        """(label, how): random loss percentages, then shallow-buffered links (``tbf``)."""
        found: list[tuple[str, list[str] | int]] = [(f"{n}% loss", n) for n in self.args.loss]
        for rate in self.args.links:
            tbf = ["tbf", "rate", rate, "burst", "16kb", "latency", "1ms"]
            found.append((f"{rate} link, 16 KB buffer", tbf))
        return found

    def run(self) -> None:
        rows = []
        for label, how in self.conditions():
            if isinstance(how, int):
                if how:
                    add_loss(self.lab, "srv", "srv0", how)
            else:
                self.lab.run("srv", ["tc", "qdisc", "add", "dev", "srv0", "root", *how], timeout=10)
            try:
                for window in self.args.windows:
                    times: dict[str, list[float]] = {name: [] for name in SERVERS}
                    failed = dict.fromkeys(SERVERS, 0)
                    for repeat in range(self.args.repeats):
                        for name in self.args.servers:
                            seconds = self.download(name, window)
                            shown = "failed" if seconds is None else f"{seconds:.2f}s"
                            print(f"{label}, window {window}, run {repeat + 1}, {name}: {shown}",
                                  file=sys.stderr)  # fmt: skip
                            if seconds is None:
                                failed[name] += 1
                            else:
                                times[name].append(seconds)
                    rows.append((label, window, times, failed))
            finally:
                remove_loss(self.lab, "srv", "srv0")
        size = self.args.kib << 10
        print(
            "\nTFTP with loss or a slow link on the server's egress: atftp blksize 1468, "
            f"{self.args.kib} KiB, "
            f"median of {self.args.repeats}; seconds per download (goodput MB/s); "
            f"pxetwist tftp.timeout {self.args.timeout}s\n"
        )
        print("| condition | window | " + " | ".join(SERVERS) + " | adaptive vs fixed |")
        print("|---" * (len(SERVERS) + 3) + "|")
        for label, window, times, failed in rows:
            cells = []
            medians = {}
            for name in SERVERS:
                if times[name]:
                    median = statistics.median(times[name])
                    medians[name] = median
                    cell = f"{median:.2f} ({size / median / MB:.1f})"
                else:
                    cell = "-"
                if failed[name]:
                    cell += f", {failed[name]} failed"
                cells.append(cell)
            ratio = (
                f"{medians['pxetwist'] / medians['pxetwist-adaptive']:.2f}x faster"
                if "pxetwist" in medians and "pxetwist-adaptive" in medians
                else "-"
            )
            print(f"| {label} | {window} | " + " | ".join(cells) + f" | {ratio} |")


def percent_list(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--loss", type=percent_list, default=[0, 5, 20])
    parser.add_argument("--windows", type=percent_list, default=[32])
    parser.add_argument(
        "--servers",
        type=lambda text: [part for part in text.split(",") if part in SERVERS],
        default=list(SERVERS),
        help="a subset of " + ",".join(SERVERS),
    )
    parser.add_argument(
        "--links",
        type=lambda text: [part for part in text.split(",") if part],
        default=["100mbit"],
        help="tbf rates for shallow-buffered links (16 KB burst, 1 ms queue)",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kib", type=int, default=2048, help="file size")
    parser.add_argument("--timeout", type=float, default=0.2, help="pxetwist's tftp.timeout")
    parser.add_argument("--deadline", type=float, default=120.0, help="seconds per download")
    args = parser.parse_args()
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab needs network namespaces")
    for tool in ("atftp", "atftpd", "tc", "ip", "ss"):
        require_binary(tool)
    bench = LossBench(args)
    try:
        bench.start()
        bench.run()
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
