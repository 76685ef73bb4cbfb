"""Each configuration's ranking of the corpus for every held-out query, batched: dense, hybrid, reranked.

One :class:`~ragtune.pipeline.retrieval.DenseRetriever` per embedder and dimension (corpus embeddings cached
under ``cache/embeddings`` at full dimension, cut to a configuration's ``truncate_dim``), exact top-k for all
queries in one matrix product, one batched rerank per configuration with a reranker — never one LlamaIndex
retrieve per query, yet the same order the served engine returns. The models come from the eval's
:class:`~ragtune.pipeline.stack.StackLoader`, so a model several configurations share is loaded once.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from ragtune.pipeline.components import Components
from ragtune.pipeline.config import AssembleConfig
from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever, fuse_rankings
from ragtune.pipeline.retrieval import SCORE_BLOCK_MB, DenseRetriever, Reranker, rerank
from ragtune.pipeline.rundir import EMBEDDING_CACHE, RunDir
from ragtune.pipeline.stack import StackLoader


@dataclass
class Ranking:
    """Per query, chunk ids best first, and the wall time it took for all queries.

    ``scores`` are the retriever's scores of ``ranked`` (first stage only; None once reranked).
    """

    ranked: list[list[str]]
    seconds: float
    scores: list[list[float]] | None = None


def retrieve(retriever: DenseRetriever, texts: Sequence[str], depth: int) -> Ranking:
    """Top-``depth`` chunk ids for every query: one batched encode and one exact top-k."""
    started = time.perf_counter()
    scores, ids = retriever.search(list(texts), k=depth)
    return Ranking(ids, time.perf_counter() - started, scores)


def rerank_ranking(
    reranker: Reranker,
    texts: Sequence[str],
    first: Ranking,
    chunks: dict[str, dict],
    top_k: int,
    fusion_weight: float = 1.0,
) -> Ranking:
    """Rerank each query's first ``top_k`` candidates in one batched call; deeper ranks keep their order.

    The order is the one serving uses: the reranker's scores fused with the retriever's at
    ``fusion_weight`` (1.0: the reranker alone; 0.0: the retriever's order, without scoring). Keeping the
    retriever's tail below ``top_k`` lets recall@k for k > top_k stay comparable with the configurations
    without a reranker.
    """
    if fusion_weight == 0.0:  # the retriever's order, as fusing at weight 0 gives it: nothing to score
        return Ranking(first.ranked, first.seconds)
    started = time.perf_counter()
    candidates = [[chunks[c] for c in ranked[:top_k]] for ranked in first.ranked]
    first_scores = [row[:top_k] for row in first.scores] if first.scores is not None else None
    scored = rerank(reranker, texts, candidates, first_scores, fusion_weight)
    ranked = [[c["id"] for c, _ in s] + r[top_k:] for s, r in zip(scored, first.ranked, strict=True)]
    return Ranking(ranked, first.seconds + time.perf_counter() - started)


def any_hybrid(choices: Iterable[AssembleConfig]) -> bool:
    """True when some configuration retrieves with BM25 + dense (``assemble.retrieval: hybrid``)."""
    return any(c.retrieval == "hybrid" for c in choices)


def hybrid_ranking(dense: Ranking, bm25: list[list[str]], hybrid_depth: int, depth: int) -> Ranking:
    """The dense and BM25 top ``hybrid_depth`` of every query fused by reciprocal rank (as served), cut to ``depth``.

    BM25's time is not in ``seconds``: it is measured once for all configurations, not per query here.
    """
    started = time.perf_counter()
    ranked, scores = fuse_rankings(dense.ranked, bm25, hybrid_depth, depth)
    return Ranking(ranked, dense.seconds + time.perf_counter() - started, scores)


def rank_configurations(
    run: RunDir,
    corpus: list[dict],
    texts: Sequence[str],
    components: dict[str, Components],
    choices: dict[str, AssembleConfig],
    depth: int,
    loader: StackLoader,
    score_block_mb: float = SCORE_BLOCK_MB,
) -> tuple[dict[str, Ranking], dict[tuple[str, int | None], DenseRetriever]]:
    """Every configuration's top-``depth`` ranking: one retrieval per embedder and dimension, BM25 once, one
    rerank each.

    Args:
        run: the run directory (its ``cache/embeddings`` holds the corpus embeddings).
        corpus: the chunks.
        texts: the held-out query texts.
        components: model paths per configuration name.
        choices: the configuration per name (retrieval mode, top_k, hybrid_depth, truncate_dim).
        depth: how many chunk ids each ranking keeps.
        loader: loads the embedders and rerankers (each once; a base cross-encoder's fresh head seeded as serving
            seeds it).
        score_block_mb: memory bound of the exact search's score blocks (``run.score_block_mb``).

    Returns:
        (ranking per configuration, the dense retriever per (embedder path, truncate_dim), for the probes and the
        per-dimension table to reuse).
    """
    chunks = {c["id"]: c for c in corpus}
    bm25 = bm25_rankings(bm25_retriever(corpus, depth), texts) if any_hybrid(choices.values()) else None
    retrievers: dict[tuple[str, int | None], DenseRetriever] = {}
    first_stage: dict[tuple[str, int | None], Ranking] = {}
    rankings: dict[str, Ranking] = {}
    for name, comp in components.items():
        choice = choices[name]
        stack = loader.stack(comp, choice, generator=False)
        key = (comp.embedder, choice.truncate_dim)
        if key not in retrievers:
            retrievers[key] = DenseRetriever.from_model(
                stack.embedder, comp.embedder, corpus, run.path(EMBEDDING_CACHE), score_block_mb=score_block_mb
            )
            first_stage[key] = retrieve(retrievers[key], texts, depth)
        ranking = first_stage[key]
        if choice.retrieval == "hybrid":
            ranking = hybrid_ranking(ranking, bm25, choice.hybrid_depth, depth)
        if stack.reranker is not None:
            ranking = rerank_ranking(stack.reranker, texts, ranking, chunks, choice.top_k, stack.fusion_weight)
        rankings[name] = ranking
    return rankings, retrievers
