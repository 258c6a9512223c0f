"""Shared by the tests of the device tools' CPU parts: run_tool runs tools/<script> with arguments."""
import pathlib
import subprocess
import sys

import pytest

TOOLS = pathlib.Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture
def run_tool():
    def run(script, *args):
        return subprocess.run([sys.executable, str(TOOLS / script), *map(str, args)], capture_output=True, text=True)
    return run
