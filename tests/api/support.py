"""A running API listener on 127.0.0.1 for tests, with real lease table, overlay and sessions.

Boot-once and reload are stand-ins (:class:`RecordingBootOnce`, :class:`ScriptedReloader`;
``test_recorder_api`` and the lab test drive the real ones); everything else is the production
code the server uses: the lease table and view, the machine overlay, the session recorder.
"""

from __future__ import annotations

import json
import time
from collections.abc import Generator
from ipaddress import IPv4Address
from pathlib import Path
from typing import Any

import treq
from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred, fail, succeed
from twisted.trial.unittest import TestCase
from twisted.web.client import Agent, HTTPConnectionPool
from zope.interface import implementer

from pxetwist.api.leaseview import TableLeaseView
from pxetwist.api.service import ApiService
from pxetwist.api.sessionview import RecorderSessions
from pxetwist.api.sources import IBootOnce, IReloader
from pxetwist.api.v1 import ApiContext
from pxetwist.config import Config, ConfigError, load_config
from pxetwist.dhcp.engine import pools_for
from pxetwist.dhcp.leases import LeaseTable
from pxetwist.dhcp.store import MemoryLeaseStore
from pxetwist.events import BootEvent, BootEventBus
from pxetwist.policy.overlay import MachineOverlay
from pxetwist.policy.values import MacAddress
from pxetwist.sessions.recorder import SessionRecorder, in_this_thread
from tests.util import temp_dir

READ = "read-token-0123456789abcdef"
WRITE = "write-token-0123456789abcdef"
METRICS = "metrics-token-0123456789abcd"

CONFIG = """\
data_dir: {data}
dhcp:
  mode: authoritative
  subnets:
    - network: 10.77.0.0/16
      range: [10.77.1.1, 10.77.1.20]
tftp: {{enabled: false}}
http: {{enabled: false}}
api:
  listen: "127.0.0.1:0"
  tokens_file: {data}/tokens.yaml
{extra}
groups:
  compute: {{kernel: vmlinuz-compute, cmdline: console=ttyS0}}
machines:
  - mac: 52:54:00:77:00:10
    name: node1
    group: compute
    address: 10.77.0.50
"""

TOKENS = f"""\
ops: {{token: {READ}, access: read}}
admin: {{token: {WRITE}, access: write}}
scraper: {{token: {METRICS}, access: read}}
"""


@implementer(IBootOnce)
class RecordingBootOnce:
    def __init__(self) -> None:
        self.used: set[MacAddress] = set()
        self.resets: list[MacAddress] = []

    def state(self, mac: MacAddress) -> dict[str, Any]:
        return {"mac": str(mac), "armed": True, "used": mac in self.used}

    def reset(self, mac: MacAddress) -> dict[str, Any]:
        self.resets.append(mac)
        self.used.discard(mac)
        return self.state(mac)


@implementer(IReloader)
class ScriptedReloader:
    def __init__(self) -> None:
        self.error: Exception | None = None
        self.calls = 0

    def reload(self) -> Deferred[dict[str, Any]]:
        self.calls += 1
        if self.error is not None:
            return fail(self.error)
        return succeed({"reloaded": True})


class ApiTestCase(TestCase):
    """Starts an :class:`ApiService` on an ephemeral port; ``self.call`` makes requests."""

    extra_config = ""

    def setUp(self) -> None:
        MachineOverlay.forget_all()
        self.addCleanup(MachineOverlay.forget_all)
        self.dir = temp_dir(self)
        (self.dir / "tokens.yaml").write_text(TOKENS)
        self.config_path = self.dir / "pxe.yaml"
        self.config_path.write_text(CONFIG.format(data=self.dir, extra=self.extra_config))
        self.config: Config = load_config(self.config_path)
        self.table = LeaseTable(pools_for(self.config))
        self.store = MemoryLeaseStore()
        self.now = time.time()
        # The session recorder the server runs (its writes on this thread), fed by a bus.
        self.bus = BootEventBus()
        self.recorder = SessionRecorder(
            self.config, self.bus, None, reactor, in_thread=in_this_thread
        )
        self.recorder.startService()
        self.addCleanup(self.recorder.stopService)
        self.boot_once = RecordingBootOnce()
        self.reloader = ScriptedReloader()
        self.context = ApiContext(
            config=lambda: self.config,
            leases=TableLeaseView(lambda: self.table, lambda: self.store, lambda: self.now),
            sessions=RecorderSessions(self.recorder),
            clock=lambda: self.now,
            started=self.now - 5,
            boot_once=self.boot_once,
            reloader=self.reloader,
            policy_chain=lambda: ("static", "arch"),
        )
        self.service = self.make_service()
        self.service.privilegedStartService()
        self.service.startService()
        self.addCleanup(self.service.stopService)
        host, port = self.service.address
        self.base = f"http://{host}:{port}"
        pool = HTTPConnectionPool(reactor, persistent=False)
        self.addCleanup(pool.closeCachedConnections)
        self.http = treq.client.HTTPClient(Agent(reactor, pool=pool))

    def sessions(self, event: BootEvent) -> None:
        """Report an event as a protocol does."""
        self.bus.emit(event)

    def sweep(self) -> None:
        """The recorder's timer: silent sessions are judged stuck at ``self.now``."""
        assert self.recorder.registry is not None
        self.recorder.registry.sweep(self.now)

    def make_service(self) -> ApiService:
        return ApiService(self.context, reactor)

    @defer.inlineCallbacks
    def call(
        self,
        method: str,
        path: str,
        token: str | None = READ,
        body: Any = None,
        raw: bytes | None = None,
        params: dict[str, str] | None = None,
    ) -> Generator[Deferred[Any], Any, tuple[int, Any, Any]]:
        """``(status, parsed JSON or None, headers)``."""
        headers: dict[bytes | str, bytes | str] = (
            {"Authorization": f"Bearer {token}"} if token is not None else {}
        )
        data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
        if data is not None:
            headers["Content-Type"] = "application/json"
        response = yield self.http.request(
            method, self.base + path, headers=headers, data=data, params=params
        )
        content = yield response.content()
        parsed = json.loads(content) if content.strip() else None
        return response.code, parsed, response.headers

    def write_config(self, text: str) -> None:
        self.config_path.write_text(text)
        self.config = load_config(self.config_path)

    def bind_lease(self, mac: str, address: str) -> None:
        network = self.config.dhcp.subnets[0].network
        lease = self.table.bind(
            None, MacAddress.parse(mac), IPv4Address(address), network, self.now, 3600
        )
        assert lease is not None
        self.store.write(self.table.take_changes())


def reload_error() -> ConfigError:
    return ConfigError(
        "'x' is not true or false", source="pxe.yaml", line=3, path=("tftp", "enabled")
    )


def overlay_file(data_dir: Path) -> Path:
    return data_dir / "machines.json"
