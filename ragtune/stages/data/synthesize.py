"""Synthetic queries: N search questions per chunk from an LLM, parsed robustly and filtered, with a report.

Called by the data stage (``ragtune data CONFIG``) through :func:`synthesize_queries`, which runs the steps
of three concept modules: generation (:mod:`ragtune.stages.data.query_generation`: prompts, recipes, extractive
keyword queries), parsing (:mod:`ragtune.stages.data.query_parsing`) and filters
(:mod:`ragtune.stages.data.query_filters`).
The LLM is ``synth.llm`` (see ``docs/llm-backends.md``). Filters, each counted in the report: length bounds,
n-gram copies of the chunk, words borrowed from the few-shot examples, exact and near duplicates
(word-set Jaccard), and an optional round trip: for training chunks the base embedder must rank the query's
chunk in its top k among the whole corpus; for chunks of held-out documents (``held_out``) BM25 must
(``synth.eval_round_trip``), so that no embedder under evaluation picks the queries it is judged on.
Human queries are never touched: only new ``origin: synthetic`` rows are returned.

For the local provider with one query per chunk, the recipe measured for small models on the demo
domain is used: greedy first, cut at the first "?", accept a 3-25 word question
that copies nothing, borrows no example words and passes the round trip; otherwise sample
``synth.resample_candidates`` (4) at temperature 0.5 and keep the best that passes; drop the chunk if none does.

Example (a sketch over a finished run, not run as a doctest):
    cache, embeddings = run.path(DATA_LLM_CACHE), run.path(EMBEDDING_CACHE)
    queries, report = synthesize_queries(train_chunks, corpus, cfg.synth, cache, embeddings)
    report["kept"], report["round_trip_hit_at_k"]
    # -> (56, 0.93)
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from ragtune.pipeline.config import LLMConfig, SynthConfig
from ragtune.pipeline.dev_slice import CHOSEN_BY_BASE
from ragtune.pipeline.llm import make_backend
from ragtune.stages.data.query_filters import (
    CandidateFilters,
    LexicalRoundTrip,
    RoundTrip,
    SplitRoundTrip,
    bm25_round_trip_on,
    drop_duplicates,
)
from ragtune.stages.data.query_generation import (
    BUILTIN_EXAMPLES,
    corpus_idf,
    keyword_query,
    list_candidates,
    prompt_builder,
    recipe_candidates,
    synthesis_recipe,
)

logger = logging.getLogger(__name__)


def query_writer(llm: LLMConfig) -> str:
    """Who wrote a synthetic query (its ``written_by``): ``provider:model``, or ``extractive`` (no LLM).

    A judge that is the writer's own model cannot grade its queries fairly (the query-likelihood reranker's dev
    slice leaves them out: :func:`ragtune.stages.rerank.mine.rerank_dev_split`).

    Example:
        >>> query_writer(LLMConfig(provider="local", model="bundled:smollm2-135m-instruct"))
        'local:bundled:smollm2-135m-instruct'
    """
    return "extractive" if llm.provider == "extractive" else f"{llm.provider}:{llm.model}"


def qid_for(chunk_id: str, text: str) -> str:
    """Stable query id: ``syn-`` + hash of chunk id and query text."""
    return "syn-" + hashlib.sha256(f"{chunk_id}\n{text}".encode()).hexdigest()[:16]


def round_trip_name(cfg: SynthConfig, held_out: bool) -> str | None:
    """Which round trip kept a query: ``bm25`` (held-out chunks), ``base_embedder`` (training chunks) or None.

    Stages read it: a dev slice never judges with queries the base embedder chose (:mod:`ragtune.pipeline.dev_slice`).

    Example:
        >>> round_trip_name(SynthConfig(), held_out=False), round_trip_name(SynthConfig(round_trip_top_k=None), True)
        ('base_embedder', None)
    """
    if held_out:
        return "bm25" if bm25_round_trip_on(cfg) else None
    return CHOSEN_BY_BASE if cfg.round_trip_top_k is not None else None


def synthesize_queries(
    chunks: list[dict],
    corpus: list[dict],
    cfg: SynthConfig,
    cache_dir: Path,
    embedding_cache: Path | None = None,
    held_out: AbstractSet[str] = frozenset(),
    score_block_mb: float | None = None,
) -> tuple[list[dict], dict]:
    """Generate, filter and report synthetic queries for ``chunks``.

    Args:
        chunks: corpus rows to ask about (``id``, ``doc_id``, ``text``, ...).
        corpus: every corpus row (the round trip ranks each chunk among all of them).
        cfg: the ``synth`` config section (its ``llm`` picks the backend).
        cache_dir: per-item LLM cache folder (``data/cache`` in the run directory).
        embedding_cache: where the round trip's retriever caches corpus embeddings (``cache/embeddings`` in
            the run directory; ``None``: no cache).
        held_out: ids of the documents held out for evaluation; their chunks' queries pass the lexical round
            trip (``synth.eval_round_trip``) instead of the base embedder's.
        score_block_mb: memory bound of the round trip's score blocks (``run.score_block_mb``).

    Returns:
        (query rows ``{"qid", "text", "positives", "relevance", "relevance_level": "chunk",
        "origin": "synthetic", "doc_ids", "answer": None}``, report with a count per filter, question_rate, copy_rate,
        round_trip_hit_at_k (training chunks, base embedder), eval_round_trip and eval_round_trip_hit_at_k
        (held-out chunks, BM25), kept per side and the LLM usage).

    Example (with chunks and a corpus, not run as a doctest):
        rows, report = synthesize_queries(chunks, corpus, SynthConfig(round_trip_top_k=None), tmp)
        rows[0]["origin"], report["dropped_copy"]
        # -> ('synthetic', 0)
    """
    started = time.time()
    n = cfg.queries_per_chunk
    # 1. Prompts, and the deterministic extractor for the extractive provider
    build = prompt_builder(cfg)
    requests = [build(chunk["text"]) for chunk in chunks]
    idf = corpus_idf(corpus)
    passage_of = {req[-1]["content"]: chunk["text"] for req, chunk in zip(requests, chunks, strict=True)}

    def extractor(messages: list[dict[str, str]]) -> str:
        passage = passage_of[messages[-1]["content"]]
        return "\n".join(f"{i + 1}. {keyword_query(passage, idf, rank=i)}" for i in range(n))

    backend = make_backend(cfg.llm, cache_dir, extractor=extractor)
    writer = query_writer(cfg.llm)
    recipe_name = synthesis_recipe(cfg)
    recipe = recipe_name.startswith("greedy")
    filters = CandidateFilters(cfg, cfg.examples or BUILTIN_EXAMPLES, require_question=recipe)
    held_out_chunks = {chunk["id"] for chunk in chunks if chunk["doc_id"] in held_out}
    dense_trip = RoundTrip(corpus, cfg, filters.counts, embedding_cache, score_block_mb)
    lexical_trip = LexicalRoundTrip(corpus, cfg, filters.counts)
    round_trip = SplitRoundTrip(dense_trip.ranks, lexical_trip.ranks, held_out_chunks)

    # 2. Generate and filter candidates: per chunk, accepted queries in preference order
    if recipe:
        accepted = recipe_candidates(backend, requests, chunks, cfg, filters, round_trip.ranks)
    else:
        accepted = list_candidates(backend, requests, chunks, filters)
    # 3. Exact and near duplicates, across all chunks (one query shared by two chunks is a false negative)
    flat = [(i, q) for i, qs in enumerate(accepted) for q in qs]
    keep, exact, near = drop_duplicates([q for _, q in flat], cfg.near_duplicate_threshold)
    filters.counts["dropped_duplicate"] += exact
    filters.counts["dropped_near_duplicate"] += near
    flat = [flat[j] for j in keep]
    # 4. Round trip (the recipe path checked it per candidate already), then at most n per chunk
    if not recipe and cfg.round_trip_top_k is not None:
        ranks = round_trip.ranks([q for _, q in flat], [chunks[i]["id"] for i, _ in flat])
        filters.counts["dropped_round_trip"] += sum(r > cfg.round_trip_top_k for r in ranks)
        flat = [item for item, r in zip(flat, ranks, strict=True) if r <= cfg.round_trip_top_k]
    per_chunk: Counter[int] = Counter()
    rows = []
    for i, query in flat:
        per_chunk[i] += 1
        if per_chunk[i] > n:
            filters.counts["dropped_surplus"] += 1
            continue
        chunk = chunks[i]
        rows.append(
            {
                "qid": qid_for(chunk["id"], query),
                "text": query,
                "positives": [chunk["id"]],
                "relevance": {chunk["id"]: 1},
                "relevance_level": "chunk",
                "origin": "synthetic",
                "doc_ids": [chunk["doc_id"]],
                "answer": None,
                "round_trip": round_trip_name(cfg, chunk["id"] in held_out_chunks),
                "written_by": writer,
            }
        )
    # 5. Report
    c = filters.counts
    c["llm_failed"] += backend.usage.failed
    c["skipped_budget"] += backend.usage.skipped_budget
    c["dropped_unparseable"] += backend.usage.rejected
    report: dict[str, Any] = {
        "provider": cfg.llm.provider,
        "model": cfg.llm.model if cfg.llm.provider != "extractive" else None,
        "recipe": recipe_name,
        "chunks": len(chunks),
        "documents": len({chunk["doc_id"] for chunk in chunks}),
        **{
            key: c[key]
            for key in (
                "generated",
                "llm_failed",
                "skipped_budget",
                "parsed",
                "dropped_unparseable",
                "dropped_length",
                "dropped_copy",
                "dropped_not_question",
                "dropped_example_words",
                "dropped_duplicate",
                "dropped_near_duplicate",
                "dropped_round_trip",
                "dropped_surplus",
            )
        },
        "kept": len(rows),
        "lexical_chunks": len(held_out_chunks),  # of held-out and dev documents: BM25 round trip
        "kept_lexical": sum(r["positives"][0] in held_out_chunks for r in rows),
        "chunks_without_query": len(chunks) - len({r["positives"][0] for r in rows}),
        "question_rate": round(c["questions"] / c["parsed"], 4) if c["parsed"] else None,
        "copy_rate": round(c["copies"] / c["parsed"], 4) if c["parsed"] else None,
        "round_trip_k": cfg.round_trip_top_k,
        "round_trip_checked": c["round_trip_checked"],
        "eval_round_trip_checked": c["eval_round_trip_checked"],
        "round_trip_hit_at_k": round(c["round_trip_hits"] / c["round_trip_checked"], 4)
        if c["round_trip_checked"]
        else None,
        # held-out chunks: never the base embedder (it would choose the eval set it is judged on)
        "eval_round_trip": (f"bm25 top {cfg.round_trip_top_k}" if lexical_trip.enabled else "none")
        if held_out_chunks
        else None,
        "eval_round_trip_hit_at_k": round(c["eval_round_trip_hits"] / c["eval_round_trip_checked"], 4)
        if c["eval_round_trip_checked"]
        else None,
        "seconds": round(time.time() - started, 2),
        "llm": backend.usage.as_dict(),
    }
    logger.info(
        "synthetic queries (%s): %d kept for %d chunks (%d without); question rate %s, copy rate %s, "
        "round trip hit@%s %s",
        recipe_name,
        len(rows),
        len(chunks),
        report["chunks_without_query"],
        report["question_rate"],
        report["copy_rate"],
        cfg.round_trip_top_k,
        report["round_trip_hit_at_k"],
    )
    if held_out_chunks:
        logger.info(
            "synthetic queries for held-out and dev documents: %d kept for %d chunks, filter %s (hit@%s %s): never the "
            "base embedder, which eval and the promotion gates judge on them",
            report["kept_lexical"],
            len(held_out_chunks),
            report["eval_round_trip"],
            cfg.round_trip_top_k,
            report["eval_round_trip_hit_at_k"],
        )
    return rows, report
