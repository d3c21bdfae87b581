"""The REST API over a real listener on 127.0.0.1, with treq: every route, auth, bad input."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Generator
from contextlib import redirect_stdout
from typing import Any

from twisted.internet import defer

from pxetwist import explain
from pxetwist.api.v1 import openapi_document
from pxetwist.events import BootEvent, EventProtocol, EventStage, Outcome
from pxetwist.policy.builtin import StaticPolicy
from pxetwist.policy.overlay import MachineOverlay
from pxetwist.policy.values import BootAction, MacAddress
from pxetwist.testing import make_request
from tests.api.support import READ, WRITE, ApiTestCase, overlay_file, reload_error

NEW = {"mac": "52-54-00-77-00-99", "name": "new1", "kernel": "vmlinuz-new", "cmdline": "quiet"}
Gen = Generator[defer.Deferred[Any], Any, None]


class AuthTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_every_route_refuses_missing_and_unknown_tokens(self) -> Gen:
        for route in self.service.router.routes:
            path = route.template.replace("{mac}", "52:54:00:77:00:10").replace(
                "{address}", "10.77.1.1"
            )
            for token in (None, "not-a-token-at-all-0000", WRITE[:-1], ""):
                status, body, headers = yield self.call(route.method, path, token, body=NEW)
                self.assertEqual(status, 401, f"{route.method} {path} with {token!r}")
                self.assertEqual(body["field"], "Authorization")
                self.assertIn(b"Bearer", headers.getRawHeaders(b"www-authenticate")[0])
        self.assertFalse(overlay_file(self.dir).exists())
        self.assertEqual(self.reloader.calls, 0)
        self.assertEqual(self.boot_once.resets, [])

    @defer.inlineCallbacks
    def test_read_token_cannot_write_and_nothing_changes(self) -> Gen:
        self.bind_lease("52:54:00:aa:00:01", "10.77.1.5")
        writes = [r for r in self.service.router.routes if r.access.value == "write"]
        self.assertGreaterEqual(len(writes), 6)
        for route in writes:
            path = route.template.replace("{mac}", "52:54:00:77:00:10").replace(
                "{address}", "10.77.1.5"
            )
            status, body, _ = yield self.call(route.method, path, READ, body=NEW)
            self.assertEqual(status, 403, f"{route.method} {path}")
            self.assertIn("read-only", body["message"])
        self.assertFalse(overlay_file(self.dir).exists())
        self.assertEqual(self.reloader.calls, 0)
        self.assertEqual([lease.state.value for lease in self.table.leases()], ["bound"])
        status, body, _ = yield self.call("GET", "/api/v1/machines", READ)
        self.assertEqual([m["mac"] for m in body], ["52:54:00:77:00:10"])

    @defer.inlineCallbacks
    def test_unknown_path_and_method(self) -> Gen:
        status, body, _ = yield self.call("GET", "/api/v1/nothing-here")
        self.assertEqual((status, body["status"]), (404, 404))
        status, body, headers = yield self.call("DELETE", "/api/v1/pools", WRITE)
        self.assertEqual(status, 405)
        self.assertEqual(headers.getRawHeaders(b"allow"), [b"GET"])


class MachineTests(ApiTestCase):
    def policy_decides(self, mac: str) -> Any:
        return StaticPolicy(self.config).decide(make_request(mac, arch=0))

    @defer.inlineCallbacks
    def test_list_shows_config_machines(self) -> Gen:
        status, body, _ = yield self.call("GET", "/api/v1/machines")
        self.assertEqual(status, 200)
        self.assertEqual(
            body,
            [
                {
                    "mac": "52:54:00:77:00:10",
                    "name": "node1",
                    "group": "compute",
                    "address": "10.77.0.50",
                    "source": "config",
                }
            ],
        )

    @defer.inlineCallbacks
    def test_create_is_effective_at_once_and_persisted(self) -> Gen:
        self.assertIsNone(self.policy_decides("52:54:00:77:00:99"))
        status, body, headers = yield self.call("POST", "/api/v1/machines", WRITE, body=NEW)
        self.assertEqual(status, 201, body)
        self.assertEqual(body["mac"], "52:54:00:77:00:99")
        self.assertEqual(body["source"], "api")
        self.assertEqual(
            headers.getRawHeaders(b"location"), [b"/api/v1/machines/52:54:00:77:00:99"]
        )
        decision = self.policy_decides("52:54:00:77:00:99")
        self.assertEqual((decision.kernel, decision.cmdline), ("vmlinuz-new", "quiet"))
        status, body, _ = yield self.call("GET", "/api/v1/machines/52540077 0099".replace(" ", ""))
        self.assertEqual((status, body["kernel"]), (200, "vmlinuz-new"))
        # A fresh process (a restart, or `pxetwist explain`) reads the same machine back.
        MachineOverlay.forget_all()
        again = MachineOverlay.for_config(self.config).get(MacAddress.parse("52:54:00:77:00:99"))
        self.assertEqual(again.profile.kernel if again else None, "vmlinuz-new")
        status, body, _ = yield self.call("POST", "/api/v1/machines", WRITE, body=NEW)
        self.assertEqual((status, body["field"]), (409, "mac"))

    @defer.inlineCallbacks
    def test_put_patch_delete(self) -> Gen:
        path = "/api/v1/machines/52:54:00:77:00:99"
        status, body, _ = yield self.call("PUT", path, WRITE, body={"kernel": "k1"})
        self.assertEqual((status, body["kernel"]), (201, "k1"))
        status, body, _ = yield self.call(
            "PUT", path, WRITE, body={"kernel": "k2", "group": "compute"}
        )
        self.assertEqual((status, body["kernel"], body["group"]), (200, "k2", "compute"))
        status, body, _ = yield self.call(
            "PATCH", path, WRITE, body={"action": "local", "group": None}
        )
        self.assertEqual(status, 200)
        self.assertEqual((body["kernel"], body["action"], "group" in body), ("k2", "local", False))
        self.assertEqual(self.policy_decides("52:54:00:77:00:99").action, BootAction.LOCAL)
        status, body, _ = yield self.call("DELETE", path, WRITE)
        self.assertEqual((status, body), (204, None))
        self.assertIsNone(self.policy_decides("52:54:00:77:00:99"))
        status, body, _ = yield self.call("DELETE", path, WRITE)
        self.assertEqual((status, body["field"]), (404, "mac"))
        self.assertEqual(json.loads(overlay_file(self.dir).read_text())["machines"], [])

    @defer.inlineCallbacks
    def test_config_machine_can_be_overridden_not_deleted(self) -> Gen:
        path = "/api/v1/machines/52:54:00:77:00:10"
        status, body, _ = yield self.call("DELETE", path, WRITE)
        self.assertEqual((status, body["field"]), (409, "mac"))
        self.assertIn(str(self.config_path), body["message"])
        status, body, _ = yield self.call("PATCH", path, WRITE, body={"kernel": "override"})
        self.assertEqual((status, body["source"], body["address"]), (200, "api", "10.77.0.50"))
        self.assertEqual(self.policy_decides("52:54:00:77:00:10").kernel, "override")
        status, _, _ = yield self.call("DELETE", path, WRITE)  # drops the override only
        self.assertEqual(status, 204)
        self.assertEqual(self.policy_decides("52:54:00:77:00:10").kernel, "vmlinuz-compute")

    @defer.inlineCallbacks
    def test_bad_json_and_bad_values_name_the_field(self) -> Gen:
        cases: list[tuple[str, str, Any, bytes | None, int, str]] = [
            ("POST", "/api/v1/machines", None, b"{not json", 400, "body"),
            ("POST", "/api/v1/machines", None, b"", 400, "body"),
            ("POST", "/api/v1/machines", [NEW], None, 400, "body"),
            ("POST", "/api/v1/machines", None, b"\xff\xfe", 400, "body"),
            ("POST", "/api/v1/machines", {"name": "x"}, None, 422, "mac"),
            ("POST", "/api/v1/machines", {**NEW, "mac": "52:54:00"}, None, 400, "mac"),
            ("POST", "/api/v1/machines", {**NEW, "mac": 7}, None, 422, "mac"),
            ("POST", "/api/v1/machines", {**NEW, "action": "reboot"}, None, 422, "action"),
            ("POST", "/api/v1/machines", {**NEW, "group": "nope"}, None, 422, "group"),
            ("POST", "/api/v1/machines", {**NEW, "colour": "red"}, None, 422, "colour"),
            ("POST", "/api/v1/machines", {**NEW, "name": "a b"}, None, 422, "name"),
            ("POST", "/api/v1/machines", {**NEW, "uuid": "x"}, None, 422, "uuid"),
            (
                "POST",
                "/api/v1/machines",
                {**NEW, "boot": {"bios": 1.5, "pdp11": "x"}},
                None,
                422,
                "boot.pdp11",
            ),
            (
                "POST",
                "/api/v1/machines",
                {**NEW, "quirks": {"reply_delay": -1}},
                None,
                422,
                "quirks.reply_delay",
            ),
            ("POST", "/api/v1/machines", {**NEW, "address": "192.0.2.60"}, None, 422, "address"),
            ("POST", "/api/v1/machines", {**NEW, "address": "10.77.0.50"}, None, 409, "address"),
            ("PUT", "/api/v1/machines/zz", {"kernel": "k"}, None, 400, "mac"),
            ("PUT", "/api/v1/machines/52:54:00:77:00:98", {"mac": NEW["mac"]}, None, 422, "mac"),
            ("PATCH", "/api/v1/machines/52:54:00:77:00:10", {"action": 3}, None, 422, "action"),
            ("PATCH", "/api/v1/machines/52:54:00:77:00:97", {"kernel": "k"}, None, 404, "mac"),
        ]
        for method, path, body, raw, want, field in cases:
            status, answer, _ = yield self.call(method, path, WRITE, body=body, raw=raw)
            self.assertEqual(
                (status, answer["field"]), (want, field), (method, path, body, raw, answer)
            )
            self.assertTrue(answer["message"])
        self.assertFalse(overlay_file(self.dir).exists())

    @defer.inlineCallbacks
    def test_explain_matches_the_cli(self) -> Gen:
        yield self.call("POST", "/api/v1/machines", WRITE, body=NEW)
        for mac, arch in (
            ("52:54:00:77:00:99", "7"),
            ("52:54:00:77:00:10", "0"),
            ("52:54:00:11:22:33", "7"),
        ):
            status, body, _ = yield self.call(
                "GET", "/api/v1/explain", params={"mac": mac, "arch": arch}
            )
            self.assertEqual(status, 200)
            out = io.StringIO()
            with redirect_stdout(out):
                code = explain.main(
                    ["--config", str(self.config_path), "--mac", mac, "--arch", arch, "--json"]
                )
            self.assertEqual(code, 0)
            self.assertEqual(body["steps"], json.loads(out.getvalue())["steps"])
            self.assertIn("decision:", body["text"])
        status, body, _ = yield self.call(
            "GET", "/api/v1/explain", params={"mac": NEW["mac"], "arch": "7"}
        )
        self.assertIn("by policy static: machine new1", body["text"])
        for params, field in (
            ({"arch": "7"}, "mac"),
            ({"mac": "x"}, "mac"),
            ({"mac": NEW["mac"], "arch": "x"}, "arch"),
            ({"mac": NEW["mac"], "arch": "70000"}, "arch"),
            ({"mac": NEW["mac"], "uuid": "u"}, "uuid"),
            ({"mac": NEW["mac"], "mode": "m"}, "mode"),
        ):
            status, body, _ = yield self.call("GET", "/api/v1/explain", params=params)
            self.assertEqual((status, body["field"]), (400, field), params)


class LeaseAndSessionTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_leases_list_filter_release(self) -> Gen:
        self.bind_lease("52:54:00:aa:00:01", "10.77.1.5")
        self.bind_lease("52:54:00:aa:00:02", "10.77.1.6")
        status, body, _ = yield self.call("GET", "/api/v1/leases")
        self.assertEqual(status, 200)
        self.assertEqual(
            [(lease["address"], lease["mac"], lease["state"], lease["active"]) for lease in body],
            [
                ("10.77.1.5", "52:54:00:aa:00:01", "bound", True),
                ("10.77.1.6", "52:54:00:aa:00:02", "bound", True),
            ],
        )
        status, body, _ = yield self.call(
            "GET", "/api/v1/leases", params={"mac": "52-54-00-aa-00-02"}
        )
        self.assertEqual([lease["address"] for lease in body], ["10.77.1.6"])
        status, body, _ = yield self.call(
            "GET", "/api/v1/leases", params={"subnet": "10.78.0.0/16"}
        )
        self.assertEqual(body, [])
        status, body, _ = yield self.call("GET", "/api/v1/leases", params={"limit": "1"})
        self.assertEqual([lease["address"] for lease in body], ["10.77.1.5"])
        status, body, _ = yield self.call("DELETE", "/api/v1/leases/10.77.1.5", WRITE)
        self.assertEqual((status, body["state"], body["active"]), (200, "released", False))
        stored = {str(lease.address): lease.state.value for lease in self.store.load()}
        self.assertEqual(stored, {"10.77.1.5": "released", "10.77.1.6": "bound"})
        status, body, _ = yield self.call("GET", "/api/v1/leases", params={"state": "bound"})
        self.assertEqual([lease["address"] for lease in body], ["10.77.1.6"])
        status, body, _ = yield self.call("GET", "/api/v1/pools")
        self.assertEqual(body, [{"network": "10.77.0.0/16", "size": 21, "held": 1, "free": 20}])
        for method, path, params, want, field in (
            ("DELETE", "/api/v1/leases/10.77.1.5", None, 404, "address"),
            ("DELETE", "/api/v1/leases/10.77.1.300", None, 400, "address"),
            ("GET", "/api/v1/leases", {"state": "happy"}, 400, "state"),
            ("GET", "/api/v1/leases", {"subnet": "10.77.0.1/99"}, 400, "subnet"),
            ("GET", "/api/v1/leases", {"mac": "nope"}, 400, "mac"),
            ("GET", "/api/v1/leases", {"active": "maybe"}, 400, "active"),
            ("GET", "/api/v1/leases", {"limit": "0"}, 400, "limit"),
        ):
            status, body, _ = yield self.call(method, path, WRITE, params=params)
            self.assertEqual((status, body["field"]), (want, field), (path, params))

    def emit(
        self, seconds: float, protocol: EventProtocol, stage: EventStage, mac: str, **details: Any
    ) -> None:
        self.sessions(
            BootEvent(
                self.now + seconds,
                protocol,
                stage,
                Outcome.OK,
                MacAddress.parse(mac),
                details=details,
            )
        )

    @defer.inlineCallbacks
    def test_sessions_timeline_and_stuck(self) -> Gen:
        a, b = "52:54:00:aa:00:01", "52:54:00:aa:00:02"
        pxe = {"message_type": "DISCOVER", "reply": "offer", "firmware": "pxe", "pxe": True}
        self.emit(-1000, EventProtocol.DHCP, EventStage.DISCOVER, a, **pxe)
        self.emit(-999, EventProtocol.TFTP, EventStage.TFTP_TRANSFER, a, file="undionly.kpxe",
                  bytes=70000, size=70000, ended="completed")  # fmt: skip
        self.emit(-10, EventProtocol.DHCP, EventStage.DISCOVER, b, **pxe)
        self.emit(-9, EventProtocol.HTTP, EventStage.HTTP_REQUEST, b, path="/vmlinuz",
                  status=200, bytes=9000, complete=True)  # fmt: skip
        self.emit(-8, EventProtocol.OS, EventStage.OS_UP, b)
        self.sweep()
        status, body, _ = yield self.call("GET", "/api/v1/sessions")
        self.assertEqual(status, 200)
        self.assertEqual(
            [(s["mac"], s["state"], s["stage"]) for s in body],
            [(b, "booted", "os-up"), (a, "stuck", "nbp")],
        )
        self.assertEqual([e["stage"] for e in body[1]["events"]], ["dhcp-offer", "nbp"])
        self.assertEqual(body[1]["events"][1]["details"]["file"], "undionly.kpxe")
        self.assertTrue(body[1]["hint"])
        status, body, _ = yield self.call("GET", f"/api/v1/sessions/{a}")
        self.assertEqual([s["state"] for s in body], ["stuck"])
        status, body, _ = yield self.call("GET", "/api/v1/sessions/stuck")
        self.assertEqual([s["mac"] for s in body], [a])
        status, body, _ = yield self.call("GET", "/api/v1/sessions", params={"state": "booted"})
        self.assertEqual([s["mac"] for s in body], [b])
        status, body, _ = yield self.call(
            "GET", "/api/v1/sessions", params={"latest": "true", "events": "false"}
        )
        self.assertEqual([(s["mac"], s["state"]) for s in body], [(b, "booted"), (a, "stuck")])
        self.assertNotIn("events", body[0])
        self.assertEqual(body[0]["last_event"]["stage"], "os-up")
        for params, field in (
            ({"limit": "0"}, "limit"),
            ({"limit": "x"}, "limit"),
            ({"state": "asleep"}, "state"),
            ({"mac": "q"}, "mac"),
            ({"latest": "yes"}, "latest"),
            ({"events": "0"}, "events"),
            ({"latest": "true", "mac": a}, "latest"),
        ):
            status, body, _ = yield self.call("GET", "/api/v1/sessions", params=params)
            self.assertEqual((status, body["field"]), (400, field))
        status, body, _ = yield self.call("GET", "/api/v1/sessions/not-a-mac")
        self.assertEqual((status, body["field"]), (400, "mac"))


class ServerTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_boot_once_reload_health(self) -> Gen:
        mac = MacAddress.parse("52:54:00:77:00:10")
        self.boot_once.used.add(mac)
        status, body, _ = yield self.call("GET", f"/api/v1/machines/{mac}/boot-once")
        self.assertEqual((status, body["used"]), (200, True))
        status, body, _ = yield self.call("POST", f"/api/v1/machines/{mac}/boot-once/reset", WRITE)
        self.assertEqual((status, body["used"], self.boot_once.resets), (200, False, [mac]))
        status, body, _ = yield self.call("POST", "/api/v1/reload", WRITE)
        self.assertEqual((status, body), (200, {"reloaded": True}))
        self.reloader.error = reload_error()
        status, body, _ = yield self.call("POST", "/api/v1/reload", WRITE)
        self.assertEqual((status, body["field"]), (422, "tftp.enabled"))
        self.assertIn("pxe.yaml:3", body["message"])
        status, body, _ = yield self.call("GET", "/api/v1/health")
        self.assertEqual(
            (status, body["status"], body["token"]), (200, "ok", {"name": "ops", "access": "read"})
        )
        self.assertEqual(body["policy_chain"], ["static", "arch"])
        self.context.boot_once = None
        self.context.reloader = None
        status, body, _ = yield self.call("POST", f"/api/v1/machines/{mac}/boot-once/reset", WRITE)
        self.assertEqual(status, 503)
        status, body, _ = yield self.call("POST", "/api/v1/reload", WRITE)
        self.assertEqual(status, 503)


class OpenApiTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_document_describes_exactly_the_routes(self) -> Gen:
        status, document, _ = yield self.call("GET", "/api/v1/openapi.json")
        self.assertEqual(status, 200)
        self.assertEqual(document, openapi_document())
        self.assertTrue(document["openapi"].startswith("3."))
        documented = {
            (method.upper(), path)
            for path, item in document["paths"].items()
            for method in item
            if method in ("get", "post", "put", "patch", "delete")
        }
        routed = {(r.method, r.template) for r in self.service.router.routes}
        self.assertEqual(documented, routed)
        for path, item in document["paths"].items():
            names = set(re.findall(r"\{(\w+)\}", path))
            declared = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
            self.assertEqual(names, declared, path)
            for method, op in item.items():
                if method == "parameters":
                    continue
                self.assertIn("401", op["responses"], (method, path))
                for response in op["responses"].values():
                    for media in response.get("content", {}).values():
                        self.check_refs(document, media["schema"])

    def check_refs(self, document: dict[str, Any], schema: Any) -> None:
        if isinstance(schema, dict):
            if "$ref" in schema:
                name = schema["$ref"].rsplit("/", 1)[1]
                self.assertIn(name, document["components"]["schemas"])
            for value in schema.values():
                self.check_refs(document, value)
        elif isinstance(schema, list):
            for value in schema:
                self.check_refs(document, value)

    @defer.inlineCallbacks
    def test_every_route_answers_a_documented_status(self) -> Gen:
        document = openapi_document()
        self.bind_lease("52:54:00:aa:00:01", "10.77.1.5")
        for route in self.service.router.routes:
            path = route.template.replace("{mac}", "52:54:00:77:00:10").replace(
                "{address}", "10.77.1.5"
            )
            params = {"mac": "52:54:00:77:00:10"} if route.template.endswith("explain") else None
            body = (
                {"kernel": "k"}
                if route.method in ("PUT", "PATCH")
                else {**NEW}
                if route.method == "POST"
                else None
            )
            status, _, _ = yield self.call(route.method, path, WRITE, body=body, params=params)
            documented = document["paths"][route.template][route.method.lower()]["responses"]
            self.assertIn(str(status), documented, (route.method, route.template))
            self.assertLess(status, 300, (route.method, route.template))


class NfsExportTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_exports_by_state(self) -> Gen:
        from ipaddress import IPv4Address
        from pathlib import Path
        from types import SimpleNamespace

        from pxetwist.api.nfsview import NfsExports
        from pxetwist.nfs.render import ExportGrant
        from pxetwist.policy.decision import NfsAccess

        def grant(export_id: int, mac: str) -> ExportGrant:
            return ExportGrant(
                export_id,
                MacAddress.parse(mac),
                IPv4Address("10.77.1.5"),
                Path(f"/srv/nfs/{export_id}"),
                f"/x{export_id}",
                NfsAccess.RW,
                f"{export_id}",
            )

        a, b, c = (
            grant(3, "52:54:00:aa:00:01"),
            grant(4, "52:54:00:aa:00:01"),
            grant(5, "52:54:00:aa:00:02"),
        )
        status, body, _ = yield self.call("GET", "/api/v1/nfs/exports")
        self.assertEqual((status, body), (200, []))
        service = SimpleNamespace(desired={3: a, 5: c}, applied={3: a, 4: b})
        self.context.nfs = NfsExports(lambda: service)
        status, body, _ = yield self.call("GET", "/api/v1/nfs/exports")
        self.assertEqual(
            [(e["export_id"], e["state"]) for e in body],
            [(3, "active"), (4, "withdrawing"), (5, "granting")],
        )
        self.assertEqual(body[0]["access"], "rw")
        status, body, _ = yield self.call(
            "GET", "/api/v1/nfs/exports", params={"mac": "52-54-00-aa-00-02"}
        )
        self.assertEqual([e["export_id"] for e in body], [5])
        status, body, _ = yield self.call("GET", "/api/v1/nfs/exports", params={"mac": "zz"})
        self.assertEqual((status, body["field"]), (400, "mac"))


class AuditTests(ApiTestCase):
    @defer.inlineCallbacks
    def test_changes_are_logged_with_the_token_name(self) -> Gen:
        from typing import cast

        from twisted.logger import ILogObserver, globalLogPublisher

        seen: list[dict[str, Any]] = []

        def observer(event: dict[str, Any]) -> None:
            if event.get("log_namespace") == "pxetwist.api.router":
                seen.append(event)

        typed = cast(ILogObserver, observer)
        globalLogPublisher.addObserver(typed)
        self.addCleanup(globalLogPublisher.removeObserver, typed)
        yield self.call("POST", "/api/v1/machines", WRITE, body=NEW)
        yield self.call("POST", "/api/v1/machines", WRITE, body={"mac": "x"})
        yield self.call("DELETE", "/api/v1/machines/52:54:00:77:00:99", READ)
        yield self.call("GET", "/api/v1/machines", READ)
        changes = [
            (e.get("token"), e.get("method"), e.get("status")) for e in seen if "status" in e
        ]
        self.assertEqual(changes, [("admin", "POST", 201), ("admin", "POST", 400)])
        refused = [e["reason"] for e in seen if "reason" in e]
        self.assertEqual(len(refused), 1)
        self.assertIn("read-only", refused[0])
