"""Moves DHCP datagrams between a socket, the policy chain, the engine and the lease store.

No DHCP rule lives here, and no log text: :meth:`DhcpEngine.receive
<pxetwist.dhcp.engine.DhcpEngine.receive>` decodes a datagram into an exchange,
:meth:`~pxetwist.dhcp.engine.DhcpEngine.answer` turns the exchange and the policy's decision
into datagrams, leases and a :class:`~pxetwist.events.BootEvent`.  This layer adds what needs
I/O and time: asking the (possibly asynchronous) policy chain, making leases durable before an
ACK leaves, reply delays, and reporting each outcome on the event bus, where the log observer
writes it as a line (within the config's ``log_budget``).
"""

from __future__ import annotations

import socket
from ipaddress import IPv4Address

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from pxetwist.dhcp.engine import DhcpEngine
from pxetwist.dhcp.exchange import Datagram, Exchange, Interface, Outcome, address_text
from pxetwist.dhcp.pgstore import AddressClaimed, StoreUnavailable
from pxetwist.dhcp.store import ILeaseStore
from pxetwist.events import BootEventBus
from pxetwist.events import Outcome as EventOutcome
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.sightings import SightingRegistry

log = Logger()

_LIMITED_BROADCAST = IPv4Address("255.255.255.255")

#: Seconds between two lines about the same kind of local failure (a full disk, a send error):
#: they repeat for every packet while they last.
_FAILURE_LOG_INTERVAL = 10.0


class DhcpEndpoint:
    """One socket (an interface and a port) and what answers on it."""

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
        events: BootEventBus,
    ) -> None:
        self.socket = sock
        self.interface = interface
        self.port = port
        self.engine = engine
        self.chain = chain
        self.store = store
        self.sightings = sightings
        self.clock = clock
        self.events = events
        self._broadcast = interface.network.broadcast_address
        self._failures_logged: dict[str, float] = {}  # kind -> when last logged
        self.send_failures = 0
        self.unexpected_errors = 0

    def datagram_received(
        self, data: bytes, source: tuple[str, int], destination: IPv4Address | None
    ) -> None:
        now = self.clock.seconds()
        received = self.engine.receive(
            data,
            interface=self.interface,
            port=self.port,
            source=source,
            to_broadcast=destination is None
            or destination == _LIMITED_BROADCAST
            or destination == self._broadcast,
            now=now,
        )
        if isinstance(received, Outcome):
            self._finish(received)
            return
        request = received.request
        if request is None:
            self._finish(self.engine.answer(received, now), received)
            return
        # The DHCP event of every packet names the policy and its decision; the chain need not
        # log it a second time.
        decision = self.chain.decide_now(request, log_decision=False)
        if isinstance(decision, Deferred):
            decision.addCallback(self._decided_later, received).addErrback(
                self._unexpected, received
            )
            return
        try:
            exchange = received.decided(decision)
            self._finish(self.engine.answer(exchange, now), exchange)
        except Exception:
            self._unexpected(Failure(), received)

    def _decided_later(self, decision: BootDecision | None, exchange: Exchange) -> None:
        decided = exchange.decided(decision)
        self._finish(self.engine.answer(decided, self.clock.seconds()), decided)

    def _unexpected(self, failure: Failure, exchange: Exchange) -> None:
        """A bug, not bad input: logged with its traceback, but not once per packet."""
        self.unexpected_errors += 1
        if self._may_log("unexpected"):
            log.failure(
                "unexpected error answering {peer} ({count} so far; logged every {every:g} s)",
                failure=failure,
                peer=f"{exchange.incoming.source[0]}:{exchange.incoming.source[1]}",
                count=self.unexpected_errors,
                every=_FAILURE_LOG_INTERVAL,
            )

    def _finish(self, outcome: Outcome, exchange: Exchange | None = None) -> None:
        for seen_request, address in outcome.seen:
            self.sightings.record(seen_request, address)
        if outcome.durable and self.store is not None:
            self.store.write(outcome.durable).addCallbacks(
                self._deliver,
                self._not_stored,
                callbackArgs=(outcome,),
                errbackArgs=(outcome, exchange),
            )
        else:
            self._deliver(None, outcome)

    def _deliver(self, _: object, outcome: Outcome) -> None:
        """The one point where a handled packet is reported, then its replies sent."""
        if outcome.event is not None:
            self.events.emit(outcome.event)
        for datagram in outcome.datagrams:
            if datagram.delay > 0:
                self.clock.callLater(datagram.delay, self._send, datagram)
            else:
                self._send(datagram)

    def _not_stored(
        self, failure: Failure, outcome: Outcome, exchange: Exchange | None = None
    ) -> None:
        if failure.check(AddressClaimed) and exchange is not None:
            # Another server's lease won the address in the shared database: NAK, and the
            # client starts again (issue 15; RFC 2131 §4.3.2).
            self._deliver(None, self.engine.claim_lost(exchange, self.clock.seconds()))
            return
        if failure.check(StoreUnavailable):
            # The store logs each change of its state once; nothing per packet here.
            self._deliver(None, self._withheld(outcome))
            return
        if self._may_log("store"):
            log.failure("lease not stored; replies withheld until the store works", failure)
        self._deliver(None, self._withheld(outcome))

    @staticmethod
    def _withheld(outcome: Outcome) -> Outcome:
        event = outcome.event
        if event is not None:
            event = attrs.evolve(
                event,
                outcome=EventOutcome.FAILED,
                details={**event.details, "reply": "none", "reason": "lease not stored"},
            )
        return Outcome(outcome.verdict, "lease not stored", event=event)

    def _may_log(self, kind: str) -> bool:
        now = self.clock.seconds()
        if now - self._failures_logged.get(kind, float("-inf")) < _FAILURE_LOG_INTERVAL:
            return False
        self._failures_logged[kind] = now
        return True

    def _send(self, datagram: Datagram) -> None:
        address = address_text(datagram.address)
        try:
            self.socket.sendto(datagram.data, (address, datagram.port))
        except OSError as error:
            self.send_failures += 1
            if self._may_log("send"):
                log.warn(
                    "sending to {address}:{port} on {interface} failed: {error} "
                    "({failures} send failures so far; logged every {every:g} s)",
                    address=address,
                    port=datagram.port,
                    interface=self.interface.name,
                    error=str(error),
                    failures=self.send_failures,
                    every=_FAILURE_LOG_INTERVAL,
                )
