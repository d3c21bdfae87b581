"""A plain ``pip install .`` ships pxetwist, the example config and the twistd dropin."""

import os
import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from tests.util import temp_dir

ROOT = Path(__file__).resolve().parents[1]


def build_wheel(testcase: SynchronousTestCase) -> Path:
    out = temp_dir(testcase)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(out),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = out.glob("pxetwist-*.whl")
    return wheel


class WheelTests(SynchronousTestCase):
    def test_wheel_ships_the_dropins_without_init_files(self) -> None:
        names = set(zipfile.ZipFile(build_wheel(self)).namelist())
        self.assertIn("twisted/plugins/pxetwist_service.py", names)
        self.assertIn("twisted/plugins/pxetwist_policies.py", names)
        self.assertIn("pxetwist/tap.py", names)
        self.assertIn("pxetwist/data/pxe.yaml", names)
        self.assertIn("pxetwist/py.typed", names)
        for served in ("openapi.json", "web/index.html", "web/app.js", "web/app.css"):
            self.assertIn(f"pxetwist/api/{served}", names)  # the API and dashboard serve them
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertFalse(any(name.startswith("tests/") for name in names))


class FreshVenvTests(SynchronousTestCase):
    """The done-criterion of issue 2, as a user would do it: a new venv, another directory."""

    def test_twistd_lists_pxe_after_pip_install(self) -> None:
        wheel = build_wheel(self)
        venv = temp_dir(self) / "venv"
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        subprocess.run(
            [str(venv / "bin" / "pip"), "install", "-q", str(wheel)],
            check=True,
            capture_output=True,
            timeout=600,
            env=env,
        )
        elsewhere = temp_dir(self)
        listing = subprocess.run(
            [str(venv / "bin" / "twistd"), "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=elsewhere,
            env=env,
        )
        self.assertIn("pxe ", listing.stdout)
        help_text = subprocess.run(
            [str(venv / "bin" / "twistd"), "pxe", "--help"],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=elsewhere,
            env=env,
        )
        self.assertIn("--check-config", help_text.stdout)
        (elsewhere / "t").mkdir()
        (elsewhere / "h").mkdir()
        config = elsewhere / "pxe.yaml"
        config.write_text(
            (ROOT / "etc" / "pxe.yaml")
            .read_text()
            .replace("/srv/pxetwist/tftp", "t")
            .replace("/srv/pxetwist/http", "h")
            + "\n"
        )
        check = subprocess.run(
            [
                str(venv / "bin" / "twistd"),
                "-n",
                "pxe",
                "--config",
                str(config),
                "-i",
                "lo",
                "--check-config",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=elsewhere,
            env=env,
        )
        self.assertEqual(check.returncode, 0, check.stderr)
        self.assertIn("policy chain: static -> arch", check.stdout)
