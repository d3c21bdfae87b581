"""Which TFTP names are generated boot configs: PXELINUX's and GRUB's search orders, ``*.ipxe``."""

from __future__ import annotations

from ipaddress import IPv4Address

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.bootnames import GeneratedName, match_generated
from pxetwist.policy.render import LoaderKind
from pxetwist.policy.values import MacAddress

CLIENT = IPv4Address("192.168.0.1")  # C0A80001
MAC = MacAddress.parse("52:54:00:12:34:56")
UUID = "8b5a3c1e-2f44-4c1a-9d2e-0a1b2c3d4e5f"


class PxelinuxTests(SynchronousTestCase):
    def test_search_order_names(self) -> None:
        """PXELINUX: UUID, 01-<mac>, hex address and its prefixes, default."""
        expected = GeneratedName(LoaderKind.PXELINUX)
        self.assertEqual(
            match_generated("pxelinux.cfg/01-52-54-00-12-34-56", CLIENT),
            GeneratedName(LoaderKind.PXELINUX, MAC),
        )
        self.assertEqual(
            match_generated(
                "pxelinux.cfg/01-52-54-00-12-34-56".upper().replace("CFG", "cfg"), None
            ),
            GeneratedName(LoaderKind.PXELINUX, MAC),
        )
        for name in (UUID, "C0A80001", "C0A8000", "C0A8", "C", "default", "c0a80001"):
            self.assertEqual(match_generated(f"pxelinux.cfg/{name}", CLIENT), expected, name)

    def test_someone_elses_address_is_a_plain_file(self) -> None:
        self.assertIsNone(match_generated("pxelinux.cfg/C0A80002", CLIENT))
        self.assertIsNone(match_generated("pxelinux.cfg/C0A80001", None))
        self.assertIsNone(match_generated("pxelinux.cfg/menu.c32", CLIENT))
        self.assertIsNone(match_generated("pxelinux.0", CLIENT))

    def test_path_prefix_is_kept(self) -> None:
        self.assertEqual(
            match_generated("bios/pxelinux.cfg/default", CLIENT),
            GeneratedName(LoaderKind.PXELINUX, None, "bios"),
        )


class GrubTests(SynchronousTestCase):
    def test_mac_notations(self) -> None:
        expected = GeneratedName(LoaderKind.GRUB, MAC)
        for suffix in (
            "01-52-54-00-12-34-56",
            "52:54:00:12:34:56",
            "52-54-00-12-34-56",
            "525400123456",
            "5254.0012.3456",
        ):
            self.assertEqual(match_generated(f"grub/grub.cfg-{suffix}", CLIENT), expected, suffix)

    def test_address_uuid_and_plain(self) -> None:
        expected = GeneratedName(LoaderKind.GRUB)
        for name in ("grub/grub.cfg", "grub.cfg", f"grub/grub.cfg-{UUID}", "grub/grub.cfg-C0A8"):
            self.assertEqual(match_generated(name, CLIENT), expected, name)
        self.assertIsNone(match_generated("grub/grub.cfg-C0A80002", CLIENT))
        self.assertIsNone(match_generated("grub/grub.cfg-nonsense", CLIENT))
        self.assertIsNone(match_generated("grub/x86_64-efi/command.lst", CLIENT))


class IpxeTests(SynchronousTestCase):
    def test_scripts(self) -> None:
        self.assertEqual(match_generated("boot.ipxe", CLIENT), GeneratedName(LoaderKind.IPXE, None))
        self.assertEqual(
            match_generated("scripts/52-54-00-12-34-56.ipxe", CLIENT),
            GeneratedName(LoaderKind.IPXE, MAC),
        )
        self.assertEqual(
            match_generated("01-52-54-00-12-34-56.ipxe", CLIENT),
            GeneratedName(LoaderKind.IPXE, MAC),
        )
        self.assertIsNone(match_generated(".ipxe", CLIENT))
        self.assertIsNone(match_generated("ipxe.efi", CLIENT))
