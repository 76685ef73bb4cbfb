"""ragtune serve: the OpenAI-compatible server on 127.0.0.1, driven with the `openai` client."""

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from fakes.servers import free_port, serving
from fakes.upstream import record_tuned_reranker_and_adapter, run_dir_of, simulate_embed_stage, tiny_model_overrides

from ragtune.app.cli import main as cli
from ragtune.app.serve import create_app, load_stack
from ragtune.pipeline.nodes import chunk_id_of

QUESTIONS = [
    "how long do I have to do a takeover when the router instance dies",
    "default grace period when draining the batch queue",
    "when does a shard lease run out",
    "how long are snapshots kept",
]


@pytest.fixture
def tiny_run(tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path):
    overrides = [
        *tiny_model_overrides(tiny_bert_dir, tiny_llama_dir),
        "assemble.embedder=tuned",  # serve the tuned components whatever the serving default
        "assemble.reranker=tuned",
        "assemble.generator=tuned",
        "assemble.max_new_tokens=6",
    ]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)
    record_tuned_reranker_and_adapter(run, tiny_bert_dir, tiny_llama_dir)
    return run


@pytest.fixture
def server(tiny_run):
    """The app on a loopback port in a background thread; stopped the way SIGINT stops uvicorn."""
    stack = load_stack(tiny_run.root)
    with serving(create_app(stack)) as port:
        yield stack, port
    with pytest.raises(httpx.ConnectError):  # the port is closed after a clean shutdown
        httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=2)


def test_openai_client_chat_embeddings_rerank_streaming_and_errors(server) -> None:
    stack, port = server
    base = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    assert [m.id for m in client.models.list()] == [stack.name]

    # Chat: the engine's answer with its sources and quotes.
    completion = client.chat.completions.create(model=stack.name, messages=[{"role": "user", "content": QUESTIONS[0]}])
    expected = stack.engine.query(QUESTIONS[0])
    assert completion.choices[0].message.content == expected.response
    assert [s["chunk_id"] for s in completion.sources] == [chunk_id_of(n.node) for n in expected.source_nodes]
    assert completion.quotes == (expected.metadata["quotes"] or [])
    assert all(s["text"] and s["doc_id"] for s in completion.sources)

    # Concurrent requests all complete, each with the answer it gets alone.
    alone = {q: stack.answer(q)["answer"] for q in QUESTIONS}

    def ask(q: str) -> str:
        r = client.chat.completions.create(model=stack.name, messages=[{"role": "user", "content": q}])
        return r.choices[0].message.content

    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(ask, QUESTIONS * 2))
    assert answers == [alone[q] for q in QUESTIONS * 2]

    # Streaming: server-sent events the client reassembles into the same answer; sources on the last chunk.
    chunks = list(
        client.chat.completions.create(
            model=stack.name, messages=[{"role": "user", "content": QUESTIONS[0]}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == expected.response
    # The tiny generator never ends on its own within assemble.max_new_tokens=6: both say so.
    assert chunks[-1].choices[0].finish_reason == completion.choices[0].finish_reason == "length"
    assert len(chunks[-1].sources) == len(expected.source_nodes)

    # Embeddings: the run's embedder, document route by default.
    emb = client.embeddings.create(model=stack.name, input=["Heron fails over.", "Tortoise drains."])
    direct = stack.embedder.encode_document(["Heron fails over.", "Tortoise drains."], normalize_embeddings=True)
    assert [d.index for d in emb.data] == [0, 1]
    assert emb.data[0].embedding == pytest.approx(direct[0].tolist(), abs=1e-5)

    # Rerank: cross-encoder scores, best first.
    docs = ["Heron fails over in minutes.", "Marmot keeps snapshots.", "Tortoise drains its queue."]
    reply = httpx.post(f"{base}/rerank", json={"model": stack.name, "query": "heron failover", "documents": docs})
    assert reply.status_code == 200
    results = reply.json()["results"]
    scores = stack.reranker.predict([("heron failover", d) for d in docs]).tolist()
    assert [r["index"] for r in results] == sorted(range(3), key=lambda i: -scores[i])
    assert [r["relevance_score"] for r in results] == pytest.approx(sorted(scores, reverse=True), abs=1e-5)

    # Bad requests: 4xx with a message that says what is wrong.
    with pytest.raises(openai.NotFoundError, match="is not served here"):
        client.chat.completions.create(model="gpt-4o", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError, match="last user message"):
        client.chat.completions.create(model=stack.name, messages=[{"role": "system", "content": "be brief"}])
    bad = httpx.post(f"{base}/chat/completions", json={"model": stack.name, "messages": "hello"})
    assert bad.status_code == 400 and "messages" in bad.json()["error"]["message"]
    bad = httpx.post(f"{base}/rerank", json={"model": stack.name, "query": "q", "documents": []})
    assert bad.status_code == 400 and "documents" in bad.json()["error"]["message"]
    bad = httpx.post(f"{base}/embeddings", content=b"{not json", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and "invalid request" in bad.json()["error"]["message"]


def test_ragtune_serve_command_answers_and_stops_cleanly_on_sigterm(tiny_run) -> None:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ragtune.app.cli", "serve", str(tiny_run.root), "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )
    try:
        deadline = time.time() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.time() < deadline, "ragtune serve did not come up in 120 s"
            time.sleep(0.5)
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused", max_retries=0)
        reply = client.chat.completions.create(
            model=f"ragtune-{tiny_run.root.name}", messages=[{"role": "user", "content": QUESTIONS[1]}]
        )
        assert reply.sources
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
    # uvicorn finishes in-flight work, runs the app's shutdown, then re-raises the signal (the convention).
    assert proc.returncode == -signal.SIGTERM, (proc.returncode, out[-1500:])
    assert "Application shutdown complete" in out and "Finished server process" in out


def test_chat_honours_sampling_settings_and_conversations(server) -> None:
    stack, port = server
    base = f"http://127.0.0.1:{port}/v1"
    client = openai.OpenAI(base_url=base, api_key="unused", max_retries=0)
    ask = [{"role": "user", "content": QUESTIONS[1]}]

    def reply(**kwargs):
        return client.chat.completions.create(model=stack.name, messages=kwargs.pop("messages", ask), **kwargs)

    # max_tokens caps the generation (the tiny model writes no ##Answer:, so the answer is the raw generation).
    full = reply(max_tokens=12).choices[0]
    short = reply(max_tokens=3).choices[0]
    assert full.finish_reason == short.finish_reason == "length"
    assert len(short.message.content) < len(full.message.content)
    assert full.message.content.startswith(short.message.content)
    # stop: the answer ends before the first stop string, which is not shown; the finish reason is "stop".
    text = full.message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    stopped = reply(max_tokens=12, stop=[stop, "never written"]).choices[0]
    assert stopped.message.content == text[: text.find(stop)].strip() and stopped.finish_reason == "stop"
    # temperature and top_p sample (greedy stays deterministic).
    assert (
        reply(max_tokens=6, temperature=0).choices[0].message.content == reply(max_tokens=6).choices[0].message.content
    )
    sampled = {reply(max_tokens=12, temperature=2.0, top_p=1.0).choices[0].message.content for _ in range(4)}
    assert len(sampled) > 1
    # Out of range: a 400 that names the field.
    for bad, field in [({"temperature": 3}, "temperature"), ({"top_p": 0}, "top_p"), ({"n": 2}, "n"),
                       ({"max_tokens": 5000}, "max_tokens"), ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
                       ({"max_completion_tokens": 0}, "max_completion_tokens")]:  # fmt: skip
        answer = httpx.post(f"{base}/chat/completions", json={"model": stack.name, "messages": ask, **bad})
        assert answer.status_code == 400 and answer.json()["error"]["param"] == field, answer.text
    assert (
        "--max-new-tokens"
        in httpx.post(
            f"{base}/chat/completions", json={"model": stack.name, "messages": ask, "max_tokens": 5000}
        ).json()["error"]["message"]
    )

    # A conversation: the earlier turns reach the generator and condense into the retrieval question.
    turns = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": QUESTIONS[0]},
        {"role": "assistant", "content": "Five minutes."},
        {"role": "user", "content": "and for the batch queue?"},
    ]
    stream = stack.engine.stream("and for the batch queue?", [{"role": t["role"], "content": t["content"]}
                                                             for t in turns[1:3]])  # fmt: skip
    for _ in stream:
        pass
    roles = [m["role"] for m in stream.response.metadata["messages"]]
    assert roles == ["system", "user", "assistant", "user"] and stream.messages[2]["content"] == "Five minutes."
    assert stream.response.metadata["retrieval_query"] != "and for the batch queue?"
    served = reply(messages=turns)
    assert served.choices[0].message.content == stream.response.response
    assert [s["chunk_id"] for s in served.sources] == [chunk_id_of(n.node) for n in stream.nodes]
