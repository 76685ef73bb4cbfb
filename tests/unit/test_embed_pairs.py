"""Training pairs and the no-duplicates batching rule of the embed stage."""

import random
from collections import Counter

import pytest
from datasets import Dataset

from ragtune.stages.embed.pairs import (
    NoDuplicateKeysBatchSampler,
    attach_negatives,
    build_pairs,
    no_duplicate_batches,
    pair_keys,
)


def _corpus(n: int) -> dict[str, dict]:
    return {f"c{i}": {"id": f"c{i}", "text": f"chunk number {i}"} for i in range(n)}


def _crowded_queries() -> list[dict]:
    """Queries with several positives each, many sharing positives and some sharing their text."""
    rng = random.Random(3)
    queries = []
    for i in range(40):
        text = f"question {i % 25}"  # 15 texts asked twice
        queries.append({"qid": f"q{i}", "text": text, "positives": rng.sample([f"c{j}" for j in range(12)], k=2)})
    return queries


def _assert_no_shared_key(batches: list[list[int]], pairs: list[dict]) -> None:
    for batch in batches:
        ids = [pairs[i]["positive_id"] for i in batch]
        texts = [pairs[i]["anchor"] for i in batch]
        positives = [pairs[i]["positive"] for i in batch]
        assert len(set(ids)) == len(ids), f"positive id repeated in a batch: {ids}"
        assert len(set(texts)) == len(texts), f"query text repeated in a batch: {texts}"
        assert len(set(positives)) == len(positives)


def test_build_pairs_gives_one_pair_per_positive_chunk() -> None:
    queries = [{"qid": "q1", "text": "Why?", "positives": ["c1", "c2", "missing"]}]
    pairs = build_pairs(queries, _corpus(3))
    assert [(p["qid"], p["positive_id"], p["positive"]) for p in pairs] == [
        ("q1", "c1", "chunk number 1"),
        ("q1", "c2", "chunk number 2"),
    ]


def test_batches_never_share_a_positive_id_or_query_text_and_cover_every_pair() -> None:
    pairs = build_pairs(_crowded_queries(), _corpus(12))
    keys = [pair_keys(p) for p in pairs]
    for seed in range(5):
        batches = no_duplicate_batches(keys, 8, seed=seed)
        assert sorted(i for b in batches for i in b) == list(range(len(pairs)))
        assert all(1 <= len(b) <= 8 for b in batches)
        _assert_no_shared_key(batches, pairs)


def test_same_positive_text_under_different_ids_is_also_kept_apart() -> None:
    pairs = [
        {"anchor": "a", "positive": "same text", "positive_id": "c1"},
        {"anchor": "b", "positive": "same text", "positive_id": "c2"},
    ]
    assert sorted(map(len, no_duplicate_batches([pair_keys(p) for p in pairs], 2, seed=0))) == [1, 1]


def test_drop_last_drops_only_short_batches() -> None:
    keys = [frozenset({f"k{i}"}) for i in range(10)]
    assert [len(b) for b in no_duplicate_batches(keys, 4, seed=0, drop_last=True)] == [4, 4]
    assert sorted(len(b) for b in no_duplicate_batches(keys, 4, seed=0)) == [2, 4, 4]


def test_sampler_yields_exact_len_and_reshuffles_per_epoch_without_duplicates() -> None:
    pairs = build_pairs(_crowded_queries(), _corpus(12))
    dataset = Dataset.from_list([{"anchor": p["anchor"], "positive": p["positive"]} for p in pairs])
    sampler = NoDuplicateKeysBatchSampler(
        dataset, keys=[pair_keys(p) for p in pairs], batch_size=6, drop_last=False, seed=7
    )
    first = list(sampler)
    assert len(first) == len(sampler)
    _assert_no_shared_key(first, pairs)
    sampler.set_epoch(1)
    second = list(sampler)
    assert len(second) == len(sampler)
    _assert_no_shared_key(second, pairs)
    assert first != second
    assert Counter(i for b in second for i in b) == Counter(range(len(pairs)))

    with pytest.raises(ValueError, match="key sets"):
        NoDuplicateKeysBatchSampler(dataset, keys=[], batch_size=6, drop_last=False)


def test_attach_negatives_uses_given_ones_else_draws_seeded_non_relevant_chunks() -> None:
    chunks = _corpus(20)
    queries = [
        {"qid": "q1", "text": "a", "positives": ["c1"], "relevance": {"c1": 2, "c2": 1}},
        {"qid": "q2", "text": "b", "positives": ["c3"], "negatives": ["c9"]},
    ]
    pairs = build_pairs(queries, chunks) * 10
    rows, drawn = attach_negatives(pairs, queries, chunks, seed=5)
    assert drawn == 10
    assert all(r["negative_id"] == "c9" for r in rows if r["qid"] == "q2")
    assert all(r["negative_id"] not in {"c1", "c2"} for r in rows if r["qid"] == "q1")
    assert rows[0]["negative"] == chunks[rows[0]["negative_id"]]["text"]
    again, _ = attach_negatives(pairs, queries, chunks, seed=5)
    assert [r["negative_id"] for r in again] == [r["negative_id"] for r in rows]


def test_bm25_negatives_are_what_bm25_ranks_high_never_the_positives_document() -> None:
    from ragtune.stages.embed.pairs import bm25_negatives

    corpus = [
        {"id": "a1", "doc_id": "A", "text": "heron failover drains the primary queue in two minutes"},
        {"id": "a2", "doc_id": "A", "text": "heron failover is tested every month"},
        {"id": "b1", "doc_id": "B", "text": "the heron dashboard shows queue drains"},
        {"id": "c1", "doc_id": "C", "text": "parking permits renew each spring"},
    ]
    pairs = [{"qid": "q", "anchor": "how long does heron failover drain the queue", "positive_id": "a1"}]
    negatives = bm25_negatives(pairs, corpus)["q"]
    assert negatives[0] == "b1"  # BM25's best chunk outside the positive's document
    assert not {"a1", "a2"} & set(negatives) and "c1" not in negatives  # no shared word: BM25 skips it


def test_a_hard_negative_that_is_another_pairs_positive_never_shares_its_batch() -> None:
    one = {"anchor": "q1", "positive": "P1", "positive_id": "c1", "negative": "P2", "negative_id": "c2"}
    two = {"anchor": "q2", "positive": "P2", "positive_id": "c2"}
    assert pair_keys(one) & pair_keys(two)
