"""An OpenAI-compatible HTTP server over a run's assembled stack (FastAPI + uvicorn; ``ragtune[serve]``).

    ragtune serve runs/demo [--host 127.0.0.1 --port 8000] [--api-key-env VAR] [key=value ...]

Routes:
- ``GET /v1/models`` — the one model served, named ``ragtune-<run folder>``.
- ``POST /v1/chat/completions`` — the last user message is the question (plain text or OpenAI content parts of
  type ``text``); earlier user and assistant turns condense with it into the retrieval question and reach the
  generator (:meth:`ragtune.app.assemble.RaftQueryEngine.stream`; system messages are not passed on: the
  generator answers under the RAFT system prompt it was trained with). The reply is an OpenAI chat completion
  with two extra fields, ``sources`` (chunk id, doc id, source, score, text per context chunk) and ``quotes``.
  ``max_tokens`` (or ``max_completion_tokens``; at most ``--max-new-tokens``), ``temperature`` (0–2; 0 or
  unset is greedy), ``top_p`` and ``stop`` (up to 4 strings) are honoured, ``n`` must be 1; a value out of
  range is a 400 naming the field, and so is sampling from the extractive answerer. ``max_tokens`` counts the
  whole generation, reasoning included. ``stream: true`` answers as server-sent events with the final answer's
  text as the generator writes it (the reasoning before ``##Answer:`` is not streamed), then a last chunk
  with ``finish_reason`` (``stop`` or ``length``), sources and quotes.
- ``POST /v1/embeddings`` — vectors from the run's embedder (``input_type``: ``document``, the default,
  or ``query`` for the query route of an adapter), normalised, at ``assemble.truncate_dim`` when it is set.
- ``POST /v1/rerank`` — the served reranker's scores of ``documents`` (strings or ``{"text": ...}``) for
  ``query`` (Cohere/Jina shape), best first. With the query-likelihood reranker a score is the mean log-probability
  of the query's tokens given the document (higher is better, at most 0); with a cross-encoder, its logit.

Security and load (:class:`ServeLimits`):
- ``--api-key-env VAR``: every route needs ``Authorization: Bearer <the key in $VAR>`` (401 otherwise). A
  non-loopback ``--host`` without a key refuses to start unless ``--insecure-no-auth`` says so explicitly.
- Request bodies, messages, question length, embedding inputs and rerank documents are capped (413 / 422 naming
  the limit); text that is not valid Unicode (a lone surrogate escape) is a 400; every error, including 404,
  405 and an unexpected 500, has the OpenAI shape ``{"error": {"message", "type", "param", "code"}}``.
- Chat requests wait in a bounded queue, one generation at a time (one set of weights in memory): a full
  queue answers 503 with ``Retry-After``; a request whose client has gone while it waited is dropped, and a
  stream whose client goes stops generating at the next token.
- The port is checked before any model loads.
"""

from __future__ import annotations

import argparse
import asyncio
import hmac
import ipaddress
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import FastAPI, Request
from fastapi.concurrency import iterate_in_threadpool, run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import AfterValidator, BaseModel, Field
from starlette.exceptions import HTTPException

from ragtune.pipeline.generator import Sampling
from ragtune.pipeline.nodes import chunk_id_of

logger = logging.getLogger(__name__)

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000


@dataclass(frozen=True)
class ServeLimits:
    """What one request may ask for; each has a ``ragtune serve`` flag of the same name."""

    max_body_bytes: int = 1_000_000
    max_messages: int = 64
    max_question_chars: int = 4_000
    max_message_chars: int = 32_000
    max_embedding_inputs: int = 256
    max_rerank_documents: int = 1_000
    max_document_chars: int = 32_000
    max_queued_chats: int = 8
    max_new_tokens: int = 1_024


def _valid_unicode(text: str) -> str:
    """A text field's check: JSON's ``\\ud800`` escapes decode to lone surrogates, which no model can read."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"not valid Unicode (a lone surrogate at character {e.start})") from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


class TextPart(BaseModel):
    type: Literal["text"]
    text: Text


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant", "tool", "developer"]
    content: Text | list[TextPart]

    def text(self) -> str:
        """The message's text: the string, or its text parts joined by newlines."""
        return self.content if isinstance(self.content, str) else "\n".join(p.text for p in self.content)


class ChatRequest(BaseModel):
    model: str
    messages: list[ChatMessage] = Field(min_length=1)
    stream: bool = False
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: Text | list[Annotated[Text, Field(min_length=1)]] | None = Field(None, max_length=4)
    n: int = Field(1, ge=1, le=1)

    def sampling(self, default_max_new_tokens: int) -> Sampling:
        """The generation settings this request asks for (the engine's token cap where it names none)."""
        stop = [self.stop] if isinstance(self.stop, str) else self.stop or []
        return Sampling(
            max_new_tokens=self.max_completion_tokens or self.max_tokens or default_max_new_tokens,
            temperature=self.temperature or 0.0,
            top_p=1.0 if self.top_p is None else self.top_p,
            stop=tuple(s for s in stop if s),
        )


class EmbeddingRequest(BaseModel):
    model: str
    input: Text | list[Text]
    input_type: Literal["document", "query"] = "document"


class RerankDocument(BaseModel):
    text: Text


RERANK_SCORES = (
    "The served reranker's raw scores of the documents for the query, best first (not fused with the retriever's). "
    "With the query-likelihood reranker (rerank.kind: query_likelihood) a score is the mean log-probability of the "
    "query's tokens given the document: at most 0, higher is better. With a cross-encoder (rerank.kind: "
    "cross_encoder) it is the model's logit."
)


class RerankRequest(BaseModel):
    model: str
    query: Text
    documents: list[Text | RerankDocument] = Field(min_length=1)
    top_n: int | None = Field(None, ge=1)


class ServedStack:
    """What the server calls: the query engine, the embedder and the reranker of one run; one lock lets one
    embedder or reranker call run at a time.

    Args:
        name: the model id clients send.
        engine: a :class:`ragtune.app.assemble.RaftQueryEngine`.
        embedder: a ``SentenceTransformer`` (the engine's retrieval embedder, with the served ``truncate_dim``).
        reranker: the engine's reranker, either kind (:class:`ragtune.pipeline.retrieval.Reranker`), or None.
    """

    def __init__(self, name: str, engine: Any, embedder: Any, reranker: Any | None) -> None:
        self.name, self.engine, self.embedder, self.reranker = name, engine, embedder, reranker
        self.lock = threading.Lock()

    @property
    def max_new_tokens(self) -> int:
        """The generator's default token cap (``assemble.max_new_tokens``)."""
        llm = getattr(self.engine, "llm", None)
        return int(getattr(llm, "max_new_tokens", 256))

    @property
    def samples(self) -> bool:
        """Whether a temperature above 0 means anything: an LLM generates (not the extractive answerer)."""
        return getattr(self.engine, "answerer", None) is None

    def start(self, question: str, history: list[dict[str, str]], sampling: Sampling | None = None) -> Any:
        """The engine's answer stream, its retrieval and reranking done under ``lock``; iterating it generates
        (the server's chat gate lets one generation run at a time, while embeddings and reranking go on)."""
        with self.lock:
            return self.engine.stream(question, history, sampling)

    def answer(
        self, question: str, history: list[dict[str, str]] | None = None, sampling: Sampling | None = None
    ) -> dict:
        """The engine's answer, quotes, sources and finish reason for one question (and its conversation)."""
        stream = self.start(question, history or [], sampling)
        for _ in stream:
            pass
        return {"answer": str(stream.response.response), "finish_reason": stream.finish_reason, **extras(stream)}

    def embed(self, texts: list[str], input_type: str) -> list[list[float]]:
        encode = self.embedder.encode_query if input_type == "query" else self.embedder.encode_document
        with self.lock:
            return encode(texts, normalize_embeddings=True, show_progress_bar=False).tolist()

    def rerank(self, query: str, documents: list[str]) -> list[float]:
        with self.lock:
            return [float(s) for s in self.reranker.predict([(query, d) for d in documents], show_progress_bar=False)]


def extras(stream: Any) -> dict:
    """The fields a chat reply carries beside the answer: ``sources`` (the context chunks) and ``quotes``."""
    sources = [
        {
            "chunk_id": chunk_id_of(n.node),
            "doc_id": n.node.metadata.get("doc_id"),
            "source": n.node.metadata.get("source"),
            "score": n.score,
            "text": n.node.get_content(),
        }
        for n in stream.nodes
    ]
    meta = stream.response.metadata if stream.response is not None else {}
    return {"sources": sources, "quotes": (meta or {}).get("quotes") or []}


def conversation(messages: list[ChatMessage]) -> tuple[str, list[dict[str, str]]]:
    """The question (the last user message) and the user and assistant turns before it.

    Example:
        >>> turns = [ChatMessage(role="system", content="be brief"), ChatMessage(role="user", content="What is Heron?"),
        ...          ChatMessage(role="assistant", content="A router."), ChatMessage(role="user", content="Its SLA?")]
        >>> conversation(turns)
        ('Its SLA?', [{'role': 'user', 'content': 'What is Heron?'}, {'role': 'assistant', 'content': 'A router.'}])
    """
    last = max((i for i, m in enumerate(messages) if m.role == "user"), default=-1)
    if last < 0:
        return "", []
    history = [{"role": m.role, "content": m.text()} for m in messages[:last] if m.role in ("user", "assistant")]
    return messages[last].text(), history


class Guard:
    """ASGI middleware in front of every route: the API key (401 without it), then the body's size, from its
    Content-Length and again while it streams in (no Content-Length, or a false one): 413 over ``max_body_bytes``.

    Plain ASGI, not FastAPI's ``@app.middleware``, so that a route still sees its client disconnect.
    """

    def __init__(self, app: Any, api_key: str | None, max_body_bytes: int) -> None:
        self.app, self.api_key, self.limit = app, api_key, max_body_bytes

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope.get("headers", [])}
        refusal = None
        if self.api_key is not None:
            given = headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, f"Bearer {self.api_key}".encode()):
                refusal = _error(401, "missing or wrong API key (Authorization: Bearer <key>)", "invalid_api_key")
        length = headers.get("content-length", "")
        if refusal is None and length.isdigit() and int(length) > self.limit:
            refusal = _error(
                413, f"request body of {int(length):,} bytes; the limit is {self.limit:,} (--max-body-bytes)"
            )
        if refusal is not None:
            return await refusal(scope, receive, send)
        received = 0

        async def limited() -> dict:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > self.limit:
                raise HTTPException(413, f"request body over {self.limit:,} bytes (--max-body-bytes)")
            return message

        return await self.app(scope, limited, send)


ERROR_TYPES = {400: "invalid_request_error", 401: "invalid_request_error", 404: "not_found_error"}


def _error(
    status: int, message: str, code: str | None = None, param: str | None = None, headers: dict | None = None
) -> JSONResponse:
    """An error in the OpenAI shape (the ``openai`` client raises the matching exception with ``message``)."""
    kind = ERROR_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _field(loc: tuple) -> str:
    return ".".join(str(p) for p in loc if p != "body") or "body"


def create_app(stack: ServedStack, api_key: str | None = None, limits: ServeLimits | None = None) -> FastAPI:
    """The FastAPI application serving ``stack`` (see the module docstring for the routes, security and limits).

    Args:
        api_key: every route then needs ``Authorization: Bearer <api_key>``; None serves without a key.
        limits: request caps and the chat queue's length (default :class:`ServeLimits`).
    """
    limits = limits or ServeLimits()
    app = FastAPI(title="ragtune", summary=f"OpenAI-compatible server for {stack.name}")
    gate = asyncio.Lock()  # one generation at a time; waiting requests hold a place in the queue
    queued = 0  # chat requests in flight: the one answering and those waiting for the gate
    app.add_middleware(Guard, api_key=api_key, max_body_bytes=limits.max_body_bytes)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        problems = "; ".join(f"{_field(e['loc'])}: {e['msg']}" for e in errors)
        return _error(400, f"invalid request: {problems}", param=_field(errors[0]["loc"]) if errors else None)

    @app.exception_handler(HTTPException)
    async def _http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return _error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))

    @app.exception_handler(Exception)
    async def _server_error(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("serve: %s %s failed", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}); the server log has the details")

    def _unknown_model(model: str) -> JSONResponse | None:
        if model != stack.name:
            return _error(404, f"model {model!r} is not served here; this server serves {stack.name!r}", "not_found")
        return None

    def _over(field: str, texts: list[str], count: int, chars: int, flags: tuple[str, str]) -> JSONResponse | None:
        """A 422 naming the limit when ``texts`` are more than ``count`` or one is longer than ``chars``."""
        if len(texts) > count:
            return _error(422, f"{field}: {len(texts):,} items; the limit is {count:,} (--{flags[0]})", param=field)
        for i, text in enumerate(texts):
            if len(text) > chars:
                where = f"{field}.{i}" if len(texts) > 1 else field
                message = f"{where}: {len(text):,} characters; the limit is {chars:,} (--{flags[1]})"
                return _error(422, message, param=where)
        return None

    @app.get("/v1/models")
    def models() -> dict:
        return {"object": "list", "data": [{"id": stack.name, "object": "model", "created": 0, "owned_by": "ragtune"}]}

    @app.post("/v1/chat/completions", response_model=None)
    async def chat(req: ChatRequest, request: Request) -> Response | dict:
        nonlocal queued
        if (bad := _unknown_model(req.model)) is not None:
            return bad
        texts = [m.text() for m in req.messages]
        caps = (limits.max_messages, limits.max_message_chars, ("max-messages", "max-message-chars"))
        if (bad := _over("messages", texts, *caps)) is not None:
            return bad
        question, history = conversation(req.messages)
        if not question.strip():
            return _error(400, "messages: the last user message (the question) is missing or empty", param="messages")
        if (bad := _over("question", [question], 1, limits.max_question_chars, ("", "max-question-chars"))) is not None:
            return bad
        sampling = req.sampling(stack.max_new_tokens)
        if sampling.max_new_tokens > limits.max_new_tokens:
            field = "max_completion_tokens" if req.max_completion_tokens else "max_tokens"
            message = f"{field}: {sampling.max_new_tokens:,}; the limit is {limits.max_new_tokens:,} (--max-new-tokens)"
            return _error(400, message, param=field)
        if sampling.temperature > 0 and not stack.samples:
            message = "temperature: this run answers extractively (no LLM), so there is nothing to sample; send 0"
            return _error(400, message, param="temperature")
        if queued > limits.max_queued_chats:  # one answering and max_queued_chats waiting
            waiting = f"{queued - 1} chat requests are waiting (--max-queued-chats {limits.max_queued_chats})"
            return _error(503, f"busy: {waiting}; retry later", headers={"Retry-After": "5"})
        completion_id, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        if req.stream:  # it takes its place in the queue when the response starts, and leaves when it ends
            events = _stream_events(stack, gate, request, question, history, sampling, completion_id, created)
            return StreamingResponse(_queued(events, _enter_queue, _leave_queue), media_type="text/event-stream")
        queued += 1
        try:
            async with gate:
                if await request.is_disconnected():  # the client gave up while waiting: nobody reads the answer
                    logger.info("serve: dropped a chat request whose client has gone")
                    return Response(status_code=499)
                result = await run_in_threadpool(stack.answer, question, history, sampling)
        finally:
            queued -= 1
        message = {"role": "assistant", "content": result["answer"]}
        return {
            "id": completion_id,
            "object": "chat.completion",
            "created": created,
            "model": stack.name,
            "choices": [{"index": 0, "message": message, "finish_reason": result["finish_reason"]}],
            "sources": result["sources"],
            "quotes": result["quotes"],
        }

    def _enter_queue() -> None:
        nonlocal queued
        queued += 1

    def _leave_queue() -> None:
        nonlocal queued
        queued -= 1

    @app.post("/v1/embeddings", response_model=None)
    def embeddings(req: EmbeddingRequest) -> JSONResponse | dict:
        if (bad := _unknown_model(req.model)) is not None:
            return bad
        texts = [req.input] if isinstance(req.input, str) else req.input
        if not texts or any(not t for t in texts):
            return _error(400, "input: give one or more non-empty strings", param="input")
        caps = (limits.max_embedding_inputs, limits.max_document_chars, ("max-embedding-inputs", "max-document-chars"))
        if (bad := _over("input", texts, *caps)) is not None:
            return bad
        vectors = stack.embed(texts, req.input_type)
        return {
            "object": "list",
            "model": stack.name,
            "data": [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)],
            "usage": {"prompt_tokens": 0, "total_tokens": 0},
        }

    @app.post("/v1/rerank", response_model=None, description=RERANK_SCORES)
    def rerank(req: RerankRequest) -> JSONResponse | dict:
        if (bad := _unknown_model(req.model)) is not None:
            return bad
        if stack.reranker is None:
            return _error(400, "this run serves no reranker (assemble.reranker: none)")
        documents = [d if isinstance(d, str) else d.text for d in req.documents]
        caps = (limits.max_rerank_documents, limits.max_document_chars, ("max-rerank-documents", "max-document-chars"))
        if (bad := _over("documents", documents, *caps)) is not None:
            return bad
        if (bad := _over("query", [req.query], 1, limits.max_question_chars, ("", "max-question-chars"))) is not None:
            return bad
        scores = stack.rerank(req.query, documents)
        order = sorted(range(len(scores)), key=lambda i: -scores[i])[: req.top_n]
        return {
            "model": stack.name,
            "results": [{"index": i, "relevance_score": scores[i], "document": {"text": documents[i]}} for i in order],
        }

    return app


async def _queued(events: AsyncIterator[str], enter: Any, leave: Any) -> AsyncIterator[str]:
    """``enter()``, ``events``, then ``leave()`` once, however the stream ends (finished, failed, or its client
    gone); a response that never starts never enters."""
    enter()
    try:
        async for event in events:
            yield event
    finally:
        leave()


async def _stream_events(
    stack: ServedStack,
    gate: asyncio.Lock,
    request: Request,
    question: str,
    history: list[dict[str, str]],
    sampling: Sampling,
    completion_id: str,
    created: int,
) -> AsyncIterator[str]:
    """Server-sent events of one chat completion: the role, the answer's text as the generator writes it, the
    finish chunk (with sources and quotes), ``[DONE]``. The generation stops at the next token if the client goes;
    a failure after the first event is an ``error`` event (the status line has gone out)."""
    base = {"id": completion_id, "object": "chat.completion.chunk", "created": created, "model": stack.name}

    def event(delta: dict, finish_reason: str | None = None, **extra: Any) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
        return f"data: {json.dumps(base | {'choices': [choice]} | extra)}\n\n"

    async with gate:
        if await request.is_disconnected():
            logger.info("serve: dropped a chat request whose client has gone")
            return
        stream = None
        try:
            stream = await run_in_threadpool(stack.start, question, history, sampling)
            yield event({"role": "assistant", "content": ""})
            async for piece in iterate_in_threadpool(iter(stream)):
                yield event({"content": piece})
            yield event({}, stream.finish_reason, **extras(stream))
            yield "data: [DONE]\n\n"
        except Exception as e:
            logger.exception("serve: a streamed chat failed")
            body = {"message": f"internal error ({type(e).__name__}); the server log has the details",
                    "type": "server_error", "param": None, "code": None}  # fmt: skip
            yield f"data: {json.dumps({'error': body})}\n\n"
        finally:
            if stream is not None:
                stream.cancel()


def load_stack(run_dir: str | Path, overrides: list[str] | None = None, warm_reranker: bool = False) -> ServedStack:
    """The engine of a finished run, as its config (plus overrides) chooses; the embedder and the reranker the
    server's other routes use are the engine's own (each model is loaded once).

    Args:
        warm_reranker: a query-likelihood reranker reads the corpus's passages before serving and keeps their
            key/value prefixes, as many as ``rerank.query_likelihood.prefix_cache_mb`` holds, so the first
            queries over them are as fast as later ones.
    """
    from ragtune.app.assemble import build_query_engine
    from ragtune.pipeline.config import load_config
    from ragtune.pipeline.rundir import CONFIG_RESOLVED, RunDir, read_jsonl

    run = RunDir(run_dir)
    cfg = load_config(run.path(CONFIG_RESOLVED), overrides, resolved=True)
    engine = build_query_engine(cfg, run)
    reranker = engine.reranker.reranker if engine.reranker is not None else None
    if warm_reranker and hasattr(reranker, "warm"):
        passages = [c["text"] for c in read_jsonl(run.require("data", "corpus")["corpus"])]
        kept = reranker.warm(passages, show_progress_bar=True)
        logger.info("reranker: %d of %d passages' prefixes read ahead", kept, len(passages))
    return ServedStack(f"ragtune-{run.root.name}", engine, engine.embedder, reranker)


def is_loopback(host: str) -> bool:
    """True for an address only this machine can reach (``localhost``, 127.0.0.0/8, ::1).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("localhost"), is_loopback("0.0.0.0"), is_loopback("::1")
        (True, True, False, True)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_port(host: str, port: int) -> None:
    """Bind ``(host, port)`` once and let it go, so a busy or bad port fails before any model loads.

    Raises:
        ValueError: the address cannot be bound, naming it and why.
    """
    try:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((host, port))
    except OSError as e:
        raise ValueError(f"--host {host} --port {port}: cannot listen there ({e.strerror or e})") from None


def api_key_from(env_var: str | None, host: str, insecure: bool) -> str | None:
    """The API key the server requires, from the environment variable ``env_var``.

    Raises:
        ValueError: the variable is unset or empty, or ``host`` is not loopback and there is no key and no
            ``--insecure-no-auth``.
    """
    if env_var:
        key = os.environ.get(env_var, "")
        if not key.strip():
            raise ValueError(f"--api-key-env {env_var}: the environment variable is unset or empty")
        return key.strip()
    if not is_loopback(host) and not insecure:
        raise ValueError(
            f"--host {host} is reachable from other machines and no API key is set: pass --api-key-env VAR, "
            "or --insecure-no-auth to serve anyone who can reach it"
        )
    return None


def _port(value: str) -> int:
    port = int(value)
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (1-65535)")
    return port


def make_parser() -> argparse.ArgumentParser:
    """``ragtune serve RUN [--host H] [--port P] [--api-key-env VAR] [limits] [key=value ...]``."""
    parser = argparse.ArgumentParser(prog="ragtune serve", description="OpenAI-compatible server over a run")
    parser.add_argument("run_dir", help="a run directory (runs/<name>)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to bind (default {DEFAULT_HOST})")
    parser.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--api-key-env", metavar="VAR", help="require Authorization: Bearer <the key in $VAR>")
    parser.add_argument(
        "--insecure-no-auth", action="store_true", help="allow a non-loopback --host without an API key"
    )
    parser.add_argument(
        "--warm-reranker",
        action="store_true",
        help="a query-likelihood reranker reads the passages before serving (up to its prefix_cache_mb)",
    )
    for name, default in vars(ServeLimits()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=int, default=default, help=f"(default {default})")
    parser.add_argument("overrides", nargs="*", help="config overrides, e.g. assemble.retrieval=hybrid")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m ragtune.app.serve``; a bad address, key or run exits 2 with one line, before any
    model loads where it can."""
    import sys

    from ragtune.pipeline.entry import USER_ERRORS

    args = make_parser().parse_intermixed_args(argv)  # overrides may follow the flags
    limits = ServeLimits(**{name: getattr(args, name) for name in vars(ServeLimits())})
    try:
        api_key = api_key_from(args.api_key_env, args.host, args.insecure_no_auth)
        check_port(args.host, args.port)
        stack = load_stack(args.run_dir, args.overrides, args.warm_reranker)
    except (ValueError, *USER_ERRORS) as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    import uvicorn

    uvicorn.run(create_app(stack, api_key, limits), host=args.host, port=args.port, log_level="info")


if __name__ == "__main__":
    main()
