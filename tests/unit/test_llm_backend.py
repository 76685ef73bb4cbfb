"""LLM backend: cache and resume (kill -9), concurrency, rate limit, budget, dry run, the three providers."""

import errno
import functools
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from fakes.openai_server import FakeOpenAIServer, prompt_hash

from ragtune.pipeline.config import LLMConfig
from ragtune.pipeline.llm import CACHE_FILE, LLMBackendError, ResponseCache, make_backend, openai_compatible
from ragtune.pipeline.rundir import DiskFullError

KEY_ENV = "RAGTUNE_TEST_LLM_KEY"


@pytest.fixture
def server():
    with FakeOpenAIServer(latency_s=0.02) as s:
        yield s


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, "test-key")


def _cfg(server: FakeOpenAIServer, **kw) -> LLMConfig:
    base = {
        "provider": "openai",
        "model": "fake",
        "base_url": server.base_url,
        "api_key_env": KEY_ENV,
        "backoff_base_s": 0.01,
        "max_new_tokens": 16,
    }
    return LLMConfig(**{**base, **kw})


def _requests(n: int, prefix: str = "item") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{prefix} {i}"}] for i in range(n)]


def test_openai_concurrent_in_order_counted_and_cached(server, tmp_path):
    backend = make_backend(_cfg(server, concurrency=4), tmp_path)
    out = backend.generate(_requests(12))
    assert out == [f"echo: item {i}" for i in range(12)]
    assert 2 <= server.max_in_flight <= 4
    u = backend.usage
    assert (u.calls, u.cached, u.failed, u.requests) == (12, 0, 0, 12)
    assert u.prompt_tokens == sum(len(f"item {i}") // 4 + 1 for i in range(12))
    assert u.completion_tokens == sum(len(f"echo: item {i}") // 4 + 1 for i in range(12))
    # a second run (same or new backend) is answered from the cache without a request
    again = make_backend(_cfg(server, concurrency=4), tmp_path)
    assert again.generate(_requests(12)) == out
    assert server.requests == 12 and again.usage.cached == 12 and again.usage.calls == 0


def test_identical_requests_once_at_t0_distinct_samples_above(server, tmp_path):
    backend = make_backend(_cfg(server), tmp_path)
    backend.generate(_requests(1) * 3, temperature=0.0)
    assert server.requests == 1
    backend.generate(_requests(1) * 4, temperature=0.5)
    assert server.requests == 5  # four samples, four keys
    backend.generate(_requests(1) * 4, temperature=0.5)
    assert server.requests == 5  # ... and all four cached


class VirtualClock:
    """A clock that only moves when a request start is scheduled: ``sleep`` records the start, returns at once."""

    def __init__(self) -> None:
        self.now = 0.0
        self.starts: list[float] = []

    def time(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.starts.append(self.now + seconds)


def test_requests_per_minute_spaces_request_starts(server, tmp_path, monkeypatch):
    # On a virtual clock, so the check does not depend on how busy the machine is.
    clock = VirtualClock()
    monkeypatch.setattr(
        openai_compatible,
        "_RateLimiter",
        functools.partial(openai_compatible._RateLimiter, clock=clock.time, sleep=clock.sleep),
    )
    backend = make_backend(_cfg(server, concurrency=8, requests_per_minute=600), tmp_path)  # one per 100 ms
    assert backend.generate(_requests(6)) == [f"echo: item {i}" for i in range(6)]
    assert server.requests == 6 and len(clock.starts) == 6
    gaps = [b - a for a, b in zip(clock.starts, clock.starts[1:], strict=False)]
    assert gaps == pytest.approx([0.1] * 5)
    assert clock.starts[-1] - clock.starts[0] == pytest.approx(0.5)


def test_token_budget_stops_cleanly_and_rerun_finishes(server, tmp_path):
    # each call is estimated at ceil(6 chars / 4) + 16 = 18 tokens and really costs 2 + 4 = 6
    backend = make_backend(_cfg(server, concurrency=1, budget_tokens=40), tmp_path)
    out = backend.generate(_requests(8))
    done = [o for o in out if o is not None]
    assert backend.usage.budget_exhausted and backend.usage.skipped_budget == 8 - len(done)
    assert out[: len(done)] == [f"echo: item {i}" for i in range(len(done))] and 1 <= len(done) < 8
    assert backend.usage.prompt_tokens + backend.usage.completion_tokens <= 40
    bigger = make_backend(_cfg(server, concurrency=1, budget_tokens=10_000), tmp_path)
    assert bigger.generate(_requests(8)) == [f"echo: item {i}" for i in range(8)]
    assert server.requests == 8 and bigger.usage.cached == len(done)


def test_money_budget(server, tmp_path):
    cfg = _cfg(server, concurrency=2, budget_usd=0.05, price_prompt_per_1k=1.0, price_completion_per_1k=1.0)
    backend = make_backend(cfg, tmp_path)
    out = backend.generate(_requests(10))
    assert backend.usage.budget_exhausted and None in out
    assert 0 < backend.usage.cost_usd <= 0.05
    assert backend.usage.cost_usd == pytest.approx(
        (backend.usage.prompt_tokens + backend.usage.completion_tokens) / 1000
    )


def test_dry_run_calls_nothing_and_prints_estimate(server, tmp_path, capsys):
    cfg = _cfg(server, dry_run=True, price_prompt_per_1k=2.0, price_completion_per_1k=4.0)
    out = make_backend(cfg, tmp_path).generate(_requests(3))
    printed = capsys.readouterr().out
    assert out == [None] * 3 and server.requests == 0
    # 3 calls x (ceil(6/4) = 2 prompt + 16 completion) tokens; cost 6/1000*2 + 48/1000*4
    assert "3 calls" in printed and "54 tokens" in printed and "$0.2040" in printed


def test_missing_key_names_the_variable(server, tmp_path, monkeypatch):
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(LLMBackendError, match=KEY_ENV):
        make_backend(_cfg(server), tmp_path).generate(_requests(1))


def test_extractive_is_deterministic_and_needs_an_extractor(tmp_path):
    cfg = LLMConfig(provider="extractive")
    backend = make_backend(cfg, tmp_path, extractor=lambda m: m[-1]["content"].upper())
    assert backend.generate(_requests(2)) == ["ITEM 0", "ITEM 1"] == backend.generate(_requests(2))
    assert not (tmp_path / CACHE_FILE).exists()
    with pytest.raises(LLMBackendError, match="extractor"):
        make_backend(cfg, tmp_path).generate(_requests(1))


def test_torn_last_cache_line_is_dropped(tmp_path):
    cache = ResponseCache(tmp_path / CACHE_FILE)
    cache.append("k1", "one", 1, 1, provider="openai")
    with (tmp_path / CACHE_FILE).open("a") as fh:
        fh.write('{"key": "k2", "te')  # killed mid-write
    reloaded = ResponseCache(tmp_path / CACHE_FILE)
    assert reloaded.entries == {"k1": "one"}
    reloaded.append("k3", "three", 1, 1, provider="openai")
    assert ResponseCache(tmp_path / CACHE_FILE).entries == {"k1": "one", "k3": "three"}


def test_a_full_disk_while_caching_a_call_is_one_error_naming_the_cache_file(tmp_path, monkeypatch):
    cache = ResponseCache(tmp_path / CACHE_FILE)
    cache.append("k1", "one", 1, 1, provider="openai")

    def no_space(fd):  # a full disk shows at the latest when the line is synced
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", no_space)
    line = json.dumps({"key": "k2", "text": "two", "prompt_tokens": 1, "completion_tokens": 1, "provider": "openai",
                       "final": True}) + "\n"  # fmt: skip
    needed = rf"\({len(line)} B needed, .* free there\)"
    with pytest.raises(DiskFullError, match=rf"no space left on device writing {tmp_path / CACHE_FILE} {needed}"):
        cache.append("k2", "two", 1, 1, provider="openai")


def test_local_provider_batched_left_padded_greedy(tiny_llama_dir, tmp_path):
    # fp32: batched and one-at-a-time agree exactly (bf16 rounding may flip a near tie)
    cfg = LLMConfig(provider="local", model=str(tiny_llama_dir), batch_size=3, max_new_tokens=6, dtype="float32")
    backend = make_backend(cfg, tmp_path / "a")
    requests = [[{"role": "user", "content": text}] for text in ("hi", "a much longer prompt about the policy", "x y")]
    batched = backend.generate(requests)
    assert all(isinstance(t, str) for t in batched) and backend.usage.calls == 3
    assert backend.usage.completion_tokens > 0 and backend.usage.prompt_tokens > 0
    # left padding: each prompt alone gives the same greedy completion as inside the padded batch
    single = make_backend(cfg.model_copy(update={"batch_size": 1}), tmp_path / "b")
    assert single.generate(requests) == batched
    assert backend.generate(requests) == batched and backend.usage.calls == 3  # cached


@pytest.mark.parametrize("dtype", ["auto", "float32", "bfloat16"])
def test_local_provider_loads_the_configured_precision(tiny_llama_dir, tmp_path, dtype):
    import torch

    from ragtune.pipeline.precision import bf16_training

    backend = make_backend(LLMConfig(provider="local", model=str(tiny_llama_dir), dtype=dtype), tmp_path)
    assert backend.generate([[{"role": "user", "content": "hi"}]], max_new_tokens=2)[0] is not None
    expected = {"float32": torch.float32, "bfloat16": torch.bfloat16}
    expected["auto"] = torch.bfloat16 if bf16_training() else torch.float32  # native bf16 math only
    assert backend._model.dtype == expected[dtype]


CHILD = """
import sys
from pathlib import Path
from ragtune.pipeline.config import LLMConfig
from ragtune.pipeline.llm import make_backend
cfg = LLMConfig(provider="openai", model="fake", base_url=sys.argv[1], api_key_env="RAGTUNE_TEST_LLM_KEY",
                concurrency=4, max_new_tokens=16)
out = make_backend(cfg, Path(sys.argv[2])).generate(
    [[{"role": "user", "content": f"item {i}"}] for i in range(int(sys.argv[3]))], desc="child")
print("DONE", sum(o is not None for o in out), flush=True)
"""


@pytest.mark.slow
def test_kill_9_midway_then_rerun_repeats_no_finished_call(tmp_path):
    n, concurrency = 40, 4
    env = {**os.environ, KEY_ENV: "test-key"}
    with FakeOpenAIServer(latency_s=0.1) as server:
        cmd = [sys.executable, "-c", CHILD, server.base_url, str(tmp_path), str(n)]
        child = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while server.requests < 14 and time.monotonic() < deadline and child.poll() is None:
            time.sleep(0.01)
        child.send_signal(signal.SIGKILL)
        child.wait()
        assert server.requests >= 14, "the child never got going"
        sent_before = server.requests
        finished = {
            json.loads(line)["text"] for line in (tmp_path / CACHE_FILE).read_text().splitlines() if line.endswith("}")
        }
        assert 0 < len(finished) < n

        rerun = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert f"DONE {n}" in rerun.stdout
        lost = sent_before - len(finished)  # in flight at the kill
        assert 0 <= lost <= concurrency
        assert server.requests == n + lost
        for i in range(n):
            messages = [{"role": "user", "content": f"item {i}"}]
            expected = 1 if f"echo: item {i}" in finished else None
            assert server.by_prompt[prompt_hash(messages)] in ((expected,) if expected else (1, 2))
        rows = [json.loads(line) for line in (tmp_path / CACHE_FILE).read_text().splitlines()]
        assert len(rows) == n and len({r["key"] for r in rows}) == n
        assert sorted(r["text"] for r in rows) == sorted(f"echo: item {i}" for i in range(n))
