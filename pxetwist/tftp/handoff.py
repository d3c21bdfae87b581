"""Messages between the TFTP listener process and its transfer workers, as bytes.

The main process decides everything about a request (path confinement, the policy, the
generated config, the concurrency limit) and then hands the running of the transfer to a worker
process: a :class:`Handoff` travels over a ``SOCK_SEQPACKET`` socket pair together with two
descriptors (``SCM_RIGHTS``): the transfer's UDP socket, already bound to the address the RRQ
came to, and the file (a ``memfd`` for generated content).  The worker answers with
:class:`Ready` once, and :class:`Ended` for every transfer; the main process may send
:class:`Cancel` (a client restarted its request, or the server is stopping).

One message per datagram, as compact JSON: the request travels as its RRQ wire bytes, so the
worker decodes it with the same codec as the listener did.  Pure: no sockets, no Twisted.
"""

from __future__ import annotations

import base64
import json
from typing import Any, Final

import attrs

from pxetwist.tftp.packet import MalformedPacket, ReadRequest, decode, encode
from pxetwist.tftp.session import Outcome, SessionLimits, TransferSummary

MAX_MESSAGE: Final = 8192
"""Largest message either side sends; an RRQ is at most a few hundred octets."""

Address = tuple[str, int]


class MalformedMessage(ValueError):
    """A message that does not decode: a bug or a version mismatch, never client input."""


@attrs.frozen
class Handoff:
    """Run this transfer: sent with the socket and file descriptors, in that order."""

    transfer_id: int
    peer: Address
    request: ReadRequest
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
    """This transfer is over; the summary is what the main process logs."""

    transfer_id: int
    summary: TransferSummary


Message = Handoff | Cancel | Ready | Ended


def encode_message(message: Message) -> bytes:
    """The wire form of ``message`` (at most :data:`MAX_MESSAGE` octets for any real RRQ)."""
    body: dict[str, Any]
    if isinstance(message, Handoff):
        body = {
            "kind": "handoff",
            "id": message.transfer_id,
            "peer": list(message.peer),
            "rrq": base64.b64encode(encode(message.request)).decode("ascii"),
            "limits": attrs.asdict(message.limits),
            "mtu": message.mtu,
        }
    elif isinstance(message, Cancel):
        body = {"kind": "cancel", "id": message.transfer_id, "reason": message.reason}
    elif isinstance(message, Ready):
        body = {"kind": "ready", "pid": message.pid}
    else:
        summary = attrs.asdict(message.summary)
        summary["outcome"] = message.summary.outcome.value
        body = {"kind": "ended", "id": message.transfer_id, "summary": summary}
    return json.dumps(body, separators=(",", ":")).encode()


def decode_message(data: bytes) -> Message:
    """The message in ``data``; :class:`MalformedMessage` if it is not one."""
    try:
        body = json.loads(data)
        kind = body["kind"]
        if kind == "handoff":
            request = decode(base64.b64decode(body["rrq"], validate=True))
            if not isinstance(request, ReadRequest):
                raise MalformedMessage("a hand-off must carry an RRQ")
            host, port = body["peer"]
            return Handoff(
                transfer_id=int(body["id"]),
                peer=(str(host), int(port)),
                request=request,
                limits=SessionLimits(**body["limits"]),
                mtu=int(body["mtu"]),
            )
        if kind == "cancel":
            return Cancel(int(body["id"]), str(body["reason"]))
        if kind == "ready":
            return Ready(int(body["pid"]))
        if kind == "ended":
            fields = dict(body["summary"])
            fields["outcome"] = Outcome(fields["outcome"])
            return Ended(int(body["id"]), TransferSummary(**fields))
    except MalformedMessage:
        raise
    except (ValueError, KeyError, TypeError, MalformedPacket) as error:
        raise MalformedMessage(f"undecodable message: {error}") from error
    raise MalformedMessage(f"unknown message kind {kind!r}")


__all__ = [
    "MAX_MESSAGE",
    "Cancel",
    "Ended",
    "Handoff",
    "MalformedMessage",
    "Message",
    "Ready",
    "decode_message",
    "encode_message",
]
