"""Policy plugins: found by name in twisted.plugins and in plugin directories, verified."""

import textwrap
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.policy.plugins import PluginError, build_chain, find_factories
from pxetwist.testing import config_from_yaml, make_request, run_chain
from tests.util import temp_dir

GOOD = """
from zope.interface import implementer, provider
from pxetwist.policy import BootDecision, IBootPolicy, IBootPolicyFactory

@implementer(IBootPolicy)
class Lab:
    def decide(self, request):
        if str(request.mac).startswith("52:54:00:1a"):
            return BootDecision(program="lab.efi", reason="lab range")
        return None

@provider(IBootPolicyFactory)
class LabFactory:
    name = "{name}"
    description = "test"
    @staticmethod
    def build(config):
        return Lab()
"""


class PluginDirectoryTests(SynchronousTestCase):
    def plugin_dir(self, files: dict[str, str]) -> Path:
        directory = temp_dir(self)
        for name, text in files.items():
            (directory / name).write_text(textwrap.dedent(text))
        return directory

    def config(self, directory: Path, chain: str) -> object:
        return config_from_yaml(f"policy: {{chain: {chain}, plugin_dirs: [{directory}]}}")

    def test_builtins_are_found_in_twisted_plugins(self) -> None:
        factories = find_factories([])
        self.assertTrue(factories["static"][1].endswith("pxetwist/policy/builtin.py"))
        self.assertIn("arch", factories)

    def test_dropped_in_plugin_decides_for_its_machines(self) -> None:
        directory = self.plugin_dir({"labrange.py": GOOD.format(name="labrange")})
        config = self.config(directory, "[labrange, arch]")
        chain = build_chain(config, Clock())  # type: ignore[arg-type]
        self.assertEqual(chain.names, ("labrange", "arch"))
        mine = run_chain(chain.policies, make_request("52:54:00:1a:00:01"))
        other = run_chain(chain.policies, make_request("52:54:00:99:00:01", arch=0))
        assert mine is not None and other is not None
        self.assertEqual((mine.policy, mine.program), ("labrange", "lab.efi"))
        self.assertEqual(other.policy, "arch")

    def test_unknown_name_says_where_it_looked(self) -> None:
        directory = self.plugin_dir({})
        error = self.assertRaises(
            PluginError, build_chain, self.config(directory, "[nosuch]"), Clock()
        )
        self.assertIn("policy 'nosuch' not found", str(error))
        self.assertIn(str(directory), str(error))

    def test_broken_file_stops_startup_naming_the_file(self) -> None:
        directory = self.plugin_dir({"broken.py": "def oops(:\n"})
        error = self.assertRaises(
            PluginError, build_chain, self.config(directory, "[static]"), Clock()
        )
        self.assertIn(
            f"plugin file {directory / 'broken.py'} failed to import: SyntaxError", str(error)
        )

    def test_factory_that_does_not_verify(self) -> None:
        text = """
        from zope.interface import provider
        from pxetwist.policy import IBootPolicyFactory
        @provider(IBootPolicyFactory)
        class Half:
            name = "half"
        """
        directory = self.plugin_dir({"half.py": text})
        error = self.assertRaises(
            PluginError, build_chain, self.config(directory, "[half]"), Clock()
        )
        self.assertIn("policy 'half' from", str(error))
        self.assertIn("not a valid IBootPolicyFactory", str(error))

    def test_policy_object_that_does_not_verify(self) -> None:
        text = """
        from zope.interface import provider
        from pxetwist.policy import IBootPolicyFactory
        @provider(IBootPolicyFactory)
        class Bad:
            name = "bad"
            description = "returns a non-policy"
            @staticmethod
            def build(config):
                return object()
        """
        directory = self.plugin_dir({"bad.py": text})
        error = self.assertRaises(
            PluginError, build_chain, self.config(directory, "[bad]"), Clock()
        )
        self.assertIn("not an IBootPolicy", str(error))
