"""What ``twistd --uid/--gid`` needs before the switch (pxetwist/privileges.py, issue 18 defect 4).

The end-to-end check (a server as ``nobody`` serving DHCP and TFTP with workers) is the lab test
``tests/tftp/test_privileges.py``; these cover the rules without a lab (they need root to chown).
"""

from __future__ import annotations

import os
import pwd
from typing import Any

from twisted.trial.unittest import SynchronousTestCase

from pxetwist import privileges
from pxetwist.privileges import RunAs, from_twistd, give_to
from tests.util import temp_dir

NOBODY = pwd.getpwnam("nobody")


class Options(dict[str, Any]):
    parent: dict[str, Any]


def options(**parent: Any) -> Options:
    sub = Options()
    sub.parent = {"uid": None, "gid": None, **parent}
    return sub


class FromTwistdTests(SynchronousTestCase):
    def setUp(self) -> None:
        if os.getuid() != 0:
            self.skipTest("the switch happens only for root")

    def test_uid_alone_takes_the_users_group(self) -> None:
        self.assertEqual(
            from_twistd(options(uid=NOBODY.pw_uid)), RunAs(NOBODY.pw_uid, NOBODY.pw_gid)
        )

    def test_no_switch(self) -> None:
        self.assertIsNone(from_twistd(options()))
        self.assertIsNone(from_twistd(Options()))  # made without twistd (tests, check-config)

    def test_both(self) -> None:
        self.assertEqual(from_twistd(options(uid=5, gid=6)), RunAs(5, 6))
        self.assertEqual(RunAs(5, 6).arguments(), ["--uid", "5", "--gid", "6"])


class GiveToTests(SynchronousTestCase):
    def setUp(self) -> None:
        if os.getuid() != 0:
            self.skipTest("chown needs root")
        self.run_as = RunAs(NOBODY.pw_uid, NOBODY.pw_gid)

    def test_the_directory_and_its_state_files(self) -> None:
        data = temp_dir(self) / "data"
        data.mkdir()
        (data / "leases.sqlite").write_bytes(b"")
        (data / "deeper").mkdir()
        (data / "deeper" / "kept").write_bytes(b"")
        (data / "link").symlink_to("/etc/passwd")
        give_to(data, self.run_as)
        for path in (data, data / "leases.sqlite", data / "deeper", data / "link"):
            self.assertEqual(path.lstat().st_uid, NOBODY.pw_uid, path)
        self.assertEqual((data / "deeper" / "kept").stat().st_uid, 0)  # not recursive
        self.assertEqual(os.stat("/etc/passwd").st_uid, 0)  # symlinks not followed

    def test_never_a_system_directory(self) -> None:
        data = temp_dir(self)
        (data / "x").write_bytes(b"")
        self.patch(privileges, "_SYSTEM_DIRECTORIES", frozenset({data.resolve()}))
        give_to(data, self.run_as)
        self.assertEqual((data / "x").stat().st_uid, 0)
        self.assertEqual(data.stat().st_uid, 0)
