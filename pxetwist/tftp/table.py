# -*- test-case-name: tests.tftp.test_table -*-
"""The one table of TFTP transfers: a slot per accepted read request, from RRQ to end.

``tftp.max_transfers`` bounds the *slots*: a slot is taken when an RRQ is accepted (before its
file is resolved, since a slow policy holds it too), and released exactly once, when the
request is refused after all, or when its transfer ends, whether it ran in this process or in
a transfer worker (:mod:`pxetwist.tftp.workers`), and whether that worker reported the end,
died, or was stopped.  Everything else that used to count transfers (per listener, per worker)
asks this table instead, so there is one number and one place that can leak it.

It is also the one point where TFTP reports what happened (issue 11): a read request refused
or dropped before a transfer started is a ``TFTP_REQUEST`` :class:`~pxetwist.events.BootEvent`;
every transfer's end is a ``TFTP_TRANSFER`` event with the file, block and window size, bytes
sent, size, seconds, retransmissions and how it ended (generated boot configs carry
``generated: True``).  The log lines are the :class:`~pxetwist.events.LogObserver`'s rendering
of those events.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from ipaddress import IPv4Address
from typing import TYPE_CHECKING, Any, Final

import attrs
from twisted.logger import Logger, LogLevel

from pxetwist.context import ITransferReactor
from pxetwist.events import BootEvent, BootEventBus, EventProtocol, EventStage, Outcome
from pxetwist.tftp.files import Resolved, close_source
from pxetwist.tftp.session import Negotiation, TransferSummary
from pxetwist.tftp.session import Outcome as Ended

if TYPE_CHECKING:
    from pxetwist.tftp.transfer import Transfer

log = Logger()

Address = tuple[str, int]

TRANSFER_MESSAGE: Final = (
    "tftp {ended}: {file} to {client}:{port} (mac {mac}): {bytes} of {size} bytes in "
    "{seconds}s, blksize {blksize}, windowsize {windowsize}, {retransmits} retransmitted "
    "{detail}"
)
REQUEST_MESSAGE: Final = "tftp {verb} {file} from {client}:{port}: {reason}"
REQUEST_LOG_LINES_PER_SECOND: Final = 50
"""Refused and dropped requests logged one by one per second; past that, within the same second,
their events still reach every observer (metrics and sessions count them all) but carry no log
line, and one summary line per second says how many and why (a flood of junk must not become a
flood of log)."""


def _outcome(ended: Ended) -> Outcome:
    if ended.delivered:
        return Outcome.OK
    return Outcome.FAILED


class TransferSlot:
    """One accepted read request's place in the table, and what is known about it so far.

    A slot is resolving (``resolved`` is None), then running here (``transfer``) or in a worker
    (``worker``), then released.  ``id`` is also the transfer id a worker knows it by.
    """

    def __init__(
        self,
        table: TransferTable,
        ident: int,
        key: tuple[str, Address],
        filename: str,
        started: float,
    ) -> None:
        self.table = table
        self.id = ident
        self.key = key
        self.filename = filename
        self.started = started
        self.resolved: Resolved | None = None
        self.negotiation: Negotiation | None = None
        self.transfer: Transfer | None = None
        self.worker: object | None = None
        self.cancel: Callable[[str], None] | None = None
        """How to end a transfer that runs elsewhere (a worker): sends it a cancel."""
        self.released = False
        self.aborted: str | None = None
        """Why the request was given up while it was still resolving (then it is not started)."""

    @property
    def peer(self) -> Address:
        return self.key[1]

    @property
    def server(self) -> TransferTable:
        """What a :class:`~pxetwist.tftp.transfer.Transfer` run here asks for its reactor and
        for how many transfers run (a lone one is served in place)."""
        return self.table

    @property
    def reactor(self) -> ITransferReactor:
        return self.table.reactor

    def abort(self, reason: str) -> None:
        """End whatever this request is doing: the client gets ERROR 0 where a transfer runs."""
        if self.released:
            return
        if self.transfer is not None:
            self.transfer.abort(reason)
        elif self.cancel is not None:
            self.cancel(reason)
        else:
            self.aborted = reason  # still resolving: released when the resolution comes back

    def transfer_ended(self, transfer: Transfer, summary: TransferSummary) -> None:
        """A transfer run in this process ended (see :class:`TransferOwner`)."""
        self.table.end(self, summary)


class TransferTable:
    """Every accepted TFTP read request, by id and by (server address, client address)."""

    def __init__(
        self,
        limit: int,
        reactor: ITransferReactor,
        bus: BootEventBus,
        log_lines_per_second: int = REQUEST_LOG_LINES_PER_SECOND,
    ) -> None:
        self.limit = limit
        self.reactor = reactor
        self.bus = bus
        self.log_lines_per_second = log_lines_per_second
        self._window_start = -1.0
        self._window_lines = 0
        self._unlogged: dict[str, int] = {}
        self._summary: Any = None
        self._by_id: dict[int, TransferSlot] = {}
        self._by_peer: dict[tuple[str, Address], TransferSlot] = {}
        self._next_id = 1

    # Counting.

    def __len__(self) -> int:
        return len(self._by_id)

    @property
    def busy(self) -> int:
        """Slots taken: transfers running here or in workers, and requests being resolved."""
        return len(self._by_id)

    def __iter__(self) -> Iterator[TransferSlot]:
        return iter(list(self._by_id.values()))

    def get(self, ident: int) -> TransferSlot | None:
        return self._by_id.get(ident)

    def at(self, local: str, peer: Address) -> TransferSlot | None:
        """The newest slot of the client at ``peer`` talking to our address ``local``."""
        return self._by_peer.get((local, peer))

    def running_on(self, worker: object) -> int:
        """Transfers handed to ``worker`` and not yet ended (the pool picks the least busy)."""
        return sum(1 for slot in self._by_id.values() if slot.worker is worker)

    # Taking and releasing.

    def claim(self, local: str, peer: Address, filename: str) -> TransferSlot | None:
        """A slot for a new request, or None when ``limit`` are taken (the caller refuses)."""
        if len(self._by_id) >= self.limit:
            return None
        slot = TransferSlot(self, self._next_id, (local, peer), filename, self.reactor.seconds())
        self._next_id += 1
        self._by_id[slot.id] = slot
        self._by_peer[slot.key] = slot
        return slot

    def _release(self, slot: TransferSlot) -> bool:
        if slot.released:
            log.error(
                "tftp: slot {id} ({file}) released twice; ignored", id=slot.id, file=slot.filename
            )
            return False
        slot.released = True
        del self._by_id[slot.id]
        if self._by_peer.get(slot.key) is slot:
            del self._by_peer[slot.key]
        if slot.resolved is not None:
            close_source(slot.resolved.source)
        return True

    def end(self, slot: TransferSlot, summary: TransferSummary) -> None:
        """The transfer of ``slot`` ended (here, in a worker, or with its worker)."""
        if not self._release(slot):
            return
        if slot.transfer is None:  # a worker ran it: its clock is not ours
            summary = attrs.evolve(summary, seconds=round(self.reactor.seconds() - slot.started, 6))
        self._transfer_event(slot, summary)

    def ended_remotely(self, ident: int, summary: TransferSummary) -> None:
        """A worker reported the end of transfer ``ident``; unknown ids are ignored."""
        slot = self._by_id.get(ident)
        if slot is not None and slot.worker is not None:
            self.end(slot, summary)

    def lost(self, worker: object, detail: str) -> None:
        """``worker`` is gone without reporting these: each ends as an error with ``detail``.

        What the client received is not known here; the summary says so and keeps what is
        (size, and the negotiated block and window sizes), instead of zeros."""
        for slot in [s for s in self._by_id.values() if s.worker is worker]:
            negotiation = slot.negotiation or Negotiation()
            size = slot.resolved.source.size if slot.resolved is not None else 0
            self.end(
                slot,
                TransferSummary(
                    outcome=Ended.ERROR,
                    detail=f"{detail}; bytes delivered unknown",
                    bytes=0,
                    size=size,
                    seconds=0.0,
                    blksize=negotiation.blksize,
                    windowsize=negotiation.windowsize,
                    retransmissions=0,
                ),
            )

    def refuse(self, slot: TransferSlot | None, request: RequestReport) -> None:
        """The request of ``slot`` (if it got one) is refused or dropped: release, report."""
        if slot is not None and not self._release(slot):
            return
        now = self.reactor.seconds()
        logged = self._within_budget(now)
        if not logged:
            key = (
                f"{request.verb}: {request.reason}"
                if request.code is None
                else (f"{request.verb} (error {request.code})")
            )
            self._unlogged[key] = self._unlogged.get(key, 0) + 1
        self._emit(
            BootEvent(
                time=now,
                protocol=EventProtocol.TFTP,
                stage=EventStage.TFTP_REQUEST,
                outcome=request.outcome,
                client=request.client,
                details={
                    "file": request.filename,
                    "port": request.port,
                    "reason": request.reason,
                    "code": request.code,
                    "verb": request.verb,
                },
                message=REQUEST_MESSAGE if logged else "",
                level=request.level,
            )
        )

    # Reporting.

    def _within_budget(self, now: float) -> bool:
        """Whether this refusal gets its own log line (see :data:`REQUEST_LOG_LINES_PER_SECOND`)."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._window_lines = 0
        self._window_lines += 1
        if self._window_lines <= self.log_lines_per_second:
            return True
        if self._summary is None:
            self._summary = self.reactor.callLater(
                max(0.0, self._window_start + 1.0 - now), self._log_summary
            )
        return False

    def _log_summary(self) -> None:
        self._summary = None
        unlogged, self._unlogged = self._unlogged, {}
        total = sum(unlogged.values())
        if total:
            log.warn(
                "tftp: {total} more requests refused or dropped in one second, over the "
                "{budget} lines/s logged one by one: {counts}",
                total=total,
                budget=self.log_lines_per_second,
                counts=", ".join(f"{n} {key}" for key, n in sorted(unlogged.items())),
            )

    def close(self) -> None:
        """Stop the summary timer (the service is stopping)."""
        summary, self._summary = self._summary, None
        if summary is not None and summary.active():
            summary.cancel()
        self._log_summary()

    def _transfer_event(self, slot: TransferSlot, summary: TransferSummary) -> None:
        resolved = slot.resolved
        details: dict[str, object] = {
            "file": resolved.path if resolved is not None else slot.filename,
            "port": slot.peer[1],
            "blksize": summary.blksize,
            "windowsize": summary.windowsize,
            "bytes": summary.bytes,
            "size": summary.size,
            "seconds": summary.seconds,
            "retransmits": summary.retransmissions,
            "ended": summary.outcome.value,
            "detail": summary.detail,
        }
        if resolved is not None and resolved.generated is not None:
            details["generated"] = True
            details["loader"] = resolved.generated.value
        ended = summary.outcome
        self._emit(
            BootEvent(
                time=self.reactor.seconds(),
                protocol=EventProtocol.TFTP,
                stage=EventStage.TFTP_TRANSFER,
                outcome=_outcome(ended),
                mac=resolved.mac if resolved is not None else None,
                client=_ip(slot.peer[0]),
                details=details,
                message=TRANSFER_MESSAGE,
                level=LogLevel.info
                if ended.delivered or ended is Ended.ABORTED_BY_CLIENT
                else LogLevel.warn,
            )
        )

    def _emit(self, event: BootEvent) -> None:
        """The one place TFTP hands events to the bus."""
        self.bus.emit(event)


@attrs.frozen
class RequestReport:
    """A request that got no transfer, as :meth:`TransferTable.refuse` reports it."""

    client: IPv4Address | None
    port: int
    filename: str
    reason: str
    outcome: Outcome = Outcome.REFUSED
    code: int | None = None
    verb: str = "refused"
    level: LogLevel = LogLevel.info

    @classmethod
    def of(cls, peer: Address, filename: str, reason: str, **more: Any) -> RequestReport:
        return cls(_ip(peer[0]), peer[1], filename, reason, **more)


def _ip(text: str) -> IPv4Address | None:
    try:
        return IPv4Address(text)
    except ValueError:
        return None


__all__ = ["RequestReport", "TransferSlot", "TransferTable"]
