"""The API service as ``twistd pxe`` builds it: what it does to the shared server context."""

from __future__ import annotations

from ipaddress import IPv4Interface
from types import SimpleNamespace

import attrs
from twisted.application.service import MultiService, Service
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.api.service import api_service
from pxetwist.config import parse_config
from pxetwist.context import ServerContext
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.overlay import MachineOverlay
from pxetwist.policy.plugins import build_policies
from tests.util import temp_dir


class ApiServiceContextTests(SynchronousTestCase):
    def test_monitor_on_the_chain_keeps_the_settings_whole(self) -> None:
        MachineOverlay.forget_all()
        self.addCleanup(MachineOverlay.forget_all)
        config = parse_config(f"data_dir: {temp_dir(self)}\napi: {{listen: '127.0.0.1:0'}}\n")
        clock = Clock()
        served = (InterfaceInfo("srv0", 7, IPv4Interface("10.77.0.1/16"), 1500),)
        context = ServerContext.build(
            config,
            PolicyChain(build_policies(config), clock),
            clock,  # type: ignore[arg-type]
            interfaces=served,
        )
        service = api_service(context)
        current = context.live.current
        self.assertEqual(current.interfaces, served)
        self.assertEqual(current.chain.monitor, service.metrics.policy_answered)
        # A reload builds a chain without the monitor: it goes back on, the rest untouched.
        reloaded = attrs.evolve(current, chain=PolicyChain(build_policies(config), clock))
        context.live.replace(reloaded)
        self.assertEqual(context.live.current.interfaces, served)
        self.assertEqual(context.live.current.chain.monitor, service.metrics.policy_answered)

    def test_metrics_read_the_dhcp_readers_backlog(self) -> None:
        """``pxetwist_dhcp_held_discovers`` and ``..._unanswered_discovers_total`` are the
        DHCP service's socket readers' counts, summed, read at scrape time."""
        MachineOverlay.forget_all()
        self.addCleanup(MachineOverlay.forget_all)
        config = parse_config(f"data_dir: {temp_dir(self)}\napi: {{listen: '127.0.0.1:0'}}\n")
        clock = Clock()
        context = ServerContext.build(
            config,
            PolicyChain(build_policies(config), clock),
            clock,  # type: ignore[arg-type]
        )
        tree = MultiService()
        dhcp = Service()
        dhcp.setName("dhcp")
        dhcp.readers = [  # type: ignore[attr-defined]
            SimpleNamespace(held=3, stale=10, overflow=0),
            SimpleNamespace(held=1, stale=2, overflow=5),
        ]
        dhcp.setServiceParent(tree)
        api_service(context).setServiceParent(tree)
        registry = tree.getServiceNamed("api").metrics.registry  # type: ignore[attr-defined]
        self.assertEqual(registry.get_sample_value("pxetwist_dhcp_held_discovers"), 4)
        self.assertEqual(
            registry.get_sample_value(
                "pxetwist_dhcp_unanswered_discovers_total", {"reason": "stale"}
            ),
            12,
        )
        self.assertEqual(
            registry.get_sample_value(
                "pxetwist_dhcp_unanswered_discovers_total", {"reason": "overflow"}
            ),
            5,
        )
