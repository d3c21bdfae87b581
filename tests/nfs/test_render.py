"""Ganesha config from grants: ro/rw, several machines, groups; pseudo paths opaque and stable."""

import os
import re
import shutil
import tempfile
from ipaddress import IPv4Address
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config import parse_config
from pxetwist.nfs.exports import ExportIds, ExportPlanner
from pxetwist.nfs.paths import NfsPathError, confine, load_or_create_key, pseudo_path
from pxetwist.nfs.render import ExportGrant, GaneshaSettings, render_config, render_export
from pxetwist.policy.builtin import StaticPolicy
from pxetwist.policy.decision import BootDecision, NfsAccess, NfsExport
from pxetwist.policy.placeholders import expand_nfs
from pxetwist.policy.request import BootRequest
from pxetwist.policy.values import MacAddress, Stage

MAC1 = MacAddress.parse("52:54:00:77:00:10")
MAC2 = MacAddress.parse("52:54:00:77:00:11")
KEY = bytes(range(32))


def blocks(text: str) -> list[str]:
    """Each EXPORT { ... } block of a config (blocks nest one level: FSAL and CLIENT)."""
    return re.findall(r"EXPORT \{\n(?:.*\n)*?\}\n", text)


def grant(
    export_id: int, mac: MacAddress, client: str, path: str, access: NfsAccess
) -> ExportGrant:
    return ExportGrant(
        export_id=export_id,
        mac=mac,
        client=IPv4Address(client),
        path=Path("/srv/nfs") / path,
        pseudo=pseudo_path(KEY, mac, path),
        access=access,
        relative=path,
    )


class RenderTests(SynchronousTestCase):
    settings = GaneshaSettings(versions=("4.1", "3"), recovery_dir=Path("/var/lib/x/recov"))

    def test_rw_export_one_client_no_root_squash(self) -> None:
        text = render_export(
            grant(1001, MAC1, "10.77.0.10", "hosts/a", NfsAccess.RW), self.settings
        )
        self.assertIn("Export_Id = 1001;", text)
        self.assertIn('Path = "/srv/nfs/hosts/a";', text)
        self.assertIn(f'Pseudo = "{pseudo_path(KEY, MAC1, "hosts/a")}";', text)
        self.assertIn("    Access_Type = None;\n", text)  # nobody but the CLIENT block
        self.assertEqual(text.count("CLIENT {"), 1)
        client = text[text.index("CLIENT {") :]
        self.assertIn("Clients = 10.77.0.10;", client)
        self.assertIn("Access_Type = RW;", client)
        self.assertIn("Squash = No_Root_Squash;", client)
        self.assertIn("Protocols = 3, 4;", text)
        self.assertIn("FSAL { Name = VFS; }", text)

    def test_ro_export_refuses_writes_root_still_reads(self) -> None:
        text = render_export(
            grant(1002, MAC1, "10.77.0.10", "images/base", NfsAccess.RO), self.settings
        )
        client = text[text.index("CLIENT {") :]
        self.assertIn("Access_Type = RO;", client)
        self.assertIn("Squash = No_Root_Squash;", client)  # a ro root image has 0600 files
        self.assertNotIn("RW", text)

    def test_whole_config_several_machines(self) -> None:
        grants = [
            grant(1001, MAC1, "10.77.0.10", "images/base", NfsAccess.RO),
            grant(1002, MAC1, "10.77.0.10", "hosts/a", NfsAccess.RW),
            grant(1003, MAC2, "10.77.0.11", "images/base", NfsAccess.RO),
        ]
        text = render_config(self.settings, reversed(grants))
        self.assertIn("Mount_Path_Pseudo = true;", text)
        self.assertIn("Protocols = 3, 4;", text)
        self.assertIn("Minor_Versions = 1;", text)
        self.assertIn("Graceless = true;", text)
        self.assertIn('RecoveryRoot = "/var/lib/x/recov";', text)
        self.assertNotIn("Bind_addr", text)
        found = blocks(text)
        self.assertEqual(len(found), 3)
        # sorted by id, each with exactly one client: the machine's address
        self.assertEqual(
            [re.findall(r"Export_Id = (\d+);", b)[0] for b in found], ["1001", "1002", "1003"]
        )
        self.assertEqual(
            [re.findall(r"Clients = ([\d.]+);", b) for b in found],
            [["10.77.0.10"], ["10.77.0.10"], ["10.77.0.11"]],
        )
        # the shared directory is two exports with two pseudo paths
        pseudos = [re.findall(r'Pseudo = "([^"]+)";', b)[0] for b in found]
        self.assertEqual(len(set(pseudos)), 3)

    def test_v4_only_and_bind_address(self) -> None:
        settings = GaneshaSettings(versions=("4.2", "4.1"), bind_address=IPv4Address("10.77.0.1"))
        self.assertFalse(settings.serves_v3)
        text = render_config(settings, [])
        self.assertIn("Bind_addr = 10.77.0.1;", text)
        self.assertIn("Protocols = 4;", text)
        self.assertIn("Minor_Versions = 1, 2;", text)
        self.assertEqual(blocks(text), [])

    def test_export_id_range(self) -> None:
        with self.assertRaises(ValueError):
            render_export(grant(0, MAC1, "10.0.0.1", "a", NfsAccess.RO), self.settings)


class PseudoPathTests(SynchronousTestCase):
    def test_opaque(self) -> None:
        pseudo = pseudo_path(KEY, MAC1, "hosts/node1")
        # base32 only: no 0, 1, 8, 9, '-' or ':', so no notation of any MAC can appear in it
        self.assertRegex(pseudo, r"^/[a-z2-7]{24}$")
        self.assertNotIn("node1", pseudo)
        self.assertNotIn("host", pseudo)

    def test_stable_and_distinct(self) -> None:
        self.assertEqual(pseudo_path(KEY, MAC1, "a"), pseudo_path(bytes(KEY), MAC1, "a"))
        self.assertNotEqual(pseudo_path(KEY, MAC1, "a"), pseudo_path(KEY, MAC2, "a"))
        self.assertNotEqual(pseudo_path(KEY, MAC1, "a"), pseudo_path(KEY, MAC1, "b"))
        self.assertNotEqual(pseudo_path(KEY, MAC1, "a"), pseudo_path(b"x" * 32, MAC1, "a"))

    def test_key_file_made_once_and_kept(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="pxt-nfs-key-"))
        self.addCleanup(shutil.rmtree, directory, True)
        key_file = directory / "nfs" / "pseudo.key"
        key = load_or_create_key(key_file)
        self.assertEqual(len(key), 32)
        self.assertEqual(os.stat(key_file).st_mode & 0o777, 0o600)
        self.assertEqual(load_or_create_key(key_file), key)  # a restart: same pseudo paths

    def test_export_ids_stable_across_restarts(self) -> None:
        directory = Path(tempfile.mkdtemp(prefix="pxt-nfs-ids-"))
        self.addCleanup(shutil.rmtree, directory, True)
        ids = ExportIds(directory / "ids.json", 100, 102)
        self.assertEqual(ids.id_for("/a", set()), 100)
        self.assertEqual(ids.id_for("/b", set()), 101)
        again = ExportIds(directory / "ids.json", 100, 102)
        self.assertEqual(again.id_for("/b", set()), 101)
        self.assertEqual(again.id_for("/c", set()), 102)
        # range full: an id not in use now is reused
        self.assertEqual(again.id_for("/d", {100, 102}), 101)
        with self.assertRaises(NfsPathError):
            again.id_for("/e", {100, 101, 102})


class PlannerTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="pxt-nfs-plan-"))
        self.addCleanup(shutil.rmtree, self.root, True)
        (self.root / "images" / "base").mkdir(parents=True)
        self.planner = ExportPlanner(self.root, KEY)

    def test_group_decision_to_locations(self) -> None:
        config = parse_config(
            f"nfs: {{enabled: true, root: {self.root}}}\n"
            "groups:\n"
            "  diskless:\n"
            "    kernel: vmlinuz\n"
            "    nfs: [{path: images/base}, {path: 'hosts/{name}', access: rw, create: true}]\n"
            "    cmdline: 'root=/dev/nfs nfsroot={nfs} ro={nfs2}'\n"
            "machines:\n"
            "  - {mac: 52:54:00:77:00:10, name: node1, group: diskless}\n"
            "  - {mac: 52:54:00:77:00:11, name: node2, group: diskless}\n"
        )
        policy = StaticPolicy(config)
        plans = {}
        for mac in (MAC1, MAC2):
            decision = policy.decide(BootRequest(mac=mac, stage=Stage.NFS))
            assert decision is not None
            plans[mac] = self.planner.plan(decision, mac)
            self.assertEqual(plans[mac].refused, ())
        self.assertEqual([e.relative for e in plans[MAC1].exports], ["images/base", "hosts/node1"])
        self.assertEqual([e.access for e in plans[MAC2].exports], [NfsAccess.RO, NfsAccess.RW])
        self.assertEqual(plans[MAC2].exports[1].path, self.root.resolve() / "hosts" / "node2")
        self.assertNotEqual(plans[MAC1].exports[0].pseudo, plans[MAC2].exports[0].pseudo)
        decision = policy.decide(BootRequest(mac=MAC1, stage=Stage.NFS))
        locations = self.planner.locations(decision, MAC1, "10.77.0.1")
        self.assertEqual(
            expand_nfs("root=/dev/nfs nfsroot={nfs} ro={nfs2} x=${nfs}", locations),
            f"root=/dev/nfs nfsroot={locations[0]} ro={locations[1]} x=${{nfs}}",
        )
        self.assertTrue(locations[0].startswith("10.77.0.1:/"))
        self.assertEqual(expand_nfs("{nfs1}", locations), locations[0])
        with self.assertRaisesRegex(ValueError, "names NFS export 3"):
            expand_nfs("{nfs3}", locations)

    def test_symlink_made_after_start_refused_at_grant(self) -> None:
        (self.root / "hosts").mkdir()
        os.symlink("/etc", self.root / "hosts" / MAC1.dashed)
        decision = BootDecision(nfs=(NfsExport("hosts/{mac}", NfsAccess.RW, True),))
        plan = self.planner.plan(decision, MAC1)
        self.assertEqual(plan.exports, ())
        self.assertIn("leads out of nfs.root", plan.refused[0][1])

    def test_confine(self) -> None:
        self.assertEqual(confine(self.root, "images/base"), self.root.resolve() / "images/base")
        with self.assertRaises(NfsPathError):
            confine(self.root, "../x")
        with self.assertRaises(NfsPathError):
            confine(self.root, ".")

    def test_plugin_decision_without_name(self) -> None:
        decision = BootDecision(nfs=(NfsExport("hosts/{name}"), NfsExport("images/base")))
        plan = self.planner.plan(decision, MAC1)
        self.assertEqual([e.relative for e in plan.exports], ["images/base"])
        self.assertIn("has no name", plan.refused[0][1])
