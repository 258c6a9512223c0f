"""A bounded load test on loopback: mixed chat/completion, streamed/whole, sampled/greedy requests
from 8 clients for LOAD_SECONDS (default 15; CLAWMINE_LOAD_SECONDS overrides, e.g. 120). No error,
RSS stable after warm-up, and /metrics counts add up to what the clients saw."""

import os
import random
import re
import threading
import time

from sse_util import sse_events

LOAD_SECONDS = float(os.environ.get("CLAWMINE_LOAD_SECONDS", "15"))


def metric(text, name, labels=""):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and (not labels or labels in line) and not line.startswith("#"):
            m = re.match(rf"{re.escape(name)}(\{{[^}}]*\}})? ([0-9.e+-]+)$", line)
            if m:
                total += float(m.group(2))
    return total


def one_request(server, rng, seen):
    chat = rng.random() < 0.6
    stream = rng.random() < 0.5
    body = {"max_tokens": rng.randint(1, 24), "temperature": rng.choice([0, 0.7, 1.0]), "seed": rng.randint(0, 99)}
    if rng.random() < 0.3:
        body["logprobs"] = True if chat else 3
        if chat:
            body["top_logprobs"] = 3
    if chat:
        body["messages"] = [{"role": "user", "content": "load " * rng.randint(1, 40)}]
        path = "/v1/chat/completions"
    else:
        body["prompt"] = "load test " * rng.randint(1, 40)
        path = "/v1/completions"
    if stream:
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        with server.post(path, body, stream=True) as r:
            assert r.status_code == 200, r.text
            usage = sse_events(r)[-1]["usage"]
    else:
        r = server.post(path, body)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]
    seen["requests"][path] = seen["requests"].get(path, 0) + 1
    seen["prompt"] += usage["prompt_tokens"]
    seen["completion"] += usage["completion_tokens"]


def test_bounded_load(spawn):
    s = spawn()
    before = s.get("/metrics").text
    seen = {"requests": {}, "prompt": 0, "completion": 0}
    lock = threading.Lock()
    errors = []
    rss = []
    stop_at = time.time() + LOAD_SECONDS

    def client(k):
        rng = random.Random(k)
        local = {"requests": {}, "prompt": 0, "completion": 0}
        try:
            while time.time() < stop_at:
                one_request(s, rng, local)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))
        with lock:
            for p, n in local["requests"].items():
                seen["requests"][p] = seen["requests"].get(p, 0) + n
            seen["prompt"] += local["prompt"]
            seen["completion"] += local["completion"]

    threads = [threading.Thread(target=client, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        rss.append(s.rss_kb())
        time.sleep(0.5)
    assert not errors, errors[:3]
    total = sum(seen["requests"].values())
    assert total > 20
    after = s.get("/metrics").text
    for path, n in seen["requests"].items():
        got = metric(after, "clawmine_http_requests_total", f'route="{path}",status="200"') - \
              metric(before, "clawmine_http_requests_total", f'route="{path}",status="200"')
        assert got == n, (path, got, n)
    assert metric(after, "clawmine_prompt_tokens_total") - metric(before, "clawmine_prompt_tokens_total") == seen["prompt"]
    assert metric(after, "clawmine_generation_tokens_total") - metric(before, "clawmine_generation_tokens_total") == seen["completion"]
    assert metric(after, "clawmine_choices_finished_total") == total
    assert metric(after, "clawmine_time_to_first_token_seconds_count") == total
    assert metric(after, "clawmine_queue_depth") == 0
    # RSS: the second half of the run stays within 20% (+16 MB) of the level after warm-up.
    warm = rss[len(rss) // 4: len(rss) // 2] or rss
    late = rss[len(rss) // 2:] or rss
    assert max(late) <= max(warm) * 1.2 + 16384, (max(warm), max(late))
