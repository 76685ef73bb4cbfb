"""The document-disjoint dev slice of the train split, assigned once by the data stage.

The data stage gives every training document a seeded rank (:func:`rank_documents`: its place in a seeded
permutation, as a share in [0, 1)) and stores it with each train query as ``dev_rank`` (document id -> rank).
A stage that holds out a dev slice selects it with :func:`split_dev_queries`: the queries of the documents
ranked below its ``fraction``. Slices are therefore nested (a smaller fraction's slice lies inside a larger
one's) and two stages with the same fraction hold out the same queries. The ranks exist before synthesis, so
the data stage can filter the dev documents' synthetic queries with BM25 instead of the base embedder
(``split.dev_fraction``): with no labelled question at all, they are the dev slice every gate reads.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragtune.pipeline.config import RagtuneConfig

DEV_MIN_QUERIES = 5  # fewer dev queries than this make a choice on the dev slice noise, not signal


def dev_stream(seed: int) -> str:
    """The seed of the dev ranks' stream, apart from the split's and the synthesis targets' by name.

    Example:
        >>> dev_stream(42)
        'dev-slice/42'
    """
    return f"dev-slice/{seed}"


def rank_documents(doc_ids: Iterable[str], seed: int) -> dict[str, float]:
    """Each document's place in a seeded permutation of the sorted ids, as a share in [0, 1).

    Example:
        >>> rank_documents(["a", "b", "c", "d"], seed=0)
        {'b': 0.0, 'c': 0.25, 'a': 0.5, 'd': 0.75}
    """
    docs = sorted(set(doc_ids))
    order = random.Random(dev_stream(seed)).sample(docs, len(docs))
    return {d: i / len(docs) for i, d in enumerate(order)}


def assign_dev_ranks(
    queries: Sequence[dict[str, Any]], seed: int, ranks: dict[str, float] | None = None
) -> list[dict[str, Any]]:
    """Set ``dev_rank`` (doc id -> rank, see :func:`rank_documents`) on every train query; others unchanged.

    Args:
        queries: query rows with ``split`` and ``doc_ids``.
        seed: seed of the ranks when ``ranks`` is not given.
        ranks: the training documents' ranks (the data stage ranks every training document before synthesis);
            None: rank the documents the train queries cite.

    Returns:
        New rows, in the same order.

    Example:
        >>> rows = assign_dev_ranks([{"split": "train", "doc_ids": ["a"]}, {"split": "train", "doc_ids": ["b"]},
        ...                          {"split": "eval", "doc_ids": ["c"]}], seed=0)
        >>> [r.get("dev_rank") for r in rows]
        [{'a': 0.0}, {'b': 0.5}, None]
    """
    if ranks is None:
        ranks = rank_documents((d for q in queries if q["split"] == "train" for d in q["doc_ids"]), seed)
    return [{**q, "dev_rank": {d: ranks[d] for d in q["doc_ids"]}} if q["split"] == "train" else q for q in queries]


def dev_documents(ranks: dict[str, float], fraction: float) -> set[str]:
    """The documents ranked below ``fraction``: the dev slice's documents.

    Example:
        >>> sorted(dev_documents({"a": 0.0, "b": 0.5, "c": 0.25}, 0.3))
        ['a', 'c']
    """
    return {d for d, r in ranks.items() if r < fraction}


CHOSEN_BY_BASE = "base_embedder"  # a synthetic query's ``round_trip``: the base embedder's filter kept it


def split_dev_queries(
    queries: Sequence[dict[str, Any]], fraction: float, min_queries: int = DEV_MIN_QUERIES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out the queries of the train documents ranked below ``fraction`` as a dev slice.

    The slice is by source document, like the train/eval split, so dev never shares a document with
    training; queries citing both a dev and a train document are dropped from both, and so are synthetic
    queries on dev documents that the base embedder's round trip kept (``round_trip: base_embedder``): the
    base ranks their chunk in its top k by construction, so they would bias the promotion gate and checkpoint
    selection towards the base.

    Args:
        queries: train-split query rows carrying ``dev_rank`` (see :func:`assign_dev_ranks`).
        fraction: share of the documents these queries cite whose queries go to dev (0 disables).
        min_queries: fewer dev queries than this (or no train query left) gives no dev slice.

    Returns:
        (train queries, dev queries); dev is empty when disabled or too small, and train is then unchanged.

    Example:
        >>> qs = assign_dev_ranks([{"qid": str(i), "split": "train", "doc_ids": [f"d{i}"]} for i in range(10)], 0)
        >>> train, dev = split_dev_queries(qs, 0.2, min_queries=2)
        >>> len(train), len(dev)
        (8, 2)
        >>> chosen = [{**q, "round_trip": CHOSEN_BY_BASE} for q in qs]
        >>> split_dev_queries(chosen, 0.2, min_queries=2)[1]   # none can judge: no dev slice
        []
    """
    if fraction <= 0:
        return list(queries), []
    dev_docs = dev_documents({d: r for q in queries for d, r in q["dev_rank"].items()}, fraction)
    if not dev_docs:
        return list(queries), []
    # A query the base embedder's round trip chose is easy for the base by construction: it cannot judge it.
    dev = [q for q in queries if set(q["doc_ids"]) <= dev_docs and q.get("round_trip") != CHOSEN_BY_BASE]
    train = [q for q in queries if not set(q["doc_ids"]) & dev_docs]
    if len(dev) < min_queries or not train:
        return list(queries), []
    return train, dev


def written_by_the_scorer(query: Mapping[str, Any], cfg: RagtuneConfig) -> bool:
    """Whether the query-likelihood reranker's own LM wrote this synthetic query (``written_by``).

    Such a query is likely under that LM by construction, so the reranker looks far better on it than on a
    user's question (measured on a held-out corpus: the fused order gained +0.06 nDCG@10 on the LM's own
    queries and lost 0.02 on human ones); it cannot judge the reranker.

    Example:
        >>> from ragtune.pipeline.config import RagtuneConfig
        >>> cfg = RagtuneConfig(run={"name": "x"}, data={"docs": "d"})
        >>> written_by_the_scorer({"origin": "synthetic", "written_by": "local:bundled:smollm2-135m-instruct"}, cfg)
        True
        >>> written_by_the_scorer({"origin": "human"}, cfg)
        False
    """
    if cfg.rerank.kind != "query_likelihood" or query.get("origin") != "synthetic":
        return False
    return str(query.get("written_by") or "") == f"local:{cfg.rerank.query_likelihood.generator}"
