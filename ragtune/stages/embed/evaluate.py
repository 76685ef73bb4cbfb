"""Stage 1's retrieval evaluations: held-out and dev figures over cached corpus embeddings, and a cheap
checkpoint-selection evaluator.

- The held-out and dev figures are :func:`ragtune.pipeline.retrieval.retrieval_metrics` (a core function: the GPL round
  computes its dev figure the same way) over a :class:`~ragtune.pipeline.retrieval.DenseRetriever` (exact top-k,
  binary relevance: the labelled positives). The base model's corpus embeddings come from the run's cache
  (the data stage's round trip already encoded them), the tuned model's are encoded once after training and
  cached for every later consumer (mining, RAFT, the eval harness, the assembled index).
- :func:`dev_pool` and :func:`selection_evaluator`: checkpoint selection during training ranks the dev queries
  among a fixed pool — their positives plus the base model's top ``k`` for each — so a dev evaluation
  encodes the pool, not the corpus. It approximates full-corpus nDCG@10 from above: a chunk that no dev query
  had in the base model's top ``k`` cannot outrank a positive. Checkpoints are compared with one another on the
  same pool, which is what selection needs; the figures reported and used by the promotion gate are over the
  whole corpus.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

from ragtune.pipeline.retrieval import DenseRetriever


def dev_pool(retriever: DenseRetriever, queries: Sequence[dict[str, Any]], top_k: int | None) -> list[dict]:
    """The fixed candidate pool of checkpoint selection: every positive plus each query's top ``top_k``.

    ``top_k=None`` gives the whole corpus. Chunks keep their corpus order.

    Example (over a loaded base retriever, not run as a doctest):
        pool = dev_pool(base, dev_queries, 50)   # <= len(dev_queries) * 50 chunks + positives
    """
    if top_k is None:
        return list(retriever.corpus)
    _, ranked = retriever.search([q["text"] for q in queries], k=top_k)
    keep = {c for q in queries for c in q["positives"]} | {c for row in ranked for c in row}
    return [row for row in retriever.corpus if row["id"] in keep]


def selection_evaluator(
    queries: Sequence[dict[str, Any]], pool: Sequence[dict[str, Any]], k_values: Sequence[int]
) -> InformationRetrievalEvaluator:
    """sentence-transformers' retrieval evaluator over the dev pool (metric keys prefixed ``dev_``), quiet."""
    ks = sorted(set(k_values))
    return InformationRetrievalEvaluator(
        queries={q["qid"]: q["text"] for q in queries},
        corpus={c["id"]: c["text"] for c in pool},
        relevant_docs={q["qid"]: set(q["positives"]) for q in queries},
        accuracy_at_k=ks,
        precision_recall_at_k=ks,
        mrr_at_k=[10],
        ndcg_at_k=[10],
        map_at_k=[10],
        name="dev",
        show_progress_bar=False,
        write_csv=False,
    )
