"""Tests for the namespace lab harness: topology, broadcast reachability, cleanup, isolation.

All traffic goes to addresses inside namespaces these tests create (or to limited broadcast
inside them); every helper process is bounded by a count and a timeout.
"""

from __future__ import annotations

import os
import re
import secrets
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import netlab
from pxetwist.lab.netlab import (
    CLIENT_IF,
    SRV_IF,
    SRV_PEER_IF,
    LabError,
    NetLab,
    cpu_mask,
    remove_stale_labs,
    require_binary,
    require_lab,
)

PY = sys.executable
PORT = 9067

# UDP listener: argv = port, max datagrams, timeout s, "echo"|"-". Prints "<payload> <src ip>".
LISTEN = """
import socket, sys, time
port, count, timeout, echo = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", port))
end = time.monotonic() + timeout
for _ in range(count):
    left = end - time.monotonic()
    if left <= 0:
        break
    s.settimeout(left)
    try:
        data, addr = s.recvfrom(2048)
    except socket.timeout:
        break
    print(data.decode(), addr[0], flush=True)
    if echo == "echo":
        s.sendto(data, addr)
"""

# UDP sender: argv = device|"-", bind ip|"-", dst, port, tag, count, "reply"|"-".
SEND = """
import socket, sys, time
dev, bind, dst, port, tag, count, reply = sys.argv[1:8]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
if dev != "-":
    s.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, dev.encode())
if bind != "-":
    s.bind((bind, 0))
try:
    for _ in range(int(count)):
        s.sendto(tag.encode(), (dst, int(port)))
        time.sleep(0.05)
except OSError as e:
    sys.exit(f"send failed: {e}")
if reply == "reply":
    s.settimeout(3)
    print("reply", s.recvfrom(2048)[0].decode())
"""

# Leaves a grandchild sleeping in the namespace, the way dhclient daemonizes.
DAEMONIZE = """
import os, time
pid = os.fork()
if pid == 0:
    os.setsid()
    if os.fork() == 0:
        fd = os.open(os.devnull, os.O_RDWR)
        for i in (0, 1, 2):
            os.dup2(fd, i)
        time.sleep(60)
    os._exit(0)
os.waitpid(pid, 0)  # the grandchild exists once its parent is gone
"""


ROOT = Path(__file__).resolve().parents[2]


def _netns() -> set[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    return {line.split()[0] for line in out.stdout.splitlines() if line}


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False


class LabTestCase(SynchronousTestCase):
    """Base class: lab tests need root + netns (skip locally, fail under CI)."""

    def setUp(self) -> None:
        require_lab(self)

    def lab(self, **kwargs: Any) -> NetLab:
        lab = NetLab(**kwargs)
        self.addCleanup(lab.down)
        return lab.up()

    def listen(
        self, lab: NetLab, ns: str, count: int = 1, timeout: float = 5.0, echo: bool = False
    ) -> subprocess.Popen[str]:
        argv = [PY, "-c", LISTEN, str(PORT), str(count), str(timeout), "echo" if echo else "-"]
        proc = lab.spawn(ns, argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        lab.wait_port(ns, "udp", PORT, timeout=5, proc=proc)
        return proc

    def send(
        self,
        lab: NetLab,
        ns: str,
        tag: str,
        dst: str = "255.255.255.255",
        dev: str | None = CLIENT_IF,
        bind: str | None = None,
        reply: bool = False,
    ) -> subprocess.CompletedProcess[str]:
        argv = [PY, "-c", SEND, dev or "-", bind or "-", dst, str(PORT), tag, "3"]
        return lab.run(ns, [*argv, "reply" if reply else "-"], timeout=10)

    def received(self, proc: subprocess.Popen[str]) -> str:
        out, err = proc.communicate(timeout=10)
        self.assertEqual(proc.returncode, 0, err)
        return str(out)


class TopologyTests(LabTestCase):
    def test_topology(self) -> None:
        """Addresses, bare clients, taps, no default route, IPv6 off."""
        lab = self.lab(clients=2, taps=["vmtap0"], subnet="10.91.0.0/16")
        self.assertTrue(set(lab.namespaces) <= _netns())
        self.assertEqual(len(lab.clients), 2)
        srv = lab.run(lab.srv, ["ip", "-4", "-br", "addr", "show", "srv0"], check=True).stdout
        self.assertIn("10.91.0.1/16", srv)
        cli = lab.run("cli", ["ip", "-4", "-br", "addr", "show", "br0"], check=True).stdout
        self.assertIn("10.91.0.2/16", cli)
        self.assertIn("vmtap0", lab.run(lab.cli, ["ip", "link", "show", "vmtap0"]).stdout)
        for ns in lab.namespaces:
            route = lab.run(ns, ["ip", "route", "show", "default"], check=True)
            self.assertEqual(route.stdout.strip(), "", ns)
            v6 = lab.run(ns, ["cat", "/proc/sys/net/ipv6/conf/all/disable_ipv6"])
            self.assertEqual(v6.stdout.strip(), "1", ns)
        for ns in lab.clients:
            eth0 = lab.run(ns, ["ip", "addr", "show", CLIENT_IF], check=True).stdout
            self.assertNotIn("inet ", eth0)
            self.assertIn("state UP", eth0)

    def test_steer_receive_sets_each_ends_rps_mask(self) -> None:
        """Each end of the server's veth pair receives on the CPUs it is given (RPS)."""
        lab = self.lab(clients=0)
        lab.steer_receive(lab.srv, SRV_IF, "0")
        lab.steer_receive(lab.cli, SRV_PEER_IF, "1")
        for ns, device, mask in ((lab.srv, SRV_IF, 1), (lab.cli, SRV_PEER_IF, 2)):
            path = f"/sys/class/net/{device}/queues/rx-0/rps_cpus"
            text = lab.run(ns, ["cat", path], check=True).stdout
            self.assertEqual(int(text.strip().replace(",", ""), 16), mask, device)

    def test_names_are_short_and_unique(self) -> None:
        a, b = NetLab(), NetLab()
        self.addCleanup(a.down)
        self.addCleanup(b.down)
        a.up()
        b.up()
        self.assertNotEqual(a.prefix, b.prefix)
        self.assertFalse(set(a.namespaces) & set(b.namespaces))
        self.assertLessEqual(len(a.srv), 20)

    def test_rejects_foreign_namespace_and_shell_strings(self) -> None:
        lab = self.lab(clients=1)
        self.assertRaises(LabError, lab.run, "pxe-srv", ["true"])
        self.assertRaises(TypeError, lab.run, lab.srv, "echo hi")


class TrafficTests(LabTestCase):
    def test_broadcast_from_bare_client_reaches_server(self) -> None:
        lab = self.lab(clients=1)
        listener = self.listen(lab, lab.srv, count=1)
        plain = self.send(lab, lab.clients[0], "plain", dev=None)
        # no default route: a limited broadcast without a bound device cannot be routed
        self.assertNotEqual(plain.returncode, 0)
        self.assertIn("unreachable", plain.stderr)
        sent = self.send(lab, lab.clients[0], "bound")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        # eth0 has no address, so the datagram comes from 0.0.0.0 as a DHCPDISCOVER would
        self.assertEqual(self.received(listener).split(), ["bound", "0.0.0.0"])

    def test_wait_port_tcp(self) -> None:
        lab = self.lab(clients=0)
        with tempfile.TemporaryDirectory() as root:
            with open(os.path.join(root, "hello.txt"), "w") as f:
                f.write("hello lab\n")
            argv = [PY, "-m", "http.server", "8080", "--bind", lab.srv_ip, "--directory", root]
            server = lab.spawn(lab.srv, argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            lab.wait_port(lab.srv, "tcp", 8080, timeout=10, proc=server)
            url = f"http://{lab.srv_ip}:8080/hello.txt"
            code = "import sys, urllib.request; print(urllib.request.urlopen(sys.argv[1]).read())"
            got = lab.run(lab.cli, [PY, "-c", code, url], timeout=10, check=True)
            self.assertIn("hello lab", got.stdout)
            lab.stop(server)

    def test_wait_port_times_out_and_notices_dead_process(self) -> None:
        lab = self.lab(clients=0)
        self.assertRaises(LabError, lab.wait_port, lab.srv, "udp", PORT, timeout=0.2)
        dead = lab.spawn(lab.srv, ["false"])
        dead.wait(5)
        self.assertRaises(LabError, lab.wait_port, lab.srv, "tcp", PORT, timeout=5, proc=dead)

    def test_relay_subnet(self) -> None:
        """Broadcast from a relay client stops at the router; unicast routes both ways."""
        lab = self.lab(clients=0, relay_clients=1)
        at_rtr = self.listen(lab, lab.rtr, count=1, timeout=3)
        at_srv = self.listen(lab, lab.srv, count=2, timeout=3, echo=True)
        sent = self.send(lab, lab.relay_clients[0], "from-relay-side")
        self.assertEqual(sent.returncode, 0, sent.stderr)
        self.assertEqual(self.received(at_rtr).split(), ["from-relay-side", "0.0.0.0"])
        # what a relay does: unicast from giaddr (relay_ip) to the server, reply comes back
        relayed = self.send(
            lab, lab.rtr, "relayed", dst=lab.srv_ip, dev=None, bind=lab.relay_ip, reply=True
        )
        self.assertEqual(relayed.returncode, 0, relayed.stderr)
        self.assertIn("reply relayed", relayed.stdout)
        lines = self.received(at_srv).splitlines()
        self.assertEqual(lines[0].split(), ["relayed", lab.relay_ip])
        self.assertNotIn("from-relay-side", "\n".join(lines))


class CleanupTests(LabTestCase):
    def test_down_removes_namespaces_and_processes(self) -> None:
        lab = self.lab(clients=2, relay_clients=1, taps=["vmtap0"])
        tracked = lab.spawn(lab.srv, ["sleep", "60"])
        lab.run(lab.clients[0], [PY, "-c", DAEMONIZE], timeout=10, check=True)
        stray = netlab._netns_pids(lab.clients[0])
        self.assertTrue(stray, "daemonized helper not found in the client namespace")
        names = lab.namespaces
        lab.down()
        self.assertFalse(set(names) & _netns())
        self.assertIsNotNone(tracked.poll())
        for pid in stray:
            self.assertFalse(_alive(pid), pid)
        lab.down()  # idempotent
        self.assertRaises(LabError, lab.run, lab.srv, ["true"])

    def test_sigterm_still_removes_the_lab(self) -> None:
        """A benchmark killed by PID (``exit_on_sigterm``) removes its namespaces and the
        processes in them, as it would on any other exit; without the handler it cannot."""
        script = (
            "import subprocess, sys, time\n"
            "from pxetwist.lab import NetLab, exit_on_sigterm\n"
            "exit_on_sigterm()\n"
            "lab = NetLab(clients=1).up()\n"
            "server = lab.spawn(lab.srv, ['sleep', '60'])\n"
            "print(' '.join(lab.namespaces), server.pid, flush=True)\n"
            "time.sleep(60)\n"
        )
        proc = subprocess.Popen(
            [PY, "-c", script],
            stdout=subprocess.PIPE,
            text=True,
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
        )
        self.addCleanup(proc.kill)
        assert proc.stdout is not None
        *names, server = proc.stdout.readline().split()
        self.assertTrue(set(names) <= _netns())
        proc.terminate()  # SIGTERM
        self.assertEqual(proc.wait(30), 143)
        self.assertFalse(set(names) & _netns())
        self.assertFalse(_alive(int(server)))

    def test_two_labs_do_not_collide(self) -> None:
        a = self.lab(clients=1, subnet="10.77.0.0/16")
        b = self.lab(clients=1, subnet="10.79.0.0/16")
        at_a = self.listen(a, a.srv, count=1, timeout=5)
        at_b = self.listen(b, b.srv, count=1, timeout=1.5)
        self.assertEqual(self.send(a, a.clients[0], "for-a").returncode, 0)
        self.assertIn("for-a", self.received(at_a))
        self.assertEqual(self.received(at_b), "")  # same port, other lab: nothing
        a.down()
        self.assertTrue(set(b.namespaces) <= _netns())
        at_b = self.listen(b, b.srv, count=1, timeout=5)
        self.assertEqual(self.send(b, b.clients[0], "for-b").returncode, 0)
        self.assertIn("for-b", self.received(at_b))

    def _leftover(self, names: list[str]) -> None:
        for ns in names:
            subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
            self.addCleanup(netlab._delete_netns, [ns])

    def test_explicit_prefix_clears_own_leftovers_only(self) -> None:
        prefix = f"pxtt{secrets.token_hex(3)}"
        other = prefix + "z"
        self._leftover([f"{prefix}-srv", f"{prefix}-c7", f"{other}-srv"])
        # a process left running in the crashed run's namespace
        orphan = subprocess.Popen(["ip", "netns", "exec", f"{prefix}-c7", "sleep", "60"])
        self.addCleanup(NetLab.stop, orphan)
        lab = self.lab(prefix=prefix, clients=1)
        self.assertIsNotNone(orphan.wait(5))
        present = _netns()
        self.assertNotIn(f"{prefix}-c7", present)
        self.assertIn(f"{other}-srv", present)
        self.assertTrue(set(lab.namespaces) <= present)
        self.assertRaises(LabError, NetLab(prefix=prefix).up)  # live in this process

    def test_remove_stale_labs(self) -> None:
        child = subprocess.Popen(["true"])
        child.wait(5)  # reaped: its PID is free, as after a crashed test run
        stale = f"pxt{child.pid}x{secrets.token_hex(2)}-srv"
        self._leftover([stale])
        live = self.lab(clients=0)
        removed = remove_stale_labs()
        self.assertIn(stale, removed)
        self.assertNotIn(stale, _netns())
        self.assertTrue(set(live.namespaces) <= _netns())
        self.assertFalse([ns for ns in removed if not re.match(r"^pxt\d+x[0-9a-f]+-", ns)])


class RequireTests(SynchronousTestCase):
    """Skips must never hide a missing dependency in CI."""

    def setEnv(self, value: str | None) -> None:
        old = os.environ.get("CI")
        self.addCleanup(self._restore, old)
        self._restore(value)

    @staticmethod
    def _restore(value: str | None) -> None:
        if value is None:
            os.environ.pop("CI", None)
        else:
            os.environ["CI"] = value

    def test_binary_skips_locally(self) -> None:
        self.setEnv(None)
        self.assertRaises(unittest.SkipTest, require_binary, "no-such-binary-pxt", self)

    def test_binary_fails_in_ci(self) -> None:
        self.setEnv("true")
        self.assertRaises(self.failureException, require_binary, "no-such-binary-pxt", self)
        self.assertRaises(AssertionError, require_binary, "no-such-binary-pxt")

    def test_binary_found(self) -> None:
        self.assertTrue(require_binary("ip", self).endswith("/ip"))

    def test_lab_skips_locally_fails_in_ci(self) -> None:
        self.patch(netlab, "lab_available", lambda: (False, "test says no"))
        self.setEnv("")
        self.assertRaises(unittest.SkipTest, require_lab, self)
        self.setEnv("1")
        self.assertRaises(self.failureException, require_lab, self)


class CpuMaskTests(unittest.TestCase):
    def test_taskset_lists(self) -> None:
        self.assertEqual(cpu_mask("0"), 0b1)
        self.assertEqual(cpu_mask("1"), 0b10)
        self.assertEqual(cpu_mask("0-2"), 0b111)
        self.assertEqual(cpu_mask("1,3"), 0b1010)
        self.assertEqual(cpu_mask("0, 4-5"), 0b110001)

    def test_rejects_what_is_not_a_list(self) -> None:
        self.assertRaises(ValueError, cpu_mask, "")
        self.assertRaises(ValueError, cpu_mask, "a")
        self.assertRaises(ValueError, cpu_mask, "3-1")
