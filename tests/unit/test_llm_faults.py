"""The openai backend against a misbehaving loopback server: every run finishes with correct counts, and the
API key never leaks."""

import json
import logging
import socket
import time

import pytest
from fakes.openai_server import FakeOpenAIServer, Fault

from ragtune.pipeline.config import LLMConfig, RagtuneConfig, dump_config
from ragtune.pipeline.llm import CACHE_FILE, LLMBackendError, LLMEndpointError, make_backend

KEY_ENV = "RAGTUNE_TEST_LLM_KEY"
SECRET = "sk-test-SECRET-7f3a9c2e5b"


@pytest.fixture(autouse=True)
def _key(monkeypatch):
    monkeypatch.setenv(KEY_ENV, SECRET)


@pytest.fixture
def server():
    with FakeOpenAIServer(latency_s=0.01) as s:
        yield s


def _backend(base_url: str, cache, **kw):
    base = {
        "provider": "openai",
        "model": "fake",
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "backoff_base_s": 0.01,
        "max_retries": 3,
        "timeout_s": 2.0,
        "concurrency": 4,
        "max_new_tokens": 16,
    }
    return make_backend(LLMConfig(**{**base, **kw}), cache)


def _requests(n: int, prefix: str = "item") -> list[list[dict]]:
    return [[{"role": "user", "content": f"{prefix} {i}"}] for i in range(n)]


def test_429_retry_after_is_honoured(server, tmp_path):
    server.add_faults(Fault(status=429, retry_after=0.5))
    start = time.monotonic()
    backend = _backend(server.base_url, tmp_path, concurrency=1)
    assert backend.generate(_requests(1)) == ["echo: item 0"]
    assert time.monotonic() - start >= 0.5  # not the 10 ms backoff
    assert (backend.usage.requests, backend.usage.retries, backend.usage.failed) == (2, 1, 0)


def test_mixed_faults_finish_with_correct_counts_and_nothing_lost(server, tmp_path):
    server.add_faults(
        Fault(status=500, match="item 1"),
        Fault(status=503, match="item 1"),
        Fault(status=429, retry_after=0.05, match="item 2"),
        Fault(status=200, delay_s=1.5, match="item 3"),  # hangs past the 0.3 s timeout
        Fault(status=200, body="this is not json", match="item 4"),
        Fault(status=200, body='{"choices": []}', match="item 5"),
    )
    backend = _backend(server.base_url, tmp_path, timeout_s=0.3)
    out = backend.generate(_requests(8))
    assert out == [f"echo: item {i}" for i in range(8)]
    u = backend.usage
    assert (u.calls, u.failed, u.retries, u.requests) == (8, 0, 6, 14) == (8, 0, 6, server.requests)
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == 8


def test_permanent_failures_give_none_for_that_item_only(server, tmp_path):
    server.add_faults(*[Fault(status=500, match="item 2")] * 4, Fault(status=400, match="item 5"))
    backend = _backend(server.base_url, tmp_path, max_failed_fraction=0.5)  # 2 of 6 may fail
    out = backend.generate(_requests(6))
    assert out[2] is None and out[5] is None
    assert [o for i, o in enumerate(out) if i not in (2, 5)] == [f"echo: item {i}" for i in (0, 1, 3, 4)]
    assert (backend.usage.calls, backend.usage.failed) == (4, 2)
    # a rerun retries only the two failures
    before = server.requests
    assert _backend(server.base_url, tmp_path).generate(_requests(6)) == [f"echo: item {i}" for i in range(6)]
    assert server.requests == before + 2


def test_unreachable_endpoint_raises_naming_it_and_the_last_error(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    backend = _backend(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=2)
    with pytest.raises(LLMEndpointError) as err:
        backend.generate(_requests(3))
    assert f"http://127.0.0.1:{port}/v1" in str(err.value) and "3 of 3 calls failed" in str(err.value)
    assert "last error: APIConnectionError" in str(err.value) and "after 3 attempts" in str(err.value)
    assert (backend.usage.failed, backend.usage.requests, backend.usage.calls) == (3, 9, 0)


def test_more_failures_than_max_failed_fraction_raise_and_a_rerun_reuses_finished_calls(server, tmp_path):
    server.add_faults(*[Fault(status=503, match="item 3")] * 4, *[Fault(status=503, match="item 7")] * 4)
    with pytest.raises(LLMEndpointError, match=r"2 of 10 calls failed .*max_failed_fraction=0.1.*HTTP 503"):
        _backend(server.base_url, tmp_path).generate(_requests(10))
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == 8  # the finished ones are kept
    before = server.requests
    out = _backend(server.base_url, tmp_path).generate(_requests(10))
    assert out == [f"echo: item {i}" for i in range(10)] and server.requests == before + 2
    # one failure in ten is within the default fraction: no error, the item is None
    server.add_faults(*[Fault(status=503, match="item 0")] * 4)
    assert _backend(server.base_url, tmp_path / "b").generate(_requests(10))[0] is None


def test_retry_after_above_the_cap_fails_the_item_without_waiting(server, tmp_path):
    server.add_faults(Fault(status=429, retry_after=3600, match="item 0"), Fault(status=429, retry_after=0.05))
    backend = _backend(server.base_url, tmp_path, max_retry_after_s=1.0, max_failed_fraction=0.5)
    start = time.monotonic()
    assert backend.generate(_requests(2)) == [None, "echo: item 1"]
    assert time.monotonic() - start < 5
    assert backend.usage.failed == 1 and "Retry-After 3600 s exceeds max_retry_after_s" in backend.last_error


def test_budget_counts_the_spend_recorded_in_the_cache_by_earlier_runs(server, tmp_path):
    first = _backend(server.base_url, tmp_path, budget_tokens=60, concurrency=1)
    done = [o for o in first.generate(_requests(10)) if o is not None]
    spent = first.usage.prompt_tokens + first.usage.completion_tokens
    assert 0 < len(done) < 10 and spent <= 60
    # a rerun (or --force) with the same cap calls nothing new: the recorded spend counts
    before = server.requests
    again = _backend(server.base_url, tmp_path, budget_tokens=60, concurrency=1)
    assert again.usage.recorded_tokens == spent
    again.generate(_requests(10, "other"))
    assert server.requests == before and again.usage.skipped_budget == 10
    # with a higher cap only the remainder up to it is spent
    third = _backend(server.base_url, tmp_path, budget_tokens=120, concurrency=1)
    third.generate(_requests(10))
    assert spent + third.usage.prompt_tokens + third.usage.completion_tokens <= 120


def test_a_rejected_reply_is_not_cached_as_final_and_is_asked_again(server, tmp_path):
    backend = _backend(server.base_url, tmp_path)
    out = backend.generate(_requests(3), accept=lambda text: not text.endswith("1"))
    assert out == ["echo: item 0", None, "echo: item 2"] and backend.usage.rejected == 1
    rows = [json.loads(line) for line in (tmp_path / CACHE_FILE).read_text().splitlines()]
    assert sorted(r["final"] for r in rows) == [False, True, True]
    before = server.requests
    assert _backend(server.base_url, tmp_path).generate(_requests(3))[1] == "echo: item 1"
    assert server.requests == before + 1


def test_budget_with_faults_stops_cleanly(server, tmp_path):
    server.add_faults(Fault(status=500), Fault(status=429, retry_after=0.01))
    backend = _backend(server.base_url, tmp_path, concurrency=1, budget_tokens=60)
    out = backend.generate(_requests(10))
    done = [o for o in out if o is not None]
    assert done == [f"echo: item {i}" for i in range(len(done))] and 0 < len(done) < 10
    u = backend.usage
    assert u.budget_exhausted and u.skipped_budget == 10 - len(done) and u.failed == 0
    assert len((tmp_path / CACHE_FILE).read_text().splitlines()) == len(done)


def test_api_key_never_appears_in_logs_errors_usage_or_config(server, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    echo = f'{{"error": {{"message": "bad key {SECRET}"}}}}'
    server.add_faults(Fault(status=500, body=echo, match="item 0"), Fault(status=400, body=echo, match="item 1"))
    backend = _backend(server.base_url, tmp_path, max_failed_fraction=0.5)
    out = backend.generate(_requests(3))
    assert out[0] == "echo: item 0" and out[1] is None
    assert server.auth_headers[0] == f"Bearer {SECRET}"  # it was really sent
    server.add_faults(Fault(status=401, body=echo))
    with pytest.raises(LLMBackendError) as err:
        _backend(server.base_url, tmp_path / "other").generate(_requests(1))
    assert "401" in str(err.value) and KEY_ENV in str(err.value)
    captured = capsys.readouterr()
    texts = [
        caplog.text,
        captured.out,
        captured.err,
        str(err.value),
        repr(backend),
        str(backend.usage.as_dict()),
        backend.cfg.model_dump_json(),
        (tmp_path / CACHE_FILE).read_text(),
    ]
    assert "bad key ***" in caplog.text  # the server's message is kept, the key is scrubbed
    assert all(SECRET not in text for text in texts)


def test_credentials_in_base_url_are_redacted_in_errors_logs_and_the_resolved_config(server, tmp_path, caplog):
    caplog.set_level(logging.DEBUG)
    url = server.base_url.replace("http://", "http://bob:PW-s3cr3t@") + "?api_key=QK-s3cr3t"
    server.add_faults(*[Fault(status=503)] * 4)
    with pytest.raises(LLMEndpointError) as err:
        _backend(url, tmp_path, max_retries=1).generate(_requests(1))
    cfg = RagtuneConfig.model_validate(
        {"run": {"name": "x"}, "data": {"docs": "d"}, "synth": {"llm": {"provider": "openai", "base_url": url}}}
    )
    resolved = dump_config(cfg)
    assert "http://***@127.0.0.1" in str(err.value) and "api_key=***" in resolved
    assert all("s3cr3t" not in text for text in (str(err.value), caplog.text, resolved))
    assert "HTTP Request: POST" in caplog.text  # the client's own log lines were kept, scrubbed
