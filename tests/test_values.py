"""The shared vocabulary: MAC notations, option-93 architectures, client classification."""

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.policy.request import BootRequest, parse_user_class
from pxetwist.policy.values import Arch, Firmware, InvalidMacAddress, MacAddress, Stage

MAC = MacAddress(bytes.fromhex("525400123456"))


class MacAddressTests(SynchronousTestCase):
    def test_common_notations_are_equal(self) -> None:
        for text in (
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "5254.0012.3456",
            "525400123456",
            "52:54:0:12:34:56",
            " 52:54:00:12:34:56\n",
        ):
            self.assertEqual(MacAddress.parse(text), MAC, text)

    def test_rejects_garbage(self) -> None:
        for text in ("", "52:54:00:12:34", "52:54:00:12:34:56:78", "zz:54:00:12:34:56", "1.2.3"):
            self.assertRaises(InvalidMacAddress, MacAddress.parse, text)

    def test_renderings(self) -> None:
        self.assertEqual(str(MAC), "52:54:00:12:34:56")
        self.assertEqual(MAC.pxelinux_name, "01-52-54-00-12-34-56")

    @given(st.binary(min_size=6, max_size=6))
    def test_str_round_trips(self, octets: bytes) -> None:
        mac = MacAddress(octets)
        self.assertEqual(MacAddress.parse(str(mac)), mac)
        self.assertEqual(MacAddress.parse(mac.dashed), mac)


class ArchTests(SynchronousTestCase):
    """protocol-reference §2.4: IANA values, erratum 4624, unknown values kept."""

    def test_known_values(self) -> None:
        self.assertEqual(Arch(0).boot_key, "bios")
        self.assertEqual(Arch(7).boot_key, "efi-x86_64")
        self.assertEqual(Arch(11).boot_key, "efi-arm64")
        self.assertEqual(Arch(16).boot_key, "http-efi-x86_64")
        self.assertTrue(Arch(16).is_http_boot)
        self.assertFalse(Arch(7).is_http_boot)

    def test_nine_is_treated_as_seven(self) -> None:
        self.assertIs(Arch(9).normalized(), Arch.EFI_X86_64)
        self.assertEqual(Arch(9).boot_key, "efi-x86_64")

    def test_unknown_values_are_kept(self) -> None:
        arch = Arch(4242)
        self.assertEqual(int(arch), 4242)
        self.assertFalse(arch.is_known)
        self.assertIsNone(arch.boot_key)
        self.assertIs(Arch(4242), arch)

    def test_out_of_range_is_rejected(self) -> None:
        self.assertRaises(ValueError, Arch, 70000)
        self.assertRaises(ValueError, Arch, -1)


class ClassificationTests(SynchronousTestCase):
    """protocol-reference §2.1, §3.1, §4: how a client is recognised."""

    def request(self, **fields: object) -> BootRequest:
        return BootRequest(mac=MAC, stage=Stage.DHCP, **fields)  # type: ignore[arg-type]

    def test_pxe_rom(self) -> None:
        request = self.request(arches=(Arch(0),), vendor_class=b"PXEClient:Arch:00000:UNDI:002001")
        self.assertIs(request.firmware, Firmware.PXE_ROM)

    def test_ipxe_by_user_class_or_option_175(self) -> None:
        vendor = b"PXEClient:Arch:00007:UNDI:003010"
        self.assertIs(
            self.request(vendor_class=vendor, user_classes=(b"iPXE",)).firmware, Firmware.IPXE
        )
        self.assertIs(self.request(vendor_class=vendor, ipxe_encap=b"\xb1").firmware, Firmware.IPXE)
        custom = self.request(user_classes=(b"mybuild",), ipxe_user_classes=(b"mybuild",))
        self.assertIs(custom.firmware, Firmware.IPXE)

    def test_http_boot(self) -> None:
        request = self.request(
            arches=(Arch(16),), vendor_class=b"HTTPClient:Arch:00016:UNDI:003000"
        )
        self.assertIs(request.firmware, Firmware.HTTP_BOOT)

    def test_plain_client(self) -> None:
        self.assertIs(self.request(vendor_class=b"MSFT 5.0").firmware, Firmware.PLAIN)

    def test_first_known_arch_wins(self) -> None:
        self.assertIs(self.request(arches=(Arch(4242), Arch(9))).arch, Arch.EFI_X86_64)
        self.assertEqual(int(self.request(arches=(Arch(4242),)).arch or 0), 4242)


class UserClassTests(SynchronousTestCase):
    """RFC 3004 versus iPXE's raw form (protocol-reference §4, §7.5)."""

    def test_raw_ipxe(self) -> None:
        self.assertEqual(parse_user_class(b"iPXE"), (b"iPXE",))

    def test_rfc3004(self) -> None:
        self.assertEqual(parse_user_class(b"\x04iPXE"), (b"iPXE",))
        self.assertEqual(parse_user_class(b"\x01a\x02bc"), (b"a", b"bc"))

    def test_empty(self) -> None:
        self.assertEqual(parse_user_class(b""), ())
