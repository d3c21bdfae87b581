"""Confining TFTP names to the root: protocol-reference §6.6 and §5 #16, checklist §7.9."""

from __future__ import annotations

import os
import pathlib
import shutil
import tempfile

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.paths import PathRefused, normalize_request_path, resolve_path


class NormalizeTests(SynchronousTestCase):
    def test_plain_and_nested(self) -> None:
        self.assertEqual(normalize_request_path("pxelinux.0"), "pxelinux.0")
        self.assertEqual(
            normalize_request_path("pxelinux.cfg/01-52-54-00-12-34-56"),
            "pxelinux.cfg/01-52-54-00-12-34-56",
        )

    def test_leading_slash_means_the_root(self) -> None:
        """PXE ROMs often ask for ``/pxelinux.0``; that is the root's file, not the host's."""
        self.assertEqual(normalize_request_path("/pxelinux.0"), "pxelinux.0")
        self.assertEqual(normalize_request_path("//boot///grub//grub.cfg"), "boot/grub/grub.cfg")

    def test_backslashes(self) -> None:
        """§5 #16: WDS loaders use Windows separators."""
        self.assertEqual(normalize_request_path("\\boot\\x64\\wdsmgfw.efi"), "boot/x64/wdsmgfw.efi")
        self.assertEqual(normalize_request_path("boot\\x86/wdsnbp.com"), "boot/x86/wdsnbp.com")

    def test_dot_components(self) -> None:
        self.assertEqual(normalize_request_path("./a/./b"), "a/b")

    def test_dotdot_inside_the_root_is_resolved(self) -> None:
        """pxelinux joins its path prefix to relative config names: ``bios/../vmlinuz``."""
        self.assertEqual(normalize_request_path("bios/../images/vmlinuz"), "images/vmlinuz")

    def test_dotdot_escaping_is_refused(self) -> None:
        for name in ("..", "../etc/passwd", "/../etc/passwd", "a/../../b", "..\\..\\windows"):
            with self.assertRaises(PathRefused) as caught:
                normalize_request_path(name)
            self.assertEqual(caught.exception.requested, name)
            self.assertIn("..", caught.exception.reason)

    def test_percent_is_literal(self) -> None:
        """TFTP names are not URLs: ``%2e%2e`` is a file called that, not ``..``."""
        self.assertEqual(normalize_request_path("%2e%2e/%2e%2e/x"), "%2e%2e/%2e%2e/x")

    def test_nul_and_control_characters_refused(self) -> None:
        for name in ("a\0b", "pxelinux.0\0", "a\nb", "a\x7fb", "\x1b[31m"):
            self.assertRaises(PathRefused, normalize_request_path, name)

    def test_empty_refused(self) -> None:
        for name in ("", "/", "\\", ".", "./", "a/.."):
            self.assertRaises(PathRefused, normalize_request_path, name)

    def test_high_bytes_are_kept(self) -> None:
        """§5 #9: a trailing 0xFF is not silently fixed here (the file just won't exist)."""
        self.assertEqual(normalize_request_path("pxelinux.0\xff"), "pxelinux.0\xff")

    @given(st.text(max_size=60))
    def test_never_escapes_lexically(self, name: str) -> None:
        try:
            cleaned = normalize_request_path(name)
        except PathRefused:
            return
        parts = cleaned.split("/")
        self.assertNotIn("..", parts)
        self.assertNotIn("", parts)
        self.assertNotIn(".", parts)
        self.assertNotIn("\\", cleaned)
        self.assertEqual(normalize_request_path(cleaned), cleaned)


class ResolveTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.tmp = pathlib.Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.tmp)
        self.root = self.tmp / "tftproot"
        (self.root / "pxelinux.cfg").mkdir(parents=True)
        (self.root / "pxelinux.0").write_bytes(b"nbp")
        (self.root / "pxelinux.cfg" / "default").write_text("DEFAULT linux\n")
        (self.root / "%2e%2e").mkdir()
        (self.root / "%2e%2e" / "x").write_bytes(b"literal")
        (self.tmp / "secret").write_bytes(b"outside")

    def test_plain_file(self) -> None:
        self.assertEqual(
            resolve_path(self.root, "pxelinux.0"), (self.root / "pxelinux.0").resolve()
        )

    def test_absolute_looking_name_is_relative_to_root(self) -> None:
        self.assertEqual(
            resolve_path(self.root, "/pxelinux.cfg/default"),
            (self.root / "pxelinux.cfg" / "default").resolve(),
        )

    def test_backslashes(self) -> None:
        self.assertEqual(
            resolve_path(self.root, "\\pxelinux.cfg\\default"),
            (self.root / "pxelinux.cfg" / "default").resolve(),
        )

    def test_dotdot_out_of_root_refused(self) -> None:
        self.assertRaises(PathRefused, resolve_path, self.root, "../secret")
        self.assertRaises(PathRefused, resolve_path, self.root, "pxelinux.cfg/../../secret")

    def test_absolute_host_path_stays_in_root(self) -> None:
        """``/etc/passwd`` means ``<root>/etc/passwd``, which does not exist."""
        self.assertRaises(FileNotFoundError, resolve_path, self.root, str(self.tmp / "secret"))

    def test_percent_encoding_is_literal(self) -> None:
        self.assertEqual(resolve_path(self.root, "%2e%2e/x").read_bytes(), b"literal")
        self.assertRaises(FileNotFoundError, resolve_path, self.root, "%2e%2e/secret")

    def test_symlink_out_of_root_refused(self) -> None:
        (self.root / "escape").symlink_to(self.tmp / "secret")
        (self.root / "escape_dir").symlink_to(self.tmp)
        with self.assertRaises(PathRefused) as caught:
            resolve_path(self.root, "escape")
        self.assertIn("outside", caught.exception.reason)
        self.assertRaises(PathRefused, resolve_path, self.root, "escape_dir/secret")

    def test_dangling_symlink_out_of_root_refused(self) -> None:
        (self.root / "dangling").symlink_to(self.tmp / "nothing")
        self.assertRaises(PathRefused, resolve_path, self.root, "dangling")

    def test_symlink_inside_root_followed(self) -> None:
        (self.root / "boot.efi").symlink_to("pxelinux.0")
        self.assertEqual(resolve_path(self.root, "boot.efi").read_bytes(), b"nbp")

    def test_root_itself_may_be_a_symlink(self) -> None:
        link = self.tmp / "link_root"
        link.symlink_to(self.root)
        self.assertEqual(resolve_path(link, "pxelinux.0").read_bytes(), b"nbp")

    def test_symlink_loop_refused(self) -> None:
        (self.root / "loop").symlink_to("loop")
        self.assertRaises(PathRefused, resolve_path, self.root, "loop")

    def test_nul_refused(self) -> None:
        self.assertRaises(PathRefused, resolve_path, self.root, "pxelinux.0\0.cfg")

    def test_directory_refused(self) -> None:
        for name in ("pxelinux.cfg", "/pxelinux.cfg/", "pxelinux.cfg/."):
            with self.assertRaises(PathRefused) as caught:
                resolve_path(self.root, name)
            self.assertIn("directory", caught.exception.reason)

    def test_special_file_refused(self) -> None:
        os.mkfifo(self.root / "fifo")
        self.assertRaises(PathRefused, resolve_path, self.root, "fifo")

    def test_missing_file(self) -> None:
        self.assertRaises(FileNotFoundError, resolve_path, self.root, "bootsig.bin")
        self.assertRaises(FileNotFoundError, resolve_path, self.root, "pxelinux.0/child")
