"""TFTP codec: RFC 1350 §5 layouts, RFC 2347 options, protocol-reference §7.8 vectors T1-T7."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.tftp.packet import (
    Ack,
    Data,
    Error,
    ErrorCode,
    MalformedPacket,
    Opcode,
    OptionAck,
    Packet,
    ReadRequest,
    WriteRequest,
    decode,
    encode,
    encode_ack,
    encode_data,
    error_datagram,
)

from .strategies import packets

# Byte strings exactly as printed in protocol-reference §7.8.
T1_RRQ = bytes.fromhex(
    "00 01 75 6e 64 69 6f 6e 6c 79 2e 6b 70 78 65 00 6f 63 74 65 74 00"
    " 62 6c 6b 73 69 7a 65 00 31 34 33 32 00 74 73 69 7a 65 00 30 00"
)
T2_OACK = bytes.fromhex(
    "00 06 62 6c 6b 73 69 7a 65 00 31 34 33 32 00 74 73 69 7a 65 00 37 30 31 34 34 00"
)
T3_ACK0 = bytes.fromhex("00040000")
T4_ABORT = b"\x00\x05\x00\x08User aborted the transfer\x00"
T5_RRQ = b"\x00\x01shimx64.efi\x00octet\x00blksize\x001468\x00windowsize\x008\x00"
T6_ERROR = b"\x00\x05\x00\x05Unknown transfer ID\x00"
T7_ERROR = b"\x00\x05\x00\x01File not found\x00"


class VectorTests(SynchronousTestCase):
    """protocol-reference §7.8."""

    def test_t1_ipxe_rrq(self) -> None:
        self.assertEqual(
            decode(T1_RRQ),
            ReadRequest("undionly.kpxe", "octet", (("blksize", "1432"), ("tsize", "0"))),
        )

    def test_t1_encodes_back_exactly(self) -> None:
        self.assertEqual(encode(decode(T1_RRQ)), T1_RRQ)

    def test_t2_oack(self) -> None:
        oack = OptionAck((("blksize", "1432"), ("tsize", "70144")))
        self.assertEqual(encode(oack), T2_OACK)
        self.assertEqual(decode(T2_OACK), oack)

    def test_t3_ack_zero_and_data_one(self) -> None:
        self.assertEqual(decode(T3_ACK0), Ack(0))
        payload = bytes(range(256)) * 5 + bytes(152)
        self.assertEqual(len(payload), 1432)
        self.assertEqual(encode_data(1, payload), b"\x00\x03\x00\x01" + payload)

    def test_t4_edk2_abort(self) -> None:
        packet = decode(T4_ABORT)
        self.assertEqual(packet, Error(8, "User aborted the transfer"))
        assert isinstance(packet, Error)
        self.assertIs(packet.code, ErrorCode.OPTION_NEGOTIATION_FAILED)

    def test_t5_windowsize_rrq(self) -> None:
        self.assertEqual(
            decode(T5_RRQ),
            ReadRequest("shimx64.efi", "octet", (("blksize", "1468"), ("windowsize", "8"))),
        )

    def test_t6_unknown_tid(self) -> None:
        self.assertEqual(error_datagram(ErrorCode.UNKNOWN_TRANSFER_ID), T6_ERROR)

    def test_t7_file_not_found(self) -> None:
        self.assertEqual(error_datagram(ErrorCode.FILE_NOT_FOUND), T7_ERROR)
        self.assertEqual(error_datagram(ErrorCode.FILE_NOT_FOUND, "nope"), T7_ERROR[:4] + b"nope\0")


class RequestTests(SynchronousTestCase):
    """RRQ/WRQ: ``filename 0 mode 0 [option 0 value 0]...`` (RFC 1350 §5, RFC 2347)."""

    def test_mode_and_option_names_are_case_insensitive(self) -> None:
        packet = decode(b"\x00\x01Boot.EFI\x00OCTET\x00BlkSize\x001024\x00TSIZE\x000\x00")
        self.assertEqual(
            packet, ReadRequest("Boot.EFI", "octet", (("blksize", "1024"), ("tsize", "0")))
        )

    def test_option_order_is_kept(self) -> None:
        packet = decode(b"\x00\x01f\x00octet\x00tsize\x000\x00blksize\x00512\x00")
        assert isinstance(packet, ReadRequest)
        self.assertEqual([name for name, _ in packet.options], ["tsize", "blksize"])

    def test_write_request(self) -> None:
        self.assertEqual(decode(b"\x00\x02up\x00octet\x00"), WriteRequest("up", "octet", ()))

    def test_filename_bytes_survive_as_latin1(self) -> None:
        """§5 #9: garbage such as a trailing 0xFF is kept so it can be logged or stripped."""
        packet = decode(b"\x00\x01pxelinux.0\xff\x00octet\x00")
        assert isinstance(packet, ReadRequest)
        self.assertEqual(packet.filename, "pxelinux.0\xff")
        self.assertEqual(encode(packet), b"\x00\x01pxelinux.0\xff\x00octet\x00")

    def test_trailing_nul_padding_is_tolerated(self) -> None:
        self.assertEqual(decode(b"\x00\x01f\x00octet\x00\x00\x00"), ReadRequest("f", "octet", ()))
        self.assertEqual(
            decode(b"\x00\x01f\x00octet\x00tsize\x000\x00\x00"),
            ReadRequest("f", "octet", (("tsize", "0"),)),
        )

    def test_option_with_empty_value(self) -> None:
        self.assertEqual(
            decode(b"\x00\x01f\x00octet\x00tsize\x00\x00"),
            ReadRequest("f", "octet", (("tsize", ""),)),
        )

    def test_malformed_requests(self) -> None:
        for datagram in (
            b"\x00\x01",  # nothing
            b"\x00\x01file",  # file name not terminated
            b"\x00\x01file\x00octet",  # mode not terminated
            b"\x00\x01file\x00",  # no mode
            b"\x00\x01\x00octet\x00",  # empty file name
            b"\x00\x01file\x00\x00",  # empty mode
            b"\x00\x01f\x00octet\x00blksize\x00512",  # option value not terminated
            b"\x00\x01f\x00octet\x00\x00512\x00",  # empty option name
            b"\x00\x02f\x00octet\x00blksize",  # WRQ the same
        ):
            self.assertRaises(MalformedPacket, decode, datagram)


class OtherPacketTests(SynchronousTestCase):
    def test_data(self) -> None:
        self.assertEqual(decode(b"\x00\x03\xff\xffabc"), Data(65535, b"abc"))
        self.assertEqual(decode(b"\x00\x03\x00\x07"), Data(7, b""))

    def test_ack_ignores_trailing_octets(self) -> None:
        self.assertEqual(decode(b"\x00\x04\x01\x02\x00\x00"), Ack(0x0102))
        self.assertEqual(encode_ack(0x0102), b"\x00\x04\x01\x02")

    def test_error_without_terminator_is_still_an_error(self) -> None:
        """An abort must end the transfer even from a sloppy client (§5 #12)."""
        self.assertEqual(decode(b"\x00\x05\x00\x08abort"), Error(8, "abort"))
        self.assertEqual(decode(b"\x00\x05\x00\x00"), Error(0, ""))

    def test_private_error_code_is_kept_as_int(self) -> None:
        packet = decode(b"\x00\x05\x12\x34x\x00")
        self.assertEqual(packet, Error(0x1234, "x"))

    def test_oack(self) -> None:
        self.assertEqual(decode(b"\x00\x06"), OptionAck(()))
        self.assertEqual(decode(b"\x00\x06BLKSIZE\x00512\x00"), OptionAck((("blksize", "512"),)))

    def test_malformed(self) -> None:
        for datagram in (
            b"",
            b"\x00",
            b"\x00\x00",  # opcode 0
            b"\x00\x07\x00\x01",  # opcode 7 does not exist
            b"\x01\x01f\x00octet\x00",  # opcode 257
            b"\x00\x03\x00",  # DATA without block
            b"\x00\x04\x00",  # ACK without block
            b"\x00\x05\x00",  # ERROR without code
            b"\x00\x06blksize\x00512",  # OACK unterminated
            b"\x00\x06blksize\x00",  # OACK option without value
            b"\x00\x06\x00512\x00",  # OACK option without name
        ):
            self.assertRaises(MalformedPacket, decode, datagram)

    def test_opcodes(self) -> None:
        self.assertEqual([int(op) for op in Opcode], [1, 2, 3, 4, 5, 6])
        self.assertEqual([int(code) for code in ErrorCode], list(range(9)))


class EncodeTests(SynchronousTestCase):
    def test_refuses_values_without_a_wire_form(self) -> None:
        for packet in (
            Data(65536, b""),
            Ack(-1),
            Error(70000, "x"),
            Error(0, "a\0b"),
            ReadRequest("a\0b", "octet"),
            ReadRequest("", "octet"),
            ReadRequest("f", ""),
            OptionAck((("", "1"),)),
            OptionAck((("blksize", "1\x00"),)),
        ):
            self.assertRaises(ValueError, encode, packet)


class PropertyTests(SynchronousTestCase):
    @given(packets)
    def test_round_trip(self, packet: Packet) -> None:
        self.assertEqual(decode(encode(packet)), packet)

    @given(st.binary(max_size=600))
    @example(b"\x00\x01\x00\x00")
    @example(b"\x00\x01a\x00b\x00\x00\x00c\x00")
    @example(b"\x00\x06\x00")
    def test_arbitrary_bytes_decode_or_raise_malformed(self, datagram: bytes) -> None:
        """Whatever arrives, decode returns a packet or raises MalformedPacket, nothing else."""
        try:
            packet = decode(datagram)
        except MalformedPacket:
            return
        # Whatever decoded has a wire form that decodes to the same value.
        self.assertEqual(decode(encode(packet)), packet)

    @given(st.sampled_from([1, 2, 6]), st.binary(max_size=100))
    def test_arbitrary_text_bodies(self, opcode: int, body: bytes) -> None:
        """Focus on the NUL-separated layouts, which random bytes rarely reach."""
        datagram = opcode.to_bytes(2, "big") + body
        try:
            packet = decode(datagram)
        except MalformedPacket:
            return
        self.assertEqual(decode(encode(packet)), packet)
