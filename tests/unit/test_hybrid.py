"""Reciprocal rank fusion and BM25 candidates (ragtune.pipeline.hybrid)."""

import pytest

from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever, fuse_rankings, reciprocal_rank_fusion


def test_reciprocal_rank_fusion_matches_hand_computed_scores() -> None:
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "d"]], k=60)
    assert [c for c, _ in fused] == ["c", "a", "b", "d"]  # b and d tie at 1/62: b appeared first
    scores = dict(fused)
    assert scores["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert scores["a"] == pytest.approx(1 / 61) and scores["b"] == scores["d"] == pytest.approx(1 / 62)
    assert reciprocal_rank_fusion([["a", "b", "c"], ["c", "d"]], k=60, limit=2) == fused[:2]


def test_fuse_rankings_uses_each_side_to_its_depth() -> None:
    ranked, scores = fuse_rankings([["a", "b", "c"]], [["c", "x"]], depth=2, limit=10)
    # "c" is third on the dense side: below depth 2 it counts from BM25 only, so it ties with "a" (rank 1).
    assert ranked == [["a", "c", "b", "x"]]
    assert scores[0] == pytest.approx([1 / 61, 1 / 61, 1 / 62, 1 / 62])


def test_bm25_ranks_term_matches_and_drops_chunks_without_a_query_term() -> None:
    corpus = [
        {"id": "heron", "text": "Heron fails over to the standby router within minutes."},
        {"id": "tortoise", "text": "Tortoise drains the batch queue before shutdown."},
        {"id": "both", "text": "Heron routers and the Tortoise queue share one pager rotation."},
        {"id": "marmot", "text": "Marmot keeps nightly snapshots for thirty days."},
    ]
    retriever = bm25_retriever(corpus, top_k=10)  # clipped to the 4 chunks
    ranked = bm25_rankings(retriever, ["heron failover standby", "tortoise queue", "unrelated words"])
    assert ranked[0][0] == "heron" and set(ranked[0]) == {"heron", "both"}
    assert set(ranked[1]) == {"tortoise", "both"}
    assert ranked[2] == []
