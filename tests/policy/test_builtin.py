"""The built-in ``static`` and ``arch`` policies (protocol-reference §2.4, §3.1, §4)."""

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.policy.builtin import ArchPolicy, ArchPolicyFactory, StaticPolicy, StaticPolicyFactory
from pxetwist.policy.values import BootAction, Firmware, Stage
from pxetwist.testing import (
    assert_provides_factory,
    assert_provides_policy,
    config_from_yaml,
    make_request,
    run_chain,
)

CONFIG = config_from_yaml(
    """
boot:
  bios: undionly.kpxe
  efi-x86_64: snponly.efi
  efi-arm64: arm64/snp.efi
  http-efi-x86_64: efi/ipxe.efi
defaults: {kernel: default/linux, initrd: default/initrd.gz, cmdline: quiet}
groups:
  gpu: {kernel: gpu/linux, cmdline: "gpu=1"}
machines:
  - mac: 52:54:00:00:00:01
    name: n1
    group: gpu
  - mac: 52:54:00:00:00:02
    uuid: 8b5a3c1e-2f44-4c1a-9d2e-0a1b2c3d4e5f
    name: by-uuid
    kernel: uuid/linux
  - mac: 52:54:00:00:00:03
    boot: {bios: pxelinux.0, ipxe: pxelinux.0}
  - mac: 52:54:00:00:00:04
    action: local
  - mac: 52:54:00:00:00:05
    action: ignore
"""
)


class InterfaceTests(SynchronousTestCase):
    def test_factories_and_policies_provide_their_interfaces(self) -> None:
        for factory in (StaticPolicyFactory, ArchPolicyFactory):
            assert_provides_factory(factory)
            assert_provides_policy(factory.build(CONFIG))


class StaticPolicyTests(SynchronousTestCase):
    policy = StaticPolicy(CONFIG)

    def test_unknown_machine_has_no_opinion(self) -> None:
        self.assertIsNone(self.policy.decide(make_request("52:54:00:ff:ff:ff")))

    def test_group_settings_apply(self) -> None:
        decision = self.policy.decide(make_request("52:54:00:00:00:01", arch=7))
        assert decision is not None
        self.assertEqual(decision.program, "snponly.efi")
        self.assertEqual((decision.kernel, decision.initrds), ("gpu/linux", ("default/initrd.gz",)))
        self.assertEqual((decision.cmdline, decision.name, decision.group), ("gpu=1", "n1", "gpu"))

    def test_match_by_uuid_after_mac(self) -> None:
        request = make_request("52:54:00:99:99:99", uuid="8b5a3c1e-2f44-4c1a-9d2e-0a1b2c3d4e5f")
        decision = self.policy.decide(request)
        assert decision is not None
        self.assertEqual((decision.name, decision.kernel), ("by-uuid", "uuid/linux"))
        self.assertIn("by UUID", decision.reason)

    def test_ipxe_override_sends_ipxe_to_pxelinux(self) -> None:
        decision = self.policy.decide(make_request("52:54:00:00:00:03", firmware="ipxe"))
        assert decision is not None
        self.assertEqual(decision.program, "pxelinux.0")

    def test_actions(self) -> None:
        local = self.policy.decide(make_request("52:54:00:00:00:04"))
        ignored = self.policy.decide(make_request("52:54:00:00:00:05"))
        assert local is not None and ignored is not None
        self.assertIs(local.action, BootAction.LOCAL)
        self.assertIs(ignored.action, BootAction.IGNORE)


class ArchPolicyTests(SynchronousTestCase):
    """Option 93 to the boot table: §2.4, with 9 treated as 7 and unknown values defaulted."""

    policy = ArchPolicy(CONFIG)

    def program(self, **kwargs: object) -> str | None:
        decision = self.policy.decide(make_request("52:54:00:aa:aa:aa", **kwargs))  # type: ignore[arg-type]
        assert decision is not None
        return decision.program

    def test_table(self) -> None:
        self.assertEqual(self.program(arch=0), "undionly.kpxe")
        self.assertEqual(self.program(arch=7), "snponly.efi")
        self.assertEqual(self.program(arch=9), "snponly.efi")
        self.assertEqual(self.program(arch=11), "arm64/snp.efi")

    def test_ipxe_gets_the_script_url(self) -> None:
        self.assertEqual(
            self.program(arch=7, firmware=Firmware.IPXE),
            "http://{server}:{http_port}/boot.ipxe?mac=${mac}&uuid=${uuid}&arch=${buildarch}",
        )

    def test_http_boot_gets_a_url(self) -> None:
        self.assertEqual(
            self.program(arch=16, firmware=Firmware.HTTP_BOOT),
            "http://{server}:{http_port}/efi/ipxe.efi",
        )

    def test_unknown_arch_falls_back_to_the_default(self) -> None:
        self.assertEqual(self.program(arch=4242), "undionly.kpxe")

    def test_unknown_arch_with_ignore_default(self) -> None:
        config = config_from_yaml("policy: {arch_default: ignore}")
        decision = ArchPolicy(config).decide(make_request(arch=4242))
        assert decision is not None
        self.assertIs(decision.action, BootAction.IGNORE)

    def test_plain_dhcp_clients_get_no_opinion(self) -> None:
        self.assertIsNone(self.policy.decide(make_request(firmware="plain")))

    def test_tftp_stage_carries_the_kernel(self) -> None:
        decision = self.policy.decide(make_request(stage=Stage.TFTP, path="pxelinux.cfg/default"))
        assert decision is not None
        self.assertEqual(decision.kernel, "default/linux")


class ChainTests(SynchronousTestCase):
    def test_static_alone_leaves_unknown_machines_unanswered(self) -> None:
        policies = [("static", StaticPolicy(CONFIG))]
        self.assertIsNone(run_chain(policies, make_request("52:54:00:ab:cd:ef")))

    def test_default_chain_answers_unknown_machines_by_arch(self) -> None:
        policies = [("static", StaticPolicy(CONFIG)), ("arch", ArchPolicy(CONFIG))]
        decision = run_chain(policies, make_request("52:54:00:ab:cd:ef", arch=7))
        assert decision is not None
        self.assertEqual((decision.policy, decision.program), ("arch", "snponly.efi"))
