#!/usr/bin/env python3
"""TFTP throughput: pxetwist against tftpd-hpa and atftpd, side by side, in a NetLab.

All three servers run at once in the lab's server namespace, each on its own port of
10.77.0.1, so the runs of one case alternate between servers and the machine's noise spreads
evenly over them.  Clients run in the client namespace.  Cases (the shape of
../shared/lab/tftp_bench.py):

* one download of a 64 MiB file with curl at blksize 512, 1468 and 65464 (lockstep), and with
  atftp at blksize 1468 and windowsize 1, 8, 32 (RFC 7440);
* 20 and 200 concurrent curl downloads (blksize 1468) of a 4 MiB file.

Every download is written to a RAM-backed directory and its SHA-256 checked; a run that fails
or differs counts as a failure and is left out of the rate.  Reported: median MB/s (10^6 B/s)
over ``--repeats`` runs, and each rate as a ratio of tftpd-hpa's for the same case.

pxetwist runs as ``twistd -n pxe`` with ``tftp.max_blksize: 65464`` (so blksize 65464 means the
same as for tftpd-hpa, which does not clamp to the MTU) and otherwise default settings.

Run as root from the repository (bounded: every client has a timeout, the lab and every
process in it are removed at the end, by PID)::

    sudo .venv/bin/python bench/tftp/run.py --repeats 3
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pxetwist.lab import NetLab, exit_on_sigterm, require_binary  # noqa: E402
from pxetwist.lab.pinning import parse_pin  # noqa: E402

HPA_CANDIDATES = [
    os.environ.get("HPA_DIR", "") and os.environ["HPA_DIR"] + "/usr/sbin/in.tftpd",
    "/tmp/pxelab/tftpd-hpa/usr/sbin/in.tftpd",
    "/var/tmp/pxetwist/tftpd-hpa/usr/sbin/in.tftpd",
]
PORTS = {"pxetwist": 69, "tftpd-hpa": 1069, "atftpd": 2069}
MB = 1e6

Client = Callable[[str, int, str, str], list[str]]


def curl(blksize: int) -> Client:
    def argv(ip: str, port: int, name: str, out: str) -> list[str]:
        return [
            "curl",
            "-sS",
            "--tftp-blksize",
            str(blksize),
            "-o",
            out,
            f"tftp://{ip}:{port}/{name}",
        ]

    return argv


def atftp(blksize: int, windowsize: int) -> Client:
    def argv(ip: str, port: int, name: str, out: str) -> list[str]:
        options = ["--option", f"blksize {blksize}"]
        if windowsize > 1:
            options += ["--option", f"windowsize {windowsize}"]
        return ["atftp", "--get", "-r", name, "-l", out, *options, ip, str(port)]

    return argv


SINGLE: dict[str, Client] = {
    "curl blksize 512": curl(512),
    "curl blksize 1468": curl(1468),
    "curl blksize 65464": curl(65464),
    "atftp blksize 1468 windowsize 1": atftp(1468, 1),
    "atftp blksize 1468 windowsize 8": atftp(1468, 8),
    "atftp blksize 1468 windowsize 32": atftp(1468, 32),
}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_random(path: Path, size: int) -> None:
    with path.open("wb") as file:
        for offset in range(0, size, 1 << 20):
            file.write(os.urandom(min(1 << 20, size - offset)))


def find_hpa(given: str | None) -> str:
    for candidate in [given or "", *HPA_CANDIDATES]:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise SystemExit("tftpd-hpa's in.tftpd not found: pass --hpa-bin or set HPA_DIR")


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="pxetwist-tftp-bench-"))
        os.chmod(self.work, 0o755)
        ram = Path("/dev/shm")
        self.out = Path(
            tempfile.mkdtemp(prefix="pxetwist-tftp-bench-out-", dir=ram if ram.is_dir() else None)
        )
        os.chmod(self.out, 0o777)
        self.root = self.work / "root"
        self.root.mkdir()
        self.big = "big.bin"
        self.small = "small.bin"
        write_random(self.root / self.big, args.big_mib << 20)
        write_random(self.root / self.small, args.small_mib << 20)
        self.want = {name: sha256(self.root / name) for name in (self.big, self.small)}
        self.lab = NetLab(clients=0)
        self.servers: dict[str, subprocess.Popen[Any]] = {}
        self.pin_server = args.pinning.server_prefix
        self.pin_client = args.pinning.client_prefix

    # Servers.

    def start(self) -> None:
        lab = self.lab.up()
        ip = lab.srv_ip
        config = self.work / "pxe.yaml"
        config.write_text(
            "interfaces: [srv0]\n"
            f"data_dir: {self.work / 'data'}\n"
            'dhcp: {mode: "off"}\n'
            "http: {enabled: false}\n"
            f"tftp: {{root: {self.root}, port: {PORTS['pxetwist']}, max_blksize: 65464, "
            f"workers: {self.args.workers}}}\n"
            "policy: {plugin_dirs: []}\n"
        )
        twistd = Path(sys.executable).with_name("twistd")
        commands = {
            "pxetwist": [
                str(twistd),
                "-n",
                "--pidfile=",
                "--logfile",
                str(self.work / "pxetwist.log"),
                "pxe",
                "--config",
                str(config),
            ],
            "tftpd-hpa": [
                self.args.hpa,
                "-L",
                "-u",
                "root",
                "-s",
                str(self.root),
                "-a",
                f"{ip}:{PORTS['tftpd-hpa']}",
            ],
            "atftpd": [
                "atftpd",
                "--daemon",
                "--no-fork",
                "--user",
                "root.root",
                "--bind-address",
                ip,
                "--port",
                str(PORTS["atftpd"]),
                "--maxthread",
                "400",
                "--logfile",
                str(self.work / "atftpd.log"),
                str(self.root),
            ],
        }
        for name in self.args.servers:
            with (self.work / f"{name}.err").open("w") as err:
                self.servers[name] = lab.spawn(
                    "srv",
                    [*self.pin_server, *commands[name]],
                    stdout=subprocess.DEVNULL,
                    stderr=err,
                    cwd=str(REPO),
                )
        for name in self.args.servers:
            lab.wait_port("srv", "udp", PORTS[name], timeout=20, proc=self.servers[name])
        if "pxetwist" in self.servers:
            self._wait_for_workers()

    def _wait_for_workers(self) -> None:
        """Transfer workers start after the port is bound; until then transfers run in the
        main process, which is not what a long-running server does."""
        log = self.work / "pxetwist.log"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            started = re.search(r"tftp: (\d+) transfer worker processes", text)
            if started is not None:
                ready = len(re.findall(r"tftp: transfer worker \d+ ready", text))
                if ready >= int(started.group(1)):
                    return
            time.sleep(0.1)
        raise SystemExit("pxetwist's transfer workers did not start; see its log")

    def stop(self) -> None:
        try:
            for proc in self.servers.values():
                self.lab.stop(proc)
            self.lab.down()
        finally:
            if self.args.keep_log and (self.work / "pxetwist.log").exists():
                shutil.copy(self.work / "pxetwist.log", self.args.keep_log)
            shutil.rmtree(self.work, ignore_errors=True)
            shutil.rmtree(self.out, ignore_errors=True)

    # Clients.

    def _check(self, out: Path, name: str) -> bool:
        try:
            ok = sha256(out) == self.want[name]
            out.unlink()
        except OSError:
            return False
        return ok

    def single(self, server: str, client: Client, name: str) -> float | None:
        """One timed download; MB/s, or None if it failed or the content differs."""
        out = self.out / f"{server}-single"
        argv = [*self.pin_client, *client(self.lab.srv_ip, PORTS[server], name, str(out))]
        began = time.monotonic()
        try:
            result = self.lab.run("cli", argv, timeout=self.args.timeout)
        except subprocess.TimeoutExpired:
            print(f"  {server}: timed out", file=sys.stderr)
            return None
        seconds = time.monotonic() - began
        if result.returncode != 0 or not self._check(out, name):
            print(
                f"  {server}: failed rc={result.returncode} {result.stderr.strip()[:120]}",
                file=sys.stderr,
            )
            return None
        return (self.root / name).stat().st_size / seconds / MB

    def concurrent(self, server: str, count: int) -> tuple[float | None, int]:
        """``count`` parallel curl downloads of the small file: aggregate MB/s and failures."""
        client = curl(1468)
        outs = [self.out / f"{server}-c{index}" for index in range(count)]
        began = time.monotonic()
        procs = [
            self.lab.spawn(
                "cli",
                [*self.pin_client, *client(self.lab.srv_ip, PORTS[server], self.small, str(out))],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for out in outs
        ]
        failed = 0
        for proc in procs:
            left = max(1.0, self.args.timeout - (time.monotonic() - began))
            try:
                proc.wait(left)
            except subprocess.TimeoutExpired:
                self.lab.stop(proc)
            if proc.returncode != 0:
                failed += 1
        seconds = time.monotonic() - began
        failed += sum(
            1
            for proc, out in zip(procs, outs, strict=True)
            if proc.returncode == 0 and not self._check(out, self.small)
        )
        for out in outs:
            out.unlink(missing_ok=True)
        size = (self.root / self.small).stat().st_size
        return (count * size / seconds / MB if not failed else None), failed

    # The run.

    def run(self) -> None:
        args = self.args
        results: dict[tuple[str, str], list[float]] = {}
        failures: dict[tuple[str, str], int] = {}
        cases: list[tuple[str, Callable[[str], tuple[float | None, int]]]] = []
        for case, client in SINGLE.items():
            if args.cases and not any(part in case for part in args.cases):
                continue

            def one(server: str, client: Client = client) -> tuple[float | None, int]:
                rate = self.single(server, client, self.big)
                return rate, 0 if rate is not None else 1

            cases.append((f"{case}, {args.big_mib} MiB", one))
        for count in args.concurrency:

            def many(server: str, count: int = count) -> tuple[float | None, int]:
                return self.concurrent(server, count)

            cases.append((f"{count} x curl blksize 1468, {args.small_mib} MiB each", many))
        for case, measure in cases:
            print(f"{case}:", file=sys.stderr)
            for repeat in range(args.repeats):
                for server in args.servers:
                    rate, failed = measure(server)
                    key = (case, server)
                    failures[key] = failures.get(key, 0) + failed
                    if rate is not None:
                        results.setdefault(key, []).append(rate)
                    print(
                        f"  run {repeat + 1} {server}: "
                        f"{'-' if rate is None else f'{rate:.1f}'} MB/s"
                        + (f", {failed} failed" if failed else ""),
                        file=sys.stderr,
                    )
        self.report([case for case, _ in cases], results, failures)

    def report(
        self,
        cases: Sequence[str],
        results: dict[tuple[str, str], list[float]],
        failures: dict[tuple[str, str], int],
    ) -> None:
        servers = self.args.servers
        print(
            f"\nTFTP throughput, MB/s (10^6 B/s), median of {self.args.repeats}; "
            "ratio = pxetwist / tftpd-hpa; failures = failed or corrupt downloads; "
            + (
                f"servers on CPUs {self.args.pin.replace(':', ', clients on CPUs ')}"
                if self.args.pin
                else "not pinned"
            )
            + f"; pxetwist tftp.workers: {self.args.workers}\n"
        )
        header = "| case | " + " | ".join(servers) + " | pxetwist / hpa | failures |"
        print(header)
        print("|---" * (len(servers) + 3) + "|")
        medians: dict[tuple[str, str], float] = {}
        for case in cases:
            cells = []
            for server in servers:
                runs = results.get((case, server), [])
                if runs:
                    medians[(case, server)] = statistics.median(runs)
                    cells.append(f"{medians[(case, server)]:.1f}")
                else:
                    cells.append("-")
            ours, theirs = medians.get((case, "pxetwist")), medians.get((case, "tftpd-hpa"))
            ratio = f"{ours / theirs:.2f}" if ours and theirs else "-"
            failed = ", ".join(
                f"{s} {failures[(case, s)]}" for s in servers if failures.get((case, s))
            )
            print(f"| {case} | " + " | ".join(cells) + f" | {ratio} | {failed or 0} |")
        hpa_1468 = next(
            (
                v
                for (c, s), v in medians.items()
                if s == "tftpd-hpa" and c.startswith("atftp blksize 1468 windowsize 1,")
            ),
            None,
        )
        w32 = next(
            (
                v
                for (c, s), v in medians.items()
                if s == "pxetwist" and c.startswith("atftp blksize 1468 windowsize 32")
            ),
            None,
        )
        if hpa_1468 and w32:
            print(
                f"\npxetwist windowsize 32 vs tftpd-hpa's lockstep blksize 1468: "
                f"{w32 / hpa_1468:.1f}x (target >= 4x)"
            )


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", default="auto", help="pxetwist's tftp.workers (default auto)")
    parser.add_argument("--big-mib", type=int, default=64)
    parser.add_argument("--small-mib", type=int, default=4)
    parser.add_argument(
        "--concurrency",
        type=lambda text: [int(n) for n in text.split(",") if n],
        default=[20, 200],
        help="comma-separated counts (default 20,200)",
    )
    parser.add_argument(
        "--servers", type=lambda text: text.split(","), default=["pxetwist", "tftpd-hpa", "atftpd"]
    )
    parser.add_argument(
        "--cases",
        type=lambda text: [part for part in text.split(",") if part],
        default=[],
        help="only single-download cases containing one of these strings",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds allowed for one download (or one concurrent batch)",
    )
    parser.add_argument("--hpa-bin", help="tftpd-hpa's in.tftpd")
    parser.add_argument("--keep-log", metavar="PATH", help="copy pxetwist's log here at the end")
    parser.add_argument(
        "--pin",
        metavar="SERVER_CPUS:CLIENT_CPUS",
        help="pin servers and clients with taskset, e.g. 0:1 (a server with its own CPU, as "
        "when the clients are other machines)",
    )
    args = parser.parse_args(argv)
    exit_on_sigterm()  # a kill PID still removes the lab and its servers
    try:
        args.pinning = parse_pin(args.pin)
    except ValueError as error:
        parser.error(str(error))
    if os.geteuid() != 0:
        raise SystemExit("run as root: the lab needs network namespaces")
    for tool in ("curl", "atftp", "atftpd", "ip", "ss"):
        require_binary(tool)
    args.hpa = find_hpa(args.hpa_bin) if "tftpd-hpa" in args.servers else ""
    if not 1 <= args.repeats <= 20:
        raise SystemExit("--repeats must be 1..20")
    bench = Bench(args)
    try:
        bench.start()
        bench.run()
    finally:
        bench.stop()


if __name__ == "__main__":
    main()
