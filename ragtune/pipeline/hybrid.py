"""Hybrid retrieval (``assemble.retrieval: hybrid``): BM25 fused with dense retrieval by reciprocal rank.

BM25 is LlamaIndex's ``BM25Retriever`` (bm25s with an English Snowball stemmer and stopwords). Each
retriever contributes its top ``assemble.hybrid_depth`` chunks; a chunk's fused score is
``sum(1 / (RRF_K + rank))`` over the lists it appears in (rank from 1; Cormack, Clarke and Büttcher,
SIGIR 2009). BM25 hits with score 0 (no query term in the chunk) are not candidates. Serving
(:class:`HybridRetriever`) and the eval harness (:func:`fuse_rankings`) use the same function, so the
configuration evaluated is the one served.

Example:
    >>> [c for c, _ in reciprocal_rank_fusion([["a", "b"], ["b", "c"]])]
    ['b', 'a', 'c']
"""

from __future__ import annotations

from collections.abc import Sequence

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import NodeWithScore, QueryBundle
from llama_index.retrievers.bm25 import BM25Retriever

from ragtune.pipeline.nodes import chunk_id_of, corpus_nodes

RRF_K = 60  # the constant of the original paper; larger values flatten the rank discount


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]], k: int = RRF_K, limit: int | None = None
) -> list[tuple[str, float]]:
    """Fuse ranked id lists: score(id) = sum over lists of 1 / (k + rank), rank counted from 1.

    Args:
        rankings: id lists, best first (e.g. dense first, then BM25).
        k: the rank offset.
        limit: keep this many (None: all).

    Returns:
        ``(id, fused score)`` best first; ties keep the order in which ids first appear across the lists.

    Example:
        >>> reciprocal_rank_fusion([["a", "b"], ["b"]], k=1)
        [('b', 0.8333333333333333), ('a', 0.5)]
    """
    scores: dict[str, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    fused = sorted(scores.items(), key=lambda kv: -kv[1])  # stable: first appearance breaks ties
    return fused[:limit] if limit is not None else fused


def bm25_retriever(corpus: list[dict], top_k: int) -> BM25Retriever:
    """LlamaIndex's BM25 retriever over the corpus chunks (node id = chunk id), returning ``top_k`` per query."""
    return BM25Retriever.from_defaults(nodes=corpus_nodes(corpus), similarity_top_k=min(top_k, len(corpus)))


def bm25_rankings(retriever: BM25Retriever, texts: Sequence[str]) -> list[list[str]]:
    """Per query, the chunk ids BM25 ranks, best first, without the zero-score hits."""
    return [[n.node.node_id for n in retriever.retrieve(text) if (n.score or 0.0) > 0.0] for text in texts]


def fuse_rankings(
    dense: Sequence[Sequence[str]], sparse: Sequence[Sequence[str]], depth: int, limit: int
) -> tuple[list[list[str]], list[list[float]]]:
    """Per query, the dense top ``depth`` and the BM25 top ``depth`` fused by reciprocal rank, cut to ``limit``.

    Returns:
        (chunk ids best first, their fused scores), one list per query.
    """
    ranked, scores = [], []
    for d, s in zip(dense, sparse, strict=True):
        fused = reciprocal_rank_fusion([d[:depth], s[:depth]], limit=limit)
        ranked.append([c for c, _ in fused])
        scores.append([score for _, score in fused])
    return ranked, scores


def hybrid_retrieval_metrics(
    retriever, queries: Sequence[dict], k_values: Sequence[int], bm25: Sequence[Sequence[str]], depth: int
) -> dict[str, float]:
    """:func:`ragtune.pipeline.retrieval.retrieval_metrics` of hybrid retrieval: the retriever's and BM25's top
    ``depth``
    fused by reciprocal rank, as served (``assemble.retrieval: hybrid``).

    Args:
        retriever: a :class:`ragtune.pipeline.retrieval.DenseRetriever` over the corpus.
        queries: query rows (``text``, ``positives``).
        k_values: cut-offs of hit@k and recall@k.
        bm25: :func:`bm25_rankings` of the same queries, in order.
        depth: ``assemble.hybrid_depth``.

    Returns:
        Metric name -> mean over the queries; ``{}`` for no query.
    """
    from ragtune.pipeline.ranking import mean_metrics, per_query_metrics

    if not queries:
        return {}
    ks = sorted(set(k_values))
    _, dense = retriever.search([q["text"] for q in queries], k=depth)
    fused, _ = fuse_rankings(dense, bm25, depth, max(depth, *ks, 10))
    rows = [per_query_metrics(r, dict.fromkeys(q["positives"], 1), ks) for r, q in zip(fused, queries, strict=True)]
    return mean_metrics(rows)


class HybridRetriever(BaseRetriever):
    """A LlamaIndex retriever: a dense retriever and BM25, fused by reciprocal rank over chunk ids.

    Args:
        dense: e.g. ``index.as_retriever(similarity_top_k=depth)``.
        sparse: :func:`bm25_retriever` with the same depth.
        top_k: chunks returned.
    """

    def __init__(self, dense: BaseRetriever, sparse: BM25Retriever, top_k: int) -> None:
        super().__init__()
        self._dense, self._sparse, self._top_k = dense, sparse, top_k

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        dense = self._dense.retrieve(query_bundle)
        sparse = [n for n in self._sparse.retrieve(query_bundle) if (n.score or 0.0) > 0.0]
        nodes = {chunk_id_of(n.node): n.node for n in sparse}
        nodes |= {chunk_id_of(n.node): n.node for n in dense}  # the store's node, when both found it
        fused = reciprocal_rank_fusion(
            [[chunk_id_of(n.node) for n in dense], [chunk_id_of(n.node) for n in sparse]], limit=self._top_k
        )
        return [NodeWithScore(node=nodes[c], score=score) for c, score in fused]
