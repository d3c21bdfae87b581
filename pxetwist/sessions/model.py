"""A boot session as values: the stages of a network boot, a session's events and its state.

A *session* is one attempt of one machine to boot: it starts at a PXE DISCOVER and ends when
the booted OS shows up, when the machine goes silent, or when it starts a new attempt.  Each
:class:`~pxetwist.events.BootEvent` a protocol reports becomes a :class:`SessionEvent` of the
machine's current session, named by the :class:`BootStage` it shows the machine at.

These values are what ``pxetwist sessions --json`` prints (:meth:`Session.as_json`) and what
the SQLite store keeps, so :func:`session_from_json` reads them back for the CLI.
"""

from __future__ import annotations

from collections.abc import Mapping
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
    # the JSON, built on first use: a session is written at every tick it changed in, and its
    # earlier events are the same each time (callers must not change the dict they get)
    _json: dict[str, object] | None = attrs.field(
        default=None, init=False, eq=False, repr=False, hash=False
    )

    def as_json(self) -> dict[str, object]:
        body = self._json
        if body is None:
            body = {
                "time": self.time,
                "protocol": self.protocol.value,
                "stage": self.stage.value,
                "event": self.event.value,
                "outcome": self.outcome.value,
                "details": self.details if type(self.details) is dict else dict(self.details),
            }
            object.__setattr__(self, "_json", body)  # a cache, not state: the event is frozen
        return body

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


def session_from_json(value: Mapping[str, Any]) -> Session:
    """A session as :meth:`Session.as_json` wrote it (the store and the CLI read these)."""
    session = Session(
        id=str(value["id"]),
        mac=MacAddress.parse(str(value["mac"])),
        started=float(value["started"]),
        updated=float(value["updated"]),
        state=SessionState(value["state"]),
        stage=BootStage(value["stage"]),
        events=[SessionEvent.from_json(item) for item in value.get("events") or ()],
        dropped_events=int(value.get("dropped_events") or 0),
        client=value.get("client"),
        firmware=value.get("firmware"),
        policy=value.get("policy"),
        hint=value.get("hint"),
        ended=value.get("ended"),
    )
    for item in value.get("stages") or ():
        session.reached[BootStage(item["stage"])] = float(item["time"])
    return session
