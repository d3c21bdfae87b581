"""``pxetwist explain`` shows a machine's NFS exports and its command line with them filled in."""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from pxetwist import cli
from pxetwist.nfs.paths import load_or_create_key, pseudo_path
from pxetwist.policy.values import MacAddress

MAC = "52:54:00:77:00:10"
CONFIG = """\
data_dir: {base}/data
nfs:
  enabled: true
  root: {base}/nfs
machines:
  - mac: {mac}
    address: 10.77.0.10
    kernel: linux
    nfs:
      - {{path: images/base, access: ro}}
      - {{path: "hosts/{{mac}}", access: rw, create: true}}
      - {{path: images/missing}}
    cmdline: "console=ttyS0 root=/dev/nfs nfsroot={{nfs}} extra={{nfs2}}"
"""


class ExplainNfsTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.base = Path(tempfile.mkdtemp(prefix="pxt-nfs-explain-"))
        self.addCleanup(shutil.rmtree, self.base, True)
        (self.base / "nfs" / "images" / "base").mkdir(parents=True)
        self.config = self.base / "pxe.yaml"
        self.config.write_text(CONFIG.format(base=self.base, mac=MAC))

    def explain(self, *extra: str) -> str:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
            code = cli.main(
                [
                    "explain",
                    "-c",
                    str(self.config),
                    "--mac",
                    MAC,
                    "--arch",
                    "0",
                    "--server-address",
                    "10.77.0.1",
                    *extra,
                ]
            )
        self.assertEqual(code, 0)
        return out.getvalue()

    def test_exports_and_expanded_cmdline(self) -> None:
        key = load_or_create_key(self.base / "data" / "nfs" / "pseudo.key")
        mac = MacAddress.parse(MAC)
        base = pseudo_path(key, mac, "images/base")
        host = pseudo_path(key, mac, "hosts/52-54-00-77-00-10")
        text = self.explain()
        self.assertIn("nfs exports, granted to 10.77.0.10 (reservation):", text)
        self.assertIn(f"{{nfs}} images/base (ro) -> {self.base.resolve()}/nfs/images/base", text)
        self.assertIn(f"mounted as 10.77.0.1:{base}", text)
        self.assertIn("{nfs2} hosts/{mac} (rw, create)", text)
        self.assertIn("{nfs3} images/missing (ro)", text)
        self.assertIn("PROBLEM: does not exist (and create is false)", text)
        self.assertIn(
            f"cmdline: console=ttyS0 root=/dev/nfs nfsroot=10.77.0.1:{base} extra=10.77.0.1:{host}",
            text,
        )
        document = json.loads(self.explain("--json"))
        self.assertEqual(
            [e["location"] for e in document["nfs"]["exports"][:2]],
            [f"10.77.0.1:{base}", f"10.77.0.1:{host}"],
        )

    def test_before_first_start_no_key_is_made(self) -> None:
        text = self.explain()
        self.assertIn("no pseudo-path key", text)
        self.assertFalse((self.base / "data" / "nfs" / "pseudo.key").exists())
