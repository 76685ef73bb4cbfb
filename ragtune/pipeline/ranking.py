"""Ranking metrics as small pure functions (graded relevance), shared by stage 2 and the eval harness.

Conventions: ``ranked`` is a list of chunk ids, best first; ``relevance`` maps relevant chunk ids to
a positive grade (0 or absent means not relevant). nDCG uses the exponential gain ``2^grade - 1``
and ``log2(rank + 1)`` discounts, with the ideal ranking built from *all* relevant ids (not only the
retrieved ones — the bug reported in llama_index #17070).
"""

from __future__ import annotations

import math
import statistics
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


def fuse_scores(first: Sequence[float], second: Sequence[float], weight: float) -> list[float]:
    """Interpolate two score lists over the same candidates: ``weight·mm(second) + (1 − weight)·mm(first)``.

    ``mm`` is min-max scaling within the list, which puts a cosine similarity and a cross-encoder logit
    on one scale. ``weight = 1`` orders exactly as ``second`` (plain reranking), ``weight = 0`` exactly as
    ``first`` (the retriever's order); a list whose scores are all equal scales to zeros.

    Example:
        >>> [round(s, 3) for s in fuse_scores([0.9, 0.8, 0.7], [0.0, 5.0, 1.0], 0.5)]
        [0.5, 0.75, 0.1]
    """
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"fusion weight {weight} is outside [0, 1]")

    def min_max(scores: Sequence[float]) -> list[float]:
        low, high = min(scores, default=0.0), max(scores, default=0.0)
        return [(s - low) / (high - low) if high > low else 0.0 for s in scores]

    return [weight * b + (1.0 - weight) * a for a, b in zip(min_max(first), min_max(second), strict=True)]


def fused_order(ids: Sequence[str], first: Sequence[float], second: Sequence[float], weight: float) -> list[str]:
    """``ids`` sorted by :func:`fuse_scores`, best first; ties keep the given (retriever) order.

    Example:
        >>> fused_order(["a", "b", "c"], [0.9, 0.8, 0.7], [0.0, 5.0, 1.0], 0.5)
        ['b', 'a', 'c']
    """
    fused = fuse_scores(first, second, weight)
    return [ids[i] for i in sorted(range(len(ids)), key=lambda i: -fused[i])]


def choose_fusion_weight(
    ids: Sequence[Sequence[str]],
    first: Sequence[Sequence[float]],
    second: Sequence[Sequence[float]],
    relevance: Sequence[Mapping[str, int]],
    grid: Sequence[float] = tuple(i / 10 for i in range(11)),
) -> tuple[float, dict[float, float]]:
    """The smallest fusion weight whose dev nDCG@10 is within one standard error of the best weight's.

    The one-standard-error rule on paired per-query differences: a weight is as good as the best unless
    the best beats it, query by query, by more than the standard error of that difference. Taking the
    smallest such weight means the reranker only gets a say it has earned clearly: a gain that a few dev
    queries produce by chance does not move serving away from the retriever's order.

    Args:
        ids: per query, the retriever's candidates (best first).
        first: per query, the retriever's scores of ``ids``.
        second: per query, the reranker's scores of ``ids``.
        relevance: per query, chunk id -> grade.
        grid: weights to try.

    Returns:
        (chosen weight, weight -> mean nDCG@10 over the queries).

    Example:
        >>> choose_fusion_weight([["a", "b"]], [[0.9, 0.8]], [[0.0, 1.0]], [{"b": 1}], grid=(0.0, 1.0))[0]
        1.0
    """
    queries = list(zip(ids, first, second, relevance, strict=True))
    per_query = {w: [ndcg_at_k(fused_order(i, f, s, w), rel) for i, f, s, rel in queries] for w in grid}
    curve = {w: sum(v) / max(len(v), 1) for w, v in per_query.items()}
    best = max(grid, key=lambda w: (curve[w], -w))

    def as_good_as_best(w: float) -> bool:
        gaps = [b - x for b, x in zip(per_query[best], per_query[w], strict=True)]
        standard_error = statistics.stdev(gaps) / math.sqrt(len(gaps)) if len(gaps) > 1 else 0.0
        return sum(gaps) / max(len(gaps), 1) <= standard_error + 1e-12

    return next(w for w in sorted(grid) if as_good_as_best(w)), curve  # the best itself always qualifies
