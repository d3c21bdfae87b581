"""The server context: live settings swapped whole, the one reachable-address rule, the reactor
check, and the protocol table the root service is built from."""

from __future__ import annotations

import shutil
import tempfile
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path
from typing import cast

from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.context import IServerReactor, ServerContext, Settings, server_reactor
from pxetwist.events import LogObserver
from pxetwist.netinfo import InterfaceInfo
from pxetwist.policy.chain import PolicyChain
from pxetwist.service import PROTOCOLS, PxeService
from pxetwist.startup import ServerSetup
from pxetwist.testing import config_from_yaml

LOCAL = IPv4Address("10.9.0.1")


def _context(yaml: str = "{}") -> ServerContext:
    clock = MemoryReactorClock()
    reactor = cast(IServerReactor, clock)
    config = config_from_yaml(yaml)
    return ServerContext.build(
        config,
        PolicyChain([], clock),
        reactor,
        interfaces=[
            InterfaceInfo("srv0", 2, IPv4Interface(f"{LOCAL}/24"), 1500),
            InterfaceInfo("down0", 3, None, 1500),
        ],
    )


class ServerContextTests(SynchronousTestCase):
    def test_reachable_address_is_the_local_one_by_default(self) -> None:
        self.assertEqual(_context().reachable_address(LOCAL), LOCAL)

    def test_reachable_address_is_server_address_when_configured(self) -> None:
        context = _context("server_address: 192.0.2.7")
        self.assertEqual(context.reachable_address(LOCAL), IPv4Address("192.0.2.7"))

    def test_served_interfaces_have_an_address(self) -> None:
        context = _context()
        self.assertEqual([info.name for info in context.served], ["srv0"])
        self.assertEqual(context.interface_named_by(LOCAL), "srv0")
        self.assertIsNone(context.interface_named_by(IPv4Address("10.9.0.2")))

    def test_a_reload_swaps_config_and_chain_together(self) -> None:
        context = _context("tftp: {port: 69}")
        seen: list[tuple[Settings, Settings]] = []
        context.live.subscribe(lambda old, new: seen.append((old, new)))
        old = context.live.current
        clock = Clock()
        new = Settings(config_from_yaml("tftp: {port: 1069}"), PolicyChain([], clock), ())
        context.live.replace(new)
        self.assertEqual(context.config.tftp.port, 1069)
        self.assertIs(context.chain, new.chain)
        self.assertEqual(seen, [(old, new)])


class ServerReactorTests(SynchronousTestCase):
    def test_the_real_reactor_provides_every_part(self) -> None:
        from twisted.internet import reactor

        self.assertIs(server_reactor(reactor), reactor)

    def test_a_clock_is_refused_with_what_it_lacks(self) -> None:
        with self.assertRaises(TypeError) as raised:
            server_reactor(Clock())
        self.assertIn("IReactorUDP", str(raised.exception))
        self.assertIn("IReactorTCP", str(raised.exception))


class ProtocolTableTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, self.base, ignore_errors=True)

    def setup(self, yaml: str) -> ServerSetup:
        config = config_from_yaml(yaml.format(base=self.base))
        lo = InterfaceInfo("lo", 1, IPv4Interface("127.0.0.1/8"), 65536)
        return ServerSetup(config=config, interfaces=(lo,), policies=())

    def test_one_child_per_enabled_protocol_each_given_the_context(self) -> None:
        setup = self.setup(
            "data_dir: {base}/data\ndhcp: {{mode: off}}\n"
            "tftp: {{root: {base}}}\nhttp: {{root: {base}}}\n"
        )
        service = PxeService(setup, cast(IServerReactor, MemoryReactorClock()))
        children = {
            child.name: child for child in service if child.name not in ("sessions", "control")
        }
        self.assertEqual(set(children), {"tftp", "http"})
        for child in children.values():
            self.assertIs(child.context, service.context)
        self.assertEqual(
            [type(observer) for observer in service.context.events.observers], [LogObserver]
        )

    def test_every_protocol_off_builds_no_child(self) -> None:
        setup = self.setup(
            "dhcp: {{mode: off}}\ntftp: {{enabled: false}}\nhttp: {{enabled: false}}"
        )
        service = PxeService(setup, cast(IServerReactor, MemoryReactorClock()))
        # only the session recorder (sessions and boot once) and the reload control socket
        self.assertEqual([child.name for child in service], ["sessions", "control"])

    def test_the_table_names_each_protocol_once(self) -> None:
        names = [entry.name for entry in PROTOCOLS]
        self.assertEqual(sorted(names), sorted(set(names)))
        self.assertLessEqual({"dhcp", "tftp", "http"}, set(names))


class ReloadTests(SynchronousTestCase):
    """Services read the live settings: a reload reaches what they generate next."""

    def test_tftp_listeners_point_configs_at_the_reloaded_server_address(self) -> None:
        from pxetwist.tftp.service import TftpService
        from tests.tftp.fakes import SocketReactor

        base = Path(tempfile.mkdtemp())
        self.addCleanup(shutil.rmtree, base, ignore_errors=True)
        config = config_from_yaml(f"tftp: {{root: {base}, port: 69}}\nhttp: {{port: 8080}}")
        reactor = SocketReactor()
        context = ServerContext.build(
            config,
            PolicyChain([], reactor),
            cast(IServerReactor, reactor),
            interfaces=[InterfaceInfo("srv0", 2, IPv4Interface("127.77.0.1/8"), 1500)],
        )
        service = TftpService(context)
        service.privilegedStartService()
        self.addCleanup(service.stopService)
        (listener,) = service.server.listeners
        self.assertEqual(
            (listener.context.server, listener.context.http_port), ("127.77.0.1", 8080)
        )
        reloaded = config_from_yaml(
            f"server_address: 192.0.2.7\ntftp: {{root: {base}, port: 69}}\nhttp: {{port: 80}}"
        )
        context.live.replace(Settings(reloaded, context.chain, context.interfaces))
        self.assertEqual((listener.context.server, listener.context.http_port), ("192.0.2.7", 80))
