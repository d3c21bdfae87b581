"""Tests for :mod:`pxetwist.dhcp.packet`: decoding, encoding and reply construction.

Section numbers (§) refer to ../shared/docs/protocol-reference.md. The V* and R* vectors are
the hex dumps of §7.1-7.7, copied verbatim where the reference gives bytes. Header bytes it gives
only in prose are filled in from that prose, as noted next to each vector.
"""

from __future__ import annotations

import ipaddress
import uuid

import attrs
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.dhcp.options import (
    MalformedPacket,
    MessageType,
    Op,
    OptionCode,
    encode_string,
    encode_suboptions,
    encode_uint32,
)
from pxetwist.dhcp.packet import (
    DEFAULT_MAX_SIZE,
    ESSENTIAL_OPTIONS,
    MIN_PACKET_SIZE,
    DhcpPacket,
    PacketTooLarge,
    decode,
    encode,
    fit,
    make_reply,
)
from pxetwist.policy.values import Arch, MacAddress

from .strategies import PROPERTY_SETTINGS, datagrams, packets

IP = ipaddress.IPv4Address
COOKIE = b"\x63\x82\x53\x63"


def dump(rows: dict[int, str], size: int = 0) -> bytes:
    """Bytes from a hex dump keyed by offset, as §7 prints it. Gaps are zeros (§7.1: "sname/file
    all zero"). The result is zero-filled to ``size``."""
    data = bytearray(size)
    for offset, text in rows.items():
        chunk = bytes.fromhex(text)
        end = offset + len(chunk)
        if end > len(data):
            data.extend(bytes(end - len(data)))
        data[offset:end] = chunk
    return bytes(data)


def header(
    *,
    op: int = 1,
    xid: int = 0x01020304,
    secs: int = 0,
    flags: int = 0,
    ciaddr: str = "0.0.0.0",
    yiaddr: str = "0.0.0.0",
    siaddr: str = "0.0.0.0",
    giaddr: str = "0.0.0.0",
    chaddr: bytes = b"\x52\x54\x00\x12\x34\x56",
    sname: bytes = b"",
    file: bytes = b"",
    hops: int = 0,
) -> bytes:
    """A 236-byte BOOTP header built field by field from RFC 2131 §2 (§1.1 table)."""
    return (
        bytes((op, 1, 6, hops))
        + xid.to_bytes(4, "big")
        + secs.to_bytes(2, "big")
        + flags.to_bytes(2, "big")
        + IP(ciaddr).packed
        + IP(yiaddr).packed
        + IP(siaddr).packed
        + IP(giaddr).packed
        + chaddr.ljust(16, b"\x00")
        + sname.ljust(64, b"\x00")
        + file.ljust(128, b"\x00")
    )


def tlvs(data: bytes) -> list[tuple[int, bytes]]:
    """Walk an encoded datagram's options strictly: no PAD allowed before END; END required.

    Also checks that every byte after END is zero fill. This is the wire-level oracle for the
    encoder tests, deliberately independent of :func:`decode`.
    """
    assert data[236:240] == COOKIE, data[236:240]
    found: list[tuple[int, bytes]] = []
    position = 240
    while True:
        code = data[position]
        if code == 255:
            break
        assert code != 0, f"PAD at offset {position}"
        length = data[position + 1]
        found.append((code, data[position + 2 : position + 2 + length]))
        position += 2 + length
    assert not any(data[position + 1 :]), "non-zero bytes after END"
    return found


# §7.1 V1 — real BIOS PXE DISCOVER, 548 bytes.
V1 = dump(
    {
        0x000: "01 01 06 00 9b 4e 05 57 00 08 80 00 00 00 00 00",
        0x010: "00 00 00 00 00 00 00 00 00 00 00 00 d0 50 99 4e",
        0x020: "05 57 00 00 00 00 00 00 00 00 00 00",
        0x0EC: "63 82 53 63 35 01 01 37 24 01 02 03 04 05 06 0b",
        0x0FC: "0c 0d 0f 10 11 12 16 17 1c 28 29 2a 2b 32 33 36",
        0x10C: "3a 3b 3c 42 43 80 81 82 83 84 85 86 87 39 02 04",
        0x11C: "ec 61 11 00 00 02 00 03 00 04 00 05 00 06 00 07",
        0x12C: "00 08 00 09 5d 02 00 00 5e 03 01 02 01 3c 20 50",
        0x13C: "58 45 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30",
        0x14C: "30 30 30 3a 55 4e 44 49 3a 30 30 32 30 30 31 ff",
    },
    size=548,
)

# §7.2 V2 — real proxyDHCP OFFER with a PXE menu, 321 bytes.
V2 = dump(
    {
        0x000: "02 01 06 00 9b 4e 05 57 00 00 80 00 00 00 00 00",
        0x010: "00 00 00 00 00 00 00 00 00 00 00 00 d0 50 99 4e",
        0x020: "05 57 00 00 00 00 00 00 00 00 00 00",
        0x0EC: "63 82 53 63 35 01 02 36 04 c0 a8 10 0a 3c 09 50",
        0x0FC: "58 45 43 6c 69 65 6e 74 61 11 00 00 02 00 03 00",
        0x10C: "04 00 05 00 06 00 07 00 08 00 09 2b 27 06 01 03",
        0x11C: "08 07 80 00 01 c0 a8 10 0a 09 0c 80 00 09 50 69",
        0x12C: "78 69 65 63 6f 72 65 0a 0a 00 50 69 78 69 65 63",
        0x13C: "6f 72 65 ff ff",
    }
)

# §7.3 V3 — UEFI x64 PXE DISCOVER (Intel NUC). chaddr f4:4d:30:6c:93:b2 is from the prose.
V3 = dump(
    {
        0x000: "01 01 06 00 0c 41 e8 dc 00 1c 80 00",
        0x01C: "f4 4d 30 6c 93 b2",
        0x0EC: "63 82 53 63 35 01 01 39 02 05 c0 37 23 01 02 03",
        0x0FC: "04 05 06 0c 0d 0f 11 12 16 17 1c 28 29 2a 2b 32",
        0x10C: "33 36 3a 3b 3c 42 43 61 80 81 82 83 84 85 86 87",
        0x11C: "61 11 00 ee c3 5c c2 fc b7 fd 15 aa 7c f4 4d 30",
        0x12C: "6c 93 b2 5e 03 01 03 10 5d 02 00 07 3c 20 50 58",
        0x13C: "45 43 6c 69 65 6e 74 3a 41 72 63 68 3a 30 30 30",
        0x14C: "30 37 3a 55 4e 44 49 3a 30 30 33 30 31 36 ff",
    }
)

# §7.4 V4 — real dnsmasq full-DHCP OFFER, 335 bytes. The header is from the prose. The capture's
# file bytes are mangled, so a plausible name stands in (parser test only, as §7.4 advises).
V4 = (
    header(
        op=2,
        xid=0xB372AE80,
        secs=4,
        flags=0x8000,
        yiaddr="10.0.17.121",
        siaddr="10.0.16.129",
        chaddr=bytes.fromhex("f44d306c93b2"),
        file=b"/arch/boot/syslinux/lpxelinux.0",
    )
    + COOKIE
    + bytes.fromhex(
        "350102"
        "36040a001081"
        "33040000a8c0"
        "3a0400005460"
        "3b04000093a8"
        "0104fffff800"
        "1c040a0017ff"
        "03040a001081"
        "420c31302e302e31362e31323900"
        "d2062f617263682f"
        "d119" + b"boot/syslinux/lpxelinux.0".hex() + "ff"
    )
)

# §7.5 V5 — iPXE DISCOVER (synthesized). Header per the prose: MAC 52:54:00:12:34:56, flags 0.
V5 = header(xid=0x5A5A0001, chaddr=bytes.fromhex("525400123456")) + dump(
    {
        0x00: "63 82 53 63 35 01 01 39 02 05 c0 5d 02 00 07 5e",
        0x10: "03 01 03 0a 3c 20 50 58 45 43 6c 69 65 6e 74 3a",
        0x20: "41 72 63 68 3a 30 30 30 30 37 3a 55 4e 44 49 3a",
        0x30: "30 30 33 30 31 30 4d 04 69 50 58 45 37 19 01 03",
        0x40: "06 07 0c 0f 11 1a 2a 2b 3c 42 43 77 79 80 81 82",
        0x50: "83 84 85 86 87 af cb af 07 b1 05 01 80 86 10 0e",
        0x60: "3d 07 01 52 54 00 12 34 56 61 11 00 01 02 03 04",
        0x70: "05 06 07 08 09 0a 0b 0c 0d 0e 0f 10 ff",
    }
)

# §7.6 V6 — UEFI HTTP Boot DISCOVER (synthesized). The reference gives only the options; the
# header is ours, with the broadcast flag that R5 ("broadcast") implies.
V6 = header(xid=0x0BADF00D, flags=0x8000, chaddr=bytes.fromhex("001122334455")) + dump(
    {
        0x00: "63 82 53 63 35 01 01 39 02 05 c0 37 1b 01 02 03",
        0x10: "04 05 06 0c 0d 0f 11 12 16 17 1c 28 29 2a 2b 32",
        0x20: "33 36 3a 3b 3c 42 43 61 61 11 00 00 00 00 00 00",
        0x30: "00 00 00 00 00 00 00 00 00 00 00 5e 03 01 03 00",
        0x40: "5d 02 00 10 3c 21 48 54 54 50 43 6c 69 65 6e 74",
        0x50: "3a 41 72 63 68 3a 30 30 30 31 36 3a 55 4e 44 49",
        0x60: "3a 30 30 33 30 30 30 ff",
    }
)

# §7.7 R1 — proxy OFFER to V1, 300 bytes; sname/file from the annotation.
R1 = dump(
    {
        0x000: "02 01 06 00 9b 4e 05 57 00 00 80 00 00 00 00 00",
        0x010: "00 00 00 00 c0 a8 10 0a 00 00 00 00 d0 50 99 4e",
        0x020: "05 57",
        0x02C: b"192.168.16.10".hex(),
        0x06C: b"undionly.kpxe".hex(),
        0x0EC: "63 82 53 63"
        "35 01 02 36 04 c0 a8 10 0a 3c 09" + b"PXEClient".hex() + "61 11 00 00 02 00 03 00"
        " 04 00 05 00 06 00 07 00 08 00 09 2b 04 06 01 08 ff ff",
    },
    size=300,
)

# §7.7 R2 — ACK from port 4011 to V3's boot-server REQUEST; zero-filled to 300 bytes (§1.1).
R2 = dump(
    {
        0x000: "02 01 06 00 0c 41 e8 dc 00 00 00 00 0a 00 11 79",
        0x010: "00 00 00 00 0a 00 10 81 00 00 00 00 f4 4d 30 6c",
        0x020: "93 b2",
        0x02C: b"10.0.16.129".hex(),
        0x06C: b"ipxe.efi".hex(),
        0x0EC: "63 82 53 63"
        "35 01 05 36 04 0a 00 10 81 3c 09" + b"PXEClient".hex() + "61 11 00 ee c3 5c c2 fc"
        " b7 fd 15 aa 7c f4 4d 30 6c 93 b2 ff",
    },
    size=300,
)

# §7.7 R3 — the options of the full-DHCP OFFER to V3, exactly as listed (321 bytes in all).
R3_OPTIONS = bytes.fromhex(
    "350102 36040a001081 330400000e10 0104fffff800 03040a001001 06040a001001"
    " 3c09" + b"PXEClient".hex() + " 6111" + "00eec35cc2fcb7fd15aa7cf44d306c93b2"
    " 2b04060108ff 4309" + b"ipxe.efi\x00".hex() + " ff"
)


class VectorDecodeTests(SynchronousTestCase):
    """Every request and reply vector of §7 decodes, with the field values §7 states."""

    def test_v1_bios_pxe_discover(self) -> None:
        """§7.1: Intel UNDI 2.1 BIOS ROM."""
        packet = decode(V1)
        self.assertEqual(len(V1), 548)
        self.assertEqual((packet.op, packet.htype, packet.hlen, packet.hops), (1, 1, 6, 0))
        self.assertEqual((packet.xid, packet.secs, packet.flags), (0x9B4E0557, 8, 0x8000))
        self.assertTrue(packet.broadcast)
        self.assertEqual(packet.mac, MacAddress.parse("d0:50:99:4e:05:57"))
        self.assertEqual((packet.sname, packet.file), (b"", b""))
        self.assertEqual(packet.message_type, MessageType.DISCOVER)
        self.assertEqual(
            packet.parameter_request_list,
            (
                1,
                2,
                3,
                4,
                5,
                6,
                11,
                12,
                13,
                15,
                16,
                17,
                18,
                22,
                23,
                28,
                40,
                41,
                42,
                43,
                50,
                51,
                54,
                58,
                59,
                60,
                66,
                67,
                128,
                129,
                130,
                131,
                132,
                133,
                134,
                135,
            ),
        )
        self.assertEqual(packet.max_message_size, 1260)
        self.assertEqual(packet.get(97), bytes.fromhex("0000020003000400050006000700080009"))
        self.assertEqual(packet.client_arches, (Arch.BIOS,))
        self.assertEqual(packet.client_ndi, (1, 2, 1))
        self.assertEqual(packet.vendor_class, b"PXEClient:Arch:00000:UNDI:002001")
        self.assertIsNone(packet.client_id)
        self.assertEqual(packet.user_classes, ())
        self.assertEqual([code for code, _ in packet.options], [53, 55, 57, 97, 93, 94, 60])
        self.assertEqual(packet.quirks, ())

    def test_v2_proxy_offer(self) -> None:
        """§7.2: pixiecore's proxy OFFER with a boot menu in 43."""
        packet = decode(V2)
        self.assertEqual(len(V2), 321)
        self.assertEqual(packet.op, Op.BOOTREPLY)
        self.assertEqual(packet.message_type, MessageType.OFFER)
        self.assertEqual(packet.yiaddr, IP(0))
        self.assertEqual(packet.siaddr, IP(0))
        self.assertEqual(packet.server_id, IP("192.168.16.10"))
        self.assertEqual(packet.vendor_class, b"PXEClient")
        self.assertEqual(
            packet.vendor_suboptions,
            (
                (6, b"\x03"),
                (8, b"\x80\x00\x01\xc0\xa8\x10\x0a"),
                (9, b"\x80\x00\x09Pixiecore"),
                (10, b"\x00Pixiecore"),
            ),
        )
        self.assertEqual(packet.get(43)[-1:], b"\xff")  # type: ignore[index]

    def test_v3_uefi_pxe_discover(self) -> None:
        """§7.3: Intel NUC UEFI PXE, arch 7, UNDI 3.16."""
        packet = decode(V3)
        self.assertEqual((packet.xid, packet.secs, packet.flags), (0x0C41E8DC, 28, 0x8000))
        self.assertEqual(packet.mac, MacAddress.parse("f4:4d:30:6c:93:b2"))
        self.assertEqual(packet.message_type, MessageType.DISCOVER)
        self.assertEqual(packet.max_message_size, 1472)
        self.assertEqual(len(packet.parameter_request_list), 35)
        self.assertEqual(packet.client_arches, (Arch.EFI_X86_64,))
        self.assertEqual(packet.client_ndi, (1, 3, 16))
        self.assertEqual(packet.vendor_class, b"PXEClient:Arch:00007:UNDI:003016")
        self.assertEqual(packet.client_uuid, uuid.UUID("c25cc3ee-b7fc-15fd-aa7c-f44d306c93b2"))

    def test_v4_dnsmasq_offer(self) -> None:
        """§7.4: dnsmasq OFFER with PXELINUX options 209/210 and NUL-terminated 66."""
        packet = decode(V4)
        self.assertEqual(len(V4), 335)
        self.assertEqual(packet.message_type, MessageType.OFFER)
        self.assertEqual((packet.secs, packet.flags), (4, 0x8000))
        self.assertEqual(packet.yiaddr, IP("10.0.17.121"))
        self.assertEqual(packet.siaddr, IP("10.0.16.129"))
        self.assertEqual(packet.server_id, IP("10.0.16.129"))
        self.assertEqual(packet.lease_time, 43200)
        self.assertEqual(packet.get(58), encode_uint32(21600))
        self.assertEqual(packet.get(59), encode_uint32(37800))
        self.assertEqual(packet.get(OptionCode.TFTP_SERVER), b"10.0.16.129\x00")
        self.assertEqual(packet.get(OptionCode.PXELINUX_PATHPREFIX), b"/arch/")
        self.assertEqual(packet.get(OptionCode.PXELINUX_CONFIGFILE), b"boot/syslinux/lpxelinux.0")
        self.assertEqual(packet.file, b"/arch/boot/syslinux/lpxelinux.0")
        self.assertEqual(
            [code for code, _ in packet.options], [53, 54, 51, 58, 59, 1, 28, 3, 66, 210, 209]
        )

    def test_v5_ipxe_discover(self) -> None:
        """§7.5: iPXE sends 77 = ``iPXE`` raw, 175 bus-id, 61 = 01+MAC."""
        packet = decode(V5)
        self.assertEqual(packet.message_type, MessageType.DISCOVER)
        self.assertFalse(packet.broadcast)
        self.assertEqual(packet.max_message_size, 1472)
        self.assertEqual(packet.client_arches, (Arch.EFI_X86_64,))
        self.assertEqual(packet.client_ndi, (1, 3, 10))
        self.assertEqual(packet.vendor_class, b"PXEClient:Arch:00007:UNDI:003010")
        self.assertEqual(packet.get(OptionCode.USER_CLASS), b"iPXE")
        self.assertEqual(packet.user_classes, (b"iPXE",))
        self.assertEqual(packet.parameter_request_list[-2:], (175, 203))
        self.assertEqual(packet.ipxe_encap, ((0xB1, b"\x01\x80\x86\x10\x0e"),))
        self.assertEqual(packet.client_id, b"\x01\x52\x54\x00\x12\x34\x56")
        self.assertEqual(packet.get(97), bytes(range(17)))
        self.assertEqual(packet.mac, MacAddress.parse("52:54:00:12:34:56"))

    def test_v5_with_rfc3004_user_class(self) -> None:
        """§4.1 rule: ``\\x04iPXE`` (RFC 3004 form) is recognised the same as raw ``iPXE``."""
        packet = decode(V5.replace(b"\x4d\x04iPXE", b"\x4d\x05\x04iPXE"))
        self.assertEqual(packet.get(OptionCode.USER_CLASS), b"\x04iPXE")
        self.assertEqual(packet.user_classes, (b"iPXE",))

    def test_v6_http_boot_discover(self) -> None:
        """§7.6: EDK2 HTTP Boot, arch 16, 33-byte HTTPClient vendor class."""
        packet = decode(V6)
        self.assertEqual(packet.message_type, MessageType.DISCOVER)
        self.assertEqual(packet.client_arches, (Arch.HTTP_EFI_X86_64,))
        self.assertTrue(packet.client_arches[0].is_http_boot)
        self.assertEqual(packet.vendor_class, b"HTTPClient:Arch:00016:UNDI:003000")
        self.assertEqual(len(packet.vendor_class or b""), 33)
        self.assertEqual(packet.client_ndi, (1, 3, 0))
        self.assertEqual(packet.client_uuid, uuid.UUID(int=0))
        self.assertEqual(len(packet.parameter_request_list), 27)
        self.assertNotIn(128, packet.parameter_request_list)
        self.assertEqual(packet.max_message_size, 1472)

    def test_r1_and_r2_decode(self) -> None:
        """The byte-specified replies of §7.7 decode to the fields their annotations give."""
        r1 = decode(R1)
        self.assertEqual(r1.message_type, MessageType.OFFER)
        self.assertEqual((r1.yiaddr, r1.siaddr), (IP(0), IP("192.168.16.10")))
        self.assertEqual((r1.sname, r1.file), (b"192.168.16.10", b"undionly.kpxe"))
        self.assertEqual(r1.vendor_suboptions, ((6, b"\x08"),))
        r2 = decode(R2)
        self.assertEqual(r2.message_type, MessageType.ACK)
        self.assertEqual((r2.ciaddr, r2.siaddr), (IP("10.0.17.121"), IP("10.0.16.129")))
        self.assertEqual(r2.file, b"ipxe.efi")
        self.assertEqual(r2.flags, 0)


class VectorReplyTests(SynchronousTestCase):
    """The §7.7 replies, built with :func:`make_reply` and :func:`encode`."""

    def test_r1_bytes(self) -> None:
        """R1: proxy OFFER to V1, byte for byte, 300 bytes (§7.7)."""
        request = decode(V1)
        reply = make_reply(
            request,
            MessageType.OFFER,
            siaddr="192.168.16.10",
            sname="192.168.16.10",
            file="undionly.kpxe",
            options=[
                (OptionCode.SERVER_ID, IP("192.168.16.10").packed),
                (OptionCode.VENDOR_CLASS, b"PXEClient"),
                (OptionCode.CLIENT_UUID, request.get(OptionCode.CLIENT_UUID) or b""),
                (OptionCode.VENDOR_SPECIFIC, encode_suboptions([(6, b"\x08")])),
            ],
        )
        self.assertEqual(encode(reply, max_size=request.max_reply_size()), R1)

    def test_r2_bytes(self) -> None:
        """R2: ACK from :4011 to V3's boot-server REQUEST, ciaddr copied (§2.3, §7.7)."""
        request = attrs.evolve(decode(V3), flags=0, ciaddr=IP("10.0.17.121")).with_option(
            OptionCode.MESSAGE_TYPE, bytes((MessageType.REQUEST,))
        )
        reply = make_reply(
            request,
            MessageType.ACK,
            siaddr="10.0.16.129",
            sname="10.0.16.129",
            file="ipxe.efi",
            options=[
                (OptionCode.SERVER_ID, IP("10.0.16.129").packed),
                (OptionCode.VENDOR_CLASS, b"PXEClient"),
                (OptionCode.CLIENT_UUID, request.get(OptionCode.CLIENT_UUID) or b""),
            ],
        )
        self.assertEqual(encode(reply), R2)

    def test_r3_options(self) -> None:
        """R3: full-DHCP OFFER to V3, Shape B, 321 bytes, options exactly as listed (§7.7)."""
        request = decode(V3)
        reply = make_reply(
            request,
            MessageType.OFFER,
            yiaddr="10.0.17.121",
            siaddr="10.0.16.129",
            file="ipxe.efi",
            options=[
                (OptionCode.SERVER_ID, IP("10.0.16.129").packed),
                (OptionCode.LEASE_TIME, encode_uint32(3600)),
                (OptionCode.SUBNET_MASK, IP("255.255.248.0").packed),
                (OptionCode.ROUTER, IP("10.0.16.1").packed),
                (OptionCode.DNS, IP("10.0.16.1").packed),
                (OptionCode.VENDOR_CLASS, b"PXEClient"),
                (OptionCode.CLIENT_UUID, request.get(OptionCode.CLIENT_UUID) or b""),
                (OptionCode.VENDOR_SPECIFIC, b"\x06\x01\x08\xff"),
                (OptionCode.BOOTFILE, encode_string("ipxe.efi", nul_terminate=True)),
            ],
        )
        wire = encode(reply, max_size=request.max_reply_size())
        self.assertEqual(len(wire), 321)
        self.assertEqual(wire[240:], R3_OPTIONS)
        self.assertEqual(wire[:4], b"\x02\x01\x06\x00")
        self.assertEqual(wire[4:12], b"\x0c\x41\xe8\xdc\x00\x00\x80\x00")  # xid, secs=0, flags
        self.assertEqual(wire[16:24], IP("10.0.17.121").packed + IP("10.0.16.129").packed)
        self.assertEqual(wire[108:117], b"ipxe.efi\x00")

    def test_r4_client_id_echo(self) -> None:
        """R4: OFFER to V5 (iPXE) echoes ``3d 07 01 52 54 00 12 34 56`` (RFC 6842, §7.7)."""
        request = decode(V5)
        url = "http://192.0.2.10:8080/boot.ipxe?mac=52:54:00:12:34:56"
        reply = make_reply(
            request,
            MessageType.OFFER,
            yiaddr="192.0.2.50",
            siaddr="192.0.2.10",
            file=url,
            options=[
                (OptionCode.SERVER_ID, IP("192.0.2.10").packed),
                (OptionCode.LEASE_TIME, encode_uint32(3600)),
                (OptionCode.SUBNET_MASK, IP("255.255.255.0").packed),
                (OptionCode.ROUTER, IP("192.0.2.1").packed),
                (OptionCode.DNS, IP("192.0.2.1").packed),
            ],
        )
        wire = encode(reply, max_size=request.max_reply_size())
        self.assertIn((61, b"\x01\x52\x54\x00\x12\x34\x56"), tlvs(wire))
        self.assertEqual(wire[10:12], b"\x00\x00")  # flags copied: unicast requested (§1.6)
        self.assertEqual(decode(wire).file, url.encode())

    def test_r5_http_client(self) -> None:
        """R5: OFFER to V6 carries 60 = ``HTTPClient`` and echoes 97 (§3.1, §7.7)."""
        request = decode(V6)
        reply = make_reply(
            request,
            MessageType.OFFER,
            yiaddr="192.0.2.51",
            file="http://192.0.2.10/efi/x86_64/ipxe.efi",
            options=[
                (OptionCode.SERVER_ID, IP("192.0.2.10").packed),
                (OptionCode.LEASE_TIME, encode_uint32(3600)),
                (OptionCode.VENDOR_CLASS, b"HTTPClient"),
                (OptionCode.CLIENT_UUID, request.get(OptionCode.CLIENT_UUID) or b""),
            ],
        )
        wire = encode(reply, max_size=request.max_reply_size())
        self.assertIn(bytes.fromhex("3c0a48545450436c69656e74"), wire)
        decoded = decode(wire)
        self.assertTrue(decoded.broadcast)
        self.assertEqual(decoded.get(97), request.get(97))
        self.assertEqual(decoded.siaddr, IP(0))


class DecodeErrorTests(SynchronousTestCase):
    """Malformed input raises :class:`MalformedPacket` with a useful message (§1.1, §1.2)."""

    def assertMalformed(self, data: bytes, fragment: str) -> None:
        with self.assertRaises(MalformedPacket) as caught:
            decode(data)
        self.assertIn(fragment, str(caught.exception))

    def test_too_short(self) -> None:
        self.assertMalformed(b"", "shorter than")
        self.assertMalformed(V1[:239], "shorter than")

    def test_bad_cookie(self) -> None:
        self.assertMalformed(V1[:236] + b"\x63\x82\x53\x64" + V1[240:], "magic cookie")

    def test_bad_op(self) -> None:
        self.assertMalformed(b"\x03" + V1[1:], "op must be")

    def test_op_message_type_mismatch(self) -> None:
        """A DISCOVER with op 2 or an OFFER with op 1 is rejected (§1.1, pixiecore does too)."""
        self.assertMalformed(b"\x02" + V1[1:], "DISCOVER must have op 1")
        self.assertMalformed(b"\x01" + V2[1:], "OFFER must have op 2")

    def test_unknown_message_type(self) -> None:
        self.assertMalformed(V1.replace(b"\x35\x01\x01", b"\x35\x01\x63", 1), "message type 99")

    def test_message_type_wrong_length(self) -> None:
        self.assertMalformed(header() + COOKIE + b"\x35\x02\x01\x01\xff", "option 53 must be 1")

    def test_address_option_wrong_length(self) -> None:
        self.assertMalformed(
            header() + COOKIE + b"\x35\x01\x03\x32\x03\x0a\x00\x01\xff", "option 50 must be 4"
        )

    def test_arch_odd_length(self) -> None:
        self.assertMalformed(header() + COOKIE + b"\x5d\x03\x00\x07\x00\xff", "option 93")

    def test_option_overruns_buffer(self) -> None:
        self.assertMalformed(header() + COOKIE + b"\x35\x01\x01\x3c\x09PXE", "claims 9 bytes")

    def test_option_without_length(self) -> None:
        self.assertMalformed(header() + COOKIE + b"\x35\x01\x01\x3c", "no length octet")

    def test_bad_overload_value(self) -> None:
        self.assertMalformed(header() + COOKIE + b"\x34\x01\x04\xff", "option 52")
        self.assertMalformed(header() + COOKIE + b"\x34\x02\x01\x01\xff", "option 52")

    def test_overload_inside_overloaded_area(self) -> None:
        data = header(file=b"\x34\x01\x02\xff") + COOKIE + b"\x34\x01\x01\xff"
        self.assertMalformed(data, "only appear in the main options")

    def test_truncated_option_in_file_area(self) -> None:
        data = header(file=b"\x0c\x05ab".ljust(128, b"\x0c")) + COOKIE + b"\x34\x01\x01\xff"
        self.assertMalformed(data, "file field")

    def test_duplicate_message_type_joined_then_rejected(self) -> None:
        """RFC 3396 joins two 53 instances into 2 bytes, which is no message type."""
        self.assertMalformed(
            header() + COOKIE + b"\x35\x01\x01\x35\x01\x01\xff", "option 53 must be 1"
        )


class DecodeToleranceTests(SynchronousTestCase):
    """What the decoder must accept from real clients (§1.2 "Rules for our server: Decode")."""

    def test_pad_anywhere(self) -> None:
        """PAD before, between and after options, in any number (§1.2, rpi-eeprom#82)."""
        data = header() + COOKIE + b"\x00\x00\x35\x01\x01\x00\x3c\x03abc" + b"\x00" * 5 + b"\xff"
        packet = decode(data)
        self.assertEqual(packet.options, ((53, b"\x01"), (60, b"abc")))

    def test_missing_end_at_end_of_buffer(self) -> None:
        """A missing END is tolerated when the options end with the datagram (and noted)."""
        packet = decode(header() + COOKIE + b"\x35\x01\x01\x3c\x03abc")
        self.assertEqual(packet.vendor_class, b"abc")
        self.assertIn("no END", " ".join(packet.quirks))

    def test_no_options_is_bootp(self) -> None:
        """A header and a cookie with nothing after it is a BOOTP request, not an error."""
        packet = decode(header() + COOKIE)
        self.assertIsNone(packet.message_type)
        self.assertEqual(packet.options, ())

    def test_bytes_after_end_ignored(self) -> None:
        packet = decode(header() + COOKIE + b"\x35\x01\x01\xff\x3c\x05junk!garbage")
        self.assertEqual(packet.options, ((53, b"\x01"),))
        self.assertEqual(packet.quirks, ())

    def test_split_option_joined(self) -> None:
        """RFC 3396: instances of one code are concatenated, even when not adjacent (§1.2)."""
        data = header() + COOKIE + b"\x3c\x03PXE\x35\x01\x01\x3c\x06Client\x3c\x00\xff"
        packet = decode(data)
        self.assertEqual(packet.options, ((60, b"PXEClient"), (53, b"\x01")))
        self.assertIn("joined", " ".join(packet.quirks))

    def test_overload_file(self) -> None:
        """Option 52 = 1: the file field holds options; sname still holds a name (§1.2)."""
        data = (
            header(sname=b"boot-server", file=b"\x3c\x09PXEClient\x00\x00\xff")
            + COOKIE
            + b"\x35\x01\x01\x34\x01\x01\xff"
        )
        packet = decode(data)
        self.assertEqual(packet.options, ((53, b"\x01"), (60, b"PXEClient")))
        self.assertEqual((packet.file, packet.sname), (b"", b"boot-server"))
        self.assertNotIn(OptionCode.OVERLOAD, packet)

    def test_overload_sname(self) -> None:
        """Option 52 = 2: the sname field holds options; file still holds a name."""
        data = (
            header(sname=b"\x0c\x04node\xff", file=b"pxelinux.0")
            + COOKIE
            + b"\x35\x01\x01\x34\x01\x02\xff"
        )
        packet = decode(data)
        self.assertEqual(packet.hostname, "node")
        self.assertEqual((packet.file, packet.sname), (b"pxelinux.0", b""))

    def test_overload_both_joins_in_rfc3396_order(self) -> None:
        """Option 52 = 3: one option split over options, file and sname joins in that order."""
        data = (
            header(sname=b"\x0c\x02-3\xff", file=b"\x00\x0c\x02-2")  # PAD and no END in file
            + COOKIE
            + b"\x34\x01\x03\x0c\x02-1\x35\x01\x01\xff"
        )
        packet = decode(data)
        self.assertEqual(packet.options, ((12, b"-1-2-3"), (53, b"\x01")))
        self.assertEqual((packet.file, packet.sname), (b"", b""))

    def test_trailing_nul_fill_removed_from_names(self) -> None:
        packet = decode(header(sname=b"server", file=b"pxelinux.0") + COOKIE + b"\xff")
        self.assertEqual((packet.sname, packet.file), (b"server", b"pxelinux.0"))

    def test_accepts_bytearray_and_memoryview(self) -> None:
        self.assertEqual(decode(bytearray(V1)), decode(V1))
        self.assertEqual(decode(memoryview(V1)), decode(V1))

    @PROPERTY_SETTINGS
    @given(datagrams())
    def test_any_bytes_give_a_packet_or_malformed(self, data: bytes) -> None:
        """Whatever arrives, decode returns a DhcpPacket or raises MalformedPacket (§7.9)."""
        try:
            packet = decode(data)
        except MalformedPacket:
            return
        self.assertIsInstance(packet, DhcpPacket)
        # Whatever decoded is a consistent value: the accessors read it without raising...
        self.assertIsInstance(packet.user_classes, tuple)
        self.assertIsInstance(packet.client_arches, tuple)
        self.assertIsInstance(packet.relay_agent_info, tuple)
        self.assertIsInstance(packet.ipxe_encap, tuple)
        self.assertIn(type(packet.client_uuid), (uuid.UUID, type(None)))
        # ... and, names permitting, it re-encodes to an equal packet (decoding normalises).
        if len(packet.sname) <= 63 and len(packet.file) <= 127:
            again = decode(encode(packet, max_size=65535))
            self.assertEqual(dict(again.options), dict(packet.options))
            self.assertEqual(attrs.evolve(again, options=packet.options), packet)


class EncodeTests(SynchronousTestCase):
    """The encoder's wire rules (§1.1, §1.2, §1.11, §7.9)."""

    REQUEST = decode(V5)

    def offer(self, *options: tuple[int, bytes]) -> DhcpPacket:
        return make_reply(
            self.REQUEST,
            MessageType.OFFER,
            yiaddr="192.0.2.50",
            options=[(OptionCode.SERVER_ID, IP("192.0.2.10").packed), *options],
        )

    def test_padded_to_300(self) -> None:
        """A small reply is zero-filled to 300 bytes after END (§1.1, dnsmasq MIN_PACKETSZ)."""
        wire = encode(self.offer())
        self.assertEqual(len(wire), MIN_PACKET_SIZE)
        self.assertEqual(tlvs(wire)[0], (53, b"\x02"))

    def test_large_reply_not_padded(self) -> None:
        """A reply above 300 bytes ends right after END."""
        wire = encode(self.offer((OptionCode.MESSAGE, b"x" * 100)))
        self.assertEqual(wire[-1], 255)
        self.assertGreater(len(wire), MIN_PACKET_SIZE)

    def test_no_pad_between_options(self) -> None:
        """Options are packed back to back; zeros come only after END (§1.2, rpi-eeprom PR #84)."""
        wire = encode(self.offer((OptionCode.ROUTER, IP("192.0.2.1").packed), (12, b"")))
        self.assertEqual(
            [code for code, _ in tlvs(wire)], [53, 54, 3, 12, 61]
        )  # tlvs() fails on any PAD

    def test_relay_info_last(self) -> None:
        """82 is echoed verbatim and placed last, whatever the order given (RFC 3046 §2.2)."""
        relay = b"\x01\x04eth0\x02\x06" + bytes(6)
        request = attrs.evolve(self.REQUEST, giaddr=IP("192.0.2.1")).with_option(82, relay)
        reply = make_reply(
            request,
            MessageType.OFFER,
            options=[(OptionCode.SERVER_ID, IP("192.0.2.10").packed)],
        ).with_option(OptionCode.DOMAIN_NAME, b"example.org")
        self.assertLess(
            [c for c, _ in reply.options].index(82), [c for c, _ in reply.options].index(15)
        )
        found = tlvs(encode(reply))
        self.assertEqual(found[-1], (82, relay))
        self.assertEqual(decode(encode(reply)).relay_agent_info, ((1, b"eth0"), (2, bytes(6))))

    def test_mask_before_router(self) -> None:
        """The subnet mask is moved in front of the router (RFC 2132 §3.3, §7.9)."""
        wire = encode(
            self.offer(
                (OptionCode.ROUTER, IP("192.0.2.1").packed),
                (OptionCode.DNS, IP("192.0.2.1").packed),
                (OptionCode.SUBNET_MASK, IP("255.255.255.0").packed),
            )
        )
        self.assertEqual([code for code, _ in tlvs(wire)], [53, 54, 1, 3, 6, 61])

    def test_long_option_split(self) -> None:
        """A 600-byte value goes out as 255 + 255 + 90 byte instances (RFC 3396, §1.2)."""
        value = bytes(range(200)) * 3
        wire = encode(self.offer((OptionCode.MESSAGE, value)), max_size=1500)
        found = tlvs(wire)
        self.assertEqual(
            [(code, len(part)) for code, part in found if code == OptionCode.MESSAGE],
            [(56, 255), (56, 255), (56, 90)],
        )
        self.assertEqual(decode(wire).get(OptionCode.MESSAGE), value)

    def test_exactly_255_not_split(self) -> None:
        wire = encode(self.offer((OptionCode.MESSAGE, b"m" * 255)), max_size=1500)
        self.assertEqual([len(v) for c, v in tlvs(wire) if c == 56], [255])

    def test_names_nul_padded(self) -> None:
        """sname/file fill 64/128 bytes with NULs; 63/127 bytes is the longest (§7.9)."""
        reply = attrs.evolve(self.offer(), sname=b"s" * 63, file=b"f" * 127)
        wire = encode(reply)
        self.assertEqual(wire[44:108], b"s" * 63 + b"\x00")
        self.assertEqual(wire[108:236], b"f" * 127 + b"\x00")

    def test_names_too_long(self) -> None:
        """A name that would lose its NUL (or be truncated) is a programmer error."""
        with self.assertRaises(ValueError):
            encode(attrs.evolve(self.offer(), sname=b"s" * 64))
        with self.assertRaises(ValueError):
            encode(attrs.evolve(self.offer(), file=b"f" * 128))

    def test_budget_drops_from_the_end(self) -> None:
        """Low-priority options (last in the list) are dropped until it fits (§1.2, §1.10)."""
        reply = self.offer(
            (OptionCode.LEASE_TIME, encode_uint32(3600)),
            (OptionCode.SUBNET_MASK, IP("255.255.255.0").packed),
            (OptionCode.HOSTNAME, b"h" * 100),
            (OptionCode.DOMAIN_NAME, b"d" * 100),
            (OptionCode.ROOT_PATH, b"r" * 100),
        )
        wire = encode(reply, max_size=DEFAULT_MAX_SIZE)
        self.assertLessEqual(len(wire), DEFAULT_MAX_SIZE)
        codes = [code for code, _ in tlvs(wire)]
        self.assertEqual(codes, [53, 54, 51, 1, 12, 15, 61])  # 17 dropped; 61 (essential) kept
        tight = encode(reply, max_size=MIN_PACKET_SIZE)
        self.assertEqual(len(tight), MIN_PACKET_SIZE)
        self.assertEqual([code for code, _ in tlvs(tight)], [53, 54, 51, 1, 61])

    def test_budget_keep(self) -> None:
        """``keep`` protects options from dropping, wherever they are."""
        reply = self.offer(
            (OptionCode.HOSTNAME, b"h" * 100),
            (OptionCode.VENDOR_CLASS, b"PXEClient"),
        )
        wire = encode(reply, max_size=MIN_PACKET_SIZE, keep=ESSENTIAL_OPTIONS | {60})
        self.assertEqual([code for code, _ in tlvs(wire)], [53, 54, 60, 61])

    def test_fit_reports_what_encode_sends(self) -> None:
        reply = self.offer((OptionCode.HOSTNAME, b"h" * 100))
        trimmed = fit(reply, max_size=MIN_PACKET_SIZE)
        self.assertEqual([code for code, _ in trimmed.options], [53, 54, 61])
        self.assertEqual(encode(trimmed, max_size=MIN_PACKET_SIZE), encode(reply, max_size=300))
        self.assertIs(fit(reply, max_size=1500), reply)

    def test_essentials_too_large(self) -> None:
        reply = self.offer((OptionCode.CLIENT_ID, b"c" * 200))
        with self.assertRaises(PacketTooLarge):
            encode(reply, max_size=MIN_PACKET_SIZE)

    def test_budget_below_minimum(self) -> None:
        with self.assertRaises(ValueError):
            encode(self.offer(), max_size=299)

    def test_max_reply_size(self) -> None:
        """Budget = min(57, MTU) - 28, with 57 clamped to 576 and 576 when absent (§1.10)."""
        self.assertEqual(decode(V1).max_reply_size(), 1260 - 28)
        self.assertEqual(decode(V3).max_reply_size(), 1472 - 28)
        self.assertEqual(decode(V3).max_reply_size(mtu=1400), 1400 - 28)
        self.assertEqual(DhcpPacket().max_reply_size(), 548)
        self.assertEqual(DhcpPacket(options=((57, b"\xff\x00"),)).max_reply_size(), 1472)
        self.assertEqual(DhcpPacket(options=((57, b"\x01\x00"),)).max_reply_size(), 548)

    @PROPERTY_SETTINGS
    @given(packets())
    def test_round_trip(self, packet: DhcpPacket) -> None:
        """decode(encode(p)) equals p, up to the two RFC-mandated reorderings (§7.9)."""
        decoded = decode(encode(packet, max_size=65535))
        self.assertEqual(attrs.evolve(decoded, options=packet.options), packet)
        self.assertEqual(dict(decoded.options), dict(packet.options))
        codes = [code for code, _ in decoded.options]
        self.assertEqual(
            [c for c in codes if c not in (1, 82)],
            [c for c, _ in packet.options if c not in (1, 82)],
        )
        if 82 in codes:
            self.assertEqual(codes[-1], 82)
        if 1 in codes and 3 in codes:
            self.assertLess(codes.index(1), codes.index(3))

    @PROPERTY_SETTINGS
    @given(packets(), st.integers(MIN_PACKET_SIZE, 1500))
    def test_budget_property(self, packet: DhcpPacket, max_size: int) -> None:
        """Within budget, >= 300 bytes, no PAD, and only a suffix of droppable options is lost."""
        try:
            wire = encode(packet, max_size=max_size)
        except PacketTooLarge:
            essentials = sum(
                len(value) + 2 * max(1, -(-len(value) // 255))
                for code, value in packet.options
                if code in ESSENTIAL_OPTIONS
            )
            self.assertGreater(240 + essentials + 1, max_size)
            return
        self.assertGreaterEqual(len(wire), MIN_PACKET_SIZE)
        self.assertLessEqual(len(wire), max_size)
        tlvs(wire)  # strict walk: no PAD, END present, zero fill
        sent = [code for code, _ in decode(wire).options]
        given_codes = [code for code, _ in fit(packet, max_size=65535).options]
        droppable = [code for code in given_codes if code not in ESSENTIAL_OPTIONS]
        kept = [code for code in sent if code not in ESSENTIAL_OPTIONS]
        self.assertEqual(kept, droppable[: len(kept)])
        for code in given_codes:
            if code in ESSENTIAL_OPTIONS:
                self.assertIn(code, sent)


class MakeReplyTests(SynchronousTestCase):
    """Reply headers per RFC 2131 Table 3 (§1.5)."""

    REQUEST = attrs.evolve(
        decode(V5), hops=2, secs=9, flags=0x8000, giaddr=IP("198.51.100.1")
    ).with_option(82, b"\x01\x03abc")

    def test_table3_copies(self) -> None:
        reply = make_reply(self.REQUEST, MessageType.OFFER, yiaddr="192.0.2.50")
        self.assertEqual((reply.op, reply.hops, reply.secs), (2, 0, 0))
        for field in ("htype", "hlen", "xid", "flags", "giaddr", "chaddr"):
            self.assertEqual(getattr(reply, field), getattr(self.REQUEST, field), field)
        self.assertEqual(reply.yiaddr, IP("192.0.2.50"))
        self.assertEqual(reply.message_type, MessageType.OFFER)
        self.assertEqual(reply.options[0], (53, b"\x02"))

    def test_echoes_client_id_and_relay_info(self) -> None:
        """61 echoed (RFC 6842) and 82 echoed (RFC 3046) in every reply type."""
        for kind in (MessageType.OFFER, MessageType.ACK, MessageType.NAK):
            reply = make_reply(self.REQUEST, kind)
            self.assertEqual(reply.client_id, self.REQUEST.client_id)
            self.assertEqual(reply.get(82), b"\x01\x03abc")

    def test_no_echo_when_absent(self) -> None:
        reply = make_reply(decode(V1), MessageType.OFFER)
        self.assertEqual(reply.options, ((53, b"\x02"),))

    def test_caller_value_wins_over_echo(self) -> None:
        reply = make_reply(self.REQUEST, MessageType.ACK, options=[(61, b"\x00mine")])
        self.assertEqual(reply.client_id, b"\x00mine")

    def test_ciaddr(self) -> None:
        """ciaddr: copied in an ACK, 0 in an OFFER and a NAK (Table 3)."""
        request = attrs.evolve(self.REQUEST, ciaddr=IP("192.0.2.77"))
        self.assertEqual(make_reply(request, MessageType.ACK).ciaddr, IP("192.0.2.77"))
        self.assertEqual(make_reply(request, MessageType.OFFER).ciaddr, IP(0))
        self.assertEqual(make_reply(request, MessageType.NAK).ciaddr, IP(0))
        self.assertEqual(make_reply(request, MessageType.ACK, ciaddr=0).ciaddr, IP(0))

    def test_nak_via_relay_is_broadcast(self) -> None:
        """A NAK through a relay sets the BROADCAST flag (RFC 2131 §4.3.2, §1.4)."""
        unicast = attrs.evolve(self.REQUEST, flags=0)
        self.assertTrue(make_reply(unicast, MessageType.NAK).broadcast)
        self.assertFalse(make_reply(unicast, MessageType.OFFER).broadcast)
        direct = attrs.evolve(unicast, giaddr=IP(0))
        self.assertFalse(make_reply(direct, MessageType.NAK).broadcast)

    def test_rejects_wrong_direction(self) -> None:
        with self.assertRaises(ValueError):
            make_reply(self.REQUEST, MessageType.REQUEST)
        with self.assertRaises(ValueError):
            make_reply(decode(V2), MessageType.OFFER)


class PacketValueTests(SynchronousTestCase):
    """Construction invariants and accessors of :class:`DhcpPacket`."""

    def test_defaults_and_chaddr_padding(self) -> None:
        packet = DhcpPacket(chaddr=b"\x52\x54\x00\x12\x34\x56")
        self.assertEqual(packet.chaddr, b"\x52\x54\x00\x12\x34\x56" + bytes(10))
        self.assertEqual(packet.mac, MacAddress.parse("52:54:00:12:34:56"))
        self.assertEqual(packet.ciaddr, IP(0))
        self.assertEqual(packet.op, Op.BOOTREQUEST)

    def test_chaddr_too_long(self) -> None:
        with self.assertRaises(ValueError):
            DhcpPacket(chaddr=bytes(17))

    def test_mac_only_for_ethernet(self) -> None:
        """``mac`` is ``None`` unless htype = 1 and hlen = 6 (§1.1)."""
        self.assertIsNone(DhcpPacket(htype=6, chaddr=b"\x01" * 6).mac)
        self.assertIsNone(DhcpPacket(hlen=16, chaddr=b"\x01" * 16).mac)

    def test_names_accept_text(self) -> None:
        packet = DhcpPacket(sname="server", file="pxelinux.0\x00")
        self.assertEqual((packet.sname, packet.file), (b"server", b"pxelinux.0"))

    def test_invariants(self) -> None:
        """Duplicate codes, framing codes and wrong fixed lengths are refused (class docstring)."""
        bad_options = [
            ((60, b"a"), (60, b"b")),
            ((0, b""),),
            ((255, b""),),
            ((52, b"\x01"),),
            ((54, b"\x01\x02\x03"),),
            ((57, b"\x05"),),
            ((93, b""),),
            ((53, b"\x02"),),  # an OFFER with op 1
        ]
        for options in bad_options:
            with self.assertRaises(MalformedPacket, msg=repr(options)):
                DhcpPacket(options=options)

    def test_header_ranges(self) -> None:
        for field, value in (("xid", 2**32), ("secs", -1), ("htype", 256), ("flags", 0x10000)):
            with self.assertRaises(ValueError, msg=field):
                DhcpPacket(**{field: value})  # type: ignore[arg-type]
        with self.assertRaises(ValueError):
            DhcpPacket(file=b"f" * 129)

    def test_options_from_mapping(self) -> None:
        packet = DhcpPacket(options={53: b"\x01", 60: b"PXEClient"})
        self.assertEqual(packet.options, ((53, b"\x01"), (60, b"PXEClient")))

    def test_get_and_contains(self) -> None:
        packet = decode(V1)
        self.assertIn(OptionCode.CLIENT_ARCH, packet)
        self.assertNotIn(OptionCode.USER_CLASS, packet)
        self.assertIsNone(packet.get(OptionCode.USER_CLASS))

    def test_with_and_without_option(self) -> None:
        packet = decode(V1)
        changed = packet.with_option(OptionCode.VENDOR_CLASS, b"HW-Client")
        self.assertEqual(changed.vendor_class, b"HW-Client")
        self.assertEqual(
            [code for code, _ in changed.options], [code for code, _ in packet.options]
        )
        self.assertEqual(packet.vendor_class, b"PXEClient:Arch:00000:UNDI:002001")
        self.assertEqual(changed.with_option(12, b"x").options[-1], (12, b"x"))
        stripped = packet.without_option(OptionCode.CLIENT_UUID, OptionCode.CLIENT_NDI)
        self.assertEqual([code for code, _ in stripped.options], [53, 55, 57, 93, 60])

    def test_absent_accessors(self) -> None:
        packet = DhcpPacket()
        self.assertIsNone(packet.message_type)
        self.assertIsNone(packet.requested_ip)
        self.assertIsNone(packet.server_id)
        self.assertIsNone(packet.subnet_selection)
        self.assertIsNone(packet.lease_time)
        self.assertIsNone(packet.max_message_size)
        self.assertIsNone(packet.client_uuid)
        self.assertIsNone(packet.client_ndi)
        self.assertIsNone(packet.hostname)
        self.assertIsNone(packet.pxe_boot_item)
        self.assertIsNone(packet.link_selection)
        self.assertEqual(packet.client_arches, ())
        self.assertEqual(packet.user_classes, ())
        self.assertEqual(packet.parameter_request_list, ())
        self.assertEqual(packet.ipxe_encap, ())
        self.assertEqual(packet.relay_agent_info, ())
        self.assertFalse(packet.broadcast)

    def test_address_accessors(self) -> None:
        """Options 50, 54 and 118 read as addresses (§1.4 REQUEST states, §1.11)."""
        packet = DhcpPacket(
            options=(
                (50, IP("192.0.2.50").packed),
                (54, IP("192.0.2.10").packed),
                (118, IP("192.0.2.0").packed),
                (82, b"\x05\x04\xc6\x33\x64\x00"),
            )
        )
        self.assertEqual(packet.requested_ip, IP("192.0.2.50"))
        self.assertEqual(packet.server_id, IP("192.0.2.10"))
        self.assertEqual(packet.subnet_selection, IP("192.0.2.0"))
        self.assertEqual(packet.link_selection, IP("198.51.100.0"))

    def test_pxe_boot_item(self) -> None:
        """43.71 in a port-4011 request is (type, layer) (§2.2, §7.2)."""
        packet = DhcpPacket(options=((43, b"\x47\x04\x80\x00\x00\x00\xff"),))
        self.assertEqual(packet.pxe_boot_item, (0x8000, 0))

    def test_lenient_accessors(self) -> None:
        """Unusable optional values read as absent; the packet is still answered (§5 quirk 10)."""
        packet = DhcpPacket(
            options=((97, b"\x01\x02"), (94, b"\x01"), (175, b"\xb1\x09"), (82, b"\x01"))
        )
        self.assertIsNone(packet.client_uuid)
        self.assertIsNone(packet.client_ndi)
        self.assertEqual(packet.ipxe_encap, ())
        self.assertEqual(packet.relay_agent_info, ())
        self.assertEqual(packet.get(97), b"\x01\x02")

    def test_quirks_not_in_equality(self) -> None:
        """Framing notes do not make two equal packets differ."""
        with_end = decode(header() + COOKIE + b"\x35\x01\x01\xff")
        without_end = decode(header() + COOKIE + b"\x35\x01\x01")
        self.assertNotEqual(with_end.quirks, without_end.quirks)
        self.assertEqual(with_end, without_end)
        self.assertEqual(hash(with_end), hash(without_end))
