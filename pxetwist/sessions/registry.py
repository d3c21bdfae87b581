# -*- test-case-name: tests.sessions.test_registry -*-
"""The session registry: an observer of the boot-event bus that keeps each machine's boot story.

Every event is placed in its machine's current session (:mod:`pxetwist.sessions.classify`
names its stage) and moves the session on:

* A PXE DISCOVER starts a session, unless the machine's current one is still at the DHCP steps
  (a retransmitted DISCOVER) or, for iPXE's DISCOVER, has not yet got past its NBP (iPXE is the
  NBP asking for its script: the same attempt).  A new attempt ends the one in progress as
  ``failed`` ("started over").
* The booted OS's first plain DHCP (a DISCOVER or REQUEST without PXE markers) or its call-back
  ends a session as ``booted``.
* :meth:`SessionRegistry.sweep` (a timer) marks sessions silent for ``stuck_after`` seconds
  ``stuck`` at their stage, or ``failed`` if their last step failed, with a hint in words
  (:func:`pxetwist.sessions.diagnosis.diagnose`).  A stuck session that moves again is in
  progress again.

It does no I/O: the persistence timer collects changed sessions with :meth:`take_dirty`.  Memory
is bounded: at most ``max_machines`` machines (least recently heard of dropped), ``max_events``
events per session (the latest kept, and every stage's first time kept apart), a few finished
sessions per machine (the store keeps the rest).
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from collections.abc import Callable, Mapping
from typing import Final

from twisted.internet.interfaces import IReactorTime

from pxetwist.config.model import SessionsConfig
from pxetwist.events import BootEvent, EventProtocol, EventStage, LazyDetails, Outcome
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.values import Firmware, MacAddress
from pxetwist.sessions.classify import (
    BootFiles,
    decision_of,
    dhcp_stage,
    event_file_stage,
    firmware_of,
    is_dhcp,
    is_plain,
)
from pxetwist.sessions.diagnosis import diagnose, judge_silent
from pxetwist.sessions.model import (
    BootStage,
    Session,
    SessionEvent,
    SessionState,
    is_milestone,
)

RECENT_IN_MEMORY: Final = 4  # finished sessions kept in memory per machine
_HEAD_EVENTS: Final = 16  # the first events of a session are never dropped
_MAX_TEXT: Final = 256  # characters of a string detail kept
_PLAIN_TYPES: Final = (str, int, float, bool, type(None))

_DEFAULTS: Final = SessionsConfig()

FilesFor = Callable[[MacAddress], BootFiles | None]


class _Machine:
    __slots__ = ("boot_file", "current", "files", "recent")

    def __init__(self) -> None:
        self.current: Session | None = None
        self.recent: deque[Session] = deque(maxlen=RECENT_IN_MEMORY)
        self.files: BootFiles | None = None  # from a decision in the events, if any
        self.boot_file: str | None = None  # the boot file DHCP last sent

    def boot_files(self) -> BootFiles | None:
        if self.boot_file is None:
            return self.files
        return (self.files or BootFiles()).with_program(self.boot_file)


#: The details a session keeps, of any protocol (the rest: packet routing, user agents...).
_KEPT: Final = frozenset((
    "reply", "address", "file", "path", "method", "status", "range", "bytes", "size",
    "seconds", "blksize", "windowsize", "retransmits", "ended", "detail", "generated",
    "complete", "code", "verb", "policy", "action", "reason", "arch", "firmware", "kind",
    "via", "error", "paths", "protocols", "access", "pseudo",
))  # fmt: skip


def _facts(event: BootEvent, details: Mapping[str, object]) -> Mapping[str, object]:
    """The event's details as plain, bounded values (objects reduced to what matters).

    ``details`` is ``event.details`` as a plain mapping (a resolved
    :class:`~pxetwist.events.LazyDetails`): read at C speed, once, on the hot path.
    """
    facts = {key: value for key, value in details.items() if value is not None and key in _KEPT}
    odd: list[str] = []
    for key, value in facts.items():
        kind = type(value)
        if kind is str:
            if len(value) > _MAX_TEXT:  # type: ignore[arg-type]
                odd.append(key)
        elif kind is not int and kind is not float and kind is not bool:
            odd.append(key)
    for key in odd:
        value = _plain_value(key, facts[key])
        if value is None:
            del facts[key]
        else:
            facts[key] = value
    if event.client is not None:
        facts["client"] = str(event.client)
    decision = details.get("decision")
    if isinstance(decision, BootDecision):
        facts["action"] = decision.action.value
        if decision.policy is not None:
            facts["policy"] = decision.policy
        if decision.reason:
            facts["reason"] = decision.reason[:_MAX_TEXT]
    return facts  # a plain dict, never changed after this: JSON takes it as it is


def _plain_value(key: str, value: object) -> object:
    """A detail that is no plain ``str``/``int``/``float``/``bool`` (or too long) made one."""
    if isinstance(value, _PLAIN_TYPES):
        return value[:_MAX_TEXT] if isinstance(value, str) else value
    if hasattr(value, "value") and isinstance(value.value, str | int):
        return value.value  # an enum
    if isinstance(value, bytes):
        return value[:_MAX_TEXT].decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [str(item)[:_MAX_TEXT] for item in value[:16]]
    if key in ("reply", "arch", "firmware"):
        return str(value)[:_MAX_TEXT]
    return None


def _plain(details: Mapping[str, object]) -> Mapping[str, object]:
    """``details`` readable at C speed: a lazy event's details worked out (once, shared)."""
    return details.resolved() if isinstance(details, LazyDetails) else details


class SessionRegistry:
    """Every machine's current boot session, fed by the bus; see the module docstring."""

    def __init__(
        self,
        clock: IReactorTime,
        settings: SessionsConfig = _DEFAULTS,
        *,
        files_for: FilesFor | None = None,
    ) -> None:
        self._clock = clock
        self.settings = settings
        self._files_for = files_for
        self._machines: OrderedDict[MacAddress, _Machine] = OrderedDict()
        self._open: OrderedDict[str, Session] = OrderedDict()  # in progress, least recent first
        self._dirty: dict[str, Session] = {}
        self.unattributed = 0  # events with no MAC (the attribution could not place them)
        self.unsaved = 0  # session changes dropped because the store fell behind a storm

    def configure(self, settings: SessionsConfig) -> None:
        """Take new limits (a reload); sessions and machines are kept."""
        self.settings = settings
        self._evict()

    # -- the observer ---------------------------------------------------------------------

    def __call__(self, event: BootEvent) -> None:
        mac = event.mac
        if mac is None:
            self.unattributed += 1
            return
        if is_dhcp(event):
            self._dhcp(mac, event)
        elif event.protocol is EventProtocol.OS:
            self._os_up(mac, event)
        elif event.protocol is EventProtocol.NFS:
            self._nfs(mac, event)
        elif event.protocol in (EventProtocol.TFTP, EventProtocol.HTTP):
            self._file(mac, event)

    def _dhcp(self, mac: MacAddress, event: BootEvent) -> None:
        firmware = firmware_of(event.details)
        if is_plain(firmware) and event.stage is not EventStage.BOOT_SERVER:
            machine = self._machines.get(mac)
            session = machine.current if machine is not None else None
            if (
                session is not None
                and not session.state.finished
                and event.stage in (EventStage.DISCOVER, EventStage.REQUEST, EventStage.INFORM)
            ):
                self._append(session, event, BootStage.OS_UP, advances=True)
            return
        machine = self._machine(mac, create=event.outcome is not Outcome.DROPPED)
        if machine is None:
            return
        details = _plain(event.details)
        decision = decision_of(details)
        if decision is not None:
            machine.files = BootFiles.from_decision(decision)
        boot_file = details.get("file")
        if isinstance(boot_file, str) and event.outcome is Outcome.OK:
            machine.boot_file = boot_file  # normalized only if a file event needs it
        session = machine.current
        if event.stage is EventStage.DISCOVER:
            if self._new_attempt(session, firmware):
                if event.outcome is Outcome.DROPPED:
                    return
                session = self._start(machine, mac, event.time)
        elif session is None or session.state.finished:
            if event.outcome is Outcome.DROPPED or event.stage in (
                EventStage.RELEASE,
                EventStage.DECLINE,
            ):
                return
            session = self._start(machine, mac, event.time)
        assert session is not None
        if firmware is not None and session.firmware is None:
            session.firmware = firmware
        policy = details.get("policy")
        if isinstance(policy, str):
            session.policy = policy
        elif decision is not None and decision.policy is not None:
            session.policy = decision.policy
        stage = dhcp_stage(event, firmware)
        self._append(session, event, stage, advances=event.outcome is Outcome.OK, details=details)

    def _new_attempt(self, session: Session | None, firmware: str | None) -> bool:
        """Does a DISCOVER from this firmware start a new attempt, or go on with ``session``?"""
        if session is None or session.state is not SessionState.IN_PROGRESS:
            return True
        if firmware == Firmware.IPXE.value:
            return session.stage.rank >= BootStage.SCRIPT.rank
        return session.stage.rank >= BootStage.NBP.rank

    def _os_up(self, mac: MacAddress, event: BootEvent) -> None:
        machine = self._machine(mac, create=True)
        assert machine is not None
        session = machine.current
        if session is None or session.state is SessionState.FAILED:
            session = self._start(machine, mac, event.time)
        self._append(session, event, BootStage.OS_UP, advances=event.outcome is Outcome.OK)

    def _nfs(self, mac: MacAddress, event: BootEvent) -> None:
        # A diskless machine's initramfs does its plain DHCP (the OS is up) before it mounts
        # its root: the mount still belongs to the boot that just ended.
        machine = self._machines.get(mac)
        session = machine.current if machine is not None else None
        if session is None:
            return
        if event.stage is EventStage.NFS_MOUNT:
            self._append(session, event, BootStage.NFS_MOUNT, advances=event.outcome is Outcome.OK)
        else:
            self._append(session, event, BootStage.NFS_EXPORT, advances=False)

    def _file(self, mac: MacAddress, event: BootEvent) -> None:
        machine = self._machines.get(mac)
        files = self._files_for(mac) if self._files_for is not None else None
        if files is None and machine is not None:
            files = machine.boot_files()
        stage = event_file_stage(event, files)
        session = machine.current if machine is not None else None
        if session is None or session.state.finished:
            if stage not in (BootStage.NBP, BootStage.SCRIPT, BootStage.KERNEL):
                return
            if session is not None and session.state is SessionState.BOOTED:
                return  # the booted OS fetching files is not a new boot
            machine = self._machine(mac, create=True)
            assert machine is not None
            session = self._start(machine, mac, event.time)
        self._append(session, event, stage, advances=event.outcome is Outcome.OK)

    # -- sessions -------------------------------------------------------------------------

    def _machine(self, mac: MacAddress, *, create: bool) -> _Machine | None:
        machine = self._machines.get(mac)
        if machine is not None:
            self._machines.move_to_end(mac)
            return machine
        if not create:
            return None
        machine = self._machines[mac] = _Machine()
        self._evict()
        return machine

    def _evict(self) -> None:
        while len(self._machines) > self.settings.max_machines:
            _, machine = self._machines.popitem(last=False)
            if machine.current is not None:
                self._open.pop(machine.current.id, None)

    def _start(self, machine: _Machine, mac: MacAddress, now: float) -> Session:
        previous = machine.current
        if previous is not None:
            if previous.state is SessionState.IN_PROGRESS:
                previous.state = SessionState.FAILED
                previous.hint = "the machine started over; " + diagnose(previous)
                previous.ended = previous.updated
                self._open.pop(previous.id, None)
                self._dirty[previous.id] = previous
            machine.recent.append(previous)
        session = Session(id=Session.new_id(mac, now), mac=mac, started=now, updated=now)
        machine.current = session
        return session

    def _append(
        self,
        session: Session,
        event: BootEvent,
        stage: BootStage,
        advances: bool,
        details: Mapping[str, object] | None = None,
    ) -> None:
        record = SessionEvent(
            time=event.time,
            protocol=event.protocol,
            stage=stage,
            event=event.stage,
            outcome=event.outcome,
            details=_facts(event, _plain(event.details) if details is None else details),
        )
        events = session.events
        if events and record.time < events[-1].time:
            bisect.insort(events, record, key=lambda item: item.time)
        else:
            events.append(record)
        if len(events) > self.settings.max_events:
            del events[min(_HEAD_EVENTS, len(events) - 1)]
            session.dropped_events += 1
        if event.client is not None and session.client is None:
            session.client = str(event.client)
        if event.time > session.updated:
            session.updated = event.time
        if advances and is_milestone(stage):
            session.reached.setdefault(stage, event.time)
            if stage.rank > session.stage.rank:
                session.stage = stage
        if session.state is SessionState.BOOTED:
            pass
        elif advances and stage is BootStage.OS_UP:
            session.state = SessionState.BOOTED
            session.ended = event.time
            session.hint = None
            self._open.pop(session.id, None)
        elif session.state is SessionState.FAILED:
            pass
        else:
            session.state = SessionState.IN_PROGRESS
            session.hint = None
            self._open[session.id] = session
            self._open.move_to_end(session.id)
        dirty = self._dirty
        dirty[session.id] = session
        if len(dirty) > 2 * self.settings.max_machines:
            # the store has fallen far behind a storm: the oldest changes are not written
            del dirty[next(iter(dirty))]
            self.unsaved += 1

    # -- the timer's side -----------------------------------------------------------------

    def sweep(self, now: float | None = None) -> int:
        """Mark sessions silent for ``stuck_after`` seconds stuck (or failed); return how many."""
        now = self._clock.seconds() if now is None else now
        limit = now - self.settings.stuck_after
        judged = 0
        while self._open:
            session = next(iter(self._open.values()))
            if session.updated > limit:
                break
            self._open.popitem(last=False)
            judge_silent(session)
            self._dirty[session.id] = session
            judged += 1
        return judged

    def take_dirty(self) -> list[Session]:
        """The sessions changed since the last call (for the store), oldest change first."""
        dirty = list(self._dirty.values())
        self._dirty.clear()
        return dirty

    # -- queries --------------------------------------------------------------------------

    def current(self, mac: MacAddress) -> Session | None:
        machine = self._machines.get(mac)
        return machine.current if machine is not None else None

    def sessions(self, mac: MacAddress | None = None) -> list[Session]:
        """The sessions in memory, newest first (the store has older ones)."""
        machines = (
            ([self._machines[mac]] if mac is not None and mac in self._machines else [])
            if mac is not None
            else list(self._machines.values())
        )
        found = [
            session
            for machine in machines
            for session in (*machine.recent, machine.current)
            if session is not None
        ]
        return sorted(found, key=lambda session: session.started, reverse=True)

    @property
    def machines(self) -> int:
        return len(self._machines)
