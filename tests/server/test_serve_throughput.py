"""bench/serve_throughput.py against a running server: every level's requests complete with
exactly max_tokens tokens each (ignore_eos), the JSON holds the table's numbers, and a bad
--concurrency is refused."""

import json
import os
import subprocess
import sys

from conftest import REPO

SCRIPT = os.path.join(REPO, "bench", "serve_throughput.py")


def test_levels_complete_with_max_tokens_each(server, tmp_path):
    out = tmp_path / "st.json"
    r = subprocess.run([sys.executable, SCRIPT, "--url", server.url, "--concurrency", "1,3", "--requests", "2",
                        "--prompt-words", "8", "--max-tokens", "5", "--json", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "out tok/s" in r.stdout
    levels = json.loads(out.read_text())["levels"]
    assert [(lv["concurrency"], lv["requests"], lv["output_tokens"]) for lv in levels] == [(1, 2, 10), (3, 6, 30)]
    for lv in levels:
        assert lv["n_errors"] == 0 and lv["output_tokens_per_s"] > 0 and lv["ttft_ms_p50"] > 0


def test_bad_concurrency_is_refused(server):
    r = subprocess.run([sys.executable, SCRIPT, "--url", server.url, "--concurrency", "4,zero"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode != 0 and "--concurrency" in r.stderr
