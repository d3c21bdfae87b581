"""``twistd pxe --check-config`` with NFS: the root must exist, a managed Ganesha its programs."""

import os
import shutil
import tempfile
from pathlib import Path
from unittest import mock

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.config import ConfigError
from pxetwist.startup import prepare, summarize
from pxetwist.testing import config_from_yaml


class NfsStartupChecks(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pxt-nfs-start-"))
        self.addCleanup(shutil.rmtree, self.base, True)

    def config(self, extra: str = "") -> object:
        return config_from_yaml(
            "tftp: {enabled: false}\nhttp: {enabled: false}\ndhcp: {mode: off}\n"
            f"interfaces: [lo]\nnfs: {{enabled: true, root: {self.base / 'nfs'}{extra}}}\n"
        )

    def test_root_must_exist(self) -> None:
        with self.assertRaisesRegex(ConfigError, r"nfs\.root: .* is not a directory"):
            prepare(self.config())  # type: ignore[arg-type]

    def test_missing_ganesha_named_with_its_package(self) -> None:
        os.mkdir(self.base / "nfs")
        with (
            mock.patch("pxetwist.startup.which", lambda tool: None if "ganesha" in tool else tool),
            self.assertRaisesRegex(ConfigError, r"nfs\.ganesha: .*ganesha\.nfsd \(nfs-ganesha"),
        ):
            prepare(self.config())  # type: ignore[arg-type]
        # an operator's Ganesha over DBus needs none of them
        with mock.patch("pxetwist.startup.which", lambda tool: None):
            setup = prepare(self.config(", ganesha: {dbus: system}"))  # type: ignore[arg-type]
        self.assertIn("nfs: root", summarize(setup))
        self.assertIn("Ganesha on bus system", summarize(setup))
