"""NFS config: the contract's keys, and export paths confined under nfs.root at load (file:line)."""

import os
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config import ConfigError, load_config, parse_config
from pxetwist.policy.decision import NfsAccess, NfsExport
from pxetwist.policy.values import MacAddress

CONTRACT = """\
nfs:
  enabled: true
  root: {root}
  versions: [4.1, 3]
machines:
  - mac: 52:54:00:77:00:10
    address: 10.77.0.10
    nfs:
      - {{path: images/base, access: ro}}
      - {{path: "hosts/{{mac}}", access: rw, create: true}}
    cmdline: "console=ttyS0 root=/dev/nfs nfsroot={{nfs}} extra={{nfs2}}"
"""


class NfsConfigTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pxt-nfs-cfg-"))
        self.addCleanup(_rmtree, self.root)

    def error_for(self, text: str) -> str:
        file = self.root / "pxe.yaml"
        file.write_text(text)
        try:
            load_config(file)
        except ConfigError as error:
            return str(error)
        raise AssertionError("no ConfigError raised")

    def test_contract_example_loads(self) -> None:
        config = parse_config(CONTRACT.format(root=self.root / "nfs"), source="pxe.yaml")
        self.assertTrue(config.nfs.enabled)
        self.assertEqual(config.nfs.root, self.root / "nfs")
        self.assertEqual(config.nfs.versions, ("4.1", "3"))
        self.assertTrue(config.nfs.ganesha.managed)
        machine = config.machines[0]
        self.assertEqual(
            config.machine_profile(machine).nfs,
            (
                NfsExport("images/base", NfsAccess.RO, False),
                NfsExport("hosts/{mac}", NfsAccess.RW, True),
            ),
        )

    def test_defaults(self) -> None:
        config = parse_config("{}")
        self.assertFalse(config.nfs.enabled)
        self.assertEqual(config.nfs.versions, ("4.1", "3"))
        self.assertEqual(config.nfs.ganesha.export_ids, (1000, 65000))

    def test_group_and_defaults_exports_inherit_and_machine_overrides(self) -> None:
        config = parse_config(
            "defaults: {nfs: [{path: images/base}]}\n"
            "groups:\n  compute: {nfs: [{path: images/compute}]}\n"
            "machines:\n"
            "  - {mac: 52:54:00:00:00:01, group: compute}\n"
            "  - {mac: 52:54:00:00:00:02}\n"
            "  - {mac: 52:54:00:00:00:03, group: compute, nfs: []}\n"
        )
        profiles = [config.machine_profile(m).nfs for m in config.machines]
        self.assertEqual(profiles[0], (NfsExport("images/compute"),))
        self.assertEqual(profiles[1], (NfsExport("images/base"),))
        self.assertEqual(profiles[2], ())

    def test_operator_ganesha_over_dbus(self) -> None:
        config = parse_config("nfs: {ganesha: {dbus: 'unix:path=/run/dbus/system_bus_socket'}}")
        self.assertFalse(config.nfs.ganesha.managed)
        self.assertEqual(config.nfs.ganesha.dbus, "unix:path=/run/dbus/system_bus_socket")
        self.assertIn(
            "nfs.ganesha.dbus: is for an operator's Ganesha",
            self.error_for("nfs: {ganesha: {managed: true, dbus: system}}"),
        )

    def test_bad_version(self) -> None:
        self.assertIn(
            "pxe.yaml:1: nfs.versions[1]: 5 is not an NFS version",
            self.error_for("nfs: {versions: [3, 5]}"),
        )

    def test_bad_access_and_unknown_key(self) -> None:
        self.assertIn(
            "pxe.yaml:3: machines[0].nfs[0].access: 'rwx' is not one of: ro, rw",
            self.error_for(
                "machines:\n  - mac: 52:54:00:00:00:01\n    nfs: [{path: a, access: rwx}]\n"
            ),
        )
        self.assertIn(
            "machines[0].nfs[0].mode: unknown key",
            self.error_for(
                "machines:\n  - mac: 52:54:00:00:00:01\n    nfs: [{path: a, mode: 1}]\n"
            ),
        )

    def test_dotdot_refused_with_line(self) -> None:
        message = self.error_for(
            f"nfs: {{root: {self.root}}}\n"
            "machines:\n"
            "  - mac: 52:54:00:00:00:01\n"
            "    nfs:\n"
            "      - path: hosts/../../etc\n"
        )
        self.assertRegex(message, r"pxe\.yaml:5: machines\[0\]\.nfs\[0\]\.path: .*leads out")

    def test_absolute_refused_with_line(self) -> None:
        message = self.error_for("defaults:\n  nfs:\n    - {path: /etc}\n")
        self.assertRegex(message, r"pxe\.yaml:3: defaults\.nfs\[0\]\.path: '/etc' is absolute")

    def test_symlink_out_of_root_refused_with_line(self) -> None:
        root = self.root / "nfs"
        (root / "images").mkdir(parents=True)
        os.symlink("/etc", root / "images" / "escape")
        os.symlink("/", root / "hosts")
        message = self.error_for(
            f"nfs: {{root: {root}}}\n"
            "groups:\n"
            "  g:\n"
            "    nfs:\n"
            "      - {path: images/ok}\n"
            "      - {path: images/escape/x}\n"
        )
        self.assertRegex(message, r"pxe\.yaml:6: groups\.g\.nfs\[1\]\.path: .*symlink \(to /etc")
        message = self.error_for(
            f"nfs: {{root: {root}}}\nmachines:\n  - mac: 52:54:00:00:00:01\n"
            "    nfs: [{path: 'hosts/{mac}'}]\n"
        )
        self.assertRegex(message, r"pxe\.yaml:4: machines\[0\]\.nfs\[0\]\.path: .*symlink")

    def test_unknown_placeholder_and_unsafe_characters(self) -> None:
        self.assertIn(
            "unknown placeholder {uuid}",
            self.error_for("defaults: {nfs: [{path: 'hosts/{uuid}'}]}"),
        )
        self.assertIn(
            "contains a space",
            self.error_for("defaults: {nfs: [{path: 'hosts/a b'}]}"),
        )
        self.assertIn("contains a space", self.error_for('defaults: {nfs: [{path: "a\\"b"}]}'))

    def test_name_placeholder_needs_a_named_machine(self) -> None:
        message = self.error_for(
            "groups: {g: {nfs: [{path: 'hosts/{name}'}]}}\n"
            "machines:\n"
            "  - {mac: 52:54:00:00:00:01, name: node1, group: g}\n"
            "  - {mac: 52:54:00:00:00:02, group: g}\n"
        )
        self.assertIn("pxe.yaml:4: machines[1]: its NFS export 'hosts/{name}' uses {name}", message)

    def test_mac_in_config_is_dashed_in_paths(self) -> None:
        from pxetwist.nfs.paths import expand

        self.assertEqual(
            expand("hosts/{mac}/{name}", MacAddress.parse("52:54:00:77:00:10"), "node1"),
            "hosts/52-54-00-77-00-10/node1",
        )


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
