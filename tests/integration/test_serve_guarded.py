"""ragtune serve as an attacker and a crowd would use it: API keys, refused binds, limits, hostile text, a full
queue, clients that give up, and the OpenAI error shape everywhere. A stand-in stack keeps it fast; the last test
counts the model loads of a real (tiny) stack."""

import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import openai
import pytest
from fakes.servers import free_port, serving

from ragtune.app import serve
from ragtune.app.serve import ServedStack, ServeLimits, create_app

KEY = "s3cret-key"


class StubStream:
    """An answer stream as the engine's: its pieces ("drip" questions give 50, a tenth of a second apart)."""

    def __init__(self, answer: str, drip: bool) -> None:
        self.answer, self.drip, self.produced = answer, drip, 0
        self.nodes, self.finish_reason, self.response = [], "stop", None
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        self.cancelled.set()

    def __iter__(self):
        pieces = [f"{i} " for i in range(50)] if self.drip else [self.answer]
        for piece in pieces:
            if self.cancelled.is_set():
                break
            if self.drip:
                time.sleep(0.1)
            self.produced += 1
            yield piece
        self.response = SimpleNamespace(response="".join(pieces[: self.produced]), metadata={"quotes": []})


class StubEngine:
    """Answers with the question; "slow" questions take a second; "boom" raises; "drip" streams slowly."""

    def __init__(self) -> None:
        self.asked: list[str] = []
        self.streams: list[StubStream] = []

    def stream(self, question: str, history: list, sampling) -> StubStream:
        self.asked.append(question)
        if question.startswith("slow"):
            time.sleep(1.0)
        if question == "boom":
            raise RuntimeError("the generator fell over")
        self.streams.append(StubStream(f"answer to {question}", question.startswith("drip")))
        return self.streams[-1]


class StubModels:
    def encode_document(self, texts, **kwargs):
        import numpy as np

        return np.ones((len(texts), 3))

    encode_query = encode_document

    def predict(self, pairs, show_progress_bar=False):
        return [float(len(d)) for _, d in pairs]


@pytest.fixture
def guarded():
    """A stand-in stack behind a key, with small limits so the tests can reach them."""
    engine = StubEngine()
    stack = ServedStack("ragtune-stub", engine, StubModels(), StubModels())
    limits = ServeLimits(max_body_bytes=20_000, max_messages=4, max_question_chars=200, max_rerank_documents=5,
                         max_embedding_inputs=3, max_queued_chats=1)  # fmt: skip
    with serving(create_app(stack, api_key=KEY, limits=limits)) as port:
        yield stack, engine, f"http://127.0.0.1:{port}/v1"


def _post(
    base: str, route: str, body: dict | None = None, key: str | None = KEY, timeout: float = 30
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(f"{base}/{route}", json=body, headers=headers, timeout=timeout)


def _openai_error(reply: httpx.Response, status: int, words: str) -> dict:
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and words in error["message"], error
    return error


def test_every_route_needs_the_api_key(guarded) -> None:
    stack, engine, base = guarded
    wrong = openai.OpenAI(base_url=base, api_key="guess", max_retries=0)
    with pytest.raises(openai.AuthenticationError, match="API key"):
        wrong.models.list()
    with pytest.raises(openai.AuthenticationError):
        wrong.chat.completions.create(model=stack.name, messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.AuthenticationError):
        wrong.embeddings.create(model=stack.name, input="hi")
    error = _openai_error(_post(base, "rerank", {"model": stack.name, "query": "q", "documents": ["d"]}, key=None),
                          401, "API key")  # fmt: skip
    assert error["code"] == "invalid_api_key"
    assert httpx.get(base.removesuffix("/v1") + "/docs").status_code == 401  # the API docs too
    assert engine.asked == []  # nothing reached the models

    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list()] == [stack.name]
    reply = client.chat.completions.create(model=stack.name, messages=[{"role": "user", "content": "hi"}])
    assert reply.choices[0].message.content == "answer to hi"


def test_limits_hostile_text_and_the_openai_error_shape(guarded) -> None:
    stack, _, base = guarded
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    chat = "chat/completions"
    # Caps: the limit is in the message.
    _openai_error(_post(base, chat, {"model": stack.name, "messages": [{"role": "user", "content": "x" * 30_000}]}),
                  413, "20,000")  # fmt: skip
    chunked = httpx.post(f"{base}/embeddings", content=iter([b'{"model": "', b"x" * 30_000, b'"}']),
                         headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})  # fmt: skip
    _openai_error(chunked, 413, "--max-body-bytes")  # no Content-Length: counted while it streams in
    many = [{"role": "user", "content": "hi"}] * 5
    _openai_error(_post(base, chat, {"model": stack.name, "messages": many}), 422, "the limit is 4 (--max-messages)")
    long_question = {"model": stack.name, "messages": [{"role": "user", "content": "why " * 100}]}
    _openai_error(_post(base, chat, long_question), 422, "the limit is 200 (--max-question-chars)")
    docs = {"model": stack.name, "query": "q", "documents": ["d"] * 6}
    _openai_error(_post(base, "rerank", docs), 422, "the limit is 5 (--max-rerank-documents)")
    _openai_error(_post(base, "embeddings", {"model": stack.name, "input": ["a"] * 4}), 422, "--max-embedding-inputs")
    # A lone surrogate escape in any text field is a 400 naming the field, never a 500.
    lone = '"\\ud800"'
    for route, body in [
        (chat, f'{{"model": "{stack.name}", "messages": [{{"role": "user", "content": {lone}}}]}}'),
        ("embeddings", f'{{"model": "{stack.name}", "input": [{lone}]}}'),
        ("rerank", f'{{"model": "{stack.name}", "query": {lone}, "documents": ["d"]}}'),
        ("rerank", f'{{"model": "{stack.name}", "query": "q", "documents": [{{"text": {lone}}}]}}'),
    ]:
        reply = httpx.post(f"{base}/{route}", content=body.encode(), timeout=30,
                           headers={"Authorization": f"Bearer {KEY}", "content-type": "application/json"})  # fmt: skip
        _openai_error(reply, 400, "not valid Unicode")
    # OpenAI content parts and Cohere-style documents are accepted; a non-text part is refused by name.
    parts = [{"type": "text", "text": "first part"}, {"type": "text", "text": "second"}]
    reply = client.chat.completions.create(model=stack.name, messages=[{"role": "user", "content": parts}])
    assert reply.choices[0].message.content == "answer to first part\nsecond"
    image = [{"type": "image_url", "image_url": {"url": "http://x/y.png"}}]
    _openai_error(_post(base, chat, {"model": stack.name, "messages": [{"role": "user", "content": image}]}),
                  400, "messages.0.content")  # fmt: skip
    ranked = _post(base, "rerank", {"model": stack.name, "query": "q", "documents": [{"text": "ab"}, "abcd"]}).json()
    assert [r["index"] for r in ranked["results"]] == [1, 0]
    # Unknown routes, wrong methods and a failing model answer in the OpenAI shape, without a traceback.
    assert _openai_error(httpx.get(f"{base}/nowhere", headers={"Authorization": f"Bearer {KEY}"}), 404, "Not Found")
    assert _openai_error(httpx.get(f"{base}/{chat}", headers={"Authorization": f"Bearer {KEY}"}), 405, "Not Allowed")
    boom = _openai_error(_post(base, chat, {"model": stack.name, "messages": [{"role": "user", "content": "boom"}]}),
                         500, "internal error (RuntimeError)")  # fmt: skip
    assert "Traceback" not in boom["message"] and "fell over" not in boom["message"]


def test_a_full_queue_answers_503_and_a_client_that_left_is_not_answered(guarded) -> None:
    stack, engine, base = guarded

    def ask(question: str, timeout: float) -> int | str:
        try:
            body = {"model": stack.name, "messages": [{"role": "user", "content": question}]}
            return _post(base, "chat/completions", body, timeout=timeout).status_code
        except httpx.TimeoutException:
            return "gave up"

    results: dict[str, int | str] = {}
    first = threading.Thread(target=lambda: results.__setitem__("slow", ask("slow one", 30)))
    first.start()
    time.sleep(0.3)  # the slow one holds the generator
    # max_queued_chats=1: while it runs, the next is queued and the one after gets 503 with Retry-After.
    second = threading.Thread(target=lambda: results.__setitem__("gone", ask("slow gone", 0.3)))
    second.start()
    time.sleep(0.1)
    full = _post(base, "chat/completions", {"model": stack.name, "messages": [{"role": "user", "content": "late"}]})
    _openai_error(full, 503, "busy")
    assert full.headers["retry-after"] == "5"
    first.join()
    second.join()
    time.sleep(0.5)
    assert results == {"slow": 200, "gone": "gave up"}
    assert engine.asked == ["slow one"]  # the request whose client left was dropped before it reached the model


def test_serve_refuses_an_open_bind_without_a_key_and_a_busy_port_before_loading(monkeypatch, capsys) -> None:
    monkeypatch.setattr(serve, "load_stack", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(SystemExit) as exit_info:
        serve.main(["runs/x", "--host", "0.0.0.0"])
    assert exit_info.value.code == 2 and "--insecure-no-auth" in capsys.readouterr().err
    monkeypatch.delenv("RAGTUNE_TEST_KEY", raising=False)
    with pytest.raises(SystemExit):
        serve.main(["runs/x", "--api-key-env", "RAGTUNE_TEST_KEY"])
    assert "RAGTUNE_TEST_KEY: the environment variable is unset or empty" in capsys.readouterr().err
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(SystemExit) as exit_info:
            serve.main(["runs/x", "--port", str(port)])
    assert exit_info.value.code == 2 and f"--port {port}: cannot listen there" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serve.main(["runs/x", "--port", "70000"])
    assert "not a port" in capsys.readouterr().err
    # Config overrides may come after the flags, as with every other ragtune command.
    asked = []
    monkeypatch.setattr(serve, "load_stack", lambda run, overrides, warm: asked.append((run, overrides, warm)) or 1 / 0)
    with pytest.raises(ZeroDivisionError):
        serve.main(["runs/x", "--port", str(free_port()), "assemble.generator=base", "--max-messages", "9", "a.b=1"])
    assert asked == [("runs/x", ["assemble.generator=base", "a.b=1"], False)]
    with pytest.raises(ZeroDivisionError):
        serve.main(["runs/x", "--port", str(free_port()), "--warm-reranker"])
    assert asked[-1] == ("runs/x", [], True)  # the reranker reads the passages ahead only when asked


def test_the_server_loads_each_model_once(tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path,
                                          monkeypatch) -> None:  # fmt: skip
    import sentence_transformers
    from fakes.upstream import record_tuned_reranker_and_adapter, run_dir_of, simulate_embed_stage, tiny_model_overrides

    import ragtune.pipeline.stack
    from ragtune.app.cli import main as cli

    overrides = [*tiny_model_overrides(tiny_bert_dir, tiny_llama_dir), "assemble.embedder=tuned",
                 "assemble.reranker=tuned", "assemble.generator=tuned"]  # fmt: skip
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)
    record_tuned_reranker_and_adapter(run, tiny_bert_dir, tiny_llama_dir)
    loads: list[str] = []
    real_init = sentence_transformers.SentenceTransformer.__init__

    def st_init(self, *args, **kwargs):
        loads.append("SentenceTransformer")  # any load at all, the loader's or another's
        real_init(self, *args, **kwargs)

    def counted(name: str):
        load = getattr(ragtune.pipeline.stack, name)
        return lambda *args, **kwargs: loads.append(name) or load(*args, **kwargs)

    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", st_init)
    for name in ("load_embedder", "load_reranker", "load_generator"):  # the loader's own loads
        monkeypatch.setattr(ragtune.pipeline.stack, name, counted(name))
    stack = serve.load_stack(run.root)
    assert sorted(loads) == ["SentenceTransformer", "load_embedder", "load_generator", "load_reranker"]
    assert stack.embedder is stack.engine.embedder and stack.reranker is stack.engine.reranker.reranker


def test_a_stream_comes_piece_by_piece_and_stops_generating_when_its_client_goes(guarded) -> None:
    stack, engine, base = guarded
    client = openai.OpenAI(base_url=base, api_key=KEY, max_retries=0)
    ask = [{"role": "user", "content": "drip all"}]
    chunks = list(client.chat.completions.create(model=stack.name, messages=ask, stream=True))
    assert len([c for c in chunks if c.choices[0].delta.content]) == 50  # each piece as it came
    assert chunks[-1].choices[0].finish_reason == "stop"
    # A client that reads two pieces and hangs up: the generation stops at its next piece.
    body = {"model": stack.name, "messages": [{"role": "user", "content": "drip and go"}], "stream": True}
    with httpx.stream("POST", f"{base}/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}) as r:
        pieces: list[str] = []
        for line in r.iter_lines():
            pieces += [line] if '"content": "' in line else []
            if len(pieces) == 2:
                break
    time.sleep(1.0)
    gone = engine.streams[-1]
    assert gone.cancelled.is_set() and gone.produced < 20
    assert client.chat.completions.create(model=stack.name, messages=[{"role": "user", "content": "hi"}])
