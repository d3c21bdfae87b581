"""A boot session as values: the stages of a network boot, a session's events and its state.

A *session* is one attempt of one machine to boot: it starts at a PXE DISCOVER and ends when
the booted OS shows up, when the machine goes silent, or when it starts a new attempt.  Each
:class:`~pxetwist.events.BootEvent` a protocol reports becomes a :class:`SessionEvent` of the
machine's current session, named by the :class:`BootStage` it shows the machine at.

These values are what ``pxetwist sessions --json`` prints (:meth:`Session.as_json`) and what
the SQLite store keeps, so :func:`session_from_json` reads them back for the CLI.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from json.encoder import c_make_encoder, encode_basestring_ascii  # type: ignore[attr-defined]
from types import MappingProxyType
from typing import Any, Final

import attrs

from pxetwist.events import EventProtocol, EventStage, Outcome
from pxetwist.identityenum import IdentityEnum
from pxetwist.policy.values import MacAddress


class BootStage(IdentityEnum):
    """Where a boot has got to, in boot order (``rank``); the JSON ``stage`` of sessions.

    Stages come in pairs where the server's answer matters: ``dhcp-discover`` is a DISCOVER
    seen and not answered, ``dhcp-offer`` one answered with an offer.  A session's stage is the
    furthest stage one of its events reached with outcome ``ok``; ``file`` and ``other`` are
    activity that places the machine nowhere in particular (a GRUB module, a DHCP RELEASE).
    """

    OTHER = "other"
    FILE = "file"  # a file that is none of the machine's NBP, scripts, kernel or initrds
    NFS_EXPORT = "nfs-export"  # the server granted or withdrew an export: not client progress
    DHCP_DISCOVER = "dhcp-discover"
    DHCP_OFFER = "dhcp-offer"
    DHCP_REQUEST = "dhcp-request"
    DHCP_ACK = "dhcp-ack"
    BOOT_SERVER = "boot-server"  # the PXE boot server on UDP 4011 (protocol-reference §2.3)
    NBP = "nbp"  # the network boot program, over TFTP (or HTTP for UEFI HTTP Boot)
    IPXE_DHCP = "ipxe-dhcp"  # the loaded iPXE's own DHCP (protocol-reference §4.2)
    SCRIPT = "script"  # the boot loader's config: iPXE script, GRUB or PXELINUX config
    KERNEL = "kernel"
    INITRD = "initrd"
    NFS_MOUNT = "nfs-mount"
    OS_UP = "os-up"  # the booted OS: its first plain DHCP, or its call-back URL

    @property
    def rank(self) -> int:
        return _RANKS[self]


_RANKS: Final[Mapping[BootStage, int]] = MappingProxyType(
    {stage: index for index, stage in enumerate(BootStage)}
)
_NOWHERE: Final = frozenset({BootStage.OTHER, BootStage.FILE, BootStage.NFS_EXPORT})


def is_milestone(stage: BootStage) -> bool:
    """Does reaching this stage say where the boot is (unlike a stray file or a RELEASE)?"""
    return stage not in _NOWHERE


class SessionState(IdentityEnum):
    """The JSON ``state`` of a session (the ``pxetwist sessions`` contract)."""

    IN_PROGRESS = "in-progress"
    BOOTED = "booted"  # the booted OS showed up
    STUCK = "stuck"  # no event for ``sessions.stuck_after`` seconds, last step went through
    FAILED = "failed"  # it stopped after a failure, or the machine started over

    @property
    def finished(self) -> bool:
        return self in (SessionState.BOOTED, SessionState.FAILED)


@attrs.frozen
class SessionEvent:
    """One event of a session: a :class:`~pxetwist.events.BootEvent` reduced to its facts.

    ``details`` holds only plain values (strings cut to a bounded length), so a session's
    memory does not grow with what a protocol chose to attach to its event.
    """

    time: float
    protocol: EventProtocol
    stage: BootStage
    event: EventStage
    outcome: Outcome
    details: Mapping[str, object] = MappingProxyType({})
    # Its stored form, encoded on first use: a session is written at every tick it changed
    # in, and its earlier events are the same each time (text: nothing for the GC to walk).
    _stored: str | None = attrs.field(default=None, init=False, eq=False, repr=False, hash=False)

    def as_json(self) -> dict[str, object]:
        return {
            "time": self.time,
            "protocol": self.protocol.value,
            "stage": self.stage.value,
            "event": self.event.value,
            "outcome": self.outcome.value,
            "details": dict(self.details),
        }

    def stored(self) -> str:
        """The event as ``sessions.sqlite`` keeps it: ``[time, protocol, stage, event, outcome,
        details]`` in compact JSON (:func:`session_from_stored` reads it back)."""
        text = self._stored
        if text is None:
            details = self.details
            text = compact_json(
                [
                    self.time,
                    self.protocol.value,
                    self.stage.value,
                    self.event.value,
                    self.outcome.value,
                    details if type(details) is dict else dict(details),
                ]
            )
            object.__setattr__(self, "_stored", text)  # a cache, not state: the event is frozen
        return text

    @classmethod
    def from_json(cls, value: Mapping[str, Any]) -> SessionEvent:
        return cls(
            time=float(value["time"]),
            protocol=EventProtocol(value["protocol"]),
            stage=BootStage(value["stage"]),
            event=EventStage(value["event"]),
            outcome=Outcome(value["outcome"]),
            details=MappingProxyType(dict(value.get("details") or {})),
        )

    @classmethod
    def from_stored(cls, value: Sequence[Any]) -> SessionEvent:
        time, protocol, stage, event, outcome, details = value
        return cls(
            time=float(time),
            protocol=EventProtocol(protocol),
            stage=BootStage(stage),
            event=EventStage(event),
            outcome=Outcome(outcome),
            details=MappingProxyType(dict(details or {})),
        )


def _not_plain(value: object) -> object:
    raise TypeError(f"{type(value).__name__} is not stored in a session")


_COMPACT: Final = json.JSONEncoder(separators=(",", ":"), check_circular=False, default=_not_plain)
# ``JSONEncoder.encode`` builds its C encoder anew at every call (a quarter of the time of a
# session's small values); this one is built once, with the same settings as ``_COMPACT``.
_C_ENCODER: Final = (
    c_make_encoder(None, _not_plain, encode_basestring_ascii, None, ":", ",", False, False, True)
    if c_make_encoder is not None
    else None
)


def compact_json(value: object) -> str:
    """``value`` (plain values only) as compact JSON, as ``json.dumps`` would write it."""
    if _C_ENCODER is None:
        return _COMPACT.encode(value)
    return "".join(_C_ENCODER(value, 0))


#: The version of the stored body (``v``); a body without one is a whole ``as_json`` value.
STORED_VERSION: Final = 2


@attrs.define(eq=False)
class Session:
    """One boot attempt of one machine; owned and changed only by the session registry."""

    id: str
    mac: MacAddress
    started: float
    updated: float  # the time of its last event
    state: SessionState = SessionState.IN_PROGRESS
    stage: BootStage = BootStage.DHCP_DISCOVER
    reached: dict[BootStage, float] = attrs.field(factory=dict)  # milestone -> first time
    events: list[SessionEvent] = attrs.field(factory=list)
    dropped_events: int = 0
    client: str | None = None  # the client's address, once known
    firmware: str | None = None  # what the machine's DHCP said it is (pxe, ipxe, http-boot)
    policy: str | None = None  # the policy that decided, as the DHCP event said
    hint: str | None = None  # why it is stuck or failed, in words
    ended: float | None = None

    @staticmethod
    def new_id(mac: MacAddress, started: float) -> str:
        """Unique per machine and start time, stable across restarts (the store's key)."""
        return f"{mac.octets.hex()}-{round(started * 1_000_000)}"

    @property
    def last_event(self) -> SessionEvent | None:
        return self.events[-1] if self.events else None

    def stage_timeline(self) -> list[dict[str, object]]:
        """Each milestone reached, in boot order, with how long until the next one.

        The last milestone's ``seconds`` runs to the session's end (or its latest event).
        """
        order = sorted((time, _RANKS[stage], stage.value) for stage, time in self.reached.items())
        end = self.ended if self.ended is not None else self.updated
        timeline: list[dict[str, object]] = []
        for index, (time, _, stage) in enumerate(order):
            until = order[index + 1][0] if index + 1 < len(order) else end
            timeline.append(
                {"stage": stage, "time": time, "seconds": round(max(until - time, 0.0), 6)}
            )
        return timeline

    def as_json(self) -> dict[str, object]:
        end = self.ended if self.ended is not None else self.updated
        return {
            "id": self.id,
            "mac": str(self.mac),
            "state": self.state.value,
            "stage": self.stage.value,
            "started": self.started,
            "updated": self.updated,
            "ended": self.ended,
            "seconds": round(end - self.started, 6),
            "client": self.client,
            "firmware": self.firmware,
            "policy": self.policy,
            "hint": self.hint,
            "stages": self.stage_timeline(),
            "events": [event.as_json() for event in self.events],
            "dropped_events": self.dropped_events,
        }

    def stored_body(self) -> str:
        """The body ``sessions.sqlite`` keeps beside the session's columns (id, mac, started,
        updated, state, stage): what they do not say, and each event's stored text as it was
        first encoded (:meth:`SessionEvent.stored`), so a write re-encodes no earlier event.
        """
        head: dict[str, object] = {"v": STORED_VERSION}
        for key, value in (
            ("client", self.client),
            ("firmware", self.firmware),
            ("policy", self.policy),
            ("hint", self.hint),
            ("ended", self.ended),
            ("dropped_events", self.dropped_events or None),
        ):
            if value is not None:  # what is left out reads back as None (or 0)
                head[key] = value
        head["reached"] = {stage.value: time for stage, time in self.reached.items()}
        text = compact_json(head)
        events = ",".join([event.stored() for event in self.events])
        return f'{text[:-1]},"events":[{events}]}}'


def session_from_stored(
    id: str, mac: str, started: float, updated: float, state: str, stage: str, body: str
) -> Session:
    """A session as ``sessions.sqlite`` keeps it: its columns and :meth:`Session.stored_body`.

    A body written before the compact form (no ``v``) is a whole :meth:`Session.as_json`.
    """
    value = json.loads(body)
    if value.get("v") != STORED_VERSION:
        return session_from_json(value)
    session = _with_optional_fields(
        value,
        id=id,
        mac=MacAddress.parse(mac),
        started=started,
        updated=updated,
        state=SessionState(state),
        stage=BootStage(stage),
        events=[SessionEvent.from_stored(item) for item in value["events"]],
    )
    for name, time in (value.get("reached") or {}).items():
        session.reached[BootStage(name)] = float(time)
    return session


def session_from_json(value: Mapping[str, Any]) -> Session:
    """A session as :meth:`Session.as_json` wrote it (the store and the CLI read these)."""
    session = _with_optional_fields(
        value,
        id=str(value["id"]),
        mac=MacAddress.parse(str(value["mac"])),
        started=float(value["started"]),
        updated=float(value["updated"]),
        state=SessionState(value["state"]),
        stage=BootStage(value["stage"]),
        events=[SessionEvent.from_json(item) for item in value.get("events") or ()],
    )
    for item in value.get("stages") or ():
        session.reached[BootStage(item["stage"])] = float(item["time"])
    return session


def _with_optional_fields(value: Mapping[str, Any], **required: Any) -> Session:
    """A session from its required fields and the optional ones ``value`` has (the stored
    body and the ``as_json`` form name them alike; one left out reads as None, or 0)."""
    return Session(
        **required,
        dropped_events=int(value.get("dropped_events") or 0),
        client=value.get("client"),
        firmware=value.get("firmware"),
        policy=value.get("policy"),
        hint=value.get("hint"),
        ended=value.get("ended"),
    )
