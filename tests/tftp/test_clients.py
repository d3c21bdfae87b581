"""Real TFTP clients against ``twistd -n pxe`` in a network-namespace lab.

The server runs in the lab's server namespace (DHCP off, HTTP off), the clients (curl, tftp-hpa,
atftp, busybox) in the client namespace; every download is compared by SHA-256 with the file on
disk.  Nothing leaves the lab's namespaces.  Every client run has a timeout, and the lab stops
every process it started by PID when the class is done.

Skipped without root and the tools; under ``CI=true`` a missing tool fails instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import ClassVar

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import add_loss, remove_loss, require_binary, require_lab
from pxetwist.lab.tftpserver import CLIENT_TIMEOUT, MACHINE, TWISTD, ServerLab, sha256


def curl(ip: str, name: str, out: Path, blksize: int | None = None) -> list[str]:
    argv = ["curl", "-sS", "--max-time", str(int(CLIENT_TIMEOUT)), "-o", str(out)]
    if blksize is not None:
        argv += ["--tftp-blksize", str(blksize)]
    return [*argv, f"tftp://{ip}/{name}"]


def hpa(ip: str, name: str, out: Path) -> list[str]:
    return ["tftp", "-m", "binary", ip, "-c", "get", name, str(out)]


def atftp(ip: str, name: str, out: Path, *options: str) -> list[str]:
    argv = ["atftp", "--get", "-r", name, "-l", str(out)]
    for option in options:
        argv += ["--option", option]
    return [*argv, ip]


def busybox(ip: str, name: str, out: Path, blksize: int = 1468) -> list[str]:
    return ["busybox", "tftp", "-g", "-r", name, "-l", str(out), "-b", str(blksize), ip]


CLIENTS = {
    "curl-512": lambda ip, name, out: curl(ip, name, out, 512),
    "curl-1468": lambda ip, name, out: curl(ip, name, out, 1468),
    "curl-65464": lambda ip, name, out: curl(ip, name, out, 65464),
    "tftp-hpa": hpa,
    "atftp-1468": lambda ip, name, out: atftp(ip, name, out, "blksize 1468"),
    "atftp-1468-w8": lambda ip, name, out: atftp(ip, name, out, "blksize 1468", "windowsize 8"),
    "atftp-1468-w32": lambda ip, name, out: atftp(ip, name, out, "blksize 1468", "windowsize 32"),
    "busybox-1468": busybox,
}


def _require_tools(testcase: SynchronousTestCase | None = None) -> None:
    require_lab(testcase)
    for tool in ("curl", "tftp", "atftp", "busybox", "ss"):
        require_binary(tool, testcase)
    if not TWISTD.exists():
        require_binary("twistd", testcase)


class LabTestCase(SynchronousTestCase):
    files: ClassVar[dict[str, int]] = {}
    tftp_options: ClassVar[str] = ""
    server: ClassVar[ServerLab]

    @classmethod
    def setUpClass(cls) -> None:
        _require_tools()
        cls.server = ServerLab(cls.files, tftp=cls.tftp_options).up()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.down()

    def fetch(self, client: str, name: str, timeout: float = CLIENT_TIMEOUT) -> Path:
        """Download with one client and check it is byte-identical to the served file."""
        out = self.server.fresh(f"{client}-{name.replace('/', '_')}")
        argv = CLIENTS[client](self.server.ip, name, out)
        began = time.monotonic()
        result = self.server.run(argv, timeout=timeout)
        if os.environ.get("PXETWIST_TIMINGS"):
            print(f"{client} {name}: {time.monotonic() - began:.2f}s", file=sys.stderr)
        self.assertEqual(
            result.returncode,
            0,
            f"{argv}: {result.stderr}{result.stdout}\n--- server log ---\n{self.server.log_tail()}",
        )
        self.assertEqual(sha256(out), sha256(self.server.root / name), f"{client} {name}")
        return out


class ClientTests(LabTestCase):
    """Each client, each block size, byte-identical; rollover; exact multiples; concurrency.

    Transfers run in two worker processes here (:mod:`pxetwist.tftp.workers`), and in the
    listening process in :class:`InProcessClientTests`.
    """

    tftp_options: ClassVar[str] = ", timeout: 0.2, workers: 2"

    files: ClassVar[dict[str, int]] = {
        "small.bin": 300_000,
        "boot/undionly.kpxe": 70_144,  # T2's tsize
        "exact-512.bin": 512 * 300,
        "exact-1468.bin": 1468 * 100,
        "exact-65464.bin": 65464 * 3,
        "big40.bin": 40 << 20,  # 81920 blocks of 512: the block number wraps (§6.5)
        "tiny.bin": 2000,
        "empty.bin": 0,
    }

    def test_every_client_byte_identical(self) -> None:
        for client in CLIENTS:
            for name in ("small.bin", "boot/undionly.kpxe", "tiny.bin"):
                self.fetch(client, name)

    def test_empty_file(self) -> None:
        """One empty DATA block.  (curl 7.88 fails on empty files from any server, tftpd-hpa
        included: "getpeername() failed", so it is left out.)"""
        for client in ("tftp-hpa", "atftp-1468", "atftp-1468-w8", "busybox-1468"):
            self.fetch(client, "empty.bin")

    def test_file_of_an_exact_multiple_of_the_block_size(self) -> None:
        """RFC 1350 §6: ends with an empty DATA block."""
        self.fetch("curl-512", "exact-512.bin")
        self.fetch("tftp-hpa", "exact-512.bin")
        self.fetch("curl-1468", "exact-1468.bin")
        self.fetch("atftp-1468", "exact-1468.bin")
        self.fetch("atftp-1468-w8", "exact-1468.bin")
        self.fetch("busybox-1468", "exact-1468.bin")
        self.fetch("curl-65464", "exact-65464.bin")

    def test_more_than_65535_blocks(self) -> None:
        """§6.5: 40 MiB at blksize 512 is 81920 blocks; the wire number rolls over to 0."""
        self.fetch("curl-512", "big40.bin", timeout=120)

    def test_200_concurrent_downloads(self) -> None:
        count = 200
        want = sha256(self.server.root / "small.bin")
        started = time.monotonic()
        procs = []
        outs = []
        for index in range(count):
            out = self.server.fresh(f"concurrent-{index}")
            outs.append(out)
            procs.append(
                self.server.lab.spawn(
                    "cli",
                    curl(self.server.ip, "small.bin", out, 1468),
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                )
            )
        failures = []
        for index, proc in enumerate(procs):
            left = max(1.0, 90 - (time.monotonic() - started))
            try:
                _, err = proc.communicate(timeout=left)
            except subprocess.TimeoutExpired:
                self.server.lab.stop(proc)
                failures.append(f"#{index}: timed out")
                continue
            if proc.returncode != 0:
                failures.append(f"#{index}: rc {proc.returncode} {err.decode()[:100]}")
            elif sha256(outs[index]) != want:
                failures.append(f"#{index}: content differs")
        self.assertEqual(failures, [], self.server.log_tail())

    def test_traversal_is_refused(self) -> None:
        """§6.6: no name reaches outside the root (relative, backslashes, symlinks)."""
        secret = self.server.work / "secret.txt"
        secret.write_text("top secret\n")
        link = self.server.root / "escape"
        if not link.is_symlink():
            link.symlink_to(secret)
        names = [
            "../secret.txt",
            "../../../../etc/passwd",
            "boot/../../secret.txt",
            "..\\secret.txt",
            "escape",
            "/etc/passwd",
        ]
        for name in names:
            for client in ("tftp-hpa", "atftp-1468", "busybox-1468"):
                out = self.server.fresh(f"traversal-{client}")
                argv = CLIENTS[client](self.server.ip, name, out)
                result = self.server.run(argv)
                leaked = out.exists() and out.stat().st_size > 0
                self.assertFalse(leaked, f"{client} got {name!r}")
                if client != "tftp-hpa":  # tftp-hpa exits 0 after printing the error
                    self.assertNotEqual(result.returncode, 0, f"{client} {name!r}")
                self.assertRegex(
                    result.stderr + result.stdout,
                    r"(?i)access violation|not found",
                    f"{client} {name!r}",
                )

    def test_not_found(self) -> None:
        out = self.server.fresh("missing")
        result = self.server.run(curl(self.server.ip, "bootsig.bin", out))
        self.assertEqual(result.returncode, 68)  # CURLE_TFTP_NOTFOUND

    def test_generated_pxelinux_config(self) -> None:
        out = self.server.fresh("pxelinux-cfg")
        name = "pxelinux.cfg/01-" + MACHINE.replace(":", "-")
        result = self.server.run(curl(self.server.ip, name, out))
        self.assertEqual(result.returncode, 0, result.stderr)
        text = out.read_text()
        self.assertIn("KERNEL compute/vmlinuz\n", text)
        self.assertIn("APPEND console=ttyS0\n", text)


class InProcessClientTests(ClientTests):
    """:class:`ClientTests` with ``tftp.workers: 0``: every transfer in the listening process."""

    tftp_options: ClassVar[str] = ", timeout: 0.2, workers: 0"


class LossTests(LabTestCase):
    """20 % random packet loss: the server's retransmissions still deliver every byte.

    Loss on the server's egress (OACK, DATA) for every client, and on the client's egress
    (ACKs) as well for busybox.  Some clients make loss slow by design, whatever the server:
    curl asks for ``timeout 5`` (RFC 2349), which the server honours, so each lost datagram of
    a curl transfer waits 5 s for its retransmission (curl is left out: 5-30 s per file);
    tftp-hpa re-sends a lost ACK only on its own 5 s timer.  The server's own timeout is 0.1 s.
    """

    files: ClassVar[dict[str, int]] = {
        "lossy.bin": 12_000,
        "lossy-exact.bin": 1468 * 6,
    }
    tftp_options: ClassVar[str] = ", timeout: 0.1, retries: 10"

    @classmethod
    def setUpClass(cls) -> None:
        _require_tools()
        require_binary("tc")
        super().setUpClass()
        add_loss(cls.server.lab, "srv", "srv0", 20)

    def test_loss_is_in_place(self) -> None:
        """The drop rule really drops: the server log shows retransmissions."""
        for _ in range(3):
            self.fetch("atftp-1468", "lossy.bin", timeout=90)
        self.assertRegex(self.server.log_tail(), r"[1-9]\d* retransmitted")

    def test_data_loss(self) -> None:
        for client in ("tftp-hpa", "atftp-1468", "atftp-1468-w8", "busybox-1468"):
            for name in ("lossy.bin", "lossy-exact.bin"):
                self.fetch(client, name, timeout=90)

    def test_loss_both_ways(self) -> None:
        """ACKs lost too: the server resends on its timer and ignores duplicate ACKs.

        busybox only: atftp aborts on a repeated OACK ("unexpected OACK"), which is what a
        server must send when ACK 0 is lost (RFC 2347), and tftp-hpa/curl wait 5 s per loss.
        """
        add_loss(self.server.lab, "cli", "br0", 20)
        self.addCleanup(remove_loss, self.server.lab, "cli", "br0")
        for _ in range(3):
            for name in ("lossy.bin", "lossy-exact.bin"):
                self.fetch("busybox-1468", name, timeout=90)


class SlowLinkTests(LabTestCase):
    """Adaptive windows (``tftp.adaptive_window``) on a slow link with a shallow buffer.

    The server's egress is a 100 Mbit/s token bucket holding 16 KB (``tc tbf``), so a window of
    32 blocks (47 KB at once) loses its tail every time; the adaptive window sends it in paced
    bursts instead (bench/tftp/loss.py measures how much faster that is).  Here: real RFC 7440
    clients get every byte through paced windows, and lockstep clients are unaffected.
    """

    files: ClassVar[dict[str, int]] = {"slow.bin": 400_000, "slow-exact.bin": 1468 * 64}
    tftp_options: ClassVar[str] = ", timeout: 0.2, adaptive_window: true"

    @classmethod
    def setUpClass(cls) -> None:
        _require_tools()
        require_binary("tc")
        super().setUpClass()
        shaping = ["tc", "qdisc", "add", "dev", "srv0", "root", "tbf", "rate", "100mbit"]
        shaping += ["burst", "16kb", "latency", "1ms"]
        result = cls.server.lab.run("srv", shaping, timeout=10)
        if result.returncode != 0:
            cls.server.down()
            raise AssertionError(f"cannot shape the link: {result.stderr}")

    def test_paced_windows_deliver_every_byte(self) -> None:
        for client in ("atftp-1468-w32", "atftp-1468-w8", "busybox-1468", "curl-1468"):
            for name in ("slow.bin", "slow-exact.bin"):
                self.fetch(client, name, timeout=90)
        self.assertRegex(
            self.server.log_text(), r"tftp completed: slow.bin .* windowsize 32, [1-9]\d* retrans"
        )
