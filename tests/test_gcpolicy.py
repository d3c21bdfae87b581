"""The collector settings ``twistd pxe`` runs with (:mod:`pxetwist.gcpolicy`)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import cast

from twisted.application.service import MultiService
from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

from pxetwist import gcpolicy, service, tap
from pxetwist.context import IServerReactor
from tests.util import temp_dir

ROOT = Path(__file__).resolve().parents[1]

# Run in a child: freezing the heap of the test runner itself would change every later test.
_PROBE = """
import gc, json
from pxetwist.gcpolicy import settle_garbage_collector
class Cycle:
    pass
before = gc.get_freeze_count()
settle_garbage_collector()
frozen = gc.get_freeze_count()
a, b = Cycle(), Cycle()
a.other, b.other = b, a          # garbage made after start-up is still collected
del a, b
found = gc.collect()
print(json.dumps({"before": before, "frozen": frozen, "threshold": gc.get_threshold(),
                  "collected": found}))
"""


class SettleTests(SynchronousTestCase):
    def test_freezes_start_up_and_raises_the_young_threshold(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=ROOT, timeout=60
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        self.assertEqual(report["before"], 0)
        self.assertGreater(report["frozen"], 1000)  # the interpreter and pxetwist's modules
        self.assertEqual(
            report["threshold"], [gcpolicy.YOUNG_THRESHOLD, *gcpolicy.OLDER_THRESHOLDS]
        )
        self.assertGreaterEqual(report["collected"], 2)


# A cycle alive at start-up is frozen; once dropped, only a re-settle (after a reload) frees it.
_RELOAD_PROBE = """
import gc, json, weakref
from pxetwist.gcpolicy import resettle_garbage_collector, settle_garbage_collector
class Config:
    pass
old = Config()
old.me = old                      # a cycle, as a replaced config or plugin may hold
gone = weakref.ref(old)
settle_garbage_collector()
del old
gc.collect()
frozen_kept = gone() is not None
resettle_garbage_collector()
print(json.dumps({"frozen_kept": frozen_kept, "freed": gone() is None,
                  "refrozen": gc.get_freeze_count() > 1000,
                  "threshold": gc.get_threshold()}))
"""


class ResettleTests(SynchronousTestCase):
    def test_a_reload_frees_frozen_cycles_and_freezes_again(self) -> None:
        done = subprocess.run(
            [sys.executable, "-c", _RELOAD_PROBE],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=60,
        )
        self.assertEqual(done.returncode, 0, done.stderr)
        report = json.loads(done.stdout)
        self.assertTrue(report["frozen_kept"], "the probe no longer shows why resettling is needed")
        self.assertTrue(report["freed"])
        self.assertTrue(report["refrozen"])
        self.assertEqual(
            report["threshold"], [gcpolicy.YOUNG_THRESHOLD, *gcpolicy.OLDER_THRESHOLDS]
        )


class _Reactor(MemoryReactorClock):
    def callFromThread(self, f: object, *args: object) -> None:
        raise AssertionError("nothing runs on a thread here")


class ServiceTests(SynchronousTestCase):
    """Only the twistd process settles the collector: a service built in a test does not."""

    def setUp(self) -> None:
        self.calls: list[str] = []
        self.patch(service, "settle_garbage_collector", lambda: self.calls.append("settled"))
        directory = temp_dir(self)
        config = directory / "off.yaml"
        config.write_text(
            "interfaces: [lo]\ndhcp: {mode: off}\ntftp: {enabled: false}\nhttp: {enabled: false}\n"
            f"data_dir: {directory / 'data'}\n"
        )
        self.options = tap.Options()
        self.options.parseOptions(["-c", str(config)])
        assert self.options.setup is not None

    def start(self, pxe: service.PxeService) -> None:
        """The service's own start-up steps; its protocols are not started (no sockets)."""
        self.patch(MultiService, "startService", lambda _: None)
        self.patch(MultiService, "stopService", lambda _: None)
        pxe.startService()
        self.addCleanup(pxe.stopService)

    def test_settled_when_asked(self) -> None:
        assert self.options.setup is not None
        reactor = cast(IServerReactor, _Reactor())
        self.start(service.PxeService(self.options.setup, reactor, settle_gc=True))
        self.assertEqual(self.calls, ["settled"])

    def test_not_settled_by_default(self) -> None:
        assert self.options.setup is not None
        reactor = cast(IServerReactor, _Reactor())
        self.start(service.PxeService(self.options.setup, reactor))
        self.assertEqual(self.calls, [])

    def test_reloads_resettle_only_when_settled(self) -> None:
        assert self.options.setup is not None
        reactor = cast(IServerReactor, _Reactor())
        settled = service.PxeService(self.options.setup, reactor, settle_gc=True)
        plain = service.PxeService(self.options.setup, reactor)
        self.assertIs(settled.reloader.after_reload, gcpolicy.resettle_garbage_collector)
        self.assertIsNone(plain.reloader.after_reload)

    def test_twistd_asks(self) -> None:
        previous = signal.getsignal(signal.SIGHUP)
        self.addCleanup(signal.signal, signal.SIGHUP, previous)  # makeService ignores SIGHUP
        made = tap.makeService(self.options)
        assert isinstance(made, service.PxeService)
        self.assertTrue(made._settle_gc)
