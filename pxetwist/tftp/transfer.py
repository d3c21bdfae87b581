# -*- test-case-name: tests.tftp.test_protocol -*-
"""One running TFTP read transfer: a sans-I/O session bound to a socket and one timer.

A :class:`Transfer` is the same object in the main process and in a transfer worker
(:mod:`pxetwist.tftp.worker`); what differs is its *owner*, which is told when it ends, with a
:class:`TransferSummary`: in the main process its slot in the transfer table
(:mod:`pxetwist.tftp.table`), which reports it; in a worker, the worker's host, which sends it
to the main process.
"""

from __future__ import annotations

from typing import Any, Protocol

from twisted.internet.interfaces import IDelayedCall
from twisted.logger import Logger

from pxetwist.context import ITransferReactor
from pxetwist.tftp.files import close_source
from pxetwist.tftp.packet import (
    Ack,
    ErrorCode,
    MalformedPacket,
    Packet,
    ack_block,
    decode,
    error_datagram,
)
from pxetwist.tftp.session import Actions, BlockSource, Outcome, ReadSession, TransferSummary
from pxetwist.tftp.sockets import Address, Sender, peer_text

log = Logger()


class TransferServer(Protocol):
    """What a transfer needs of the server it runs in."""

    @property
    def reactor(self) -> ITransferReactor: ...

    @property
    def busy(self) -> int:
        """Transfers running (and requests being resolved); a lone one is served in place."""
        ...


class TransferOwner(Protocol):
    """Who started a transfer and is told when it ends."""

    @property
    def server(self) -> TransferServer: ...

    def transfer_ended(self, transfer: Transfer, summary: TransferSummary) -> None: ...


class Transfer:
    """One running read transfer: a session, its source, its peer, its one timer.

    The session is driven by :meth:`receive` (packets from the peer) and by the timer.  Per the
    contract in :mod:`pxetwist.tftp.session`, one ``IDelayedCall`` is kept per transfer: it is
    moved only when a deadline comes *earlier* than the armed one, and re-armed from what an
    early firing returns, so a fast transfer costs about one timer per retransmission interval
    instead of one per block.
    """

    def __init__(
        self,
        owner: TransferOwner,
        peer: Address,
        session: ReadSession,
        source: BlockSource,
        started: float,
        mtu: int = 1500,
        filename: str = "",
    ) -> None:
        self.owner = owner
        self.filename = filename
        """The name the client asked for (a retransmitted RRQ names it again)."""
        self.peer = peer
        self.session = session
        self.source = source
        self.started = started
        self.mtu = mtu
        self.finished = False
        self._clock = owner.server.reactor
        self._timer: IDelayedCall | None = None
        self._armed = 0.0
        self._sender: Sender | None = None
        self._port: Any = None

    def attach(self, port: Any, transport: Any) -> None:
        """Use ``transport`` to send; ``port`` (if any) is closed when the transfer ends."""
        self._port = port
        self._sender = Sender(transport, self.peer, self.mtu)

    def start(self) -> None:
        self._apply(self.session.start(self._clock.seconds()))

    def receive(self, data: bytes) -> None:
        """A datagram from the peer's TID."""
        if self.finished:
            return
        block = ack_block(data)
        if block is not None:  # the hot path
            now = self._clock.seconds()
            if self._timer is not None:
                datagrams = self.session.receive_ack(block, now)
                if datagrams is not None:
                    # The session's fast path never moves the deadline earlier: the armed
                    # timer stays as it is (see ReadSession.receive_ack).
                    sender = self._sender
                    if sender is not None:
                        if len(datagrams) == 1:
                            sender.send_one(datagrams[0])  # lockstep: every block
                        else:
                            sender.send(datagrams)
                    return
            self._apply(self.session.receive(Ack(block), now))
            return
        try:
            packet = decode(data)
        except MalformedPacket as error:
            log.debug(
                "tftp: malformed datagram from {peer} during a transfer: {error}",
                peer=peer_text(self.peer),
                error=str(error),
            )
            return
        self.receive_packet(packet)

    def receive_packet(self, packet: Packet) -> None:
        if self.finished:
            return
        self._apply(self.session.receive(packet, self._clock.seconds()))

    def abort(self, reason: str) -> None:
        """End the transfer now (service stopping, client restarted): ERROR 0 to the client."""
        if self.finished:
            return
        if self._sender is not None:
            self._sender.send((error_datagram(ErrorCode.NOT_DEFINED, reason),))
        self._finish(Outcome.ERROR, reason)

    def _apply(self, actions: Actions) -> None:
        if actions.datagrams and self._sender is not None:
            self._sender.send(actions.datagrams)
        if actions.outcome is not None:
            self._finish(actions.outcome, actions.detail)
            return
        deadline = actions.deadline
        timer = self._timer
        if deadline is None:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        # ``_timer`` is set exactly while the call is pending (it clears itself when it fires),
        # and ``_armed`` is its time: no IDelayedCall method on the per-block path.
        if timer is None:
            self._armed = deadline
            self._timer = self._clock.callLater(
                max(0.0, deadline - self._clock.seconds()), self._timer_fired
            )
        elif deadline < self._armed:
            # Sooner: a fresh call, not ``reset``.  Twisted moves a call sooner by a linear
            # search of its heap, and in a storm every transfer's timer is in it: after a
            # retransmission each ACK of thousands of transfers would scan them all.
            timer.cancel()
            self._armed = deadline
            self._timer = self._clock.callLater(
                max(0.0, deadline - self._clock.seconds()), self._timer_fired
            )

    def _timer_fired(self) -> None:
        self._timer = None
        if self.finished:
            return
        try:
            self._apply(self.session.timer_fired(self._clock.seconds()))
        except Exception:
            log.failure("tftp: transfer to {peer} failed", peer=peer_text(self.peer))
            self._finish(Outcome.ERROR, "internal error")

    def _finish(self, outcome: Outcome, detail: str) -> None:
        if self.finished:
            return
        self.finished = True
        timer, self._timer = self._timer, None
        if timer is not None and timer.active():
            timer.cancel()
        close_source(self.source)
        port, self._port = self._port, None
        if port is not None:
            port.stopListening()
        summary = TransferSummary.of(
            self.session, outcome, detail, self._clock.seconds() - self.started
        )
        self.owner.transfer_ended(self, summary)


__all__ = ["Transfer", "TransferOwner", "TransferServer", "TransferSummary"]
