"""A throw-away L2 network of Linux network namespaces for integration tests and benchmarks.

This is the Python twin of ``../shared/lab/netlab.sh``. Every :class:`NetLab` gets its
own namespace prefix (``pxt<pid>x<hex>``), so parallel and consecutive runs never collide,
and a test can build as many labs as it likes::

    netns <p>-srv                    netns <p>-cli
    srv0 10.77.0.1/16 ==veth== cli-up -+- br0 10.77.0.2/16 (bridge, STP off)
                                       +- <tap>         (add_tap(); QEMU runs in <p>-cli)
                                       +- c<i>-up ==veth== eth0  in netns <p>-c<i>  (no address)
                                       +- rtr-up  ==veth== lan0 10.77.0.3/16 in netns <p>-rtr
    (relay only)                                           br1  10.78.0.1/16 in netns <p>-rtr
                                                            +- r<j>-dn ==veth== eth0 in <p>-r<j>

* ``<p>-srv`` runs the server under test, ``<p>-cli`` runs clients that want a fixed
  address (curl, perfdhcp) and QEMU, ``<p>-c<i>`` are bare machines for real DHCP clients.
* With ``relay_clients > 0`` a router namespace ``<p>-rtr`` joins the bridge as
  10.77.0.3 and owns a second subnet (default 10.78.0.0/16) on bridge ``br1`` with its own
  bare clients ``<p>-r<j>``. IPv4 forwarding is on in ``<p>-rtr`` and ``<p>-srv`` has a
  route to the relay subnet via 10.77.0.3, so a DHCP relay in ``<p>-rtr`` (listening on
  ``br1``, giaddr 10.78.0.1) reaches the server and the server's replies come back.
  Broadcasts from ``<p>-r<j>`` stop at the router, as on a real network.
* No namespace has a default route and nothing touches the host namespace: the veth pairs
  are created directly inside the namespaces, so no packet can leave the lab. IPv6 is off.
* A broadcast to 255.255.255.255 needs ``SO_BINDTODEVICE`` (or a packet socket): with no
  default route the kernel answers ``ENETUNREACH`` otherwise.

Everything runs ``ip``/``ss``/``sysctl`` as argv lists with a timeout; no shell is used.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
import unittest
from collections.abc import Sequence
from functools import cache
from typing import Any, Literal

__all__ = [
    "BRIDGE",
    "CLIENT_IF",
    "RELAY_BRIDGE",
    "SRV_IF",
    "LabError",
    "NetLab",
    "in_ci",
    "lab_available",
    "remove_stale_labs",
    "require_binary",
    "require_lab",
]

SRV_IF = "srv0"  # server interface in <p>-srv
SRV_PEER_IF = "cli-up"  # its peer in <p>-cli, a port of the lab bridge
BRIDGE = "br0"  # lab bridge in <p>-cli
CLIENT_IF = "eth0"  # interface of every bare client namespace
RTR_LAN_IF = "lan0"  # router leg on the lab bridge, in <p>-rtr
RELAY_BRIDGE = "br1"  # relay-side bridge in <p>-rtr

CMD_TIMEOUT = 10.0  # seconds for every lab-management subprocess
READY_TIMEOUT = 5.0  # seconds to wait for links UP and bridge ports forwarding
STOP_GRACE = 2.0  # seconds between SIGTERM and SIGKILL

_PREFIX_RE = re.compile(r"^[a-z][a-z0-9]{1,11}$")
_IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")
_ROLE = r"(?:srv|cli|rtr|c\d+|r\d+)"
# namespaces made with an automatic prefix: pxt<owner pid>x<hex>-<role>
_AUTO_NS_RE = re.compile(rf"^pxt(\d+)x[0-9a-f]+-{_ROLE}$")

_live: set[NetLab] = set()  # labs that are up in this process; downed at exit


class LabError(RuntimeError):
    """A lab operation failed (command error, timeout waiting for links or a port)."""


def cpu_mask(cpus: str) -> int:
    """The bit mask of a taskset CPU list: ``"0"`` -> 1, ``"1,3"`` -> 10, ``"0-2"`` -> 7."""
    mask = 0
    for part in cpus.split(","):
        first, _, last = part.strip().partition("-")
        for cpu in range(int(first), int(last or first) + 1):
            mask |= 1 << cpu
    if not mask:
        raise ValueError(f"no CPUs in {cpus!r}")
    return mask


def _exec(argv: Sequence[str], timeout: float = CMD_TIMEOUT, check: bool = True) -> str:
    """Run a management command (no shell), return stdout; raise LabError on failure."""
    try:
        r = subprocess.run(
            list(argv),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as e:
        raise LabError(f"timed out after {timeout}s: {' '.join(argv)}") from e
    if check and r.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> rc {r.returncode}: {r.stderr.strip()}")
    return r.stdout


def _netns_names() -> list[str]:
    """All namespace names (`ip netns list` prints 'name (id: N)')."""
    return [line.split()[0] for line in _exec(["ip", "netns", "list"]).splitlines() if line]


def _netns_pids(ns: str) -> list[int]:
    out = _exec(["ip", "netns", "pids", ns], check=False)
    return [int(p) for p in out.split() if p.isdigit() and int(p) != os.getpid()]


def _signal_pids(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _empty_netns(ns: str) -> None:
    """Stop every process still inside ``ns``, by PID: SIGTERM, then SIGKILL after a grace.

    Catches what tracked Popens left behind: daemonizing clients (dhclient), helpers
    (dhcpcd privsep), children of a timed-out command.
    """
    pids = _netns_pids(ns)
    for sig in (signal.SIGTERM, signal.SIGKILL):
        if not pids:
            return
        _signal_pids(pids, sig)
        deadline = time.monotonic() + STOP_GRACE
        while pids and time.monotonic() < deadline:
            time.sleep(0.05)
            pids = _netns_pids(ns)
    if pids:
        raise LabError(f"processes survive SIGKILL in {ns}: {pids}")


def _delete_netns(names: Sequence[str]) -> None:
    for ns in names:
        _empty_netns(ns)
    for ns in names:
        _exec(["ip", "netns", "del", ns], check=False)
    left = sorted(set(names) & set(_netns_names()))
    if left:
        raise LabError(f"could not delete namespaces: {left}")


def remove_stale_labs() -> list[str]:
    """Delete namespaces of auto-prefixed labs whose owner process no longer exists.

    A test run killed with SIGKILL cannot clean up; call this (e.g. once per session) to
    remove what it left. Only ``pxt<pid>x<hex>-*`` names with a dead ``<pid>`` are touched,
    never a live process's lab and never any other namespace. Returns the deleted names.
    """
    stale = []
    for ns in _netns_names():
        m = _AUTO_NS_RE.match(ns)
        if m is None:
            continue
        try:
            os.kill(int(m.group(1)), 0)
        except ProcessLookupError:
            stale.append(ns)
        except PermissionError:
            pass  # alive, owned by someone else
    _delete_netns(stale)
    return stale


@cache
def lab_available() -> tuple[bool, str]:
    """Can this process build labs? (root, ip/ss/sysctl present, a namespace can be made)."""
    if os.geteuid() != 0:
        return False, "network lab needs root"
    for tool in ("ip", "ss", "sysctl"):
        if _which(tool) is None:
            return False, f"network lab needs '{tool}' (iproute2/procps)"
    probe = f"pxtprobe{os.getpid()}{secrets.token_hex(2)}"
    try:
        _exec(["ip", "netns", "add", probe])
        _exec(["ip", "netns", "del", probe])
    except (LabError, OSError) as e:
        return False, f"no network namespace support: {e}"
    return True, "ok"


def in_ci() -> bool:
    """True when the CI environment variable is set (non-empty): skips become failures."""
    return bool(os.environ.get("CI", "").strip())


def _skip_or_fail(testcase: unittest.TestCase | None, why: str) -> None:
    """Skip locally, but fail under CI so a missing dependency can never pass silently."""
    if in_ci():
        msg = f"{why} (CI is set: a missing lab dependency is a failure, not a skip)"
        if testcase is not None:
            testcase.fail(msg)
        raise AssertionError(msg)
    raise unittest.SkipTest(why)


def require_lab(testcase: unittest.TestCase | None = None) -> None:
    """Call first in a lab test (e.g. in ``setUp``): skip if no lab here, fail if CI is set."""
    ok, why = lab_available()
    if not ok:
        _skip_or_fail(testcase, why)


def _which(name: str) -> str | None:
    path = os.environ.get("PATH", os.defpath) + ":/usr/local/sbin:/usr/sbin:/sbin"
    return shutil.which(name, path=path)


def require_binary(name: str, testcase: unittest.TestCase | None = None) -> str:
    """Return the path of ``name``; skip the test if missing, fail instead if CI is set."""
    path = _which(name)
    if path is None:
        _skip_or_fail(testcase, f"binary '{name}' not found")
        raise AssertionError("unreachable")  # pragma: no cover
    return path


@atexit.register
def _down_all() -> None:
    """Last line of defence: an interpreter exit must not leave namespaces behind."""
    for lab in list(_live):
        with contextlib.suppress(Exception):
            lab.down()


def exit_on_sigterm() -> None:
    """Make SIGTERM (a ``kill PID``, a CI timeout) end this process as an exception would.

    By default SIGTERM ends Python at once: no ``finally`` runs, no ``atexit`` either, and a
    benchmark leaves its namespaces, the servers inside them and its work files behind.  With
    this it raises ``SystemExit(143)`` instead (128 + SIGTERM, what the shell reports), so the
    benchmark's own clean-up and :func:`_down_all` run.  A second SIGTERM (``timeout`` signals
    the whole process group, so the benchmark may get its own and its children's) is ignored,
    so that it cannot cut that clean-up short.  For a benchmark's ``main``; call it from the
    main thread.
    """

    def _exit(signum: int, frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, _exit)


class NetLab:
    """One isolated lab. Use as a context manager, or ``up()`` + ``addCleanup(lab.down)``.

    :param clients: number of bare client namespaces ``<p>-c1..cN`` on the lab bridge.
    :param subnet: lab subnet; .1 = server (srv0), .2 = bridge br0, .3 = router leg.
    :param taps: tap devices to attach to br0 (for QEMU, which must run in ``lab.cli``).
    :param relay_clients: if > 0, build the router namespace and that many bare clients
        behind it on ``relay_subnet`` (.1 = router, br1). See the module docstring.
    :param prefix: namespace prefix. Default: unique ``pxt<pid>x<hex>``. With an explicit
        prefix, leftovers of a crashed earlier run with that same prefix are removed.
    """

    def __init__(
        self,
        clients: int = 1,
        subnet: str = "10.77.0.0/16",
        taps: Sequence[str] = (),
        relay_clients: int = 0,
        relay_subnet: str = "10.78.0.0/16",
        prefix: str | None = None,
    ) -> None:
        if clients < 0 or relay_clients < 0:
            raise ValueError("client counts must be >= 0")
        self.subnet = ipaddress.IPv4Network(subnet)
        self.relay_subnet = ipaddress.IPv4Network(relay_subnet)
        for net in (self.subnet, self.relay_subnet):
            if net.prefixlen > 29:
                raise ValueError(f"subnet {net} too small")
        if relay_clients and self.subnet.overlaps(self.relay_subnet):
            raise ValueError("subnet and relay_subnet overlap")
        if prefix is not None and not _PREFIX_RE.match(prefix):
            raise ValueError(f"bad prefix {prefix!r}: want [a-z][a-z0-9]{{1,11}}")
        for tap in taps:
            _check_ifname(tap)
        self.prefix = prefix
        self._explicit_prefix = prefix is not None
        self._n_clients = clients
        self._n_relay = relay_clients
        self._taps = list(taps)
        self._procs: list[subprocess.Popen[Any]] = []
        self._is_up = False

    # -- names and addresses -------------------------------------------------------------

    def _ns(self, role: str) -> str:
        if self.prefix is None:
            raise LabError("lab is not up")
        return f"{self.prefix}-{role}"

    @property
    def srv(self) -> str:
        """Server namespace (srv0 = ``srv_ip``)."""
        return self._ns("srv")

    @property
    def cli(self) -> str:
        """Namespace holding the bridge br0 (``cli_ip``) and the taps."""
        return self._ns("cli")

    @property
    def rtr(self) -> str:
        """Router namespace (relay labs only): lan0 = ``rtr_ip``, br1 = ``relay_ip``."""
        if not self._n_relay:
            raise LabError("this lab has no relay subnet (relay_clients=0)")
        return self._ns("rtr")

    @property
    def clients(self) -> list[str]:
        """Bare client namespaces on the lab bridge; each has an unconfigured eth0."""
        return [self._ns(f"c{i}") for i in range(1, self._n_clients + 1)]

    @property
    def relay_clients(self) -> list[str]:
        """Bare client namespaces behind the router on the relay subnet."""
        return [self._ns(f"r{j}") for j in range(1, self._n_relay + 1)]

    @property
    def namespaces(self) -> list[str]:
        core = [self.srv, self.cli] + ([self._ns("rtr")] if self._n_relay else [])
        return core + self.clients + self.relay_clients

    @property
    def prefixlen(self) -> int:
        return self.subnet.prefixlen

    @property
    def srv_ip(self) -> str:
        return str(self.subnet.network_address + 1)

    @property
    def cli_ip(self) -> str:
        return str(self.subnet.network_address + 2)

    @property
    def rtr_ip(self) -> str:
        return str(self.subnet.network_address + 3)

    @property
    def relay_ip(self) -> str:
        """The router's address on the relay subnet: the giaddr a relay would use."""
        return str(self.relay_subnet.network_address + 1)

    def __repr__(self) -> str:
        state = "up" if self._is_up else "down"
        return f"<NetLab {self.prefix} {self.subnet} clients={self._n_clients} {state}>"

    # -- life cycle ----------------------------------------------------------------------

    def __enter__(self) -> NetLab:
        return self.up()

    def __exit__(self, *exc: object) -> None:
        self.down()

    def up(self) -> NetLab:
        """Build the topology and wait until every link forwards. Idempotent."""
        if self._is_up:
            return self
        self._claim_prefix()
        _live.add(self)
        self._is_up = True
        try:
            self._build()
        except BaseException:
            self.down()
            raise
        return self

    def down(self) -> None:
        """Stop tracked and stray processes by PID, then delete the namespaces. Idempotent."""
        try:
            for proc in self._procs:
                self.stop(proc)
                for stream in (proc.stdin, proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
            self._procs.clear()
            if self.prefix is not None:
                ours = re.compile(rf"^{re.escape(self.prefix)}-{_ROLE}$")
                _delete_netns([ns for ns in _netns_names() if ours.match(ns)])
        finally:
            self._is_up = False
            _live.discard(self)

    def _claim_prefix(self) -> None:
        existing = _netns_names()
        if self._explicit_prefix:
            assert self.prefix is not None
            if any(lab.prefix == self.prefix for lab in _live):
                raise LabError(f"prefix {self.prefix} is in use by a live lab")
            ours = re.compile(rf"^{re.escape(self.prefix)}-{_ROLE}$")
            _delete_netns([ns for ns in existing if ours.match(ns)])  # crashed earlier run
            return
        taken = {ns.split("-", 1)[0] for ns in existing} | {lab.prefix for lab in _live}
        for _ in range(100):
            prefix = f"pxt{os.getpid()}x{secrets.token_hex(2)[:3]}"
            if prefix not in taken:
                self.prefix = prefix
                return
        raise LabError("no free lab prefix")  # pragma: no cover

    def _ip(self, ns: str, *args: str) -> None:
        _exec(["ip", "-n", ns, *args])

    def _quiet(self, ns: str) -> None:
        """lo up, IPv6 off (no autoconf/RS/MLD chatter to disturb captures and counts)."""
        self._ip(ns, "link", "set", "lo", "up")
        _exec(
            [
                "ip", "netns", "exec", ns, "sysctl", "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
            ]
        )  # fmt: skip

    def _veth(self, ns: str, name: str, peer_ns: str, peer: str, bridge: str | None) -> None:
        """A veth pair made directly inside the namespaces; ``name`` may join a bridge."""
        self._ip(ns, "link", "add", name, "type", "veth", "peer", "name", peer, "netns", peer_ns)
        if bridge is not None:
            self._ip(ns, "link", "set", name, "master", bridge)
        self._ip(ns, "link", "set", name, "up")
        self._ip(peer_ns, "link", "set", peer, "up")

    def _bridge(self, ns: str, name: str, addr: str) -> None:
        self._ip(ns, "link", "add", name, "type", "bridge", "stp_state", "0", "forward_delay", "0")
        self._ip(ns, "addr", "add", addr, "dev", name)
        self._ip(ns, "link", "set", name, "up")

    def _build(self) -> None:
        for ns in self.namespaces:
            _exec(["ip", "netns", "add", ns])
            self._quiet(ns)
        srv, cli = self.srv, self.cli
        self._bridge(cli, BRIDGE, f"{self.cli_ip}/{self.prefixlen}")
        self._veth(srv, SRV_IF, cli, SRV_PEER_IF, None)
        self._ip(cli, "link", "set", SRV_PEER_IF, "master", BRIDGE)
        self._ip(srv, "addr", "add", f"{self.srv_ip}/{self.prefixlen}", "dev", SRV_IF)
        wait = {srv: [SRV_IF], cli: [SRV_PEER_IF]}
        for i, ns in enumerate(self.clients, 1):
            self._veth(cli, f"c{i}-up", ns, CLIENT_IF, BRIDGE)
            wait[cli].append(f"c{i}-up")
            wait[ns] = [CLIENT_IF]
        for tap in self._taps:
            self.add_tap(tap)
        if self._n_relay:
            rtr = self.rtr
            self._veth(cli, "rtr-up", rtr, RTR_LAN_IF, BRIDGE)
            self._ip(rtr, "addr", "add", f"{self.rtr_ip}/{self.prefixlen}", "dev", RTR_LAN_IF)
            relay_addr = f"{self.relay_ip}/{self.relay_subnet.prefixlen}"
            self._bridge(rtr, RELAY_BRIDGE, relay_addr)
            _exec(["ip", "netns", "exec", rtr, "sysctl", "-qw", "net.ipv4.ip_forward=1"])
            self._ip(srv, "route", "add", str(self.relay_subnet), "via", self.rtr_ip)
            wait[cli].append("rtr-up")
            wait[rtr] = [RTR_LAN_IF]
            for j, ns in enumerate(self.relay_clients, 1):
                self._veth(rtr, f"r{j}-dn", ns, CLIENT_IF, RELAY_BRIDGE)
                wait[rtr].append(f"r{j}-dn")
                wait[ns] = [CLIENT_IF]
        self._wait_ready(wait)

    def _wait_ready(self, links: dict[str, list[str]]) -> None:
        """Wait until links are UP and bridge ports forward: else first packets get lost."""
        deadline = time.monotonic() + READY_TIMEOUT
        pending: list[str] = []
        while time.monotonic() < deadline:
            pending = []
            for ns, names in links.items():
                info = {
                    link["ifname"]: link
                    for link in json.loads(_exec(["ip", "-n", ns, "-j", "-d", "link", "show"]))
                }
                for name in names:
                    link = info.get(name, {})
                    port = link.get("linkinfo", {}).get("info_slave_data", {})
                    if link.get("operstate") != "UP" or port.get("state", "forwarding") != (
                        "forwarding"
                    ):
                        pending.append(f"{ns}:{name}")
            if not pending:
                return
            time.sleep(0.05)
        raise LabError(f"links not ready after {READY_TIMEOUT}s: {pending}")

    def add_tap(self, name: str, relay: bool = False) -> None:
        """Add a tap on br0 in ``lab.cli`` (or on br1 in ``lab.rtr`` if relay) for QEMU.

        A tap stays NO-CARRIER until QEMU opens it, so this does not wait for UP.
        """
        _check_ifname(name)
        ns, bridge = (self.rtr, RELAY_BRIDGE) if relay else (self.cli, BRIDGE)
        self._ip(ns, "tuntap", "add", "dev", name, "mode", "tap")
        self._ip(ns, "link", "set", name, "master", bridge)
        self._ip(ns, "link", "set", name, "up")

    # -- running things inside -----------------------------------------------------------

    def _argv(self, ns: str, argv: Sequence[str]) -> list[str]:
        if not self._is_up:
            raise LabError("lab is not up")
        if isinstance(argv, str):
            raise TypeError("argv must be a sequence of strings, not a shell string")
        if ns not in self.namespaces:
            full = self._ns(ns)  # allow a role: "srv", "cli", "c1", "rtr", "r1"
            if full not in self.namespaces:
                raise LabError(f"{ns!r} is not a namespace of {self!r}")
            ns = full
        return ["ip", "netns", "exec", ns, *argv]

    def run(
        self, ns: str, argv: Sequence[str], timeout: float = 30.0, **kwargs: Any
    ) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in namespace ``ns`` (full name or role like "srv", "c1") and wait.

        Output is captured as text unless overridden; ``check=True`` raises on rc != 0.
        On timeout the command is killed and ``subprocess.TimeoutExpired`` is raised.
        """
        kwargs.setdefault("text", True)
        kwargs.setdefault("stdin", subprocess.DEVNULL)
        if "stdout" not in kwargs and "stderr" not in kwargs:
            kwargs.setdefault("capture_output", True)
        return subprocess.run(self._argv(ns, argv), timeout=timeout, **kwargs)

    def spawn(self, ns: str, argv: Sequence[str], **popen_kwargs: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in ``ns`` in the background; ``down()`` stops it by PID.

        ``ip netns exec`` execs the command, so ``proc.pid`` is the command's own PID.
        stdin defaults to /dev/null; pass ``stdout=subprocess.PIPE`` etc. as with Popen.
        """
        popen_kwargs.setdefault("stdin", subprocess.DEVNULL)
        proc: subprocess.Popen[Any] = subprocess.Popen(self._argv(ns, argv), **popen_kwargs)
        self._procs.append(proc)
        return proc

    @staticmethod
    def stop(proc: subprocess.Popen[Any], grace: float = STOP_GRACE) -> int:
        """SIGTERM ``proc`` by PID, SIGKILL after ``grace`` seconds; return its exit code."""
        if proc.poll() is None:
            proc.terminate()
            try:
                return proc.wait(grace)
            except subprocess.TimeoutExpired:
                proc.kill()
        return proc.wait(grace)

    def steer_receive(self, ns: str, device: str, cpus: str) -> None:
        """Process what ``device`` receives on ``cpus`` (a taskset list such as ``1`` or ``0-1``).

        A veth pair delivers a packet by handing it to its peer on the *sending* CPU, so without
        this the receiver's whole network stack (TCP receive, its ACKs, the bridge) runs on, and
        is charged to, whoever sent.  Receive packet steering (RPS) on the receiving end queues
        each packet to ``cpus`` instead, as a second machine's NIC would interrupt its own CPU.
        """
        path = f"/sys/class/net/{device}/queues/rx-0/rps_cpus"
        self.run(ns, ["sh", "-c", f"echo {cpu_mask(cpus):x} > {path}"], check=True)

    def wait_port(
        self,
        ns: str,
        proto: Literal["udp", "tcp"],
        port: int,
        timeout: float = 5.0,
        proc: subprocess.Popen[Any] | None = None,
    ) -> None:
        """Poll ``ss`` in ``ns`` until something listens on ``port``; raise LabError if not.

        Pass the server's ``proc`` to fail at once (with its exit code) if it dies instead.
        """
        flags = {"udp": "-Hlnu", "tcp": "-Hlnt"}[proto]
        deadline = time.monotonic() + timeout
        while True:
            out = self.run(ns, ["ss", flags], timeout=CMD_TIMEOUT, check=True).stdout
            for line in out.splitlines():
                fields = line.split()  # State Recv-Q Send-Q Local:Port Peer:Port
                if len(fields) >= 4 and fields[3].rpartition(":")[2] == str(port):
                    return
            if proc is not None and proc.poll() is not None:
                raise LabError(f"process exited (rc {proc.returncode}) before {proto}/{port}")
            if time.monotonic() >= deadline:
                raise LabError(f"nothing listens on {proto}/{port} in {ns} after {timeout}s")
            time.sleep(0.05)


def _check_ifname(name: str) -> None:
    if not _IFNAME_RE.match(name):
        raise ValueError(f"bad interface name {name!r} (max 15 chars, [A-Za-z0-9_.-])")
