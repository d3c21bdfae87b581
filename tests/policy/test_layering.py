"""The policy layer sits below every protocol: nothing under pxetwist/policy imports one.

Protocols (DHCP, TFTP, HTTP, NFS, the API) ask the policy; if the policy imported a protocol,
the two would be a loop between folders and a plugin author could not use the policy package
without the servers.
"""

from __future__ import annotations

import ast
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import pxetwist.policy

PROTOCOL_PACKAGES = ("dhcp", "tftp", "http", "nfs", "api", "sessions", "lab")


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


class LayeringTests(SynchronousTestCase):
    def test_policy_imports_no_protocol_package(self) -> None:
        folder = Path(pxetwist.policy.__file__).parent
        offending = {
            f"{path.name}: {module}"
            for path in sorted(folder.glob("*.py"))
            for module in _imports(path)
            if module.split(".")[:2] in (["pxetwist", name] for name in PROTOCOL_PACKAGES)
        }
        self.assertEqual(offending, set())

    def test_the_check_sees_imports(self) -> None:
        folder = Path(pxetwist.policy.__file__).parent
        self.assertIn("pxetwist.policy.values", _imports(folder / "decision.py"))
