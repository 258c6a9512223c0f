"""The forward pass's flags on `clawmine serve` (shared with the model commands): --indexer always runs
the CSA layers' lightning indexer where auto skips it (the tiny demo model's stores hold at most
index_topk rows at these lengths), with the same greedy text on the CPU; --official-qdq off reaches the
forward pass (other logprobs);
bad values are refused, naming the flag."""

import subprocess

import pytest

from conftest import EXTRA_ARGS

BODY = {"messages": [{"role": "user", "content": "Tell me about sparse attention and its indexer."}],
        "max_tokens": 16, "temperature": 0, "logprobs": True}


def completion(server):
    r = server.post("/v1/chat/completions", BODY)
    assert r.status_code == 200, r.text
    c = r.json()["choices"][0]
    return c["message"]["content"], [t["logprob"] for t in c["logprobs"]["content"]]


def test_indexer_always_gives_the_same_greedy_text(spawn, server):
    text, logprobs = completion(server)
    always_text, always_logprobs = completion(spawn("--indexer", "always"))
    assert always_text == text
    if "cuda" not in EXTRA_ARGS:  # the CPU's logits are the same bits either way
        assert always_logprobs == logprobs
    else:
        assert always_logprobs == pytest.approx(logprobs, abs=1e-3)


def test_official_qdq_off_reaches_the_forward_pass(spawn, server):
    # The round trips change the logits a little: the flag reaches the scheduler's forward options.
    _, on = completion(server)
    _, off = completion(spawn("--official-qdq", "off"))
    assert off and all(lp <= 0 for lp in off)
    assert off != on


@pytest.mark.parametrize("flag,value", [("--indexer", "sometimes"), ("--official-qdq", "maybe")])
def test_bad_values_are_refused(binary, flag, value):
    r = subprocess.run([binary, "serve", flag, value], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and flag in (r.stderr + r.stdout)
