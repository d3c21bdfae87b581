"""TFTP hardening in the lab (issue 18): oversized requests, floods of junk, then a real client.

Each class runs ``twistd -n pxe`` with transfer workers in a network namespace (see
:mod:`tests.tftp.test_clients`), throws something hostile at port 69 from the client namespace,
and then checks that a real client (curl) still gets a file byte-identical to the one on disk:
nothing a client sends may leak a transfer slot or lock real machines out.
"""

from __future__ import annotations

import sys
from typing import ClassVar

from .test_clients import LabTestCase


class OversizedRequestTests(LabTestCase):
    """Issue 18 defect 1: an RRQ of ~6 KB or more, handed to a worker, must not leak its slot.

    Before the fix the hand-off message outgrew the worker's 8 KiB receive buffer, arrived cut
    short, the client got nothing and the slot stayed taken; after ``tftp.max_transfers`` of
    them every request got "Server busy" until a restart.
    """

    files: ClassVar[dict[str, int]] = {"big.bin": 70_000, "small.bin": 5_000}
    # Workers on and otherwise the defaults (max_transfers 2000, timeout 1 s).
    tftp_options: ClassVar[str] = ", workers: 2"

    def test_3000_oversized_requests_then_a_valid_one_is_served(self) -> None:
        result = self.server.run(
            [
                sys.executable,
                "-m",
                "pxetwist.lab.tftpfuzz",
                "oversized",
                self.server.ip,
                "big.bin",
                "3000",
            ],
            timeout=600,
        )
        self.assertEqual(result.returncode, 0, result.stderr + self.server.log_tail())
        counts = dict(line.split(" ", 1) for line in result.stdout.splitlines())
        # Every oversized request was answered (an OACK the client then aborted, or an ERROR),
        # none went unanswered.
        self.assertEqual(counts["sent"], "3000", result.stdout)
        self.assertEqual(counts["unanswered"], "0", result.stdout + self.server.log_tail())
        self.assertNotIn("undecodable control message", self.server.log_text())
        self.fetch("curl-1468", "small.bin")
        self.fetch("curl-512", "big.bin")
