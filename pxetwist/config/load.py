"""Turn the YAML file into a :class:`Config`, rejecting anything it cannot run.

Every check names the key path, and the loader adds the file and line, so one line tells the
operator what to fix.  Unknown keys are errors: a typo silently ignored is a machine that boots
the wrong thing.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Mapping
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from pxetwist.config.errors import ConfigError, KeyPath
from pxetwist.config.located import LineMap, line_for, load_located
from pxetwist.config.model import (
    ApiConfig,
    Config,
    DhcpConfig,
    DhcpMode,
    GaneshaConfig,
    HttpConfig,
    LogBudgetConfig,
    Machine,
    NfsConfig,
    PolicyConfig,
    Profile,
    SessionsConfig,
    Subnet,
    TftpConfig,
)
from pxetwist.nfs.paths import prefix_escape, template_problem
from pxetwist.nfs.render import VERSIONS
from pxetwist.policy.decision import NfsAccess, NfsExport, Quirks
from pxetwist.policy.values import BOOT_KEYS, BootAction, InvalidMacAddress, MacAddress

T = TypeVar("T")
D = TypeVar("D")

_DURATION = re.compile(r"(?P<number>\d+)\s*(?P<unit>[smhdw]?)")
_UNIT_SECONDS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")


class _Reader:
    """Validation context: knows the file, the line of every key, and the base directory."""

    def __init__(self, source: str, lines: LineMap, base_dir: Path) -> None:
        self.source = source
        self.lines = lines
        self.base_dir = base_dir

    def fail(self, path: KeyPath, message: str) -> NoReturn:
        raise ConfigError(message, source=self.source, line=line_for(self.lines, path), path=path)

    def section(self, path: KeyPath, value: Any) -> _Section:
        if value is None:
            value = {}
        if not isinstance(value, dict):
            self.fail(path, f"must be a mapping of keys, not {_kind(value)}")
        return _Section(self, path, value)


class _Section:
    def __init__(self, reader: _Reader, path: KeyPath, value: dict[str, Any]) -> None:
        self.reader = reader
        self.path = path
        self.value = value
        self.taken: set[str] = set()

    def has(self, key: str) -> bool:
        return key in self.value

    def take(self, key: str, convert: Callable[[_Reader, KeyPath, Any], T], default: D) -> T | D:
        self.taken.add(key)
        if key not in self.value or self.value[key] is None:
            return default
        return convert(self.reader, (*self.path, key), self.value[key])

    def raw(self, key: str) -> Any:
        self.taken.add(key)
        return self.value.get(key)

    def done(self) -> None:
        for key in self.value:
            if key not in self.taken:
                known = ", ".join(sorted(self.taken))
                self.reader.fail((*self.path, key), f"unknown key (known here: {known})")


def _kind(value: Any) -> str:
    return {dict: "a mapping", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), type(value).__name__
    )


# Converters: (reader, path, raw value) -> typed value, failing with a clear message.


def as_str(reader: _Reader, path: KeyPath, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        reader.fail(path, f"must be a string, not {_kind(value)}")
    return str(value)


def as_bool(reader: _Reader, path: KeyPath, value: Any) -> bool:
    if not isinstance(value, bool):
        reader.fail(path, f"{value!r} is not true or false")
    return value


def as_int(low: int, high: int) -> Callable[[_Reader, KeyPath, Any], int]:
    def convert(reader: _Reader, path: KeyPath, value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            reader.fail(path, f"{value!r} is not a whole number")
        if not low <= value <= high:
            reader.fail(path, f"{value} is outside {low}..{high}")
        return value

    return convert


def as_worker_count(reader: _Reader, path: KeyPath, value: Any) -> int | None:
    """A process count, or ``auto`` (None: one per CPU, decided at start)."""
    if value == "auto":
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        reader.fail(path, f"{value!r} is not a whole number or auto")
    return as_int(0, 64)(reader, path, value)


def as_port(reader: _Reader, path: KeyPath, value: Any) -> int:
    return as_int(0, 65535)(reader, path, value)


def as_seconds(reader: _Reader, path: KeyPath, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        reader.fail(path, f"{value!r} is not a number of seconds")
    if value < 0:
        reader.fail(path, f"{value} must not be negative")
    return float(value)


def as_timeout(reader: _Reader, path: KeyPath, value: Any) -> float:
    """A positive number of seconds (fractions allowed)."""
    seconds = as_seconds(reader, path, value)
    if seconds <= 0:
        reader.fail(path, f"{value} must be more than 0 seconds")
    return seconds


def as_duration(reader: _Reader, path: KeyPath, value: Any) -> int:
    """Whole seconds, written as ``3600`` or ``1h``, ``30m``, ``2d``."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    if isinstance(value, str):
        match = _DURATION.fullmatch(value.strip())
        if match and int(match["number"]) > 0:
            return int(match["number"]) * _UNIT_SECONDS[match["unit"]]
    reader.fail(path, f"{value!r} is not a duration (seconds, or like 30m, 12h, 7d)")


def as_ipv4(reader: _Reader, path: KeyPath, value: Any) -> IPv4Address:
    try:
        return IPv4Address(str(value))
    except (AddressValueError, ValueError):
        reader.fail(path, f"{value!r} is not an IPv4 address")


def as_network(reader: _Reader, path: KeyPath, value: Any) -> IPv4Network:
    try:
        return IPv4Network(str(value), strict=True)
    except (AddressValueError, NetmaskValueError, ValueError) as error:
        reader.fail(path, f"{value!r} is not an IPv4 network like 10.77.0.0/16 ({error})")


def as_mac(reader: _Reader, path: KeyPath, value: Any) -> MacAddress:
    try:
        return MacAddress.parse(str(value))
    except InvalidMacAddress:
        reader.fail(path, f"{value!r} is not a MAC address")


def as_uuid(reader: _Reader, path: KeyPath, value: Any) -> uuid.UUID:
    try:
        return uuid.UUID(str(value))
    except ValueError:
        reader.fail(path, f"{value!r} is not a UUID")


def as_path(reader: _Reader, path: KeyPath, value: Any) -> Path:
    text = as_str(reader, path, value)
    if not text:
        reader.fail(path, "must not be empty")
    candidate = Path(text).expanduser()
    return candidate if candidate.is_absolute() else (reader.base_dir / candidate).resolve()


def as_name(reader: _Reader, path: KeyPath, value: Any) -> str:
    text = as_str(reader, path, value)
    if not _NAME.fullmatch(text):
        reader.fail(path, f"{text!r} is not a name (letters, digits, '_', '-', '.')")
    return text


def as_list(
    item: Callable[[_Reader, KeyPath, Any], T],
) -> Callable[[_Reader, KeyPath, Any], tuple[T, ...]]:
    def convert(reader: _Reader, path: KeyPath, value: Any) -> tuple[T, ...]:
        values = value if isinstance(value, list) else [value]
        return tuple(item(reader, (*path, index), element) for index, element in enumerate(values))

    return convert


def as_strict_list(
    item: Callable[[_Reader, KeyPath, Any], T],
) -> Callable[[_Reader, KeyPath, Any], tuple[T, ...]]:
    def convert(reader: _Reader, path: KeyPath, value: Any) -> tuple[T, ...]:
        if not isinstance(value, list):
            reader.fail(path, f"must be a list, not {_kind(value)}")
        return as_list(item)(reader, path, value)

    return convert


def as_choice(choices: Mapping[str, T]) -> Callable[[_Reader, KeyPath, Any], T]:
    def convert(reader: _Reader, path: KeyPath, value: Any) -> T:
        if isinstance(value, bool):
            # YAML 1.1 reads a bare `off` as false; `mode: off` means the word.
            value = {False: "off", True: "on"}[value]
        if not isinstance(value, str) or value not in choices:
            reader.fail(path, f"{value!r} is not one of: {', '.join(choices)}")
        return choices[value]

    return convert


# Sections.


def _quirks(reader: _Reader, path: KeyPath, value: Any) -> Quirks:
    section = reader.section(path, value)
    quirks = Quirks(
        reply_delay=section.take("reply_delay", as_seconds, 0.0),
        force_broadcast=section.take("force_broadcast", as_bool, False),
        omit_pxe_options=section.take("omit_pxe_options", as_bool, False),
        boot_file=section.take("boot_file", as_str, None),
    )
    section.done()
    return quirks


def _boot_table(reader: _Reader, path: KeyPath, value: Any) -> dict[str, str]:
    section = reader.section(path, value)
    table = {key: section.take(key, as_str, "") for key in BOOT_KEYS if section.has(key)}
    for key in BOOT_KEYS:
        section.taken.add(key)
    section.done()
    return table


_ACTIONS = {action.value: action for action in BootAction}
_ACCESS = {access.value: access for access in NfsAccess}


def _nfs_export(reader: _Reader, path: KeyPath, value: Any) -> NfsExport:
    """One ``{path, access, create}`` entry; confinement under nfs.root is checked later."""
    section = reader.section(path, value)
    if not section.has("path"):
        reader.fail(path, "an NFS export needs a 'path' (relative to nfs.root)")
    text = section.take("path", as_str, "")
    problem = template_problem(text)
    if problem is not None:
        reader.fail((*path, "path"), problem)
    export = NfsExport(
        path=text,
        access=section.take("access", as_choice(_ACCESS), NfsAccess.RO),
        create=section.take("create", as_bool, False),
    )
    section.done()
    return export


def _profile_fields(section: _Section) -> Profile:
    return Profile(
        kernel=section.take("kernel", as_str, None),
        initrds=section.take("initrd", as_list(as_str), None),
        cmdline=section.take("cmdline", as_str, None),
        boot=section.take("boot", _boot_table, {}),
        action=section.take("action", as_choice(_ACTIONS), None),
        quirks=section.take("quirks", _quirks, None),
        boot_once=section.take("boot_once", as_bool, None),
        nfs=section.take("nfs", as_strict_list(_nfs_export), None),
    )


def _profile(reader: _Reader, path: KeyPath, value: Any) -> Profile:
    section = reader.section(path, value)
    profile = _profile_fields(section)
    section.done()
    return profile


def _machine(reader: _Reader, path: KeyPath, value: Any) -> Machine:
    section = reader.section(path, value)
    if not section.has("mac"):
        reader.fail(path, "a machine needs a 'mac'")
    machine = Machine(
        mac=section.take("mac", as_mac, MacAddress(bytes(6))),
        uuid=section.take("uuid", as_uuid, None),
        name=section.take("name", as_name, None),
        group=section.take("group", as_name, None),
        address=section.take("address", as_ipv4, None),
        profile=_profile_fields(section),
    )
    section.done()
    return machine


def _subnet(reader: _Reader, path: KeyPath, value: Any) -> Subnet:
    section = reader.section(path, value)
    if not section.has("network"):
        reader.fail(path, "a subnet needs a 'network'")
    network = section.take("network", as_network, IPv4Network("0.0.0.0/0"))
    pool: tuple[IPv4Address, IPv4Address] | None = None
    if section.has("range"):
        bounds = section.take("range", as_strict_list(as_ipv4), ())
        if len(bounds) != 2:
            reader.fail((*path, "range"), "must be [first, last]")
        for index, address in enumerate(bounds):
            if address not in network:
                reader.fail((*path, "range", index), f"{address} is not in {network}")
        if bounds[0] > bounds[1]:
            reader.fail((*path, "range"), f"{bounds[0]} comes after {bounds[1]}")
        pool = (bounds[0], bounds[1])
    subnet = Subnet(
        network=network,
        range=pool,
        router=section.take("router", as_ipv4, None),
        dns=section.take("dns", as_list(as_ipv4), ()),
        domain=section.take("domain", as_str, None),
        lease_time=section.take("lease_time", as_duration, Subnet(network).lease_time),
        interface=section.take("interface", as_str, None),
        unknown_limit=section.take("unknown_limit", as_int(0, 1 << 32), None),
    )
    section.done()
    return subnet


_MODES = {mode.value: mode for mode in DhcpMode}


def _dhcp(reader: _Reader, path: KeyPath, value: Any) -> DhcpConfig:
    section = reader.section(path, value)
    default = DhcpConfig()
    dhcp = DhcpConfig(
        mode=section.take("mode", as_choice(_MODES), default.mode),
        subnets=section.take("subnets", as_strict_list(_subnet), default.subnets),
        leases=section.take("leases", as_str, default.leases),
        offer_hold=section.take("offer_hold", as_duration, default.offer_hold),
        decline_quarantine=section.take(
            "decline_quarantine", as_duration, default.decline_quarantine
        ),
        boot_server=section.take("boot_server", as_bool, default.boot_server),
        raspberry_pi=section.take("raspberry_pi", as_bool, default.raspberry_pi),
        ipxe_user_classes=tuple(
            text.encode()
            for text in section.take(
                "ipxe_user_classes",
                as_list(as_str),
                tuple(raw.decode() for raw in default.ipxe_user_classes),
            )
        ),
        quirks=section.take("quirks", _quirks, default.quirks),
        discover_rate_limit=section.take(
            "discover_rate_limit", as_int(0, 10_000_000), default.discover_rate_limit
        ),
    )
    section.done()
    if dhcp.mode is DhcpMode.AUTHORITATIVE and not dhcp.subnets:
        reader.fail((*path, "subnets"), "authoritative mode needs at least one subnet")
    return dhcp


def _tftp(reader: _Reader, path: KeyPath, value: Any) -> TftpConfig:
    section = reader.section(path, value)
    default = TftpConfig()  # the defaults are stated once, in the model
    tftp = TftpConfig(
        enabled=section.take("enabled", as_bool, default.enabled),
        root=section.take("root", as_path, default.root),
        port=section.take("port", as_port, default.port),
        max_transfers=section.take("max_transfers", as_int(1, 1_000_000), default.max_transfers),
        max_blksize=section.take("max_blksize", as_int(512, 65464), default.max_blksize),
        max_windowsize=section.take("max_windowsize", as_int(1, 65535), default.max_windowsize),
        timeout=section.take("timeout", as_seconds, default.timeout),
        retries=section.take("retries", as_int(1, 100), default.retries),
        single_port=section.take("single_port", as_bool, default.single_port),
        workers=section.take("workers", as_worker_count, default.workers),
        adaptive_window=section.take("adaptive_window", as_bool, default.adaptive_window),
    )
    section.done()
    return tftp


def _http(reader: _Reader, path: KeyPath, value: Any) -> HttpConfig:
    section = reader.section(path, value)
    default = HttpConfig()
    http = HttpConfig(
        enabled=section.take("enabled", as_bool, default.enabled),
        root=section.take("root", as_path, default.root),
        port=section.take("port", as_port, default.port),
        header_timeout=section.take("header_timeout", as_timeout, default.header_timeout),
        body_timeout=section.take("body_timeout", as_timeout, default.body_timeout),
        keepalive_timeout=section.take("keepalive_timeout", as_timeout, default.keepalive_timeout),
        send_timeout=section.take("send_timeout", as_timeout, default.send_timeout),
        max_header_line=section.take(
            "max_header_line", as_int(256, 1 << 20), default.max_header_line
        ),
        max_header_size=section.take(
            "max_header_size", as_int(256, 1 << 24), default.max_header_size
        ),
        max_headers=section.take("max_headers", as_int(1, 10_000), default.max_headers),
        max_body=section.take("max_body", as_int(0, 1 << 30), default.max_body),
        max_idle_per_client=section.take(
            "max_idle_per_client", as_int(1, 1_000_000), default.max_idle_per_client
        ),
    )
    section.done()
    return http


def as_listen(reader: _Reader, path: KeyPath, value: Any) -> tuple[str, int]:
    """``host:port`` (``[v6]:port`` for IPv6), or a bare port on loopback."""
    if isinstance(value, int) and not isinstance(value, bool):
        return "127.0.0.1", as_port(reader, path, value)
    text = as_str(reader, path, value)
    host, _, port = text.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 <= int(port) < 65536:
        reader.fail(path, f"{text!r} is not host:port (like 127.0.0.1:8090)")
    return host, int(port)


def _api(reader: _Reader, path: KeyPath, value: Any) -> ApiConfig:
    section = reader.section(path, value)
    default = ApiConfig()
    host, port = section.take("listen", as_listen, (default.host, default.port))
    api = ApiConfig(
        enabled=section.take("enabled", as_bool, True),  # the section's presence turns it on
        host=host,
        port=port,
        tokens_file=section.take("tokens_file", as_path, default.tokens_file),
        metrics_token=section.take("metrics_token", as_name, default.metrics_token),
    )
    section.done()
    return api


def _sessions(reader: _Reader, path: KeyPath, value: Any) -> SessionsConfig:
    section = reader.section(path, value)
    defaults = SessionsConfig()
    sessions = SessionsConfig(
        enabled=section.take("enabled", as_bool, defaults.enabled),
        stuck_after=section.take("stuck_after", as_duration, defaults.stuck_after),
        keep=section.take("keep", as_int(1, 10_000), defaults.keep),
        max_sessions=section.take("max_sessions", as_int(1, 100_000_000), defaults.max_sessions),
        max_machines=section.take("max_machines", as_int(1, 10_000_000), defaults.max_machines),
        max_events=section.take("max_events", as_int(16, 100_000), defaults.max_events),
        flush_interval=section.take("flush_interval", as_seconds, defaults.flush_interval),
    )
    section.done()
    if sessions.flush_interval < 0.05 or sessions.flush_interval > 60:
        reader.fail((*path, "flush_interval"), f"{sessions.flush_interval} is outside 0.05..60")
    return sessions


def as_nfs_version(reader: _Reader, path: KeyPath, value: Any) -> str:
    text = value if isinstance(value, str) else repr(value) if isinstance(value, float) else None
    if isinstance(value, int) and not isinstance(value, bool):
        text = str(value)
    if text not in VERSIONS:
        reader.fail(path, f"{value!r} is not an NFS version ({', '.join(VERSIONS)})")
    return text


def _ganesha(reader: _Reader, path: KeyPath, value: Any) -> GaneshaConfig:
    section = reader.section(path, value)
    dbus = section.take("dbus", as_str, None)
    managed = section.take("managed", as_bool, dbus is None)
    if managed and dbus is not None:
        reader.fail(
            (*path, "dbus"), "is for an operator's Ganesha: set managed: false, or drop dbus"
        )
    default = GaneshaConfig()
    ids = section.take("export_ids", as_strict_list(as_int(1, 65535)), default.export_ids)
    if len(ids) != 2 or ids[0] > ids[1]:
        reader.fail((*path, "export_ids"), "must be [first, last] with first <= last")
    ganesha = GaneshaConfig(
        managed=managed,
        dbus=dbus,
        bind_address=section.take("bind_address", as_ipv4, default.bind_address),
        export_ids=(ids[0], ids[1]),
    )
    section.done()
    return ganesha


def _nfs(reader: _Reader, path: KeyPath, value: Any) -> NfsConfig:
    section = reader.section(path, value)
    default = NfsConfig()
    versions = section.take("versions", as_strict_list(as_nfs_version), default.versions)
    if not versions:
        reader.fail((*path, "versions"), "must name at least one NFS version")
    nfs = NfsConfig(
        enabled=section.take("enabled", as_bool, default.enabled),
        root=section.take("root", as_path, default.root),
        versions=tuple(dict.fromkeys(versions)),
        ganesha=section.take("ganesha", _ganesha, default.ganesha),
    )
    section.done()
    return nfs


def _policy(reader: _Reader, path: KeyPath, value: Any) -> PolicyConfig:
    section = reader.section(path, value)
    default = PolicyConfig()
    chain = section.take("chain", as_strict_list(as_name), default.chain)
    if not chain:
        reader.fail((*path, "chain"), "must name at least one policy")
    settings = section.raw("settings") or {}
    if not isinstance(settings, dict):
        reader.fail((*path, "settings"), "must be a mapping of policy name to its settings")
    arch_default = default.arch_default
    if section.has("arch_default"):
        raw = section.raw("arch_default")
        if raw in (None, "none", "ignore"):
            arch_default = None
        elif raw not in BOOT_KEYS:
            reader.fail((*path, "arch_default"), f"{raw!r} is not a boot key or 'ignore'")
        else:
            arch_default = str(raw)
    policy = PolicyConfig(
        chain=chain,
        plugin_dirs=section.take("plugin_dirs", as_list(as_path), default.plugin_dirs),
        timeout=section.take("timeout", as_seconds, default.timeout),
        arch_default=arch_default,
        settings=settings,
    )
    section.done()
    return policy


def _log_budget(reader: _Reader, path: KeyPath, value: Any) -> LogBudgetConfig:
    section = reader.section(path, value)
    default = LogBudgetConfig()
    budget = LogBudgetConfig(
        lines=section.take("lines", as_int(0, 10_000_000), default.lines),
        interval=section.take("interval", as_duration, default.interval),
    )
    section.done()
    return budget


def parse_config(text: str, source: str = "<config>", base_dir: Path | None = None) -> Config:
    """Validate YAML text; relative paths are taken from ``base_dir`` (the file's directory)."""
    value, lines = load_located(text, source)
    reader = _Reader(source, lines, base_dir or Path.cwd())
    top = reader.section((), value)
    groups_raw = top.raw("groups") or {}
    if not isinstance(groups_raw, dict):
        reader.fail(("groups",), "must be a mapping of group name to settings")
    groups = {
        as_name(reader, ("groups", name), name): _profile(reader, ("groups", name), settings)
        for name, settings in groups_raw.items()
    }
    config = Config(
        source=source,
        interfaces=top.take("interfaces", as_list(as_str), ()),
        server_address=top.take("server_address", as_ipv4, None),
        data_dir=top.take("data_dir", as_path, Config(source).data_dir),
        dhcp=top.take("dhcp", _dhcp, DhcpConfig()),
        tftp=top.take("tftp", _tftp, TftpConfig()),
        http=top.take("http", _http, HttpConfig()),
        api=top.take("api", _api, ApiConfig()),
        nfs=top.take("nfs", _nfs, NfsConfig()),
        boot=top.take("boot", _boot_table, {}),
        defaults=top.take("defaults", _profile, Profile()),
        groups=groups,
        machines=top.take("machines", as_strict_list(_machine), ()),
        policy=top.take("policy", _policy, PolicyConfig()),
        sessions=top.take("sessions", _sessions, SessionsConfig()),
        log_budget=top.take("log_budget", _log_budget, LogBudgetConfig()),
        templates=top.take("templates", as_path, reader.base_dir / "templates"),
    )
    top.done()
    _check_machines(reader, config)
    _check_nfs_exports(reader, config)
    return config


def _check_nfs_exports(reader: _Reader, config: Config) -> None:
    """Every export path stays under nfs.root: no symlink out of it, ``{name}`` only if named."""
    profiles: list[tuple[KeyPath, Profile]] = [(("defaults",), config.defaults)]
    profiles += [(("groups", name), profile) for name, profile in config.groups.items()]
    profiles += [(("machines", i), m.profile) for i, m in enumerate(config.machines)]
    for where, profile in profiles:
        for index, export in enumerate(profile.nfs or ()):
            escape = prefix_escape(config.nfs.root, export.path)
            if escape is not None:
                reader.fail((*where, "nfs", index, "path"), escape)
    for index, machine in enumerate(config.machines):
        if machine.name is not None:
            continue
        for export in config.machine_profile(machine).nfs or ():
            if "{name}" in export.path:
                reader.fail(
                    ("machines", index),
                    f"its NFS export {export.path!r} uses {{name}} but the machine has no name",
                )


def _check_machines(reader: _Reader, config: Config) -> None:
    seen_macs: dict[MacAddress, int] = {}
    seen_addresses: dict[IPv4Address, int] = {}
    for index, machine in enumerate(config.machines):
        if machine.mac in seen_macs:
            reader.fail(
                ("machines", index, "mac"),
                f"{machine.mac} is already machines[{seen_macs[machine.mac]}]",
            )
        seen_macs[machine.mac] = index
        if machine.group is not None and machine.group not in config.groups:
            reader.fail(("machines", index, "group"), f"no group named {machine.group!r}")
        if machine.address is not None:
            if machine.address in seen_addresses:
                reader.fail(
                    ("machines", index, "address"),
                    f"{machine.address} is already reserved by "
                    f"machines[{seen_addresses[machine.address]}]",
                )
            seen_addresses[machine.address] = index
            if config.dhcp.subnets and not any(
                machine.address in subnet.network for subnet in config.dhcp.subnets
            ):
                reader.fail(
                    ("machines", index, "address"), f"{machine.address} is in no dhcp subnet"
                )


def load_config(path: str | Path) -> Config:
    """Read and validate a config file; any problem is a :class:`ConfigError`."""
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"cannot read the config: {error.strerror}", source=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("the config is not UTF-8 text", source=str(path)) from None
    return parse_config(text, source=str(path), base_dir=file.resolve().parent)


def parse_machine(value: Any, config: Config, source: str = "<request>") -> Machine:
    """One ``machines[]`` entry checked exactly as the loader checks it, against ``config``.

    For machines defined outside the file (the operator API): the same keys and messages, and
    the group must exist.  The error's ``path`` is the key at fault (``("kernel",)``).
    """
    reader = _Reader(source, {}, config.data_dir)
    machine = _machine(reader, (), value)
    if machine.group is not None and machine.group not in config.groups:
        reader.fail(("group",), f"no group named {machine.group!r}")
    return machine
