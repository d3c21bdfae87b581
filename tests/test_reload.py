"""Hot reload (issue 13): the Reloader, the control socket and SIGHUP, without a network."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import cast

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase, TestCase

from pxetwist.config import ConfigError, load_config
from pxetwist.context import IServerReactor
from pxetwist.control import ControlProtocol
from pxetwist.policy.plugins import PluginError
from pxetwist.service import PxeService
from pxetwist.startup import prepare

BASE = """
data_dir: {base}/data
dhcp: {{mode: off}}
tftp: {{root: {base}}}
http: {{root: {base}, port: 0}}
policy: {{chain: {chain}, plugin_dirs: [{base}/plugins]}}
machines:
  - {{mac: "52:54:00:77:00:10", kernel: {kernel}, boot_once: true}}
"""

PLUGIN = """
from zope.interface import implementer, provider
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.interfaces import IBootPolicy, IBootPolicyFactory

@implementer(IBootPolicy)
class Fixed:
    def decide(self, request):
        return BootDecision(program="{program}", reason="fixed")

@provider(IBootPolicyFactory)
class FixedFactory:
    name = "fixed"
    description = "always the same program"
    @staticmethod
    def build(config):
        return Fixed()
"""


class ReloaderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pxt-reload-"))
        (self.base / "plugins").mkdir()
        self.path = self.base / "pxe.yaml"
        self.write(kernel="one/linux")
        setup = prepare(load_config(self.path), interfaces=("lo",))
        self.service = PxeService(setup, cast(IServerReactor, MemoryReactorClock()))
        self.context = self.service.context

    def write(self, *, kernel: str = "one/linux", chain: str = "[static]", extra: str = "") -> None:
        text = BASE.format(base=self.base, chain=chain, kernel=kernel) + extra
        self.path.write_text(text)

    def test_reload_swaps_config_and_chain_and_keeps_the_gate(self) -> None:
        gate = self.context.chain.gate
        self.assertIsNotNone(gate)
        self.assertEqual([info.name for info in self.context.interfaces], ["lo"])
        self.write(kernel="two/linux")
        summary = self.service.reloader.reload_now()
        self.assertEqual(self.context.config.machines[0].profile.kernel, "two/linux")
        self.assertIs(self.context.chain.gate, gate)
        self.assertEqual(summary["policy_chain"], ["static"])
        self.assertEqual(summary["interfaces"], ["lo"])
        self.assertEqual(summary["restart_needed"], [])

    def test_after_reload_runs_once_a_config_is_in_force_and_not_on_refusal(self) -> None:
        """The hook ``twistd pxe`` uses to collect what a reload leaves (pxetwist.gcpolicy)."""
        calls: list[str] = []
        self.service.reloader.after_reload = lambda: calls.append(
            self.context.config.machines[0].profile.kernel or ""
        )
        self.write(kernel="two/linux")
        self.service.reloader.reload_now()
        self.assertEqual(calls, ["two/linux"])
        self.path.write_text("interfaces: [lo]\nnot_a_key: 1\n")
        self.assertRaises(ConfigError, self.service.reloader.reload_now)
        self.assertEqual(calls, ["two/linux"])

    def test_broken_config_is_refused_and_the_old_one_stays(self) -> None:
        before = self.context.live.current
        self.path.write_text(self.path.read_text() + "tftpp: {}\n")
        with self.assertRaises(ConfigError) as raised:
            self.service.reloader.reload_now()
        self.assertIn(f"{self.path}:9: tftpp: unknown key", str(raised.exception))
        self.assertIs(self.context.live.current, before)
        self.flushLoggedErrors()

    def test_plugins_are_imported_again_when_changed(self) -> None:
        plugin = self.base / "plugins" / "fixedpolicy.py"
        plugin.write_text(PLUGIN.format(program="first.efi"))
        self.write(chain="[fixed]")
        self.service.reloader.reload_now()
        decide = self.context.chain.decide_now
        from pxetwist.testing import make_request

        self.assertEqual(decide(make_request()).program, "first.efi")  # type: ignore[union-attr]
        plugin.write_text(PLUGIN.format(program="second.efi"))
        stat = plugin.stat()
        os.utime(plugin, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))
        self.service.reloader.reload_now()
        decide = self.context.chain.decide_now
        self.assertEqual(decide(make_request()).program, "second.efi")  # type: ignore[union-attr]
        plugin.write_text("import nonexistent_module_xyz\n")
        os.utime(plugin, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000))
        with self.assertRaises(PluginError):
            self.service.reloader.reload_now()
        self.assertEqual(  # the version that worked stays in force
            self.context.chain.decide_now(make_request()).program,  # type: ignore[union-attr]
            "second.efi",
        )

    def test_settings_read_at_start_are_named(self) -> None:
        self.write(extra="sessions: {stuck_after: 60}\n")
        self.path.write_text(self.path.read_text().replace("mode: off", "mode: proxy"))
        summary = self.service.reloader.reload_now()
        self.assertEqual(summary["restart_needed"], ["dhcp.mode"])
        self.assertEqual(self.service.recorder.config.sessions.stuck_after, 60)

    def test_control_protocol_answers_with_the_error(self) -> None:
        from twisted.internet.testing import StringTransport

        protocol = ControlProtocol(self.service.reloader)
        transport = StringTransport()
        protocol.makeConnection(transport)
        self.path.write_text("dhcp: {mode: sideways}\n")
        protocol.dataReceived(b"reload\n")
        self.assertIn(b'"ok": false', transport.value())
        self.assertIn(b"dhcp.mode: 'sideways' is not one of", transport.value())
        self.flushLoggedErrors()


class SighupTests(TestCase):
    """Issue 18 defect 3: SIGHUP must never kill the server; it reloads."""

    timeout = 60

    def test_sighup_reloads_and_the_server_lives(self) -> None:
        base = Path(tempfile.mkdtemp(prefix="pxt-sighup-"))
        config = base / "pxe.yaml"
        config.write_text(
            f"interfaces: [lo]\ndata_dir: {base}/data\ndhcp: {{mode: off}}\n"
            "tftp: {enabled: false}\n"
            f"http: {{root: {base}, port: 0}}\npolicy: {{plugin_dirs: []}}\n"
        )
        twistd = Path(sys.executable).parent / "twistd"
        log = base / "log.txt"
        with log.open("w") as output:
            process = subprocess.Popen(
                [str(twistd), "-n", "--pidfile=", "pxe", "--config", str(config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                cwd=base,
            )
        self.addCleanup(self.stop, process)
        self.wait_for(log, "pxetwist starting")
        time.sleep(0.5)
        process.send_signal(signal.SIGHUP)
        self.wait_for(log, "reloaded")
        config.write_text(config.read_text() + "bogus: 1\n")
        process.send_signal(signal.SIGHUP)
        self.wait_for(log, "reload refused")
        self.assertIsNone(process.poll(), log.read_text())
        self.assertIn(f"{config}:7: bogus: unknown key", log.read_text())
        result = subprocess.run(
            [str(Path(sys.executable).parent / "pxetwist"), "reload", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("bogus: unknown key", result.stderr)  # the CLI reads the file itself
        # a config the CLI can read but the server cannot run: refused by the server, reported
        config.write_text(
            config.read_text()
            .replace("bogus: 1\n", "")
            .replace("policy: {plugin_dirs: []}", "policy: {plugin_dirs: [], chain: [nosuch]}")
        )
        result = subprocess.run(
            [str(Path(sys.executable).parent / "pxetwist"), "reload", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 1)
        self.assertIn("reload refused, the running config stays", result.stderr)
        self.assertIn("policy 'nosuch' not found", result.stderr)
        config.write_text(config.read_text().replace(", chain: [nosuch]", ""))
        result = subprocess.run(
            [str(Path(sys.executable).parent / "pxetwist"), "reload", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertIn("reloaded", result.stdout)
        self.assertIsNone(process.poll())

    @staticmethod
    def wait_for(log: Path, text: str, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in log.read_text():
                return
            time.sleep(0.1)
        raise AssertionError(f"{text!r} not logged in {timeout}s:\n{log.read_text()}")

    @staticmethod
    def stop(process: subprocess.Popen[bytes]) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)
