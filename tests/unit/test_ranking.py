import math

import pytest

from pipeline.ranking import hit_at_k, mean_metrics, mrr_at_k, ndcg_at_k, per_query_metrics, recall_at_k


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
