"""The values one DHCP exchange is made of: what arrived, what was decided, what goes out.

:class:`Exchange` is the single value :meth:`pxetwist.dhcp.engine.DhcpEngine.answer` takes (the
packet as it arrived, the question put to the policy chain and the chain's answer), and
:class:`Outcome` the single value it returns (the datagrams to send, the leases to store first,
the sightings to record and the :class:`~pxetwist.events.BootEvent` that reports it).
"""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import attrs

from pxetwist.dhcp.leases import Lease
from pxetwist.dhcp.options import OptionCode
from pxetwist.dhcp.packet import (
    ESSENTIAL_OPTIONS,
    ZERO_ADDRESS,
    DhcpPacket,
    PacketTooLarge,
    encode,
)
from pxetwist.events import BootEvent
from pxetwist.identityenum import IdentityEnum
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.request import BootRequest

BROADCAST = IPv4Address("255.255.255.255")
ZERO = ZERO_ADDRESS
CLIENT_PORT = 68
SERVER_PORT = 67
PXE_PORT = 4011

#: Options a reply only echoes from the request (RFC 6842 client identifier, PXE client UUID):
#: when a client sends them so long that the reply cannot fit its budget with them, the reply
#: goes out without them rather than not at all (issue 18 defect 7).  97 goes first.
_ECHOED = (OptionCode.CLIENT_UUID, OptionCode.CLIENT_ID)


def is_zero(address: IPv4Address) -> bool:
    """``address == 0.0.0.0``, asked of three header fields per packet.

    Reads the integer ``IPv4Address`` keeps (``_ip``, there since Python 3.3) rather than
    calling its Python-level ``__eq__``: a relayed request's ``giaddr`` is never zero, and the
    comparison cost more than the rest of the test.
    """
    return address is ZERO or not address._ip  # type: ignore[attr-defined]


_ADDRESS_TEXT: dict[int, str] = {}


def address_text(address: IPv4Address) -> str:
    """``str(address)``, remembered by its integer: ``str`` costs about a microsecond in
    Python, and a server writes the same few addresses (its own, relays, broadcast, a pool's
    reused ones) into every reply and log line."""
    key = address._ip  # type: ignore[attr-defined]  # see is_zero; hashing it is C, not Python
    text = _ADDRESS_TEXT.get(key)
    if text is None:
        if len(_ADDRESS_TEXT) >= 65536:
            _ADDRESS_TEXT.clear()
        text = _ADDRESS_TEXT[key] = str(address)
    return text


@attrs.frozen
class Interface:
    """Where a request arrived: the served interface and our address on it."""

    name: str
    address: IPv4Address
    network: IPv4Network
    mtu: int = 1500


@attrs.frozen
class Incoming:
    """A decoded request and how it reached us."""

    packet: DhcpPacket
    interface: Interface
    source: tuple[str, int]
    local_port: int = SERVER_PORT
    to_broadcast: bool = True  # sent to a broadcast address (False: unicast to us)


@attrs.frozen
class Exchange:
    """A request on its way through the server, as one value.

    ``request`` is what the engine asks the policy chain (``None`` when no decision is needed:
    RELEASE, DECLINE, a packet without a MAC); ``decision`` is the chain's answer, filled in by
    :meth:`decided` once the chain has spoken.
    """

    incoming: Incoming
    request: BootRequest | None = None
    decision: BootDecision | None = None

    def decided(self, decision: BootDecision | None) -> Exchange:
        return Exchange(self.incoming, self.request, decision)


@attrs.frozen
class Reply:
    """A reply packet, where it goes, and the budget it must fit (reference §1.6, §1.10)."""

    packet: DhcpPacket
    address: IPv4Address
    port: int
    max_size: int
    delay: float = 0.0
    keep: frozenset[int] = frozenset()  # options that must not be dropped to fit

    @property
    def broadcast(self) -> bool:
        return self.address == BROADCAST

    def encoded(self) -> tuple[bytes, tuple[int, ...]]:
        """The datagram to send, and which echoed options had to be left out to fit it.

        Within the client's budget, boot options never trimmed.  A client identifier (61) or
        UUID (97) so long that the reply cannot fit with it is left out, 97 first, instead of
        the client getting no reply at all.  Raises ``PacketTooLarge`` or ``ValueError`` like
        :func:`encode` when even that does not help (a huge relay-agent option).
        """
        keep = ESSENTIAL_OPTIONS | self.keep
        try:
            return encode(self.packet, max_size=self.max_size, keep=keep), ()
        except PacketTooLarge:
            echoed = [code for code in _ECHOED if code in self.packet]
            if not echoed:
                raise
        dropped: list[int] = []
        packet = self.packet
        for code in echoed:
            packet = packet.without_option(code)
            dropped.append(code)
            try:
                return encode(packet, max_size=self.max_size, keep=keep), tuple(dropped)
            except PacketTooLarge:
                if code == echoed[-1]:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    def wire(self) -> bytes:
        """The datagram to send (see :meth:`encoded`)."""
        return self.encoded()[0]


@attrs.frozen
class Datagram:
    """Bytes to send, to whom, and after how long (a per-machine reply-delay quirk)."""

    data: bytes
    address: IPv4Address
    port: int
    delay: float = 0.0


class Verdict(IdentityEnum):
    ANSWERED = "answered"
    IGNORED = "ignored"  # deliberately silent (RFC or policy)
    DROPPED = "dropped"  # could not be served (malformed, over a limit, unknown subnet, ...)
    REFUSED = "refused"  # no address to give (RFC 2131 §4.3.1: no OFFER)


@attrs.frozen
class Outcome:
    """What to do about one request, and why.

    ``replies`` are the packets as the rules built them (what ``pxetwist explain`` shows);
    ``datagrams`` the bytes to send once the ``durable`` leases are stored; ``seen`` the
    sightings to record; ``event`` the report of it for the event bus (``None`` for datagrams
    that are no request at all, such as another server's replies).
    """

    verdict: Verdict
    reason: str
    replies: tuple[Reply, ...] = ()
    durable: tuple[Lease, ...] = ()
    seen: tuple[tuple[BootRequest, IPv4Address | None], ...] = ()
    datagrams: tuple[Datagram, ...] = ()
    event: BootEvent | None = None
