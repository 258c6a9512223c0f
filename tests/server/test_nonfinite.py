"""The non-finite guard: a model whose head produces NaN for one token id fails each request with
a clear 500 error, counts the trip in /metrics and keeps serving."""

import json
import os
import shutil
import struct

from conftest import DEMO_MODEL


def poison_head_row(src, dst, row):
    shutil.copytree(src, dst)
    path = os.path.join(dst, "model.safetensors")
    with open(path, "r+b") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        meta = header["head.weight"]
        begin = 8 + n + meta["data_offsets"][0]
        width = meta["shape"][1]
        nan = {"BF16": b"\xc0\x7f", "F32": b"\x00\x00\xc0\x7f", "F16": b"\x00\x7e"}[meta["dtype"]]
        f.seek(begin + row * width * len(nan))
        f.write(nan * width)


def test_nan_logits_fail_the_request_not_the_server(spawn, tmp_path):
    model = str(tmp_path / "nan-model")
    poison_head_row(DEMO_MODEL, model, 7)
    s = spawn("--model", model)
    for stream in (False, True):
        r = s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": stream})
        if stream:
            assert r.status_code == 200 and '"non_finite_logits"' in r.text and r.text.rstrip().endswith("data: [DONE]")
        else:
            assert r.status_code == 500, r.text
            err = r.json()["error"]
            assert err["code"] == "non_finite_logits" and "non-finite logit" in err["message"] and "token id 7" in err["message"]
    assert s.get("/health").status_code == 200
    assert "clawmine_nonfinite_guard_trips_total 2" in s.get("/metrics").text
