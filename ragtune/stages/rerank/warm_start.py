"""Warm start: distil the tuned embedder's scores into the cross-encoder before the hard-negative phase.

A fresh cross-encoder scores every pair alike, so at first it knows less than the retriever it is meant to
correct. Distillation gives it a dense target for every candidate (not a 1/0 label for a few): for each
training query, the tuned retriever's top ``rerank.cross_encoder.warm_start_pool`` chunks and their cosine similarities,
scaled by :data:`TEACHER_SCALE`. ``margin_mse`` (sentence-transformers' ``MarginMSELoss``) fits the
differences between a query's candidates, which is all a ranking needs; ``mse`` fits each score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

# The embedder's cosine similarities times the scale its contrastive loss trained them at (sentence-transformers'
# MultipleNegativesRankingLoss default): the teacher's own logits, so the student's scores get a useful range.
TEACHER_SCALE = 20.0


def distillation_columns(
    queries: Sequence[str],
    candidate_ids: Sequence[Sequence[str]],
    teacher_scores: Sequence[Sequence[float]],
    corpus_by_id: Mapping[str, Mapping[str, Any]],
    loss: str,
) -> dict[str, list]:
    """Training columns that teach the cross-encoder the teacher's scores over each query's candidates.

    Args:
        queries: the training query texts (never dev or eval queries).
        candidate_ids: per query, the retriever's top chunk ids, best first (all rows of equal length).
        teacher_scores: per query, the retriever's cosine similarities of those chunks.
        corpus_by_id: chunk id -> chunk row (``text``).
        loss: ``margin_mse`` -> ``(query, document_0..document_n, label = [scaled scores])``, one row per query;
            ``mse`` -> ``(query, passage, label = scaled score)``, one row per candidate.

    Returns:
        Column name -> values, for ``datasets.Dataset.from_dict``.

    Example:
        >>> corpus = {"a": {"text": "A"}, "b": {"text": "B"}}
        >>> distillation_columns(["q"], [["a", "b"]], [[0.5, 0.25]], corpus, "margin_mse")
        {'query': ['q'], 'document_0': ['A'], 'document_1': ['B'], 'label': [[10.0, 5.0]]}
        >>> distillation_columns(["q"], [["a", "b"]], [[0.5, 0.25]], corpus, "mse")["label"]
        [10.0, 5.0]
    """
    if loss == "mse":
        cols: dict[str, list] = {"query": [], "passage": [], "label": []}
        for query, ids, scores in zip(queries, candidate_ids, teacher_scores, strict=True):
            for cid, score in zip(ids, scores, strict=True):
                cols["query"].append(query)
                cols["passage"].append(corpus_by_id[cid]["text"])
                cols["label"].append(TEACHER_SCALE * score)
        return cols
    if loss != "margin_mse":
        raise ValueError(f"rerank.cross_encoder.warm_start: unknown loss {loss!r} (margin_mse, mse)")
    width = min((len(ids) for ids in candidate_ids), default=0)
    cols = {"query": list(queries), **{f"document_{i}": [] for i in range(width)}, "label": []}
    for ids, scores in zip(candidate_ids, teacher_scores, strict=True):
        for i in range(width):
            cols[f"document_{i}"].append(corpus_by_id[ids[i]]["text"])
        cols["label"].append([TEACHER_SCALE * s for s in scores[:width]])
    return cols
