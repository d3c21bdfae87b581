"""The API service as ``twistd pxe`` builds it: what it does to the shared server context."""

from __future__ import annotations

from ipaddress import IPv4Interface

import attrs
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
