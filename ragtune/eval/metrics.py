"""Generation metrics and paired bootstrap intervals as small pure functions.

Answer metrics (SQuAD EM and F1) live in :mod:`ragtune.pipeline.answer_metrics`, shared with stage 3's dev check.
Quote metrics use the RAFT format of :mod:`ragtune.pipeline.raft_format`: a quote is a
span between ``##begin_quote##`` and ``##end_quote##`` and counts when it occurs verbatim (whitespace-
and case-insensitive) in a chunk. Retrieval metrics live in :mod:`ragtune.pipeline.ranking`.

Every per-query metric returns a float in [0, 1] (or ``None`` when it is undefined for that query,
e.g. quote precision of an answer without quotes), so rows average and bootstrap uniformly.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ragtune.pipeline.raft_format import parse_answer, quote_is_verbatim

_SCORE_PATTERNS = (
    re.compile(r"score\s*[:=]?\s*\**\s*([1-5])(?:\.\d+)?\b", re.IGNORECASE),
    re.compile(r"\b([1-5])(?:\.\d+)?\s*(?:/|out of)\s*5\b", re.IGNORECASE),
    re.compile(r"^\W*([1-5])(?:\.\d+)?\W*$"),
)


def quote_precision(quotes: Sequence[str], context: Sequence[str]) -> float | None:
    """Share of quoted spans found verbatim in one of the supplied context chunks.

    Args:
        quotes: spans the answer put between the quote tags.
        context: the chunk texts the generator was given.

    Returns:
        Verbatim quotes / quotes, or None when the answer quotes nothing (undefined, not 0).

    Example:
        >>> quote_precision(["Heron routes orders."], ["Heron  routes orders. It is fast."])
        1.0
        >>> quote_precision(["made up", "It is fast."], ["Heron routes orders. It is fast."])
        0.5
    """
    if not quotes:
        return None
    return sum(any(quote_is_verbatim(q, c) for c in context) for q in quotes) / len(quotes)


def oracle_citation(quotes: Sequence[str], positives: Sequence[str]) -> float:
    """1.0 when at least one quote lies verbatim in a positive (oracle) chunk.

    Args:
        quotes: spans the answer put between the quote tags.
        positives: texts of the query's positive chunks.

    Returns:
        1.0 or 0.0 (an answer without quotes cites nothing: 0.0).

    Example:
        >>> oracle_citation(["renewed by the job"], ["An SLA expires unless renewed by the job."])
        1.0
    """
    return float(any(quote_is_verbatim(q, p) for q in quotes for p in positives))


def format_compliance(generation: str) -> float:
    """1.0 when the generation has the RAFT ``##Reason:`` ... ``##Answer:`` structure.

    Example:
        >>> format_compliance("##Reason: x ##Answer: y"), format_compliance("y")
        (1.0, 0.0)
    """
    return float(parse_answer(generation).well_formed)


def abstained(generation: str) -> float:
    """1.0 when the final answer says the documents do not contain the answer.

    Example:
        >>> abstained("##Reason: none ##Answer: The provided documents do not contain the answer.")
        1.0
    """
    return float(parse_answer(generation).abstained)


def parse_judge_score(text: str | None) -> int | None:
    """A 1-5 score from a judge's reply, tolerant of wording; None when no score can be read.

    Looks, in order, for ``Score: N`` (also ``**Score:** N``, ``score=N``), ``N/5`` or ``N out of 5``,
    and a reply that is just the number. Decimals are truncated (``4.5/5`` -> 4).

    Example:
        >>> parse_judge_score("The answer is close. Score: 4"), parse_judge_score("3/5"), parse_judge_score("7")
        (4, 3, None)
    """
    if not text:
        return None
    for pattern in _SCORE_PATTERNS:
        match = pattern.search(text.strip())
        if match:
            return int(match.group(1))
    return None


def mean_defined(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not None (or NaN); None when there are none.

    Example:
        >>> mean_defined([1.0, None, 0.0]), mean_defined([None])
        (0.5, None)
    """
    kept = [v for v in values if v is not None and not math.isnan(v)]
    return sum(kept) / len(kept) if kept else None


def relevance_level(query: dict) -> str:
    """How a held-out query's relevance was labelled: ``"chunk"``, ``"document"`` or ``"both"``.

    The data stage records it (``relevance_level``): chunk-level for synthetic queries and questions whose
    evidence was located, document-level when every chunk of the cited documents is an equal positive (no
    evidence, BEIR qrels, LlamaIndex datasets). Rows written before it did are read from their grades:
    top-graded chunks (``positives``) fewer than the relevant ones mean located evidence; one relevant
    chunk reads the same either way (``"both"``).

    Example:
        >>> relevance_level({"origin": "human", "positives": ["a"], "relevance": {"a": 2, "b": 1}})
        'chunk'
        >>> relevance_level({"origin": "human", "positives": ["a", "b"], "relevance": {"a": 1, "b": 1}})
        'document'
    """
    if "relevance_level" in query:
        return query["relevance_level"]
    relevant = [c for c, g in query["relevance"].items() if g > 0]
    if query.get("origin") == "synthetic" or len(query["positives"]) < len(relevant):
        return "chunk"
    return "both" if len(relevant) == 1 else "document"


def labelled_recall_at_k(ranked: Sequence[str], query: dict, doc_of: dict[str, str], k: int = 10) -> float:
    """Recall@k at the level the query was labelled at (:func:`relevance_level`).

    Chunk-level: the share of its top-graded chunks (the evidence) in the top ``k``. Document-level: the
    share of its relevant documents with at least one chunk in the top ``k`` — counting every chunk of a
    long document as a separate target would make a retriever that finds the right passage look poor.

    Args:
        ranked: chunk ids, best first.
        query: a query row (``positives``, ``relevance``, ``origin``).
        doc_of: chunk id -> document id.
        k: cut-off.

    Example:
        >>> doc_of = {"a1": "a", "a2": "a", "a3": "a", "b1": "b"}
        >>> q = {"origin": "human", "positives": ["a1", "a2", "a3"], "relevance": {"a1": 1, "a2": 1, "a3": 1}}
        >>> labelled_recall_at_k(["b1", "a2"], q, doc_of, k=2)  # chunk recall would be 1/3
        1.0
    """
    if relevance_level(query) != "document":
        targets = set(query["positives"])
        return len(targets.intersection(ranked[:k])) / len(targets) if targets else 0.0
    docs = {doc_of[c] for c, g in query["relevance"].items() if g > 0 and c in doc_of}
    found = {doc_of[c] for c in ranked[:k] if c in doc_of}
    return len(docs & found) / len(docs) if docs else 0.0


def labelled_recall(
    queries: Sequence[dict], rankings: Sequence[Sequence[str]], doc_of: dict[str, str], k: int = 10
) -> dict[str, float | int | str]:
    """Mean :func:`labelled_recall_at_k` over queries, and which labelling it measured.

    Returns:
        ``{"recall", "k", "level": "chunk" | "document" | "mixed", "chunk_queries", "document_queries"}``.
    """
    levels = [relevance_level(q) for q in queries]
    values = [labelled_recall_at_k(r, q, doc_of, k) for q, r in zip(queries, rankings, strict=True)]
    n_chunk = len(levels) - levels.count("document")  # a one-chunk target reads the same either way
    found = {"chunk", "document"}.intersection(levels)
    level = "mixed" if len(found) == 2 else next(iter(found), "chunk")
    return {
        "recall": sum(values) / len(values) if values else 0.0,
        "k": k,
        "level": level,
        "chunk_queries": n_chunk,
        "document_queries": len(levels) - n_chunk,
    }


@dataclass(frozen=True)
class Interval:
    """A point estimate with a percentile bootstrap interval over ``n`` queries."""

    estimate: float
    low: float
    high: float
    n: int

    def as_dict(self) -> dict[str, float | int]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n}


def _paired(a: Sequence[float | None], b: Sequence[float | None]) -> tuple[np.ndarray, np.ndarray]:
    if len(a) != len(b):
        raise ValueError(f"paired samples differ in length: {len(a)} vs {len(b)}")
    keep = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x is not None and y is not None]
    keep = [i for i in keep if not (math.isnan(a[i]) or math.isnan(b[i]))]
    return np.asarray([a[i] for i in keep], dtype=float), np.asarray([b[i] for i in keep], dtype=float)


def paired_bootstrap(
    baseline: Sequence[float | None],
    candidate: Sequence[float | None],
    samples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> Interval | None:
    """Mean per-query difference ``candidate - baseline`` with a paired percentile bootstrap interval.

    Queries are resampled with replacement (the same resampled queries for both sides, which is
    what makes it paired); pairs where either side is None are dropped first.

    Args:
        baseline: per-query metric of the reference configuration.
        candidate: the same metric, same queries, same order, for the compared configuration.
        samples: bootstrap resamples.
        seed: seed of the resampling (same seed, same interval).
        confidence: central interval mass (0.95: the 2.5th and 97.5th percentiles).

    Returns:
        ``Interval(estimate=mean difference, low, high, n=pairs)``, or None when no pair is defined.

    Example:
        >>> iv = paired_bootstrap([0, 0, 0, 0], [1, 1, 1, 1], samples=200)
        >>> (iv.estimate, iv.low, iv.high)
        (1.0, 1.0, 1.0)
    """
    a, b = _paired(baseline, candidate)
    if len(a) == 0:
        return None
    diff = b - a
    rng = np.random.default_rng(seed)
    means = diff[rng.integers(0, len(diff), size=(samples, len(diff)))].mean(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(diff.mean()), float(low), float(high), len(diff))


def bootstrap_mean(
    values: Sequence[float | None], samples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> Interval | None:
    """Mean of the defined values with a percentile bootstrap interval (for error bars).

    Example:
        >>> bootstrap_mean([0.5, 0.5, None]).as_dict()
        {'estimate': 0.5, 'low': 0.5, 'high': 0.5, 'n': 2}
    """
    zeros = [0.0 if v is not None else None for v in values]
    return paired_bootstrap(zeros, values, samples, seed, confidence)


def verdict(delta: Interval | None, higher_is_better: bool = True) -> str:
    """Read a delta's interval: ``gained`` / ``hurt`` when it excludes 0, else ``no significant change``.

    Example:
        >>> verdict(Interval(0.1, 0.02, 0.2, 30)), verdict(Interval(-0.1, -0.3, 0.05, 30))
        ('gained', 'no significant change')
    """
    if delta is None:
        return "not measured"
    low, high = (delta.low, delta.high) if higher_is_better else (-delta.high, -delta.low)
    if low > 0:
        return "gained"
    if high < 0:
        return "hurt"
    return "no significant change"
