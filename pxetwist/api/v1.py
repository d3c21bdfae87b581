"""``/api/v1/``: the route table and the handlers that are not about machines.

Every handler reads the server through the objects in :class:`ApiContext`; none keeps state of
its own, so a reload that replaces the config is seen by the next request.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Sequence
from importlib import resources
from ipaddress import AddressValueError, IPv4Address, IPv4Network
from typing import Any

import attrs
from twisted.internet.defer import Deferred, succeed

from pxetwist import __version__
from pxetwist.api.machines import MachinesApi, parse_mac
from pxetwist.api.router import ApiError, ApiRequest, Reply, Route
from pxetwist.api.sources import IBootOnce, ILeaseView, INfsView, IReloader, ISessionView
from pxetwist.api.tokens import Access
from pxetwist.config import Config, ConfigError
from pxetwist.config.model import DhcpMode
from pxetwist.dhcp.leases import Lease, LeaseState
from pxetwist.policy.plugins import PluginError
from pxetwist.policy.values import MacAddress

PREFIX = "/api/v1"


@attrs.define
class ApiContext:
    """What the API reads and drives; the parts that may be missing are ``None``."""

    config: Callable[[], Config]
    leases: ILeaseView
    sessions: ISessionView
    clock: Callable[[], float]
    started: float
    boot_once: IBootOnce | None = None
    reloader: IReloader | None = None
    policy_chain: Callable[[], Sequence[str]] = tuple
    nfs: INfsView | None = None


def lease_json(lease: Lease, now: float) -> dict[str, object]:
    return {
        "address": str(lease.address),
        "network": str(lease.network),
        "mac": None if lease.mac is None else str(lease.mac),
        "client_id": None if lease.client_id is None else lease.client_id.hex(),
        "state": lease.state.value,
        "expires": None if math.isinf(lease.expires) else lease.expires,
        "active": lease.is_active(now),
        "hostname": lease.hostname,
    }


def _without_events(session: dict[str, Any]) -> dict[str, Any]:
    """A session without its event list, but with its last event (what it is doing now)."""
    events = session.get("events") or []
    light = {key: value for key, value in session.items() if key != "events"}
    light["last_event"] = events[-1] if events else None
    return light


def _bool_param(request: ApiRequest, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    if text not in ("true", "false"):
        raise ApiError(400, f"{text!r} is not true or false", name)
    return text == "true"


def _int_param(request: ApiRequest, name: str, default: int, low: int, high: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise ApiError(400, f"{text!r} is not a whole number", name) from None
    if not low <= value <= high:
        raise ApiError(400, f"{value} is outside {low}..{high}", name)
    return value


class V1:
    def __init__(self, context: ApiContext) -> None:
        self.context = context
        self.machines = MachinesApi(context.config, context.leases)

    # -- explain -------------------------------------------------------------------------------

    def explain(self, request: ApiRequest) -> Reply:
        from pxetwist.explain import build_discover, explain, render_json, render_text

        query = request.query
        mac = parse_mac(query.get("mac"))
        arch = _int_param(request, "arch", -1, -1, 65535)
        client_uuid = None
        if query.get("uuid"):
            try:
                client_uuid = uuid.UUID(query["uuid"])
            except ValueError:
                raise ApiError(400, f"{query['uuid']!r} is not a UUID", "uuid") from None
        mode = None
        if query.get("mode"):
            try:
                mode = DhcpMode(query["mode"])
            except ValueError:
                choices = ", ".join(m.value for m in DhcpMode)
                raise ApiError(400, f"{query['mode']!r} is not one of {choices}", "mode") from None
        config = self.context.config()
        server = config.reachable_address(IPv4Address("192.0.2.1"))  # a documentation address
        network = next(
            (s.network for s in config.dhcp.subnets if server in s.network),
            IPv4Network(f"{server}/24", strict=False),
        )
        packet = build_discover(
            mac,
            arch=None if arch < 0 else arch,
            vendor_class=query.get("vendor_class") or None,
            user_class=query.get("user_class") or None,
            client_uuid=client_uuid,
        )
        try:
            result = explain(config, packet, server=server, network=network, mode=mode)
            answer = json.loads(render_json(result))
            answer["text"] = render_text(result)
        except PluginError as error:
            raise ApiError(500, f"the policy chain cannot be built: {error}") from None
        except ValueError as error:
            raise ApiError(422, f"the reply cannot be encoded: {error}") from None
        answer["mac"] = str(mac)
        answer["arch"] = None if arch < 0 else arch
        return Reply(200, answer)

    # -- leases --------------------------------------------------------------------------------

    def leases(self, request: ApiRequest) -> Reply:
        view = self.context.leases
        now = view.now()
        query = request.query
        mac = parse_mac(query["mac"]) if query.get("mac") else None
        state = None
        if query.get("state"):
            try:
                state = LeaseState(query["state"])
            except ValueError:
                choices = ", ".join(s.value for s in LeaseState)
                raise ApiError(
                    400, f"{query['state']!r} is not one of {choices}", "state"
                ) from None
        network = None
        if query.get("subnet"):
            try:
                network = IPv4Network(query["subnet"])
            except ValueError:
                raise ApiError(400, f"{query['subnet']!r} is not a network", "subnet") from None
        limit = _int_param(request, "limit", 1_000_000, 1, 1_000_000)
        active = _bool_param(request, "active", False) if query.get("active") else None
        found = [
            lease_json(lease, now)
            for lease in view.leases()
            if (mac is None or lease.mac == mac)
            and (state is None or lease.state is state)
            and (network is None or lease.address in network)
            and (active is None or lease.is_active(now) == active)
        ]
        found.sort(key=lambda item: IPv4Address(str(item["address"])))
        return Reply(200, found[:limit])

    def release(self, request: ApiRequest) -> Deferred[Reply]:
        text = request.params.get("address", "")
        try:
            address = IPv4Address(text)
        except (AddressValueError, ValueError):
            raise ApiError(400, f"{text!r} is not an IPv4 address", "address") from None
        view = self.context.leases

        def released(lease: Lease | None) -> Reply:
            if lease is None:
                raise ApiError(404, f"no client holds {address}", "address")
            return Reply(200, lease_json(lease, view.now()))

        return view.release(address).addCallback(released)

    def pools(self, request: ApiRequest) -> Reply:
        return Reply(
            200,
            [
                {
                    "network": str(pool.network),
                    "size": pool.size,
                    "held": pool.held,
                    "free": max(0, pool.size - pool.held),
                }
                for pool in self.context.leases.pools()
            ],
        )

    # -- sessions ------------------------------------------------------------------------------

    def sessions(self, request: ApiRequest) -> Deferred[Reply]:
        mac = parse_mac(request.query["mac"]) if request.query.get("mac") else None
        limit = _int_param(request, "limit", 100, 1, 10000)
        state = request.query.get("state") or None
        if state not in (None, "in-progress", "booted", "stuck", "failed"):
            raise ApiError(
                400, f"{state!r} is not one of in-progress, booted, stuck, failed", "state"
            )

        latest = _bool_param(request, "latest", False)
        events = _bool_param(request, "events", True)

        def chosen(found: Sequence[dict[str, Any]]) -> Reply:
            if state is not None:
                found = [s for s in found if s.get("state") == state][:limit]
            if not events:
                found = [_without_events(s) for s in found]
            return Reply(200, list(found))

        if latest:
            if mac is not None:
                raise ApiError(400, "latest lists every machine; ask /sessions/MAC", "latest")
            return succeed(chosen(self.context.sessions.latest(limit if state is None else 10**6)))
        return self._sessions(mac, limit if state is None else 10000).addCallback(chosen)

    def machine_sessions(self, request: ApiRequest) -> Deferred[Reply]:
        mac = parse_mac(request.params.get("mac"))
        limit = _int_param(request, "limit", 20, 1, 1000)
        return self._sessions(mac, limit).addCallback(lambda found: Reply(200, list(found)))

    def _sessions(self, mac: MacAddress | None, limit: int) -> Deferred[Sequence[dict[str, Any]]]:
        found = self.context.sessions.sessions(mac, limit)
        return found if isinstance(found, Deferred) else succeed(found)

    def stuck(self, request: ApiRequest) -> Reply:
        return Reply(200, list(self.context.sessions.stuck()))

    def nfs_exports(self, request: ApiRequest) -> Reply:
        mac = parse_mac(request.query["mac"]) if request.query.get("mac") else None
        nfs = self.context.nfs
        if nfs is None:
            return Reply(200, [])  # no NFS wrapper running: nothing is exported
        found = [e for e in nfs.exports() if mac is None or e["mac"] == str(mac)]
        return Reply(200, found)

    # -- boot once, reload, health -------------------------------------------------------------

    def boot_once_state(self, request: ApiRequest) -> Reply:
        mac = parse_mac(request.params.get("mac"))
        return Reply(200, self._boot_once().state(mac))

    def boot_once_reset(self, request: ApiRequest) -> Deferred[Reply] | Reply:
        mac = parse_mac(request.params.get("mac"))
        result = self._boot_once().reset(mac)
        if isinstance(result, Deferred):
            return result.addCallback(lambda state: Reply(200, state))
        return Reply(200, result)

    def boot_once_arm(self, request: ApiRequest) -> Deferred[Reply]:
        """Set ``boot_once`` on the machine (an API definition over it) and arm it afresh."""
        mac = parse_mac(request.params.get("mac"))
        self._boot_once()
        return self.machines.patch(mac, {"boot_once": True}).addCallback(
            lambda _: self.boot_once_reset(request)
        )

    def boot_once_disarm(self, request: ApiRequest) -> Deferred[Reply]:
        """Clear ``boot_once``: the machine network-boots every time again."""
        mac = parse_mac(request.params.get("mac"))
        boot_once = self._boot_once()
        return self.machines.patch(mac, {"boot_once": False}).addCallback(
            lambda _: Reply(200, boot_once.state(mac))
        )

    def _boot_once(self) -> IBootOnce:
        if self.context.boot_once is None:
            raise ApiError(503, "boot-once is not available: the session registry is not running")
        return self.context.boot_once

    def reload(self, request: ApiRequest) -> Deferred[Reply]:
        reloader = self.context.reloader
        if reloader is None:
            raise ApiError(503, "this server cannot reload its config")

        def refused(failure: Any) -> Reply:
            error = failure.trap(ConfigError, PluginError)
            field = None
            if error is ConfigError and failure.value.path:
                from pxetwist.config.errors import format_path

                field = format_path(failure.value.path)
            raise ApiError(422, f"reload refused, old config kept: {failure.value}", field)

        return reloader.reload().addCallbacks(lambda summary: Reply(200, summary), refused)

    def health(self, request: ApiRequest) -> Reply:
        context = self.context
        config = context.config()
        now = context.clock()
        return Reply(
            200,
            {
                "status": "ok",
                "version": __version__,
                "uptime_seconds": round(now - context.started, 3),
                "config": config.source,
                "dhcp_mode": config.dhcp.mode.value,
                "tftp": config.tftp.enabled,
                "http": config.http.enabled,
                "policy_chain": list(context.policy_chain()),
                "sessions": type(context.sessions).__name__,
                "token": {"name": request.token.name, "access": request.token.access.value},
            },
        )

    def openapi(self, request: ApiRequest) -> Reply:
        return Reply(200, openapi_document())

    def routes(self) -> list[Route]:
        m = self.machines
        w = Access.WRITE
        p = PREFIX
        return [
            Route("GET", f"{p}/health", self.health, summary="server status"),
            Route("GET", f"{p}/openapi.json", self.openapi, summary="this API's description"),
            Route("GET", f"{p}/machines", m.list, summary="every machine"),
            Route("POST", f"{p}/machines", m.create, w, "define a machine"),
            Route("GET", f"{p}/machines/{{mac}}", m.get, summary="one machine"),
            Route("PUT", f"{p}/machines/{{mac}}", m.replace, w, "define or replace a machine"),
            Route("PATCH", f"{p}/machines/{{mac}}", m.update, w, "change some keys"),
            Route("DELETE", f"{p}/machines/{{mac}}", m.delete, w, "forget an API machine"),
            Route("GET", f"{p}/machines/{{mac}}/boot-once", self.boot_once_state),
            Route("POST", f"{p}/machines/{{mac}}/boot-once", self.boot_once_arm, w),
            Route("DELETE", f"{p}/machines/{{mac}}/boot-once", self.boot_once_disarm, w),
            Route("POST", f"{p}/machines/{{mac}}/boot-once/reset", self.boot_once_reset, w),
            Route("GET", f"{p}/explain", self.explain, summary="what a machine would get"),
            Route("GET", f"{p}/leases", self.leases, summary="DHCP leases"),
            Route("DELETE", f"{p}/leases/{{address}}", self.release, w, "release a lease"),
            Route("GET", f"{p}/pools", self.pools, summary="pool size and use per subnet"),
            Route("GET", f"{p}/sessions", self.sessions, summary="recent boot sessions"),
            Route("GET", f"{p}/sessions/stuck", self.stuck, summary="stuck sessions"),
            Route("GET", f"{p}/sessions/{{mac}}", self.machine_sessions),
            Route("GET", f"{p}/nfs/exports", self.nfs_exports, summary="NFS exports per machine"),
            Route("POST", f"{p}/reload", self.reload, w, "reload config and plugins"),
        ]


def openapi_document() -> dict[str, Any]:
    text = resources.files("pxetwist.api").joinpath("openapi.json").read_text(encoding="utf-8")
    document: dict[str, Any] = json.loads(text)
    document["info"]["version"] = __version__
    return document
