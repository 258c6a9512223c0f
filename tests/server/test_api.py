"""OpenAI semantics of `clawmine serve` on the demo model (tiny random weights: text is
gibberish, so tests check shapes, determinism and the maths of logprobs, not wording)."""

import math
import os

import requests

from conftest import REPO
from sse_util import sse_events

CHAT = {"messages": [{"role": "user", "content": "Hello there"}], "max_tokens": 12, "temperature": 0}


def test_health_models_metrics(server):
    assert server.get("/health").json() == {"status": "ok"}
    models = server.get("/v1/models").json()
    assert models["object"] == "list" and models["data"][0]["id"] == "clawmine-demo"
    text = server.get("/metrics").text
    assert "clawmine_http_requests_total" in text and "clawmine_nonfinite_guard_trips_total" in text


def test_chat_completion_shape(server):
    r = server.post("/v1/chat/completions", CHAT)
    assert r.status_code == 200, r.text
    j = r.json()
    assert j["object"] == "chat.completion" and j["id"].startswith("chatcmpl-")
    c = j["choices"][0]
    assert c["message"]["role"] == "assistant" and isinstance(c["message"]["content"], str)
    assert c["finish_reason"] in ("stop", "length")
    u = j["usage"]
    assert u["total_tokens"] == u["prompt_tokens"] + u["completion_tokens"] and 1 <= u["completion_tokens"] <= 12


def test_greedy_is_deterministic_and_stream_matches(server):
    a = server.post("/v1/chat/completions", CHAT).json()["choices"][0]["message"]["content"]
    b = server.post("/v1/chat/completions", CHAT).json()["choices"][0]["message"]["content"]
    assert a == b
    with server.post("/v1/chat/completions", {**CHAT, "stream": True, "stream_options": {"include_usage": True}},
                     stream=True) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events if e["choices"])
    assert text == a
    finishes = [e["choices"][0]["finish_reason"] for e in events if e["choices"] and e["choices"][0]["finish_reason"]]
    assert len(finishes) == 1
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] >= 1


def test_max_completion_tokens_and_length(server):
    j = server.post("/v1/chat/completions", {**CHAT, "max_completion_tokens": 1, "max_tokens": 50}).json()
    assert j["usage"]["completion_tokens"] == 1


def test_ignore_eos_runs_to_max_tokens(spawn):
    # The trained demo model ends its greedy answer to this prompt with EOS after a few tokens.
    s = spawn("--model", os.path.join(REPO, "models", "demo"))
    body = {"messages": [{"role": "user", "content": "Thanks!"}], "temperature": 0, "max_tokens": 40}
    ended = s.post("/v1/chat/completions", body).json()
    assert ended["choices"][0]["finish_reason"] == "stop" and ended["usage"]["completion_tokens"] < 40
    full = s.post("/v1/chat/completions", {**body, "ignore_eos": True}).json()
    assert full["choices"][0]["finish_reason"] == "length" and full["usage"]["completion_tokens"] == 40
    # The text before EOS is the same; EOS itself is never sent as text.
    assert full["choices"][0]["message"]["content"].startswith(ended["choices"][0]["message"]["content"])
    assert "end▁of▁sentence" not in full["choices"][0]["message"]["content"]


def test_seed_reproducible(server):
    body = {"prompt": "The model", "max_tokens": 16, "temperature": 1.0, "seed": 1234}
    a = server.post("/v1/completions", body).json()["choices"][0]["text"]
    b = server.post("/v1/completions", body).json()["choices"][0]["text"]
    assert a == b
    outs = {server.post("/v1/completions", {**body, "seed": s}).json()["choices"][0]["text"] for s in range(5)}
    assert len(outs) > 1


def test_n_choices(server):
    j = server.post("/v1/completions", {"prompt": "abc", "max_tokens": 6, "n": 3, "seed": 7, "temperature": 1}).json()
    assert [c["index"] for c in j["choices"]] == [0, 1, 2]
    assert 3 <= j["usage"]["completion_tokens"] <= 18 and j["usage"]["prompt_tokens"] >= 1


def test_chat_logprobs_match_top_logprobs(server):
    j = server.post("/v1/chat/completions", {**CHAT, "logprobs": True, "top_logprobs": 5}).json()
    content = j["choices"][0]["logprobs"]["content"]
    assert len(content) == j["usage"]["completion_tokens"]
    for entry in content:
        top = entry["top_logprobs"]
        assert len(top) == 5 and all(top[i]["logprob"] >= top[i + 1]["logprob"] for i in range(4))
        # Greedy: the chosen token is the most likely one.
        assert entry["bytes"] == top[0]["bytes"] and math.isclose(entry["logprob"], top[0]["logprob"], abs_tol=1e-6)
        assert sum(math.exp(t["logprob"]) for t in top) <= 1 + 1e-5


def test_sampled_logprobs_cover_the_sampled_distribution(server):
    # top_k=20 leaves exactly 20 tokens; top_logprobs=20 then shows the whole sampled distribution.
    body = {"prompt": "Hello", "max_tokens": 8, "temperature": 0.8, "top_k": 20, "seed": 3, "logprobs": 20}
    lp = server.post("/v1/completions", body).json()["choices"][0]["logprobs"]
    for tok, chosen, top in zip(lp["tokens"], lp["token_logprobs"], lp["top_logprobs"]):
        assert abs(sum(math.exp(v) for v in top.values()) - 1) < 1e-4 or len(top) < 20
        if tok in top and "\ufffd" not in tok:  # partial-UTF-8 tokens share the key "\ufffd"
            assert math.isclose(top[tok], chosen, abs_tol=1e-6)
    chat = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 6, "temperature": 1.0, "top_k": 20,
            "seed": 5, "logprobs": True, "top_logprobs": 20}
    for entry in server.post("/v1/chat/completions", chat).json()["choices"][0]["logprobs"]["content"]:
        probs = {bytes(t["bytes"]): t["logprob"] for t in entry["top_logprobs"]}
        assert abs(sum(math.exp(v) for v in probs.values()) - 1) < 1e-4
        assert math.isclose(probs[bytes(entry["bytes"])], entry["logprob"], abs_tol=1e-6)


def test_stop_strings_never_emitted(server):
    base = {"prompt": "The attention layer", "max_tokens": 40, "temperature": 0}
    full = server.post("/v1/completions", base).json()["choices"][0]["text"]
    assert len(full) > 6
    stop = full[3:6]  # a stop string that occurs in the output, likely across token boundaries
    j = server.post("/v1/completions", {**base, "stop": [stop]}).json()["choices"][0]
    assert j["text"] == full[: full.index(stop)] and j["finish_reason"] == "stop"
    with server.post("/v1/completions", {**base, "stop": stop, "stream": True}, stream=True) as r:
        events = sse_events(r)
    assert "".join(e["choices"][0]["text"] for e in events if e["choices"]) == j["text"]


def test_completion_echo_and_token_prompt(server):
    ids = server.post("/tokenize", {"prompt": "Hello world"}).json()["tokens"]
    assert server.post("/detokenize", {"tokens": ids}).json()["prompt"] == "Hello world"
    a = server.post("/v1/completions", {"prompt": "Hello world", "max_tokens": 5, "temperature": 0}).json()
    b = server.post("/v1/completions", {"prompt": ids, "max_tokens": 5, "temperature": 0}).json()
    assert a["choices"][0]["text"] == b["choices"][0]["text"]
    e = server.post("/v1/completions", {"prompt": "Hello world", "max_tokens": 5, "temperature": 0, "echo": True}).json()
    assert e["choices"][0]["text"] == "Hello world" + a["choices"][0]["text"]


def test_tokenize_chat_uses_v4_encoding(server):
    j = server.post("/tokenize", {"messages": [{"role": "user", "content": "hi"}]}).json()
    text = server.post("/detokenize", {"tokens": j["tokens"]}).json()["prompt"]
    assert text == "<｜begin▁of▁sentence｜><｜User｜>hi<｜Assistant｜></think>"
    j = server.post("/tokenize", {"messages": [{"role": "user", "content": "hi"}], "reasoning_effort": "high"}).json()
    assert server.post("/detokenize", {"tokens": j["tokens"]}).json()["prompt"].endswith("<｜Assistant｜><think>")
    j = server.post("/tokenize", {"messages": [{"role": "user", "content": "hi"}],
                                  "chat_template_kwargs": {"thinking": True}}).json()
    assert server.post("/detokenize", {"tokens": j["tokens"]}).json()["prompt"].endswith("<think>")


TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather of a city",
                                           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}]


def test_tools_and_response_format_are_rendered(server):
    msgs = [{"role": "user", "content": "weather?"}]
    plain = server.post("/tokenize", {"messages": msgs}).json()["count"]
    with_tools = server.post("/tokenize", {"messages": msgs, "tools": TOOLS}).json()
    text = server.post("/detokenize", {"tokens": with_tools["tokens"]}).json()["prompt"]
    assert "get_weather" in text and "｜DSML｜" in text and with_tools["count"] > plain
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "object"}}}
    text = server.post("/detokenize", {"tokens": server.post("/tokenize", {"messages": msgs, "response_format": fmt}).json()["tokens"]}).json()["prompt"]
    assert "Response Format" in text
    # The HTTP shape with tools, tool_choice and a tool-result history.
    history = [{"role": "user", "content": "weather in Paris?"},
               {"role": "assistant", "content": None,
                "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]
    for choice in ("auto", "required", {"type": "function", "function": {"name": "get_weather"}}):
        r = server.post("/v1/chat/completions", {"messages": history, "tools": TOOLS, "tool_choice": choice, "max_tokens": 4})
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


def test_reasoning_split_with_thinking(server):
    r = server.post("/v1/chat/completions", {**CHAT, "reasoning_effort": "high", "max_tokens": 10})
    m = r.json()["choices"][0]["message"]
    # Thinking mode: output starts inside <think>, so until </think> everything is reasoning.
    assert m.get("reasoning_content", "") != "" or m["content"] != ""


def test_api_key_and_cors(spawn):
    s = spawn("--api-key", "sekret", "--cors")
    assert requests.get(s.url + "/health").status_code == 200
    r = requests.get(s.url + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["type"] == "authentication_error"
    r = requests.get(s.url + "/v1/models", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401 and "Incorrect API key" in r.json()["error"]["message"]
    r = requests.get(s.url + "/v1/models", headers={"Authorization": "Bearer sekret"})
    assert r.status_code == 200 and r.headers["Access-Control-Allow-Origin"] == "*"
    assert requests.options(s.url + "/v1/chat/completions").status_code == 204


def test_cors_off_by_default(server):
    assert "Access-Control-Allow-Origin" not in server.get("/v1/models").headers
