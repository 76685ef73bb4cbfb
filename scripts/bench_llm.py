"""Benchmark: throughput of the concurrent openai backend against one call at a time.

Runs against the loopback fake OpenAI-compatible server with a fixed per-request latency, so the
figure measures the backend (concurrency, client overhead), not a model. Each run uses a fresh
cache, so every request is really sent.

    .venv/bin/python scripts/bench_llm.py --requests 64 --latency 0.2 --concurrency 1 4 16 32
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragtune.pipeline.config import LLMConfig  # noqa: E402
from ragtune.pipeline.llm import make_backend  # noqa: E402
from tests.fakes.openai_server import FakeOpenAIServer  # noqa: E402

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=64, help="requests per run")
    parser.add_argument("--latency", type=float, default=0.2, help="fake server latency per request (s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 32], help="levels to compare")
    return parser


def bench(server: FakeOpenAIServer, n_requests: int, concurrency: int) -> float:
    """Seconds to generate ``n_requests`` distinct prompts at ``concurrency``."""
    os.environ["BENCH_LLM_KEY"] = "bench-key"
    cfg = LLMConfig(
        provider="openai",
        model="fake",
        base_url=server.base_url,
        api_key_env="BENCH_LLM_KEY",
        concurrency=concurrency,
        max_new_tokens=64,
    )
    with tempfile.TemporaryDirectory() as cache:
        backend = make_backend(cfg, Path(cache))
        requests = [[{"role": "user", "content": f"question {concurrency}-{i}"}] for i in range(n_requests)]
        start = time.perf_counter()
        out = backend.generate(requests, desc=f"concurrency {concurrency}")
        seconds = time.perf_counter() - start
    if any(o is None for o in out):
        raise RuntimeError(f"concurrency {concurrency}: {sum(o is None for o in out)} requests failed")
    return seconds


def main(args: argparse.Namespace) -> None:
    rows = []
    with FakeOpenAIServer(latency_s=args.latency) as server:
        for concurrency in args.concurrency:
            seconds = bench(server, args.requests, concurrency)
            rows.append((concurrency, seconds, args.requests / seconds))
    base = next((r[2] for r in rows if r[0] == 1), rows[0][2])
    print(f"\n{args.requests} requests, fake server latency {args.latency * 1000:.0f} ms, fresh cache per run\n")
    print("| concurrency | seconds | requests/s | speed-up vs 1 |")
    print("|---:|---:|---:|---:|")
    for concurrency, seconds, rate in rows:
        print(f"| {concurrency} | {seconds:.2f} | {rate:.1f} | {rate / base:.1f}x |")


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main(make_parser().parse_args())
