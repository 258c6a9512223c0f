"""The official `openai` npm client against the server (tests/server/node/client.js)."""

import os
import shutil
import subprocess

import pytest

NODE_DIR = os.path.join(os.path.dirname(__file__), "node")


def test_node_openai_client(server):
    node = shutil.which("node")
    if not node or not os.path.isdir(os.path.join(NODE_DIR, "node_modules", "openai")):
        pytest.skip("node or tests/server/node/node_modules missing: run scripts/setup.sh")
    r = subprocess.run([node, os.path.join(NODE_DIR, "client.js"), server.url + "/v1"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all checks passed" in r.stdout
