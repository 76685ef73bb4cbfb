"""An OpenAI-compatible HTTP server over a run's assembled stack (FastAPI + uvicorn; ``ragtune[serve]``).

    ragtune serve runs/demo [--host 127.0.0.1 --port 8000] [key=value ...]

Routes:
- ``GET /v1/models`` — the one model served, named ``ragtune-<run folder>``.
- ``POST /v1/chat/completions`` — the last user message is the question; the assembled engine answers
  it (retrieve, rerank, RAFT-prompted generation). The reply is an OpenAI chat completion with two extra
  fields, ``sources`` (chunk id, doc id, source, score, text per context chunk) and ``quotes``.
  ``stream: true`` answers as server-sent events: the engine extracts the final answer from the whole
  generation, so the answer arrives as one delta, then a last chunk with ``finish_reason`` and sources.
- ``POST /v1/embeddings`` — vectors from the run's embedder (``input_type``: ``document``, the default,
  or ``query`` for the query route of an adapter).
- ``POST /v1/rerank`` — cross-encoder scores of ``documents`` for ``query`` (Cohere/Jina shape), best first.

Requests are served concurrently; calls into the models are serialised by one lock (one set of
weights in memory). Bad requests get a 4xx with an OpenAI-style ``{"error": {"message", "type"}}``.
Bind to 127.0.0.1 unless the network in front of it is trusted: there is no authentication.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field

from pipeline.vector_store import chunk_id_of

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: str


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False


class EmbeddingRequest(BaseModel):
    model: str
    input: str | list[str]
    input_type: Literal["document", "query"] = "document"


class RerankRequest(BaseModel):
    model: str
    query: str
    documents: list[str] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)


class ServedStack:
    """What the server calls: the query engine, the embedder and the cross-encoder of one run, behind one lock.

    Args:
        name: the model id clients send.
        engine: a :class:`pipeline.assemble.RaftQueryEngine`.
        embedder: a ``SentenceTransformer`` (the engine's retrieval embedder).
        cross_encoder: a ``CrossEncoder`` or None when the run serves no reranker.
    """

    def __init__(self, name: str, engine: Any, embedder: Any, cross_encoder: Any | None) -> None:
        self.name, self.engine, self.embedder, self.cross_encoder = name, engine, embedder, cross_encoder
        self.lock = threading.Lock()

    def answer(self, question: str) -> dict:
        """The engine's answer, quotes and sources for one question."""
        with self.lock:
            response = self.engine.query(question)
        meta = response.metadata or {}
        sources = [
            {
                "chunk_id": chunk_id_of(n.node),
                "doc_id": n.node.metadata.get("doc_id"),
                "source": n.node.metadata.get("source"),
                "score": n.score,
                "text": n.node.get_content(),
            }
            for n in response.source_nodes
        ]
        return {"answer": str(response.response), "quotes": meta.get("quotes") or [], "sources": sources}

    def embed(self, texts: list[str], input_type: str) -> list[list[float]]:
        encode = self.embedder.encode_query if input_type == "query" else self.embedder.encode_document
        with self.lock:
            return encode(texts, normalize_embeddings=True, show_progress_bar=False).tolist()

    def rerank(self, query: str, documents: list[str]) -> list[float]:
        with self.lock:
            return [
                float(s) for s in self.cross_encoder.predict([(query, d) for d in documents], show_progress_bar=False)
            ]


def _error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {"message": message, "type": kind}})


def create_app(stack: ServedStack) -> FastAPI:
    """The FastAPI application serving ``stack`` (see the module docstring for the routes)."""
    app = FastAPI(title="ragtune", summary=f"OpenAI-compatible server for {stack.name}")

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in exc.errors()
        )
        return _error(400, f"invalid request: {problems}")

    def _unknown_model(model: str) -> JSONResponse | None:
        if model != stack.name:
            return _error(404, f"model {model!r} is not served here; this server serves {stack.name!r}", "not_found")
        return None

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": stack.name, "object": "model", "created": 0, "owned_by": "ragtune"}]}

    @app.post("/v1/chat/completions", response_model=None)
    def chat(req: ChatRequest) -> JSONResponse | StreamingResponse | dict:
        if (bad := _unknown_model(req.model)) is not None:
            return bad
        questions = [m.content for m in req.messages if m.role == "user"]
        if not questions or not questions[-1].strip():
            return _error(400, "messages: the last user message (the question) is missing or empty")
        result = stack.answer(questions[-1])
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        extra = {"sources": result["sources"], "quotes": result["quotes"]}
        if req.stream:
            return StreamingResponse(
                _stream(completion_id, created, stack.name, result["answer"], extra), media_type="text/event-stream"
            )
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": stack.name,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": result["answer"]}, "finish_reason": "stop"}
            ],
            **extra,
        }

    @app.post("/v1/embeddings", response_model=None)
    def embeddings(req: EmbeddingRequest) -> JSONResponse | dict:
        if (bad := _unknown_model(req.model)) is not None:
            return bad
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or any(not t for t in texts):
            return _error(400, "input: give one or more non-empty strings")
        vectors = stack.embed(texts, req.input_type)
        return {
            "object": "list",
            "model": stack.name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    @app.post("/v1/rerank", response_model=None)
    def rerank(req: RerankRequest) -> JSONResponse | dict:
        if (bad := _unknown_model(req.model)) is not None:
            return bad
        if stack.cross_encoder is None:
            return _error(400, "this run serves no reranker (assemble.reranker: none)")
        scores = stack.rerank(req.query, req.documents)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: req.top_n]
        return {
            "model": stack.name,
            "results": [
                {"index": i, "relevance_score": scores[i], "document": {"text": req.documents[i]}} for i in order
            ],
        }

    return app


def _stream(completion_id: str, created: int, model: str, answer: str, extra: dict) -> Iterator[str]:
    """Server-sent events of one chat completion: role, the answer, the finish chunk (with sources), [DONE]."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": model}
    deltas = [{"role": "assistant", "content": ""}, {"content": answer}]
    for delta in deltas:
        yield f"data: {json.dumps(base | {'choices': [{'index': 0, 'delta': delta, 'finish_reason': None}]})}\n\n"
    final = base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]} | extra
    yield f"data: {json.dumps(final)}\n\n"
    yield "data: [DONE]\n\n"


def load_stack(run_dir: str | Path, overrides: list[str] | None = None) -> ServedStack:
    """The engine, embedder and cross-encoder of a finished run, as its config (plus overrides) chooses."""
    from pipeline.assemble import build_query_engine
    from pipeline.components import load_reranker, resolve_components
    from pipeline.config import load_config
    from pipeline.rundir import CONFIG_RESOLVED, RunDir

    run = RunDir(run_dir)
    cfg = load_config(run.path(CONFIG_RESOLVED), overrides)
    engine = build_query_engine(cfg, run)
    comp = resolve_components(cfg, run, cfg.assemble, need_generator=False)
    from sentence_transformers import SentenceTransformer

    embedder = SentenceTransformer(comp.embedder)
    cross_encoder = (
        load_reranker(comp.reranker, cfg.rerank.max_length, cfg.run.seed) if comp.reranker is not None else None
    )
    return ServedStack(f"ragtune-{run.root.name}", engine, embedder, cross_encoder)


def make_parser() -> argparse.ArgumentParser:
    """``ragtune serve RUN [--host H] [--port P] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="ragtune serve", description="OpenAI-compatible server over a run")
    parser.add_argument("run_dir", help="a run directory (runs/<name>)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. assemble.retrieval=hybrid")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m pipeline.serve``; errors in the run or config exit 2 with one line."""
    import sys

    from pipeline.entry import USER_ERRORS

    args = make_parser().parse_args(argv)
    try:
        stack = load_stack(args.run_dir, args.overrides)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    uvicorn.run(create_app(stack), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
