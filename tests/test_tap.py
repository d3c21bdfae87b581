"""``twistd pxe``: the dropin, the options, config errors as one line, the service tree."""

import subprocess
import sys
from pathlib import Path
from typing import cast

from twisted.application.service import IServiceMaker, MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

from pxetwist import tap
from pxetwist.context import IServerReactor
from tests.util import temp_dir

ROOT = Path(__file__).resolve().parents[1]
TWISTD = Path(sys.executable).parent / "twistd"


def write_config(directory: Path, text: str) -> Path:
    (directory / "tftp").mkdir(exist_ok=True)
    (directory / "http").mkdir(exist_ok=True)
    path = directory / "pxe.yaml"
    path.write_text("tftp: {root: tftp}\nhttp: {root: http}\ninterfaces: [lo]\n" + text)
    return path


class DropinTests(SynchronousTestCase):
    def test_pxe_service_maker_is_found(self) -> None:
        makers = {maker.tapname: maker for maker in getPlugins(IServiceMaker)}
        self.assertIn("pxe", makers)
        self.assertEqual(makers["pxe"].module, "pxetwist.tap")  # type: ignore[attr-defined]

    def test_no_init_files_in_the_namespace(self) -> None:
        self.assertFalse((ROOT / "twisted" / "__init__.py").exists())
        self.assertFalse((ROOT / "twisted" / "plugins" / "__init__.py").exists())


class OptionsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self)

    def test_valid_config_prepares_a_setup(self) -> None:
        options = tap.Options()
        options.parseOptions(["--config", str(write_config(self.dir, ""))])
        assert options.setup is not None
        self.assertEqual([i.name for i in options.setup.interfaces], ["lo"])
        self.assertEqual([name for name, _ in options.setup.policies], ["static", "arch"])

    def test_interface_option_is_repeatable_and_wins(self) -> None:
        options = tap.Options()
        options.parseOptions(
            ["-c", str(write_config(self.dir, "")), "-i", "lo", "--interface", "lo"]
        )
        self.assertEqual(options["interfaces"], ["lo", "lo"])

    def test_unknown_interface_is_a_config_error(self) -> None:
        options = tap.Options()
        error = self.assertRaises(
            SystemExit,
            options.parseOptions,
            ["-c", str(write_config(self.dir, "")), "-i", "nosuch0"],
        )
        self.assertEqual(error.code, 1)

    def test_check_config_exits_zero(self) -> None:
        options = tap.Options()
        error = self.assertRaises(
            SystemExit,
            options.parseOptions,
            ["-c", str(write_config(self.dir, "")), "--check-config"],
        )
        self.assertEqual(error.code, 0)

    def test_default_config_falls_back_to_the_bundled_example(self) -> None:
        expected = tap.SYSTEM_CONFIG if tap.SYSTEM_CONFIG.exists() else tap.BUNDLED_CONFIG
        self.assertEqual(tap.default_config_path(), expected)
        self.assertTrue(tap.BUNDLED_CONFIG.exists())

    def test_make_service_builds_a_multiservice(self) -> None:
        options = tap.Options()
        config = self.dir / "off.yaml"
        config.write_text(
            "interfaces: [lo]\ndhcp: {mode: off}\ntftp: {enabled: false}\nhttp: {enabled: false}\n"
        )
        options.parseOptions(["-c", str(config)])
        from pxetwist.service import PxeService

        assert options.setup is not None
        # Every protocol is off: the reactor is only the chain's clock.
        service = PxeService(options.setup, cast(IServerReactor, MemoryReactorClock()))
        self.assertIsInstance(service, MultiService)
        self.assertEqual(service.chain.names, ("static", "arch"))


class CommandLineTests(SynchronousTestCase):
    """The real ``twistd`` process: exit codes and the one-line error."""

    def twistd(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(TWISTD), "-n", "pxe", *args],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=self.dir,
        )

    def setUp(self) -> None:
        self.dir = temp_dir(self)

    def test_check_config_of_the_example(self) -> None:
        config = write_config(self.dir, "")
        result = self.twistd("--config", str(config), "--check-config")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("policy chain: static -> arch", result.stdout)

    def test_bad_value_exits_nonzero_with_one_line(self) -> None:
        config = write_config(
            self.dir,
            "dhcp:\n  mode: authoritative\n  subnets:\n  - network: 10.77.0.0/16\n"
            "    range: [10.77.0.10, 10.77.0.300]\n",
        )
        result = self.twistd("--config", str(config), "--check-config")
        self.assertNotEqual(result.returncode, 0)
        self.assertEqual(
            result.stderr.strip().splitlines(),
            [f"{config}:8: dhcp.subnets[0].range[1]: '10.77.0.300' is not an IPv4 address"],
        )

    def test_unknown_key_exits_nonzero(self) -> None:
        result = self.twistd("--config", str(write_config(self.dir, "tftpp: {}\n")))
        self.assertNotEqual(result.returncode, 0)
        self.assertIn("pxe.yaml:4: tftpp: unknown key", result.stderr)

    def test_broken_plugin_stops_startup_with_one_line(self) -> None:
        plugins = self.dir / "plugins"
        plugins.mkdir()
        (plugins / "clumsy.py").write_text("import nonexistent_module_xyz\n")
        config = write_config(self.dir, f"policy: {{plugin_dirs: [{plugins}], chain: [static]}}\n")
        result = self.twistd("--config", str(config), "--check-config")
        self.assertNotEqual(result.returncode, 0)
        lines = result.stderr.strip().splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn("clumsy.py failed to import: ModuleNotFoundError", lines[0])
