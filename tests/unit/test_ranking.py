import math

import pytest

from ragtune.pipeline.ranking import (
    choose_fusion_weight,
    fuse_scores,
    fused_order,
    hit_at_k,
    mean_metrics,
    mrr_at_k,
    ndcg_at_k,
    per_query_metrics,
    recall_at_k,
)


def test_hit_and_mrr() -> None:
    ranked = ["a", "b", "c", "d"]
    assert hit_at_k(ranked, {"c": 1}, 2) == 0.0 and hit_at_k(ranked, {"c": 1}, 3) == 1.0
    assert mrr_at_k(ranked, {"c": 1, "d": 2}) == pytest.approx(1 / 3)
    assert mrr_at_k(ranked, {"z": 1}) == 0.0
    assert mrr_at_k(ranked, {"d": 1}, k=3) == 0.0
    assert hit_at_k(ranked, {"a": 0}, 4) == 0.0  # grade 0 is not relevant


def test_recall_counts_unretrieved_relevant() -> None:
    assert recall_at_k(["a", "b", "c"], {"a": 1, "c": 2, "z": 1}, 3) == pytest.approx(2 / 3)
    assert recall_at_k(["a"], {}, 1) == 0.0


def test_ndcg_graded_hand_computed() -> None:
    # ranked grades: x=0, b=1, a=2 ; ideal: 2, 1
    dcg = (2**1 - 1) / math.log2(3) + (2**2 - 1) / math.log2(4)
    idcg = (2**2 - 1) / math.log2(2) + (2**1 - 1) / math.log2(3)
    assert ndcg_at_k(["x", "b", "a"], {"a": 2, "b": 1}) == pytest.approx(dcg / idcg)
    assert ndcg_at_k(["a", "b"], {"a": 2, "b": 1}) == pytest.approx(1.0)


def test_ndcg_ideal_includes_relevant_not_retrieved() -> None:
    # llama_index #17070: the ideal DCG must come from all relevant ids, not the retrieved ones.
    assert ndcg_at_k(["a", "x"], {"a": 1, "b": 1}) == pytest.approx(1 / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(["x"], {"a": 1}) == 0.0


def test_per_query_and_mean() -> None:
    rows = [per_query_metrics(["a", "b"], {"a": 1}, (1, 2)), per_query_metrics(["a", "b"], {"b": 1}, (1, 2))]
    assert set(rows[0]) == {"hit@1", "hit@2", "recall@1", "recall@2", "mrr@10", "ndcg@10"}
    mean = mean_metrics(rows)
    assert mean["hit@1"] == 0.5 and mean["hit@2"] == 1.0 and mean["mrr@10"] == pytest.approx(0.75)
    assert mean_metrics([]) == {}


def test_fusion_endpoints_reproduce_each_ranking() -> None:
    ids, first, second = ["a", "b", "c", "d"], [0.9, 0.7, 0.6, 0.1], [-2.0, 3.0, 0.5, 1.0]
    assert fused_order(ids, first, second, 1.0) == ["b", "d", "c", "a"]  # the reranker alone
    assert fused_order(ids, first, second, 0.0) == ["a", "b", "c", "d"]  # the retriever alone
    # min-max puts both on [0, 1]: a = 0.5*1 + 0.5*0, b = 0.5*0.75 + 0.5*1
    assert fuse_scores(first, second, 0.5)[:2] == pytest.approx([0.5, 0.875])


def test_fusion_of_constant_scores_keeps_the_other_order() -> None:
    # A reranker that gives every candidate one score (a flat, untrained head) cannot reorder anything.
    assert fused_order(["a", "b", "c"], [0.3, 0.2, 0.1], [0.7, 0.7, 0.7], 0.9) == ["a", "b", "c"]
    assert fuse_scores([], [], 0.5) == []
    with pytest.raises(ValueError, match="outside"):
        fuse_scores([1.0], [1.0], 1.5)


def test_choose_fusion_weight_follows_the_better_scorer() -> None:
    ids = [["a", "b", "c"], ["d", "e", "f"]]
    first = [[0.9, 0.8, 0.7], [0.9, 0.8, 0.7]]
    relevance = [{"c": 1}, {"f": 1}]  # the retriever ranks every relevant chunk last
    perfect = [[0.0, 0.0, 9.0], [0.0, 0.0, 9.0]]
    weight, curve = choose_fusion_weight(ids, first, perfect, relevance)
    assert curve[1.0] == pytest.approx(1.0) and curve[0.0] == pytest.approx(0.5)
    assert weight == min(w for w, v in curve.items() if v == pytest.approx(1.0)) and 0.0 < weight < 1.0
    # A reranker that ranks relevant chunks last gets no say: the smallest weight wins the tie.
    relevance = [{"a": 1}, {"d": 1}]
    assert choose_fusion_weight(ids, first, perfect, relevance)[0] == 0.0


def test_choose_fusion_weight_ignores_a_gain_within_one_standard_error() -> None:
    # The reranker fixes q1 and q3 but breaks q2: best mean at w=1, yet the per-query gaps vary too much.
    ids = [["x", "rel"], ["rel", "x"], ["x", "rel"]]
    first = [[0.9, 0.8]] * 3
    second = [[0.0, 1.0], [0.0, 1.0], [0.0, 1.0]]  # always prefers the second candidate
    relevance = [{"rel": 1}] * 3
    weight, curve = choose_fusion_weight(ids, first, second, relevance, grid=(0.0, 1.0))
    assert curve[1.0] > curve[0.0] and weight == 0.0
    # With the gain on every query it is earned.
    assert choose_fusion_weight([ids[0]] * 3, first, second, relevance, grid=(0.0, 1.0))[0] == 1.0
