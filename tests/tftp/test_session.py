"""The read-transfer state machine, driven with plain floats for time.

Cites RFC 1350 (lockstep, end of transfer), RFC 2347-2349 (options), RFC 7440 (windows), RFC 1123
§4.2.3.1 (Sorcerer's Apprentice) and protocol-reference §5, §6 and §7.8-7.9.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator

import attrs
from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    OptionAck,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
    encode_ack,
)
from pxetwist.tftp.session import (
    Actions,
    BytesSource,
    NetasciiSource,
    Outcome,
    ReadSession,
    SessionLimits,
    negotiate,
)
from pxetwist.tftp.shared import SharedBlocks

from .test_packet import T1_RRQ, T2_OACK, T4_ABORT, T5_RRQ


def rrq(*options: tuple[str, str], mode: str = "octet", filename: str = "f") -> ReadRequest:
    return ReadRequest(filename, mode, tuple(options))


def content(size: int) -> bytes:
    """Deterministic, non-repeating-ish content so misplaced blocks are noticed."""
    return bytes((index * 7 + index // 251) & 0xFF for index in range(size))


def blocks(actions: Actions) -> list[Data]:
    decoded = [decode(datagram) for datagram in actions.datagrams]
    assert all(isinstance(packet, Data) for packet in decoded), decoded
    return [packet for packet in decoded if isinstance(packet, Data)]


def block_numbers(actions: Actions) -> list[int]:
    return [packet.block for packet in blocks(actions)]


class CountingSource:
    """A BytesSource that records every read, to check what the session reads and when."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self.reads: list[tuple[int, int]] = []

    @property
    def size(self) -> int:
        return len(self._data)

    def read(self, offset: int, length: int) -> bytes:
        self.reads.append((offset, length))
        return self._data[offset : offset + length]


class VectorTests(SynchronousTestCase):
    """protocol-reference §7.8 T1-T5 as a conversation."""

    def test_t2_oack_for_t1(self) -> None:
        """T1 against a 70144-byte file gives exactly the bytes of T2 (RFC 2348, RFC 2349)."""
        request = decode(T1_RRQ)
        assert isinstance(request, ReadRequest)
        session = ReadSession(request, BytesSource(content(70144)))
        actions = session.start(100.0)
        self.assertEqual(actions.datagrams, (T2_OACK,))
        self.assertEqual(actions.deadline, 101.0)
        self.assertFalse(actions.finished)

    def test_t3_ack0_gives_data1(self) -> None:
        """RFC 2347: after the OACK the client's ACK 0 starts the data, blksize 1432."""
        data = content(70144)
        request = decode(T1_RRQ)
        assert isinstance(request, ReadRequest)
        session = ReadSession(request, BytesSource(data))
        session.start(0.0)
        actions = session.receive(Ack(0), 0.1)
        self.assertEqual(actions.datagrams, (b"\x00\x03\x00\x01" + data[:1432],))
        self.assertEqual(session.blksize, 1432)
        self.assertEqual(session.block_count, 70144 // 1432 + 1)

    def test_t4_edk2_tsize_probe_ends_quietly(self) -> None:
        """§5 #12: ERROR 8 right after the OACK ends the transfer: no retransmit, no error sent."""
        session = ReadSession(
            rrq(("tsize", "0"), ("blksize", "1468"), filename="shimx64.efi"),
            BytesSource(content(5000)),
        )
        start = session.start(0.0)
        self.assertEqual(
            decode(start.datagrams[0]), OptionAck((("tsize", "5000"), ("blksize", "1468")))
        )
        actions = session.receive(decode(T4_ABORT), 0.01)
        self.assertEqual(actions.datagrams, ())
        self.assertIsNone(actions.deadline)
        self.assertEqual(actions.outcome, Outcome.ABORTED_BY_CLIENT)
        self.assertIn("User aborted the transfer", actions.detail)
        late = session.timer_fired(10.0)
        self.assertEqual(late.datagrams, ())
        self.assertEqual(late.outcome, Outcome.ABORTED_BY_CLIENT)
        self.assertEqual(session.retransmissions, 0)

    def test_t5_windowsize(self) -> None:
        """RFC 7440: windowsize 8 is acknowledged and 8 blocks follow ACK 0."""
        request = decode(T5_RRQ)
        assert isinstance(request, ReadRequest)
        session = ReadSession(request, BytesSource(content(1468 * 20)))
        oack = decode(session.start(0.0).datagrams[0])
        self.assertEqual(oack, OptionAck((("blksize", "1468"), ("windowsize", "8"))))
        self.assertEqual(block_numbers(session.receive(Ack(0), 0.0)), list(range(1, 9)))


class NegotiationTests(SynchronousTestCase):
    """RFC 2347 §§ "Negotiation", RFC 2348, RFC 2349, RFC 7440 §3; checklist §7.9."""

    def test_no_options_is_plain_rfc1350(self) -> None:
        """No accepted option: no OACK, DATA 1 with 512 octets straight away (RFC 1350 §6)."""
        data = content(1000)
        session = ReadSession(rrq(), BytesSource(data))
        actions = session.start(0.0)
        self.assertEqual(actions.datagrams, (b"\x00\x03\x00\x01" + data[:512],))

    def test_only_unknown_options_is_plain_rfc1350(self) -> None:
        session = ReadSession(rrq(("rollover", "0"), ("multicast", "")), BytesSource(b"x"))
        self.assertEqual(block_numbers(session.start(0.0)), [1])

    def test_oack_has_only_requested_and_accepted_options(self) -> None:
        """§5 #11: EFI clients reject an OACK carrying options they did not ask for."""
        session = ReadSession(
            rrq(("foo", "bar"), ("blksize", "1024"), ("timeout", "0")), BytesSource(b"x")
        )
        self.assertEqual(decode(session.start(0.0).datagrams[0]), OptionAck((("blksize", "1024"),)))

    def test_blksize_clamped_to_mtu(self) -> None:
        """RFC 2348: never larger than asked; §5 #13: never larger than MTU - 32."""
        limits = SessionLimits()
        self.assertEqual(limits.blksize_limit, 1468)
        for asked, answered in (
            ("1432", 1432),
            ("1468", 1468),
            ("1469", 1468),
            ("65464", 1468),
            ("70000", 1468),
            ("8", 8),
            ("512", 512),
        ):
            negotiation = negotiate(rrq(("blksize", asked)), limits)
            self.assertEqual(negotiation.blksize, answered, asked)
            self.assertEqual(negotiation.oack(0), (("blksize", str(answered)),))

    def test_blksize_out_of_range_or_garbage_is_ignored(self) -> None:
        for asked in ("7", "0", "", "abc", "-512", "+512", " 512", "1_024", "١٢٣"):
            negotiation = negotiate(rrq(("blksize", asked)), SessionLimits())
            self.assertEqual(negotiation.blksize, 512, asked)
            self.assertEqual(negotiation.oack(0), (), asked)

    def test_blksize_limits(self) -> None:
        self.assertEqual(SessionLimits(ipv6=True).blksize_limit, 1448)
        self.assertEqual(SessionLimits(mtu=9000).blksize_limit, 8968)
        self.assertEqual(SessionLimits(mtu=9000, max_blksize=4096).blksize_limit, 4096)
        self.assertEqual(SessionLimits(mtu=70000).blksize_limit, 65464)
        self.assertEqual(SessionLimits(mtu=68).blksize_limit, 36)
        self.assertRaises(ValueError, SessionLimits, max_blksize=7)
        self.assertRaises(ValueError, SessionLimits, max_window=0)
        self.assertRaises(ValueError, SessionLimits, timeout=0)

    def test_tsize_is_the_real_size(self) -> None:
        """RFC 2349 §4: the RRQ carries 0, the OACK the file size."""
        negotiation = negotiate(rrq(("tsize", "0")), SessionLimits())
        self.assertTrue(negotiation.tsize)
        self.assertEqual(negotiation.oack(123456789), (("tsize", "123456789"),))

    def test_timeout_range(self) -> None:
        """RFC 2349 §3: 1-255 seconds, echoed exactly or left out."""
        for asked, accepted in (("1", True), ("255", True), ("0", False), ("256", False)):
            negotiation = negotiate(rrq(("timeout", asked)), SessionLimits())
            self.assertEqual(negotiation.oack(0), ((("timeout", asked),) if accepted else ()))

    def test_windowsize_clamped_to_server_max(self) -> None:
        """RFC 7440 §3: the server may answer a smaller window."""
        limits = SessionLimits(max_window=16)
        for asked, answered in (("1", 1), ("16", 16), ("64", 16), ("65535", 16)):
            negotiation = negotiate(rrq(("windowsize", asked)), limits)
            self.assertEqual(negotiation.windowsize, answered)
            self.assertEqual(negotiation.oack(0), (("windowsize", str(answered)),))
        self.assertEqual(negotiate(rrq(("windowsize", "0")), limits).oack(0), ())

    def test_first_occurrence_wins(self) -> None:
        negotiation = negotiate(rrq(("blksize", "1024"), ("blksize", "256")), SessionLimits())
        self.assertEqual(negotiation.oack(0), (("blksize", "1024"),))

    def test_oack_order_follows_request(self) -> None:
        negotiation = negotiate(
            rrq(("windowsize", "4"), ("tsize", "0"), ("timeout", "3"), ("blksize", "1432")),
            SessionLimits(),
        )
        self.assertEqual(
            [name for name, _ in negotiation.oack(10)],
            ["windowsize", "tsize", "timeout", "blksize"],
        )

    def test_oack_is_retransmitted_until_ack0(self) -> None:
        session = ReadSession(rrq(("tsize", "0")), BytesSource(b"abc"))
        first = session.start(0.0)
        self.assertEqual(session.timer_fired(1.0).datagrams, first.datagrams)
        self.assertEqual(session.receive(Ack(1), 1.1).datagrams, ())  # not an answer to OACK
        self.assertEqual(block_numbers(session.receive(Ack(0), 1.2)), [1])

    def test_unsupported_mode(self) -> None:
        session = ReadSession(rrq(mode="mail"), BytesSource(b"abc"))
        actions = session.start(0.0)
        self.assertEqual(actions.outcome, Outcome.ERROR)
        packet = decode(actions.datagrams[0])
        assert isinstance(packet, Error)
        self.assertEqual(packet.code, ErrorCode.ILLEGAL_OPERATION)


class LockstepTests(SynchronousTestCase):
    """RFC 1350 §6: one block, one ACK."""

    def run_lockstep(self, data: bytes, *options: tuple[str, str]) -> list[Data]:
        session = ReadSession(rrq(*options), BytesSource(data))
        actions = session.start(0.0)
        if options:
            actions = session.receive(Ack(0), 0.0)
        received: list[Data] = []
        while not actions.finished:
            (packet,) = blocks(actions)
            received.append(packet)
            actions = session.receive(Ack(packet.block), 0.0)
        self.assertEqual(actions.outcome, Outcome.COMPLETED)
        self.assertEqual(actions.datagrams, ())
        self.assertEqual(b"".join(packet.payload for packet in received), data)
        return received

    def test_transfer(self) -> None:
        received = self.run_lockstep(content(5000))
        self.assertEqual([packet.block for packet in received], list(range(1, 11)))
        self.assertEqual(len(received[-1].payload), 5000 - 9 * 512)

    def test_exact_multiple_ends_with_empty_data(self) -> None:
        """RFC 1350 §6: a block shorter than blksize ends the transfer, so n x 512 needs an
        empty DATA n+1."""
        received = self.run_lockstep(content(1024))
        self.assertEqual([len(packet.payload) for packet in received], [512, 512, 0])

    def test_exact_multiple_with_negotiated_blksize(self) -> None:
        received = self.run_lockstep(content(1432 * 3), ("blksize", "1432"))
        self.assertEqual([len(packet.payload) for packet in received], [1432] * 3 + [0])

    def test_empty_file_is_one_empty_block(self) -> None:
        received = self.run_lockstep(b"")
        self.assertEqual(received, [Data(1, b"")])

    def test_rollover_past_65535_blocks(self) -> None:
        """§6.5: 70000 blocks of 8 octets; wire numbers wrap 65535 -> 0 and the ACKs with them."""
        data = content(70000 * 8 - 3)
        received = self.run_lockstep(data, ("blksize", "8"))
        self.assertEqual(len(received), 70000)
        numbers = [packet.block for packet in received]
        self.assertEqual(numbers[65533:65537], [65534, 65535, 0, 1])
        self.assertEqual(numbers[-1], 70000 - 65536)


class WindowTests(SynchronousTestCase):
    """RFC 7440 §4: the sender sends a window, the receiver ACKs the last block it got in order."""

    def started(self, size: int, window: int, **limits: object) -> tuple[ReadSession, bytes]:
        data = content(size)
        session = ReadSession(
            rrq(("blksize", "8"), ("windowsize", str(window))),
            BytesSource(data),
            SessionLimits(**limits),  # type: ignore[arg-type]
        )
        session.start(0.0)
        return session, data

    def test_windowed_transfer(self) -> None:
        session, data = self.started(75, window=4)  # 10 blocks, the last 3 octets
        first = session.receive(Ack(0), 0.0)
        self.assertEqual(block_numbers(first), [1, 2, 3, 4])
        self.assertEqual(block_numbers(session.receive(Ack(4), 0.1)), [5, 6, 7, 8])
        last = session.receive(Ack(8), 0.2)
        self.assertEqual(block_numbers(last), [9, 10])
        self.assertEqual(blocks(last)[-1].payload, data[72:])
        done = session.receive(Ack(10), 0.3)
        self.assertEqual(done.outcome, Outcome.COMPLETED)

    def test_loss_in_the_middle_of_a_window(self) -> None:
        """Block 3 lost: the receiver ACKs 2, the sender restarts the window at 3."""
        session, _ = self.started(200, window=4)
        session.receive(Ack(0), 0.0)
        self.assertEqual(block_numbers(session.receive(Ack(2), 0.1)), [3, 4, 5, 6])
        self.assertEqual(session.retransmissions, 2)  # 3 and 4 went out twice

    def test_timeout_resends_window_from_first_unacked(self) -> None:
        session, _ = self.started(200, window=4)
        first = session.receive(Ack(0), 0.0)
        self.assertEqual(first.deadline, 1.0)
        again = session.timer_fired(1.0)
        self.assertEqual(again.datagrams, first.datagrams)
        self.assertEqual(again.deadline, 3.0)  # back-off: 2 s
        session.receive(Ack(2), 3.5)
        self.assertEqual(block_numbers(session.timer_fired(4.5)), [3, 4, 5, 6])

    def test_duplicate_acks_send_nothing(self) -> None:
        """RFC 1123 §4.2.3.1: a duplicate ACK must not trigger a retransmission."""
        session, _ = self.started(200, window=4)
        session.receive(Ack(0), 0.0)
        progress = session.receive(Ack(4), 0.1)
        for when in (0.2, 0.3, 0.4):
            duplicate = session.receive(Ack(4), when)
            self.assertEqual(duplicate.datagrams, ())
            self.assertEqual(duplicate.deadline, progress.deadline)
            self.assertFalse(duplicate.finished)
        self.assertEqual(session.retransmissions, 0)

    def test_stale_and_future_acks_send_nothing(self) -> None:
        session, _ = self.started(200, window=4)
        session.receive(Ack(0), 0.0)
        session.receive(Ack(4), 0.1)
        self.assertEqual(session.receive(Ack(2), 0.2).datagrams, ())  # older than acked
        self.assertEqual(session.receive(Ack(9), 0.2).datagrams, ())  # never sent
        self.assertEqual(session.receive(Ack(0), 0.2).datagrams, ())  # the OACK again
        self.assertEqual(session.acked_blocks, 4)

    def test_late_ack_after_retransmission(self) -> None:
        """The ACK of a window arrives after its retransmission: it still counts, once."""
        session, _ = self.started(200, window=4)
        session.receive(Ack(0), 0.0)
        session.timer_fired(1.0)  # resends 1-4
        self.assertEqual(block_numbers(session.receive(Ack(4), 1.1)), [5, 6, 7, 8])
        self.assertEqual(session.receive(Ack(4), 1.2).datagrams, ())  # the resent 1-4 re-acked

    def test_reordered_and_duplicated_acks(self) -> None:
        session, _ = self.started(200, window=4)
        session.receive(Ack(0), 0.0)
        self.assertEqual(block_numbers(session.receive(Ack(4), 0.1)), [5, 6, 7, 8])
        self.assertEqual(block_numbers(session.receive(Ack(6), 0.2)), [7, 8, 9, 10])
        self.assertEqual(session.receive(Ack(5), 0.3).datagrams, ())  # overtaken by ACK 6
        self.assertEqual(session.receive(Ack(6), 0.3).datagrams, ())

    def test_rollover_inside_a_window(self) -> None:
        """ACK wire numbers are resolved against the blocks in flight, across 65535 -> 0."""
        session, data = self.started(8 * 65540 + 5, window=16)
        acked = 0
        actions = session.receive(Ack(0), 0.0)
        received: list[bytes] = []
        while not actions.finished:
            packets = blocks(actions)
            for offset, packet in enumerate(packets, start=acked + 1):
                self.assertEqual(packet.block, offset & 0xFFFF)
            received.extend(packet.payload for packet in packets)
            acked += len(packets)
            actions = session.receive(Ack(packets[-1].block), 0.0)
        self.assertEqual(actions.outcome, Outcome.COMPLETED)
        self.assertEqual(b"".join(received), data)

    def test_rollover_partial_ack(self) -> None:
        """A partial ACK whose wire number wrapped (block 65536 is wire 0)."""
        data = content(8 * 65545)
        session = ReadSession(
            rrq(("blksize", "8"), ("windowsize", "8")), BytesSource(data), SessionLimits()
        )
        session.start(0.0)
        session.receive(Ack(0), 0.0)
        for window_end in range(8, 65531, 8):
            session.receive(Ack(window_end & 0xFFFF), 0.0)
        self.assertEqual(session.acked_blocks, 65528)
        actions = session.receive(Ack(65528), 0.0)  # duplicate
        self.assertEqual(actions.datagrams, ())
        # In flight: 65529..65536; the client got up to 65536 (wire 0) then lost nothing.
        self.assertEqual(block_numbers(session.receive(Ack(0), 0.0)), list(range(1, 9)))
        self.assertEqual(session.acked_blocks, 65536)
        # Now a partial ACK for absolute 65539 (wire 3) restarts at wire 4.
        self.assertEqual(block_numbers(session.receive(Ack(3), 0.0))[0], 4)


class RetryTests(SynchronousTestCase):
    """Retransmission on timeout only, with back-off, bounded (RFC 1123 §4.2.3.1-2, §6.4)."""

    def test_backoff_and_give_up(self) -> None:
        limits = SessionLimits(timeout=1.0, max_timeout=4.0, max_retries=4)
        session = ReadSession(rrq(), BytesSource(content(2000)), limits)
        first = session.start(0.0)
        deadlines = [first.deadline]
        for _ in range(4):
            assert first.deadline is not None
            actions = session.timer_fired(deadlines[-1] or 0.0)
            self.assertEqual(actions.datagrams, first.datagrams)
            deadlines.append(actions.deadline)
        self.assertEqual(deadlines, [1.0, 3.0, 7.0, 11.0, 15.0])
        final = session.timer_fired(15.0)
        self.assertEqual(final.outcome, Outcome.TIMED_OUT)
        self.assertEqual(final.datagrams, ())
        self.assertIsNone(final.deadline)
        self.assertFalse(Outcome.TIMED_OUT.delivered)

    def test_premature_timer_does_nothing(self) -> None:
        session = ReadSession(rrq(), BytesSource(content(2000)))
        first = session.start(0.0)
        early = session.timer_fired(0.5)
        self.assertEqual(early.datagrams, ())
        self.assertEqual(early.deadline, first.deadline)

    def test_progress_resets_backoff(self) -> None:
        session = ReadSession(rrq(), BytesSource(content(2000)))
        session.start(0.0)
        session.timer_fired(1.0)
        self.assertEqual(session.receive(Ack(1), 1.5).deadline, 2.5)

    def test_negotiated_timeout_is_used_without_backoff(self) -> None:
        """RFC 2349 §3: the client chose the retransmission interval."""
        session = ReadSession(rrq(("timeout", "3")), BytesSource(content(2000)))
        self.assertEqual(session.start(0.0).deadline, 3.0)
        self.assertEqual(session.timer_fired(3.0).deadline, 6.0)
        self.assertEqual(session.receive(Ack(0), 6.5).deadline, 9.5)
        self.assertEqual(session.timer_fired(9.5).deadline, 12.5)

    def test_missing_final_ack_is_not_a_failure(self) -> None:
        """§5 #14, checklist §7.9: the client got everything but never sent the last ACK."""
        session = ReadSession(rrq(), BytesSource(content(600)), SessionLimits(max_retries=2))
        session.start(0.0)
        self.assertEqual(block_numbers(session.receive(Ack(1), 0.1)), [2])
        self.assertEqual(block_numbers(session.timer_fired(5.0)), [2])
        self.assertEqual(block_numbers(session.timer_fired(50.0)), [2])
        final = session.timer_fired(500.0)
        self.assertEqual(final.outcome, Outcome.FINAL_ACK_MISSING)
        self.assertTrue(Outcome.FINAL_ACK_MISSING.delivered)

    def test_give_up_during_oack(self) -> None:
        session = ReadSession(rrq(("tsize", "0")), BytesSource(b"x"), SessionLimits(max_retries=1))
        session.start(0.0)
        self.assertEqual(len(session.timer_fired(1.0).datagrams), 1)
        self.assertEqual(session.timer_fired(3.0).outcome, Outcome.TIMED_OUT)

    def test_with_twisted_clock(self) -> None:
        """The deadline contract with a reactor clock: one timer, moved only when it would fire
        too late; an early firing is harmless and re-arms it for the real deadline."""
        clock = Clock()
        session = ReadSession(rrq(), BytesSource(content(3000)), SessionLimits(max_retries=1))
        sent: list[bytes] = []
        timer: list[IDelayedCall] = []

        def fire() -> None:
            timer.clear()
            apply(session.timer_fired(clock.seconds()))

        def apply(actions: Actions) -> None:
            sent.extend(actions.datagrams)
            if actions.deadline is None:
                for call in timer:
                    call.cancel()
                timer.clear()
            elif not timer:
                timer.append(clock.callLater(actions.deadline - clock.seconds(), fire))
            elif actions.deadline < timer[0].getTime():
                timer[0].reset(actions.deadline - clock.seconds())

        apply(session.start(clock.seconds()))
        clock.advance(0.5)
        apply(session.receive(Ack(1), clock.seconds()))  # deadline 1.5, the timer says 1.0
        clock.advance(0.5)  # early: nothing sent, re-armed for 1.5
        self.assertEqual(len(sent), 2)
        clock.advance(0.5)  # 1.5: block 2 again, back-off to 2 s
        self.assertEqual(len(sent), 3)
        clock.pump([0.5] * 10)
        self.assertEqual(session.outcome, Outcome.TIMED_OUT)
        self.assertEqual(sent[1:], [sent[1]] * 2)
        self.assertEqual(clock.getDelayedCalls(), [])


class ClientErrorTests(SynchronousTestCase):
    def test_error_mid_transfer_aborts(self) -> None:
        session = ReadSession(rrq(), BytesSource(content(2000)))
        session.start(0.0)
        actions = session.receive(Error(ErrorCode.DISK_FULL, "too big"), 0.1)
        self.assertEqual(actions.outcome, Outcome.ABORTED_BY_CLIENT)
        self.assertEqual(actions.datagrams, ())
        self.assertEqual(session.receive(Ack(1), 0.2).datagrams, ())

    def test_illegal_packet_ends_with_error_4(self) -> None:
        """RFC 1350 §7: a DATA (or request, or OACK) on a read transfer is illegal."""
        for packet in (
            Data(1, b"x"),
            WriteRequest("f", "octet"),
            ReadRequest("f", "octet"),
            OptionAck(()),
        ):
            session = ReadSession(rrq(), BytesSource(content(2000)))
            session.start(0.0)
            actions = session.receive(packet, 0.1)
            self.assertEqual(actions.outcome, Outcome.ERROR)
            self.assertEqual(actions.datagrams, (encode(Error(4, "Illegal TFTP operation")),))

    def test_events_before_start_are_a_bug(self) -> None:
        session = ReadSession(rrq(), BytesSource(b""))
        self.assertRaises(RuntimeError, session.receive, Ack(1), 0.0)
        session.start(0.0)
        self.assertRaises(RuntimeError, session.start, 0.0)


class ShrinkingSource(CountingSource):
    def read(self, offset: int, length: int) -> bytes:
        return super().read(offset, length)[:-1]


class FailingSource(CountingSource):
    def read(self, offset: int, length: int) -> bytes:
        raise OSError(5, "Input/output error")


class SourceTests(SynchronousTestCase):
    """Read only what is sent; a retransmission re-sends cached bytes."""

    def test_reads_one_run_per_window_and_nothing_on_retransmit(self) -> None:
        source = CountingSource(content(8 * 100))
        session = ReadSession(rrq(("blksize", "8"), ("windowsize", "10")), source)
        session.start(0.0)
        self.assertEqual(source.reads, [])
        session.receive(Ack(0), 0.0)
        self.assertEqual(source.reads, [(0, 80)])
        session.timer_fired(1.0)
        session.receive(Ack(4), 1.5)  # partial: 5-10 cached, 11-14 new
        self.assertEqual(source.reads, [(0, 80), (80, 32)])
        self.assertLessEqual(sum(length for _, length in source.reads), 112)

    def test_short_read_is_an_error_not_a_short_block(self) -> None:
        session = ReadSession(rrq(), ShrinkingSource(content(2000)))
        actions = session.start(0.0)
        self.assertEqual(actions.outcome, Outcome.ERROR)
        self.assertEqual(actions.datagrams, (encode(Error(0, "Read error")),))

    def test_os_error_is_an_error(self) -> None:
        session = ReadSession(rrq(), FailingSource(content(2000)))
        self.assertEqual(session.start(0.0).outcome, Outcome.ERROR)


def netascii(data: bytes) -> bytes:
    """RFC 764 by the letter, one octet at a time: the reference for the fast path."""
    out = bytearray()
    for octet in data:
        if octet == 0x0A:
            out += b"\r\n"
        elif octet == 0x0D:
            out += b"\r\0"
        else:
            out.append(octet)
    return bytes(out)


class NetasciiTests(SynchronousTestCase):
    """RFC 1350 §1 / RFC 764: LF -> CR LF, CR -> CR NUL; tsize is the converted size."""

    def test_transfer_is_converted(self) -> None:
        text = b"line one\nline two\r\nend\r"
        session = ReadSession(rrq(("tsize", "0"), mode="netascii"), BytesSource(text))
        oack = decode(session.start(0.0).datagrams[0])
        expected = b"line one\r\nline two\r\0\r\nend\r\0"
        self.assertEqual(oack, OptionAck((("tsize", str(len(expected))),)))
        (packet,) = blocks(session.receive(Ack(0), 0.0))
        self.assertEqual(packet.payload, expected)

    def test_mode_is_case_insensitive(self) -> None:
        session = ReadSession(rrq(mode="NetASCII"), BytesSource(b"\n"))
        self.assertEqual(blocks(session.start(0.0))[0].payload, b"\r\n")

    @given(
        st.binary(max_size=300).map(lambda b: b.replace(b"a", b"\n").replace(b"b", b"\r")),
        st.integers(min_value=1, max_value=17),
        st.lists(st.tuples(st.integers(0, 700), st.integers(0, 100)), max_size=10),
    )
    def test_random_reads_match_reference(
        self, data: bytes, chunk: int, reads: list[tuple[int, int]]
    ) -> None:
        converted = netascii(data)
        source = NetasciiSource(BytesSource(data), chunk_size=chunk)
        self.assertEqual(source.size, len(converted))
        for offset, length in reads:
            self.assertEqual(source.read(offset, length), converted[offset : offset + length])
        self.assertEqual(source.read(0, len(converted)), converted)


class AdaptiveWindowTests(SynchronousTestCase):
    """Pacing under loss (limits.adaptive_window, AIMD on the burst).

    An RFC 7440 receiver acknowledges a full window, a gap, or on its own timeout (protocol
    reference §6.3), so a window always carries ``windowsize`` blocks; what adapts is how many
    leave back to back before a pause of ``pace_interval``.
    """

    def paced(self, windowsize: int, blocks: int) -> ReadSession:
        limits = SessionLimits(adaptive_window=True, max_window=64, pace_interval=0.001)
        return ReadSession(
            rrq(("blksize", "8"), ("windowsize", str(windowsize))),
            BytesSource(content(8 * blocks)),
            limits,
        )

    def bursts(self, session: ReadSession, actions: Actions, now: float) -> list[list[int]]:
        """The first burst of ``actions`` and every paced one after it, until the window is out
        (the deadline becomes the retransmission timeout)."""
        sent = [block_numbers(actions)]
        while session.deadline is not None and session.deadline - now < 0.01:
            now = session.deadline
            sent.append(block_numbers(session.timer_fired(now)))
        return sent

    def test_a_timeout_halves_the_burst_not_the_window(self) -> None:
        session = self.paced(16, 1000)
        session.start(0.0)
        self.assertEqual(self.bursts(session, session.receive(Ack(0), 0.0), 0.0), [
            list(range(1, 17)),
        ])  # fmt: skip
        now = 0.0
        for burst in (8, 4, 2):
            deadline = session.deadline
            assert deadline is not None
            now = deadline
            sent = self.bursts(session, session.timer_fired(now), now)
            self.assertEqual(session.burst, burst)
            self.assertEqual(
                sent, [list(range(start, start + burst)) for start in range(1, 17, burst)]
            )
        self.assertEqual(session.retransmissions, 3 * 16)

    def test_whole_windows_grow_the_burst_back(self) -> None:
        session = self.paced(16, 4000)
        session.start(0.0)
        session.receive(Ack(0), 0.0)
        deadline = session.deadline
        assert deadline is not None
        self.bursts(session, session.timer_fired(deadline), deadline)  # burst 8
        acked, now, sizes = 16, deadline + 0.01, []
        while session.burst < 16:
            sent = self.bursts(session, session.receive(Ack(acked), now), now)
            sizes.append([len(burst) for burst in sent])
            self.assertEqual(
                [b for burst in sent for b in burst], list(range(acked + 1, acked + 17))
            )
            acked += 16
            now += 0.01
        self.assertEqual(sizes[0], [9, 7])
        self.assertEqual(sizes[-1], [16])
        self.assertEqual(len(sizes), 8)  # one block more per whole window: 9 .. 16

    def test_an_early_ack_counts_as_loss_and_restarts_after_it(self) -> None:
        session = self.paced(8, 100)
        session.start(0.0)
        session.receive(Ack(0), 0.0)
        sent = self.bursts(session, session.receive(Ack(3), 0.1), 0.1)
        self.assertEqual(session.burst, 4)
        self.assertEqual(sent, [[4, 5, 6, 7], [8, 9, 10, 11]])

    def test_an_ack_during_pacing_starts_the_next_window(self) -> None:
        session = self.paced(8, 100)
        session.start(0.0)
        session.receive(Ack(0), 0.0)
        session.receive(Ack(2), 0.0)  # loss: burst 4, window 3..10, first burst 3..6
        # The client's timer fires before the second burst: it ACKs what it has.
        self.assertEqual(block_numbers(session.receive(Ack(6), 0.0005)), [7, 8])
        self.assertEqual(session.burst, 2)
        self.assertEqual(session.retransmissions, 4 + 2)  # 3..6 after ACK 2, 7..8 after ACK 6

    def test_off_by_default(self) -> None:
        session = ReadSession(rrq(("blksize", "8"), ("windowsize", "8")), BytesSource(content(800)))
        session.start(0.0)
        session.receive(Ack(0), 0.0)
        self.assertEqual(block_numbers(session.timer_fired(1.0)), list(range(1, 9)))
        self.assertEqual(session.burst, 8)


# A lossy channel, simulated: the property behind every rule above.


@attrs.define
class Client:
    """A minimal RFC 7440 receiver (RFC 1350 when the window is 1).

    It ACKs after a full window, after the short last block, on any unexpected block (gap,
    duplicate, reordering: the last block it has in order), and when its own timer expires.
    """

    blksize: int = 512
    window: int = 1
    expected: int = 1
    since_ack: int = 0
    chunks: list[bytes] = attrs.Factory(list)
    done: bool = False

    def ack_in_order(self) -> bytes:
        self.since_ack = 0
        return encode_ack((self.expected - 1) & 0xFFFF)

    def receive(self, datagram: bytes) -> list[bytes]:
        packet = decode(datagram)
        if isinstance(packet, OptionAck):
            options = dict(packet.options)
            self.blksize = int(options.get("blksize", "512"))
            self.window = int(options.get("windowsize", "1"))
            return [encode_ack(0)] if self.expected == 1 else []
        assert isinstance(packet, Data)
        if self.done or packet.block != self.expected & 0xFFFF:
            return [self.ack_in_order()]
        self.chunks.append(packet.payload)
        self.expected += 1
        self.since_ack += 1
        if len(packet.payload) < self.blksize:
            self.done = True
            return [self.ack_in_order()]
        if self.since_ack == self.window:
            return [self.ack_in_order()]
        return []


FATES = ("deliver", "drop", "duplicate", "late")


def simulate(
    session: ReadSession, fates: Iterable[str], latency: float = 0.01, client_timeout: float = 0.3
) -> tuple[Client, Outcome | None]:
    """Run one transfer over a channel that drops, duplicates and delays packets per ``fates``;
    once the fates run out, every packet is delivered."""
    fate = itertools.chain(fates, itertools.repeat("deliver"))
    client = Client()
    queue: list[tuple[float, int, str, bytes]] = []
    counter: Iterator[int] = itertools.count()
    client_timer = [0.0]

    def transmit(now: float, kind: str, datagram: bytes) -> None:
        what = next(fate)
        if what == "drop":
            return
        delay = latency * 3.5 if what == "late" else latency
        heapq.heappush(queue, (now + delay, next(counter), kind, datagram))
        if what == "duplicate":
            heapq.heappush(queue, (now + delay * 1.5, next(counter), kind, datagram))

    def apply(now: float, actions: Actions) -> None:
        for datagram in actions.datagrams:
            transmit(now, "to_client", datagram)
        if actions.deadline is not None:
            heapq.heappush(queue, (actions.deadline, next(counter), "server_timer", b""))

    def arm_client(now: float) -> None:
        client_timer[0] = now + client_timeout
        heapq.heappush(queue, (client_timer[0], next(counter), "client_timer", b""))

    apply(0.0, session.start(0.0))
    steps = 0
    while queue and not session.finished:
        steps += 1
        assert steps < 200_000, "simulation does not converge"
        now, _, kind, datagram = heapq.heappop(queue)
        if kind == "to_client":
            for reply in client.receive(datagram):
                transmit(now, "to_server", reply)
            arm_client(now)
        elif kind == "to_server":
            apply(now, session.receive(decode(datagram), now))
        elif kind == "server_timer":
            apply(now, session.timer_fired(now))
        elif now >= client_timer[0] and not client.done and client.expected > 1:
            transmit(now, "to_server", client.ack_in_order())
            arm_client(now)
    return client, session.outcome


class LossyChannelTests(SynchronousTestCase):
    @settings(max_examples=150, deadline=None)
    @given(
        size=st.integers(min_value=0, max_value=400),
        blksize=st.integers(min_value=8, max_value=40),
        window=st.integers(min_value=1, max_value=8),
        adaptive=st.booleans(),
        fates=st.lists(st.sampled_from(FATES), max_size=120),
    )
    def test_any_loss_pattern_yields_the_file(
        self, size: int, blksize: int, window: int, adaptive: bool, fates: list[str]
    ) -> None:
        """Drops, duplicates and reordering in both directions: the client ends up with the
        exact file, and the server reports completion."""
        data = content(size)
        limits = SessionLimits(max_retries=500, max_timeout=2.0, adaptive_window=adaptive)
        session = ReadSession(
            rrq(("blksize", str(blksize)), ("windowsize", str(window)), ("tsize", "0")),
            BytesSource(data),
            limits,
        )
        client, outcome = simulate(session, fates)
        self.assertEqual(b"".join(client.chunks), data)
        self.assertEqual(outcome, Outcome.COMPLETED)

    def test_clean_channel_sends_no_retransmission(self) -> None:
        session = ReadSession(
            rrq(("blksize", "8"), ("windowsize", "4")), BytesSource(content(1000))
        )
        client, outcome = simulate(session, [])
        self.assertEqual(outcome, Outcome.COMPLETED)
        self.assertEqual(session.retransmissions, 0)
        self.assertEqual(b"".join(client.chunks), content(1000))


def run_to_the_end(session: ReadSession) -> bytes:
    """Drive a session as a lockstep client with no loss (through the fast path where it
    applies); what the client received."""
    datagrams = session.start(0.0).datagrams
    received: list[bytes] = []
    ack = 0  # an OACK is acknowledged with ACK 0 (RFC 2347)
    while not session.finished:
        packets = [decode(datagram) for datagram in datagrams]
        if isinstance(packets[-1], Data):
            received.extend(p.payload for p in packets if isinstance(p, Data))
            ack = packets[-1].block
        fast = session.receive_ack(ack, 1.0)
        datagrams = fast if fast is not None else session.receive(Ack(ack), 1.0).datagrams
    return b"".join(received)


class FastPathEquivalenceTests(SynchronousTestCase):
    """``receive_ack`` (the per-block fast path) must behave exactly like ``receive``.

    Two sessions get the same random stream of ACKs (in order, stale, duplicate, out of
    range) and timer firings; one goes through ``receive_ack`` with its fallback, the other
    through the general ``receive``.  Datagrams, deadlines, outcomes and internal state must
    match after every event.
    """

    def test_fast_path_matches_the_general_path(self) -> None:
        import random

        from pxetwist.tftp.packet import Ack as AckPacket

        def state(session: ReadSession) -> tuple[object, ...]:
            return (
                session._acked,
                session._max_sent,
                session._window_end,
                session._window_full,
                session._cache_start,
                list(session._cache),
                session._retries,
                session._deadline,
                session._outcome,
                session._retransmissions,
                session._burst,
                session._paced_next,
            )

        rng = random.Random(1)
        fast_hits = 0
        shared_prefilled = 0
        for _ in range(400):
            size = rng.choice([0, 1, 7, 8, 64, 511, 512, 4096, 5000])
            data = bytes(rng.getrandbits(8) for _ in range(size))
            options: list[tuple[str, str]] = []
            if rng.random() < 0.8:
                options.append(("blksize", str(rng.choice([8, 9, 512, 1468]))))
            if rng.random() < 0.6:
                options.append(("windowsize", str(rng.choice([1, 2, 3, 8, 32]))))
            limits = SessionLimits(adaptive_window=rng.random() < 0.3, max_retries=3)
            request = ReadRequest("f", "octet", tuple(options))
            fast = ReadSession(request, BytesSource(data), limits)
            general = ReadSession(request, BytesSource(data), limits)
            # A third runs the fast path on datagrams shared with other transfers of the same
            # file: half the time another transfer has built them all already.
            table = SharedBlocks(size, general.blksize)
            if rng.random() < 0.5:
                run_to_the_end(ReadSession(request, BytesSource(data), limits, table))
                shared_prefilled += 1
            shared = ReadSession(request, BytesSource(data), limits, table)
            now = 0.0
            started = general.start(now)
            self.assertEqual(fast.start(now), started)
            self.assertEqual(shared.start(now), started)
            for _step in range(300):
                if fast.finished:
                    break
                now += rng.random() * 0.5
                roll = rng.random()
                if roll < 0.08:
                    expected = general.timer_fired(now)
                    self.assertEqual(fast.timer_fired(now), expected)
                    self.assertEqual(shared.timer_fired(now), expected)
                    self.assertEqual(state(shared), state(general))
                    continue
                sent = fast._max_sent
                if roll < 0.75:
                    block = sent
                elif roll < 0.85:
                    block = max(0, sent - rng.randint(0, 3))
                else:
                    block = sent + rng.randint(-40, 40)
                block &= 0xFFFF
                out = fast.receive_ack(block, now)
                from_shared = shared.receive_ack(block, now)
                self.assertEqual(from_shared, out)
                if from_shared is None:
                    shared.receive(AckPacket(block), now)
                expected = general.receive(AckPacket(block), now)
                if out is None:
                    self.assertEqual(fast.receive(AckPacket(block), now), expected)
                else:
                    fast_hits += 1
                    self.assertEqual(out, expected.datagrams)
                    self.assertIsNone(expected.outcome)
                    self.assertEqual(expected.deadline, fast.deadline)
                self.assertEqual(state(fast), state(general))
                self.assertEqual(state(shared), state(general))
        self.assertGreater(fast_hits, 1000)
        self.assertGreater(shared_prefilled, 100)
