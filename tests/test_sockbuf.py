"""The listeners' receive buffers: enlarged past ``net.core.rmem_max`` as root.

Python's ``socket`` module lacks ``SO_RCVBUFFORCE``; without the option's number the listeners
would get Debian's 208 KiB cap and drop a storm's requests in the kernel.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import cast

from twisted.logger import ILogObserver, LogLevel, globalLogPublisher
from twisted.trial.unittest import SynchronousTestCase

from pxetwist.sockbuf import enlarge_receive_buffer


def rmem_max() -> int:
    return int(Path("/proc/sys/net/core/rmem_max").read_text())


class ReceiveBufferTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.addCleanup(self.sock.close)
        self.warnings: list[str] = []

        def observe(event: dict[str, object]) -> None:
            if event.get("log_level") is LogLevel.warn:
                self.warnings.append(str(event.get("log_format")))

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)

    def test_root_gets_more_than_rmem_max(self) -> None:
        if os.geteuid() != 0:
            self.skipTest("SO_RCVBUFFORCE needs CAP_NET_ADMIN; the suite runs as root")
        wanted = rmem_max() * 2  # past the cap: only the forced option gets it
        granted = enlarge_receive_buffer(self.sock, wanted)
        self.assertGreaterEqual(granted, wanted)
        self.assertEqual(granted, self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
        self.assertEqual(self.warnings, [])

    def test_without_privilege_the_capped_buffer_is_logged(self) -> None:
        class Unprivileged:
            """A socket as a user without CAP_NET_ADMIN sees it: capped at 208 KiB."""

            def __init__(self) -> None:
                self.asked: list[int] = []

            def setsockopt(self, level: int, option: int, value: int) -> None:
                if option != socket.SO_RCVBUF:
                    raise PermissionError(1, "Operation not permitted")
                self.asked.append(value)

            def getsockopt(self, level: int, option: int) -> int:
                return 2 * 212992

        sock = Unprivileged()
        granted = enlarge_receive_buffer(sock, 4 << 20, name="dhcp")  # type: ignore[arg-type]
        self.assertEqual((granted, sock.asked), (2 * 212992, [4 << 20]))
        self.assertEqual(len(self.warnings), 1)
        self.assertIn("rmem_max", self.warnings[0])
