#!/usr/bin/env python3
"""Serving throughput of `clawmine serve`, the way users of vLLM's benchmark_serving measure it:
at each concurrency C, C clients each send --requests streaming /v1/completions requests one after
another (a prompt of --prompt-words words, greedy, `ignore_eos`, so every request returns exactly
--max-tokens tokens), and the table gives the output tokens per second over the wall time, time to
first token (p50/p99) and the gaps between a stream's tokens (p50/p99).

  bench/serve_throughput.py --clawmine build/clawmine --server-args "--model DIR --backend cuda"
  bench/serve_throughput.py --url http://127.0.0.1:8000 --concurrency 1,8,32 --json out.json

Either --url (a running server) or --clawmine (spawned on a free port, stopped at the end). Needs
python3 and requests (Debian: python3-requests)."""

import argparse
import json
import statistics
import subprocess
import sys
import threading
import time

import requests


def start_server(binary, extra):
    proc = subprocess.Popen([binary, "serve", "--port", "0", *extra], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            text=True)
    line = proc.stdout.readline()
    if "listening on" not in line:
        proc.kill()
        sys.exit(f"clawmine serve did not start: {line!r}")
    url = line.strip().split()[-1]
    deadline = time.time() + 1800  # a large model loads in the background
    while time.time() < deadline:
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return proc, url
        except requests.RequestException:
            pass
        if proc.poll() is not None:
            sys.exit("clawmine serve exited while loading its model")
        time.sleep(0.2)
    proc.kill()
    sys.exit("clawmine serve never became healthy")


def one_request(url, body):
    """(seconds to the first token, gaps between later token events, completion tokens)."""
    t0 = time.perf_counter()
    first, last, gaps, tokens = None, None, [], 0
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=3600) as r:
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
        for line in r.iter_lines():
            if not line.startswith(b"data: ") or line == b"data: [DONE]":
                continue
            event = json.loads(line[6:])
            now = time.perf_counter()
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            if not event.get("choices"):
                continue
            if first is None:
                first = now - t0
            elif last is not None:
                gaps.append(now - last)
            last = now
    return first, gaps, tokens


def percentile(values, p):
    if not values:
        return float("nan")
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def run_level(url, concurrency, n_requests, prompt, max_tokens):
    results, errors, lock = [], [], threading.Lock()
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "ignore_eos": True, "stream": True,
            "stream_options": {"include_usage": True}}

    def client(i):
        for k in range(n_requests):
            try:
                # A different prompt per request: no two share a cached prefix by accident.
                r = one_request(url, {**body, "prompt": f"{i} {k} " + prompt})
                with lock:
                    results.append(r)
            except Exception as e:  # noqa: BLE001 - reported below
                with lock:
                    errors.append(str(e))

    t0 = time.perf_counter()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ttft = [r[0] for r in results if r[0] is not None]
    gaps = [g for r in results for g in r[1]]
    tokens = sum(r[2] for r in results)
    return {"concurrency": concurrency, "requests": len(results), "errors": errors[:3], "n_errors": len(errors),
            "output_tokens": tokens, "wall_s": wall, "output_tokens_per_s": tokens / wall if wall > 0 else 0.0,
            "ttft_ms_p50": percentile(ttft, 50) * 1e3, "ttft_ms_p99": percentile(ttft, 99) * 1e3,
            "itl_ms_p50": percentile(gaps, 50) * 1e3, "itl_ms_p99": percentile(gaps, 99) * 1e3,
            "itl_ms_mean": statistics.fmean(gaps) * 1e3 if gaps else float("nan")}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    where = ap.add_mutually_exclusive_group(required=True)
    where.add_argument("--url", help="a running server, e.g. http://127.0.0.1:8000")
    where.add_argument("--clawmine", help="path to the clawmine binary: spawn `clawmine serve`")
    ap.add_argument("--server-args", default="", help="flags for the spawned server (--model, --backend, ...)")
    ap.add_argument("--concurrency", default="1,8,32", help="comma-separated client counts")
    ap.add_argument("--requests", type=int, default=2, help="requests per client at each level")
    ap.add_argument("--prompt-words", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--json", help="write the results here")
    a = ap.parse_args()
    levels = []
    for part in a.concurrency.split(","):
        if not part.strip().isdigit() or int(part) < 1:
            ap.error(f"--concurrency: '{part}' is not a positive integer")
        levels.append(int(part))
    if a.requests < 1 or a.prompt_words < 1 or a.max_tokens < 1:
        ap.error("--requests, --prompt-words and --max-tokens must be at least 1")

    proc, url = (None, a.url.rstrip("/")) if a.url else start_server(a.clawmine, a.server_args.split())
    try:
        prompt = " ".join(["benchmark"] * a.prompt_words)
        one_request(url, {"prompt": prompt, "max_tokens": 2, "ignore_eos": True, "stream": True})  # warm-up
        rows = [run_level(url, c, a.requests, prompt, a.max_tokens) for c in levels]
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
    print(f"clawmine serve at {url}: {a.requests} request(s) per client, prompt {a.prompt_words} words, "
          f"{a.max_tokens} tokens each (greedy, ignore_eos)")
    print(f"{'clients':>7} {'requests':>8} {'out tok/s':>10} {'TTFT p50':>9} {'TTFT p99':>9} {'ITL p50':>8} "
          f"{'ITL p99':>8}  (ms)")
    for r in rows:
        print(f"{r['concurrency']:>7} {r['requests']:>8} {r['output_tokens_per_s']:>10.1f} {r['ttft_ms_p50']:>9.1f} "
              f"{r['ttft_ms_p99']:>9.1f} {r['itl_ms_p50']:>8.2f} {r['itl_ms_p99']:>8.2f}"
              + (f"  {r['n_errors']} errors: {r['errors']}" if r["n_errors"] else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"url": url, "max_tokens": a.max_tokens, "prompt_words": a.prompt_words, "levels": rows}, f,
                      indent=1)
    return 1 if any(r["n_errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
