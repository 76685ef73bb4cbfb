"""Training pairs for the embedder and the batching rule.

:func:`build_pairs` turns query rows into (query, positive chunk) pairs, one per positive chunk;
:func:`attach_negatives` adds a negative per pair for TripletLoss. The dev slice for checkpoint selection
comes from :mod:`ragtune.pipeline.dev_slice`.

In-batch losses (MNRL, CachedMNRL, GIST) treat every other positive in a batch as a negative. Two pairs
that share a positive chunk, or ask the same question, would then push a query away from its own
answer (llama_index #17413). :func:`no_duplicate_batches` forms batches in which no key repeats, keyed
on the positive chunk id, its text and the query text; :class:`NoDuplicateKeysBatchSampler` plugs it
into the SentenceTransformerTrainer.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

logger = logging.getLogger(__name__)


def trained_queries(queries: Sequence[dict[str, Any]], synthetic: bool) -> list[dict[str, Any]]:
    """The queries stage 1 trains on: all of them, or without the data stage's synthetic ones
    (``embed.synthetic_queries: false``).

    Example:
        >>> rows = [{"qid": "h", "origin": "human"}, {"qid": "s", "origin": "synthetic"}, {"qid": "x"}]
        >>> [q["qid"] for q in trained_queries(rows, synthetic=False)]
        ['h', 'x']
    """
    return [q for q in queries if synthetic or q.get("origin") != "synthetic"]


def build_pairs(queries: Sequence[dict[str, Any]], chunks: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """One (query, positive chunk) pair per positive chunk of each query.

    Args:
        queries: rows of ``data/queries.jsonl`` (``qid``, ``text``, ``positives``).
        chunks: chunk id -> row of ``data/corpus.jsonl``.

    Returns:
        Rows ``{"qid", "anchor", "positive", "positive_id"}``; positives missing from the corpus are skipped.

    Example:
        >>> build_pairs([{"qid": "q", "text": "Why?", "positives": ["c1", "c2"]}],
        ...             {"c1": {"text": "One."}, "c2": {"text": "Two."}})[1]["positive_id"]
        'c2'
    """
    pairs = []
    for q in queries:
        for chunk_id in q["positives"]:
            if chunk_id in chunks:
                pairs.append(
                    {
                        "qid": q["qid"],
                        "anchor": q["text"],
                        "positive": chunks[chunk_id]["text"],
                        "positive_id": chunk_id,
                    }
                )
    return pairs


def attach_negatives(
    pairs: list[dict[str, Any]],
    queries: Sequence[dict[str, Any]],
    chunks: dict[str, dict[str, Any]],
    seed: int,
) -> tuple[list[dict[str, Any]], int]:
    """Give each pair one negative chunk text (``negative`` column) for TripletLoss.

    A query row's own ``negatives`` (chunk ids, e.g. mined or hand-labelled) are used when present;
    otherwise a random chunk that is not relevant to the query is drawn, seeded, so reruns match.

    Args:
        pairs: rows of :func:`build_pairs`.
        queries: the query rows the pairs came from (``relevance``/``positives``, optional ``negatives``); a
            pair whose ``qid`` has no row gets a random chunk other than its positive.
        chunks: chunk id -> corpus row.
        seed: seed of the random draw.

    Returns:
        (pairs with ``negative`` and ``negative_id``, number of negatives drawn at random).

    Example:
        >>> chunks = {"a": {"text": "A"}, "b": {"text": "B"}}
        >>> rows, drawn = attach_negatives([{"qid": "q", "positive_id": "a"}], [{"qid": "q", "positives": ["a"]}],
        ...                                chunks, seed=0)
        >>> rows[0]["negative_id"], drawn
        ('b', 1)
    """
    rng = random.Random(seed)
    by_qid = {q["qid"]: q for q in queries}
    chunk_ids = sorted(chunks)
    out, drawn = [], 0
    for pair in pairs:
        # a pair without a query row (an inverse-cloze pair) knows only its positive
        q = by_qid.get(pair["qid"], {"qid": pair["qid"], "positives": [pair["positive_id"]]})
        relevant = set(q.get("relevance") or {}) | set(q["positives"])
        given = [c for c in q.get("negatives") or [] if c in chunks and c not in relevant]
        if given:
            negative_id = rng.choice(given)
        else:
            candidates = [c for c in chunk_ids if c not in relevant]
            if not candidates:
                raise ValueError(f"query {q['qid']!r}: every chunk is relevant, no negative can be drawn")
            negative_id = rng.choice(candidates)
            drawn += 1
        out.append({**pair, "negative": chunks[negative_id]["text"], "negative_id": negative_id})
    return out, drawn


def bm25_negatives(
    pairs: Sequence[dict[str, Any]], corpus: Sequence[dict[str, Any]], depth: int = 10
) -> dict[str, list[str]]:
    """Per pair's query, the chunks BM25 ranks highest that are not its answer: negatives that make the embedder
    add to BM25 instead of repeating it (``embed.hard_negatives: bm25``).

    A chunk of the positive's own document is never one (it is likely relevant, a false negative), nor a chunk
    with the positive's text. BM25 is the project's own (:func:`ragtune.pipeline.hybrid.bm25_retriever`), one batched
    pass over every query.

    Args:
        pairs: rows of :func:`build_pairs` or inverse-cloze pairs (``qid``, ``anchor``, ``positive_id``).
        corpus: every chunk row (``id``, ``doc_id``, ``text``).
        depth: BM25's top k searched; up to that many negatives per query, best first.

    Returns:
        qid -> negative chunk ids (empty when BM25 finds nothing else).
    """
    from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever

    by_id = {c["id"]: c for c in corpus}
    unique = list({p["qid"]: p for p in pairs}.values())
    extra = 1 + max(
        (sum(c["doc_id"] == d for c in corpus) for d in {by_id[p["positive_id"]]["doc_id"] for p in unique}), default=0
    )
    ranked = bm25_rankings(bm25_retriever(list(corpus), depth + extra), [p["anchor"] for p in unique])
    out = {}
    for pair, ids in zip(unique, ranked, strict=True):
        positive = by_id[pair["positive_id"]]
        out[pair["qid"]] = [
            c for c in ids if by_id[c]["doc_id"] != positive["doc_id"] and by_id[c]["text"] != positive["text"]
        ][:depth]
    return out


def pair_keys(pair: dict[str, Any]) -> frozenset[str]:
    """The keys that must not repeat within a batch for one training pair.

    Args:
        pair: a row of :func:`build_pairs` (``anchor``, ``positive``, ``positive_id``).

    Returns:
        ``{"pos:<chunk id>", "ptext:<positive text>", "q:<normalised query>"}``, and for a pair with a hard
        ``negative`` its chunk id and text as well: a batch in which one pair's negative is another's positive
        would push that query away from its own answer.

    Example:
        >>> sorted(pair_keys({"anchor": "What is X?", "positive": "X is.", "positive_id": "c1"}))
        ['pos:c1', 'ptext:X is.', 'q:what is x?']
    """
    keys = {f"pos:{pair['positive_id']}", f"ptext:{pair['positive']}", f"q:{' '.join(pair['anchor'].lower().split())}"}
    if pair.get("negative_id") is not None:
        keys |= {f"pos:{pair['negative_id']}", f"ptext:{pair['negative']}"}
    return frozenset(keys)


def no_duplicate_batches(
    keys: Sequence[frozenset[str]], batch_size: int, *, seed: int, drop_last: bool = False
) -> list[list[int]]:
    """Shuffle indices and pack them first-fit into batches whose members share no key.

    Every index lands in exactly one batch (unless ``drop_last`` drops an incomplete one). When keys
    conflict so much that a batch cannot be filled, it is emitted short rather than broken.

    Args:
        keys: per item, the keys it must not share with a batch mate (see :func:`pair_keys`).
        batch_size: maximum items per batch.
        seed: shuffling seed (the sampler adds the epoch).
        drop_last: drop batches shorter than ``batch_size``.

    Returns:
        Batches as lists of indices into ``keys``.

    Example:
        >>> ks = [frozenset({"pos:a"}), frozenset({"pos:a"}), frozenset({"pos:b"})]
        >>> sorted(map(sorted, no_duplicate_batches(ks, 2, seed=1)))
        [[0], [1, 2]]
    """
    order = list(range(len(keys)))
    random.Random(seed).shuffle(order)
    finished: list[list[int]] = []
    open_batches: list[tuple[list[int], set[str]]] = []
    for idx in order:
        for members, used in open_batches:
            if used.isdisjoint(keys[idx]):
                members.append(idx)
                used.update(keys[idx])
                break
        else:
            members, used = [idx], set(keys[idx])
            open_batches.append((members, used))
        if len(members) == batch_size:
            finished.append(members)
            open_batches = [b for b in open_batches if b[0] is not members]
    leftovers = [members for members, _ in open_batches]
    if not drop_last:
        finished.extend(leftovers)
    return finished


class NoDuplicateKeysBatchSampler(DefaultBatchSampler):
    """Batch sampler for SentenceTransformerTrainer built on :func:`no_duplicate_batches`.

    The trainer calls it as ``sampler(dataset, batch_size=..., drop_last=..., ...)``; bind ``keys`` first
    with ``functools.partial(NoDuplicateKeysBatchSampler, keys=keys)`` and pass that as
    ``SentenceTransformerTrainingArguments.batch_sampler``. Batches differ per epoch (seed + epoch) and
    ``len()`` is exact for the current epoch.

    Args:
        dataset: the training dataset (row ``i`` has keys ``keys[i]``).
        keys: per row, keys that must not repeat within a batch.
        batch_size, drop_last, valid_label_columns, generator, seed: as the trainer passes them.
    """

    def __init__(
        self,
        dataset: Any,
        keys: Sequence[frozenset[str]],
        batch_size: int,
        drop_last: bool,
        valid_label_columns: list[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int = 0,
    ) -> None:
        if len(keys) != len(dataset):
            raise ValueError(f"got {len(keys)} key sets for a dataset of {len(dataset)} rows")
        super().__init__(
            dataset,
            batch_size=batch_size,
            drop_last=drop_last,
            valid_label_columns=valid_label_columns,
            generator=generator,
            seed=seed,
        )
        self.keys = list(keys)
        self._cache: tuple[int, list[list[int]]] | None = None

    def _batches(self) -> list[list[int]]:
        if self._cache is None or self._cache[0] != self.epoch:
            self._cache = (
                self.epoch,
                no_duplicate_batches(self.keys, self.batch_size, seed=self.seed + self.epoch, drop_last=self.drop_last),
            )
        return self._cache[1]

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()

    def __len__(self) -> int:
        return len(self._batches())
