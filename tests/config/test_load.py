"""Config loading: every error names file, line and key path; unknown keys are errors."""

from ipaddress import IPv4Address
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config import ConfigError, load_config, parse_config
from pxetwist.config.model import DhcpMode
from pxetwist.policy.values import BootAction, MacAddress

EXAMPLE = Path(__file__).resolve().parents[2] / "etc" / "pxe.yaml"


def error_for(text: str) -> str:
    try:
        parse_config(text, source="pxe.yaml")
    except ConfigError as error:
        return str(error)
    raise AssertionError("no ConfigError raised")


class ErrorMessageTests(SynchronousTestCase):
    def test_bad_address_names_line_and_path(self) -> None:
        text = (
            "dhcp:\n"
            "  mode: authoritative\n"
            "  subnets:\n"
            "    - network: 10.77.0.0/16\n"
            "      range: [10.77.0.10, 10.77.0.300]\n"
        )
        self.assertEqual(
            error_for(text),
            "pxe.yaml:5: dhcp.subnets[0].range[1]: '10.77.0.300' is not an IPv4 address",
        )

    def test_unknown_key_is_an_error(self) -> None:
        message = error_for("tftp:\n  enabled: true\n  rooot: /srv\n")
        self.assertTrue(message.startswith("pxe.yaml:3: tftp.rooot: unknown key"), message)

    def test_unknown_top_level_key(self) -> None:
        self.assertTrue(error_for("\n\nbogus: 1\n").startswith("pxe.yaml:3: bogus: unknown key"))

    def test_yaml_syntax_error_has_line(self) -> None:
        message = error_for("dhcp:\n  mode: [proxy\n")
        self.assertRegex(message, r"^pxe\.yaml:\d+: not valid YAML")

    def test_duplicate_key(self) -> None:
        self.assertEqual(
            error_for("tftp:\n  port: 69\n  port: 70\n"), "pxe.yaml:3: tftp.port: duplicate key"
        )

    def test_wrong_types(self) -> None:
        self.assertIn("tftp.port: 'x' is not a whole number", error_for("tftp: {port: x}"))
        self.assertIn("tftp.port: 70000 is outside 0..65535", error_for("tftp: {port: 70000}"))
        self.assertIn(
            "tftp.enabled: 'yes please' is not true or false",
            error_for("tftp: {enabled: yes please}"),
        )
        self.assertIn(
            "dhcp.mode: 'full' is not one of: proxy, authoritative, off",
            error_for("dhcp: {mode: full}"),
        )
        self.assertIn("dhcp: must be a mapping of keys, not a list", error_for("dhcp: [1]"))

    def test_range_outside_network(self) -> None:
        text = "dhcp:\n  subnets:\n  - network: 10.0.0.0/24\n    range: [10.0.0.5, 10.0.1.5]\n"
        self.assertEqual(
            error_for(text), "pxe.yaml:4: dhcp.subnets[0].range[1]: 10.0.1.5 is not in 10.0.0.0/24"
        )

    def test_machine_errors(self) -> None:
        self.assertIn(
            "machines[0].mac: 'nope' is not a MAC address", error_for("machines: [{mac: nope}]")
        )
        self.assertIn("machines[0]: a machine needs a 'mac'", error_for("machines: [{name: a}]"))
        dup = "machines:\n- mac: 52:54:00:00:00:01\n- mac: 5254.0000.0001\n"
        self.assertEqual(
            error_for(dup), "pxe.yaml:3: machines[1].mac: 52:54:00:00:00:01 is already machines[0]"
        )
        self.assertIn(
            "no group named 'gpu'", error_for("machines: [{mac: 52:54:00:00:00:01, group: gpu}]")
        )
        self.assertIn(
            "action: 'reboot' is not one of",
            error_for("machines: [{mac: 52:54:00:00:00:01, action: reboot}]"),
        )

    def test_boot_table_keys(self) -> None:
        self.assertIn("boot.efi-x86: unknown key", error_for("boot: {efi-x86: a.efi}"))

    def test_authoritative_needs_subnets(self) -> None:
        self.assertIn(
            "dhcp.subnets: authoritative mode needs at least one subnet",
            error_for("dhcp: {mode: authoritative}"),
        )

    def test_unreadable_file(self) -> None:
        error = self.assertRaises(ConfigError, load_config, "/nonexistent/pxe.yaml")
        self.assertEqual(
            str(error), "/nonexistent/pxe.yaml: cannot read the config: No such file or directory"
        )


class ValueTests(SynchronousTestCase):
    def test_empty_file_gives_safe_defaults(self) -> None:
        config = parse_config("")
        self.assertIs(config.dhcp.mode, DhcpMode.PROXY)
        self.assertEqual(config.policy.chain, ("static", "arch"))
        self.assertTrue(config.tftp.enabled)

    def test_tftp_workers(self) -> None:
        self.assertIsNone(parse_config("").tftp.workers)  # auto: decided at start
        self.assertIsNone(parse_config("tftp: {workers: auto}").tftp.workers)
        self.assertEqual(parse_config("tftp: {workers: 0}").tftp.workers, 0)
        self.assertEqual(parse_config("tftp: {workers: 4}").tftp.workers, 4)
        self.assertIn(
            "tftp.workers: 'many' is not a whole number or auto", error_for("tftp: {workers: many}")
        )
        self.assertIn("tftp.workers: 65 is outside 0..64", error_for("tftp: {workers: 65}"))

    def test_durations(self) -> None:
        config = parse_config(
            "dhcp:\n  offer_hold: 2m\n  subnets: [{network: 10.0.0.0/8, lease_time: 12h}]\n"
        )
        self.assertEqual(config.dhcp.offer_hold, 120)
        self.assertEqual(config.dhcp.subnets[0].lease_time, 43200)

    def test_relative_paths_follow_the_file(self) -> None:
        config = parse_config(
            "tftp: {root: tftp}\ndata_dir: ../state\n", base_dir=Path("/etc/pxetwist")
        )
        self.assertEqual(config.tftp.root, Path("/etc/pxetwist/tftp"))
        self.assertEqual(config.data_dir, Path("/etc/state"))
        self.assertEqual(config.lease_store_url, "sqlite:/etc/state/leases.sqlite")

    def test_default_action_is_for_unlisted_machines_only(self) -> None:
        config = parse_config(
            "defaults: {action: ignore, kernel: k0}\n"
            "machines: [{mac: 52:54:00:00:00:01}, {mac: 52:54:00:00:00:02, action: local}]\n"
        )
        first, second = (config.machine_profile(m) for m in config.machines)
        self.assertIsNone(first.action)
        self.assertEqual(first.kernel, "k0")
        self.assertIs(second.action, BootAction.LOCAL)

    def test_profiles_merge_machine_over_group_over_defaults(self) -> None:
        config = parse_config(
            "defaults: {kernel: k0, initrd: i0, cmdline: c0}\n"
            "groups: {g: {kernel: k1, initrd: [i1, i2]}}\n"
            "machines: [{mac: 52:54:00:00:00:01, group: g, cmdline: c2,"
            " boot: {ipxe: pxelinux.0}}]\n"
        )
        profile = config.machine_profile(config.machines[0])
        self.assertEqual(
            (profile.kernel, profile.initrds, profile.cmdline), ("k1", ("i1", "i2"), "c2")
        )
        self.assertEqual(profile.boot["ipxe"], "pxelinux.0")

    def test_example_config_is_valid_and_documents_the_contract(self) -> None:
        config = load_config(EXAMPLE)
        self.assertIs(config.dhcp.mode, DhcpMode.PROXY)
        self.assertEqual(config.machines[1].mac, MacAddress.parse("52:54:00:77:00:11"))
        self.assertEqual(config.machines[1].address, IPv4Address("10.77.0.11"))
        self.assertIs(config.machines[2].profile.action, BootAction.LOCAL)
        text = EXAMPLE.read_text()
        for key in (
            "interfaces",
            "server_address",
            "data_dir",
            "mode",
            "subnets",
            "range",
            "router",
            "dns",
            "lease_time",
            "leases",
            "enabled",
            "root",
            "port",
            "bios",
            "efi-x86_64",
            "efi-arm64",
            "ipxe",
            "http-efi-x86_64",
            "machines",
            "uuid",
            "group",
            "kernel",
            "initrd",
            "cmdline",
            "action",
            "groups",
            "chain",
            "plugin_dirs",
        ):
            self.assertIn(f"{key}:", text, key)
