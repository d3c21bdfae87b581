"""The DHCP decisions: (packet, where it arrived, lease table, policy decision, now) -> replies.

Pure and synchronous: the Twisted protocol asks the policy chain first (``boot_request``), then
calls ``handle`` with the decision, persists ``Outcome.durable`` and only then sends the replies.
Rules: RFC 2131 and protocol-reference §1 (addresses, leases, reply addressing), §2-§5 (boot).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from ipaddress import IPv4Address

import attrs

from pxetwist.config.model import Config, DhcpMode, Machine, Subnet
from pxetwist.dhcp.boot import BootFields, boot_fields, boot_item_echo
from pxetwist.dhcp.exchange import (
    BROADCAST,
    CLIENT_PORT,
    PXE_PORT,
    SERVER_PORT,
    ZERO,
    Datagram,
    Exchange,
    Incoming,
    Interface,
    Outcome,
    Reply,
    Verdict,
    is_zero,
)
from pxetwist.dhcp.leases import LeaseTable, Pool
from pxetwist.dhcp.limits import DiscoverLimiter
from pxetwist.dhcp.options import (
    MessageType,
    OptionCode,
    encode_ipv4_list,
    encode_string,
    encode_uint32,
)
from pxetwist.dhcp.packet import DhcpPacket, MalformedPacket, decode, make_reply
from pxetwist.dhcp.report import invalid_event, packet_event
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.request import BootRequest, unique_arches
from pxetwist.policy.values import BootAction, Firmware, MacAddress, Stage

__all__ = [
    "BROADCAST",
    "CLIENT_PORT",
    "PXE_PORT",
    "SERVER_PORT",
    "ZERO",
    "Datagram",
    "DhcpEngine",
    "Exchange",
    "Incoming",
    "Interface",
    "Outcome",
    "Reply",
    "Verdict",
    "pools_for",
]


def pools_for(config: Config, machines: Sequence[Machine] | None = None) -> list[Pool]:
    """One pool per subnet: its range, the reservations in it, and who counts as unknown.

    Machines the config lists are "known"; the others may hold at most the subnet's
    ``unknown_limit`` addresses of the range, by default all but 10 % of it when the config
    lists machines (so that listed machines without a reservation always find one), else all.
    ``machines`` replaces the config's list (the config's plus the API's, issue 14); when two
    of them name one address, the first keeps it.
    """
    listed = config.machines if machines is None else machines
    known = frozenset(machine.mac for machine in listed)
    pools = []
    for subnet in config.dhcp.subnets:
        reservations: dict[MacAddress, IPv4Address] = {}
        taken: set[IPv4Address] = set()
        for machine in listed:
            address = machine.address
            if address is not None and address in subnet.network and address not in taken:
                reservations[machine.mac] = address
                taken.add(address)
        first, last = subnet.range if subnet.range else (None, None)
        limit = subnet.unknown_limit
        if limit is None and known and first is not None and last is not None:
            size = int(last) - int(first) + 1
            limit = size - math.ceil(size / 10)
        pools.append(
            Pool(subnet.network, first, last, reservations, known=known, unknown_limit=limit)
        )
    return pools


# Options the server always sends unrequested in address replies (§1.9): mask, router, DNS,
# broadcast; they go after the client's requested ones.
_SUBNET_OPTIONS = (
    OptionCode.SUBNET_MASK,
    OptionCode.ROUTER,
    OptionCode.DNS,
    OptionCode.DOMAIN_NAME,
    OptionCode.BROADCAST,
)
_BOOT_KEEP = frozenset(
    {
        OptionCode.VENDOR_CLASS,
        OptionCode.VENDOR_SPECIFIC,
        OptionCode.BOOTFILE,
        OptionCode.CLIENT_UUID,
        OptionCode.MESSAGE_TYPE,
        OptionCode.SERVER_ID,
        OptionCode.LEASE_TIME,
        OptionCode.CLIENT_ID,
        OptionCode.RELAY_AGENT_INFO,
    }
)


_ASKING = frozenset((MessageType.DISCOVER, MessageType.REQUEST, MessageType.INFORM))
_OPTION_ORDER_CACHE = 256  # distinct option-55 lists remembered per subnet


class _SubnetInfo:
    """A subnet's reply options, encoded once instead of for every packet."""

    __slots__ = ("_by_request_list", "lease_times", "subnet", "values")

    def __init__(self, subnet: Subnet) -> None:
        self.subnet = subnet
        lease_time = subnet.lease_time
        self.lease_times: tuple[tuple[int, bytes], ...] = (
            (OptionCode.LEASE_TIME, encode_uint32(lease_time)),
            (OptionCode.RENEWAL_T1, encode_uint32(lease_time // 2)),
            (OptionCode.REBINDING_T2, encode_uint32(lease_time * 7 // 8)),
        )
        values: dict[int, bytes] = {
            OptionCode.SUBNET_MASK: subnet.network.netmask.packed,
            OptionCode.BROADCAST: subnet.network.broadcast_address.packed,
        }
        if subnet.router is not None:
            values[OptionCode.ROUTER] = subnet.router.packed
        if subnet.dns:
            values[OptionCode.DNS] = encode_ipv4_list(subnet.dns)
        if subnet.domain:
            values[OptionCode.DOMAIN_NAME] = encode_string(subnet.domain)
        self.values = values
        self._by_request_list: dict[bytes | None, tuple[tuple[int, bytes], ...]] = {}

    def options_for(self, request_list: bytes | None) -> tuple[tuple[int, bytes], ...]:
        """Mask, router, DNS, ...: the ones the client asked for (55) first, in its order."""
        cached = self._by_request_list.get(request_list)
        if cached is not None:
            return cached
        values = self.values
        requested = [code for code in (request_list or b"") if code in values]
        order = dict.fromkeys([*requested, *_SUBNET_OPTIONS])
        options = tuple((code, values[code]) for code in order if code in values)
        if len(self._by_request_list) >= _OPTION_ORDER_CACHE:
            self._by_request_list.clear()
        self._by_request_list[request_list] = options
        return options


_IPXE_NO_PROXYDHCP = bytes((176, 1, 1))

#: Raspberry Pi OUIs (smee's list, protocol-reference §5 quirk 4).
RASPBERRY_PI_OUIS = frozenset(
    bytes.fromhex(oui) for oui in ("b827eb", "dca632", "e45f01", "28cdc1", "d83add", "2ccf67")
)
#: Option 43 as a one-item PXE menu naming "Raspberry Pi Boot": what the Pi 3/4 ROM looks for
#: (§5 quirk 3, dnsmasq's pxe-service=0,"Raspberry Pi Boot").
RASPBERRY_PI_43 = bytes.fromhex("0601030a04005058450914000011") + b"Raspberry Pi Boot" + b"\xff"


class DhcpEngine:
    """Authoritative DHCP, proxyDHCP and the port-4011 PXE boot server, in one set of rules."""

    def __init__(
        self,
        config: Config,
        leases: LeaseTable,
        server_ids: Sequence[IPv4Address] = (),
        known: frozenset[MacAddress] | None = None,
    ) -> None:
        self.config = config
        self.leases = leases
        self.server_ids = frozenset(server_ids)
        self.http_port = config.http.port
        self.tftp_port = config.tftp.port
        # Per-packet constants, worked out once: the hot path of a busy server.
        self._mode = config.dhcp.mode
        self._offer_hold = float(config.dhcp.offer_hold)
        self._subnet_bounds = tuple(
            (int(s.network.network_address), int(s.network.broadcast_address), s)
            for s in config.dhcp.subnets
        )
        self._subnet_info = {id(s): _SubnetInfo(s) for s in config.dhcp.subnets}
        # Listed machines (the config's, and the API's when the caller passes them).
        self._known = (
            frozenset(machine.mac for machine in config.machines) if known is None else known
        )
        self._limiter = DiscoverLimiter(
            config.dhcp.discover_rate_limit, report_interval=config.log_budget.interval
        )

    # -- the entry: a datagram in, the question for the policy chain out ------------------------

    def receive(
        self,
        data: bytes,
        *,
        interface: Interface,
        port: int,
        source: tuple[str, int],
        to_broadcast: bool,
        now: float,
    ) -> Exchange | Outcome:
        """Decode a datagram and work out what to ask the policy chain about it.

        Returns the :class:`Exchange` to complete with the chain's decision and hand to
        :meth:`answer`, or, for a datagram that needs no decision (malformed, another server's
        reply, a DISCOVER over its source's rate limit), the final :class:`Outcome` at once.
        """
        try:
            packet = decode(data)
        except MalformedPacket as error:
            return Outcome(
                Verdict.DROPPED,
                f"malformed: {error}",
                event=invalid_event(now, interface.name, port, source, f"malformed: {error}"),
            )
        if packet.op != 1:
            # A reply from another server, seen on the broadcast domain: not for us, no event.
            return Outcome(Verdict.IGNORED, "a BOOTREPLY")
        incoming = Incoming(packet, interface, source, port, to_broadcast)
        limiting = port == SERVER_PORT and self._limiter.rate
        if limiting and packet.message_type is MessageType.DISCOVER:
            limited = self._rate_limited(incoming, now)
            if limited is not None:
                return limited
        return Exchange(incoming, self.boot_request(incoming))

    def _rate_limited(self, incoming: Incoming, now: float) -> Outcome | None:
        """Over its relay's or segment's DISCOVER rate (``dhcp.discover_rate_limit``)?"""
        packet = incoming.packet
        mac = packet.mac
        if mac is not None and mac in self._known:
            return None  # a listed machine is never held back by strangers on its segment
        relayed = not is_zero(packet.giaddr)
        source = f"relay {packet.giaddr}" if relayed else f"interface {incoming.interface.name}"
        allowed, report = self._limiter.take(source, now)
        if allowed:
            return None
        reason = f"over the limit of {self._limiter.rate:g} DISCOVERs/s from {source}"
        outcome = Outcome(Verdict.DROPPED, reason)
        event = packet_event(Exchange(incoming), outcome, now, ())
        if report:
            return Outcome(
                Verdict.DROPPED,
                reason,
                event=attrs.evolve(
                    event,
                    message="{message_type} from {mac} on {interface}: {reason}; "
                    "{limited} DISCOVERs from this source dropped since the last report",
                    details={**event.details, "limited": report},
                ),
            )
        # Reported once per interval: the event is still there for sessions and metrics.
        return Outcome(Verdict.DROPPED, reason, event=attrs.evolve(event, message=""))

    # -- the policy question -------------------------------------------------------------------

    def boot_request(self, incoming: Incoming) -> BootRequest | None:
        """The request to put to the policy chain, or ``None`` when no decision is needed.

        Every message that may carry boot information (DISCOVER, REQUEST, INFORM) from any
        client asks: a policy may ``ignore`` a machine altogether, even a plain DHCP client.
        """
        packet = incoming.packet
        options = packet.option_map
        kind = options.get(OptionCode.MESSAGE_TYPE)
        if kind is None or kind[0] not in _ASKING:
            return None
        mac = packet.mac
        if mac is None:
            return None
        if incoming.local_port == PXE_PORT:
            stage = Stage.PROXY_4011
        elif self._mode is DhcpMode.PROXY:
            stage = Stage.PROXY
        else:
            stage = Stage.DHCP
        giaddr = packet.giaddr if not is_zero(packet.giaddr) else None
        # Only options the packet carries are decoded: most clients send few of these.
        return BootRequest(
            mac=mac,
            stage=stage,
            arches=(
                unique_arches(packet.client_arches) if OptionCode.CLIENT_ARCH in options else ()
            ),
            vendor_class=options.get(OptionCode.VENDOR_CLASS),
            user_classes=packet.user_classes if OptionCode.USER_CLASS in options else (),
            uuid=packet.client_uuid if OptionCode.CLIENT_UUID in options else None,
            ipxe_encap=options.get(OptionCode.IPXE_ENCAP),
            relay_address=giaddr,
            relay_info=options.get(OptionCode.RELAY_AGENT_INFO),
            client_address=packet.ciaddr if not is_zero(packet.ciaddr) else None,
            server_address=self.server_address(incoming),
            interface=incoming.interface.name,
            ipxe_user_classes=self.config.dhcp.ipxe_user_classes,
        )

    def _is_raspberry_pi(self, packet: DhcpPacket) -> bool:
        return self.config.dhcp.raspberry_pi and packet.chaddr[:3] in RASPBERRY_PI_OUIS

    def server_address(self, incoming: Incoming) -> IPv4Address:
        return self.config.reachable_address(incoming.interface.address)

    # -- the answer: the exchange in, what to send and what to store out ------------------------

    def answer(self, exchange: Exchange, now: float) -> Outcome:
        """What to send (``datagrams``, once ``durable`` is stored), and the event reporting it.

        The one place a reply is encoded, so ``pxetwist explain`` shows the very bytes the
        server sends.  A reply that cannot be encoded at all is reported and not sent.
        """
        return self._encoded(exchange, self._decide(exchange, now), now)

    def claim_lost(self, exchange: Exchange, now: float) -> Outcome:
        """The shared lease database gave the address of this REQUEST to another server's
        client first (issue 15): a NAK, so that the client starts again with a DISCOVER."""
        self.leases.forget_offer(
            exchange.incoming.packet.client_id, exchange.incoming.packet.mac, now
        )
        outcome = self._nak(exchange.incoming, "address taken by another server")
        return self._encoded(exchange, attrs.evolve(outcome, durable=()), now)

    def _encoded(self, exchange: Exchange, outcome: Outcome, now: float) -> Outcome:
        datagrams: list[Datagram] = []
        dropped: tuple[int, ...] = ()
        for reply in outcome.replies:
            try:
                data, dropped = reply.encoded()
            except ValueError as error:  # PacketTooLarge, or a file name too long for its field
                outcome = Outcome(
                    Verdict.DROPPED,
                    f"{outcome.reason}; reply not sent: {error}",
                    durable=outcome.durable,
                )
                datagrams.clear()
                break
            datagrams.append(Datagram(data, reply.address, reply.port, reply.delay))
        return Outcome(
            outcome.verdict,
            outcome.reason,
            outcome.replies,
            outcome.durable,
            outcome.seen,
            tuple(datagrams),
            packet_event(exchange, outcome, now, dropped),
        )

    def _decide(self, exchange: Exchange, now: float) -> Outcome:
        packet = exchange.incoming.packet
        decision = exchange.decision
        if packet.mac is None:
            return Outcome(Verdict.DROPPED, "no Ethernet hardware address (htype/hlen)")
        if decision is not None and decision.action is BootAction.IGNORE:
            return Outcome(Verdict.IGNORED, f"policy: {decision.reason or 'ignore'}")
        if exchange.incoming.local_port == PXE_PORT:
            return self._boot_server(exchange)
        mode = self._mode
        if mode is DhcpMode.PROXY:
            return self._proxy(exchange)
        if mode is DhcpMode.AUTHORITATIVE:
            return self._authoritative(exchange, now)
        return Outcome(Verdict.IGNORED, "dhcp is off")

    # -- proxyDHCP (§2.3) ----------------------------------------------------------------------

    def _proxy(self, exchange: Exchange) -> Outcome:
        incoming, request, decision = exchange.incoming, exchange.request, exchange.decision
        packet = incoming.packet
        if packet.message_type is not MessageType.DISCOVER:
            return Outcome(Verdict.IGNORED, "proxy mode answers DISCOVERs only")
        firmware = request.firmware if request is not None else Firmware.PLAIN
        if request is None or firmware is Firmware.PLAIN:
            return Outcome(Verdict.IGNORED, "not a network-boot client")
        if not request.arches and not self._is_raspberry_pi(packet):
            # §2.3: a PXE DISCOVER carries option 93; without it this is no PXE client.
            return Outcome(Verdict.IGNORED, "no client architecture (option 93)")
        if decision is None:
            return Outcome(Verdict.IGNORED, "no policy decided for this machine")
        server = self.server_address(incoming)
        arch = request.arch
        # A proxy offer is only a proxy offer with 60 (and 43 or a 4011 server) in it (§2.2), so
        # the omit-60/43 quirk, meant for full DHCP replies, does not apply here.
        decision = attrs.evolve(
            decision, quirks=attrs.evolve(decision.quirks, omit_pxe_options=False)
        )
        uefi_pxe = (
            firmware is Firmware.PXE_ROM
            and arch is not None
            and (arch.boot_key or "").startswith("efi-")
        )
        if uefi_pxe and self.config.dhcp.boot_server:
            # §2.3 strategy 1 (R2): PXEClient without 43 sends UEFI firmware to port 4011 of
            # siaddr, so siaddr must be us whatever next server the policy chose.
            fields = self._boot(packet, firmware, decision, server, discovery_control=False)
            if fields is not None:
                fields = attrs.evolve(fields, siaddr=server, sname=str(server).encode())
            how = "proxy offer, redirect to port 4011"
        else:
            fields = self._boot(packet, firmware, decision, server)
            how = "proxy offer"
        if fields is None:
            return Outcome(Verdict.IGNORED, f"nothing to boot ({decision.reason})")
        reply = make_reply(
            packet,
            MessageType.OFFER,
            siaddr=fields.siaddr,
            sname=fields.sname,
            file=fields.file,
            options=[(OptionCode.SERVER_ID, server.packed), *fields.options],
        )
        return Outcome(
            Verdict.ANSWERED,
            f"{how}: {decision.reason}",
            replies=(self._route(incoming, reply, decision, force_broadcast=True),),
            seen=((request, None),),
        )

    def _boot_server(self, exchange: Exchange) -> Outcome:
        """The PXE boot server on port 4011: ACK from 4011 to the source address and port."""
        incoming, request, decision = exchange.incoming, exchange.request, exchange.decision
        packet = incoming.packet
        if packet.message_type not in (MessageType.REQUEST, MessageType.INFORM):
            return Outcome(Verdict.IGNORED, "port 4011 answers REQUEST and INFORM only")
        if request is None or decision is None:
            return Outcome(Verdict.IGNORED, "no policy decided for this machine")
        server = self.server_address(incoming)
        fields = self._boot(packet, request.firmware, decision, server, discovery_control=False)
        if fields is None:
            return Outcome(Verdict.IGNORED, f"nothing to boot ({decision.reason})")
        options = [(OptionCode.SERVER_ID, server.packed), *fields.options]
        if OptionCode.VENDOR_CLASS not in fields.option_codes:
            options.insert(1, (OptionCode.VENDOR_CLASS, b"PXEClient"))
        echo = boot_item_echo(packet)
        if echo is not None:
            options.append(echo)
        reply = make_reply(
            packet,
            MessageType.ACK,
            siaddr=fields.siaddr,
            sname=fields.sname,
            file=fields.file,
            options=options,
        )
        host, port = incoming.source
        client = packet.ciaddr if not is_zero(packet.ciaddr) else IPv4Address(host)
        return Outcome(
            Verdict.ANSWERED,
            f"boot server ACK: {decision.reason}",
            replies=(
                Reply(
                    reply,
                    IPv4Address(host),
                    port,
                    packet.max_reply_size(incoming.interface.mtu),
                    decision.quirks.reply_delay,
                    _BOOT_KEEP,
                ),
            ),
            seen=((request, client if not is_zero(client) else None),),
        )

    # -- authoritative DHCP (§1.4) -------------------------------------------------------------

    def _authoritative(self, exchange: Exchange, now: float) -> Outcome:
        incoming = exchange.incoming
        kind = incoming.packet.message_type
        subnet = self.select_subnet(incoming)
        if subnet is None:
            return Outcome(Verdict.DROPPED, "no configured subnet for this request")
        if kind is MessageType.DISCOVER:
            return self._discover(exchange, subnet, now)
        if kind is MessageType.REQUEST:
            return self._request(exchange, subnet, now)
        if kind is MessageType.DECLINE:
            return self._decline(incoming, subnet, now)
        if kind is MessageType.RELEASE:
            return self._release(incoming, now)
        if kind is MessageType.INFORM:
            return self._inform(exchange, subnet)
        return Outcome(Verdict.IGNORED, f"{kind.name if kind else 'no message type'} is not served")

    def select_subnet(self, incoming: Incoming) -> Subnet | None:
        """Option 118, then 82.5 (link selection), then giaddr, then the receiving interface."""
        packet = incoming.packet
        hint = packet.subnet_selection
        if hint is None and OptionCode.RELAY_AGENT_INFO in packet:
            hint = packet.link_selection
        if hint is not None:
            return self._subnet_containing(hint, None)
        if not is_zero(packet.giaddr):
            return self._subnet_containing(packet.giaddr, None)
        return self._subnet_containing(incoming.interface.address, incoming.interface.name)

    def _subnet_containing(self, address: IPv4Address, interface: str | None) -> Subnet | None:
        a = int(address)
        for first, last, subnet in self._subnet_bounds:
            if first <= a <= last and (interface is None or subnet.interface in (None, interface)):
                return subnet
        return None

    def _discover(self, exchange: Exchange, subnet: Subnet, now: float) -> Outcome:
        incoming, decision = exchange.incoming, exchange.decision
        packet = incoming.packet
        lease = self.leases.offer(
            packet.client_id,
            packet.mac,
            subnet.network,
            packet.requested_ip,
            now,
            self._offer_hold,
        )
        if lease is None:
            # RFC 2131 §4.3.1: no address to offer -> no OFFER (the client tries again later).
            mac = packet.mac
            unknown = self.leases.unknown_held(subnet.network, now) if mac not in self._known else 0
            return Outcome(
                Verdict.REFUSED,
                f"no free address in {subnet.network}"
                + (f" for machines not in the config ({unknown} held)" if unknown else ""),
            )
        reply = self._address_reply(exchange, MessageType.OFFER, lease.address, subnet)
        return Outcome(
            Verdict.ANSWERED,
            f"offer {lease.address}" + (f": {decision.reason}" if decision else ""),
            replies=(self._route(incoming, reply, decision),),
        )

    def _request(self, exchange: Exchange, subnet: Subnet, now: float) -> Outcome:
        incoming, request, decision = exchange.incoming, exchange.request, exchange.decision
        packet = incoming.packet
        server_id = packet.server_id
        requested = packet.requested_ip
        if server_id is not None:
            # SELECTING: the client chose a server.
            if server_id not in self.server_ids and server_id != self.server_address(incoming):
                self.leases.forget_offer(packet.client_id, packet.mac, now)
                return Outcome(Verdict.IGNORED, f"client chose server {server_id}")
            address = requested if requested is not None else packet.ciaddr
            state = "selecting"
        elif requested is not None and is_zero(packet.ciaddr):
            address, state = requested, "init-reboot"
        elif not is_zero(packet.ciaddr):
            address = packet.ciaddr
            state = "renewing" if not incoming.to_broadcast else "rebinding"
        else:
            return self._nak(incoming, "REQUEST without an address")
        if is_zero(address) or address not in subnet.network:
            if state == "rebinding":
                return Outcome(Verdict.IGNORED, f"rebinding {address}: not our network")
            return self._nak(incoming, f"{state} {address}: wrong network for {subnet.network}")
        if state in ("renewing", "rebinding"):
            current = self.leases.find_client(packet.client_id, packet.mac, now)
            if current is None or current.address != address:
                if state == "rebinding":
                    return Outcome(Verdict.IGNORED, f"rebinding {address}: not our lease")
                return self._nak(incoming, f"renewing {address}: not this client's lease")
        lease = self.leases.bind(
            packet.client_id,
            packet.mac,
            address,
            subnet.network,
            now,
            float(subnet.lease_time),
            packet.hostname,
        )
        if lease is None:
            return self._nak(incoming, f"{state} {address}: not available to this client")
        reply = self._address_reply(exchange, MessageType.ACK, lease.address, subnet)
        seen: tuple[tuple[BootRequest, IPv4Address | None], ...] = (
            ((request, lease.address),) if request is not None else ()
        )
        return Outcome(
            Verdict.ANSWERED,
            f"ack {lease.address} ({state})" + (f": {decision.reason}" if decision else ""),
            replies=(self._route(incoming, reply, decision),),
            durable=tuple(self.leases.take_changes()),
            seen=seen,
        )

    def _nak(self, incoming: Incoming, reason: str) -> Outcome:
        packet = incoming.packet
        reply = make_reply(
            packet,
            MessageType.NAK,
            options=[
                (OptionCode.SERVER_ID, self.server_address(incoming).packed),
                (OptionCode.MESSAGE, reason.encode()[:200]),
            ],
        )
        if not is_zero(packet.giaddr):
            destination, port = packet.giaddr, SERVER_PORT
        else:
            destination, port = BROADCAST, CLIENT_PORT
        max_size = packet.max_reply_size(incoming.interface.mtu)
        return Outcome(
            Verdict.ANSWERED,
            f"nak: {reason}",
            replies=(Reply(reply, destination, port, max_size),),
            durable=tuple(self.leases.take_changes()),
        )

    def _decline(self, incoming: Incoming, subnet: Subnet, now: float) -> Outcome:
        packet = incoming.packet
        address = packet.requested_ip
        if address is None or packet.server_id not in (None, *self.server_ids):
            return Outcome(Verdict.IGNORED, "DECLINE not for us")
        lease = self.leases.decline(
            packet.client_id,
            packet.mac,
            address,
            now,
            float(self.config.dhcp.decline_quarantine),
        )
        return Outcome(
            Verdict.IGNORED,
            f"decline {address}: quarantined" if lease else f"decline {address}: not ours",
            durable=tuple(self.leases.take_changes()),
        )

    def _release(self, incoming: Incoming, now: float) -> Outcome:
        packet = incoming.packet
        lease = self.leases.release(packet.client_id, packet.mac, packet.ciaddr, now)
        return Outcome(
            Verdict.IGNORED,
            f"release {packet.ciaddr}" + ("" if lease else ": no such lease"),
            durable=tuple(self.leases.take_changes()),
        )

    def _inform(self, exchange: Exchange, subnet: Subnet) -> Outcome:
        incoming = exchange.incoming
        packet = incoming.packet
        if is_zero(packet.ciaddr):
            return Outcome(Verdict.DROPPED, "INFORM without ciaddr")
        reply = self._address_reply(exchange, MessageType.ACK, None, subnet, lease_times=False)
        return Outcome(
            Verdict.ANSWERED,
            f"inform ack to {packet.ciaddr}",
            replies=(self._route(incoming, reply, exchange.decision),),
        )

    # -- building replies ----------------------------------------------------------------------

    def _boot(
        self,
        packet: DhcpPacket,
        firmware: Firmware,
        decision: BootDecision,
        server: IPv4Address,
        *,
        discovery_control: bool = True,
    ) -> BootFields | None:
        if decision.action is BootAction.LOCAL and decision.program is None:
            return None
        fields = boot_fields(
            packet,
            firmware,
            decision,
            server=server,
            http_port=self.http_port,
            tftp_port=self.tftp_port,
            discovery_control=discovery_control,
        )
        if fields is not None and firmware is Firmware.PXE_ROM and self._is_raspberry_pi(packet):
            # §5 quirks 2-4: the Pi wants 60 PXEClient with the "Raspberry Pi Boot" menu in 43,
            # and reads its TFTP server from option 66 (which boot_fields always sends).
            kept = tuple(
                (code, value)
                for code, value in fields.options
                if code not in (OptionCode.VENDOR_CLASS, OptionCode.VENDOR_SPECIFIC)
            )
            fields = attrs.evolve(
                fields,
                options=(
                    (OptionCode.VENDOR_CLASS, b"PXEClient"),
                    (OptionCode.VENDOR_SPECIFIC, RASPBERRY_PI_43),
                    *kept,
                ),
            )
        return fields

    def _address_reply(
        self,
        exchange: Exchange,
        kind: MessageType,
        address: IPv4Address | None,
        subnet: Subnet,
        *,
        lease_times: bool = True,
    ) -> DhcpPacket:
        incoming, request, decision = exchange.incoming, exchange.request, exchange.decision
        packet = incoming.packet
        server = self.server_address(incoming)
        info = self._info(subnet)
        options: list[tuple[int, bytes]] = [(OptionCode.SERVER_ID, server.packed)]
        if lease_times:
            options += info.lease_times
        fields: BootFields | None = None
        firmware = request.firmware if request is not None else Firmware.PLAIN
        if decision is not None and firmware is not Firmware.PLAIN:
            fields = self._boot(packet, firmware, decision, server)
        if fields is not None:
            options += fields.options
            if firmware is Firmware.IPXE:
                # 175.176 no-pxedhcp: we are the DHCP server and there is no proxy to wait for;
                # saves iPXE its ~2-3 s ProxyDHCP wait (protocol-reference §4.2).
                options.append((OptionCode.IPXE_ENCAP, _IPXE_NO_PROXYDHCP))
        options += info.options_for(packet.get(OptionCode.PARAMETER_REQUEST_LIST))
        return make_reply(
            packet,
            kind,
            yiaddr=address or ZERO,
            siaddr=fields.siaddr if fields else server,
            sname=fields.sname if fields else b"",
            file=fields.file if fields else b"",
            options=options,
        )

    def _info(self, subnet: Subnet) -> _SubnetInfo:
        info = self._subnet_info.get(id(subnet))
        if info is None or info.subnet is not subnet:  # not one of the config's own subnets
            info = _SubnetInfo(subnet)
        return info

    def _route(
        self,
        incoming: Incoming,
        reply: DhcpPacket,
        decision: BootDecision | None,
        *,
        force_broadcast: bool = False,
    ) -> Reply:
        """Where a reply goes, by RFC 2131 §4.1 (protocol-reference §1.6)."""
        packet = incoming.packet
        delay = decision.quirks.reply_delay if decision else 0.0
        if decision is not None and decision.quirks.force_broadcast:
            force_broadcast = True
        max_size = packet.max_reply_size(incoming.interface.mtu)
        if not is_zero(packet.giaddr):
            address, port = packet.giaddr, SERVER_PORT
        elif not is_zero(packet.ciaddr) and not force_broadcast:
            address, port = packet.ciaddr, CLIENT_PORT
        else:
            # Unicast to yiaddr needs an ARP entry the client cannot answer yet; RFC 2131 §4.1
            # allows a broadcast instead, as pixiecore and PyPXE do.
            address, port = BROADCAST, CLIENT_PORT
        return Reply(reply, address, port, max_size, delay, _BOOT_KEEP)
