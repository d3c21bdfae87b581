"""Real DHCP clients against ``twistd -n pxe`` (authoritative) in a namespace lab.

Each test builds its own :class:`~pxetwist.lab.NetLab`, starts the venv's ``twistd -n pxe`` in
``<lab>-srv`` with a fresh ``data_dir`` and drives stock clients in bare client namespaces:

* busybox ``udhcpc``, ISC ``dhclient`` and ``dhcpcd`` each get a lease, renew it (a unicast
  REQUEST in RENEWING state, RFC 2131 §4.3.2) and release it (§4.3.4); renew and release are
  checked on the server's side, in its log and in its SQLite lease file.
* A client behind a relay (dnsmasq ``--dhcp-relay`` in the router namespace) gets an address
  from the relay's subnet, and the server's replies go to the relay (giaddr, §4.1).
* A reservation (``machines[].address``) gives its machine the fixed address.
* A restarted server keeps every lease: a RENEW of an old lease is ACKed, not NAKed, and a
  client that DISCOVERs again gets its address back.
* A full pool offers nothing to the client that does not fit (§4.3.1), and no address is
  ever held by two clients.
* ``kill -9`` during a perfdhcp run: every ACK a client received (captured with tcpdump on
  the client side, because the server's log line precedes the ACK) is in the lease file
  after the restart, and no address was ever ACKed to two clients.

The hook scripts record each event and put the address on the interface (``ip addr
replace``): a RENEWING client sends its REQUEST unicast from that address. Every process is
stopped by PID (the lab does it for whatever a test leaves), every client run and every
perfdhcp run is bounded, and all traffic stays inside the namespaces these tests create.
``PXETWIST_KEEP_LAB_LOGS=1`` keeps each test's server log, lease file and captures in /tmp.

At the end, a check without a lab of what the busy-server hot path added:
``PolicyChain.decide_now`` (the socket's reader is in test_sockets.py).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface import implementer

from pxetwist.dhcp.options import MessageType
from pxetwist.dhcp.packet import MalformedPacket, decode
from pxetwist.lab import CLIENT_IF, SRV_IF, NetLab, require_binary, require_lab
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.interfaces import IBootPolicy
from pxetwist.policy.request import BootRequest
from pxetwist.testing import make_request
from tests.util import temp_dir

TWISTD = Path(sys.executable).with_name("twistd")
POOL = ("10.77.1.10", "10.77.1.250")
RELAY_POOL = ("10.78.1.10", "10.78.1.250")
SCRIPT = """\
#!/bin/sh
# udhcpc passes the event as $1 and the address as $ip; dhclient and dhcpcd use $reason
# and $new_ip_address.  Record the event, and configure the address so that a RENEWING
# client can send its unicast REQUEST from it.
event="${{1:-$reason}}"
addr="${{ip:-$new_ip_address}}"
echo "$event $addr" >> {events}
case "$event" in
    bound|renew|BOUND|RENEW|REBIND|REBOOT)
        [ -n "$addr" ] && ip addr replace "$addr/{prefixlen}" dev "$interface" ;;
    deconfig|RELEASE|EXPIRE|FAIL|STOP)
        ip -4 addr flush dev "$interface" ;;
esac
exit 0
"""


def wait_for(predicate: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


class Server:
    """``twistd -n pxe`` in the lab's server namespace, with its log and lease file."""

    def __init__(self, lab: NetLab, directory: Path, subnets: str, extra: str = "") -> None:
        self.lab = lab
        self.directory = directory
        self.data = directory / "data"
        self.log = directory / "pxetwist.log"
        self.config = directory / "pxe.yaml"
        (directory / "root").mkdir(exist_ok=True)
        self.config.write_text(
            f"""\
interfaces: [{SRV_IF}]
data_dir: {self.data}
dhcp:
  mode: authoritative
  boot_server: false
  offer_hold: 60
  subnets:
{subnets}
tftp: {{enabled: false, root: {directory / "root"}}}
http: {{enabled: false, root: {directory / "root"}}}
{extra}"""
        )
        self.proc: subprocess.Popen[Any] | None = None
        self.starts = 0

    def start(self) -> None:
        argv = [str(TWISTD), "-n", "--pidfile=", "-l", str(self.log), "pxe", "-c", str(self.config)]
        with open(self.directory / "twistd.err", "a") as err:
            self.proc = self.lab.spawn(self.lab.srv, argv, stdout=err, stderr=err)
        self.starts += 1
        self.lab.wait_port(self.lab.srv, "udp", 67, timeout=20, proc=self.proc)
        # Serving once this start's "loaded N leases from ..." line is in the log.
        wait_for(lambda: self.text().count(" leases from ") >= self.starts, 10, "the lease store")

    def stop(self) -> None:
        assert self.proc is not None
        self.lab.stop(self.proc, grace=10)
        self.proc = None

    def kill(self) -> None:
        """``kill -9``: no shutdown, no last commit."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)
        self.proc = None

    def text(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match[str]:
        found = wait_for(lambda: re.search(pattern, self.text()), timeout, f"log {pattern!r}")
        assert isinstance(found, re.Match)
        return found

    def leases(self) -> dict[str, sqlite3.Row]:
        """The lease file as another process sees it (store.py's schema), by address."""
        connection = sqlite3.connect(self.data / "leases.sqlite", timeout=10)
        connection.row_factory = sqlite3.Row
        try:
            return {row["address"]: row for row in connection.execute("SELECT * FROM leases")}
        finally:
            connection.close()


def subnet_yaml(network: str, pool: tuple[str, str], lease_time: int = 600) -> str:
    return (
        f"    - network: {network}\n"
        f"      range: [{pool[0]}, {pool[1]}]\n"
        f"      lease_time: {lease_time}\n"
    )


class ClientLabCase(SynchronousTestCase):
    """One lab and one server per test."""

    clients = 1
    relay_clients = 0
    lease_time = 600

    def setUp(self) -> None:
        require_lab(self)
        require_binary("ip", self)
        self.directory = temp_dir(self)
        self.addCleanup(self.keep_logs)  # runs after lab.down: the server has stopped
        self.lab = NetLab(clients=self.clients, relay_clients=self.relay_clients)
        self.lab.up()
        self.addCleanup(self.lab.down)
        self.server = self.make_server()
        self.server.start()

    def make_server(self) -> Server:
        return Server(
            self.lab, self.directory, subnet_yaml(str(self.lab.subnet), POOL, self.lease_time)
        )

    def keep_logs(self) -> None:
        """With $PXETWIST_KEEP_LAB_LOGS set, keep the server's and clients' files in /tmp."""
        if os.environ.get("PXETWIST_KEEP_LAB_LOGS"):
            shutil.copytree(self.directory, f"/tmp/{self.id()}", dirs_exist_ok=True)

    def mac(self, ns: str) -> str:
        return str(self.lab.run(ns, ["cat", f"/sys/class/net/{CLIENT_IF}/address"]).stdout).strip()

    def script(self, name: str) -> tuple[Path, Path]:
        """A hook script for a client, and the file it records events in."""
        events = self.directory / f"{name}.events"
        events.touch()
        script = self.directory / f"{name}.sh"
        script.write_text(SCRIPT.format(events=events, prefixlen=self.lab.prefixlen))
        script.chmod(0o755)
        return script, events

    @staticmethod
    def events(path: Path) -> list[tuple[str, str]]:
        lines = [line.split() for line in path.read_text().splitlines()]
        return [(parts[0], parts[1] if len(parts) > 1 else "") for parts in lines if parts]

    def wait_event(self, path: Path, names: set[str], timeout: float = 20.0) -> str:
        """The address of the first recorded event named in ``names``."""

        def found() -> str | None:
            for event, address in self.events(path):
                if event in names and address:
                    return address
            return None

        address = wait_for(found, timeout, f"client event {names}")
        assert isinstance(address, str)
        return address

    def udhcpc(
        self, ns: str, name: str, *extra: str, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        """``udhcpc -q``: get one lease and exit without releasing it."""
        require_binary("busybox", self)
        script, _ = self.script(name)
        argv = ["busybox", "udhcpc", "-i", CLIENT_IF, "-f", "-q", "-n", "-t", "4", "-T", "1"]
        return self.lab.run(ns, [*argv, "-s", str(script), *extra], timeout=timeout)

    def assert_one_client_per_address(self) -> None:
        rows = self.server.leases()
        owners = [row["mac"] for row in rows.values() if row["state"] == "bound"]
        self.assertEqual(len(owners), len(set(owners)), rows)


class StockClientTests(ClientLabCase):
    """Lease, renew, release with each stock client (T1 = 3 s)."""

    lease_time = 6

    def check_renew_and_release(self, mac: str, address: str) -> None:
        """The server's log says it ACKed a RENEWING request and took the RELEASE."""
        self.assertEqual(self.server.leases()[address]["state"], "released")
        log = self.server.text()
        ip = re.escape(address)
        self.assertRegex(log, rf"REQUEST from {mac} on {SRV_IF}: ack {ip} \(renewing\)")
        self.assertRegex(log, rf"RELEASE from {mac} on {SRV_IF}: release {ip}")
        self.assertNotIn(f"REQUEST from {mac} on {SRV_IF}: nak", log)

    def renewed_in_file(self, address: str, expiry: float) -> bool:
        row = self.server.leases().get(address)
        return row is not None and row["state"] == "bound" and row["expires"] > expiry

    def test_udhcpc(self) -> None:
        require_binary("busybox", self)
        ns = self.lab.clients[0]
        mac = self.mac(ns)
        script, events = self.script("udhcpc")
        argv = ["busybox", "udhcpc", "-i", CLIENT_IF, "-f", "-t", "5", "-T", "1"]
        with open(self.directory / "udhcpc.out", "w") as out:
            client = self.lab.spawn(ns, [*argv, "-s", str(script)], stdout=out, stderr=out)
        address = self.wait_event(events, {"bound"})
        ip = re.escape(address)
        self.server.wait_log(rf"REQUEST from {mac} on {SRV_IF}: ack {ip} \(selecting\)")
        first = self.server.leases()[address]
        self.assertEqual((first["mac"], first["state"]), (mac, "bound"))
        client.send_signal(signal.SIGUSR1)  # renew now
        wait_for(lambda: self.renewed_in_file(address, first["expires"]), 10, "the renewal")
        client.send_signal(signal.SIGUSR2)  # release
        wait_for(lambda: self.server.leases()[address]["state"] == "released", 10, "release")
        self.lab.stop(client)
        self.check_renew_and_release(mac, address)

    def test_dhclient(self) -> None:
        require_binary("dhclient", self)
        ns = self.lab.clients[0]
        mac = self.mac(ns)
        script, events = self.script("dhclient")
        files = [
            "-sf", str(script),
            "-lf", str(self.directory / "dhclient.leases"),
            "-pf", str(self.directory / "dhclient.pid"),
        ]  # fmt: skip
        # -d: stay in the foreground (dhclient daemonizes once bound otherwise).
        with open(self.directory / "dhclient.out", "w") as out:
            client = self.lab.spawn(
                ns, ["dhclient", "-4", "-d", "-v", *files, CLIENT_IF], stdout=out, stderr=out
            )
        address = self.wait_event(events, {"BOUND"})
        first = self.server.leases()[address]
        self.assertEqual((first["mac"], first["state"]), (mac, "bound"))
        # dhclient renews by itself at T1 (3 s): a unicast REQUEST from the bound address.
        self.wait_event(events, {"RENEW"}, timeout=15)
        self.assertTrue(self.renewed_in_file(address, first["expires"]))
        # dhclient -r stops the running one (by its pid file) and sends the RELEASE.
        done = self.lab.run(ns, ["dhclient", "-4", "-r", "-v", *files, CLIENT_IF], timeout=30)
        self.assertEqual(done.returncode, 0, done.stderr)
        wait_for(lambda: self.server.leases()[address]["state"] == "released", 10, "release")
        self.lab.stop(client)
        self.check_renew_and_release(mac, address)

    def test_dhcpcd(self) -> None:
        require_binary("dhcpcd", self)
        require_binary("unshare", self)
        ns = self.lab.clients[0]
        mac = self.mac(ns)
        script, events = self.script("dhcpcd")
        config = self.directory / "dhcpcd.conf"
        # noarp: no 5 s of ARP probing; clientid: 01+MAC, no DUID file; release: a RELEASE
        # when it stops.
        config.write_text("noarp\nclientid\nrelease\noption subnet_mask\n")
        dhcpcd = ["dhcpcd", "-4", "-B", "-d", "-f", str(config), "-c", str(script), CLIENT_IF]
        # A private tmpfs for its lease, pid and socket files: nothing left on the host.
        private = (
            "mount -t tmpfs dhcpcd /var/lib/dhcpcd && mount -t tmpfs dhcpcd /run/dhcpcd"
            ' && exec "$@"'
        )
        for directory in ("/var/lib/dhcpcd", "/run/dhcpcd"):
            os.makedirs(directory, exist_ok=True)
        argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", private, "sh"]
        with open(self.directory / "dhcpcd.out", "w") as out:
            client = self.lab.spawn(ns, [*argv, *dhcpcd], stdout=out, stderr=out)
        address = self.wait_event(events, {"BOUND"})
        first = self.server.leases()[address]
        self.assertEqual((first["mac"], first["state"]), (mac, "bound"))
        client.send_signal(signal.SIGUSR1)  # dhcpcd: "received SIGUSR1, renewing"
        wait_for(lambda: self.renewed_in_file(address, first["expires"]), 10, "the renewal")
        # With "release" in its config, dhcpcd releases when it stops (its privsep helpers
        # that ignore SIGTERM are SIGKILLed by PID when the lab goes down).
        # Generous limits for a loaded machine: both return as soon as the release is stored.
        self.lab.stop(client, grace=20)
        wait_for(lambda: self.server.leases()[address]["state"] == "released", 30, "release")
        self.check_renew_and_release(mac, address)


class RelayTests(ClientLabCase):
    clients = 0
    relay_clients = 1

    def make_server(self) -> Server:
        subnets = subnet_yaml(str(self.lab.subnet), POOL) + subnet_yaml(
            str(self.lab.relay_subnet), RELAY_POOL
        )
        return Server(self.lab, self.directory, subnets)

    def test_relayed_client_gets_an_address_of_the_relay_subnet(self) -> None:
        require_binary("dnsmasq", self)
        relay_log = self.directory / "relay.log"
        argv = [
            "dnsmasq", "--keep-in-foreground", "--port=0", "--conf-file=/dev/null",
            f"--dhcp-relay={self.lab.relay_ip},{self.lab.srv_ip}",
            "--interface=br1", "--bind-interfaces", "--leasefile-ro", "--pid-file=",
            "--log-dhcp", f"--log-facility={relay_log}",
        ]  # fmt: skip
        relay = self.lab.spawn(self.lab.rtr, argv, stderr=subprocess.DEVNULL)
        self.lab.wait_port(self.lab.rtr, "udp", 67, timeout=10, proc=relay)
        ns = self.lab.relay_clients[0]
        mac = self.mac(ns)
        done = self.udhcpc(ns, "relayed")
        self.assertEqual(done.returncode, 0, done.stdout + done.stderr)
        address = re.search(r"lease of (\S+) obtained", done.stdout + done.stderr)
        assert address is not None, done.stdout + done.stderr
        self.assertIn(
            address.group(1), [f"10.78.1.{n}" for n in range(10, 251)], "not the relay's subnet"
        )
        relay_ip = re.escape(self.lab.relay_ip)
        ip = re.escape(address.group(1))
        log = self.server.text()
        # The log names the relay (giaddr) the request came through; the structured
        # reply_to field says where the reply went: giaddr, port 67.
        self.assertRegex(log, rf"DISCOVER from {mac} on {SRV_IF}: offer {ip} \(relay {relay_ip}\)")
        self.assertRegex(
            log, rf"REQUEST from {mac} on {SRV_IF}: ack {ip} \(selecting\) \(relay {relay_ip}\)"
        )
        self.assertEqual(self.server.leases()[address.group(1)]["network"], "10.78.0.0/16")
        self.assertIn(
            f"DHCP relay at {self.lab.relay_ip} -> {self.lab.srv_ip}", relay_log.read_text()
        )


class ReservationTests(ClientLabCase):
    clients = 2
    fixed = "10.77.0.50"  # outside the dynamic range: reservations need not be in it

    def make_server(self) -> Server:
        mac = self.mac(self.lab.clients[0])
        machines = f"machines:\n  - mac: {mac}\n    name: fixed\n    address: {self.fixed}\n"
        return Server(self.lab, self.directory, subnet_yaml(str(self.lab.subnet), POOL), machines)

    def test_reserved_machine_gets_its_address_and_no_one_else_does(self) -> None:
        done = self.udhcpc(self.lab.clients[0], "reserved")
        self.assertEqual(done.returncode, 0, done.stderr)
        self.assertIn(f"lease of {self.fixed} obtained", done.stdout + done.stderr)
        other = self.udhcpc(self.lab.clients[1], "other", "-r", self.fixed)
        self.assertEqual(other.returncode, 0, other.stderr)
        self.assertNotIn(f"lease of {self.fixed}", other.stdout + other.stderr)
        self.assertEqual(self.server.leases()[self.fixed]["mac"], self.mac(self.lab.clients[0]))


class RestartTests(ClientLabCase):
    clients = 3

    def test_restart_keeps_every_lease(self) -> None:
        require_binary("busybox", self)
        first_ns, second_ns, new_ns = self.lab.clients
        # The first client stays running (bound, address configured) across the restart.
        script, events = self.script("first")
        argv = ["busybox", "udhcpc", "-i", CLIENT_IF, "-f", "-t", "5", "-T", "1"]
        first = self.lab.spawn(first_ns, [*argv, "-s", str(script)], stdout=subprocess.DEVNULL)
        first_address = self.wait_event(events, {"bound"})
        second = self.udhcpc(second_ns, "second")
        found = re.search(r"lease of (\S+) obtained", second.stdout + second.stderr)
        assert found is not None, second.stderr
        second_address = found.group(1)
        before = self.server.leases()

        self.server.stop()
        self.server.start()
        self.assertIn("loaded 2 leases", self.server.text())
        self.assertEqual(self.server.leases(), before)

        # RENEWING after the restart: the old lease is ACKed, not NAKed.
        mac = self.mac(first_ns)
        first.send_signal(signal.SIGUSR1)
        self.server.wait_log(
            rf"REQUEST from {mac} on {SRV_IF}: ack {re.escape(first_address)} \(renewing\)"
        )
        self.assertNotRegex(self.server.text(), rf"REQUEST from {mac} on {SRV_IF}: nak")
        # A client that starts over (DISCOVER) gets its own address back ...
        again = self.udhcpc(second_ns, "second-again")
        self.assertIn(f"lease of {second_address} obtained", again.stdout + again.stderr)
        # ... and a new client gets neither of them.
        new = self.udhcpc(new_ns, "new")
        found = re.search(r"lease of (\S+) obtained", new.stdout + new.stderr)
        assert found is not None, new.stderr
        self.assertNotIn(found.group(1), (first_address, second_address))
        self.assert_one_client_per_address()


class FullPoolTests(ClientLabCase):
    clients = 4
    pool = ("10.77.1.10", "10.77.1.12")  # three addresses

    def make_server(self) -> Server:
        return Server(self.lab, self.directory, subnet_yaml(str(self.lab.subnet), self.pool))

    def test_the_client_that_does_not_fit_gets_no_offer(self) -> None:
        got: dict[str, str] = {}
        for index, ns in enumerate(self.lab.clients[:3]):
            done = self.udhcpc(ns, f"c{index}")
            found = re.search(r"lease of (\S+) obtained", done.stdout + done.stderr)
            assert found is not None, done.stdout + done.stderr
            got[self.mac(ns)] = found.group(1)
        self.assertEqual(sorted(got.values()), ["10.77.1.10", "10.77.1.11", "10.77.1.12"])
        last = self.lab.clients[3]
        mac = self.mac(last)
        done = self.udhcpc(last, "last")
        self.assertNotEqual(done.returncode, 0)
        self.assertNotIn("obtained", done.stdout + done.stderr)
        log = self.server.text()
        self.assertRegex(log, rf"DISCOVER from {mac} on {SRV_IF}: no free address in")
        self.assertNotRegex(log, rf"DISCOVER from {mac} on {SRV_IF}: offer")
        rows = self.server.leases()
        self.assertEqual({row["mac"]: address for address, row in rows.items()}, got)
        self.assert_one_client_per_address()


# -- kill -9 under load --------------------------------------------------------------------


def pcap_dhcp_replies(path: Path) -> Iterator[tuple[MessageType, str, str, int]]:
    """(message type, chaddr as a MAC, yiaddr, xid) of each DHCP reply in a pcap file.

    Reads the classic pcap format tcpdump -w writes (Ethernet link type), IPv4/UDP only.
    """
    data = path.read_bytes()
    if len(data) < 24:
        return
    magic = data[:4]
    endian = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
    position = 24
    while position + 16 <= len(data):
        _, _, captured, _ = struct.unpack_from(endian + "IIII", data, position)
        frame = data[position + 16 : position + 16 + captured]
        position += 16 + captured
        if len(frame) < 14 + 20 + 8 or frame[12:14] != b"\x08\x00":
            continue
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        if ip[9] != 17:
            continue
        payload = ip[header + 8 :]
        try:
            packet = decode(payload)
        except MalformedPacket:
            continue
        kind = packet.message_type
        if packet.op == 2 and kind is not None:
            yield kind, packet.chaddr[:6].hex(":"), str(packet.yiaddr), packet.xid


class KillDuringLoadTests(ClientLabCase):
    clients = 0
    pool = ("10.77.1.0", "10.77.20.255")  # ~5,000 addresses

    def make_server(self) -> Server:
        return Server(self.lab, self.directory, subnet_yaml(str(self.lab.subnet), self.pool, 3600))

    def perfdhcp(self, seed: int, seconds: int, rate: int) -> subprocess.CompletedProcess[str]:
        # Relay mode, as the benchmark: giaddr = the cli address, unicast to port 67;
        # bounded by -p (seconds) and by the timeout.
        argv = [
            "perfdhcp", "-4", "-p", str(seconds), "-r", str(rate), "-R", "2000",
            "-s", str(seed), "-l", self.lab.cli_ip, self.lab.srv_ip,
        ]  # fmt: skip
        return self.lab.run(self.lab.cli, argv, timeout=seconds + 20)

    def capture(self, name: str) -> tuple[subprocess.Popen[Any], Path]:
        """tcpdump in the client namespace: every reply that reached perfdhcp."""
        pcap = self.directory / f"{name}.pcap"
        argv = ["tcpdump", "-i", "br0", "-U", "-n", "-w", str(pcap), "udp", "and", "port", "67"]
        with open(self.directory / f"{name}.tcpdump", "w") as err:
            proc = self.lab.spawn(self.lab.cli, argv, stdout=subprocess.DEVNULL, stderr=err)
        wait_for(
            lambda: "listening on" in (self.directory / f"{name}.tcpdump").read_text(),
            10,
            "tcpdump",
        )
        return proc, pcap

    def acks(self, pcap: Path) -> dict[str, set[str]]:
        """Address -> the MACs it was ACKed to."""
        owners: dict[str, set[str]] = {}
        for kind, mac, address, _ in pcap_dhcp_replies(pcap):
            if kind is MessageType.ACK:
                owners.setdefault(address, set()).add(mac)
        return owners

    def test_every_acked_lease_survives_kill_9(self) -> None:
        require_binary("perfdhcp", self)
        require_binary("tcpdump", self)
        tcpdump, pcap = self.capture("before")
        argv = [
            "perfdhcp", "-4", "-p", "4", "-r", "400", "-R", "2000", "-s", "1",
            "-l", self.lab.cli_ip, self.lab.srv_ip,
        ]  # fmt: skip
        load = self.lab.spawn(
            self.lab.cli, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            # Kill the server while exchanges (and group commits) are in flight.
            wait_for(lambda: self.server.text().count("ack ") >= 300, 20, "300 ACKs logged")
            time.sleep(0.3)
            self.server.kill()
            load.wait(30)
        finally:
            if load.poll() is None:
                load.kill()
                load.wait()
        self.lab.stop(tcpdump)
        acked = self.acks(pcap)
        self.assertGreater(len(acked), 100, "too few ACKs captured to prove anything")
        shared = {address: macs for address, macs in acked.items() if len(macs) > 1}
        self.assertEqual(shared, {}, "addresses ACKed to two clients")

        self.server.start()
        rows = self.server.leases()
        missing = {a: macs for a, macs in acked.items() if a not in rows}
        self.assertEqual(missing, {}, "ACKed leases missing after kill -9 and restart")
        for address, macs in acked.items():
            self.assertEqual(rows[address]["state"], "bound", address)
            self.assertIn(rows[address]["mac"], macs, address)

        # The restarted server goes on serving new clients, never with an ACKed address.
        tcpdump, pcap = self.capture("after")
        done = self.perfdhcp(seed=2, seconds=2, rate=200)
        self.lab.stop(tcpdump)
        after = self.acks(pcap)
        self.assertGreater(len(after), 50, done.stdout + done.stderr)
        for address, macs in after.items():
            self.assertEqual(len(macs), 1, (address, macs))
            if address in acked:
                self.assertEqual(macs, acked[address], f"{address} given to another client")
        self.assert_one_client_per_address()


# -- the hot path's bookkeeping, without a lab ---------------------------------------------


class DecideNowTests(SynchronousTestCase):
    """``PolicyChain.decide_now``: the decision itself when it is synchronous."""

    def test_synchronous_and_asynchronous_answers(self) -> None:
        @implementer(IBootPolicy)
        class Answer:
            def __init__(self, answer: object) -> None:
                self.answer = answer

            def decide(self, request: BootRequest) -> Any:
                return self.answer

        request = make_request()
        clock = Clock()
        decided = PolicyChain(
            [("a", Answer(None)), ("b", Answer(BootDecision(program="x")))], clock
        )
        decision = decided.decide_now(request, log_decision=False)
        assert isinstance(decision, BootDecision)
        self.assertEqual((decision.program, decision.policy), ("x", "b"))
        self.assertIsNone(PolicyChain([("a", Answer(None))], clock).decide_now(request))
        later: Deferred[BootDecision | None] = Deferred()
        chain = PolicyChain(
            [("slow", Answer(later)), ("b", Answer(BootDecision(program="y")))], clock
        )
        pending = chain.decide_now(request)
        assert isinstance(pending, Deferred)
        later.callback(None)
        result = self.successResultOf(pending)
        assert isinstance(result, BootDecision)
        self.assertEqual(result.policy, "b")
