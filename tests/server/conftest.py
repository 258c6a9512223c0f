"""Spawns `clawmine serve` on a free port for the server tests (--clawmine PATH to the binary)."""

import os
import subprocess
import time

import pytest
import requests

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# The suite runs on the tiny random model (fast on 2 cores), not on the default trained demo model.
DEMO_MODEL = os.path.join(REPO, "tests", "fixtures", "models", "tiny-a")


# Extra `clawmine serve` flags for every server the suite starts, e.g. on the GPU machine
# --server-args="--backend cuda --gpu-memory-fraction 0.1" (tools/gpu-check.sh does).
EXTRA_ARGS = []


def pytest_addoption(parser):
    parser.addoption("--clawmine", default=os.path.join(REPO, "build", "clawmine"), help="path to the clawmine binary")
    parser.addoption("--server-args", default=os.environ.get("CLAWMINE_SERVER_ARGS", ""),
                     help="extra flags for every `clawmine serve` the tests start")


def pytest_configure(config):
    EXTRA_ARGS[:] = config.getoption("--server-args").split()


class Server:
    def __init__(self, binary, *args):
        if "--model" not in args:
            args = ("--model", DEMO_MODEL, "--served-model-name", "clawmine-demo", *args)
        self.proc = subprocess.Popen([binary, "serve", "--port", "0", "--threads", "1", *EXTRA_ARGS, *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = self.proc.stdout.readline()
        if "listening on" not in line:
            self.proc.kill()
            raise RuntimeError(f"clawmine serve did not start: {line!r}")
        self.url = line.strip().split()[-1]
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if requests.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("clawmine serve never became healthy")

    def post(self, path, body=None, **kw):
        return requests.post(self.url + path, json=body, timeout=60, **kw)

    def get(self, path, **kw):
        return requests.get(self.url + path, timeout=60, **kw)

    def rss_kb(self):
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def alive(self):
        return self.proc.poll() is None

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="session")
def binary(request):
    path = request.config.getoption("--clawmine")
    if not os.path.exists(path):
        pytest.fail(f"clawmine binary not found at {path}; pass --clawmine PATH")
    return path


@pytest.fixture(scope="session")
def server(binary):
    s = Server(binary)
    yield s
    assert s.alive(), "the server died during the tests"
    s.stop()


@pytest.fixture
def spawn(binary):
    started = []

    def start(*args):
        s = Server(binary, *args)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
