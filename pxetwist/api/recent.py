"""A small in-memory session view built from the event bus, for servers without the registry.

The boot session registry (``pxetwist.sessions``) is the real source of sessions, with stuck
diagnosis and persistence; this is what the API falls back on when it is not running (and what
API tests drive): the same JSON shape, from the same events, with a simple rule for where a
session starts (a DISCOVER after anything but DHCP) and a fixed idle time for "stuck".
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from zope.interface import implementer

from pxetwist.api.sources import ISessionView
from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.policy.values import MacAddress

_STARTS = frozenset((EventStage.DISCOVER,))


class _Session:
    __slots__ = ("events", "mac", "saw_more_than_dhcp", "started")

    def __init__(self, mac: MacAddress, started: float) -> None:
        self.mac = mac
        self.started = started
        self.events: deque[BootEvent] = deque(maxlen=RecentSessions.EVENTS_PER_SESSION)
        self.saw_more_than_dhcp = False

    def as_json(self, now: float, stuck_after: float, latest: bool) -> dict[str, Any]:
        last = self.events[-1]
        if any(e.stage is EventStage.OS_UP for e in self.events):
            state = "booted"
        elif not latest or last.outcome in (Outcome.FAILED, Outcome.REFUSED):
            # a newer attempt replaced it before it booted
            state = "failed"
        elif now - last.time > stuck_after:
            state = "stuck"
        else:
            state = "in-progress"
        return {
            "mac": str(self.mac),
            "state": state,
            "stage": last.stage.value,
            "started": self.started,
            "updated": last.time,
            "events": [event.as_json() for event in self.events],
        }


@implementer(ISessionView)
class RecentSessions:
    """Keeps the last few sessions of recently seen machines; bounded in every dimension."""

    EVENTS_PER_SESSION = 200
    SESSIONS_PER_MACHINE = 5
    MACHINES = 4096

    def __init__(self, clock: Callable[[], float], stuck_after: float = 120.0) -> None:
        self._clock = clock
        self.stuck_after = stuck_after
        self._by_mac: OrderedDict[MacAddress, deque[_Session]] = OrderedDict()

    def __call__(self, event: BootEvent) -> None:
        mac = event.mac
        if mac is None:
            return
        history = self._by_mac.get(mac)
        if history is None:
            history = self._by_mac[mac] = deque(maxlen=self.SESSIONS_PER_MACHINE)
            if len(self._by_mac) > self.MACHINES:
                self._by_mac.popitem(last=False)
        else:
            self._by_mac.move_to_end(mac)
        current = history[-1] if history else None
        if current is None or (event.stage in _STARTS and current.saw_more_than_dhcp):
            current = _Session(mac, event.time)
            history.append(current)
        current.events.append(event)
        if event.protocol is not EventProtocol.DHCP:
            current.saw_more_than_dhcp = True

    def sessions(self, mac: MacAddress | None, limit: int) -> Sequence[dict[str, Any]]:
        now = self._clock()
        histories: Iterable[deque[_Session]]
        if mac is None:
            histories = self._by_mac.values()
        else:
            histories = [self._by_mac[mac]] if mac in self._by_mac else []
        found = [(s, s is history[-1]) for history in histories for s in history]
        found.sort(key=lambda pair: pair[0].events[-1].time, reverse=True)
        return [s.as_json(now, self.stuck_after, latest) for s, latest in found[:limit]]

    def stuck(self) -> Sequence[dict[str, Any]]:
        now = self._clock()
        latest = [
            history[-1].as_json(now, self.stuck_after, True) for history in self._by_mac.values()
        ]
        stuck = [s for s in latest if s["state"] == "stuck"]
        stuck.sort(key=lambda s: s["updated"])
        return stuck
