"""The recorder and the store: sessions and used boots in SQLite, read back by the CLI."""

from __future__ import annotations

import io
import json
import sqlite3
import tempfile
from contextlib import redirect_stdout
from pathlib import Path

import attrs
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist import cli
from pxetwist.config.model import Config, SessionsConfig
from pxetwist.events import BootEventBus
from pxetwist.policy.sightings import SightingRegistry
from pxetwist.sessions.recorder import SessionRecorder, in_this_thread
from pxetwist.sessions.store import PRUNE_EVERY, SessionRow, SessionStore, UsedBoot
from pxetwist.testing import make_request
from tests.sessions.events import DECISION, MAC, full_boot

ONCE = attrs.evolve(DECISION, boot_once=True)


def write_config(directory: Path, **sessions: object) -> Path:
    path = directory / "pxe.yaml"
    lines = [f"data_dir: {directory / 'data'}", "sessions:"]
    lines += [f"  {key}: {value}" for key, value in {"stuck_after": 60, **sessions}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


class RecorderTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.directory = Path(tempfile.mkdtemp(prefix="pxt-sessions-"))
        self.config_path = write_config(self.directory)
        from pxetwist.config import load_config

        self.config = load_config(self.config_path)
        self.clock = Clock()
        self.clock.advance(1000.0)
        self.bus = BootEventBus()
        self.recorder = self.make_recorder()

    def make_recorder(self) -> SessionRecorder:
        recorder = SessionRecorder(
            self.config,
            self.bus,
            SightingRegistry(self.clock.seconds, neighbours=dict),
            self.clock,
            in_thread=in_this_thread,
        )
        recorder.startService()
        self.addCleanup(lambda: recorder.running and recorder.stopService())
        return recorder

    def run_cli(self, *argv: str) -> str:
        out = io.StringIO()
        with redirect_stdout(out):
            self.assertEqual(cli.main(list(argv)), 0)
        return out.getvalue()

    def test_sessions_reach_the_store_on_the_timer(self) -> None:
        for event in full_boot(1000.0):
            self.bus.emit(event)
        self.assertFalse(self.config.sessions_path.exists() and self.stored())
        self.clock.advance(1.0)
        (value,) = self.stored()
        self.assertEqual(
            (value["mac"], value["state"], value["stage"]), (str(MAC), "booted", "os-up")
        )
        printed = json.loads(self.run_cli("sessions", "--config", str(self.config_path), "--json"))
        self.assertEqual(printed, [value])
        timeline = self.run_cli("sessions", "--config", str(self.config_path), "--mac", str(MAC))
        self.assertIn("stages: dhcp-offer 1.0s -> dhcp-ack 1.0s -> nbp 3.0s", timeline)
        table = self.run_cli("sessions", "--config", str(self.config_path))
        self.assertIn("52:54:00:77:00:10  booted", table)

    def stored(self) -> list[dict[str, object]]:
        store = SessionStore(self.config.sessions_path, readonly=True)
        try:
            return store.sessions()
        finally:
            store.close()

    def test_stuck_is_judged_by_the_timer_and_stored_with_its_hint(self) -> None:
        for event in full_boot(1000.0)[:3]:
            self.bus.emit(event)
        self.clock.advance(1.0)
        self.assertEqual(self.stored()[0]["state"], "in-progress")
        self.clock.pump([1.0] * 61)
        (value,) = self.stored()
        self.assertEqual(value["state"], "stuck")
        self.assertIn("nothing was asked for next", str(value["hint"]))
        stuck = json.loads(
            self.run_cli(
                "sessions", "--config", str(self.config_path), "--state", "stuck", "--json"
            )
        )
        self.assertEqual(len(stuck), 1)

    def test_cli_judges_sessions_a_stopped_server_left_in_progress(self) -> None:
        for event in full_boot(1000.0)[:6]:
            self.bus.emit(event)
        self.clock.advance(1.0)
        self.recorder.stopService()
        (value,) = json.loads(self.run_cli("sessions", "--config", str(self.config_path), "--json"))
        self.assertEqual(value["state"], "stuck")  # wall clock is far past 1000 + 60
        self.assertIn("script was fetched but not the kernel", value["hint"])

    def test_boot_once_survives_a_restart_and_reset_boot_rearms_it(self) -> None:
        once = self.recorder.bootonce
        once.gate(make_request(str(MAC)), ONCE)
        for event in full_boot(1000.0):
            self.bus.emit(event)
        self.assertTrue(once.is_used(MAC))
        self.recorder.stopService()  # the final flush writes the used boot
        again = self.make_recorder()
        self.assertTrue(again.bootonce.is_used(MAC))
        printed = self.run_cli(
            "machines", "reset-boot", "52-54-00-77-00-10", "--config", str(self.config_path)
        )
        self.assertIn("armed again", printed)
        self.clock.advance(1.0)  # the running server sees the other process's change
        self.assertFalse(again.bootonce.is_used(MAC))
        printed = self.run_cli(
            "machines", "reset-boot", str(MAC), "--config", str(self.config_path)
        )
        self.assertIn("was not used up", printed)

    def test_a_boot_used_while_reset_is_written_is_not_lost(self) -> None:
        once = self.recorder.bootonce
        store = SessionStore(self.config.sessions_path)
        store.save([], [UsedBoot("52:54:00:00:00:01", 1.0, "x")], keep=5, max_sessions=10)
        store.close()
        once.gate(make_request(str(MAC)), ONCE)
        for event in full_boot(1000.0):
            self.bus.emit(event)
        self.clock.advance(1.0)
        self.assertTrue(once.is_used(MAC))
        self.assertEqual(len(self.recorder._store.used_boots()), 2)  # type: ignore[union-attr]

    def test_failing_writes_keep_used_boots_for_the_next_try(self) -> None:
        once = self.recorder.bootonce
        once.gate(make_request(str(MAC)), ONCE)
        for event in full_boot(1000.0):
            self.bus.emit(event)
        real = self.recorder._store
        assert real is not None

        class Broken:
            def save(self, *args: object, **kwargs: object) -> None:
                raise sqlite3.OperationalError("disk I/O error")

        self.recorder._store = Broken()  # type: ignore[assignment]
        self.clock.advance(1.0)
        self.assertEqual(self.recorder.write_failures, 1)
        self.flushLoggedErrors(sqlite3.OperationalError)
        self.recorder._store = real
        self.clock.advance(1.0)
        self.assertEqual([u.mac for u in real.used_boots()], [str(MAC)])


class StoreBoundsTests(SynchronousTestCase):
    def test_keep_per_machine_and_in_all(self) -> None:
        path = Path(tempfile.mkdtemp(prefix="pxt-store-")) / "sessions.sqlite"
        store = SessionStore(path)
        self.addCleanup(store.close)

        def row(mac: int, started: float) -> SessionRow:
            text = ":".join(f"{b:02x}" for b in mac.to_bytes(6, "big"))
            return SessionRow.from_json(
                {
                    "id": f"{mac}-{started}",
                    "mac": text,
                    "started": started,
                    "updated": started,
                    "state": "stuck",
                    "stage": "nbp",
                }
            )

        store.save([row(1, float(t)) for t in range(30)], keep=5, max_sessions=1000)
        # pruned at the first save: the newest 5 of the machine
        self.assertEqual([s["started"] for s in store.sessions()], [29.0, 28.0, 27.0, 26.0, 25.0])
        store.save([row(1, float(t)) for t in range(30, 40)], keep=5, max_sessions=1000)
        self.assertEqual(len(store.sessions(limit=1000)), 15)  # not pruned at every save
        for batch in range(3):
            store.save(
                [row(100 + batch * 50 + m, 100.0 + batch * 50 + m) for m in range(50)],
                keep=5,
                max_sessions=60,
            )
        store.saves = PRUNE_EVERY  # the next save prunes
        store.save([row(999, 999.0)], keep=5, max_sessions=60)
        self.assertEqual(len(store.sessions(limit=1000)), 60)
        self.assertEqual(store.sessions(limit=1)[0]["started"], 999.0)


class ConfigTests(SynchronousTestCase):
    def test_sessions_section(self) -> None:
        from pxetwist.testing import config_from_yaml

        config = config_from_yaml("sessions: {stuck_after: 2m, keep: 3, flush_interval: 0.5}")
        self.assertEqual(
            config.sessions,
            SessionsConfig(stuck_after=120, keep=3, flush_interval=0.5),
        )
        self.assertEqual(Config("x").sessions, SessionsConfig())
