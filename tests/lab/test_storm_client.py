"""The storm's simulated machines (bench/storm/client.py): their TCP receive window is iPXE's."""

from __future__ import annotations

import asyncio
import fcntl
import importlib.util
import socket
import struct
import termios
import threading
import time
from pathlib import Path
from types import ModuleType

from twisted.trial.unittest import SynchronousTestCase

CLIENT = Path(__file__).resolve().parents[2] / "bench" / "storm" / "client.py"


def load_client() -> ModuleType:
    spec = importlib.util.spec_from_file_location("storm_client", CLIENT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ConnectTests(SynchronousTestCase):
    """A machine's HTTP connection holds about its window, not Linux's autotuned megabytes."""

    def setUp(self) -> None:
        self.client = load_client()
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.addCleanup(self.listener.close)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()

    def connected(self, window: int) -> socket.socket:
        async def go() -> socket.socket:
            sock: socket.socket = await self.client.connect(
                "127.0.0.1", self.listener.getsockname(), window
            )
            return sock

        sock = asyncio.run(go())
        self.addCleanup(sock.close)
        accepted, _ = self.listener.accept()
        self.addCleanup(accepted.close)
        self.server_side = accepted
        return sock

    def queued(self, sock: socket.socket) -> int:
        """Send until the connection is full, the machine reading nothing; what its queue holds."""
        self.server_side.setblocking(False)
        chunk = b"x" * 65536
        for _ in range(2000):  # bounded: 128 MiB at most
            try:
                self.server_side.send(chunk)
            except BlockingIOError:
                break
        time.sleep(0.05)  # loopback delivers at once; a moment for the last segments
        held = struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.FIONREAD, b"\0" * 4))[0]
        return int(held)

    def test_the_receive_buffer_is_fixed_at_the_window(self) -> None:
        sock = self.connected(256 * 1024)
        # Linux doubles what is asked (half the window) for its bookkeeping.
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), 256 * 1024)

    def test_the_machine_holds_no_more_than_its_window(self) -> None:
        sock = self.connected(256 * 1024)
        held = self.queued(sock)
        self.assertGreater(held, 64 * 1024)
        self.assertLessEqual(held, 256 * 1024)

    def stream(self, sock: socket.socket, size: int = 32 << 20) -> int:
        """The server sends ``size`` bytes while the machine reads; its buffer afterwards."""
        sender = threading.Thread(target=self.server_side.sendall, args=(b"x" * size,))
        sender.start()
        sock.setblocking(True)
        sock.settimeout(10)
        got = 0
        while got < size:
            got += len(sock.recv(1 << 20))
        sender.join(10)
        return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

    def test_reading_does_not_grow_the_buffer(self) -> None:
        self.assertEqual(self.stream(self.connected(256 * 1024)), 256 * 1024)

    def test_with_zero_reading_grows_it(self) -> None:
        """What the fixed buffer prevents: Linux's autotuning grows a busy reader's buffer."""
        self.assertGreater(self.stream(self.connected(0)), 256 * 1024)

    def test_zero_leaves_linux_autotuning(self) -> None:
        """``--client-window 0``: the default buffer, which autotuning may grow."""
        sock = self.connected(0)
        with open("/proc/sys/net/ipv4/tcp_rmem") as f:
            default = int(f.read().split()[1])
        self.assertEqual(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF), default)
