"""Assembly: the run's embedder, reranker and generator wired into one LlamaIndex query engine.

    ragtune query runs/demo "how long do I have for a primary takeover?"

- Retrieval: :class:`SentenceTransformerEmbedding` (LlamaIndex's ``HuggingFaceEmbedding``, routed
  through ``encode_query`` / ``encode_document`` so a query-side adapter and saved prompts apply
  exactly as in training and in the eval harness) over a ``VectorStoreIndex`` in the store
  ``assemble.vector_store`` names (:mod:`ragtune.app.vector_store`: simple JSON in ``index/``, Qdrant
  embedded, or a Qdrant server). The index is built once from ``data/corpus.jsonl`` (one ``TextNode``
  per chunk, metadata doc_id/source) and rebuilt only when the embedder, its dimension, the corpus or the store
  changes; ``index/meta.json`` records what it was built from. ``assemble.retrieval: hybrid`` fuses it with
  BM25 by reciprocal rank (:mod:`ragtune.pipeline.hybrid`). ``assemble.truncate_dim`` serves the embedder's
  vectors cut to that dimension (sentence-transformers' ``truncate_dim``, for a Matryoshka embedder): the
  index, the queries, the extractive answerer and the server's ``/v1/embeddings`` all use the cut vectors.
- Reranking: :class:`FusedSentenceTransformerRerank` (LlamaIndex's ``SentenceTransformerRerank``) keeps
  ``assemble.top_n`` of ``assemble.top_k``, ordered by the reranker's scores (a query-likelihood reranker's, or a
  cross-encoder's) fused with the retriever's at the weight the rerank stage chose
  (``rerank/model/ragtune_fusion.json``; 1.0 = plain).
- Generation: :class:`GeneratorLLM` (LlamaIndex's ``HuggingFaceLLM``, streaming through
  :class:`ragtune.pipeline.generator.GenerationStream` so a call's ``sampling`` — token cap, temperature,
  top_p, stop strings — is honoured) over the RAFT generator (merged, or base + adapter), prompted with
  :func:`ragtune.pipeline.raft_format.build_messages` and the tokenizer's chat template — the training format.
  With ``assemble.quote: extractive`` the extractive answerer's quote (the context sentence closest to the
  question under the served embedder) is written in as the answer's start and the generator writes the final
  answer from it.
- Conversations (:meth:`RaftQueryEngine.stream`): earlier turns condense into the retrieval question with
  LlamaIndex's condense prompt (``CondensePlusContextChatEngine``'s) run on the generator, or, with the
  extractive answerer, by putting the previous question before the new one; the earlier turns also reach the
  generator, between the system prompt and the question over its context.

Each component is base or tuned by ``assemble.embedder/reranker/generator`` (reranker also ``none``); the
default ``auto`` serves a tuned component only if it beat its baseline on the dev slice
(:mod:`ragtune.pipeline.promotion`).

Example (a sketch over a finished run, not run as a doctest):
    engine = build_query_engine(cfg, RunDir("runs/demo"))
    print(format_response(engine.query("What is a PTO?")))
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.base.llms.types import CompletionResponse, CompletionResponseGen
from llama_index.core.base.response.schema import Response
from llama_index.core.bridge.pydantic import Field
from llama_index.core.chat_engine.condense_plus_context import DEFAULT_CONDENSE_PROMPT_TEMPLATE
from llama_index.core.llms import LLM
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.query_engine import CustomQueryEngine
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from llama_index.embeddings.huggingface import HuggingFaceEmbedding
from llama_index.llms.huggingface import HuggingFaceLLM
from llama_index.postprocessor.sbert_rerank import SentenceTransformerRerank

from ragtune.app.vector_store import load_vector_index
from ragtune.pipeline.components import resolve_components
from ragtune.pipeline.config import AssembleConfig, RagtuneConfig
from ragtune.pipeline.extractive import ExtractiveAnswerer
from ragtune.pipeline.generator import GenerationStream, Sampling, chat_prompt, stop_point
from ragtune.pipeline.hybrid import HybridRetriever, bm25_retriever
from ragtune.pipeline.nodes import chunk_id_of
from ragtune.pipeline.promotion import resolve_auto
from ragtune.pipeline.quoting import neutralise
from ragtune.pipeline.raft_format import (
    ANSWER_TAG,
    answer_end,
    answer_so_far,
    build_messages,
    guided_messages,
    parse_answer,
)
from ragtune.pipeline.ranking import fuse_scores
from ragtune.pipeline.retrieval import Reranker, load_embedder
from ragtune.pipeline.rundir import RunDir, read_jsonl
from ragtune.pipeline.stack import StackLoader

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


class FusedSentenceTransformerRerank(SentenceTransformerRerank):
    """``SentenceTransformerRerank`` that orders by reranker and retriever scores fused at ``fusion_weight``.

    ``reranker`` takes an already loaded reranker of either kind (:class:`ragtune.pipeline.retrieval.Reranker`: a
    ``CrossEncoder``, or a query-likelihood reranker, :mod:`ragtune.pipeline.query_likelihood`) instead of loading
    ``model`` as a CrossEncoder; :attr:`reranker` gives it back.

    At weight 1.0 it is the stock postprocessor. Below 1 each node's score becomes
    :func:`ragtune.pipeline.ranking.fuse_scores` of its retrieval score and its reranker score — the order
    the rerank stage chose the weight for and the eval harness measures.
    """

    fusion_weight: float = Field(default=1.0, ge=0.0, le=1.0, description="Share of the reranker's score.")

    def __init__(self, *, fusion_weight: float = 1.0, reranker: Reranker | None = None, **kwargs: Any) -> None:
        if reranker is None:
            super().__init__(**kwargs)  # the stock __init__ takes only its own arguments
        else:  # an already loaded reranker: the stock __init__ would load ``model`` as a CrossEncoder
            kwargs.pop("cross_encoder_kwargs", None)
            BaseNodePostprocessor.__init__(self, **kwargs)
            parameters = getattr(reranker, "parameters", None)
            self._model = reranker
            self._device = str(next(parameters()).device) if parameters is not None else "cpu"
        if not 0.0 <= fusion_weight <= 1.0:
            raise ValueError(f"fusion_weight {fusion_weight} is outside [0, 1]")
        self.fusion_weight = fusion_weight

    @classmethod
    def class_name(cls) -> str:
        return "FusedSentenceTransformerRerank"

    @property
    def reranker(self) -> Reranker:
        """The loaded reranker that scores the nodes (either kind)."""
        return self._model

    def _postprocess_nodes(
        self, nodes: list[NodeWithScore], query_bundle: QueryBundle | None = None
    ) -> list[NodeWithScore]:
        if self.fusion_weight >= 1.0:
            return super()._postprocess_nodes(nodes, query_bundle)
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if not nodes:
            return []
        pairs = [(query_bundle.query_str, n.node.get_content(metadata_mode=MetadataMode.EMBED)) for n in nodes]
        second = [float(s) for s in self._model.predict(pairs, show_progress_bar=False)]
        fused = fuse_scores([n.score or 0.0 for n in nodes], second, self.fusion_weight)
        order = sorted(range(len(nodes)), key=lambda i: -fused[i])[: self.top_n]
        return [NodeWithScore(node=nodes[i].node, score=fused[i]) for i in order]


class SentenceTransformerEmbedding(HuggingFaceEmbedding):
    """``HuggingFaceEmbedding`` that embeds queries with ``encode_query`` and chunks with ``encode_document``.

    The stock class calls ``encode(prompt_name=...)`` with its own (empty) prompts, which skips a
    Router's query route and overrides prompts saved with the model; the harness and the training
    stages use ``encode_query`` / ``encode_document``, so this keeps LlamaIndex's vectors identical.

    Args:
        model: a loaded ``SentenceTransformer`` (assembly passes :class:`ragtune.pipeline.stack.StackLoader`'s, so
            the index, the engine and the server's routes share one), or a sentence-transformers folder to load.
        truncate_dim: embed at this dimension (``assemble.truncate_dim``: the model's own ``truncate_dim``, which
            cuts every vector before it is normalised); None: the full dimension. Only with a folder: a loaded
            model brings its own.
        model_name: the model's path, recorded as LlamaIndex's ``model_name`` (default: the folder).
        **kwargs: passed to ``BaseEmbedding`` (``embed_batch_size``, ``callback_manager``, ...).

    Raises:
        ConfigError: ``truncate_dim`` exceeds the model's dimension.
    """

    def __init__(
        self,
        model: str | SentenceTransformer,
        truncate_dim: int | None = None,
        model_name: str | None = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, (str, Path)):
            model_name, model = model_name or str(model), load_embedder(str(model), truncate_dim)
        # The stock __init__ would load the model again (and replace its saved prompts): set its fields directly.
        BaseEmbedding.__init__(
            self,
            model_name=model_name or "a SentenceTransformer in memory",
            max_length=model.max_seq_length,
            normalize=True,
            **kwargs,
        )
        self._model, self._device = model, str(model.device)
        self._parallel_process, self._target_devices = False, None

    @classmethod
    def class_name(cls) -> str:
        return "SentenceTransformerEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._model.encode_query([query], normalize_embeddings=self.normalize)[0].tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embeddings([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._model.encode_document(
            texts, batch_size=self.embed_batch_size, normalize_embeddings=self.normalize
        ).tolist()


class GeneratorLLM(HuggingFaceLLM):
    """``HuggingFaceLLM`` whose calls honour a request's settings and stream the model's tokens as they come.

    ``complete`` and ``stream_complete`` take ``sampling`` (:class:`ragtune.pipeline.generator.Sampling`; default:
    greedy, ``max_new_tokens``) and ``cancel`` (a ``threading.Event`` that ends the generation when set); the
    last streamed response's ``additional_kwargs["finish_reason"]`` is ``"stop"`` or ``"length"``. Prompts are
    expected formatted (the chat template applied), as the engine and the LangChain wrapper send them.
    """

    @classmethod
    def class_name(cls) -> str:
        return "RagtuneGeneratorLLM"

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        *_, last = self.stream_complete(prompt, formatted, **kwargs)
        return last

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        sampling = kwargs.get("sampling") or Sampling(self.max_new_tokens)
        stream = GenerationStream(self._model, self._tokenizer, prompt, sampling, kwargs.get("cancel"))
        text = ""
        for piece in stream:
            text += piece
            yield CompletionResponse(text=text, delta=piece)
        yield CompletionResponse(text=text, delta="", additional_kwargs={"finish_reason": stream.finish_reason})


CONDENSE_MAX_NEW_TOKENS = 64


class AnswerStream:
    """One answer as the engine writes it: iterate for the final answer's text as it grows; then ``response``.

    The pieces are the answer after ``##Answer:`` (:func:`ragtune.pipeline.raft_format.answer_so_far`); when the
    generation never writes the tag, the whole generation comes as the last piece (what ``query`` answers
    then too). ``stops`` apply to that answer, the text a client sees (not to the reasoning before it): it ends
    before the first one, and the generation with it. ``finish_reason`` is ``"stop"`` or ``"length"``;
    :meth:`cancel` ends the generation.
    """

    def __init__(
        self,
        pieces: Iterator[str],
        nodes: list,
        messages: list,
        prompt: str,
        seconds: dict,
        retrieval_query: str,
        stops: Sequence[str] = (),
    ) -> None:
        self.pieces, self.nodes, self.messages, self.prompt = pieces, nodes, messages, prompt
        self.seconds, self.retrieval_query, self.stops = seconds, retrieval_query, tuple(stops)
        self.finish_reason, self.response = "stop", None
        self.cancelled = threading.Event()

    def cancel(self) -> None:
        """End the generation at its next token."""
        self.cancelled.set()

    def _shown(self, answer: str) -> tuple[str, bool]:
        end, stopped = stop_point(answer, self.stops)
        return answer[:end].rstrip(), stopped

    def __iter__(self) -> Iterator[str]:
        started, raw, sent, stopped = time.perf_counter(), "", "", False
        try:
            for piece in self.pieces:
                raw += piece
                shown, stopped = self._shown(answer_so_far(raw))
                if len(shown) > len(sent):
                    yield shown[len(sent) :]
                    sent = shown
                if stopped or answer_end(raw) < len(raw):  # a stop, or the answer ended: the rest is not needed
                    self.cancel()
                    break
        except GeneratorExit:
            self.cancel()
            raise
        raw = raw[: answer_end(raw)].strip()  # the format has one answer: a second round is not part of it
        parsed = parse_answer(raw)
        final, stopped = self._shown(parsed.answer or raw)
        if stopped:
            self.finish_reason = "stop"
        if final.startswith(sent) and len(final) > len(sent):
            yield final[len(sent) :]
        self.seconds["generate"] = time.perf_counter() - started
        self.response = Response(
            response=final,
            source_nodes=self.nodes,
            metadata={
                "raw": raw,
                "quotes": parsed.quotes,
                "reason": parsed.reason,
                "well_formed": parsed.well_formed,
                "prompt": self.prompt,
                "messages": self.messages,
                "retrieval_query": self.retrieval_query,
                "finish_reason": self.finish_reason,
                "seconds": self.seconds,
            },
        )


class RaftQueryEngine(CustomQueryEngine):
    """Retrieve, rerank, then answer with the RAFT prompt (``build_messages`` + the chat template), or with
    the extractive answerer (``answerer``, no LLM: the best-matching context sentence, in the RAFT format).
    With a ``quoter`` (``assemble.quote: extractive``) the generator's answer starts with the quote of the
    quoter's answer, written in, and the generator writes the final answer from it.

    The response text is the final answer; ``metadata`` holds the raw generation, its quotes and
    reasoning, whether it is well formed, and the exact prompt sent to the generator (empty without one).
    :meth:`stream` answers a conversation's latest question, piece by piece, under a request's sampling.
    """

    retriever: BaseRetriever
    reranker: BaseNodePostprocessor | None = None
    llm: LLM | None = None
    tokenizer: Any = None
    answerer: Any = None  # a ragtune.pipeline.extractive.ExtractiveAnswerer, instead of llm and tokenizer
    quoter: Any = None  # an ExtractiveAnswerer whose quote starts the llm's answer (assemble.quote: extractive)
    embedder: Any = None  # the served SentenceTransformer (the index's), for callers that embed or answer with it

    def custom_query(self, query_str: str) -> Response:
        stream = self.stream(query_str)
        for _ in stream:
            pass
        return stream.response

    def condense(self, question: str, history: Sequence[dict[str, str]]) -> str:
        """The retrieval question of a conversation's latest ``question``: itself without an earlier user turn;
        otherwise LlamaIndex's condense prompt on the generator (greedy, one line), or, without an LLM or when
        the generator writes nothing, the previous user turn followed by the question."""
        earlier = [t["content"] for t in history if t["role"] == "user"]
        if not earlier:
            return question
        fallback = f"{earlier[-1]}\n{question}"
        if self.llm is None:
            return fallback
        lines = "\n".join(f"{t['role']}: {neutralise(t['content'])}" for t in history)
        prompt = DEFAULT_CONDENSE_PROMPT_TEMPLATE.format(chat_history=lines, question=neutralise(question))
        sampling = Sampling(CONDENSE_MAX_NEW_TOKENS, stop=("\n",))
        text = self.llm.complete(
            chat_prompt(self.tokenizer, [{"role": "user", "content": prompt.strip()}]),
            formatted=True,
            sampling=sampling,
        ).text.strip()
        return text or fallback

    def stream(
        self, question: str, history: Sequence[dict[str, str]] = (), sampling: Sampling | None = None
    ) -> AnswerStream:
        """Retrieve and rerank for ``question`` (condensed with ``history``), then start its answer.

        Args:
            question: the latest user message.
            history: the conversation's earlier ``{"role": "user"|"assistant", "content"}`` turns, oldest first.
            sampling: the request's generation settings; None: greedy, ``assemble.max_new_tokens``.

        Returns:
            An :class:`AnswerStream`: its sources are ready; iterating it generates the answer.

        Raises:
            ValueError: ``sampling`` asks the extractive answerer to sample (``temperature`` above 0).
        """
        if self.answerer is not None and sampling is not None and sampling.temperature > 0:
            raise ValueError("temperature: this run answers extractively (no LLM), so there is nothing to sample")
        started = time.perf_counter()
        retrieval_query = self.condense(question, history)
        seconds = {"condense": time.perf_counter() - started} if retrieval_query != question else {}
        bundle = QueryBundle(retrieval_query)
        started = time.perf_counter()
        nodes = self.retriever.retrieve(bundle)
        seconds["retrieve"] = time.perf_counter() - started
        if self.reranker is not None:
            started = time.perf_counter()
            nodes = self.reranker.postprocess_nodes(nodes, query_bundle=bundle)
            seconds["rerank"] = time.perf_counter() - started
        context = [n.node.get_content() for n in nodes]
        messages = build_messages(question, context, history)
        stops = sampling.stop if sampling is not None else ()
        if self.answerer is not None:
            stream = AnswerStream(iter(()), nodes, messages, "", seconds, retrieval_query, stops)
            stream.pieces = _extractive_pieces(stream, self.answerer.answer([question], [context])[0], sampling)
            return stream
        prefill = ""
        if self.quoter is not None:  # guided: the extractive answerer's quote, then the generator's final answer
            started = time.perf_counter()
            messages = guided_messages(messages, self.quoter.answer([question], [context])[0])
            prefill, seconds["quote"] = messages[-1]["content"], time.perf_counter() - started
        prompt = chat_prompt(self.tokenizer, messages)
        stream = AnswerStream(iter(()), nodes, messages, prompt, seconds, retrieval_query, stops)
        stream.pieces = self._generated_pieces(stream, prompt, sampling, prefill)
        return stream

    def _generated_pieces(
        self, stream: AnswerStream, prompt: str, sampling: Sampling | None, prefill: str = ""
    ) -> Iterator[str]:
        """The answer's text as it comes: ``prefill`` (a written-in quote), then the generator's pieces."""
        if prefill:
            yield prefill
        kwargs: dict[str, Any] = {"cancel": stream.cancelled}
        if sampling is not None:  # the stops apply to the answer (AnswerStream), not to the reasoning before it
            kwargs["sampling"] = dataclasses.replace(sampling, stop=())
        for response in self.llm.stream_complete(prompt, formatted=True, **kwargs):
            stream.finish_reason = response.additional_kwargs.get("finish_reason", stream.finish_reason)
            yield response.delta or ""


def _extractive_pieces(stream: AnswerStream, raw: str, sampling: Sampling | None) -> Iterator[str]:
    """The extractive answerer's one piece, its answer cut to a request's token cap (counted in words: the
    answerer has no tokenizer of its own)."""
    head, tag, answer = raw.rpartition(ANSWER_TAG)
    if sampling is not None and tag and len(answer.split()) > sampling.max_new_tokens:
        raw, stream.finish_reason = f"{head}{tag} {' '.join(answer.split()[: sampling.max_new_tokens])}", "length"
    yield raw


def build_query_engine(
    cfg: RagtuneConfig, run: RunDir, choice: AssembleConfig | None = None, loader: StackLoader | None = None
) -> RaftQueryEngine:
    """The query engine for a run, with each component base or tuned as ``choice`` says.

    Args:
        cfg: the run's config (``config.resolved.yaml``).
        run: the run directory.
        choice: component choice and sizes; default ``cfg.assemble``.
        loader: loads the models (:class:`ragtune.pipeline.stack.StackLoader`), each once; default a new one. The
            engine's embedder serves the index, the queries and the extractive answerer alike.

    Returns:
        A :class:`RaftQueryEngine` (``engine.query("...")``).

    Raises:
        StageInputError: a tuned component's stage has not finished.
    """
    choice = resolve_auto(choice or cfg.assemble, run, cfg.gpl.enabled)  # the served retrieval mode too
    comp = resolve_components(cfg, run, choice)
    stack = (loader or StackLoader(cfg)).stack(comp, choice)
    embed_model = SentenceTransformerEmbedding(stack.embedder, model_name=comp.embedder, embed_batch_size=64)
    index = load_vector_index(run, embed_model, comp.embedder, store=choice.vector_store)
    reranker = None
    if stack.reranker is not None:
        # Loaded as the harness loads it (a base encoder gets the same seeded fresh head).
        reranker = FusedSentenceTransformerRerank(
            model=comp.reranker, top_n=choice.top_n, fusion_weight=stack.fusion_weight, reranker=stack.reranker
        )
    # Without a reranker the generator reads the retriever's top_n, as in the eval harness.
    top_k = choice.top_k if reranker is not None else choice.top_n
    retriever = index.as_retriever(similarity_top_k=top_k)
    if choice.retrieval == "hybrid":
        corpus = read_jsonl(run.require("data", "corpus")["corpus"])
        dense = index.as_retriever(similarity_top_k=choice.hybrid_depth)
        retriever = HybridRetriever(dense, bm25_retriever(corpus, choice.hybrid_depth), top_k)
    if stack.extractive:  # no LLM: the served embedder picks the sentence
        answerer = ExtractiveAnswerer(stack.embedder)
        return RaftQueryEngine(retriever=retriever, reranker=reranker, answerer=answerer, embedder=stack.embedder)
    model, tokenizer = stack.generator, stack.tokenizer
    positions = getattr(model.config, "max_position_embeddings", choice.context_window)
    # With an adapter the tokenizer is the copy RAFT saved beside it (the base's, with the chat template it
    # trained with), so HuggingFaceLLM's warning that model and tokenizer folders differ does not apply.
    if comp.adapter:
        tokenizer.name_or_path = model.name_or_path
    llm = GeneratorLLM(
        model=model,
        tokenizer=tokenizer,
        model_name=comp.generator,
        tokenizer_name=comp.generator,
        context_window=min(choice.context_window, positions),
        max_new_tokens=choice.max_new_tokens,
        generate_kwargs={"do_sample": False, "temperature": None, "top_p": None, "top_k": None},
        stopping_ids=[tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else None,
        messages_to_prompt=lambda msgs: chat_prompt(
            tokenizer, [{"role": m.role.value, "content": m.content} for m in msgs]
        ),
    )
    quoter = ExtractiveAnswerer(stack.embedder) if choice.quote == "extractive" else None
    return RaftQueryEngine(
        retriever=retriever, reranker=reranker, llm=llm, tokenizer=tokenizer, embedder=stack.embedder, quoter=quoter
    )


def format_response(response: Response) -> str:
    """Answer, quotes and source documents as plain text (what ``ragtune query`` prints)."""
    meta = response.metadata or {}
    lines = [f"Answer: {response.response}"]
    quotes = meta.get("quotes") or []
    lines.append("Quotes:" if quotes else "Quotes: (none)")
    lines += [f"  - {q}" for q in quotes]
    if not meta.get("well_formed", True):
        lines.append("(the generation did not follow the ##Reason/##Answer format)")
    lines.append("Sources:")
    for rank, node in enumerate(response.source_nodes, 1):
        md = node.node.metadata
        score = f"{node.score:.3f}" if node.score is not None else "-"
        lines.append(f"  {rank}. {md.get('doc_id')} ({md.get('source')}) chunk {chunk_id_of(node.node)} score {score}")
    if meta.get("seconds"):
        lines.append("Time: " + ", ".join(f"{step} {_duration(s)}" for step, s in meta["seconds"].items()))
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
