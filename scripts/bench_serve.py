"""Load on `ragtune serve`: concurrent chats and embeddings against a finished run, on loopback.

    .venv/bin/python scripts/bench_serve.py runs/demo [--chats 16] [--embeddings 50] [--port 8765] [--warm-reranker]
        [key=value ...]

Starts the server in a child process (as a user would, with an API key), waits until it answers, then sends
``--chats`` chat completions at once and ``--embeddings`` embedding requests at once (each in its own thread,
with the ``openai`` client), and prints per kind: latency p50 and p95, errors by status code (a full chat queue
answers 503 by design), and the server's resident memory before and after. Config overrides after the run
directory go to the server (e.g. ``assemble.generator=base`` to measure the LLM rather than the gate's choice).
Nothing is timed by a test: the figures go in docs/integrations.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

QUESTIONS = [
    "how long do I have to do a takeover when the router instance dies",
    "default grace period when draining the batch queue",
    "when does a shard lease run out",
    "how long are snapshots kept",
]
KEY = "bench-key"


def rss_mb(pid: int) -> float:
    """Resident memory of a process, from /proc (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def timed(call) -> tuple[float, str]:
    started = time.perf_counter()
    try:
        call()
        return time.perf_counter() - started, "ok"
    except openai.APIStatusError as e:
        return time.perf_counter() - started, str(e.status_code)
    except openai.APIConnectionError:
        return time.perf_counter() - started, "connection"


def summary(name: str, results: list[tuple[float, str]]) -> str:
    ok = sorted(s for s, status in results if status == "ok")
    errors: dict[str, int] = {}
    for _, status in results:
        if status != "ok":
            errors[status] = errors.get(status, 0) + 1
    if ok:
        p95 = ok[min(len(ok) - 1, int(0.95 * len(ok)))]
        timing = f"p50 {statistics.median(ok):.2f} s, p95 {p95:.2f} s"
    else:
        timing = "no successful request"
    return f"{name}: {len(results)} requests, {len(ok)} ok ({timing}); errors {errors or 'none'}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--chats", type=int, default=16)
    parser.add_argument("--embeddings", type=int, default=50)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--warm-reranker", action="store_true", help="passed to ragtune serve")
    parser.add_argument("overrides", nargs="*", help="config overrides passed to ragtune serve")
    args = parser.parse_intermixed_args()  # overrides may follow the flags
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "BENCH_KEY": KEY}
    cmd = [
        sys.executable,
        "-m",
        "ragtune.app.serve",
        args.run_dir,
        "--port",
        str(args.port),
        "--api-key-env",
        "BENCH_KEY",
        *(["--warm-reranker"] if args.warm_reranker else []),
        *args.overrides,
    ]
    server = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{args.port}/v1"
    try:
        deadline = time.time() + 300
        while True:
            try:
                if (
                    httpx.get(f"{base}/models", headers={"Authorization": f"Bearer {KEY}"}, timeout=2).status_code
                    == 200
                ):
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.time() > deadline:
                sys.exit("the server did not come up")
            time.sleep(1)
        model = f"ragtune-{Path(args.run_dir).name}"
        client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0, timeout=600)
        before = rss_mb(server.pid)
        with ThreadPoolExecutor(args.chats) as pool:
            chats = list(
                pool.map(
                    lambda i: timed(
                        lambda: client.chat.completions.create(
                            model=model, messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
                        )
                    ),
                    range(args.chats),
                )
            )
        with ThreadPoolExecutor(args.embeddings) as pool:
            embeddings = list(
                pool.map(
                    lambda i: timed(lambda: client.embeddings.create(model=model, input=[QUESTIONS[i % 4]] * 8)),
                    range(args.embeddings),
                )
            )
        after = rss_mb(server.pid)
        print(summary(f"{args.chats} concurrent chats", chats))
        print(summary(f"{args.embeddings} concurrent embedding requests (8 texts each)", embeddings))
        print(f"server RSS: {before:.0f} MB before, {after:.0f} MB after")
    finally:
        server.terminate()
        server.wait(timeout=60)


if __name__ == "__main__":
    main()
