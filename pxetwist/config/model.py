"""The validated configuration as frozen values; see ``etc/pxe.yaml`` for what each key means."""

from __future__ import annotations

import enum
import uuid
from collections.abc import Mapping
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import attrs

from pxetwist.policy.decision import NfsExport, Quirks
from pxetwist.policy.values import BootAction, MacAddress


class DhcpMode(enum.Enum):
    PROXY = "proxy"  # answer PXE clients only, never hand out addresses (the safe default)
    AUTHORITATIVE = "authoritative"  # own the network's addresses
    OFF = "off"


def _frozen_dict(value: Mapping[Any, Any]) -> Mapping[Any, Any]:
    return dict(value)


@attrs.frozen
class Subnet:
    network: IPv4Network
    range: tuple[IPv4Address, IPv4Address] | None = None
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    lease_time: int = 3600
    interface: str | None = None
    # Addresses of the range that machines not in ``machines`` may hold at once (offered or
    # bound).  None: all but 10 % of the range when the config lists machines, else all of it.
    unknown_limit: int | None = None


@attrs.frozen
class DhcpConfig:
    mode: DhcpMode = DhcpMode.PROXY
    subnets: tuple[Subnet, ...] = ()
    leases: str = ""  # store URL; empty means sqlite:<data_dir>/leases.sqlite
    offer_hold: int = 60  # seconds an offered address stays held for its client
    decline_quarantine: int = 600  # seconds a DECLINEd address stays out of the pool
    boot_server: bool = True  # run the PXE boot server on UDP 4011
    raspberry_pi: bool = True  # answer Raspberry Pi OUIs the way their boot ROM needs (§5)
    ipxe_user_classes: tuple[bytes, ...] = (b"iPXE",)
    quirks: Quirks = Quirks()
    # DISCOVERs per second taken from one relay (giaddr) or one directly attached segment
    # (interface) from machines not in ``machines``; a burst of twice that passes.  0: no limit.
    discover_rate_limit: int = 1000


@attrs.frozen
class LogBudgetConfig:
    """How many per-request log lines each protocol writes per interval before it sums up."""

    lines: int = 1000  # 0: no budget, every line is written
    interval: float = 1.0  # seconds


@attrs.frozen
class TftpConfig:
    enabled: bool = True
    root: Path = Path("/srv/pxetwist/tftp")
    port: int = 69
    max_transfers: int = 2000
    max_blksize: int | None = None  # None: the interface MTU minus 32
    max_windowsize: int = 64
    timeout: float = 1.0
    retries: int = 6
    single_port: bool = False
    workers: int | None = None  # None: auto, one per CPU (none on a single CPU)
    adaptive_window: bool = False


@attrs.frozen
class HttpConfig:
    """``http:``.  The limits protect the server from slow and oversized requests; see
    :mod:`pxetwist.http.channel` for what each one answers."""

    enabled: bool = True
    root: Path = Path("/srv/pxetwist/http")
    port: int = 8080
    header_timeout: float = 10.0  # seconds for the request line and headers
    body_timeout: float = 10.0  # seconds for a request body, from the end of the headers
    keepalive_timeout: float = 60.0  # seconds an idle kept-alive connection stays open
    send_timeout: float = 60.0  # seconds a response may wait for the client to read more
    max_header_line: int = 8192  # bytes per line: 414 for the request line, 431 for a header
    max_header_size: int = 16384  # bytes of all header lines of one request: 431
    max_headers: int = 100  # header fields per request: 431
    max_body: int = 65536  # bytes of request body: 413 (boot clients send none)
    max_idle_per_client: int = 64  # idle connections per client address; the oldest is closed


@attrs.frozen
class ApiConfig:
    """The operator API, metrics and dashboard listener (served only when ``api`` is present)."""

    enabled: bool = False
    host: str = "127.0.0.1"  # loopback by default, so nothing is exposed by accident
    port: int = 8090
    tokens_file: Path | None = None  # YAML: name -> {token, access: read|write}
    metrics_token: str | None = None  # a token name whose token /metrics then requires


@attrs.frozen
class GaneshaConfig:
    """Which NFS-Ganesha the exports go to: one pxetwist runs, or an operator's over DBus."""

    managed: bool = True  # run ganesha.nfsd (and its dbus-daemon, rpcbind) ourselves
    dbus: str | None = None  # the bus address of an operator's Ganesha (managed: false)
    bind_address: IPv4Address | None = None  # managed Ganesha listens here; None: everywhere
    export_ids: tuple[int, int] = (1000, 65000)  # Export_Id range pxetwist owns


@attrs.frozen
class NfsConfig:
    enabled: bool = False
    root: Path = Path("/srv/pxetwist/nfs")
    versions: tuple[str, ...] = ("4.1", "3")  # "3", "4.0", "4.1", "4.2"
    ganesha: GaneshaConfig = GaneshaConfig()


@attrs.frozen
class SessionsConfig:
    """Boot sessions (``pxetwist sessions``): how they are judged and how many are kept."""

    enabled: bool = True
    stuck_after: int = 300  # seconds without progress before a session is called stuck
    keep: int = 20  # sessions stored per machine (older ones are deleted)
    max_sessions: int = 100_000  # sessions stored in all (the oldest are deleted first)
    max_machines: int = 20_000  # machines followed in memory at once (least recent dropped)
    max_events: int = 200  # events kept per session (the first of each stage always kept)
    flush_interval: float = 1.0  # seconds between writes to data_dir/sessions.sqlite


@attrs.frozen
class Profile:
    """What a machine boots; used by ``defaults``, ``groups`` and ``machines``."""

    kernel: str | None = None
    initrds: tuple[str, ...] | None = None
    cmdline: str | None = None
    boot: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict)
    action: BootAction | None = None
    quirks: Quirks | None = None
    boot_once: bool | None = None  # network-boot once, then local boot until reset
    nfs: tuple[NfsExport, ...] | None = None  # exports while the machine holds its address

    def over(self, base: Profile) -> Profile:
        """This profile's settings, falling back to ``base`` for what it leaves unset."""
        return Profile(
            kernel=self.kernel if self.kernel is not None else base.kernel,
            initrds=self.initrds if self.initrds is not None else base.initrds,
            cmdline=self.cmdline if self.cmdline is not None else base.cmdline,
            boot={**base.boot, **self.boot},
            action=self.action if self.action is not None else base.action,
            quirks=self.quirks if self.quirks is not None else base.quirks,
            boot_once=self.boot_once if self.boot_once is not None else base.boot_once,
            nfs=self.nfs if self.nfs is not None else base.nfs,
        )


@attrs.frozen
class Machine:
    mac: MacAddress
    profile: Profile = Profile()
    uuid: uuid.UUID | None = None
    name: str | None = None
    group: str | None = None
    address: IPv4Address | None = None  # a DHCP reservation


#: Where site-local policy plugins are looked for unless ``policy.plugin_dirs`` says otherwise:
#: the project's ``plugins/`` (in a checkout) and ``/etc/pxetwist/plugins``.
DEFAULT_PLUGIN_DIRS: tuple[Path, ...] = (
    Path(__file__).resolve().parents[2] / "plugins",
    Path("/etc/pxetwist/plugins"),
)

#: What each kind of client boots when the config's ``boot`` table does not say.  ``{server}``,
#: ``{http_port}`` and ``{tftp_port}`` are filled in per interface; ``${...}`` is left for iPXE.
DEFAULT_BOOT: Mapping[str, str] = {
    "bios": "undionly.kpxe",
    "efi-x86_64": "ipxe.efi",
    "efi-ia32": "ipxe-ia32.efi",
    "efi-arm64": "ipxe-arm64.efi",
    "ipxe": "http://{server}:{http_port}/boot.ipxe?mac=${mac}&uuid=${uuid}&arch=${buildarch}",
    "http-efi-x86_64": "http://{server}:{http_port}/ipxe.efi",
    "http-efi-arm64": "http://{server}:{http_port}/ipxe-arm64.efi",
}


@attrs.frozen
class PolicyConfig:
    chain: tuple[str, ...] = ("static", "arch")
    plugin_dirs: tuple[Path, ...] = DEFAULT_PLUGIN_DIRS
    timeout: float = 2.0  # seconds a policy may take before the chain skips it
    arch_default: str | None = "bios"  # boot key for unknown architectures; None: no answer
    settings: Mapping[str, Any] = attrs.field(factory=dict, converter=_frozen_dict)


@attrs.frozen
class Config:
    source: str
    interfaces: tuple[str, ...] = ()  # empty: every interface with an IPv4 address except lo
    server_address: IPv4Address | None = None
    data_dir: Path = Path("/var/lib/pxetwist")
    dhcp: DhcpConfig = DhcpConfig()
    tftp: TftpConfig = TftpConfig()
    http: HttpConfig = HttpConfig()
    api: ApiConfig = ApiConfig()
    nfs: NfsConfig = NfsConfig()
    boot: Mapping[str, str] = attrs.field(factory=dict, converter=_frozen_dict)
    defaults: Profile = Profile()
    groups: Mapping[str, Profile] = attrs.field(factory=dict, converter=_frozen_dict)
    machines: tuple[Machine, ...] = ()
    policy: PolicyConfig = PolicyConfig()
    sessions: SessionsConfig = SessionsConfig()
    log_budget: LogBudgetConfig = LogBudgetConfig()
    # Operator boot-config templates (ipxe.j2, pxelinux.j2, grub.j2), searched before the bundled
    # ones; the loader defaults it to <config file dir>/templates.  None: bundled templates only.
    templates: Path | None = None

    def reachable_address(self, local: IPv4Address) -> IPv4Address:
        """The address clients reach us at when their request came in on ``local``: the
        config's ``server_address`` (NAT, a load balancer in front) when set, else ``local``.

        The one rule every protocol uses for generated URLs, DHCP's ``siaddr`` and server
        identifier choice, and the ``server_address`` of a :class:`BootRequest`.
        """
        return self.server_address if self.server_address is not None else local

    @property
    def lease_store_url(self) -> str:
        return self.dhcp.leases or f"sqlite:{self.data_dir / 'leases.sqlite'}"

    @property
    def sessions_path(self) -> Path:
        """The SQLite file of boot sessions and boot-once state."""
        return self.data_dir / "sessions.sqlite"

    @property
    def boot_table(self) -> Mapping[str, str]:
        """The built-in boot table with the config's ``boot`` entries over it."""
        return {**DEFAULT_BOOT, **self.boot}

    def machine_profile(self, machine: Machine) -> Profile:
        """The machine's settings over its group's over the defaults.

        ``defaults.action`` is what *unlisted* machines get (``ignore`` there means "answer only
        the machines I list"), so a listed machine does not inherit it.
        """
        group = self.groups.get(machine.group, Profile()) if machine.group else Profile()
        return machine.profile.over(group.over(attrs.evolve(self.defaults, action=None)))
