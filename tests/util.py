"""Small helpers shared by the test modules."""

import shutil
import tempfile
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase


def temp_dir(testcase: SynchronousTestCase) -> Path:
    """A fresh absolute directory removed after the test (trial's mktemp is cwd-relative)."""
    path = Path(tempfile.mkdtemp(prefix="pxetwist-test-"))
    testcase.addCleanup(shutil.rmtree, path, True)
    return path
