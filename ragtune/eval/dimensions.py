"""Retrieval at each Matryoshka dimension: what serving the embedder truncated (``assemble.truncate_dim``) costs.

When stage 1 trained with ``embed.matryoshka_dims``, eval ranks the held-out queries with the tuned embedder, and
the base one for reference, at every one of those dimensions (and the full one, and the served one): dense
retrieval alone, no reranker, nDCG@10 and recall@10 as the configurations' table reports them.

It is cheap: each embedder encodes once at its full dimension (the corpus read from the run's embedding cache, the
queries in one batch), and each dimension is those vectors cut and renormalised
(:func:`ragtune.pipeline.retrieval.truncate_normalized`, what sentence-transformers' ``truncate_dim`` serves) and
one exact top-10.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ragtune.pipeline.components import tuned_embedder_path
from ragtune.pipeline.config import RagtuneConfig
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.ranking import mean_metrics, per_query_metrics
from ragtune.pipeline.retrieval import DenseRetriever, exact_top_k, truncate_normalized
from ragtune.pipeline.rundir import EMBEDDING_CACHE, RunDir, StageInputError
from ragtune.pipeline.stack import StackLoader

logger = logging.getLogger(__name__)

DIMENSION_METRICS = ("ndcg@10", "recall@10")


def metrics_by_dimension(
    retriever: DenseRetriever, queries: Sequence[dict], dims: Sequence[int]
) -> dict[int, dict[str, float]]:
    """nDCG@10 and recall@10 (graded ``relevance``) of ``queries`` at each of ``dims``, from one query encode.

    Args:
        retriever: a full-dimension retriever (loaded without ``truncate_dim``).
        queries: held-out queries (``text``, ``relevance``).
        dims: dimensions at most the retriever's.

    Returns:
        Dimension -> mean of each of :data:`DIMENSION_METRICS`.
    """
    vectors = retriever.encode_queries([q["text"] for q in queries])
    out = {}
    for dim in dims:
        corpus = truncate_normalized(retriever.embeddings, dim)
        _, top = exact_top_k(truncate_normalized(vectors, dim), corpus, 10, retriever.score_block_mb)
        means = mean_metrics(
            [
                per_query_metrics([retriever.ids[i] for i in row], q["relevance"], [10])
                for row, q in zip(top.tolist(), queries, strict=True)
            ]
        )
        out[dim] = {m: means[m] for m in DIMENSION_METRICS}
    return out


def dimension_table(
    cfg: RagtuneConfig,
    run: RunDir,
    corpus: list[dict],
    queries: Sequence[dict],
    retrievers: dict[tuple[str, int | None], DenseRetriever],
    loader: StackLoader,
) -> dict | None:
    """The per-dimension table of the eval report, or None without ``embed.matryoshka_dims`` or a tuned embedder.

    Args:
        cfg: the run's config (``embed.matryoshka_dims``, ``assemble.truncate_dim``).
        run: the run directory (the tuned embedder, the embedding cache).
        corpus: the chunks.
        queries: the held-out queries.
        retrievers: full-dimension retrievers already loaded, by (path, None), to reuse.
        loader: loads an embedder no configuration used at its full dimension (each once).

    Returns:
        ``{"full_dimension", "served_dimension", "rows": [{"dimension", "tuned": {metric: mean}, "base": ...}]}``,
        widest dimension first; ``base`` is None at a dimension above its own.
    """
    if not cfg.embed.matryoshka_dims:
        return None
    try:
        tuned_path = tuned_embedder_path(cfg, run)[0]
    except StageInputError as e:
        logger.info("eval: no tuned embedder for the per-dimension table (%s)", e)
        return None
    paths = {"tuned": tuned_path, "base": resolve_model(cfg.embed.base_model)}
    cache, block = run.path(EMBEDDING_CACHE), cfg.run.score_block_mb
    loaded = {
        label: retrievers.get((path, None))
        or DenseRetriever.from_model(loader.embedder(path), path, corpus, cache, score_block_mb=block)
        for label, path in paths.items()
    }
    full = loaded["tuned"].embeddings.shape[1]
    served = cfg.assemble.truncate_dim or full
    dims = sorted({full, served, *(d for d in cfg.embed.matryoshka_dims if d <= full)}, reverse=True)
    by_label = {
        label: metrics_by_dimension(r, queries, [d for d in dims if d <= r.embeddings.shape[1]])
        for label, r in loaded.items()
    }
    rows = [{"dimension": d, **{label: by_label[label].get(d) for label in loaded}} for d in dims]
    return {"full_dimension": full, "served_dimension": served, "rows": rows}
