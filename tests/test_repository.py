"""The repository names no path of the machine it was written on (the developers' guide).

The shared documents and lab are ``../shared`` from the repository root wherever the checkout
lives; a clone on a fresh CI machine has no ``/work``.
"""

import subprocess
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]
#: The development machine's checkout root, spelled so that this file does not contain it.
MACHINE_PATH = "/" + "work" + "/"


class MachinePathTests(SynchronousTestCase):
    def test_no_tracked_file_names_the_development_machine(self) -> None:
        listed = subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, timeout=60
        )
        if listed.returncode != 0:
            raise SkipTest("not a git checkout (an unpacked sdist)")
        found = []
        for name in listed.stdout.decode().split("\0"):
            path = ROOT / name
            if not name or not path.is_file():
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError:
                continue  # binary
            found += [
                f"{name}:{number}: {line.strip()}"
                for number, line in enumerate(text.splitlines(), start=1)
                if MACHINE_PATH in line
            ]
        self.assertEqual(found, [], "write ../shared (from the repository root) instead")
