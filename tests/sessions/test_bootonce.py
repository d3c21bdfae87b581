"""Boot once: the chain's gate and the observer that sees a boot go through (no sockets)."""

from __future__ import annotations

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.events import EventStage, Outcome
from pxetwist.policy.builtin import StaticPolicy
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.values import BootAction
from pxetwist.sessions.bootonce import BootOnce
from pxetwist.sessions.store import UsedBoot
from pxetwist.testing import config_from_yaml, make_request
from tests.sessions.events import DECISION, MAC, OTHER, dhcp, http, os_up, tftp

CONFIG = """
groups:
  installers: {boot_once: true}
machines:
  - {mac: "52:54:00:77:00:10", kernel: debian/linux, initrd: debian/initrd.gz, group: installers}
  - {mac: "52:54:00:77:00:11", kernel: debian/linux, initrd: debian/initrd.gz}
  - {mac: "52:54:00:77:00:12", kernel: debian/linux, initrd: debian/initrd.gz, group: installers,
     boot_once: false}
"""
ONCE = attrs.evolve(DECISION, boot_once=True)


def chain_with(once: BootOnce) -> PolicyChain:
    return PolicyChain(
        [("static", StaticPolicy(config_from_yaml(CONFIG)))], Clock(), gate=once.gate
    )


class GateTests(SynchronousTestCase):
    def test_config_sets_boot_once_on_the_decision(self) -> None:
        chain = chain_with(BootOnce())
        decide = chain.decide_now
        first = decide(make_request(str(MAC)))
        self.assertTrue(first.boot_once)  # type: ignore[union-attr]
        self.assertFalse(decide(make_request(str(OTHER))).boot_once)  # type: ignore[union-attr]
        self.assertFalse(decide(make_request("52:54:00:77:00:12")).boot_once)  # type: ignore[union-attr]

    def test_used_machine_gets_the_local_answer_from_every_stage(self) -> None:
        once = BootOnce([UsedBoot(str(MAC), 1000.0, "kernel and initrd served")])
        chain = chain_with(once)
        for stage in ("dhcp", "proxy", "proxy-4011", "tftp", "http"):
            decision = chain.decide_now(make_request(str(MAC), stage=stage))
            assert isinstance(decision, BootDecision)
            self.assertEqual(decision.action, BootAction.LOCAL, stage)
            self.assertIsNone(decision.program)
            self.assertIsNone(decision.kernel)
            self.assertIn("reset-boot 52:54:00:77:00:10", decision.reason)
        other = chain.decide_now(make_request(str(OTHER)))
        self.assertEqual(other.action, BootAction.BOOT)  # type: ignore[union-attr]

    def test_reset_arms_it_again(self) -> None:
        once = BootOnce([UsedBoot(str(MAC), 1000.0, "x")])
        once.replace_used([])
        decision = chain_with(once).decide_now(make_request(str(MAC)))
        assert isinstance(decision, BootDecision)
        self.assertEqual(decision.action, BootAction.BOOT)


class ConfirmationTests(SynchronousTestCase):
    def armed(self) -> BootOnce:
        once = BootOnce()
        once.gate(make_request(str(MAC)), ONCE)
        self.assertTrue(once.is_armed(MAC))
        return once

    def test_kernel_and_initrd_served_use_it_up(self) -> None:
        once = self.armed()
        once(http(10.0, "/boot.ipxe", mac=MAC))
        once(http(11.0, "/debian/linux", mac=MAC))
        self.assertFalse(once.is_used(MAC))
        once(http(12.0, "/debian/initrd.gz", mac=MAC))
        self.assertTrue(once.is_used(MAC))
        (record,) = once.take_unsaved()
        self.assertEqual((record.mac, record.used_at), (str(MAC), 12.0))
        self.assertEqual(once.gate(make_request(str(MAC)), ONCE).action, BootAction.LOCAL)

    def test_over_tftp_too(self) -> None:
        once = self.armed()
        once(tftp(11.0, "debian/linux", mac=MAC))
        once(tftp(12.0, "/debian/initrd.gz", mac=MAC))
        self.assertTrue(once.is_used(MAC))

    def test_a_boot_cut_off_after_the_nbp_leaves_it_armed(self) -> None:
        once = self.armed()
        once(tftp(11.0, "undionly.kpxe", mac=MAC))
        once(dhcp(20.0))  # the machine starts over
        self.assertFalse(once.is_used(MAC))
        self.assertTrue(once.is_armed(MAC))

    def test_partial_downloads_do_not_count(self) -> None:
        once = self.armed()
        once(http(11.0, "/debian/linux", mac=MAC))
        once(http(12.0, "/debian/initrd.gz", mac=MAC, outcome=Outcome.FAILED, complete=False))
        once(http(13.0, "/debian/initrd.gz", mac=MAC, status=206))
        once(http(14.0, "/debian/initrd.gz", mac=MAC, method="HEAD"))
        once(http(15.0, "/debian/initrd.gz", mac=MAC, range="bytes=0-"))
        self.assertFalse(once.is_used(MAC))

    def test_kernel_from_an_earlier_attempt_does_not_count(self) -> None:
        once = self.armed()
        once(http(11.0, "/debian/linux", mac=MAC))
        once(dhcp(20.0, EventStage.DISCOVER))  # the ROM starts again before the initrd
        once(http(31.0, "/debian/initrd.gz", mac=MAC))
        self.assertFalse(once.is_used(MAC))

    def test_os_call_back_uses_it_up(self) -> None:
        once = self.armed()
        once(os_up(30.0))
        self.assertTrue(once.is_used(MAC))
        self.assertEqual(once.take_unsaved()[0].how, "the OS called back")

    def test_machines_not_armed_are_ignored(self) -> None:
        once = BootOnce()
        once.gate(make_request(str(MAC)), DECISION)  # boot_once off
        once(http(11.0, "/debian/linux", mac=MAC))
        once(http(12.0, "/debian/initrd.gz", mac=MAC))
        self.assertFalse(once.is_used(MAC))

    def test_failed_write_requeues(self) -> None:
        once = self.armed()
        once(os_up(30.0))
        taken = once.take_unsaved()
        once.requeue(taken)
        self.assertEqual(once.unsaved, tuple(taken))


class ExplainTests(SynchronousTestCase):
    def test_explain_shows_the_local_answer_of_a_used_up_machine(self) -> None:
        import io
        import tempfile
        from contextlib import redirect_stdout
        from pathlib import Path

        from pxetwist import cli
        from pxetwist.sessions.store import SessionStore

        base = Path(tempfile.mkdtemp(prefix="pxt-explain-once-"))
        config = base / "pxe.yaml"
        config.write_text(
            f"data_dir: {base}/data\npolicy: {{plugin_dirs: []}}\n"
            f"machines: [{{mac: '{MAC}', kernel: debian/linux, boot_once: true}}]\n"
        )

        def explained() -> str:
            out = io.StringIO()
            with redirect_stdout(out):
                self.assertEqual(
                    cli.main(
                        ["explain", "--config", str(config), "--mac", str(MAC), "--arch", "0"]
                    ),
                    0,
                )
            return out.getvalue()

        self.assertIn("decision: boot by policy static", explained())
        store = SessionStore(base / "data" / "sessions.sqlite")
        store.save(
            [], [UsedBoot(str(MAC), 1000.0, "kernel and initrd served")], keep=5, max_sessions=9
        )
        store.close()
        text = explained()
        self.assertIn("decision: local by policy static", text)
        self.assertIn("boot once used up", text)
        self.assertIn("outcome: ignored: nothing to boot", text)  # proxyDHCP: no boot file
