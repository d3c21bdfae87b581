"""``pxetwist machines`` and ``pxetwist leases`` against a real API listener, as subprocesses."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Generator
from typing import Any

from twisted.internet import defer
from twisted.internet.utils import getProcessOutputAndValue

from pxetwist.policy.builtin import StaticPolicy
from pxetwist.testing import make_request
from tests.api.support import READ, WRITE, ApiTestCase

Gen = Generator[defer.Deferred[Any], Any, None]


class CommandTests(ApiTestCase):
    timeout = 120

    @defer.inlineCallbacks
    def pxetwist(
        self, *args: str, token: str | None = WRITE, env: dict[str, str] | None = None
    ) -> Generator[defer.Deferred[Any], Any, tuple[int, str, str]]:
        environment = {
            key: value for key, value in os.environ.items() if not key.startswith("PXETWIST_API")
        }
        if token is not None:
            environment["PXETWIST_API_TOKEN"] = token
        environment.update(env or {})
        out, err, code = yield getProcessOutputAndValue(
            sys.executable, ["-m", "pxetwist.cli", *args], env=environment
        )
        return code, out.decode(), err.decode()

    @defer.inlineCallbacks
    def test_machines_lifecycle(self) -> Gen:
        api = ("--api", self.base)
        code, out, err = yield self.pxetwist(
            "machines",
            "add",
            "52-54-00-77-00-99",
            "--kernel",
            "vmlinuz-x",
            "--initrd",
            "a.img",
            "--initrd",
            "b.img",
            "--set",
            'boot={"bios": "pxelinux.0"}',
            *api,
        )
        self.assertEqual(code, 0, err)
        self.assertIn("kernel: vmlinuz-x", out)
        decision = StaticPolicy(self.config).decide(make_request("52:54:00:77:00:99", arch=0))
        self.assertEqual(decision.initrds if decision else None, ("a.img", "b.img"))
        code, out, err = yield self.pxetwist("machines", "list", *api)
        self.assertEqual(code, 0, err)
        self.assertEqual(
            [line.split()[0] for line in out.splitlines()],
            ["MAC", "52:54:00:77:00:10", "52:54:00:77:00:99"],
        )
        code, out, err = yield self.pxetwist(
            "machines", "set", "52:54:00:77:00:99", "--action", "local", "--json", *api
        )
        self.assertEqual((code, json.loads(out)["action"]), (0, "local"), err)
        code, out, err = yield self.pxetwist("machines", "show", "52:54:00:77:00:99", *api)
        self.assertIn("action: local", out)
        # A bad value: the server's message and the field, exit 1, nothing changed.
        code, out, err = yield self.pxetwist(
            "machines", "set", "52:54:00:77:00:99", "--action", "reboot", *api
        )
        self.assertEqual(code, 1)
        self.assertIn("422 (action)", err)
        # A reservation (issue 14): set at once; node1's address is refused, naming the field.
        code, out, err = yield self.pxetwist(
            "machines", "set", "52:54:00:77:00:99", "--address", "10.77.0.99", "--json", *api
        )
        self.assertEqual((code, json.loads(out)["address"]), (0, "10.77.0.99"), err)
        code, out, err = yield self.pxetwist(
            "machines", "set", "52:54:00:77:00:99", "--address", "10.77.0.50", *api
        )
        self.assertEqual(code, 1)
        self.assertIn("409 (address)", err)
        # A read token cannot delete.
        code, out, err = yield self.pxetwist(
            "machines", "delete", "52:54:00:77:00:99", *api, token=READ
        )
        self.assertEqual(code, 1)
        self.assertIn("403", err)
        code, out, err = yield self.pxetwist("machines", "delete", "52:54:00:77:00:99", *api)
        self.assertEqual((code, out.strip()), (0, "deleted 52:54:00:77:00:99"), err)
        self.assertIsNone(
            StaticPolicy(self.config).decide(make_request("52:54:00:77:00:99", arch=0))
        )

    @defer.inlineCallbacks
    def test_leases_and_token_sources(self) -> Gen:
        self.bind_lease("52:54:00:aa:00:01", "10.77.1.5")
        token_file = self.dir / "token"
        token_file.write_text(READ + "\n")
        code, out, err = yield self.pxetwist(
            "leases", "--api", self.base, "--token-file", str(token_file), token=None
        )
        self.assertEqual(code, 0, err)
        self.assertIn("10.77.1.5  52:54:00:aa:00:01  bound", out)
        # The token from a file named in the environment.
        code, out, err = yield self.pxetwist(
            "leases",
            "--json",
            "--state",
            "bound",
            "--api",
            self.base,
            token=None,
            env={"PXETWIST_API_TOKEN_FILE": str(token_file)},
        )
        self.assertEqual([lease["address"] for lease in json.loads(out)], ["10.77.1.5"], err)
        code, out, err = yield self.pxetwist("leases", "--release", "10.77.1.5", "--api", self.base)
        self.assertEqual(
            (code, out.strip()), (0, "released 10.77.1.5 (was 52:54:00:aa:00:01)"), err
        )
        code, out, err = yield self.pxetwist("leases", "--api", self.base, token=None)
        self.assertEqual(code, 2)
        self.assertIn("no API token", err)
        code, out, err = yield self.pxetwist(
            "leases", "--api", self.base, token="wrong-token-000000000000"
        )
        self.assertEqual(code, 1)
        self.assertIn("401", err)
        code, out, err = yield self.pxetwist("leases", "--api", "http://127.0.0.1:9")
        self.assertEqual(code, 2)
        self.assertIn("cannot reach the API", err)
