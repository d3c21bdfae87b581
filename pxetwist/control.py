# -*- test-case-name: tests.test_reload -*-
"""The local control socket: how ``pxetwist reload`` asks the running server, and hears back.

A Unix socket ``control.sock`` in ``data_dir`` (mode 0600: root, or the user the server runs
as), one request line per connection, one JSON answer line:

* ``reload`` -> ``{"ok": true, "summary": {...}}`` or ``{"ok": false, "error": "file:line: ..."}``

A signal cannot carry an answer back; this can, so the operator who typed ``pxetwist reload``
sees on their terminal whether the config was taken or refused and why.
"""

from __future__ import annotations

import json
import socket
from pathlib import Path
from typing import Any, Final

from twisted.application.service import Service
from twisted.internet.interfaces import IListeningPort, IReactorUNIX
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineOnlyReceiver

from pxetwist.config import ConfigError
from pxetwist.policy.plugins import PluginError
from pxetwist.reload import Reloader

log = Logger()

SOCKET_NAME: Final = "control.sock"
_TIMEOUT: Final = 30.0  # seconds the CLI waits for the server's answer


class ControlProtocol(LineOnlyReceiver):
    MAX_LENGTH = 1024
    delimiter = b"\n"

    def __init__(self, reloader: Reloader) -> None:
        self.reloader = reloader

    def lineReceived(self, line: bytes) -> None:
        command = line.strip().decode("ascii", "replace")
        answer: dict[str, Any]
        if command == "reload":
            try:
                answer = {"ok": True, "summary": self.reloader.reload_now()}
            except (ConfigError, PluginError) as error:
                answer = {"ok": False, "error": str(error)}
            except Exception as error:
                log.failure("reload failed; the running config stays in force")
                answer = {"ok": False, "error": f"{type(error).__name__}: {error}"}
        else:
            answer = {"ok": False, "error": f"unknown command {command!r}"}
        assert self.transport is not None
        self.transport.write(json.dumps(answer).encode() + b"\n")
        self.transport.loseConnection()


class ControlService(Service):
    """Listens on ``data_dir/control.sock`` once the server runs (after privileges drop)."""

    name = "control"

    def __init__(self, reloader: Reloader, data_dir: Path, reactor: IReactorUNIX) -> None:
        self.reloader = reloader
        self.path = data_dir / SOCKET_NAME
        self.reactor = reactor
        self.port: IListeningPort | None = None

    def startService(self) -> None:
        super().startService()
        factory: Any = Factory.forProtocol(lambda: ControlProtocol(self.reloader))
        try:
            self.port = self.reactor.listenUNIX(str(self.path), factory, mode=0o600, wantPID=True)
        except Exception as error:
            log.warn(
                "control socket {path} not opened ({error}): `pxetwist reload` cannot reach "
                "this server; SIGHUP still reloads",
                path=str(self.path),
                error=str(error),
            )

    def stopService(self) -> Any:
        super().stopService()
        port, self.port = self.port, None
        return port.stopListening() if port is not None else None


def ask(data_dir: Path, command: str, timeout: float = _TIMEOUT) -> dict[str, Any]:
    """Send one command to the server whose ``data_dir`` this is; its JSON answer.

    Raises ``OSError`` when no server listens there.
    """
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(timeout)
        connection.connect(str(data_dir / SOCKET_NAME))
        connection.sendall(command.encode() + b"\n")
        chunks = []
        while True:
            chunk = connection.recv(65536)
            if not chunk:
                break
            chunks.append(chunk)
    answer: dict[str, Any] = json.loads(b"".join(chunks) or b"{}")
    return answer


def run_reload(config_path: str | None) -> int:
    """``pxetwist reload --config PATH``: ask the server using that config to reload it."""
    import sys

    from pxetwist.config import load_config
    from pxetwist.tap import default_config_path

    path = Path(config_path) if config_path else default_config_path()
    try:
        config = load_config(path)
    except ConfigError as error:
        sys.stderr.write(f"pxetwist: reload refused, the running config stays: {error}\n")
        return 1
    try:
        answer = ask(config.data_dir, "reload")
    except OSError as error:
        sys.stderr.write(
            f"pxetwist: no server answers at {config.data_dir / SOCKET_NAME} ({error}); is "
            f"twistd pxe running with data_dir {config.data_dir}?  (SIGHUP reloads too)\n"
        )
        return 1
    if not answer.get("ok"):
        sys.stderr.write(
            f"pxetwist: reload refused, the running config stays: {answer.get('error')}\n"
        )
        return 1
    print_reload_summary(answer.get("summary") or {})
    return 0


def print_reload_summary(summary: dict[str, Any]) -> None:
    """What a reload did, as ``pxetwist reload`` prints it (also from the API's answer)."""
    print(f"reloaded {summary.get('config')}")
    print(f"  policy chain: {' -> '.join(summary.get('policy_chain') or [])}")
    print(f"  interfaces: {', '.join(summary.get('interfaces') or []) or 'none'}")
    for key in ("interfaces_added", "interfaces_removed"):
        if summary.get(key):
            print(f"  {key.replace('_', ' ')}: {', '.join(summary[key])}")
    if summary.get("restart_needed"):
        print(f"  takes effect at the next restart: {', '.join(summary['restart_needed'])}")
