"""What happened to a machine, as values: the one vocabulary every protocol reports in.

Each protocol emits a :class:`BootEvent` at one point (a DHCP packet handled, a TFTP transfer
ended, an HTTP response finished, an NFS export granted) into a :class:`BootEventBus`; logs,
boot sessions, metrics and the operator API are observers of that bus.  Protocols therefore
never format log text or count things themselves, and a new observer needs no protocol change.

Events are built on the hot path, so they are small frozen values with no I/O behind them;
observers must be cheap and must not block (anything slow belongs behind a queue of their own).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, ItemsView, Iterator, Mapping
from ipaddress import IPv4Address
from types import MappingProxyType
from typing import Final

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from zope.interface import Interface, implementer

from pxetwist.identityenum import IdentityEnum
from pxetwist.logbudget import LogBudget
from pxetwist.policy.values import MacAddress

log = Logger()


class EventProtocol(IdentityEnum):
    """Who saw it: the JSON ``protocol`` field of a session's events."""

    DHCP = "dhcp"  # ports 67 and 4011
    TFTP = "tftp"
    HTTP = "http"
    NFS = "nfs"
    OS = "os"  # the booted operating system calling home


class Outcome(IdentityEnum):
    """How it ended, from the server's side."""

    OK = "ok"  # answered, served, granted
    REFUSED = "refused"  # answered with a refusal: NAK, TFTP ERROR, HTTP 4xx, no free address
    FAILED = "failed"  # started but did not finish: a transfer timed out or was aborted
    IGNORED = "ignored"  # deliberately unanswered: not a PXE client, policy said ignore
    DROPPED = "dropped"  # malformed, over a limit, or shed under overload


class EventStage(IdentityEnum):
    """What step of a boot an event is: the JSON ``stage`` field of a session's events.

    DHCP events are named after the client's message (the reply, if any, is in the details),
    so that a DISCOVER left unanswered and one answered are the same stage with another outcome.
    """

    # DHCP, RFC 2131 message types as the client sent them (port 67)
    DISCOVER = "discover"
    REQUEST = "request"
    DECLINE = "decline"
    RELEASE = "release"
    INFORM = "inform"
    # the PXE boot server on port 4011 (protocol-reference §3)
    BOOT_SERVER = "boot-server"
    # a datagram that is no request this protocol serves: malformed, a BOOTP request, another
    # message type; dropped or ignored, ``details["reason"]`` says why (mac is usually None)
    INVALID = "invalid"
    # TFTP: a read request refused before a transfer started, or a transfer's end
    TFTP_REQUEST = "tftp-request"
    TFTP_TRANSFER = "tftp-transfer"
    # HTTP: one response, static or generated
    HTTP_REQUEST = "http-request"
    # NFS export wrapper
    NFS_GRANT = "nfs-grant"
    NFS_WITHDRAW = "nfs-withdraw"
    NFS_MOUNT = "nfs-mount"
    # the booted OS: its first plain DHCP request, or a call-back URL
    OS_UP = "os-up"


class LazyDetails(Mapping[str, object]):
    """Event details worked out only when an observer first reads them, then kept.

    A busy DHCP server emits an event per packet, and most of them are only counted (the log
    budget is spent, nobody else looks at the details): formatting addresses and names for
    each would cost more than answering the packet.  ``make`` must return the same facts
    whenever it is called; the result is frozen like any other event's details.
    """

    __slots__ = ("_known", "_make", "_value")

    def __init__(
        self,
        make: Callable[[], Mapping[str, object]],
        known: Mapping[str, object] | None = None,
    ) -> None:
        self._make: Callable[[], Mapping[str, object]] | None = make
        self._value: Mapping[str, object] | None = None
        # Facts the emitter had at hand anyway (``make`` returns them too): an observer that
        # reads only these, such as sessions asking "is this a PXE client?", costs nothing.
        self._known = known

    def resolved(self) -> Mapping[str, object]:
        """The details as a plain frozen mapping (for ``**`` at C speed)."""
        return self._details()

    def _details(self) -> Mapping[str, object]:
        value = self._value
        if value is None:
            assert self._make is not None
            made = self._make()
            # ``make`` hands over a new dict as a rule: frozen as it is, not copied again.
            value = self._value = MappingProxyType(made if type(made) is dict else dict(made))
            self._make = None
        return value

    def __getitem__(self, key: str) -> object:
        known = self._known
        if known is not None and self._value is None and key in known:
            return known[key]
        return self._details()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._details())

    def __len__(self) -> int:
        return len(self._details())

    def items(self) -> ItemsView[str, object]:
        return self._details().items()

    def get(self, key: str, default: object = None) -> object:
        known = self._known
        if known is not None and self._value is None and key in known:
            return known[key]
        return self._details().get(key, default)


def _frozen_details(value: Mapping[str, object]) -> Mapping[str, object]:
    kind = type(value)
    if kind is MappingProxyType or kind is LazyDetails:
        return value
    return MappingProxyType(dict(value))


_NO_DETAILS: Final[Mapping[str, object]] = MappingProxyType({})


@attrs.frozen
class BootEvent:
    """One thing that happened to one machine (or to a client not yet tied to a machine).

    ``details`` holds the protocol's facts with stable keys (``file``, ``bytes``, ``seconds``,
    ``status``, ``reply``, ``policy``...); ``message`` is a :mod:`twisted.logger` format string
    over those details plus ``mac`` and ``client``, so the log observer writes the same readable
    line the protocol used to log, formatted only if a log observer actually wants it.
    """

    time: float
    protocol: EventProtocol
    stage: EventStage
    outcome: Outcome
    mac: MacAddress | None = None
    client: IPv4Address | None = None
    details: Mapping[str, object] = attrs.field(default=_NO_DETAILS, converter=_frozen_details)
    message: str = ""
    level: LogLevel = LogLevel.info

    def as_json(self) -> dict[str, object]:
        """The event as the sessions CLI and the API print it (``time`` in Unix seconds)."""
        return {
            "time": self.time,
            "protocol": self.protocol.value,
            "stage": self.stage.value,
            "outcome": self.outcome.value,
            "mac": None if self.mac is None else str(self.mac),
            "client": None if self.client is None else str(self.client),
            "details": {key: _jsonable(value) for key, value in self.details.items()},
        }


def _jsonable(value: object) -> object:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, list | tuple):
        return [_jsonable(item) for item in value]
    return str(value)


class IBootEventObserver(Interface):
    """Something that wants to know what happened: logs, sessions, metrics, the API."""

    def __call__(event: BootEvent) -> None:
        """Take one event.  Must not block and should not raise (the bus logs and goes on)."""


BootEventObserver = Callable[[BootEvent], None]


class BootEventBus:
    """Fans each event out to every observer, in the order they subscribed.

    An observer that raises is logged (once per observer until it succeeds again) and the
    others still get the event: one broken observer must not stop a boot or flood the log.
    """

    def __init__(self) -> None:
        self._observers: tuple[BootEventObserver, ...] = ()
        self._failing: set[BootEventObserver] = set()

    def subscribe(self, observer: BootEventObserver) -> None:
        self._observers = (*self._observers, observer)

    def unsubscribe(self, observer: BootEventObserver) -> None:
        self._observers = tuple(o for o in self._observers if o != observer)
        self._failing.discard(observer)

    @property
    def observers(self) -> tuple[BootEventObserver, ...]:
        return self._observers

    def emit(self, event: BootEvent) -> None:
        for observer in self._observers:
            try:
                observer(event)
            except Exception:
                if observer not in self._failing:
                    self._failing.add(observer)
                    log.failure(
                        "boot-event observer {observer!r} failed on {stage} event; "
                        "further failures of it are not logged until it recovers",
                        observer=observer,
                        stage=event.stage.value,
                    )
            else:
                if self._failing:
                    self._failing.discard(observer)


_WARNINGS = frozenset({LogLevel.warn, LogLevel.error, LogLevel.critical})
#: The kind a line left out of the log budget is summed up under (spelt once, not per event).
_KINDS: Final[Mapping[tuple[EventStage, Outcome], str]] = MappingProxyType(
    {
        (stage, outcome): f"{stage.value} {outcome.value}"
        for stage in EventStage
        for outcome in Outcome
    }
)


def rendered(message: str, fields: Mapping[str, object]) -> str:
    """``message`` with ``fields`` filled in, as a format string that renders to just that text.

    Twisted renders a log event's format string when an observer writes it, with a formatter
    written in Python: about 20 us for a DHCP line of ten fields, more than the rest of the line
    costs, and a DHCP exchange writes two (bench/README, "Toward Kea").  ``str.format_map`` fills
    in the same fields in C; the braces of the result are doubled, so every observer still
    renders the same text, and the fields stay in the event for structured ones.  A message
    ``str.format`` cannot render (Twisted's ``{name()}`` calls, a missing field, a value whose
    formatting fails) is returned as it was, for Twisted to render or to report as unformattable,
    as it did before: the line is never lost.
    """
    try:
        text = message.format_map(fields)
    except Exception:
        return message
    if "{" in text or "}" in text:
        return text.replace("{", "{{").replace("}", "}}")
    return text


@implementer(IBootEventObserver)
class LogObserver:
    """Writes each event as the readable log line its protocol used to write itself.

    Lines go to ``pxetwist.<protocol>`` namespaces so that log filters keep working.  Events with
    no message (pure bookkeeping) are not logged.  Given a ``clock``, each protocol's lines are
    held to a :class:`~pxetwist.logbudget.LogBudget` of ``lines`` per ``interval`` (the
    config's ``log_budget``): a flood of requests is summed up, not written line by line.
    """

    def __init__(
        self, clock: IReactorTime | None = None, *, lines: int = 1000, interval: float = 1.0
    ) -> None:
        self._loggers = {
            protocol: Logger(namespace=f"pxetwist.{protocol.value}") for protocol in EventProtocol
        }
        self._budgets: dict[EventProtocol, LogBudget] = {}
        if clock is not None and lines:
            self._budgets = {
                protocol: LogBudget(
                    clock, lines=lines, interval=interval, logger=logger, what=protocol.name
                )
                for protocol, logger in self._loggers.items()
            }

    def __call__(self, event: BootEvent) -> None:
        if not event.message:
            return
        budget = self._budgets.get(event.protocol)
        if budget is not None and not budget.spend(
            event.time, _KINDS[event.stage, event.outcome], event.level in _WARNINGS
        ):
            return
        details = event.details
        fields = {
            "mac": event.mac,
            "client": event.client,
            "outcome": event.outcome.value,
            "stage": event.stage.value,
            **(details.resolved() if isinstance(details, LazyDetails) else details),
        }
        self._loggers[event.protocol].emit(event.level, rendered(event.message, fields), **fields)
