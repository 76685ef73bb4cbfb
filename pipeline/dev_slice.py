"""The document-disjoint dev slice of the train split, assigned once by the data stage.

The data stage gives every train document a seeded rank (:func:`assign_dev_ranks`) and stores it with
each train query as ``dev_rank`` (document id -> rank). A stage that holds out a dev slice selects it
with :func:`split_dev_queries`: the queries of the ``fraction`` lowest-ranked documents. Slices are
therefore nested (a smaller fraction's slice lies inside a larger one's) and two stages with the same
fraction hold out the same queries.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

DEV_MIN_QUERIES = 5  # fewer dev queries than this make a choice on the dev slice noise, not signal


def assign_dev_ranks(queries: Sequence[dict[str, Any]], seed: int) -> list[dict[str, Any]]:
    """Set ``dev_rank`` (doc id -> seeded rank) on every train query; other queries are returned unchanged.

    The ranks are a seeded permutation of the sorted train documents (those a train query cites).

    Args:
        queries: query rows with ``split`` and ``doc_ids``.
        seed: seed of the permutation (the run seed).

    Returns:
        New rows, in the same order.

    Example:
        >>> rows = assign_dev_ranks([{"split": "train", "doc_ids": ["a"]}, {"split": "train", "doc_ids": ["b"]},
        ...                          {"split": "eval", "doc_ids": ["c"]}], seed=0)
        >>> [r.get("dev_rank") for r in rows]
        [{'a': 1}, {'b': 0}, None]
    """
    docs = sorted({d for q in queries if q["split"] == "train" for d in q["doc_ids"]})
    rank = {d: i for i, d in enumerate(random.Random(seed).sample(docs, len(docs)))}
    return [{**q, "dev_rank": {d: rank[d] for d in q["doc_ids"]}} if q["split"] == "train" else q for q in queries]


CHOSEN_BY_BASE = "base_embedder"  # a synthetic query's ``round_trip``: the base embedder's filter kept it


def split_dev_queries(
    queries: Sequence[dict[str, Any]], fraction: float, min_queries: int = DEV_MIN_QUERIES
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Hold out the queries of the lowest-ranked ``fraction`` of the train documents as a dev slice.

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
    rank = {d: r for q in queries for d, r in q["dev_rank"].items()}
    n_dev = round(len(rank) * fraction)
    if n_dev == 0:
        return list(queries), []
    dev_docs = set(sorted(rank, key=rank.__getitem__)[:n_dev])
    # A query the base embedder's round trip chose is easy for the base by construction: it cannot judge it.
    dev = [q for q in queries if set(q["doc_ids"]) <= dev_docs and q.get("round_trip") != CHOSEN_BY_BASE]
    train = [q for q in queries if not set(q["doc_ids"]) & dev_docs]
    if len(dev) < min_queries or not train:
        return list(queries), []
    return train, dev
