"""Waiting for a spawned server to finish starting (pxetwist/lab/started.py).

Stand-in servers are short Python children that do what the reactor's start-up does, in order:
handle SIGTERM, then open a pipe.  Every child is bounded by its own sleep and killed by PID.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time

from twisted.trial.unittest import SynchronousTestCase

from pxetwist.lab import LabError
from pxetwist.lab.started import catches, descriptors, wait_started

# Handles SIGTERM after argv[1] s, opens a pipe argv[2] s later, then waits to be killed.
_STARTING = r"""
import os, signal, sys, time
time.sleep(float(sys.argv[1]))
signal.signal(signal.SIGTERM, lambda *_: None)
time.sleep(float(sys.argv[2]))
r, w = os.pipe()
print("pipe", flush=True)
time.sleep(60)
"""


class WaitStartedTests(SynchronousTestCase):
    def child(self, *argv: str, code: str = _STARTING) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            [sys.executable, "-c", code, *argv],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

        def stop() -> None:
            proc.kill()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

        self.addCleanup(stop)
        return proc

    def test_returns_after_the_handler_and_what_follows_it(self) -> None:
        proc = self.child("0.3", "0.15")
        wait_started(proc.pid, proc=proc, timeout=20)
        self.assertTrue(catches(proc.pid, signal.SIGTERM))
        # The pipe opened 0.15 s after the handler is there (settle is 0.3 s): both its ends,
        # beside the child's stdout.
        pipes = [d for d in descriptors(proc.pid) if ": pipe:" in d]
        self.assertEqual(len(pipes), 3, pipes)

    def test_a_process_that_never_handles_sigterm_times_out(self) -> None:
        proc = self.child(code="import time; time.sleep(60)")
        started = time.monotonic()
        with self.assertRaises(LabError) as caught:
            wait_started(proc.pid, proc=proc, timeout=0.5)
        self.assertLess(time.monotonic() - started, 10)
        self.assertIn("handles SIGTERM: False", str(caught.exception))

    def test_a_process_that_exits_fails_at_once(self) -> None:
        proc = self.child(code="raise SystemExit(3)")
        proc.wait(10)
        with self.assertRaises(LabError) as caught:
            wait_started(proc.pid, proc=proc, timeout=20)
        self.assertIn("rc 3", str(caught.exception))

    def test_catches_reads_the_signal_mask(self) -> None:
        proc = self.child("0", "0")
        assert proc.stdout is not None
        self.assertEqual(proc.stdout.readline().strip(), "pipe")
        self.assertTrue(catches(proc.pid, signal.SIGTERM))
        self.assertFalse(catches(proc.pid, signal.SIGUSR2))
