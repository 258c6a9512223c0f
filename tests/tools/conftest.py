"""Shared by the tests of the device tools' CPU parts: run_tool runs tools/<script> with arguments;
tool_output runs it, expects success and returns its stdout."""
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


@pytest.fixture
def tool_output(run_tool):
    def run(script, *args):
        r = run_tool(script, *args)
        assert r.returncode == 0, r.stderr
        return r.stdout
    return run
