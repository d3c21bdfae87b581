"""Moves DHCP datagrams between a socket, the policy chain, the engine and the lease store.

No DHCP rule lives here: decoding is :mod:`pxetwist.dhcp.packet`, decisions are
:class:`pxetwist.dhcp.engine.DhcpEngine`.  This layer adds what needs I/O and time: asking the
(possibly asynchronous) policy chain, making leases durable before an ACK leaves, reply delays,
and logging every outcome with structured fields.
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pxetwist.dhcp.engine import ZERO, DhcpEngine, Incoming, Interface, Outcome, Reply, Verdict
from pxetwist.dhcp.packet import MalformedPacket, PacketTooLarge, decode
from pxetwist.dhcp.store import ILeaseStore
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.request import BootRequest
from pxetwist.policy.sightings import SightingRegistry

log = Logger()

_LIMITED_BROADCAST = IPv4Address("255.255.255.255")

#: Per-packet log lines an endpoint writes per second before it sums up instead (see
#: :class:`DhcpEndpoint`).  Far above what booting machines need, far below a flood.
LOG_LINES_PER_SECOND = 1000


class DhcpEndpoint:
    """One socket (an interface and a port) and what answers on it.

    Every packet gets one structured log line (what came in, what the policy and the engine
    decided, why) up to ``log_lines_per_second``; past that, within the same second, packets
    are only counted, and one line sums them up when the second is over.  A flood then costs
    neither the CPU nor the disk of a line per packet (a line costs more than answering the
    packet), while a normal network, even a rack booting at once, logs everything.  ``None``
    logs every packet.
    """

    def __init__(
        self,
        *,
        sock: socket.socket,
        interface: Interface,
        port: int,
        engine: DhcpEngine,
        chain: PolicyChain,
        store: ILeaseStore | None,
        sightings: SightingRegistry,
        clock: IReactorTime,
        log_lines_per_second: int | None = LOG_LINES_PER_SECOND,
    ) -> None:
        self.socket = sock
        self.interface = interface
        self.port = port
        self.engine = engine
        self.chain = chain
        self.store = store
        self.sightings = sightings
        self.clock = clock
        self._broadcast = interface.network.broadcast_address
        self._stage = "dhcp" if port == 67 else "proxy-4011"
        self._addresses: dict[IPv4Address, str] = {}  # str() of reply destinations
        self.log_lines_per_second = log_lines_per_second
        self._window_start = float("-inf")  # the current one-second log window
        self._window_lines = 0
        self._unlogged: dict[tuple[str, str], int] = {}  # (message, verdict) -> count
        self._summary: IDelayedCall | None = None

    def datagram_received(
        self, data: bytes, source: tuple[str, int], destination: IPv4Address | None
    ) -> None:
        try:
            packet = decode(data)
        except MalformedPacket as error:
            log.warn(
                "dropped a malformed DHCP packet from {peer} on {interface}: {error}",
                peer=f"{source[0]}:{source[1]}",
                interface=self.interface.name,
                error=str(error),
            )
            return
        if packet.op != 1:
            return  # a reply from another server, seen on the broadcast domain
        incoming = Incoming(
            packet=packet,
            interface=self.interface,
            source=source,
            local_port=self.port,
            to_broadcast=destination is None
            or destination == _LIMITED_BROADCAST
            or destination == self._broadcast,
        )
        request = self.engine.boot_request(incoming)
        if request is None:
            self._answer(incoming, None, None)
            return
        # The DHCP line logged for every packet names the policy and its decision; the chain
        # need not log it a second time.
        decision = self.chain.decide_now(request, log_decision=False)
        if isinstance(decision, Deferred):
            decision.addCallback(
                lambda decided: self._answer(incoming, request, decided)
            ).addErrback(self._unexpected, incoming)
            return
        try:
            self._answer(incoming, request, decision)
        except Exception:
            self._unexpected(Failure(), incoming)

    def _unexpected(self, failure: Failure, incoming: Incoming) -> None:
        log.failure(
            "unexpected error answering {peer}",
            failure=failure,
            peer=f"{incoming.source[0]}:{incoming.source[1]}",
        )

    def _answer(
        self, incoming: Incoming, request: BootRequest | None, decision: BootDecision | None
    ) -> None:
        now = self.clock.seconds()
        outcome = self.engine.handle(incoming, request, decision, now)
        if self._log_budget(now):
            self._log(incoming, request, decision, outcome)
        else:
            kind = incoming.packet.message_type
            key = (kind.name if kind else "BOOTP", outcome.verdict.value)
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
        for seen_request, address in outcome.seen:
            self.sightings.record(seen_request, address)
        if outcome.durable and self.store is not None:
            self.store.write(outcome.durable).addCallbacks(
                self._stored,
                self._not_stored,
                callbackArgs=(outcome.replies,),
                errbackArgs=(incoming,),
            )
        else:
            self._send_all(outcome.replies)

    def _stored(self, _: object, replies: tuple[Reply, ...]) -> None:
        self._send_all(replies)

    def _not_stored(self, failure: Failure, incoming: Incoming) -> None:
        log.failure(
            "lease not stored; reply to {mac} withheld",
            failure=failure,
            mac=str(incoming.packet.mac),
        )

    def _log_budget(self, now: float) -> bool:
        """Whether this packet gets its own log line (see the class docstring)."""
        budget = self.log_lines_per_second
        if budget is None:
            return True
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_lines = 0
        self._window_lines += 1
        if self._window_lines <= budget:
            return True
        if self._summary is None:
            self._summary = self.clock.callLater(
                max(0.0, self._window_start + 1.0 - now), self._log_summary
            )
        return False

    def _log_summary(self) -> None:
        """One line for the packets of the last window that had no line of their own."""
        self._summary = None
        unlogged, self._unlogged = self._unlogged, {}
        total = sum(unlogged.values())
        if not total:
            return
        counts = ", ".join(
            f"{count} {message} {verdict}" for (message, verdict), count in sorted(unlogged.items())
        )
        dropped = sum(count for (_, verdict), count in unlogged.items() if verdict == "dropped")
        (log.warn if dropped else log.info)(
            "{interface}:{port}: {total} more DHCP packets in one second, over the "
            "{budget} lines/s logged one by one: {counts}",
            interface=self.interface.name,
            port=self.port,
            total=total,
            budget=self.log_lines_per_second,
            counts=counts,
            unlogged={f"{message} {verdict}": n for (message, verdict), n in unlogged.items()},
        )

    def _log(
        self,
        incoming: Incoming,
        request: BootRequest | None,
        decision: BootDecision | None,
        outcome: Outcome,
    ) -> None:
        """One structured line per packet: what came in, what was decided, and why."""
        packet = incoming.packet
        kind = packet.message_type
        arch = request.arch if request is not None else None
        fields: dict[str, Any] = {
            "stage": request.stage.value if request is not None else self._stage,
            # str(MacAddress), without building the MacAddress
            "mac": packet.chaddr[:6].hex(":") if packet.mac is not None else "None",
            "xid": f"{packet.xid:08x}",
            "message_type": kind.name if kind else None,
            "interface": self.interface.name,
            "verdict": outcome.verdict.value,
            "reason": outcome.reason,
            "policy": None,
            "arch": int(arch) if arch is not None else None,
            "firmware": request.firmware.value if request is not None else None,
        }
        text = "{message_type} from {mac} on {interface}: {reason}"
        if packet.giaddr != ZERO:
            fields["relay"] = str(packet.giaddr)
            text += " (relay {relay})"
        if outcome.replies:
            reply = outcome.replies[0]
            fields["reply_to"] = f"{reply.address}:{reply.port}"
        if decision is not None:
            fields["policy"] = decision.policy
            fields["action"] = decision.action.value
            fields["program"] = decision.program
            text += " [{policy}: {action}]"
        if outcome.verdict is Verdict.DROPPED:
            log.warn(text, **fields)
        else:
            log.info(text, **fields)

    def _send_all(self, replies: tuple[Reply, ...]) -> None:
        for reply in replies:
            if reply.delay > 0:
                self.clock.callLater(reply.delay, self._send, reply)
            else:
                self._send(reply)

    def _send(self, reply: Reply) -> None:
        try:
            data = reply.wire()
        except (PacketTooLarge, ValueError) as error:
            log.error(
                "reply to {mac} not sent: {error}", mac=str(reply.packet.mac), error=str(error)
            )
            return
        address = self._addresses.get(reply.address)
        if address is None:
            if len(self._addresses) >= 1024:
                self._addresses.clear()
            address = self._addresses[reply.address] = str(reply.address)
        try:
            self.socket.sendto(data, (address, reply.port))
        except OSError as error:
            log.warn(
                "sending to {address}:{port} on {interface} failed: {error}",
                address=str(reply.address),
                port=reply.port,
                interface=self.interface.name,
                error=str(error),
            )
