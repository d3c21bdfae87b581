"""One TFTP read transfer as a pure state machine.

RFC 1350, 2347, 2348, 2349 and 7440, with the sender rules of RFC 1123 §4.2.3.

A :class:`ReadSession` is fed three kinds of events and answers each with an :class:`Actions` value:

* :meth:`ReadSession.start` once, right after the RRQ was accepted and its file opened;
* :meth:`ReadSession.receive` for every packet that arrives from the client's transfer ID;
* :meth:`ReadSession.timer_fired` when the deadline of the last :class:`Actions` has passed.

It never touches a socket, a clock or a reactor: time is the ``now`` argument, the file is a
:class:`BlockSource`, and the result says which datagrams to send, when to be woken up next, and
whether the transfer is over.  The Twisted protocol is a thin adapter on top, and every rule below
is tested with plain floats for time.

Why the rules are what they are:

* Options (RFC 2347): only what the client asked for *and* we accept goes into the OACK (EFI clients
  reject anything else, protocol-reference §5 #11); nothing accepted means plain RFC 1350, DATA 1 at
  once.  ``blksize`` is clamped to the MTU so the boot ROM never has to reassemble IP fragments
  (§5 #13).
* Windows (RFC 7440): blocks are numbered by an unbounded absolute index internally and only
  mapped to the 16-bit wire number on the way out, so transfers of more than 65535 blocks roll
  over to 0 (§6.5); an ACK's wire number is resolved against the blocks currently in flight,
  which is unambiguous because a window never exceeds 65535 blocks.
* Retransmission only on timeout, never on a duplicate ACK: answering duplicates is the Sorcerer's
  Apprentice syndrome of RFC 1123 §4.2.3.1, where every later block ends up sent twice.
"""

from __future__ import annotations

import enum
import struct
from bisect import bisect_right
from typing import TYPE_CHECKING, Final, Protocol

import attrs

from pxetwist.tftp.packet import (
    Ack,
    Error,
    ErrorCode,
    OptionAck,
    Options,
    Packet,
    ReadRequest,
    encode,
    encode_data,
)

if TYPE_CHECKING:
    from pxetwist.tftp.shared import SharedBlocks

MIN_BLKSIZE: Final = 8
"""RFC 2348 §2: the smallest block size a client may ask for."""
MAX_BLKSIZE: Final = 65464
"""RFC 2348 §2: the largest block size (65535 minus IP and UDP headers and the TFTP header)."""
DEFAULT_BLKSIZE: Final = 512
"""RFC 1350 §2: the block size without a ``blksize`` option."""
MAX_WINDOWSIZE: Final = 65535
"""RFC 7440 §3: the largest window; also what keeps 16-bit ACK numbers unambiguous."""
_WIRE_MASK: Final = 0xFFFF
_OPCODE_DATA: Final = 3
_data_header = struct.Struct("!HH").pack
"""A DATA header, as :func:`~pxetwist.tftp.packet.encode_data` builds it, without the call."""


class BlockSource(Protocol):
    """What a session reads a file through: a size and random-access reads.

    The session reads only the blocks it is about to send, in window-sized runs, so an
    implementation can be a plain file, an ``mmap``, a generated config or a cache entry.  ``read``
    must return exactly ``min(length, size - offset)`` octets; anything shorter means the file
    changed under the transfer, which the session reports as an error rather than sending a short
    block the client would take for the end of the file.  ``OSError`` from ``read`` is reported the
    same way.
    """

    @property
    def size(self) -> int:
        """Length of the content in octets, as announced by ``tsize`` (RFC 2349)."""
        ...

    def read(self, offset: int, length: int) -> bytes:
        """Return up to ``length`` octets starting at ``offset``."""
        ...


@attrs.frozen
class BytesSource:
    """A :class:`BlockSource` over bytes already in memory: generated files and tests."""

    data: bytes = attrs.field(repr=lambda data: f"<{len(data)} octets>")

    @property
    def size(self) -> int:
        """Length of :attr:`data`."""
        return len(self.data)

    def read(self, offset: int, length: int) -> bytes:
        """Slice :attr:`data`; copies only the requested range."""
        return self.data[offset : offset + length]


class NetasciiSource:
    """Present another source converted to netascii: LF -> CR LF, CR -> CR NUL (RFC 764, RFC 1350).

    The converted size must be known before the first block (for ``tsize`` and to know which block
    is the last), so construction scans the inner source once, chunk by chunk, and remembers where
    each chunk starts in converted coordinates.  Each input octet becomes one or two output octets
    independently of its neighbours, so any converted range can then be produced by converting only
    the chunks that cover it; the last converted chunk is kept, since reads are nearly sequential.
    """

    def __init__(self, inner: BlockSource, chunk_size: int = 8192) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be positive")
        self._inner = inner
        self._chunk_size = chunk_size
        starts = [0]
        converted = 0
        for offset in range(0, inner.size, chunk_size):
            raw = inner.read(offset, chunk_size)
            converted += len(raw) + raw.count(b"\n") + raw.count(b"\r")
            starts.append(converted)
        # starts[i] is the converted offset of chunk i; the last entry is the total size.
        self._starts = starts
        self._size = converted
        self._cached_index = -1
        self._cached = b""

    @property
    def size(self) -> int:
        """The converted length, which is what ``tsize`` reports for a netascii transfer."""
        return self._size

    def _converted_chunk(self, index: int) -> bytes:
        if index != self._cached_index:
            raw = self._inner.read(index * self._chunk_size, self._chunk_size)
            # CR first, so the CR inserted in front of each LF is not itself followed by a NUL.
            self._cached = raw.replace(b"\r", b"\r\0").replace(b"\n", b"\r\n")
            self._cached_index = index
        return self._cached

    def read(self, offset: int, length: int) -> bytes:
        """Return converted octets ``[offset, offset + length)``, clipped to :attr:`size`."""
        end = min(offset + length, self._size)
        if offset >= end:
            return b""
        index = bisect_right(self._starts, offset) - 1
        parts: list[bytes] = []
        position = offset
        while position < end:
            chunk_start = self._starts[index]
            piece = self._converted_chunk(index)[position - chunk_start : end - chunk_start]
            if not piece:
                break  # the inner source shrank; the session notices the short read
            parts.append(piece)
            position += len(piece)
            index += 1
        return b"".join(parts)


def _positive(_instance: object, attribute: attrs.Attribute[float], value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attribute.name} must be positive, not {value}")


@attrs.frozen
class SessionLimits:
    """Server-side bounds for every transfer; the configuration maps onto this.

    ``timeout`` is the first retransmission interval when the client did not negotiate one; it
    doubles on each retry up to ``max_timeout`` (exponential back-off, RFC 1123 §4.2.3.2).  After
    ``max_retries`` retransmissions without progress the transfer is abandoned.

    ``adaptive_window`` paces windows under loss (AIMD on the burst): every window still carries
    the negotiated number of blocks, because an RFC 7440 receiver acknowledges only after a full
    window (or a gap, or its own timeout), but after a loss it leaves in bursts of fewer blocks,
    ``pace_interval`` seconds apart; the burst halves on each loss and grows by one block per
    window that arrives whole, until the window leaves in one go again.  That is what a
    shallow-buffered or slower link needs (a window of 32 blocks is 47 KB at once, more than many
    switch ports and boot ROM receive rings hold).  It is off by default: on random loss, which
    pacing cannot prevent, it slows a transfer down (bench/tftp/loss.py).

    A session caches the datagrams of its window, so its memory is about
    ``max_window * blksize_limit`` octets (64 x 1468, ~94 KB, by default).
    """

    mtu: int = attrs.field(default=1500, validator=attrs.validators.ge(68))
    ipv6: bool = False
    max_blksize: int = attrs.field(
        default=MAX_BLKSIZE,
        validator=[attrs.validators.ge(MIN_BLKSIZE), attrs.validators.le(MAX_BLKSIZE)],
    )
    timeout: float = attrs.field(default=1.0, validator=_positive)
    max_timeout: float = attrs.field(default=8.0, validator=_positive)
    max_retries: int = attrs.field(default=5, validator=attrs.validators.ge(0))
    max_window: int = attrs.field(
        default=64, validator=[attrs.validators.ge(1), attrs.validators.le(MAX_WINDOWSIZE)]
    )
    adaptive_window: bool = False
    pace_interval: float = attrs.field(default=0.001, validator=_positive)
    window_bytes: int | None = None
    """Most octets one transfer keeps in flight (and in its window cache): window x blksize."""

    @property
    def blksize_limit(self) -> int:
        """Largest block whose datagram fits the MTU unfragmented (MTU - 32 on IPv4, - 52 on IPv6).

        The overhead is the IP header (20 or 40), UDP (8) and the TFTP DATA header (4); 1500
        gives 1468, the value EDK2 asks for.  Never below the RFC 2348 minimum.
        """
        overhead = 52 if self.ipv6 else 32
        return max(MIN_BLKSIZE, min(self.max_blksize, self.mtu - overhead))


@attrs.frozen
class Negotiation:
    """What one RRQ's options came to (RFC 2347-2349, RFC 7440), worked out once per request.

    The listener negotiates when it accepts a request (it needs the block size to bound the
    window's memory), and the session runs with the result, in this process or in a transfer
    worker (:mod:`pxetwist.tftp.handoff` carries this value, not the request).  ``accepted``
    names the options to acknowledge, in the client's order; when it is empty the transfer is
    plain RFC 1350 (512-octet blocks, lockstep, DATA 1 straight away).  ``tsize`` is whether the
    client asked for the size: its value is the size of what is served (after netascii
    conversion), which only the session knows, so the OACK is built by :meth:`oack`.
    """

    mode: str = "octet"
    blksize: int = DEFAULT_BLKSIZE
    windowsize: int = 1
    timeout: int | None = None
    tsize: bool = False
    accepted: tuple[str, ...] = ()

    @property
    def netascii(self) -> bool:
        return self.mode == _NETASCII

    @property
    def mode_supported(self) -> bool:
        """Octet and netascii are served; mail (and anything else) is not (RFC 1350 §1)."""
        return self.mode in (_OCTET, _NETASCII)

    def oack(self, size: int) -> Options:
        """The OACK's options for content of ``size`` octets, in the client's order."""
        values = {
            "blksize": str(self.blksize),
            "windowsize": str(self.windowsize),
            "timeout": str(self.timeout),
            "tsize": str(size),
        }
        return tuple((name, values[name]) for name in self.accepted)


def _decimal(value: str) -> int | None:
    """Parse an option value as a plain ASCII decimal (no sign, no spaces, no underscores)."""
    if value and len(value) <= 10 and value.isascii() and value.isdigit():
        return int(value)
    return None


def negotiate(request: ReadRequest, limits: SessionLimits) -> Negotiation:
    """Decide which of the client's options to accept and with which values.

    * ``blksize`` (RFC 2348): values below 8 or unparsable are ignored; otherwise the answer is
      the request clamped to 65464 and to :attr:`SessionLimits.blksize_limit`, never larger than
      asked.
    * ``tsize`` (RFC 2349 §4): in an RRQ the client sends 0 and the server answers the size
      (the converted size for netascii; see :meth:`Negotiation.oack`).
    * ``timeout`` (RFC 2349 §3): 1-255 seconds, echoed exactly; anything else is ignored.
    * ``windowsize`` (RFC 7440 §3): 1-65535, answered clamped to the configured maximum, and to
      :attr:`SessionLimits.window_bytes` over the block size (the window's memory).

    Unknown options are ignored, as RFC 2347 requires; a repeated option counts once, first wins.
    """
    blksize = DEFAULT_BLKSIZE
    windowsize = 1
    timeout: int | None = None
    tsize = False
    accepted: list[str] = []
    for name, value in request.options:
        if name in accepted:
            continue
        if name == "tsize":
            tsize = True
            accepted.append(name)
            continue
        number = _decimal(value)
        if number is None:
            continue
        if name == "blksize" and number >= MIN_BLKSIZE:
            blksize = min(number, MAX_BLKSIZE, limits.blksize_limit)
            accepted.append(name)
        elif name == "timeout" and 1 <= number <= 255:
            timeout = number
            accepted.append(name)
        elif name == "windowsize" and number >= 1:
            windowsize = min(number, MAX_WINDOWSIZE, limits.max_window)
            accepted.append(name)
    if limits.window_bytes is not None and blksize * windowsize > limits.window_bytes:
        windowsize = max(1, limits.window_bytes // blksize)
    return Negotiation(request.mode.lower(), blksize, windowsize, timeout, tsize, tuple(accepted))


class Outcome(enum.Enum):
    """How a transfer ended, for logs and metrics."""

    COMPLETED = "completed"
    FINAL_ACK_MISSING = "completed, final ACK missing"
    """Every block was sent but the last ACK never came: normal for some clients (§5 #14)."""
    ABORTED_BY_CLIENT = "aborted by client"
    """The client sent an ERROR, e.g. EDK2 ending its ``tsize`` probe after the OACK (§5 #12)."""
    TIMED_OUT = "timed out"
    ERROR = "error"
    """The server ended the transfer: unreadable file, unsupported mode, illegal packet."""

    @property
    def delivered(self) -> bool:
        """True when the client (almost certainly) has the whole file."""
        return self in (Outcome.COMPLETED, Outcome.FINAL_ACK_MISSING)


@attrs.frozen
class Actions:
    """What the adapter must do after an event.

    Send ``datagrams`` in order to the client; arrange for :meth:`ReadSession.timer_fired` to be
    called at ``deadline`` (an absolute time on the clock that supplies ``now``; ``None`` means no
    timer).  Rescheduling a reactor timer for every block is the expensive part of a fast
    transfer, so the contract allows laziness: a premature ``timer_fired`` sends nothing and returns
    the real deadline.  An adapter can therefore keep one timer, move it only when the new deadline
    is *earlier* than the armed one (progress after a back-off), and re-arm it from what an early
    firing returns.  When ``outcome`` is set the session is over; ``detail`` is a note for the log.
    """

    datagrams: tuple[bytes, ...] = ()
    deadline: float | None = None
    outcome: Outcome | None = None
    detail: str = ""

    @property
    def finished(self) -> bool:
        """True once the transfer has ended; later events are ignored."""
        return self.outcome is not None


class _SourceError(Exception):
    """Raised internally when the block source cannot deliver what it announced."""


_OCTET: Final = "octet"
_NETASCII: Final = "netascii"


class ReadSession:
    """The server side of one RRQ: negotiation, windowed sending, retransmission, completion.

    Block bookkeeping uses absolute indices: block 1 is the first DATA, :attr:`block_count` the last
    (short, possibly empty, RFC 1350 §6).  ``_acked`` is the highest block the client acknowledged
    in order; it is -1 while an OACK waits for its ACK 0, because the OACK plays the role of
    block 0 (RFC 2347).  ``_max_sent`` is the highest block ever sent; an ACK is new only if it
    falls in ``(_acked, _max_sent]``.  Datagrams from ``_acked + 1`` up to ``_max_sent`` are cached,
    so a retransmission re-sends bytes without reading the file again.
    """

    def __init__(
        self,
        request: ReadRequest | Negotiation,
        source: BlockSource,
        limits: SessionLimits | None = None,
        shared: SharedBlocks | None = None,
    ) -> None:
        """Serve ``source`` for a request, or for a request already negotiated (the listener
        negotiates once, see :class:`Negotiation`; a transfer worker gets only that).

        ``shared``, the DATA datagrams of this same file at the negotiated block size that other
        transfers build too (:mod:`pxetwist.tftp.shared`), serves the per-block fast path; it is
        ignored unless its size and block size are this transfer's, and for netascii."""
        self._limits = limits = SessionLimits() if limits is None else limits
        negotiation = request if isinstance(request, Negotiation) else negotiate(request, limits)
        self._fatal: Error | None = None
        if negotiation.netascii:
            source = NetasciiSource(source)
        elif not negotiation.mode_supported:
            self._fatal = Error(ErrorCode.ILLEGAL_OPERATION, f"Unsupported mode {negotiation.mode}")
        self._source = source
        self._size = size = source.size
        self._negotiation = negotiation
        self._blksize = negotiation.blksize
        self._windowsize = negotiation.windowsize
        self._adaptive = limits.adaptive_window and negotiation.windowsize > 1
        self._fixed_timeout = negotiation.timeout is not None
        self._base_timeout = (
            float(negotiation.timeout) if negotiation.timeout is not None else limits.timeout
        )
        self._last = size // self._blksize + 1
        self._shared = (
            shared.datagrams
            if shared is not None
            and shared.size == size
            and shared.blksize == self._blksize
            and not negotiation.netascii
            else None
        )
        self._oack = encode(OptionAck(negotiation.oack(size))) if negotiation.accepted else None

        self._started = False
        self._acked = -1 if self._oack is not None else 0
        self._max_sent = 0
        self._window_end = 0
        self._window_full = False
        # Pacing (adaptive windows only): blocks per burst, and the first block of the window
        # still to send when the deadline comes (0: none; the window ends at ``_window_end``).
        self._burst = self._windowsize
        self._paced_next = 0
        self._cache: list[bytes] = []
        self._cache_start = 1
        self._retries = 0
        self._deadline: float | None = None
        self._outcome: Outcome | None = None
        self._detail = ""
        self._retransmissions = 0
        # The fast path (:meth:`receive_ack`) is open only while nothing unusual can happen:
        # started, not finished, no adaptive window.  Its retransmission interval is the one
        # without back-off, the only one it ever uses (it requires ``_retries == 0``).
        self._lean = False
        self._lean_interval = (
            self._base_timeout
            if self._fixed_timeout
            else min(self._base_timeout, limits.max_timeout)
        )

    # Introspection, for the adapter's logs and for metrics.

    @property
    def negotiation(self) -> Negotiation:
        """What the options came to (the OACK, if any, is ``negotiation.oack(size)``)."""
        return self._negotiation

    @property
    def blksize(self) -> int:
        """Negotiated block size (512 without ``blksize``)."""
        return self._blksize

    @property
    def windowsize(self) -> int:
        """Negotiated window size, as announced in the OACK (1 without ``windowsize``)."""
        return self._windowsize

    @property
    def burst(self) -> int:
        """Blocks sent back to back: the window, or fewer while an adaptive window paces."""
        return self._burst

    @property
    def size(self) -> int:
        """Octets transferred in total (after netascii conversion)."""
        return self._size

    @property
    def block_count(self) -> int:
        """Number of DATA blocks, including a final empty one when ``size % blksize == 0``."""
        return self._last

    @property
    def acked_blocks(self) -> int:
        """Blocks acknowledged in order so far."""
        return max(self._acked, 0)

    @property
    def retransmissions(self) -> int:
        """DATA blocks (and OACKs) sent more than once."""
        return self._retransmissions

    @property
    def deadline(self) -> float | None:
        """When :meth:`timer_fired` is next due, or ``None``."""
        return self._deadline

    @property
    def outcome(self) -> Outcome | None:
        """How the transfer ended, or ``None`` while it runs."""
        return self._outcome

    @property
    def finished(self) -> bool:
        """True once the transfer has ended."""
        return self._outcome is not None

    # Events.

    def start(self, now: float) -> Actions:
        """Begin the transfer: an OACK if any option was accepted, else the first window of DATA."""
        if self._started:
            raise RuntimeError("ReadSession.start called twice")
        self._started = True
        self._lean = not self._adaptive
        if self._fatal is not None:
            return self._finish(Outcome.ERROR, self._fatal.message, self._fatal)
        if self._oack is not None:
            self._deadline = now + self._interval()
            return Actions((self._oack,), self._deadline)
        return self._send_window(now)

    def receive_ack(self, block: int, now: float) -> tuple[bytes, ...] | None:
        """The per-block fast path: an ACK, by its 16-bit wire ``block`` number.

        Handles only the common case, an in-order ACK of the last block sent (lockstep's every
        ACK, a window's final block) before the last block of the file, with no retransmission
        pending, and returns the datagrams to send next.  Its deadline (:attr:`deadline`) is
        ``now`` plus the interval without back-off, never earlier than any deadline returned
        since the last back-off, so an adapter that keeps one lazily moved timer (see
        :class:`Actions`) leaves that timer alone.  ``None`` means "not the common case":
        nothing changed, call :meth:`receive` with ``Ack(block)`` for the full answer.
        """
        sent = self._max_sent
        if (
            block != sent & _WIRE_MASK
            or not self._lean
            or self._retries
            or self._acked >= sent
            or sent >= self._last
        ):
            return None
        window = self._windowsize
        if window == 1 and self._shared is not None:
            datagram = self._shared[sent]  # block sent + 1, as another transfer built it
            if datagram is not None:
                self._cache = [datagram]
                self._acked = sent
                self._max_sent = self._window_end = sent + 1
                self._window_full = True
                self._cache_start = sent + 1
                self._deadline = now + self._lean_interval
                return (datagram,)
        end = sent + window
        last = self._last
        if end > last:
            end = last
        blksize = self._blksize
        offset = sent * blksize
        wanted = (end - sent) * blksize
        try:
            data = self._source.read(offset, wanted)
        except OSError:
            return None  # the general path reads again and reports the error
        size = self._size
        if len(data) != (wanted if offset + wanted <= size else size - offset):
            return None
        if end == sent + 1:
            datagram = _data_header(_OPCODE_DATA, end & _WIRE_MASK) + data
            datagrams: tuple[bytes, ...] = (datagram,)
            self._cache = [datagram]
            if self._shared is not None:
                self._shared[sent] = datagram
        else:
            cache = [
                _data_header(_OPCODE_DATA, number & _WIRE_MASK) + data[start : start + blksize]
                for number, start in zip(
                    range(sent + 1, end + 1), range(0, wanted, blksize), strict=True
                )
            ]
            datagrams = tuple(cache)
            self._cache = cache
        self._acked = sent
        self._max_sent = self._window_end = end
        self._window_full = end - sent == window
        self._cache_start = sent + 1
        self._deadline = now + self._lean_interval
        return datagrams

    def receive(self, packet: Packet, now: float) -> Actions:
        """Handle a packet from the client's transfer ID.

        * ACK of a block in flight: slide the window to the block after it and send the next
          window (RFC 7440 §4); acknowledging the last block completes the transfer.
        * ACK of anything else (a duplicate, a stale or never-sent block): nothing at all, not even
          a timer change: RFC 1123 §4.2.3.1, the Sorcerer's Apprentice.
        * ERROR: the client gave up (notably code 8 after the OACK, §7.8 T4): end quietly.
        * Anything else is illegal on a read transfer: ERROR 4, end (RFC 1350 §7).
        """
        if not self._started:
            raise RuntimeError("ReadSession.receive called before start")
        if self._outcome is not None:
            return Actions((), None, self._outcome, self._detail)
        if type(packet) is Ack:
            acked = self._acked
            block = acked + ((packet.block - acked) & _WIRE_MASK)
            if block == acked or block > self._max_sent:
                return Actions((), self._deadline)
            self._retries = 0
            if block == self._last:
                self._acked = block
                return self._finish(Outcome.COMPLETED, "")
            if self._adaptive:
                self._adapt_on_ack(block)
            self._acked = block
            return self._send_window(now)
        if isinstance(packet, Error):
            return self._finish(
                Outcome.ABORTED_BY_CLIENT, f"client error {int(packet.code)}: {packet.message}"
            )
        return self._finish(
            Outcome.ERROR,
            f"illegal {type(packet).__name__} packet on a read transfer",
            Error(ErrorCode.ILLEGAL_OPERATION, ErrorCode.ILLEGAL_OPERATION.default_message),
        )

    def timer_fired(self, now: float) -> Actions:
        """Retransmit what is unacknowledged, or give up after ``max_retries`` (RFC 1123 §4.2.3.2).

        The whole window is resent from the first unacknowledged block (RFC 7440 §4); while the
        OACK is unanswered, the OACK is resent.  Called before the deadline, it does nothing.
        """
        if self._outcome is not None:
            return Actions((), None, self._outcome, self._detail)
        deadline = self._deadline
        if deadline is None or now < deadline:
            return Actions((), deadline)
        if self._paced_next:
            return self._send_burst(now)
        self._retries += 1
        if self._retries > self._limits.max_retries:
            if self._acked >= 0 and self._max_sent == self._last:
                return self._finish(
                    Outcome.FINAL_ACK_MISSING,
                    f"last block sent, ACKs stopped at {self._acked} of {self._last}",
                )
            return self._finish(
                Outcome.TIMED_OUT, f"no progress after {self._limits.max_retries} retries"
            )
        if self._acked < 0:
            assert self._oack is not None
            self._retransmissions += 1
            self._deadline = now + self._interval()
            return Actions((self._oack,), self._deadline)
        if self._adaptive:
            self._burst = max(1, self._burst // 2)
        return self._send_window(now)

    # Internals.

    def _interval(self) -> float:
        """Retransmission interval: the negotiated timeout as is, else the default with back-off."""
        if self._fixed_timeout:
            return self._base_timeout
        return min(self._base_timeout * (1 << min(self._retries, 30)), self._limits.max_timeout)

    def _adapt_on_ack(self, block: int) -> None:
        """AIMD on the burst: an early ACK reports loss (halve); a whole window grows it by one."""
        if block < self._window_end:
            self._burst = max(1, self._burst // 2)
        elif self._window_full and self._burst < self._windowsize:
            self._burst += 1

    def _send_window(self, now: float) -> Actions:
        """Start the window ``_acked + 1`` .. ``_acked + window`` (clipped to the last block):
        all of it, or its first burst while an adaptive window paces."""
        first = self._acked + 1
        end = min(self._acked + self._windowsize, self._last)
        self._window_end = end
        self._window_full = end - first + 1 == self._windowsize
        self._paced_next = first
        return self._send_burst(now)

    def _send_burst(self, now: float) -> Actions:
        """Send from ``_paced_next`` up to one burst, or the rest of the window."""
        first = self._paced_next
        end = self._window_end
        if self._burst < end - first + 1:
            end = first + self._burst - 1
        try:
            datagrams = self._blocks(first, end)
        except (OSError, _SourceError) as failure:
            return self._finish(
                Outcome.ERROR,
                f"cannot read block {end}: {failure}",
                Error(ErrorCode.NOT_DEFINED, "Read error"),
            )
        if first <= self._max_sent:
            self._retransmissions += min(end, self._max_sent) - first + 1
        if end > self._max_sent:
            self._max_sent = end
        if end < self._window_end:
            self._paced_next = end + 1
            self._deadline = now + self._limits.pace_interval
        else:
            self._paced_next = 0
            self._deadline = now + self._interval()
        return Actions(datagrams, self._deadline)

    def _blocks(self, first: int, end: int) -> tuple[bytes, ...]:
        """DATA datagrams for blocks ``first..end``, from the cache or read in one run.

        The cache keeps every block from the first unacknowledged one on (a paced window's
        later bursts, and a retransmission, come from it)."""
        cache = self._cache
        keep = self._acked + 1
        drop = keep - self._cache_start
        if drop > 0:
            del cache[:drop]
            self._cache_start = keep
        have = self._cache_start + len(cache) - 1
        if end > have:
            blksize = self._blksize
            offset = have * blksize
            wanted = (end - have) * blksize
            data = self._source.read(offset, wanted)
            expected = min(wanted, self._size - offset)
            if len(data) != expected:
                raise _SourceError(f"short read at offset {offset}: file changed")
            block = have + 1
            if end == block:
                cache.append(encode_data(block & _WIRE_MASK, data))
            else:
                for start in range(0, wanted, blksize):
                    cache.append(encode_data(block & _WIRE_MASK, data[start : start + blksize]))
                    block += 1
        start = first - self._cache_start
        return tuple(cache[start : start + end - first + 1])

    def _finish(self, outcome: Outcome, detail: str, error: Error | None = None) -> Actions:
        self._outcome = outcome
        self._detail = detail
        self._lean = False
        self._deadline = None
        self._cache = []
        datagrams = (encode(error),) if error is not None else ()
        return Actions(datagrams, None, outcome, detail)


@attrs.frozen
class TransferSummary:
    """How a transfer went, for its log line: what the main process logs for every transfer."""

    outcome: Outcome
    detail: str
    bytes: int
    """Octets the client has: the size when delivered, else what it acknowledged."""
    size: int
    seconds: float
    blksize: int
    windowsize: int
    retransmissions: int

    @classmethod
    def of(
        cls, session: ReadSession, outcome: Outcome, detail: str, seconds: float
    ) -> TransferSummary:
        delivered = (
            session.size
            if outcome.delivered
            else min(session.size, session.acked_blocks * session.blksize)
        )
        return cls(
            outcome=outcome,
            detail=detail,
            bytes=delivered,
            size=session.size,
            seconds=round(seconds, 6),
            blksize=session.blksize,
            windowsize=session.windowsize,
            retransmissions=session.retransmissions,
        )


__all__ = [
    "DEFAULT_BLKSIZE",
    "MAX_BLKSIZE",
    "MAX_WINDOWSIZE",
    "MIN_BLKSIZE",
    "Actions",
    "BlockSource",
    "BytesSource",
    "Negotiation",
    "NetasciiSource",
    "Outcome",
    "ReadSession",
    "SessionLimits",
    "TransferSummary",
    "negotiate",
]
