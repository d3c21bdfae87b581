"""Messages between the TFTP listener process and its transfer workers, as bytes.

The main process decides everything about a request (path confinement, the policy, the
generated config, the concurrency limit, the options) and then hands the running of the transfer
to a worker process: a :class:`Handoff` travels over a ``SOCK_SEQPACKET`` socket pair together
with two descriptors (``SCM_RIGHTS``): the transfer's UDP socket, already bound to the address
the RRQ came to, and the file (a ``memfd`` for generated content).  The worker answers with
:class:`Ready` once, and :class:`Ended` for every transfer; the main process may send
:class:`Cancel` (a client restarted its request, or the server is stopping).

One message per datagram: a fixed binary header (kind, transfer id) and a compact JSON body.
A hand-off carries the *negotiated* options (:class:`~pxetwist.tftp.session.Negotiation`),
never the client's request, so its size does not depend on what a client sends (issue 18: an
RRQ of 6 KB used to make a hand-off larger than the worker's buffer, which then arrived cut
short and leaked the transfer's slot).  :func:`encode_message` refuses anything over
:data:`MAX_MESSAGE`; and because the id is in the fixed header, a worker that cannot decode a
hand-off still reports that transfer as ended, so no slot is ever left behind.
Pure: no sockets, no Twisted.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Final

import attrs

from pxetwist.tftp.session import Negotiation, Outcome, SessionLimits, TransferSummary

MAX_MESSAGE: Final = 4096
"""Largest message either side sends or takes (a hand-off is a few hundred octets)."""

Address = tuple[str, int]

_HEADER: Final = struct.Struct("!BQ")
_HANDOFF, _CANCEL, _READY, _ENDED = 1, 2, 3, 4


class MalformedMessage(ValueError):
    """A message that does not decode: a bug or a version mismatch, never client input.

    ``transfer_id`` is the id from the header when that much could be read (0 otherwise), so
    that a hand-off which cannot be run is still reported as ended.
    """

    def __init__(self, reason: str, transfer_id: int = 0) -> None:
        super().__init__(reason)
        self.transfer_id = transfer_id


class MessageTooLarge(ValueError):
    """A message over :data:`MAX_MESSAGE`: the sender must not send it (refuse the request)."""


@attrs.frozen
class Handoff:
    """Run this transfer: sent with the socket and file descriptors, in that order."""

    transfer_id: int
    peer: Address
    negotiation: Negotiation
    limits: SessionLimits
    mtu: int


@attrs.frozen
class Cancel:
    """End this transfer now; the client gets ERROR 0 with ``reason``."""

    transfer_id: int
    reason: str


@attrs.frozen
class Ready:
    """The worker is running and takes hand-offs."""

    pid: int


@attrs.frozen
class Ended:
    """This transfer is over; the summary is what the main process reports."""

    transfer_id: int
    summary: TransferSummary


Message = Handoff | Cancel | Ready | Ended


def encode_message(message: Message) -> bytes:
    """The wire form of ``message``; :class:`MessageTooLarge` past :data:`MAX_MESSAGE`."""
    body: dict[str, Any]
    if isinstance(message, Handoff):
        kind, ident = _HANDOFF, message.transfer_id
        negotiation = attrs.asdict(message.negotiation)
        negotiation["accepted"] = list(message.negotiation.accepted)
        body = {
            "peer": list(message.peer),
            "negotiation": negotiation,
            "limits": attrs.asdict(message.limits),
            "mtu": message.mtu,
        }
    elif isinstance(message, Cancel):
        kind, ident = _CANCEL, message.transfer_id
        body = {"reason": message.reason}
    elif isinstance(message, Ready):
        kind, ident = _READY, message.pid
        body = {}
    else:
        kind, ident = _ENDED, message.transfer_id
        body = attrs.asdict(message.summary)
        body["outcome"] = message.summary.outcome.value
    data = _HEADER.pack(kind, ident) + json.dumps(body, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise MessageTooLarge(f"{len(data)}-octet control message (at most {MAX_MESSAGE})")
    return data


def decode_transfer_id(data: bytes) -> int:
    """The id in a message's header (0 when not even the header arrived)."""
    if len(data) < _HEADER.size:
        return 0
    kind, ident = _HEADER.unpack_from(data)
    return int(ident) if kind in (_HANDOFF, _CANCEL, _ENDED) else 0


def decode_message(data: bytes) -> Message:
    """The message in ``data``; :class:`MalformedMessage` if it is not one."""
    if len(data) < _HEADER.size:
        raise MalformedMessage(f"{len(data)}-octet message, shorter than its header")
    kind, ident = _HEADER.unpack_from(data)
    try:
        body = json.loads(data[_HEADER.size :])
        if kind == _HANDOFF:
            host, port = body["peer"]
            fields = dict(body["negotiation"])
            fields["accepted"] = tuple(str(name) for name in fields["accepted"])
            return Handoff(
                transfer_id=ident,
                peer=(str(host), int(port)),
                negotiation=Negotiation(**fields),
                limits=SessionLimits(**body["limits"]),
                mtu=int(body["mtu"]),
            )
        if kind == _CANCEL:
            return Cancel(ident, str(body["reason"]))
        if kind == _READY:
            return Ready(ident)
        if kind == _ENDED:
            fields = dict(body)
            fields["outcome"] = Outcome(fields["outcome"])
            return Ended(ident, TransferSummary(**fields))
    except (ValueError, KeyError, TypeError) as error:
        raise MalformedMessage(f"undecodable message: {error}", ident) from error
    raise MalformedMessage(f"unknown message kind {kind}", ident)


__all__ = [
    "MAX_MESSAGE",
    "Cancel",
    "Ended",
    "Handoff",
    "MalformedMessage",
    "Message",
    "MessageTooLarge",
    "Ready",
    "decode_message",
    "decode_transfer_id",
    "encode_message",
]
