"""Issue 18 for DHCP in the namespace lab: floods of random MACs, malformed and mutated packets
against ``twistd -n pxe`` (authoritative), each followed by a real client (busybox udhcpc)
that must still complete DORA.

* 300 DISCOVERs from random MACs (perfdhcp ``-i``: DISCOVER and OFFER only) against a
  101-address pool, then a new client completes DORA (defect 2: held offers starved the pool).
* With machines listed (so ``unknown_limit`` defaults to all but 10 % of the range), 10,000
  random-MAC DORAs (perfdhcp), then a listed machine without a reservation gets an address and
  its boot file, fetched over TFTP byte for byte.
* Malformed packets produce a bounded log (defect 6); the full 100,000 is in
  ``bench/fuzz/dhcp.py --malformed``.
* Tens of thousands of mutated datagrams (:mod:`pxetwist.lab.dhcpfuzz`), then a real DORA.

Every flood is bounded in count and time and stays inside the lab's namespaces.
"""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

from pxetwist.lab import CLIENT_IF, SRV_IF, require_binary
from tests.dhcp.test_clients import ClientLabCase, Server, subnet_yaml

REPO = Path(__file__).resolve().parents[2]
SMALL_POOL = ("10.77.1.10", "10.77.1.110")  # 101 addresses
BOOT_FILE = "undionly.kpxe"
# udhcpc records what a PXE client reads from the ACK: its address, siaddr and boot file.
PXE_SCRIPT = """\
#!/bin/sh
echo "$1 ip=$ip siaddr=$siaddr boot_file=$boot_file bootfile=$bootfile" >> {events}
case "$1" in
    bound|renew) ip addr replace "$ip/{prefixlen}" dev "$interface" ;;
esac
exit 0
"""


class FloodLabCase(ClientLabCase):
    pool = SMALL_POOL
    extra = ""
    log_lines = 1000

    def make_server(self) -> Server:
        root = self.directory / "root"
        root.mkdir(exist_ok=True)
        (root / BOOT_FILE).write_bytes(bytes(range(256)) * 97)
        server = Server(self.lab, self.directory, subnet_yaml(str(self.lab.subnet), self.pool))
        text = server.config.read_text().replace(
            "tftp: {enabled: false,", "tftp: {enabled: true, workers: 0,"
        )
        server.config.write_text(
            text
            + f"boot: {{bios: {BOOT_FILE}}}\n"
            + f"log_budget: {{lines: {self.log_lines}}}\n"
            + self.extra
        )
        return server

    def udhcpc_lease(self, ns: str, name: str, *extra: str) -> str:
        """udhcpc in ``ns`` completes DORA; its address."""
        done = self.udhcpc(ns, name, *extra, timeout=60)
        found = re.search(r"lease of (\S+) obtained", done.stdout + done.stderr)
        assert found is not None, (
            f"no lease: {done.stdout}{done.stderr}\n{self.server.text()[-3000:]}"
        )
        return found.group(1)

    def flood(self, count: int, *extra: str, seconds: float = 120) -> dict[str, str]:
        """``python -m pxetwist.lab.dhcpfuzz flood`` from the relay namespace."""
        argv = [sys.executable, "-m", "pxetwist.lab.dhcpfuzz", "flood", self.lab.srv_ip,
                str(count), "7", "--max-seconds", str(seconds), *extra]  # fmt: skip
        done = self.lab.run(self.lab.cli, argv, timeout=seconds + 30, cwd=str(REPO))
        self.assertEqual(done.returncode, 0, done.stderr)
        return dict(line.split(" ", 1) for line in done.stdout.splitlines())

    def assert_alive(self) -> None:
        assert self.server.proc is not None
        self.assertIsNone(self.server.proc.poll(), "the server died")
        log = self.server.text()
        for word in ("Traceback", "Unhandled", "unexpected error"):
            self.assertNotIn(word, log)


class HeldOfferLabTests(FloodLabCase):
    def test_300_random_discovers_then_a_new_client_completes_dora(self) -> None:
        require_binary("perfdhcp", self)
        require_binary("busybox", self)
        # DISCOVER/OFFER only, 300 random MACs, relay mode (giaddr = the cli address).
        argv = ["perfdhcp", "-4", "-i", "-R", "300", "-n", "300", "-r", "300", "-p", "20",
                "-s", "5", "-l", self.lab.cli_ip, self.lab.srv_ip]  # fmt: skip
        done = self.lab.run(self.lab.cli, argv, timeout=60)
        offers = re.search(r"received packets: (\d+)", done.stdout)
        assert offers is not None, done.stdout + done.stderr
        self.assertGreaterEqual(int(offers.group(1)), 250, done.stdout)  # the pool was full
        address = self.udhcpc_lease(self.lab.clients[0], "new")
        self.assertIn(address, {f"10.77.1.{n}" for n in range(10, 111)})
        mac = self.mac(self.lab.clients[0])
        self.assertEqual(self.server.leases()[address]["mac"], mac)
        self.assert_one_client_per_address()
        self.assert_alive()


class UnknownLimitLabTests(FloodLabCase):
    pool = ("10.77.1.10", "10.77.1.250")  # 241 addresses; strangers may hold 216

    def make_server(self) -> Server:
        server = super().make_server()
        # The listed machine (no reservation) is the first client namespace's.
        mac = self.mac(self.lab.clients[0])
        server.config.write_text(
            server.config.read_text() + f"machines:\n  - {{mac: '{mac}', name: listed}}\n"
        )
        return server

    def test_10000_random_dora_leave_a_listed_machine_its_address_and_boot_file(self) -> None:
        require_binary("perfdhcp", self)
        require_binary("busybox", self)
        # -p bounds the run; on a loaded machine perfdhcp may need longer than 11 s for 10,000.
        argv = ["perfdhcp", "-4", "-R", "10000", "-n", "10000", "-r", "900", "-p", "100",
                "-s", "9", "-l", self.lab.cli_ip, self.lab.srv_ip]  # fmt: skip
        done = self.lab.run(self.lab.cli, argv, timeout=160)
        sent = re.search(r"sent packets: (\d+)", done.stdout)
        assert sent is not None, done.stdout + done.stderr
        # All 10,000 DISCOVERs went out.  perfdhcp's sending thread can overshoot -n by one when
        # it runs far below its rate (seen: 10,001 at 19 exchanges/s on a loaded host).
        self.assertIn(int(sent.group(1)), (10000, 10001), done.stdout)
        # Strangers never hold more than their limit.  They reach it (the log line below says
        # so), but how many of the 216 end bound rather than offered depends on timing: on a
        # loaded machine perfdhcp's REQUEST may come after its offer went to the next stranger.
        strangers = [row for row in self.server.leases().values() if row["state"] == "bound"]
        self.assertLessEqual(len(strangers), 241 - 25, "strangers hold more than their limit")
        self.assertGreater(len(strangers), (241 - 25) // 2, "few strangers got bound at all")

        ns = self.lab.clients[0]
        events = self.directory / "listed.events"
        script = self.directory / "listed.sh"
        script.write_text(PXE_SCRIPT.format(events=events, prefixlen=self.lab.prefixlen))
        script.chmod(0o755)
        argv = ["busybox", "udhcpc", "-i", CLIENT_IF, "-f", "-q", "-n", "-t", "4", "-T", "1",
                "-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000",
                "-O", "bootfile", "-s", str(script)]  # fmt: skip
        self.lab.run(ns, argv, timeout=60)
        record = events.read_text() if events.exists() else ""
        found = re.search(r"bound ip=(\S+) siaddr=(\S+) boot_file=(\S*) bootfile=(\S*)", record)
        assert found is not None, f"the listed machine got no lease: {record!r}"
        address, siaddr, boot_file, bootfile = found.groups()
        self.assertEqual(self.server.leases()[address]["mac"], self.mac(ns))
        self.assertEqual((siaddr, BOOT_FILE), (self.lab.srv_ip, boot_file or bootfile))
        fetched = self.directory / "fetched.bin"
        self.lab.run(
            ns, ["busybox", "tftp", "-g", "-r", BOOT_FILE, "-l", str(fetched), siaddr], timeout=60
        )
        self.assertEqual(fetched.read_bytes(), (self.directory / "root" / BOOT_FILE).read_bytes())
        self.assertRegex(
            self.server.text(), r"no free address in \S+ for machines not in the config"
        )
        self.assert_alive()


class MalformedLogLabTests(FloodLabCase):
    """Defect 6: 100,000 malformed packets wrote 46,240 lines (14.5 MB); now a budget."""

    log_lines = 100
    count = 20_000  # the CI slice; bench/fuzz/dhcp.py --malformed sends 100,000

    def test_malformed_packets_produce_a_bounded_log(self) -> None:
        require_binary("busybox", self)
        before = len(self.server.text().encode())
        began = time.monotonic()
        sent = self.flood(self.count, "--malformed")
        self.assertEqual(int(sent["sent"]), self.count)
        time.sleep(1.5)  # the last interval's summary line
        seconds = time.monotonic() - began
        text = self.server.text().encode()[before:].decode(errors="replace")
        lines = [line for line in text.splitlines() if "pxetwist.dhcp" in line]
        intervals = seconds + 2
        self.assertLessEqual(len(lines), self.log_lines * intervals + intervals, len(lines))
        self.assertLess(len(text.encode()), 200 * (self.log_lines + 1) * intervals)
        summed = sum(int(m.group(1)) for m in re.finditer(r"(\d+) invalid dropped", text))
        logged = text.count("dropped a malformed DHCP packet")
        self.assertGreater(summed, 0, "no summary line")
        self.assertLessEqual(logged + summed, self.count)
        print(f"\n{self.count} malformed: {len(lines)} DHCP log lines, {len(text.encode())} bytes")
        self.udhcpc_lease(self.lab.clients[0], "after")
        self.assert_alive()


class MutatedFuzzLabTests(FloodLabCase):
    count = 30_000

    def test_mutated_flood_then_a_real_client_completes_dora(self) -> None:
        require_binary("busybox", self)
        sent = self.flood(self.count, "--rate", "6000")
        self.assertEqual(int(sent["sent"]), self.count)
        print(f"\n{self.count} mutated datagrams at {sent['rate']}/s")
        self.udhcpc_lease(self.lab.clients[0], "after")
        self.assert_one_client_per_address()
        self.assert_alive()
        self.assertIn(f"on {SRV_IF}", self.server.text())
