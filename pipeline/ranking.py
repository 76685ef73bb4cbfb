"""Ranking metrics as small pure functions (graded relevance), shared by stage 2 and the eval harness.

Conventions: ``ranked`` is a list of chunk ids, best first; ``relevance`` maps relevant chunk ids to
a positive grade (0 or absent means not relevant). nDCG uses the exponential gain ``2^grade - 1``
and ``log2(rank + 1)`` discounts, with the ideal ranking built from *all* relevant ids (not only the
retrieved ones — the bug reported in llama_index #17070).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def hit_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """1.0 when any relevant id is in the top ``k``.

    Example:
        >>> hit_at_k(["a", "b", "c"], {"c": 1}, 2), hit_at_k(["a", "b", "c"], {"c": 1}, 3)
        (0.0, 1.0)
    """
    return float(any(relevance.get(d, 0) > 0 for d in ranked[:k]))


def mrr_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """Reciprocal rank of the first relevant id within the top ``k`` (0 if none).

    Example:
        >>> mrr_at_k(["a", "b", "c"], {"b": 2, "c": 1})
        0.5
    """
    for rank, d in enumerate(ranked[:k], 1):
        if relevance.get(d, 0) > 0:
            return 1.0 / rank
    return 0.0


def recall_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int) -> float:
    """Share of the relevant ids found in the top ``k``.

    Example:
        >>> recall_at_k(["a", "b"], {"a": 1, "z": 1}, 2)
        0.5
    """
    relevant = {d for d, g in relevance.items() if g > 0}
    if not relevant:
        return 0.0
    return len(relevant.intersection(ranked[:k])) / len(relevant)


def ndcg_at_k(ranked: Sequence[str], relevance: Mapping[str, int], k: int = 10) -> float:
    """Normalised discounted cumulative gain at ``k`` with graded relevance.

    Example:
        >>> round(ndcg_at_k(["x", "a"], {"a": 1}), 4)  # one relevant at rank 2: (1/log2 3) / 1
        0.6309
    """
    dcg = sum((2 ** relevance.get(d, 0) - 1) / math.log2(rank + 1) for rank, d in enumerate(ranked[:k], 1))
    ideal = sorted((g for g in relevance.values() if g > 0), reverse=True)[:k]
    idcg = sum((2**g - 1) / math.log2(rank + 1) for rank, g in enumerate(ideal, 1))
    return dcg / idcg if idcg > 0 else 0.0


def per_query_metrics(
    ranked: Sequence[str], relevance: Mapping[str, int], k_values: Sequence[int] = (1, 3, 5, 10)
) -> dict[str, float]:
    """Every metric for one query: ``hit@k`` and ``recall@k`` per k, ``mrr@10``, ``ndcg@10``."""
    row = {f"hit@{k}": hit_at_k(ranked, relevance, k) for k in k_values}
    row |= {f"recall@{k}": recall_at_k(ranked, relevance, k) for k in k_values}
    row["mrr@10"] = mrr_at_k(ranked, relevance, 10)
    row["ndcg@10"] = ndcg_at_k(ranked, relevance, 10)
    return row


def mean_metrics(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Average per-query metric rows key by key (an empty list gives an empty dict)."""
    if not rows:
        return {}
    return {key: sum(r[key] for r in rows) / len(rows) for key in rows[0]}
