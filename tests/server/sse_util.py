"""Reads an SSE response into its JSON events (and checks the [DONE] terminator)."""

import json


def sse_events(resp):
    events, done = [], False
    for line in resp.iter_lines(decode_unicode=False):
        if not line:
            continue
        assert line.startswith(b"data: "), line
        data = line[len(b"data: "):]
        if data == b"[DONE]":
            done = True
            continue
        assert not done, "event after [DONE]"
        events.append(json.loads(data))
    assert done, "stream ended without data: [DONE]"
    return events
