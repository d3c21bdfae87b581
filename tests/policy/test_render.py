"""Boot-loader configs from a decision: iPXE, PXELINUX, GRUB; locations; templates; errors."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config import parse_config
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.placeholders import expand_placeholders
from pxetwist.policy.render import (
    BUNDLED_TEMPLATES,
    LoaderKind,
    Renderer,
    RenderError,
    ServingContext,
    grub_location,
    has_boot_config,
    ipxe_location,
    pxelinux_location,
)
from pxetwist.policy.values import BootAction
from pxetwist.testing import make_request
from tests.util import temp_dir

REQUEST = make_request("52:54:00:77:00:10")
DECISION = BootDecision(
    kernel="debian/linux",
    initrds=("debian/initrd.gz", "http://{server}:{http_port}/extra/firmware.cpio.gz"),
    cmdline="console=ttyS0 url=http://{server}:{http_port}/preseed ip=${ip}",
    name="node1",
    reason="machine node1 (by MAC)",
)
LOCAL = BootDecision.local("machine node3: action local")


def roots(testcase: SynchronousTestCase) -> ServingContext:
    """HTTP root holds debian/linux; TFTP root holds debian/initrd.gz."""
    base = temp_dir(testcase)
    http, tftp = base / "http", base / "tftp"
    (http / "debian").mkdir(parents=True)
    (tftp / "debian").mkdir(parents=True)
    (http / "debian" / "linux").write_bytes(b"k")
    (tftp / "debian" / "initrd.gz").write_bytes(b"i")
    (tftp / "only-tftp").write_bytes(b"t")
    (http / "only-http").write_bytes(b"h")
    return ServingContext("10.77.0.1", 8080, 69, http, tftp)


class PlaceholderTests(SynchronousTestCase):
    def test_only_our_three_names(self) -> None:
        text = "http://{server}:{http_port}/a?mac=${mac}&x={other}&s=${server} tftp {tftp_port}"
        self.assertEqual(
            expand_placeholders(text, server="10.0.0.1", http_port=80, tftp_port=69),
            "http://10.0.0.1:80/a?mac=${mac}&x={other}&s=${server} tftp 69",
        )

    @given(st.text())
    def test_text_without_placeholders_is_unchanged(self, text: str) -> None:
        if "{server}" in text or "{http_port}" in text or "{tftp_port}" in text:
            return
        self.assertEqual(expand_placeholders(text, server="s", http_port=1, tftp_port=2), text)


class LocationTests(SynchronousTestCase):
    def test_ipxe_prefers_http_for_files_under_the_http_root(self) -> None:
        context = roots(self)
        self.assertEqual(
            ipxe_location("debian/linux", context), "http://10.77.0.1:8080/debian/linux"
        )
        self.assertEqual(ipxe_location("/only-tftp", context), "tftp://10.77.0.1/only-tftp")
        self.assertEqual(ipxe_location("missing", context), "tftp://10.77.0.1/missing")
        self.assertEqual(ipxe_location("tftp://{server}/x", context), "tftp://10.77.0.1/x")

    def test_ipxe_tftp_port_and_no_http(self) -> None:
        context = ServingContext("10.77.0.1", 8080, 6969, None, None)
        self.assertEqual(ipxe_location("boot/a+b", context), "tftp://10.77.0.1:6969/boot/a+b")
        self.assertRaises(ValueError, ipxe_location, "a b", context)

    def test_pxelinux(self) -> None:
        context = roots(self)
        self.assertEqual(pxelinux_location("/debian/initrd.gz", context), "debian/initrd.gz")
        self.assertEqual(pxelinux_location("only-http", context), "http://10.77.0.1:8080/only-http")
        self.assertEqual(pxelinux_location("only-tftp", context, absolute=True), "::only-tftp")
        self.assertEqual(pxelinux_location("http://h/x", context), "http://h/x")

    def test_grub(self) -> None:
        context = roots(self)
        self.assertEqual(grub_location("debian/initrd.gz", context), "/debian/initrd.gz")
        self.assertEqual(grub_location("only-http", context), "(http,10.77.0.1:8080)/only-http")
        self.assertEqual(
            grub_location("http://{server}:{http_port}/a/b?c=1", context),
            "(http,10.77.0.1:8080)/a/b?c=1",
        )
        self.assertEqual(grub_location("tftp://10.0.0.9/k", context), "(tftp,10.0.0.9)/k")
        self.assertRaises(ValueError, grub_location, "https://h/k", context)

    def test_paths_cannot_leave_the_root(self) -> None:
        context = roots(self)
        for locate in (ipxe_location, pxelinux_location, grub_location):
            self.assertRaises(ValueError, locate, "../../etc/passwd", context)
            self.assertRaises(ValueError, locate, "http://h/a b", context)


class BundledTemplateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.context = roots(self)
        self.renderer = Renderer()

    def test_ipxe_kernel_initrd_boot(self) -> None:
        text = self.renderer.render(LoaderKind.IPXE, DECISION, REQUEST, self.context)
        lines = text.splitlines()
        self.assertEqual(lines[0], "#!ipxe")
        self.assertIn(
            "kernel http://10.77.0.1:8080/debian/linux initrd=initrd.gz initrd=firmware.cpio.gz "
            "console=ttyS0 url=http://10.77.0.1:8080/preseed ip=${ip}",
            lines,
        )
        self.assertEqual(
            [line for line in lines if line.startswith("initrd ")],
            [
                "initrd tftp://10.77.0.1/debian/initrd.gz",
                "initrd http://10.77.0.1:8080/extra/firmware.cpio.gz",
            ],
        )
        self.assertEqual(lines[-1], "boot")
        self.assertTrue(text.endswith("\n"))

    def test_ipxe_chain_exit_and_script(self) -> None:
        chain = BootDecision(program="http://{server}:{http_port}/menu.ipxe")
        text = self.renderer.render(LoaderKind.IPXE, chain, REQUEST, self.context)
        self.assertEqual(text.splitlines()[-1], "chain http://10.77.0.1:8080/menu.ipxe")
        local = self.renderer.render(
            LoaderKind.IPXE, BootDecision.local("x"), REQUEST, self.context
        )
        self.assertEqual(local.splitlines()[-1], "exit")
        script = BootDecision(script="echo ${mac} on {server}\nshell")
        self.assertEqual(
            self.renderer.render(LoaderKind.IPXE, script, REQUEST, self.context),
            "#!ipxe\necho ${mac} on 10.77.0.1\nshell\n",
        )
        verbatim = BootDecision(script="#!ipxe\nexit\n")
        self.assertEqual(
            self.renderer.render(LoaderKind.IPXE, verbatim, REQUEST, self.context),
            "#!ipxe\nexit\n",
        )

    def test_pxelinux(self) -> None:
        text = self.renderer.render(LoaderKind.PXELINUX, DECISION, REQUEST, self.context)
        body = [line.strip() for line in text.splitlines() if not line.startswith("#")]
        self.assertEqual(
            body,
            [
                "DEFAULT pxetwist",
                "LABEL pxetwist",
                "KERNEL http://10.77.0.1:8080/debian/linux",
                "INITRD debian/initrd.gz,http://10.77.0.1:8080/extra/firmware.cpio.gz",
                "APPEND console=ttyS0 url=http://10.77.0.1:8080/preseed ip=${ip}",
            ],
        )
        local = self.renderer.render(
            LoaderKind.PXELINUX, BootDecision.local("x"), REQUEST, self.context
        )
        self.assertIn("LOCALBOOT 0", local)

    def test_grub(self) -> None:
        text = self.renderer.render(LoaderKind.GRUB, DECISION, REQUEST, self.context)
        body = [line for line in text.splitlines() if not line.startswith("#")]
        self.assertEqual(
            body,
            [
                "linux (http,10.77.0.1:8080)/debian/linux console=ttyS0 "
                "url=http://10.77.0.1:8080/preseed ip=${ip}",
                "initrd /debian/initrd.gz (http,10.77.0.1:8080)/extra/firmware.cpio.gz",
                "boot",
            ],
        )
        local = self.renderer.render(
            LoaderKind.GRUB, BootDecision.local("x"), REQUEST, self.context
        )
        self.assertEqual(local.splitlines()[-1], "exit")

    def test_header_names_the_machine(self) -> None:
        text = self.renderer.render(LoaderKind.GRUB, DECISION, REQUEST, self.context)
        self.assertIn("# pxetwist: 52:54:00:77:00:10 (node1): machine node1 (by MAC)\n", text)

    def test_newlines_in_values_cannot_add_config_lines(self) -> None:
        sneaky = BootDecision(kernel="k", cmdline="quiet\nKERNEL evil", reason="a\nDEFAULT evil")
        text = self.renderer.render(LoaderKind.PXELINUX, sneaky, REQUEST, self.context)
        self.assertNotIn("\nKERNEL evil", text)
        self.assertNotIn("\nDEFAULT evil", text)

    def test_nothing_to_render(self) -> None:
        for kind in LoaderKind:
            with self.assertRaises(RenderError):
                self.renderer.render(kind, BootDecision.ignore("no"), REQUEST, self.context)
        with self.assertRaises(RenderError) as caught:
            self.renderer.render(
                LoaderKind.PXELINUX, BootDecision(program="pxelinux.0"), REQUEST, self.context
            )
        self.assertIn("no kernel", str(caught.exception))

    def test_bad_value_is_a_render_error(self) -> None:
        with self.assertRaises(RenderError) as caught:
            self.renderer.render(
                LoaderKind.GRUB, BootDecision(kernel="https://h/k"), REQUEST, self.context
            )
        self.assertIn("grub.j2", str(caught.exception))
        self.assertIn("kernel", str(caught.exception))

    def test_has_boot_config(self) -> None:
        self.assertTrue(has_boot_config(LoaderKind.GRUB, DECISION))
        self.assertTrue(has_boot_config(LoaderKind.GRUB, BootDecision.local("x")))
        self.assertFalse(has_boot_config(LoaderKind.GRUB, BootDecision(program="x")))
        self.assertFalse(has_boot_config(LoaderKind.GRUB, BootDecision(script="x")))
        self.assertTrue(has_boot_config(LoaderKind.IPXE, BootDecision(script="x")))
        self.assertFalse(has_boot_config(LoaderKind.IPXE, BootDecision.ignore("x")))
        self.assertFalse(has_boot_config(LoaderKind.IPXE, None))
        self.assertEqual(BootDecision.ignore("x").action, BootAction.IGNORE)

    def test_bundled_templates_exist(self) -> None:
        for kind in LoaderKind:
            self.assertTrue((BUNDLED_TEMPLATES / kind.template).is_file())


class OperatorTemplateTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = temp_dir(self)
        self.context = roots(self)

    def write(self, name: str, text: str) -> Path:
        path = self.directory / name
        path.write_text(text)
        return path

    def test_operator_template_wins_and_others_fall_back(self) -> None:
        self.write("grub.j2", "set default=0\nlinux {{ kernel }} {{ cmdline }}\n")
        renderer = Renderer(self.directory)
        text = renderer.render(LoaderKind.GRUB, DECISION, REQUEST, self.context)
        self.assertTrue(text.startswith("set default=0\nlinux (http,10.77.0.1:8080)/debian/linux"))
        pxelinux = renderer.render(LoaderKind.PXELINUX, DECISION, REQUEST, self.context)
        self.assertIn("DEFAULT pxetwist", pxelinux)

    def test_undefined_variable_names_template_and_line(self) -> None:
        path = self.write("pxelinux.j2", "DEFAULT x\nLABEL x\n  KERNEL {{ kernal }}\n")
        with self.assertRaises(RenderError) as caught:
            Renderer(self.directory).render(LoaderKind.PXELINUX, DECISION, REQUEST, self.context)
        error = caught.exception
        self.assertEqual(
            (error.template, error.filename, error.line), ("pxelinux.j2", str(path), 3)
        )
        self.assertIn("'kernal' is undefined", str(error))
        self.assertIn("pxelinux.j2", str(error))
        self.assertIn("line 3", str(error))

    def test_syntax_error_names_template_and_line(self) -> None:
        self.write("ipxe.j2", "#!ipxe\n\n{% if kernel %}\nkernel {{ kernel }}\n")
        with self.assertRaises(RenderError) as caught:
            Renderer(self.directory).render(LoaderKind.IPXE, DECISION, REQUEST, self.context)
        self.assertEqual(caught.exception.template, "ipxe.j2")
        self.assertIsNotNone(caught.exception.line)

    def test_runtime_error_names_the_line(self) -> None:
        self.write("grub.j2", "a\nb\n{{ 1 // 0 }}\n")
        with self.assertRaises(RenderError) as caught:
            Renderer(self.directory).render(LoaderKind.GRUB, DECISION, REQUEST, self.context)
        self.assertEqual(caught.exception.line, 3)
        self.assertIn("ZeroDivisionError", str(caught.exception))

    def test_edits_are_picked_up(self) -> None:
        self.write("grub.j2", "one\n")
        renderer = Renderer(self.directory)
        self.assertEqual(renderer.render(LoaderKind.GRUB, DECISION, REQUEST, self.context), "one\n")
        path = self.write("grub.j2", "two\n")
        import os

        os.utime(path, (1e9 + 10, 2e9))
        self.assertEqual(renderer.render(LoaderKind.GRUB, DECISION, REQUEST, self.context), "two\n")


class ConfigKeyTests(SynchronousTestCase):
    def test_templates_default_to_the_config_directory(self) -> None:
        config = parse_config("{}", base_dir=Path("/etc/pxetwist"))
        self.assertEqual(config.templates, Path("/etc/pxetwist/templates"))

    def test_templates_key(self) -> None:
        config = parse_config("templates: site-templates\n", base_dir=Path("/etc/pxetwist"))
        self.assertEqual(config.templates, Path("/etc/pxetwist/site-templates"))
