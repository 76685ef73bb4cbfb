"""False-negative control for mined hard negatives, as small pure functions.

A retrieved candidate is a *false* negative when it is really an answer to the query. Four rules catch
the cases seen in practice (FlagEmbedding #850, #464), checked in this order, and the first that fires
names the reason a candidate is dropped:

1. ``labelled_positive`` — the chunk has any relevance > 0 for the query (e.g. another chunk of a
   document a human question cites).
2. ``same_source_span`` — the chunk overlaps, in characters, a labelled chunk of the same document.
   Chunks overlap by ``chunk_overlap`` tokens, so a neighbour repeats part of the positive's text.
3. ``max_score`` — the embedder scores it above an absolute ceiling (a likely unlabelled positive).
4. ``relative_margin`` — it scores within ``margin x |positive score|`` of the positive (the
   TopK-PercPos rule of NV-Retriever, the same formula as sentence-transformers'
   ``mine_hard_negatives``), so the embedder cannot tell it from the answer.

Chunks are corpus rows ``{"id", "doc_id", "start", "end", ...}``; ``relevance`` maps chunk ids to grades.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Literal

RULES = ("labelled_positive", "same_source_span", "max_score", "relative_margin")


def is_labelled_positive(chunk_id: str, relevance: Mapping[str, int]) -> bool:
    """True when the query's labels give this chunk any relevance above 0.

    Example:
        >>> is_labelled_positive("c2", {"c1": 2, "c2": 1}), is_labelled_positive("c3", {"c1": 2, "c3": 0})
        (True, False)
    """
    return relevance.get(chunk_id, 0) > 0


def spans_overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """True when two chunks come from the same document and their character spans share a character.

    Spans are half-open ``[start, end)``, so chunks that only touch do not overlap.

    Example:
        >>> spans_overlap({"doc_id": "d", "start": 0, "end": 100}, {"doc_id": "d", "start": 90, "end": 200})
        True
        >>> spans_overlap({"doc_id": "d", "start": 0, "end": 100}, {"doc_id": "e", "start": 0, "end": 100})
        False
    """
    return a["doc_id"] == b["doc_id"] and a["start"] < b["end"] and b["start"] < a["end"]


def shares_source_span(chunk: Mapping[str, Any], labelled: Iterable[Mapping[str, Any]]) -> bool:
    """True when ``chunk`` overlaps any of the query's labelled chunks (same document, shared characters).

    Example:
        >>> pos = [{"doc_id": "d", "start": 0, "end": 100}]
        >>> shares_source_span({"doc_id": "d", "start": 80, "end": 180}, pos)
        True
    """
    return any(spans_overlap(chunk, other) for other in labelled)


def exceeds_max_score(score: float, max_score: float | None) -> bool:
    """True when an absolute score ceiling is set and ``score`` is above it.

    Example:
        >>> exceeds_max_score(0.9, 0.8), exceeds_max_score(0.9, None)
        (True, False)
    """
    return max_score is not None and score > max_score


def within_relative_margin(score: float, positive_score: float, margin: float | None) -> bool:
    """True when ``score`` is above ``positive_score - |positive_score| x margin`` (too close to the positive).

    Args:
        score: the candidate's similarity to the query.
        positive_score: the positive's similarity; with several positives pass the lowest (the safe choice).
        margin: relative margin, e.g. 0.05; ``None`` switches the rule off.

    Example:
        >>> within_relative_margin(0.78, 0.8, 0.05), within_relative_margin(0.7, 0.8, 0.05)
        (True, False)
    """
    return margin is not None and score > positive_score - abs(positive_score) * margin


def drop_reason(
    candidates: Sequence[Mapping[str, Any]],
    score: float,
    relevance: Mapping[str, int],
    labelled: Sequence[Mapping[str, Any]],
    positive_score: float,
    max_score: float | None,
    relative_margin: float | None,
) -> str | None:
    """The first rule of :data:`RULES` that rejects a candidate, or ``None`` when it is a usable negative.

    Args:
        candidates: every corpus chunk with the candidate's text (identical texts are one candidate for
            the embedder; if any copy is labelled or overlaps a labelled chunk, the text is an answer).
        score: the candidate's similarity to the query.
        relevance: the query's graded labels (chunk id -> grade).
        labelled: the chunks with relevance > 0 for the query.
        positive_score: the lowest similarity among the query's positives.
        max_score: absolute ceiling, or ``None``.
        relative_margin: relative margin, or ``None``.

    Returns:
        A rule name from :data:`RULES`, or ``None``.

    Example:
        >>> pos = {"id": "p", "doc_id": "d", "start": 0, "end": 100}
        >>> near = {"id": "n", "doc_id": "d", "start": 90, "end": 190}
        >>> drop_reason([near], 0.3, {"p": 2}, [pos], 0.8, None, 0.05)
        'same_source_span'
    """
    if any(is_labelled_positive(c["id"], relevance) for c in candidates):
        return "labelled_positive"
    if any(shares_source_span(c, labelled) for c in candidates):
        return "same_source_span"
    if exceeds_max_score(score, max_score):
        return "max_score"
    if within_relative_margin(score, positive_score, relative_margin):
        return "relative_margin"
    return None


def filter_candidates(
    candidates: Sequence[tuple[Sequence[Mapping[str, Any]], float]],
    relevance: Mapping[str, int],
    labelled: Sequence[Mapping[str, Any]],
    positive_score: float,
    max_score: float | None,
    relative_margin: float | None,
) -> tuple[list[tuple[Mapping[str, Any], float]], Counter]:
    """Apply the false-negative rules to one query's ranked candidates.

    Args:
        candidates: ``(chunks sharing one text, score)`` best first, as retrieved.
        relevance, labelled, positive_score, max_score, relative_margin: as in :func:`drop_reason`.

    Returns:
        ``(kept, dropped)``: kept ``(chunk, score)`` pairs in the input order (the first chunk of each
        text stands for it), and a counter of dropped candidates per rule name.

    Example:
        >>> pos = {"id": "p", "doc_id": "d", "start": 0, "end": 50}
        >>> other = {"id": "o", "doc_id": "e", "start": 0, "end": 50}
        >>> kept, dropped = filter_candidates([([pos], 0.9), ([other], 0.4)], {"p": 1}, [pos], 0.9, None, 0.05)
        >>> [c["id"] for c, _ in kept], dict(dropped)
        (['o'], {'labelled_positive': 1})
    """
    kept, dropped = [], Counter()
    for chunks, score in candidates:
        reason = drop_reason(chunks, score, relevance, labelled, positive_score, max_score, relative_margin)
        if reason is None:
            kept.append((chunks[0], score))
        else:
            dropped[reason] += 1
    return kept, dropped


def choose_negatives(
    kept: Sequence[tuple[Mapping[str, Any], float]],
    num_negatives: int,
    strategy: Literal["top", "random"],
    rng: random.Random,
) -> list[tuple[Mapping[str, Any], float]]:
    """Pick up to ``num_negatives`` of the kept candidates: the hardest (``top``) or a random draw.

    Args:
        kept: ``(chunk, score)`` best first.
        num_negatives: how many to keep.
        strategy: ``top`` or ``random`` (the draw is returned best first).
        rng: the seeded random source (``random`` only).

    Returns:
        The chosen ``(chunk, score)`` pairs, best first.

    Example:
        >>> choose_negatives([("a", 0.5), ("b", 0.4), ("c", 0.3)], 2, "top", random.Random(0))
        [('a', 0.5), ('b', 0.4)]
    """
    if strategy == "top" or len(kept) <= num_negatives:
        return list(kept[:num_negatives])
    picked = sorted(rng.sample(range(len(kept)), num_negatives))
    return [kept[i] for i in picked]


def draw_random_negatives(
    corpus: Sequence[Mapping[str, Any]],
    relevance: Mapping[str, int],
    labelled: Sequence[Mapping[str, Any]],
    exclude: Iterable[str],
    count: int,
    rng: random.Random,
) -> list[Mapping[str, Any]]:
    """Up to ``count`` chunks drawn uniformly from the whole corpus, none of them a possible positive.

    Easy negatives to mix with the hard ones, as sentence-transformers' maintainers advise for rerankers:
    a cross-encoder that only ever sees near-misses can learn the near-misses' quirks instead of topicality.
    A draw is rejected when it is labelled relevant, overlaps a labelled chunk's span (the first two rules)
    or is in ``exclude`` (e.g. the hard negatives already chosen); drawing stops after ``20 x count`` tries.

    Args:
        corpus: every chunk row (``id``, ``doc_id``, ``start``, ``end``).
        relevance: the query's chunk id -> grade.
        labelled: the query's labelled chunks.
        exclude: chunk ids that may not be drawn.
        count: how many to draw.
        rng: the seeded random source.

    Returns:
        The drawn chunks, in draw order, without repeats.

    Example:
        >>> corpus = [{"id": c, "doc_id": c, "start": 0, "end": 9} for c in "abcd"]
        >>> [c["id"] for c in draw_random_negatives(corpus, {"a": 2}, [corpus[0]], ["b"], 5, random.Random(0))]
        ['d', 'c']
    """
    taken, drawn = set(exclude), []
    for _ in range(20 * count):
        if len(drawn) == count or not corpus:
            break
        chunk = corpus[rng.randrange(len(corpus))]
        if chunk["id"] in taken or is_labelled_positive(chunk["id"], relevance) or shares_source_span(chunk, labelled):
            continue
        taken.add(chunk["id"])
        drawn.append(chunk)
    return drawn
