"""The example plugin in plugins/: an inventory CSV, loaded as a site-local Twisted plugin."""

import os
import time
from pathlib import Path

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.policy.plugins import PluginError, build_chain
from pxetwist.policy.values import BootAction
from pxetwist.testing import assert_provides_policy, config_from_yaml, make_request, run_chain
from tests.util import temp_dir

PLUGINS = Path(__file__).resolve().parents[2] / "plugins"


class InventoryPluginTests(SynchronousTestCase):
    def chain_for(self, csv_text: str) -> object:
        base = temp_dir(self)
        (base / "inventory.csv").write_text(csv_text)
        config = config_from_yaml(
            f"policy:\n  chain: [inventory, arch]\n  plugin_dirs: [{PLUGINS}]\n"
            "  settings: {inventory: {csv: inventory.csv}}\n"
            "defaults: {cmdline: default}\n",
            base_dir=base,
        )
        # config_from_yaml's source is "<test>"; point relative settings at the temp dir.
        object.__setattr__(config, "source", str(base / "pxe.yaml"))
        self.csv = base / "inventory.csv"
        return build_chain(config, Clock())

    def test_example_csv_decides(self) -> None:
        chain = self.chain_for((PLUGINS / "inventory.example.csv").read_text())
        assert_provides_policy(chain.policies[0][1])  # type: ignore[attr-defined]
        decision = run_chain(chain.policies, make_request("52:54:00:aa:00:01", arch=0))  # type: ignore[attr-defined]
        assert decision is not None
        self.assertEqual(decision.policy, "inventory")
        self.assertEqual(decision.name, "rack1-n01")
        self.assertEqual(decision.initrds, ("rack1/initrd.img", "rack1/extra.img"))
        self.assertEqual(decision.cmdline, "console=ttyS0 rack=1")
        local = run_chain(chain.policies, make_request("52:54:00:aa:00:02"))  # type: ignore[attr-defined]
        assert local is not None
        self.assertIs(local.action, BootAction.LOCAL)

    def test_unlisted_machine_falls_through(self) -> None:
        chain = self.chain_for("mac,name\n52:54:00:aa:00:01,a\n")
        decision = run_chain(chain.policies, make_request("52:54:00:00:00:09", arch=0))  # type: ignore[attr-defined]
        assert decision is not None
        self.assertEqual(decision.policy, "arch")

    def test_file_is_reread_when_it_changes(self) -> None:
        chain = self.chain_for("mac,name\n52:54:00:aa:00:01,old\n")
        self.csv.write_text("mac,name\n52:54:00:aa:00:01,new\n")
        later = time.time() + 5
        os.utime(self.csv, (later, later))
        decision = run_chain(chain.policies, make_request("52:54:00:aa:00:01"))  # type: ignore[attr-defined]
        assert decision is not None
        self.assertEqual(decision.name, "new")

    def test_bad_row_names_file_and_line(self) -> None:
        error = self.assertRaises(
            PluginError, self.chain_for, "mac,name\n52:54:00:aa:00:01,a\nnot-a-mac,b\n"
        )
        self.assertIn("inventory.csv:3: 'not-a-mac' is not a MAC", str(error))
