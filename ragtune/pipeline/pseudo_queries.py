"""Inverse-cloze pseudo-queries: more distinct training queries without an LLM, for stages 1 and 2.

A reranker learns *across* queries: with a few dozen labelled or synthetic questions it fits their lists
and ranks new questions worse than the retriever (measured in docs/rerank.md). One sentence of a chunk,
asked as a query with its chunk as the positive (the inverse cloze task of Lee et al., 2019), is a cheap,
exact label, so every training chunk can add a query. Only chunks of documents that no held-out (eval or
dev) query cites are used, so the pseudo-queries never see a held-out document.

The embedder's pairs (:func:`inverse_cloze_pairs`) remove the sentence from its passage, as the inverse
cloze task does: with the sentence left in, a bi-encoder learns only to match repeated words.
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Mapping, Sequence
from typing import Any

SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def sentences_of(text: str, min_words: int = 6, max_words: int = 40) -> list[str]:
    """The sentences of ``text`` with ``min_words``..``max_words`` words, in order.

    Example:
        >>> sentences_of("Too short. Heron fails over to the standby router within thirty seconds.")
        ['Heron fails over to the standby router within thirty seconds.']
    """
    return [s.strip() for s in SENTENCE_END.split(text) if min_words <= len(s.split()) <= max_words]


def held_out_documents(queries: Sequence[Mapping[str, Any]], dev_queries: Sequence[Mapping[str, Any]]) -> set[str]:
    """The documents an eval query or a dev query cites: no pseudo-query or adaptation sentence comes from them.

    Example:
        >>> held_out_documents([{"split": "eval", "doc_ids": ["a"]}, {"split": "train", "doc_ids": ["b"]}],
        ...                    [{"doc_ids": ["c"]}]) == {"a", "c"}
        True
    """
    held_out = {d for q in queries if q["split"] != "train" for d in q["doc_ids"]}
    return held_out | {d for q in dev_queries for d in q["doc_ids"]}


def pick_sentence(text: str, rng: random.Random, min_words: int = 6, max_words: int = 40) -> str | None:
    """A random sentence of ``text`` with ``min_words``..``max_words`` words, or ``None`` when it has none.

    Example:
        >>> pick_sentence("Too short. Heron fails over to the standby router within thirty seconds.", random.Random(0))
        'Heron fails over to the standby router within thirty seconds.'
    """
    sentences = sentences_of(text, min_words, max_words)
    return rng.choice(sentences) if sentences else None


def inverse_cloze_queries(
    corpus: Sequence[Mapping[str, Any]], held_out_docs: Collection[str], count: int, seed: int
) -> list[dict[str, Any]]:
    """Up to ``count`` pseudo-query rows (the data stage's query format), one per drawn chunk.

    Args:
        corpus: chunk rows (``id``, ``doc_id``, ``text``).
        held_out_docs: document ids that eval or dev queries cite: their chunks are never drawn.
        count: the most pseudo-queries to make (chunks are drawn in a seeded random order).
        seed: seed of the draw and of the sentence choice.

    Returns:
        Rows ``{"qid": "ict-<chunk id>", "text", "positives": [chunk id], "relevance": {chunk id: 2},
        "split": "train", "origin": "inverse_cloze"}``.

    Example:
        >>> corpus = [{"id": "c1", "doc_id": "a", "text": "Heron fails over to the standby router in time."},
        ...           {"id": "c2", "doc_id": "b", "text": "Eval documents are never used for pseudo-queries."}]
        >>> [(q["qid"], q["positives"]) for q in inverse_cloze_queries(corpus, {"b"}, 10, seed=0)]
        [('ict-c1', ['c1'])]
    """
    rng = random.Random(seed)
    eligible = [c for c in corpus if c["doc_id"] not in held_out_docs]
    rows = []
    for chunk in rng.sample(eligible, len(eligible)):
        if len(rows) == count:
            break
        sentence = pick_sentence(chunk["text"], rng)
        if sentence is None:
            continue
        rows.append(
            {
                "qid": f"ict-{chunk['id']}",
                "text": sentence,
                "positives": [chunk["id"]],
                # Only the chunk itself is relevant: grading its document's other chunks 1 (so they are never
                # mined as negatives) measured worse on the demo's dev slice (docs/rerank.md).
                "relevance": {chunk["id"]: 2},
                "split": "train",
                "origin": "inverse_cloze",
            }
        )
    return rows


def without_sentence(text: str, sentence: str) -> str:
    """``text`` with the first occurrence of ``sentence`` removed and the whitespace around it closed up.

    Example:
        >>> without_sentence("Heron is a router. It fails over in seconds. Ask ops.", "It fails over in seconds.")
        'Heron is a router. Ask ops.'
    """
    head, _, tail = text.partition(sentence)
    return " ".join(f"{head} {tail}".split())


def inverse_cloze_pairs(
    corpus: Sequence[Mapping[str, Any]], held_out_docs: Collection[str], count: int, seed: int
) -> list[dict[str, Any]]:
    """Up to ``count`` embedder training pairs: a sentence of a chunk, and the chunk without that sentence.

    Chunks of documents in ``held_out_docs`` are never used. Pairs come in rounds over the chunks (seeded
    order): each round takes one more of every chunk's sentences (6..40 words, seeded order), so a cap
    spreads over as many chunks as it can and a small corpus still gives one pair per sentence.

    Returns:
        Rows in :func:`ragtune.stages.embed.pairs.build_pairs`' format: ``qid`` (``ict-<chunk id>-<round>``),
        ``anchor``, ``positive`` (the passage without the sentence) and ``positive_id``.

    Example:
        >>> corpus = [{"id": "c1", "doc_id": "a", "text": "Heron fails over to the standby router in time. Ask ops."}]
        >>> [(p["qid"], p["positive"]) for p in inverse_cloze_pairs(corpus, set(), 5, seed=0)]
        [('ict-c1-0', 'Ask ops.')]
    """
    rng = random.Random(seed)
    eligible = [c for c in corpus if c["doc_id"] not in held_out_docs]
    sentences = {}
    for chunk in rng.sample(eligible, len(eligible)):
        found = sentences_of(chunk["text"])
        sentences[chunk["id"]] = (chunk["text"], rng.sample(found, len(found)))
    pairs: list[dict[str, Any]] = []
    for depth in range(max((len(found) for _, found in sentences.values()), default=0)):
        for chunk_id, (text, found) in sentences.items():
            if len(pairs) == count:
                return pairs
            if depth < len(found) and (passage := without_sentence(text, found[depth])):
                qid = f"ict-{chunk_id}-{depth}"
                pairs.append({"qid": qid, "anchor": found[depth], "positive": passage, "positive_id": chunk_id})
    return pairs
