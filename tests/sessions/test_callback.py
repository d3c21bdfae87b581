"""``/boot/done``: the OS call-back route, and the ``done_url`` it is given as."""

from __future__ import annotations

from ipaddress import IPv4Address
from typing import cast

from twisted.internet.address import IPv4Address as TwistedAddress
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyRequest

from pxetwist.context import IServerReactor, ServerContext
from pxetwist.events import BootEvent, EventProtocol, EventStage
from pxetwist.http.callback import BootDone
from pxetwist.policy.chain import PolicyChain
from pxetwist.policy.decision import BootDecision
from pxetwist.policy.render import LoaderKind, Renderer, ServingContext
from pxetwist.testing import config_from_yaml, make_request
from tests.sessions.events import MAC


def request_for(query: dict[bytes, list[bytes]], client: str = "10.77.1.10") -> DummyRequest:
    request = DummyRequest([b"boot", b"done"])
    request.path = b"/boot/done"  # type: ignore[attr-defined]
    request.args = query
    request.client = TwistedAddress("TCP", client, 40000)
    return request


class CallbackTests(SynchronousTestCase):
    def setUp(self) -> None:
        reactor = cast(IServerReactor, MemoryReactorClock())
        reactor.advance(1234.0)  # type: ignore[attr-defined]
        self.context = ServerContext.build(config_from_yaml(""), PolicyChain([], reactor), reactor)
        self.events: list[BootEvent] = []
        self.context.events.subscribe(self.events.append)
        self.done = BootDone(self.context)

    def render(self, request: DummyRequest) -> bytes:
        self.assertTrue(BootDone.claims(cast(Request, request)))
        return self.done.render(cast(Request, request))

    def test_mac_in_the_query(self) -> None:
        request = request_for({b"mac": [b"52-54-00-77-00-10"]})
        self.assertEqual(self.render(request), b"ok\n")
        (event,) = self.events
        self.assertEqual(
            (event.protocol, event.stage, event.mac, event.client, event.time),
            (EventProtocol.OS, EventStage.OS_UP, MAC, IPv4Address("10.77.1.10"), 1234.0),
        )

    def test_mac_from_what_dhcp_saw_at_the_address(self) -> None:
        self.context.sightings.record(make_request(str(MAC)), IPv4Address("10.77.1.10"))
        self.assertEqual(self.render(request_for({})), b"ok\n")
        self.assertEqual(self.events[0].mac, MAC)

    def test_unknown_machine_and_bad_mac_are_400(self) -> None:
        for request in (request_for({}), request_for({b"mac": [b"${mac}"]})):
            self.render(request)
            self.assertEqual(request.responseCode, 400)
        self.assertEqual(self.events, [])


class DoneUrlTests(SynchronousTestCase):
    def test_template_variable_and_cmdline_placeholder(self) -> None:
        decision = BootDecision(
            kernel="http://{server}:{http_port}/linux",
            cmdline="console=ttyS0 pxetwist.done={done_url}",
        )
        text = Renderer().render(
            LoaderKind.IPXE,
            decision,
            make_request(str(MAC), firmware="ipxe"),
            ServingContext(server="10.77.0.1", http_port=8080),
        )
        self.assertIn("pxetwist.done=http://10.77.0.1:8080/boot/done?mac=52:54:00:77:00:10", text)
