"""Serving benchmark: `python -m bench.serve [--model ID] [--streams 1,4,8,16] [--max-tokens 32] [--repeat 1]`.

Starts `python -m engine.serve` in a subprocess on a free loopback port, then for each concurrency N runs N
streaming greedy chat completions at once (different prompts) and prints a markdown table: aggregate generated
tok/s, time to first token and inter-token latency percentiles (p50 / p90, over all streams).
"""
import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import threading
import time

import numpy as np

TOPICS = ["a lighthouse", "a dragon", "the moon", "a library", "a storm", "a garden", "a clockmaker", "a river",
          "a mountain", "a robot", "a violin", "a desert", "a city at night", "a train journey", "a snowfall",
          "an old map"]


def one_stream(conn: http.client.HTTPConnection, topic: str, max_tokens: int) -> dict:
    """Stream one chat completion on conn; times of the first and every later content chunk."""
    body = {"messages": [{"role": "user", "content": f"Write a long story about {topic}."}], "max_tokens": max_tokens,
            "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
    t0 = time.perf_counter()
    stamps, tokens = [], 0
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    r = conn.getresponse()
    if r.status != 200:
        raise SystemExit(f"the server answered {r.status}: {r.read()[:200]!r}")
    for line in r:
        if not line.startswith(b"data: ") or line.startswith(b"data: [DONE]"):
            continue
        chunk = json.loads(line[6:])
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        elif chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
            stamps.append(time.perf_counter())
    return {"ttft": stamps[0] - t0 if stamps else float("nan"), "gaps": list(np.diff(stamps)), "tokens": tokens,
            "end": time.perf_counter()}


def run_level(port: int, n: int, max_tokens: int) -> dict:
    """n streams at once, each on its own connection opened before the clock starts. The client is the standard
    library's http.client: it shares the machine's cores with the server, and a full-featured one (httpx) spent
    1.3-1.8 ms of CPU per streamed token, about a tenth of a decode step's compute at 8 streams."""
    results: list[dict] = [{}] * n
    conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=600) for _ in range(n)]
    for conn in conns:
        conn.connect()

    def work(i: int) -> None:
        results[i] = one_stream(conns[i], TOPICS[i % len(TOPICS)], max_tokens)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for conn in conns:
        conn.close()
    wall = max(r["end"] for r in results) - t0
    ttft = [r["ttft"] for r in results]
    gaps = [g for r in results for g in r["gaps"]] or [float("nan")]
    tokens = sum(r["tokens"] for r in results)
    return {"streams": n, "tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "ttft_p50": np.percentile(ttft, 50), "ttft_p90": np.percentile(ttft, 90),
            "itl_p50": np.percentile(gaps, 50), "itl_p90": np.percentile(gaps, 90)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.serve", description=__doc__)
    p.add_argument("--model", default=None, help="model for engine.serve (default: the embedded SmolLM2)")
    p.add_argument("--streams", default="1,4,8,16", help="comma-separated concurrency levels")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens generated per stream")
    p.add_argument("--repeat", type=int, default=1, help="runs per level; the fastest is reported")
    p.add_argument("--threads", type=int, default=None)
    args = p.parse_args(argv)
    levels = [int(x) for x in args.streams.split(",")]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "engine.serve", "--port", str(port), "--max-batch", str(max(levels)),
           "--ctx-size", "1024", "--sessions-db", ":memory:"] + (["--model", args.model] if args.model else []) + \
          (["--threads", str(args.threads)] if args.threads else [])
    server = subprocess.Popen(cmd, env=os.environ.copy())
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                try:
                    conn.request("GET", "/health")
                    if conn.getresponse().status == 200:
                        break
                finally:
                    conn.close()
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit("the server did not start")
                time.sleep(0.2)
        run_level(port, max(levels), 4)  # warm-up: compile the kernels for every batch shape
        rows = [max((run_level(port, n, args.max_tokens) for _ in range(args.repeat)), key=lambda r: r["tok_s"])
                for n in levels]
    finally:
        server.terminate()
        server.wait(timeout=30)
    base = rows[0]["tok_s"]
    print(f"\n{args.max_tokens} greedy tokens per stream; latencies in ms\n")
    print("| streams | aggregate tok/s | × 1 stream | TTFT p50 / p90 | inter-token p50 / p90 |")
    print("|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['streams']} | {r['tok_s']:.1f} | {r['tok_s'] / base:.2f}× | {r['ttft_p50'] * 1e3:.0f} / "
              f"{r['ttft_p90'] * 1e3:.0f} | {r['itl_p50'] * 1e3:.0f} / {r['itl_p90'] * 1e3:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
