"""Fuzzing the TFTP codec, option negotiation and the read-session state machine (issue 18).

Hypothesis drives mutated datagrams through the codec (whatever the bytes: a packet value or
:class:`MalformedPacket`, and the codec's quick peeks agree with the full decode), random
requests through :func:`negotiate` (every answer inside the server's limits, RFC 2347-2349 and
RFC 7440), and any interleaving of client packets and timer firings through a
:class:`ReadSession` (a :class:`RuleBasedStateMachine`): it never raises, every DATA it sends
carries the right octets for its block, nothing is sent after the end, and a client that
acknowledges what it got always ends up with the whole file; and any mix of requests, ACKs,
junk, late policy answers and time through the listener (:class:`ListenerMachine`) releases
every transfer slot exactly once.  The lab counterpart, which
throws tens of thousands of mutated datagrams at a real server, is in ``test_hardening``.
"""

from __future__ import annotations

import random
import shutil
import tempfile
from pathlib import Path
from typing import cast

from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule
from twisted.internet.defer import Deferred
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.bootconfig import BootConfigResolver
from pxetwist.context import IServerReactor, ITransferReactor, ServerContext
from pxetwist.events import BootEvent, BootEventBus, EventStage
from pxetwist.lab.tftpfuzz import mutated, oversized_request
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import Renderer, ServingContext
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.testing import config_from_yaml
from pxetwist.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    MalformedPacket,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    ack_block,
    decode,
    encode,
    encode_ack,
    is_error,
    is_request,
)
from pxetwist.tftp.protocol import FileResolver, ServerSettings, TftpListener, TftpServer
from pxetwist.tftp.session import (
    MAX_BLKSIZE,
    MIN_BLKSIZE,
    BytesSource,
    Outcome,
    ReadSession,
    SessionLimits,
    TransferSummary,
    negotiate,
)
from pxetwist.tftp.table import TransferSlot

from .fakes import SocketReactor
from .strategies import packets

_OPTION_NAMES = st.sampled_from(["blksize", "tsize", "windowsize", "timeout", "multicast", "x"])
_OPTION_VALUES = st.one_of(
    st.integers(-5, 70000).map(str),
    st.sampled_from(["", "0", "007", " 512", "1e3", "99999999999", "+8"]),
)
requests = st.builds(
    ReadRequest,
    st.just("f"),
    st.sampled_from(["octet", "netascii", "OCTET", "mail", "x"]),
    st.lists(st.tuples(_OPTION_NAMES, _OPTION_VALUES), max_size=8).map(tuple),
)
limits = st.builds(
    SessionLimits,
    mtu=st.integers(68, 9000),
    max_blksize=st.integers(MIN_BLKSIZE, MAX_BLKSIZE),
    max_window=st.integers(1, 128),
    window_bytes=st.one_of(st.none(), st.integers(512, 1 << 20)),
    timeout=st.floats(0.05, 2),
    max_retries=st.integers(0, 4),
)


@st.composite
def mutated_datagrams(draw: st.DrawFn) -> bytes:
    """A valid packet's bytes with one of: bits flipped, cut, extended, NULs inserted; or the
    lab fuzzer's own mutation from a drawn seed."""
    if draw(st.booleans()):
        return mutated("f.bin", random.Random(draw(st.integers(0, 2**32))))
    packet = draw(packets)
    data = bytearray(encode(packet))
    how = draw(st.sampled_from(["flip", "cut", "extend", "nul", "none"]))
    if how == "flip" and data:
        for index in draw(st.lists(st.integers(0, len(data) - 1), min_size=1, max_size=6)):
            data[index] ^= 1 << draw(st.integers(0, 7))
    elif how == "cut":
        del data[draw(st.integers(0, len(data))) :]
    elif how == "extend":
        data += draw(st.binary(min_size=1, max_size=64))
    elif how == "nul":
        data.insert(draw(st.integers(0, len(data))), 0)
    return bytes(data)


class CodecFuzzTests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None)
    @given(mutated_datagrams())
    def test_mutated_datagrams_decode_or_are_malformed(self, datagram: bytes) -> None:
        try:
            packet: Packet | None = decode(datagram)
        except MalformedPacket:
            packet = None
        # The peeks the hot paths use agree with the full decode.
        block = ack_block(datagram)
        if block is not None:
            self.assertEqual(packet, Ack(block))
        elif isinstance(packet, Ack):
            self.fail(f"ack_block missed {datagram!r}")
        if packet is not None:
            self.assertEqual(is_request(datagram), isinstance(packet, ReadRequest | WriteRequest))
            self.assertEqual(is_error(datagram), isinstance(packet, Error))
            # What decodes re-encodes to something that decodes the same (NUL-free fields).
            try:
                again = encode(packet)
            except ValueError:
                return  # e.g. a private error code's message with no wire form
            self.assertEqual(decode(again), packet)

    def test_oversized_requests_decode(self) -> None:
        """The two 6 KB shapes of issue 18 are valid RRQs; the server must cope with them."""
        for index in (0, 1):
            packet = decode(oversized_request("big.bin", index))
            assert isinstance(packet, ReadRequest)
            self.assertGreater(len(oversized_request("big.bin", index)), 6000)


class NegotiationFuzzTests(SynchronousTestCase):
    @settings(max_examples=1000, deadline=None)
    @given(requests, limits, st.integers(0, 2**40))
    def test_answers_stay_inside_the_limits(
        self, request: ReadRequest, bounds: SessionLimits, size: int
    ) -> None:
        negotiation = negotiate(request, bounds)
        if "blksize" in negotiation.accepted:
            self.assertGreaterEqual(negotiation.blksize, MIN_BLKSIZE)
            self.assertLessEqual(negotiation.blksize, bounds.blksize_limit)
        else:
            self.assertEqual(negotiation.blksize, 512)  # RFC 1350 without the option
        self.assertGreaterEqual(negotiation.windowsize, 1)
        self.assertLessEqual(negotiation.windowsize, bounds.max_window)
        if bounds.window_bytes is not None and negotiation.windowsize > 1:
            self.assertLessEqual(negotiation.blksize * negotiation.windowsize, bounds.window_bytes)
        names = [name for name, _ in negotiation.oack(size)]
        self.assertEqual(len(names), len(set(names)))  # first occurrence wins
        self.assertLessEqual(set(names), {name for name, _ in request.options})
        oack = decode(encode(OptionAck(negotiation.oack(size))))
        self.assertEqual(oack, OptionAck(negotiation.oack(size)))
        # The session built from the negotiation announces exactly that OACK.
        session = ReadSession(negotiation, BytesSource(b"x" * 100), bounds)
        if negotiation.mode_supported and names:
            first = session.start(0.0).datagrams
            expected = negotiation.oack(session.size)
            self.assertEqual(decode(first[0]), OptionAck(expected))


class ReadSessionMachine(RuleBasedStateMachine):
    """A client that does anything, in any order, against one read session."""

    @initialize(
        content=st.binary(max_size=6000),
        request=requests,
        bounds=limits,
    )
    def start(self, content: bytes, request: ReadRequest, bounds: SessionLimits) -> None:
        self.now = 0.0
        self.session = ReadSession(request, BytesSource(content), bounds)
        self.served = bytes(self.session._source.read(0, self.session.size))
        self.blksize = self.session.blksize
        self.got: dict[int, bytes] = {}
        self.highest = 0  # highest absolute block received in order
        self.acked_before = -1
        self.ended = False
        self.outcome: Outcome | None = None
        self._take(self.session.start(self.now))

    def _take(self, actions: object) -> None:
        from pxetwist.tftp.session import Actions

        assert isinstance(actions, Actions)
        if self.ended:
            assert actions.datagrams == (), "sent after the end"
        for datagram in actions.datagrams:
            packet = decode(datagram)
            if isinstance(packet, Data):
                absolute = self._absolute(packet.block)
                offset = (absolute - 1) * self.blksize
                assert packet.payload == self.served[offset : offset + self.blksize], absolute
                self.got[absolute] = packet.payload
                while self.highest + 1 in self.got:
                    self.highest += 1
            else:
                assert isinstance(packet, OptionAck | Error), packet
        if actions.outcome is not None:
            self.ended = True
            self.outcome = actions.outcome
        else:
            assert actions.deadline is not None, "a running session always has a deadline"

    def _absolute(self, wire: int) -> int:
        """The absolute block of a wire number: the one in the window after what is acked."""
        base = self.session.acked_blocks
        return base + ((wire - base) & 0xFFFF)

    @rule(block=st.integers(0, 0xFFFF))
    def any_ack(self, block: int) -> None:
        self._take(self.session.receive(Ack(block), self.now))

    @precondition(lambda self: not self.ended)
    @rule()
    def ack_what_arrived(self) -> None:
        """The well-behaved client: acknowledge the highest block received in order."""
        self._take(self.session.receive(Ack(self.highest & 0xFFFF), self.now))

    @rule(packet=packets)
    def any_packet(self, packet: Packet) -> None:
        if isinstance(packet, Ack):
            return
        self._take(self.session.receive(packet, self.now))

    @rule(seconds=st.floats(0, 20))
    def time_passes(self, seconds: float) -> None:
        self.now += seconds
        self._take(self.session.timer_fired(self.now))

    @rule(data=st.binary(max_size=40))
    def fast_path_ack(self, data: bytes) -> None:
        block = ack_block(encode_ack(self.highest & 0xFFFF) + data)
        assert block is not None
        datagrams = self.session.receive_ack(block, self.now)
        if datagrams is not None:
            from pxetwist.tftp.session import Actions

            self._take(Actions(datagrams, self.session.deadline))

    @invariant()
    def consistent(self) -> None:
        session = self.session
        assert session.acked_blocks >= max(self.acked_before, 0)
        self.acked_before = session.acked_blocks
        assert session.finished == self.ended
        summary = TransferSummary.of(session, self.outcome or Outcome.ERROR, "", 0.0)
        assert 0 <= summary.bytes <= session.size
        if self.outcome is Outcome.COMPLETED:
            assert b"".join(self.got[b] for b in range(1, session.block_count + 1)) == (self.served)


ReadSessionMachine.TestCase.settings = settings(
    max_examples=300, stateful_step_count=60, deadline=None
)
ReadSessionMachineTests = ReadSessionMachine.TestCase


class CooperativeClientTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(st.binary(max_size=20000), requests, limits, st.randoms(use_true_random=False))
    def test_a_client_that_acks_what_arrived_gets_the_whole_file(
        self, content: bytes, request: ReadRequest, bounds: SessionLimits, rng: random.Random
    ) -> None:
        """Even when datagrams are lost (a third of them, at random), with retransmission on
        timeout: the file arrives whole, or the session gives up after its retries."""
        session = ReadSession(request, BytesSource(content), bounds)
        actions = session.start(0.0)
        now = 0.0
        got: dict[int, bytes] = {}
        highest = 0
        for _ in range(20000):
            if actions.finished:
                break
            for datagram in actions.datagrams:
                if rng.random() < 0.33:
                    continue  # lost
                packet = decode(datagram)
                if isinstance(packet, Data):
                    got[session.acked_blocks + ((packet.block - session.acked_blocks) & 0xFFFF)] = (
                        packet.payload
                    )
                    while highest + 1 in got:
                        highest += 1
                elif isinstance(packet, OptionAck):
                    highest = 0
            if actions.datagrams and rng.random() >= 0.33:
                actions = session.receive(Ack(highest & 0xFFFF), now)
                continue
            assert actions.deadline is not None
            now = actions.deadline
            actions = session.timer_fired(now)
        self.assertTrue(actions.finished)
        if actions.outcome is Outcome.COMPLETED:
            whole = b"".join(got[b] for b in range(1, session.block_count + 1))
            self.assertEqual(whole, session._source.read(0, session.size))
        else:
            self.assertIn(
                actions.outcome,
                (Outcome.TIMED_OUT, Outcome.FINAL_ACK_MISSING, Outcome.ERROR),
            )
            if actions.outcome is Outcome.ERROR:
                self.assertFalse(session.negotiation.mode_supported)


class ListenerMachine(RuleBasedStateMachine):
    """Clients do anything to port 69 (``single_port``: the listener's own port carries the
    transfers, so no sockets and no waits), with a policy that answers late or never, and time
    passes: ``busy`` is always the slots not yet released, never more than the limit, every
    released slot is exactly one event, and once everything times out nothing is left."""

    LIMIT = 3

    def __init__(self) -> None:
        super().__init__()
        self.work = Path(tempfile.mkdtemp(prefix="pxetwist-tftp-machine-"))
        (self.work / "a").write_bytes(b"a" * 1500)
        (self.work / "b").write_bytes(b"")
        self.reactor = SocketReactor()
        config = config_from_yaml(f"tftp: {{root: {self.work}}}\nhttp: {{enabled: false}}")
        self.decisions: list[Deferred[BootDecision | None]] = []
        machine = self

        class Late:
            def decide(self, request: object) -> Deferred[BootDecision | None]:
                machine.decisions.append(Deferred())
                return machine.decisions[-1]

        self.bus = BootEventBus()
        self.events: list[BootEvent] = []
        self.bus.subscribe(self.events.append)
        context = ServerContext.build(
            config,
            cast(PolicyChain, Late()),
            cast(IServerReactor, self.reactor),
            sightings=SightingRegistry(self.reactor.seconds, neighbours=dict),
        )
        self.server = TftpServer(
            ServerSettings(root=self.work, max_transfers=self.LIMIT, single_port=True, retries=2),
            FileResolver(BootConfigResolver(context, Renderer())),
            cast(ITransferReactor, self.reactor),
            self.bus,
        )
        self.listener = TftpListener(
            self.server, "127.0.0.1", ServingContext("127.0.0.1", 8080, 69, None, self.work)
        )
        self.port = self.reactor.listenUDP(69, self.listener, interface="127.0.0.1")
        self.claimed = 0
        self.released = {True: 0, False: 0}
        table = self.server.table
        release = table._release

        def counted(slot: TransferSlot) -> bool:
            done = release(slot)
            self.released[done] += 1
            return done

        table._release = counted  # type: ignore[method-assign]

    def teardown(self) -> None:
        self.server.abort_all("test over")
        shutil.rmtree(self.work, ignore_errors=True)

    def _send(self, peer: int, datagram: bytes) -> None:
        before = self.server.table._next_id
        self.port.receive(datagram, ("10.0.0.9", 2000 + peer))
        self.claimed += self.server.table._next_id - before

    @rule(peer=st.integers(0, 4), name=st.sampled_from(["a", "b", "missing", "../x",
          "pxelinux.cfg/01-52-54-00-77-00-10"]), options=st.booleans())  # fmt: skip
    def read_request(self, peer: int, name: str, options: bool) -> None:
        extra = (("blksize", "1024"), ("tsize", "0"), ("windowsize", "2")) if options else ()
        self._send(peer, encode(ReadRequest(name, "octet", extra)))

    @rule(peer=st.integers(0, 4), block=st.integers(0, 5))
    def ack(self, peer: int, block: int) -> None:
        self._send(peer, encode_ack(block))

    @rule(peer=st.integers(0, 4), datagram=mutated_datagrams())
    def junk(self, peer: int, datagram: bytes) -> None:
        self._send(peer, datagram)

    @precondition(lambda self: any(not d.called for d in self.decisions))
    @rule(index=st.integers(0, 50), kernel=st.booleans())
    def policy_answers(self, index: int, kernel: bool) -> None:
        waiting = [d for d in self.decisions if not d.called]
        decision = BootDecision(kernel="k", reason="late") if kernel else None
        waiting[index % len(waiting)].callback(decision)

    @rule(seconds=st.floats(0, 5))
    def time_passes(self, seconds: float) -> None:
        self.reactor.advance(seconds)

    @rule()
    def everything_ends(self) -> None:
        """The policy answers what it owes and every transfer times out: no slot is left."""
        for deferred in self.decisions:
            if not deferred.called:
                deferred.callback(None)
        for _ in range(40):
            self.reactor.advance(10)
        assert self.server.busy == 0, self.server.busy

    @invariant()
    def one_release_per_slot(self) -> None:
        busy = self.server.busy
        assert busy <= self.LIMIT
        assert self.released[True] == self.claimed - busy, (self.released, self.claimed, busy)
        assert self.released[False] == 0, "a slot was released twice"
        transfers = sum(1 for e in self.events if e.stage is EventStage.TFTP_TRANSFER)
        assert transfers <= self.released[True]


ListenerMachine.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None
)
ListenerMachineTests = ListenerMachine.TestCase


__all__ = ["ErrorCode", "ListenerMachineTests", "ReadSessionMachineTests"]
