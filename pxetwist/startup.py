"""Everything checked before serving: interfaces, roots and policy plugins.

Kept apart from :mod:`pxetwist.tap` so ``--check-config``, ``pxetwist explain`` and tests run the
very same checks as the server.
"""

from __future__ import annotations

from pathlib import Path
from shutil import which

import attrs

from pxetwist.config import Config, ConfigError
from pxetwist.config.model import DhcpMode
from pxetwist.dhcp.store import redacted
from pxetwist.netinfo import InterfaceInfo, interface_info, ipv4_interfaces
from pxetwist.policy.interfaces import IBootPolicy
from pxetwist.policy.plugins import build_policies
from pxetwist.policy.reach import unreachable_values


@attrs.frozen
class ServerSetup:
    config: Config
    interfaces: tuple[InterfaceInfo, ...]
    policies: tuple[tuple[str, IBootPolicy], ...]
    #: ``--interface`` names from the command line (None: the config decides); a reload
    #: resolves them again, so an interface that appeared since is served.
    interface_names: tuple[str, ...] | None = None


def resolve_interfaces(config: Config, names: tuple[str, ...] | None) -> tuple[InterfaceInfo, ...]:
    """The interfaces to serve: command line, else config, else every IPv4 one but lo."""
    chosen = names if names is not None else config.interfaces
    if not chosen:
        return tuple(ipv4_interfaces())
    found = []
    for index, name in enumerate(chosen):
        try:
            found.append(interface_info(name))
        except OSError:
            raise ConfigError(
                f"no network interface named {name!r}",
                source=config.source,
                path=() if names is not None else ("interfaces", index),
            ) from None
    return tuple(found)


def _check_root(config: Config, key: str, root: Path) -> None:
    if not root.is_dir():
        raise ConfigError(f"{root} is not a directory", source=config.source, path=(key, "root"))


#: What a managed Ganesha runs, and the Debian package of each.
_GANESHA_TOOLS = {
    "ganesha.nfsd": "nfs-ganesha (and nfs-ganesha-vfs)",
    "dbus-daemon": "dbus",
    "unshare": "util-linux",
    "nsenter": "util-linux",
}


def _check_ganesha(config: Config) -> None:
    """A managed Ganesha needs its programs; say which package is missing, not fail later."""
    if not config.nfs.ganesha.managed:
        return
    tools = dict(_GANESHA_TOOLS)
    if "3" in config.nfs.versions:
        tools["rpcbind"] = "rpcbind"
    missing = [f"{tool} ({package})" for tool, package in tools.items() if not which(tool)]
    if missing:
        raise ConfigError(
            "a managed Ganesha needs " + ", ".join(missing) + ": install them, or set "
            "nfs.ganesha.dbus to drive a Ganesha you run",
            source=config.source,
            path=("nfs", "ganesha"),
        )


def _check_lease_database(config: Config) -> None:
    """A shared lease database must answer and be at this pxetwist's schema (an empty one is
    initialised); an older one names ``pxetwist db upgrade``."""
    url = config.lease_store_url
    if not url.lower().startswith(("postgresql:", "postgres:")):
        return
    from pxetwist.db.schema import SchemaError
    from pxetwist.db.schema import prepare as prepare_schema

    try:
        import psycopg

        with psycopg.connect(url, autocommit=True, connect_timeout=10) as connection:
            prepare_schema(connection, where=f"the lease database {redacted(url)}")
    except SchemaError as error:
        raise ConfigError(str(error), source=config.source, path=("dhcp", "leases")) from None
    except ImportError:
        raise ConfigError(
            "a postgresql:// lease store needs psycopg 3: pip install 'pxetwist[postgresql]'",
            source=config.source,
            path=("dhcp", "leases"),
        ) from None
    except Exception as error:  # psycopg.Error: names the host, never the password
        raise ConfigError(
            f"cannot use the lease database: {error}".strip(),
            source=config.source,
            path=("dhcp", "leases"),
        ) from None


def prepare(config: Config, interfaces: tuple[str, ...] | None = None) -> ServerSetup:
    """Run every startup check; raise ``ConfigError`` or ``PluginError`` on the first problem."""
    if config.dhcp.mode is DhcpMode.AUTHORITATIVE:
        _check_lease_database(config)
    if config.tftp.enabled:
        _check_root(config, "tftp", config.tftp.root)
    if config.http.enabled:
        _check_root(config, "http", config.http.root)
    if config.nfs.enabled:
        _check_root(config, "nfs", config.nfs.root)
        _check_ganesha(config)
    if config.api.enabled:
        from pxetwist.api.service import check_api_config

        check_api_config(config)
    return ServerSetup(
        config=config,
        interfaces=resolve_interfaces(config, interfaces),
        interface_names=interfaces,
        policies=tuple(build_policies(config)),
    )


def summarize(setup: ServerSetup) -> str:
    """The ``--check-config`` report: what would run, where, and with which policies."""
    config = setup.config
    lines = [f"config {config.source}: OK"]
    names = ", ".join(f"{i.name} ({i.address or 'no IPv4'}, mtu {i.mtu})" for i in setup.interfaces)
    lines.append(f"interfaces: {names or 'none'}")
    lines.append(f"dhcp: {config.dhcp.mode.value}")
    if config.dhcp.mode is DhcpMode.AUTHORITATIVE:
        for subnet in config.dhcp.subnets:
            pool = f"{subnet.range[0]}-{subnet.range[1]}" if subnet.range else "no pool"
            lines.append(f"  subnet {subnet.network}: {pool}, lease {subnet.lease_time}s")
        lines.append(f"  leases: {redacted(config.lease_store_url)}")
    if config.dhcp.mode is not DhcpMode.OFF:
        lines.append(f"  pxe boot server (4011): {'on' if config.dhcp.boot_server else 'off'}")
    tftp = f"port {config.tftp.port}, root {config.tftp.root}" if config.tftp.enabled else "off"
    http = f"port {config.http.port}, root {config.http.root}" if config.http.enabled else "off"
    lines.append(f"tftp: {tftp}")
    lines.append(f"http: {http}")
    if config.api.enabled:
        lines.append(f"api: http://{config.api.host}:{config.api.port}/")
    if config.nfs.enabled:
        ganesha = config.nfs.ganesha
        how = "managed Ganesha" if ganesha.managed else f"Ganesha on bus {ganesha.dbus}"
        lines.append(
            f"nfs: root {config.nfs.root}, versions {', '.join(config.nfs.versions)}, {how}"
        )
    lines.append(f"policy chain: {' -> '.join(name for name, _ in setup.policies)}")
    lines.append(f"machines: {len(config.machines)}, groups: {len(config.groups)}")
    servers = [str(config.server_address)] if config.server_address is not None else []
    servers += [str(info.ip) for info in setup.interfaces if info.ip is not None]
    for problem in unreachable_values(config, servers):
        lines.append(f"warning: {problem}")
    return "\n".join(lines)
