"""Tests for :mod:`pxetwist.dhcp.options`: option codes and typed value helpers.

Section numbers (§) refer to ../shared/docs/protocol-reference.md.
"""

from __future__ import annotations

import ipaddress
import uuid

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp import options
from pxetwist.dhcp.options import (
    IpxeOption,
    MalformedPacket,
    MessageType,
    Op,
    OptionCode,
    PxeVendorOption,
)
from pxetwist.policy.values import Arch

from .strategies import PROPERTY_SETTINGS


class OptionCodeTests(SynchronousTestCase):
    """The code table matches the RFCs the reference cites."""

    def test_codes(self) -> None:
        """RFC 2132 and later numbers, as listed in §1.2-§4 (spot check of every name we use)."""
        expected = {
            "PAD": 0,
            "SUBNET_MASK": 1,
            "ROUTER": 3,
            "DNS": 6,
            "HOSTNAME": 12,
            "DOMAIN_NAME": 15,
            "ROOT_PATH": 17,
            "BROADCAST": 28,
            "VENDOR_SPECIFIC": 43,
            "REQUESTED_IP": 50,
            "LEASE_TIME": 51,
            "OVERLOAD": 52,
            "MESSAGE_TYPE": 53,
            "SERVER_ID": 54,
            "PARAMETER_REQUEST_LIST": 55,
            "MESSAGE": 56,
            "MAX_MESSAGE_SIZE": 57,
            "RENEWAL_T1": 58,
            "REBINDING_T2": 59,
            "VENDOR_CLASS": 60,
            "CLIENT_ID": 61,
            "TFTP_SERVER": 66,
            "BOOTFILE": 67,
            "USER_CLASS": 77,
            "RELAY_AGENT_INFO": 82,
            "CLIENT_ARCH": 93,
            "CLIENT_NDI": 94,
            "CLIENT_UUID": 97,
            "SUBNET_SELECTION": 118,
            "IPXE_ENCAP": 175,
            "PXELINUX_MAGIC": 208,
            "PXELINUX_CONFIGFILE": 209,
            "PXELINUX_PATHPREFIX": 210,
            "PXELINUX_REBOOTTIME": 211,
            "END": 255,
        }
        self.assertEqual({name: int(OptionCode[name]) for name in expected}, expected)

    def test_pxe_and_ipxe_suboptions(self) -> None:
        """43.6 discovery control, 43.71 boot item, 43 END (§2.2); 175.176/177 (§4.1-4.2)."""
        self.assertEqual(PxeVendorOption.DISCOVERY_CONTROL, 6)
        self.assertEqual(PxeVendorOption.BOOT_ITEM, 71)
        self.assertEqual(PxeVendorOption.END, 255)
        self.assertEqual(IpxeOption.NO_PXEDHCP, 0xB0)
        self.assertEqual(IpxeOption.BUS_ID, 0xB1)
        self.assertEqual(IpxeOption.FEATURE_HTTP, 0x13)


class MessageTypeTests(SynchronousTestCase):
    """Option 53 values and the ``op`` each implies (§1.1, §1.3)."""

    def test_values(self) -> None:
        """DISCOVER=1 ... INFORM=8 (RFC 2132 §9.6)."""
        self.assertEqual(
            [(kind.name, int(kind)) for kind in MessageType][:8],
            [
                ("DISCOVER", 1),
                ("OFFER", 2),
                ("REQUEST", 3),
                ("DECLINE", 4),
                ("ACK", 5),
                ("NAK", 6),
                ("RELEASE", 7),
                ("INFORM", 8),
            ],
        )

    def test_op(self) -> None:
        """Client messages are BOOTREQUESTs and server messages BOOTREPLYs (§1.1 op rule)."""
        requests = {kind for kind in MessageType if kind.op == Op.BOOTREQUEST}
        self.assertEqual(
            requests,
            {
                MessageType.DISCOVER,
                MessageType.REQUEST,
                MessageType.DECLINE,
                MessageType.RELEASE,
                MessageType.INFORM,
                MessageType.LEASEQUERY,
            },
        )
        self.assertEqual(MessageType.OFFER.op, Op.BOOTREPLY)
        self.assertEqual(MessageType.NAK.op, Op.BOOTREPLY)


class AddressTests(SynchronousTestCase):
    def test_ipv4(self) -> None:
        """Option 54 of V2 (§7.2) is 192.168.16.10."""
        self.assertEqual(
            options.decode_ipv4(b"\xc0\xa8\x10\x0a"), ipaddress.IPv4Address("192.168.16.10")
        )
        self.assertEqual(options.encode_ipv4("192.168.16.10"), b"\xc0\xa8\x10\x0a")

    def test_ipv4_wrong_length(self) -> None:
        """An address option is exactly 4 bytes."""
        for value in (b"", b"\x01\x02\x03", b"\x01\x02\x03\x04\x05"):
            with self.assertRaises(MalformedPacket):
                options.decode_ipv4(value)

    def test_ipv4_list(self) -> None:
        """Options 3 and 6 of R3 (§7.7) are lists of addresses."""
        value = b"\x0a\x00\x10\x01\x0a\x00\x10\x02"
        addresses = (ipaddress.IPv4Address("10.0.16.1"), ipaddress.IPv4Address("10.0.16.2"))
        self.assertEqual(options.decode_ipv4_list(value), addresses)
        self.assertEqual(options.encode_ipv4_list(addresses), value)

    def test_ipv4_list_bad(self) -> None:
        """An address list has at least one address and whole addresses only (RFC 2132 §3.5)."""
        for value in (b"", b"\x0a\x00\x10\x01\x0a"):
            with self.assertRaises(MalformedPacket):
                options.decode_ipv4_list(value)
        with self.assertRaises(ValueError):
            options.encode_ipv4_list([])

    @PROPERTY_SETTINGS
    @given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=20))
    def test_ipv4_list_round_trip(self, numbers: list[int]) -> None:
        addresses = tuple(ipaddress.IPv4Address(number) for number in numbers)
        self.assertEqual(options.decode_ipv4_list(options.encode_ipv4_list(addresses)), addresses)


class IntegerTests(SynchronousTestCase):
    def test_uint16(self) -> None:
        """Option 57 = 1260 in V1 is ``04 ec`` (§7.1); 1472 in V3 is ``05 c0`` (§7.3)."""
        self.assertEqual(options.decode_uint16(b"\x04\xec"), 1260)
        self.assertEqual(options.encode_uint16(1472), b"\x05\xc0")

    def test_uint32(self) -> None:
        """Option 51 = 43200 s in V4 is ``00 00 a8 c0`` (§7.4)."""
        self.assertEqual(options.decode_uint32(b"\x00\x00\xa8\xc0"), 43200)
        self.assertEqual(options.encode_uint32(3600), b"\x00\x00\x0e\x10")

    def test_uint8(self) -> None:
        self.assertEqual(options.encode_uint8(8), b"\x08")
        self.assertEqual(options.decode_uint8(b"\x08"), 8)

    def test_wrong_lengths(self) -> None:
        with self.assertRaises(MalformedPacket):
            options.decode_uint8(b"")
        with self.assertRaises(MalformedPacket):
            options.decode_uint16(b"\x04")
        with self.assertRaises(MalformedPacket):
            options.decode_uint32(b"\x00\x00\x0e")

    def test_out_of_range(self) -> None:
        """Encoders refuse values that do not fit; silent wrap-around would corrupt replies."""
        for encoder, too_big in (
            (options.encode_uint8, 256),
            (options.encode_uint16, 65536),
            (options.encode_uint32, 2**32),
        ):
            with self.assertRaises(ValueError):
                encoder(too_big)
            with self.assertRaises(ValueError):
                encoder(-1)

    @PROPERTY_SETTINGS
    @given(st.integers(0, 0xFFFF), st.integers(0, 0xFFFFFFFF))
    def test_round_trip(self, small: int, large: int) -> None:
        self.assertEqual(options.decode_uint16(options.encode_uint16(small)), small)
        self.assertEqual(options.decode_uint32(options.encode_uint32(large)), large)


class StringTests(SynchronousTestCase):
    def test_trailing_nul_deleted(self) -> None:
        """V4's option 66 is "10.0.16.129\\0"; receivers drop trailing NULs (RFC 2132 §2, §7.4)."""
        self.assertEqual(options.decode_string(b"10.0.16.129\x00"), "10.0.16.129")

    def test_nul_terminated_bootfile(self) -> None:
        """R3's option 67 is "ipxe.efi\\0", NUL counted in the length (§5 quirk 9, §7.7)."""
        self.assertEqual(options.encode_string("ipxe.efi", nul_terminate=True), b"ipxe.efi\x00")
        self.assertEqual(options.encode_string("ipxe.efi"), b"ipxe.efi")

    def test_invalid_utf8_replaced(self) -> None:
        """Text is only logged or matched, so bad bytes must not raise."""
        self.assertEqual(options.decode_string(b"a\xffb"), "a\ufffdb")


class ArchTests(SynchronousTestCase):
    """Option 93 (RFC 4578 §2.1, reference §2.1, §2.4)."""

    def test_bios(self) -> None:
        """V1 sends ``00 00`` (§7.1)."""
        self.assertEqual(options.decode_arches(b"\x00\x00"), (Arch.BIOS,))

    def test_uefi_x64_and_http(self) -> None:
        """V3 sends 7, V6 sends 16 (§7.3, §7.6)."""
        self.assertEqual(options.decode_arches(b"\x00\x07"), (Arch.EFI_X86_64,))
        self.assertEqual(options.decode_arches(b"\x00\x10"), (Arch.HTTP_EFI_X86_64,))

    def test_several_values(self) -> None:
        """93 may hold several values, kept in client order (§2.1)."""
        self.assertEqual(options.decode_arches(b"\x00\x09\x00\x07"), (Arch.EFI_BC, Arch.EFI_X86_64))

    def test_unknown_value_kept(self) -> None:
        """An unassigned architecture is kept for logging, not rejected (§2.4 rule)."""
        (arch,) = options.decode_arches(b"\x10\x92")
        self.assertEqual(int(arch), 4242)
        self.assertFalse(arch.is_known)

    def test_malformed(self) -> None:
        """``len`` is even and at least 2 (RFC 4578 §2.1)."""
        for value in (b"", b"\x00", b"\x00\x07\x00"):
            with self.assertRaises(MalformedPacket):
                options.decode_arches(value)

    def test_remembered_values_stay_right_and_bounded(self) -> None:
        """Read values are remembered (every packet asks), but a client sending every possible
        value cannot grow the memo without bound, and a value read again is read the same."""
        for value in range(5000):
            raw = value.to_bytes(2, "big")
            self.assertEqual([int(a) for a in options.decode_arches(raw)], [value])
            self.assertLessEqual(len(options._DECODED_ARCHES), 1024)
        self.assertEqual(options.decode_arches(b"\x00\x07"), (Arch.EFI_X86_64,))
        self.assertEqual(options.decode_arches(b"\x00\x07"), (Arch.EFI_X86_64,))
        with self.assertRaises(MalformedPacket):  # a bad value is never remembered as good
            options.decode_arches(b"\x00\x07\x00")

    def test_encode(self) -> None:
        self.assertEqual(options.encode_arches([Arch.EFI_X86_64, 11]), b"\x00\x07\x00\x0b")
        with self.assertRaises(ValueError):
            options.encode_arches([])


class NdiAndUuidTests(SynchronousTestCase):
    def test_ndi(self) -> None:
        """Option 94 ``01 02 01`` is UNDI 2.1 (V1, §7.1), ``01 03 10`` UNDI 3.16 (V3)."""
        self.assertEqual(options.decode_client_ndi(b"\x01\x02\x01"), (1, 2, 1))
        self.assertEqual(options.encode_client_ndi(1, 3, 16), b"\x01\x03\x10")
        with self.assertRaises(MalformedPacket):
            options.decode_client_ndi(b"\x01\x03")

    def test_uuid(self) -> None:
        """V3's option 97 (§7.3): type 0 + GUID with little-endian first fields (§2.1)."""
        value = bytes.fromhex("00eec35cc2fcb7fd15aa7cf44d306c93b2")
        guid = options.decode_client_uuid(value)
        self.assertEqual(guid, uuid.UUID("c25cc3ee-b7fc-15fd-aa7c-f44d306c93b2"))
        self.assertEqual(options.encode_client_uuid(guid), value)

    def test_uuid_without_type(self) -> None:
        """A bare 16-byte GUID is accepted: "parse 97 leniently" (§7.3)."""
        guid = uuid.UUID("c25cc3ee-b7fc-15fd-aa7c-f44d306c93b2")
        self.assertEqual(options.decode_client_uuid(guid.bytes_le), guid)

    def test_uuid_malformed(self) -> None:
        for value in (b"", b"\x01" + bytes(16), bytes(15), bytes(18)):
            with self.assertRaises(MalformedPacket):
                options.decode_client_uuid(value)


class UserClassTests(SynchronousTestCase):
    """Option 77 in iPXE's raw form and in RFC 3004 form (§4.1, §5 quirk 19)."""

    def test_raw_ipxe(self) -> None:
        """V5 sends ``4d 04 69 50 58 45``: the bare string, no RFC 3004 length (§7.5)."""
        self.assertEqual(options.decode_user_classes(b"iPXE"), (b"iPXE",))

    def test_rfc3004_ipxe(self) -> None:
        """``\\x04iPXE`` is the RFC 3004 spelling of the same class (§4.1 rule)."""
        self.assertEqual(options.decode_user_classes(b"\x04iPXE"), (b"iPXE",))

    def test_rfc3004_several(self) -> None:
        self.assertEqual(
            options.decode_user_classes(b"\x04iPXE\x09pixiecore"), (b"iPXE", b"pixiecore")
        )

    def test_raw_that_is_not_rfc3004(self) -> None:
        """A zero length or an overrun means the value is one raw class (e.g. "Tinkerbell")."""
        self.assertEqual(options.decode_user_classes(b"Tinkerbell"), (b"Tinkerbell",))
        self.assertEqual(options.decode_user_classes(b"\x02ab\x00"), (b"\x02ab\x00",))

    def test_empty(self) -> None:
        self.assertEqual(options.decode_user_classes(b""), ())

    def test_encode(self) -> None:
        self.assertEqual(options.encode_user_classes([b"iPXE"]), b"\x04iPXE")
        with self.assertRaises(ValueError):
            options.encode_user_classes([b""])

    @PROPERTY_SETTINGS
    @given(st.lists(st.binary(min_size=1, max_size=255), min_size=1, max_size=5))
    def test_rfc3004_round_trip(self, classes: list[bytes]) -> None:
        encoded = options.encode_user_classes(classes)
        self.assertEqual(options.decode_user_classes(encoded), tuple(classes))

    @PROPERTY_SETTINGS
    @given(st.binary())
    def test_never_raises(self, value: bytes) -> None:
        """Every byte string is some user class: decoding must not fail on client input."""
        self.assertIsInstance(options.decode_user_classes(value), tuple)


class SubOptionTests(SynchronousTestCase):
    """Encapsulated TLVs inside 43, 82 and 175 (§1.2, §2.2, §4.1)."""

    V2_OPTION_43 = bytes.fromhex(
        "060103 08078000 01c0a8100a 090c8000 09"
        + b"Pixiecore".hex()
        + "0a0a00"
        + b"Pixiecore".hex()
        + "ff"
    )

    def test_v2_menu(self) -> None:
        """V2's option 43 decodes as listed in §7.2."""
        self.assertEqual(
            options.decode_suboptions(self.V2_OPTION_43),
            (
                (6, b"\x03"),
                (8, b"\x80\x00\x01\xc0\xa8\x10\x0a"),
                (9, b"\x80\x00\x09Pixiecore"),
                (10, b"\x00Pixiecore"),
            ),
        )

    def test_encode_discovery_control(self) -> None:
        """R1 carries ``2b 04 06 01 08 ff``: 43.6 = 8, then PXE_END (§7.7)."""
        self.assertEqual(
            options.encode_suboptions([(PxeVendorOption.DISCOVERY_CONTROL, b"\x08")]),
            b"\x06\x01\x08\xff",
        )

    def test_encode_unterminated(self) -> None:
        """Option 82 has no END sub-option (RFC 3046)."""
        self.assertEqual(options.encode_suboptions([(1, b"ab")], terminate=False), b"\x01\x02ab")

    def test_encode_rejects_bad_items(self) -> None:
        with self.assertRaises(ValueError):
            options.encode_suboptions([(6, bytes(256))])
        with self.assertRaises(ValueError):
            options.encode_suboptions([(255, b"")])

    def test_pad_and_missing_end(self) -> None:
        """PAD is skipped and a missing PXE_END tolerated, as for top-level options (§1.2)."""
        self.assertEqual(
            options.decode_suboptions(b"\x00\x06\x01\x08\x00\x00\x47\x04\x80\x00\x00\x00"),
            ((6, b"\x08"), (71, b"\x80\x00\x00\x00")),
        )

    def test_bytes_after_end_ignored(self) -> None:
        self.assertEqual(options.decode_suboptions(b"\x06\x01\x08\xff\x01"), ((6, b"\x08"),))

    def test_relay_suboptions_have_no_pad_or_end(self) -> None:
        """In 82, codes 0 and 255 are ordinary TLVs (RFC 3046 §2.0)."""
        self.assertEqual(
            options.decode_suboptions(b"\x00\x01a\xff\x00", pad_and_end=False),
            ((0, b"a"), (255, b"")),
        )

    def test_truncated(self) -> None:
        for value in (b"\x06", b"\x06\x02\x08", b"\x06\x01\x08\x47\x04\x80"):
            with self.assertRaises(MalformedPacket):
                options.decode_suboptions(value)

    def test_ipxe_bus_id(self) -> None:
        """V5's 175 is ``b1 05 01 80 86 10 0e``: bus-id PCI 8086:100e (§7.5)."""
        self.assertEqual(
            options.decode_suboptions(b"\xb1\x05\x01\x80\x86\x10\x0e"),
            ((IpxeOption.BUS_ID, b"\x01\x80\x86\x10\x0e"),),
        )

    @PROPERTY_SETTINGS
    @given(
        st.lists(
            st.tuples(st.integers(1, 254), st.binary(max_size=255)),
            max_size=8,
        ),
        st.booleans(),
    )
    def test_round_trip(self, items: list[tuple[int, bytes]], terminate: bool) -> None:
        encoded = options.encode_suboptions(items, terminate=terminate)
        self.assertEqual(options.decode_suboptions(encoded), tuple(items))
