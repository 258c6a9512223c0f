"""Bad requests: each gets a specific 4xx status and an OpenAI error object naming the problem;
the server keeps serving afterwards."""

import pytest
import requests

M = [{"role": "user", "content": "hi"}]
CHAT, COMP = "/v1/chat/completions", "/v1/completions"

# (route, raw body or JSON object, status, substring of the message, param or None)
CASES = [
    (CHAT, b"{not json", 400, "not valid JSON", None),
    (CHAT, b"", 400, "body is empty", None),
    (CHAT, b"[1, 2]", 400, "must be a JSON object", None),
    (CHAT, b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}', 400, "not valid UTF-8", None),
    (CHAT, {}, 400, "'messages' is required", "messages"),
    (CHAT, {"messages": []}, 400, "'messages' must not be empty", "messages"),
    (CHAT, {"messages": "hi"}, 400, "'messages' must be an array", "messages"),
    (CHAT, {"messages": [5]}, 400, "'messages[0]' must be an object", "messages[0]"),
    (CHAT, {"messages": [{"content": "x"}]}, 400, "'messages[0].role' is required", "messages[0].role"),
    (CHAT, {"messages": [{"role": "wizard", "content": "x"}]}, 400, "must be one of", "messages[0].role"),
    (CHAT, {"messages": [{"role": "user"}]}, 400, "'messages[0].content' is required", "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": 5}]}, 400, "'messages[0].content' must be a string", "messages[0].content"),
    (CHAT, {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "must be 'text'", "messages[0].content[0].type"),
    (CHAT, {"messages": [{"role": "tool", "content": "x"}]}, 400, "tool_call_id", "messages[0].tool_call_id"),
    (CHAT, {"messages": M, "model": "gpt-9"}, 404, "does not exist", "model"),
    (CHAT, {"messages": M, "model": 3}, 400, "'model' must be a string", "model"),
    (CHAT, {"messages": M, "temperature": -1}, 400, "'temperature' must be between 0 and 2", "temperature"),
    (CHAT, {"messages": M, "temperature": "hot"}, 400, "'temperature' must be a number", "temperature"),
    (CHAT, {"messages": M, "ignore_eos": "yes"}, 400, "'ignore_eos' must be a boolean", "ignore_eos"),
    (CHAT, {"messages": M, "top_p": 0}, 400, "'top_p' must be greater than 0", "top_p"),
    (CHAT, {"messages": M, "top_p": 1.5}, 400, "'top_p' must be between", "top_p"),
    (CHAT, {"messages": M, "min_p": 2}, 400, "'min_p' must be between", "min_p"),
    (CHAT, {"messages": M, "presence_penalty": 3}, 400, "'presence_penalty' must be between", "presence_penalty"),
    (CHAT, {"messages": M, "frequency_penalty": -2.5}, 400, "'frequency_penalty' must be between", "frequency_penalty"),
    (CHAT, {"messages": M, "max_tokens": -5}, 400, "'max_tokens' must be at least 1", "max_tokens"),
    (CHAT, {"messages": M, "max_tokens": 0}, 400, "'max_tokens' must be at least 1", "max_tokens"),
    (CHAT, {"messages": M, "max_tokens": 1.5}, 400, "'max_tokens' must be an integer", "max_tokens"),
    (CHAT, {"messages": M, "max_tokens": 10**30}, 400, "'max_tokens' must be an integer", "max_tokens"),
    (CHAT, {"messages": M, "max_tokens": 2000000000}, 400, "maximum context length is", "max_tokens"),
    (CHAT, {"messages": M, "max_completion_tokens": "9"}, 400, "'max_completion_tokens' must be an integer", "max_completion_tokens"),
    (CHAT, {"messages": M, "n": 0}, 400, "'n' must be at least 1", "n"),
    (CHAT, {"messages": M, "n": 1000}, 400, "'n' must be at most 16", "n"),
    (CHAT, {"messages": M, "stream": "yes"}, 400, "'stream' must be a boolean", "stream"),
    (CHAT, {"messages": M, "stream_options": {"include_usage": True}}, 400, "only allowed when 'stream' is true", "stream_options"),
    (CHAT, {"messages": M, "stream": True, "stream_options": {"bogus": 1}}, 400, "unknown field 'stream_options.bogus'", "stream_options.bogus"),
    (CHAT, {"messages": M, "stop": 5}, 400, "'stop' must be a string or an array", "stop"),
    (CHAT, {"messages": M, "stop": ["a", "b", "c", "d", "e"]}, 400, "at most 4", "stop"),
    (CHAT, {"messages": M, "stop": [""]}, 400, "must not be empty", "stop"),
    (CHAT, {"messages": M, "logprobs": True, "top_logprobs": 21}, 400, "'top_logprobs' must be at most 20", "top_logprobs"),
    (CHAT, {"messages": M, "logprobs": True, "top_logprobs": -1}, 400, "'top_logprobs' must be at least 0", "top_logprobs"),
    (CHAT, {"messages": M, "top_logprobs": 3}, 400, "requires 'logprobs'", "top_logprobs"),
    (CHAT, {"messages": M, "seed": "x"}, 400, "'seed' must be an integer", "seed"),
    (CHAT, {"messages": M, "tools": {}}, 400, "'tools' must be an array", "tools"),
    (CHAT, {"messages": M, "tools": [{"type": "function", "function": {}}]}, 400, "'tools[0].function.name' is required", "tools[0].function.name"),
    (CHAT, {"messages": M, "tool_choice": "sometimes"}, 400, "'tool_choice' must be", "tool_choice"),
    (CHAT, {"messages": M, "tools": [{"type": "function", "function": {"name": "f"}}],
            "tool_choice": {"type": "function", "function": {"name": "g"}}}, 400, "not in 'tools'", "tool_choice"),
    (CHAT, {"messages": M, "reasoning_effort": "extreme"}, 400, "'reasoning_effort' must be one of", "reasoning_effort"),
    (CHAT, {"messages": M, "chat_template_kwargs": {"thinking": "yes"}}, 400, "must be a boolean", "chat_template_kwargs.thinking"),
    (CHAT, {"messages": M, "response_format": {"type": "xml"}}, 400, "'response_format.type' must be", "response_format.type"),
    (CHAT, {"messages": [{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "[1]"}}]}]}, 400,
     "must be a JSON object text", "messages[0].tool_calls[0].function.arguments"),
    (COMP, {}, 400, "'prompt' is required", "prompt"),
    (COMP, {"prompt": ""}, 400, "'prompt' must not be empty", "prompt"),
    (COMP, {"prompt": 7}, 400, "'prompt' must be a string", "prompt"),
    (COMP, {"prompt": [1, -2]}, 400, "not a valid token id", "prompt[1]"),
    (COMP, {"prompt": [1, 99999]}, 400, "outside the vocabulary", "prompt[1]"),
    (COMP, {"prompt": "x", "logprobs": 50}, 400, "'logprobs' must be at most 20", "logprobs"),
    (COMP, {"prompt": "x", "logprobs": True}, 400, "'logprobs' must be an integer", "logprobs"),
    (COMP, {"prompt": "x", "echo": 1}, 400, "'echo' must be a boolean", "echo"),
    ("/detokenize", {"tokens": [1, "a"]}, 400, "'tokens[1]' must be an integer", "tokens[1]"),
    ("/detokenize", {"tokens": [100000]}, 400, "outside the vocabulary", "tokens[0]"),
    ("/tokenize", {"text": "x"}, 400, "'prompt' (a string) or 'messages' is required", "prompt"),
    ("/v1/nowhere", {}, 404, "Unknown route", None),
]


@pytest.mark.parametrize("route,body,status,message,param", CASES, ids=[f"{i}:{c[0]}" for i, c in enumerate(CASES)])
def test_bad_input(server, route, body, status, message, param):
    if isinstance(body, bytes):
        r = requests.post(server.url + route, data=body, headers={"Content-Type": "application/json"}, timeout=30)
    else:
        r = server.post(route, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert message in err["message"], err
    assert err["param"] == param, err
    assert err["type"] in ("invalid_request_error", "not_found_error")


def test_body_too_large_and_server_survives(server, spawn):
    s = spawn("--max-body-bytes", "1000")
    r = requests.post(s.url + CHAT, json={"messages": [{"role": "user", "content": "x" * 5000}]}, timeout=30)
    assert r.status_code == 413 and "too large" in r.json()["error"]["message"]
    assert requests.get(s.url + "/health", timeout=5).status_code == 200
    assert len(CASES) >= 30
    assert server.post(CHAT, {"messages": M, "max_tokens": 2}).status_code == 200


def test_context_length_limit(spawn):
    s = spawn("--context-length", "32")
    r = s.post(CHAT, {"messages": [{"role": "user", "content": "word " * 100}]})
    assert r.status_code == 400 and "maximum context length is 32 tokens" in r.json()["error"]["message"]
    assert r.json()["error"]["code"] == "context_length_exceeded"
    r = s.post(CHAT, {"messages": M})  # no max_tokens: fills the context and stops with "length"
    assert r.status_code == 200 and r.json()["usage"]["total_tokens"] <= 32
