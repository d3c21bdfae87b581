"""What a handled DHCP packet becomes as a :class:`~pxetwist.events.BootEvent`.

One event per datagram handled on port 67 or 4011, built where the engine answers it.  Its
``stage`` is the client's message type (``boot-server`` on 4011, ``invalid`` for what is no
request we serve), and its details use these stable keys:

``message_type``  the client's message (``DISCOVER``... or ``BOOTP``)
``reply``         what was sent: ``offer``, ``ack``, ``nak``, ``proxy`` (a proxyDHCP offer or
                  port-4011 ACK: boot information, no address) or ``none``
``address``       the address offered or acknowledged, else None
``file``          the boot file (option 67) sent, else None
``policy``, ``policy_reason``, ``action``   which policy decided, why, and what (None: none asked)
``reason``        the engine's own account of the outcome (as in the log line)
``arch``, ``firmware``   option 93 (first known value) and the client kind (``pxe``, ``ipxe``,
                  ``http-boot``, ``plain``), None when the message asks nothing
``pxe``           whether the client is network-booting firmware (PXE, iPXE, HTTP Boot) rather
                  than an installed system's plain DHCP client
``xid``, ``interface``, ``port``, ``relay``, ``reply_to``, ``boot_stage``  the packet's routing
``echo_dropped``  echoed options (61, 97) left out so that the reply fit (issue 18 defect 7)

The ``message`` is the line the log observer writes (``DISCOVER from <mac> on <interface>:
<reason> [<policy>: <action>]``).
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import partial
from ipaddress import IPv4Address
from types import MappingProxyType

from twisted.logger import LogLevel

from pxetwist.dhcp.exchange import Exchange, Outcome, Verdict, address_text, is_zero
from pxetwist.dhcp.options import MessageType, OptionCode
from pxetwist.events import BootEvent, EventProtocol, EventStage, LazyDetails
from pxetwist.events import Outcome as EventOutcome
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import Arch, BootAction, Firmware, Stage

_PXE_PORT = 4011
_STAGES = {
    MessageType.DISCOVER: EventStage.DISCOVER,
    MessageType.REQUEST: EventStage.REQUEST,
    MessageType.DECLINE: EventStage.DECLINE,
    MessageType.RELEASE: EventStage.RELEASE,
    MessageType.INFORM: EventStage.INFORM,
}
_OUTCOMES = {
    Verdict.ANSWERED: EventOutcome.OK,
    Verdict.IGNORED: EventOutcome.IGNORED,
    Verdict.DROPPED: EventOutcome.DROPPED,
    Verdict.REFUSED: EventOutcome.REFUSED,
}
_MESSAGE_TYPES = {int(kind): kind for kind in MessageType}
_MESSAGE_TYPE_CODE = int(OptionCode.MESSAGE_TYPE)
_BASE = "{message_type} from {mac} on {interface}: {reason}"
_MESSAGES = {
    (False, False): _BASE,
    (True, False): _BASE + " (relay {relay})",
    (False, True): _BASE + " [{policy}: {action}]",
    (True, True): _BASE + " (relay {relay}) [{policy}: {action}]",
}
_MALFORMED = "dropped a malformed DHCP packet from {peer} on {interface}: {reason}"


def packet_event(
    exchange: Exchange, outcome: Outcome, now: float, echo_dropped: tuple[int, ...]
) -> BootEvent:
    """The event for a decoded request and what the engine made of it.

    Only what every observer needs is worked out here; the details wait until one reads them.
    """
    incoming = exchange.incoming
    packet = incoming.packet
    request = exchange.request
    port = incoming.local_port
    options = packet.options
    if options and options[0][0] == _MESSAGE_TYPE_CODE:  # where clients put option 53
        kind: MessageType | None = _MESSAGE_TYPES[options[0][1][0]]
    else:
        kind = packet.message_type
    if port == _PXE_PORT:
        stage = EventStage.BOOT_SERVER
    else:
        stage = _STAGES.get(kind, EventStage.INVALID) if kind is not None else EventStage.INVALID
    result = _OUTCOMES[outcome.verdict]
    client = packet.ciaddr if not is_zero(packet.ciaddr) else None
    reply_kind = "none"
    if outcome.replies:
        sent = outcome.replies[0].packet
        sent_type = sent.options[0][1][0]  # make_reply puts option 53 first
        given = not is_zero(sent.yiaddr)
        reply_kind = _reply_kind(sent_type, given, port)
        if sent_type == MessageType.NAK:
            result = EventOutcome.REFUSED
        elif client is None:
            if given and sent_type == MessageType.ACK:
                client = sent.yiaddr  # the address the client has from now on
            elif port == _PXE_PORT and incoming.source[0] != "0.0.0.0":
                client = IPv4Address(incoming.source[0])
    known = _known(request, kind, reply_kind)
    return BootEvent(
        time=now,
        protocol=EventProtocol.DHCP,
        stage=stage,
        outcome=result,
        mac=request.mac if request is not None else packet.mac,
        client=client,
        details=LazyDetails(partial(_details, exchange, outcome, known, echo_dropped), known=known),
        message=_MESSAGES[not is_zero(packet.giaddr), exchange.decision is not None],
        level=LogLevel.warn if result is EventOutcome.DROPPED else LogLevel.info,
    )


_KNOWN: dict[tuple[object, ...], Mapping[str, object]] = {}


def _known(
    request: BootRequest | None, kind: MessageType | None, reply_kind: str
) -> Mapping[str, object]:
    """The details every packet's observers read (sessions: is it a PXE client? metrics: the
    message, the architecture, the reply), without working out the rest (:func:`_details`).

    There are few distinct answers, so each is built once and shared.
    """
    if request is None:
        firmware: Firmware | None = None
        arches: tuple[Arch, ...] = ()
    else:
        firmware = request.firmware
        arches = request.arches  # the key: ``arch`` is worked out only for a new entry
    key = (firmware, kind, arches, reply_kind)
    known = _KNOWN.get(key)
    if known is None:
        arch = request.arch if request is not None else None
        if len(_KNOWN) >= 4096:  # option 93 is the client's to choose: keep it bounded
            _KNOWN.clear()
        known = _KNOWN[key] = MappingProxyType(
            {
                "firmware": _VALUES[firmware] if firmware is not None else None,
                "pxe": firmware is not None and firmware is not Firmware.PLAIN,
                "message_type": _NAMES[kind] if kind is not None else "BOOTP",
                "arch": int(arch) if arch is not None else None,
                "reply": reply_kind,
            }
        )
    return known


def _reply_kind(sent_type: int, given: bool, port: int) -> str:
    """``reply``: ``offer``/``ack`` with an address, ``nak``, an INFORM's ``ack``, or
    ``proxy`` (boot information and no address: proxyDHCP, or the boot server on 4011)."""
    if given:
        return _GIVEN.get(sent_type, "none")
    if sent_type == MessageType.NAK:
        return "nak"
    if sent_type == MessageType.ACK and port != _PXE_PORT:
        return "ack"  # an INFORM's ACK
    return "proxy"


_GIVEN = {int(MessageType.OFFER): "offer", int(MessageType.ACK): "ack"}


def _details(
    exchange: Exchange,
    outcome: Outcome,
    known: Mapping[str, object],
    echo_dropped: tuple[int, ...],
) -> dict[str, object]:
    """All the details, from the ``known`` ones (:func:`_known`) and the packets."""
    incoming = exchange.incoming
    packet = incoming.packet
    request = exchange.request
    decision = exchange.decision
    address: str | None = None
    boot_file: str | None = None
    reply_to: str | None = None
    if outcome.replies:
        reply = outcome.replies[0]
        sent = reply.packet
        reply_to = f"{address_text(reply.address)}:{reply.port}"
        if not is_zero(sent.yiaddr):
            address = address_text(sent.yiaddr)
        for code, value in reversed(sent.options):  # the boot file is among the last
            if code == _BOOTFILE_CODE:
                boot_file = value.rstrip(b"\0").decode("utf-8", "replace")
                break
        else:
            if sent.file:
                boot_file = sent.file.decode("utf-8", "replace")
    details = dict(known)  # message_type, reply, arch, firmware, pxe
    details["address"] = address
    details["file"] = boot_file
    details["reason"] = outcome.reason
    details["xid"] = f"{packet.xid:08x}"
    details["interface"] = incoming.interface.name
    details["port"] = incoming.local_port
    details["relay"] = address_text(packet.giaddr) if not is_zero(packet.giaddr) else None
    details["reply_to"] = reply_to
    details["boot_stage"] = _VALUES[request.stage] if request is not None else None
    if decision is not None:
        details["policy"] = decision.policy
        details["policy_reason"] = decision.reason
        details["action"] = _VALUES[decision.action]
    else:
        details["policy"] = details["policy_reason"] = details["action"] = None
    if echo_dropped:
        details["echo_dropped"] = list(echo_dropped)
    return details


_BOOTFILE_CODE = int(OptionCode.BOOTFILE)  # an int: an enum member read per option is slow


_NAMES = {kind: kind.name for kind in MessageType}
_VALUES: dict[object, str] = {
    **{firmware: firmware.value for firmware in Firmware},
    **{stage: stage.value for stage in Stage},
    **{action: action.value for action in BootAction},
}


def invalid_event(
    now: float, interface: str, port: int, source: tuple[str, int], reason: str
) -> BootEvent:
    """The event for a datagram that is not a DHCP message at all."""
    host = source[0]
    return BootEvent(
        time=now,
        protocol=EventProtocol.DHCP,
        stage=EventStage.INVALID,
        outcome=EventOutcome.DROPPED,
        client=IPv4Address(host) if host != "0.0.0.0" else None,
        details=_frozen(
            {"reason": reason, "interface": interface, "port": port, "peer": f"{host}:{source[1]}"}
        ),
        message=_MALFORMED,
        level=LogLevel.warn,
    )


def _frozen(details: dict[str, object]) -> Mapping[str, object]:
    return MappingProxyType(details)
