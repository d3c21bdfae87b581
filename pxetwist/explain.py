"""``pxetwist explain``: what would pxetwist answer this machine, and why?

It loads the same config and policy plugins as the server, builds the DHCP request a client of
the given kind sends (or takes a captured one), and puts it through the very path a datagram
takes in the server: :meth:`DhcpEngine.receive`, the policy chain, :meth:`DhcpEngine.answer`.
It prints the deciding policy, its reason, and every field of each reply as encoded for the
wire, without any network I/O.  In proxy mode a UEFI client's follow-up REQUEST to port 4011 is
answered too.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import uuid
from collections.abc import Callable, Sequence
from ipaddress import IPv4Address, IPv4Network
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.task import Clock

from pxetwist.config import ConfigError, load_config
from pxetwist.config.model import Config, DhcpMode
from pxetwist.dhcp.engine import (
    PXE_PORT,
    SERVER_PORT,
    DhcpEngine,
    Exchange,
    Interface,
    Outcome,
    pools_for,
)
from pxetwist.dhcp.leases import LeaseTable
from pxetwist.dhcp.options import MessageType, OptionCode, encode_arches
from pxetwist.dhcp.packet import DhcpPacket, MalformedPacket, decode, encode
from pxetwist.nfs.exports import explain_exports
from pxetwist.policy.chain import PolicyChain, decide_offline
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.overlay import served_machines
from pxetwist.policy.placeholders import expand_nfs, expand_placeholders
from pxetwist.policy.plugins import PluginError, build_policies
from pxetwist.policy.reach import client_fetches, serving_context
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import InvalidMacAddress, MacAddress

#: Budget for encoding a client packet given as a value: a request is never trimmed.
_ANY_SIZE = 65507

_NAMES = {int(code): code.name.lower().replace("_", "-") for code in OptionCode}


def build_discover(
    mac: MacAddress,
    *,
    arch: int | None,
    vendor_class: str | None,
    user_class: str | None,
    client_uuid: uuid.UUID | None,
) -> DhcpPacket:
    """The DISCOVER a client of that kind sends (the shape of protocol-reference §7's vectors)."""
    options: list[tuple[int, bytes]] = [(OptionCode.MESSAGE_TYPE, bytes((MessageType.DISCOVER,)))]
    options.append((OptionCode.MAX_MESSAGE_SIZE, (1472).to_bytes(2, "big")))
    if arch is not None:
        options.append((OptionCode.CLIENT_ARCH, encode_arches([arch])))
    if vendor_class is None and arch is not None:
        vendor_class = f"PXEClient:Arch:{arch:05d}:UNDI:003010"
    if vendor_class:
        options.append((OptionCode.VENDOR_CLASS, vendor_class.encode()))
    if user_class:
        options.append((OptionCode.USER_CLASS, user_class.encode()))
    if client_uuid is not None:
        options.append((OptionCode.CLIENT_UUID, b"\x00" + client_uuid.bytes_le))
    return DhcpPacket(xid=0x50584554, flags=0x8000, chaddr=mac.octets, options=tuple(options))


def describe_packet(packet: DhcpPacket) -> list[str]:
    kind = packet.message_type
    lines = [
        f"  {kind.name if kind else '?'}: yiaddr {packet.yiaddr}  siaddr {packet.siaddr}  "
        f"ciaddr {packet.ciaddr}  giaddr {packet.giaddr}  flags {packet.flags:#06x}",
        f"  sname {packet.sname.decode(errors='replace')!r}"
        f"  file {packet.file.decode(errors='replace')!r}",
    ]
    for code, value in packet.options:
        name = _NAMES.get(code, f"option-{code}")
        lines.append(f"  option {code:3d} {name}: {_render_value(code, value)}")
    return lines


def _render_value(code: int, value: bytes) -> str:
    if code == OptionCode.MESSAGE_TYPE and len(value) == 1:
        return MessageType(value[0]).name if value[0] in MessageType._value2member_map_ else "?"
    if code in _ADDRESS_OPTIONS and value and len(value) % 4 == 0:
        return ", ".join(str(IPv4Address(value[i : i + 4])) for i in range(0, len(value), 4))
    if code in _SECONDS_OPTIONS and len(value) == 4:
        return f"{int.from_bytes(value, 'big')} s"
    if _is_text(value):
        text = value.rstrip(b"\x00").decode("ascii")
        return text + ("\\0" * (len(value) - len(value.rstrip(b"\x00"))))
    return value.hex(" ")


_ADDRESS_OPTIONS = frozenset(
    {
        OptionCode.SUBNET_MASK,
        OptionCode.ROUTER,
        OptionCode.DNS,
        OptionCode.SERVER_ID,
        OptionCode.BROADCAST,
    }
)
_SECONDS_OPTIONS = frozenset(
    {OptionCode.LEASE_TIME, OptionCode.RENEWAL_T1, OptionCode.REBINDING_T2}
)


def _is_text(value: bytes) -> bool:
    stripped = value.rstrip(b"\x00")
    return bool(stripped) and all(32 <= byte < 127 for byte in stripped)


def _boot_once_gate(config: Config) -> Callable[[BootRequest, BootDecision], BootDecision]:
    """The server's boot-once gate over what ``data_dir`` records: a machine whose one boot is
    used up is explained with the local-boot answer it gets (and why)."""
    from pxetwist.sessions.bootonce import BootOnce
    from pxetwist.sessions.store import SessionStore

    used = []
    if config.sessions_path.exists():
        try:
            store = SessionStore(config.sessions_path, readonly=True)
            try:
                used = store.used_boots()
            finally:
                store.close()
        except sqlite3.Error:
            pass  # unreadable: explain as if no boot were used up
    return BootOnce(used).gate


def explain(
    config: Config,
    packet: DhcpPacket | bytes,
    *,
    server: IPv4Address,
    network: IPv4Network,
    mode: DhcpMode | None = None,
) -> dict[str, Any]:
    """Run one request (a packet, or a captured datagram) through the server's DHCP path."""
    if mode is not None:
        config = attrs.evolve(config, dhcp=attrs.evolve(config.dhcp, mode=mode))
    clock = Clock()
    chain = PolicyChain(
        tuple(build_policies(config)), clock, config.policy.timeout, gate=_boot_once_gate(config)
    )
    machines = served_machines(config)
    engine = DhcpEngine(
        config,
        LeaseTable(pools_for(config, machines)),
        [server],
        known=frozenset(m.mac for m in machines),
    )
    interface = Interface("explain", server, network)
    data = packet if isinstance(packet, bytes) else encode(packet, max_size=_ANY_SIZE)
    first = _step(engine, chain, clock, data, interface, SERVER_PORT, ("0.0.0.0", 68), True)
    steps = [first]
    context = serving_context(config, str(server))
    request = first["request"]
    first["fetches"] = (
        client_fetches(first["decision"], request, context) if request is not None else []
    )
    offer = first["outcome"].replies[0].packet if first["outcome"].replies else None
    if (
        config.dhcp.mode is DhcpMode.PROXY
        and offer is not None
        and offer.get(OptionCode.VENDOR_CLASS) == b"PXEClient"
        and offer.get(OptionCode.VENDOR_SPECIFIC) is None
    ):
        sent = first["exchange"].incoming.packet
        follow_up = attrs.evolve(
            sent,
            ciaddr=IPv4Address(int(network.network_address) + 100),
            options=tuple(
                (code, bytes((MessageType.REQUEST,)) if code == OptionCode.MESSAGE_TYPE else value)
                for code, value in sent.options
            ),
        )
        client = (str(follow_up.ciaddr), PXE_PORT)
        data = encode(follow_up, max_size=_ANY_SIZE)
        steps.append(_step(engine, chain, clock, data, interface, PXE_PORT, client, False))
    return {"steps": steps, "nfs": _nfs(config, steps, server)}


def _nfs(config: Config, steps: list[dict[str, Any]], server: IPv4Address) -> dict[str, Any]:
    """The machine's NFS exports and its command line with every placeholder filled in."""
    request = steps[0]["request"]
    decision = next((step["decision"] for step in steps if step["decision"] is not None), None)
    if request is None or decision is None or not decision.nfs:
        return {}
    exports, note = explain_exports(config, decision, request.mac, str(server))
    machine = next((m for m in served_machines(config) if m.mac == request.mac), None)
    granted_to = (
        f"{machine.address} (reservation)"
        if machine is not None and machine.address is not None
        else "the address the machine holds (its lease, or where DHCP, TFTP or HTTP see it)"
    )
    cmdline = None
    problem = None
    if decision.cmdline:
        text = expand_placeholders(
            decision.cmdline, server=server, http_port=config.http.port, tftp_port=config.tftp.port
        )
        try:
            cmdline = expand_nfs(text, [export.location or "" for export in exports])
        except ValueError as error:
            problem = str(error)
            cmdline = text
    return {
        "exports": exports,
        "note": note,
        "granted_to": granted_to,
        "cmdline": cmdline,
        "cmdline_problem": problem,
    }


def _render_nfs(nfs: dict[str, Any]) -> list[str]:
    if not nfs:
        return []
    lines = [f"nfs exports, granted to {nfs['granted_to']}:"]
    for index, export in enumerate(nfs["exports"], start=1):
        name = "{nfs}" if index == 1 else f"{{nfs{index}}}"
        lines.append(
            f"  {name} {export.template} ({export.access.value}"
            + (", create" if export.create else "")
            + ")"
            + (f" -> {export.path}" if export.path is not None else "")
        )
        if export.location is not None:
            lines.append(f"      mounted as {export.location}")
        if export.problem is not None:
            lines.append(f"      PROBLEM: {export.problem}")
    if nfs["note"]:
        lines.append(f"  note: {nfs['note']}")
    if nfs["cmdline"] is not None:
        lines.append(f"  cmdline: {nfs['cmdline']}")
    if nfs["cmdline_problem"]:
        lines.append(f"  PROBLEM in cmdline: {nfs['cmdline_problem']}")
    return lines


def _step(
    engine: DhcpEngine,
    chain: PolicyChain,
    clock: Clock,
    data: bytes,
    interface: Interface,
    port: int,
    source: tuple[str, int],
    to_broadcast: bool,
) -> dict[str, Any]:
    """What the server's DHCP endpoint does with one datagram, minus the sockets."""
    received = engine.receive(
        data, interface=interface, port=port, source=source, to_broadcast=to_broadcast, now=0.0
    )
    if isinstance(received, Outcome):
        return {
            "exchange": None,
            "request": None,
            "decision": None,
            "port": port,
            "outcome": received,
        }
    exchange = received
    if received.request is not None:
        exchange = received.decided(decide_offline(chain, received.request, clock))
    return {
        "exchange": exchange,
        "request": exchange.request,
        "decision": exchange.decision,
        "port": port,
        "outcome": engine.answer(exchange, 0.0),
    }


def render_text(result: dict[str, Any]) -> str:
    lines: list[str] = []
    for step in result["steps"]:
        exchange: Exchange | None = step["exchange"]
        outcome: Outcome = step["outcome"]
        if exchange is None:
            lines.append(f"request: not a DHCP request to port {step['port']}")
            lines.append(f"outcome: {outcome.verdict.value}: {outcome.reason}")
            lines.append("")
            continue
        request, decision = exchange.request, exchange.decision
        kind = exchange.incoming.packet.message_type
        lines.append(f"request: {kind.name if kind else '?'} to port {step['port']}")
        if request is not None:
            arch = request.arch
            lines.append(
                f"  client {request.mac}  firmware {request.firmware.value}  "
                f"arch {int(arch) if arch is not None else '-'}"
                f"{f' ({arch.name})' if arch is not None else ''}  stage {request.stage.value}"
            )
        if decision is None:
            lines.append("decision: none (no policy answered)")
        else:
            lines.append(
                f"decision: {decision.action.value} by policy {decision.policy}: {decision.reason}"
            )
            for label, value in (
                ("program", decision.program),
                ("kernel", decision.kernel),
                ("initrd", " ".join(decision.initrds) or None),
                ("cmdline", decision.cmdline),
            ):
                if value:
                    lines.append(f"  {label}: {value}")
            for fetch in step.get("fetches", ()):
                if fetch.problem is None:
                    lines.append(f"  {fetch.loader} fetches {fetch.what} as {fetch.location}")
                else:
                    lines.append(f"  UNREACHABLE for {fetch.loader}: {fetch.what}: {fetch.problem}")
        lines.append(f"outcome: {outcome.verdict.value}: {outcome.reason}")
        for datagram in outcome.datagrams:
            lines.append(
                f"reply to {datagram.address}:{datagram.port}"
                + (f" after {datagram.delay}s" if datagram.delay else "")
            )
            lines.extend(describe_packet(decode(datagram.data)))
        lines.append("")
    lines.extend(_render_nfs(result.get("nfs", {})))
    return "\n".join(lines).rstrip() + "\n"


def render_json(result: dict[str, Any]) -> str:
    steps = []
    for step in result["steps"]:
        outcome: Outcome = step["outcome"]
        exchange: Exchange | None = step["exchange"]
        decision = exchange.decision if exchange is not None else None
        steps.append(
            {
                "port": step["port"],
                "policy": decision.policy if decision else None,
                "action": decision.action.value if decision else None,
                "reason": decision.reason if decision else None,
                "verdict": outcome.verdict.value,
                "fetches": [
                    {
                        "loader": fetch.loader,
                        "what": fetch.what,
                        "value": fetch.value,
                        "location": fetch.location,
                        "problem": fetch.problem,
                    }
                    for fetch in step.get("fetches", ())
                ],
                "replies": [
                    {
                        "address": str(datagram.address),
                        "port": datagram.port,
                        "hex": datagram.data.hex(),
                    }
                    for datagram in outcome.datagrams
                ],
                "event": outcome.event.as_json() if outcome.event is not None else None,
            }
        )
    nfs = result.get("nfs") or {}
    document: dict[str, Any] = {"steps": steps}
    if nfs:
        document["nfs"] = {
            "exports": [export.as_json() for export in nfs["exports"]],
            "note": nfs["note"],
            "granted_to": nfs["granted_to"],
            "cmdline": nfs["cmdline"],
            "cmdline_problem": nfs["cmdline_problem"],
        }
    return json.dumps(document, indent=2) + "\n"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", "-c", type=Path, help="the YAML config (as for twistd pxe)")
    parser.add_argument("--mac", help="the client's MAC address (any notation)")
    parser.add_argument(
        "--arch", type=int, help="option 93 value (0 BIOS, 7 x64 UEFI, 16 HTTP Boot)"
    )
    parser.add_argument("--vendor-class", help="option 60 (default PXEClient:Arch:<arch>:...)")
    parser.add_argument("--user-class", help="option 77, e.g. iPXE")
    parser.add_argument("--uuid", type=uuid.UUID, help="option 97 SMBIOS UUID")
    parser.add_argument("--mode", choices=[m.value for m in DhcpMode], help="override dhcp.mode")
    parser.add_argument("--packet", help="a captured DHCP request as hex (overrides the above)")
    parser.add_argument(
        "--server-address", type=IPv4Address, help="our address (default: config or 192.0.2.1)"
    )
    parser.add_argument("--network", type=IPv4Network, help="the serving interface's network")
    parser.add_argument(
        "--json", action="store_true", help="machine-readable output with reply bytes"
    )


def run(args: argparse.Namespace) -> int:
    from pxetwist.tap import default_config_path

    path = args.config or default_config_path()
    try:
        config = load_config(path)
        packet: DhcpPacket | bytes
        if args.packet:
            packet = bytes.fromhex("".join(args.packet.split()))
            decode(packet)  # a clear error now, not an "invalid" step
        else:
            if not args.mac:
                raise SystemExit("pxetwist explain: give --mac (or --packet)")
            packet = build_discover(
                MacAddress.parse(args.mac),
                arch=args.arch,
                vendor_class=args.vendor_class,
                user_class=args.user_class,
                client_uuid=args.uuid,
            )
        if args.server_address is not None:
            config = attrs.evolve(config, server_address=args.server_address)
        server = config.reachable_address(IPv4Address("192.0.2.1"))  # a documentation address
        network = args.network or _guess_network(config, server)
        result = explain(
            config,
            packet,
            server=server,
            network=network,
            mode=DhcpMode(args.mode) if args.mode else None,
        )
    except ConfigError as error:
        sys.stderr.write(f"{error}\n")
        return 1
    except PluginError as error:
        sys.stderr.write(f"{path}: {error}\n")
        return 1
    except (MalformedPacket, ValueError, InvalidMacAddress) as error:
        sys.stderr.write(f"pxetwist explain: {error}\n")
        return 2
    try:
        output = render_json(result) if args.json else render_text(result)
    except ValueError as error:  # PacketTooLarge: the reply cannot be sent at all
        sys.stderr.write(f"pxetwist explain: the reply cannot be encoded: {error}\n")
        return 3
    sys.stdout.write(output)
    return 0


def _guess_network(config: Config, server: IPv4Address) -> IPv4Network:
    for subnet in config.dhcp.subnets:
        if server in subnet.network:
            return subnet.network
    return IPv4Network(f"{server}/24", strict=False)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pxetwist explain", description=__doc__)
    add_arguments(parser)
    return run(parser.parse_args(argv))
