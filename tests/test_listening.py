"""One protocol's listening sockets following the served interfaces (:mod:`pxetwist.listening`)."""

from __future__ import annotations

from ipaddress import IPv4Interface
from typing import Any, cast

from twisted.internet import address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IListeningPort
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.listening import Listeners, Listening
from pxetwist.netinfo import InterfaceInfo

A = InterfaceInfo("a0", 2, IPv4Interface("10.1.0.1/24"), 1500)
B = InterfaceInfo("b0", 3, IPv4Interface("10.2.0.1/24"), 9000)
DOWN = InterfaceInfo("c0", 4, None, 1500)


class _Port:
    def __init__(self, host: str, port: int) -> None:
        self.host = address.IPv4Address("TCP", host, port or 40000)
        self.listening = True

    def getHost(self) -> address.IPv4Address:
        return self.host

    def stopListening(self) -> Deferred[None]:
        self.listening = False
        return succeed(None)


class ListenersTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.opened: list[_Port] = []
        self.closed: list[Listening[str]] = []
        self.refuse: set[str] = set()
        self.listeners: Listeners[str] = Listeners("tftp", self.listen, self.closed.append)
        self.events: list[dict[str, Any]] = []
        observer = cast(ILogObserver, self.events.append)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def listen(self, info: InterfaceInfo, number: int) -> tuple[IListeningPort, str]:
        if info.name in self.refuse:
            raise OSError(98, "Address already in use")
        port = _Port(str(info.ip), number)
        self.opened.append(port)
        return cast(IListeningPort, port), f"listener on {info.name}"

    def test_one_socket_per_interface_with_an_address(self) -> None:
        self.listeners.open([A, B, DOWN], 69)
        self.assertEqual(self.listeners.addresses, [("10.1.0.1", 69), ("10.2.0.1", 69)])
        self.assertEqual(
            [item.protocol for item in self.listeners], ["listener on a0", "listener on b0"]
        )

    def test_port_0_records_the_port_bound(self) -> None:
        self.listeners.open([A], 0)
        (item,) = self.listeners
        self.assertEqual((item.asked, item.bound), (0, 40000))

    def test_no_interface_is_an_error_line_not_a_crash(self) -> None:
        self.listeners.open([DOWN], 69)
        self.assertEqual(len(self.listeners), 0)
        (logged,) = [e for e in self.events if "is not served" in e.get("log_format", "")]
        self.assertEqual(logged["protocol"], "TFTP")

    def test_a_bind_failure_at_start_is_raised(self) -> None:
        self.refuse.add("a0")
        self.assertRaises(OSError, self.listeners.open, [A], 69)

    def test_follow_closes_the_removed_keeps_the_rest_and_opens_the_new(self) -> None:
        self.listeners.open([A], 69)
        kept = self.opened[0]
        self.listeners.follow([A, B], 69)
        self.assertEqual(self.listeners.addresses, [("10.1.0.1", 69), ("10.2.0.1", 69)])
        self.assertTrue(kept.listening)
        self.listeners.follow([B], 69)
        self.assertEqual(self.listeners.addresses, [("10.2.0.1", 69)])
        self.assertFalse(kept.listening)
        self.assertEqual([item.address for item in self.closed], ["10.1.0.1"])

    def test_follow_a_new_port_rebinds_everywhere(self) -> None:
        self.listeners.open([A, B], 69)
        self.listeners.follow([A, B], 1069)
        self.assertEqual(self.listeners.addresses, [("10.1.0.1", 1069), ("10.2.0.1", 1069)])
        self.assertEqual(sum(port.listening for port in self.opened), 2)

    def test_follow_logs_a_socket_it_cannot_open_and_opens_the_others(self) -> None:
        self.listeners.open([A], 69)
        self.refuse.add("b0")
        self.listeners.follow(
            [A, B, InterfaceInfo("d0", 5, IPv4Interface("10.4.0.1/24"), 1500)], 69
        )
        self.assertEqual(self.listeners.addresses, [("10.1.0.1", 69), ("10.4.0.1", 69)])
        (logged,) = [e for e in self.events if "cannot listen" in e.get("log_format", "")]
        self.assertEqual(logged["address"], "10.2.0.1")

    def test_close_all(self) -> None:
        self.listeners.open([A, B], 69)
        done: list[object] = []
        self.listeners.close_all().addCallback(done.append)
        self.assertEqual(done, [None])
        self.assertEqual(len(self.listeners), 0)
        self.assertFalse(any(port.listening for port in self.opened))
        self.assertEqual(len(self.closed), 2)
