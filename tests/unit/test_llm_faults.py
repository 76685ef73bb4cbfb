"""The openai backend against a misbehaving loopback server: every run finishes with correct counts, and the
API key never leaks."""

import logging
import socket
import time

import pytest
from fakes.openai_server import FakeOpenAIServer, Fault

from pipeline.config import LLMConfig
from pipeline.llm import CACHE_FILE, LLMBackendError, make_backend

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


def _requests(n: int) -> list[list[dict]]:
    return [[{"role": "user", "content": f"item {i}"}] for i in range(n)]


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
    backend = _backend(server.base_url, tmp_path)
    out = backend.generate(_requests(6))
    assert out[2] is None and out[5] is None
    assert [o for i, o in enumerate(out) if i not in (2, 5)] == [f"echo: item {i}" for i in (0, 1, 3, 4)]
    assert (backend.usage.calls, backend.usage.failed) == (4, 2)
    # a rerun retries only the two failures
    before = server.requests
    assert _backend(server.base_url, tmp_path).generate(_requests(6)) == [f"echo: item {i}" for i in range(6)]
    assert server.requests == before + 2


def test_connection_refused_fails_items_without_raising(tmp_path):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again below: nothing listens there
    backend = _backend(f"http://127.0.0.1:{port}/v1", tmp_path, max_retries=2)
    assert backend.generate(_requests(3)) == [None] * 3
    assert (backend.usage.failed, backend.usage.requests, backend.usage.calls) == (3, 9, 0)


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
    backend = _backend(server.base_url, tmp_path)
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
