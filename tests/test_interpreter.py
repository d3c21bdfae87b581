"""``scripts/setup.sh`` makes ``.venv`` from Debian's optimised python3 (``scripts/python.sh``).

The server is all interpreter: Debian's profile-guided, link-time optimised, statically linked
build ran the DHCP hot path with 15 % fewer instructions per DORA than a python3 built from
source without those options (bench/README, "The interpreter").  A setup that quietly went back
to whatever ``python3`` is first on ``PATH`` would give that away unnoticed.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SkipTest, SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "python.sh"
DEBIAN_PYTHON = Path("/usr/bin/python3")


def _chosen(**env: str) -> str:
    environment = {k: v for k, v in os.environ.items() if k != "PYTHON"}
    environment.update(env)
    done = subprocess.run(
        [str(SCRIPT)], env=environment, capture_output=True, text=True, timeout=30, check=True
    )
    return done.stdout.strip()


def _debian_python_qualifies() -> bool:
    if not DEBIAN_PYTHON.exists():
        return False
    probe = subprocess.run(
        [
            str(DEBIAN_PYTHON),
            "-c",
            "import sys, venv, ensurepip; print(sys.version_info >= (3, 11))",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    return probe.stdout.strip() == "True"


class InterpreterChoiceTests(SynchronousTestCase):
    def test_an_interpreter_named_by_the_operator_wins(self) -> None:
        self.assertEqual(
            _chosen(PYTHON="/opt/python3.12/bin/python3"), "/opt/python3.12/bin/python3"
        )

    def test_debian_python_is_chosen_when_it_qualifies(self) -> None:
        expected = str(DEBIAN_PYTHON) if _debian_python_qualifies() else "python3"
        self.assertEqual(_chosen(), expected)

    def test_the_project_venv_runs_on_the_chosen_interpreter(self) -> None:
        if Path(sys.prefix).resolve() != (ROOT / ".venv").resolve():
            raise SkipTest("not running from the project's .venv")
        if os.environ.get("PYTHON"):
            raise SkipTest("PYTHON names the interpreter")
        if not _debian_python_qualifies():
            raise SkipTest("no Debian python3 3.11 with venv on this machine")
        self.assertEqual(
            os.path.realpath(sys._base_executable),  # type: ignore[attr-defined]
            os.path.realpath(DEBIAN_PYTHON),
        )


class DescribeInterpreterTests(SynchronousTestCase):
    """The line heading every benchmark's results names the interpreter it ran on."""

    def test_names_the_version_the_binary_and_the_linking(self) -> None:
        from pxetwist.lab.interpreter import describe_interpreter

        text = describe_interpreter()
        self.assertIn(platform.python_version(), text)
        base = getattr(sys, "_base_executable", sys.executable)
        self.assertIn(os.path.realpath(base), text)
        shared = "/libpython3" in Path("/proc/self/maps").read_text()
        self.assertTrue(text.endswith("shared libpython" if shared else "static"), text)

    def test_benchmarks_print_it(self) -> None:
        for script in ("bench/dhcp/run.py", "bench/dhcp/hotpath.py", "bench/storm/run.py"):
            self.assertIn("describe_interpreter()", (ROOT / script).read_text(), script)
