"""Boot-once state in the shared PostgreSQL database (issue 15): a machine whose one network
boot was used up on one server is not booted again by the other; a reset reaches both."""

from __future__ import annotations

import io
import os
import tempfile
from contextlib import redirect_stdout
from pathlib import Path
from typing import ClassVar

from twisted.internet.task import Clock
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from pxetwist import cli
from pxetwist.config import load_config
from pxetwist.events import BootEventBus
from pxetwist.lab.netlab import in_ci
from pxetwist.lab.postgres import PostgresCluster, postgres_available, shared_cluster
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.sessions.recorder import SessionRecorder, in_this_thread
from pxetwist.testing import make_request
from tests.sessions.events import MAC, full_boot
from tests.sessions.test_recorder import ONCE


class SharedBootOnceTests(SynchronousTestCase):
    cluster: ClassVar[PostgresCluster | None] = None

    def setUp(self) -> None:
        if not postgres_available():
            if in_ci():
                raise AssertionError("postgresql-15 is missing (scripts/setup.sh --test)")
            raise SkipTest("postgresql-15 is not installed")
        type(self).cluster = shared_cluster()

    def server(self, url: str, clock: Clock) -> tuple[SessionRecorder, BootEventBus, Path]:
        directory = Path(tempfile.mkdtemp(prefix="pxt-shared-once-"))
        config_path = directory / "pxe.yaml"
        config_path.write_text(
            f'data_dir: {directory / "data"}\ndhcp:\n  leases: "{url}"\n'
            "sessions:\n  stuck_after: 60\n"
        )
        bus = BootEventBus()
        recorder = SessionRecorder(
            load_config(config_path),
            bus,
            SightingRegistry(clock.seconds, neighbours=dict),
            clock,
            in_thread=in_this_thread,
        )
        recorder.startService()
        self.addCleanup(lambda: recorder.running and recorder.stopService())
        return recorder, bus, config_path

    def test_used_on_one_server_is_used_on_the_other_and_reset_reaches_both(self) -> None:
        assert self.cluster is not None
        url = self.cluster.create_database(f"once{os.getpid()}")
        clock = Clock()
        clock.advance(1000.0)
        a, a_bus, a_config = self.server(url, clock)
        b, _, _ = self.server(url, clock)
        a.bootonce.gate(make_request(str(MAC)), ONCE)
        for event in full_boot(1000.0):
            a_bus.emit(event)
        self.assertTrue(a.bootonce.is_used(MAC))
        self.assertFalse(b.bootonce.is_used(MAC))
        clock.advance(1.0)  # A writes it to the database; B reads it at its tick
        self.assertTrue(b.bootonce.is_used(MAC))
        # B's gate now answers the machine as A would: no network boot.
        self.assertNotEqual(b.bootonce.gate(make_request(str(MAC)), ONCE), ONCE)
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(
                cli.main(["machines", "reset-boot", str(MAC), "--config", str(a_config)]), 0
            )
        self.assertIn("armed again", out.getvalue())
        clock.advance(1.0)
        self.assertFalse(a.bootonce.is_used(MAC))
        self.assertFalse(b.bootonce.is_used(MAC))
