"""Rerank training glue: data format per loss, trainer pass-through, train-only grouping, audit, metrics."""

import pytest
from sentence_transformers.base.sampler import BatchSamplers

from ragtune.pipeline.config import ConfigError, RerankConfig
from ragtune.pipeline.precision import bf16_training
from ragtune.stages.rerank.curve import dev_candidates
from ragtune.stages.rerank.mine import format_audit, group_train_queries
from ragtune.stages.rerank.train import (
    build_training_args,
    build_training_columns,
    choose_weight,
    evaluate_reranking,
    score_candidates,
)

CORPUS = {cid: {"id": cid, "doc_id": "d", "text": f"text {cid}"} for cid in ("p1", "p2", "n1", "n2", "n3", "m1")}
ROWS = [
    {"qids": ["a"], "query": "qa", "positives": ["p1"], "relevance": {"p1": 2}, "negatives": ["n1", "n2", "n3"]},
    {"qids": ["b"], "query": "qb", "positives": ["p2"], "relevance": {"p2": 1}, "negatives": ["m1", "n1"]},
    {"qids": ["c"], "query": "qc", "positives": ["p1"], "relevance": {"p1": 2}, "negatives": []},
]


def test_bce_gives_labelled_pairs() -> None:
    cols = build_training_columns(ROWS, CORPUS, "bce", 3)
    assert list(cols) == ["query", "passage", "label"]
    assert list(zip(cols["query"], cols["passage"], cols["label"], strict=True)) == [
        ("qa", "text p1", 1.0),
        ("qa", "text n1", 0.0),
        ("qa", "text n2", 0.0),
        ("qa", "text n3", 0.0),
        ("qb", "text p2", 1.0),
        ("qb", "text m1", 0.0),
        ("qb", "text n1", 0.0),
        ("qc", "text p1", 1.0),
    ]


@pytest.mark.parametrize("loss", ["lambda", "listnet"])
def test_listwise_gives_graded_lists(loss: str) -> None:
    cols = build_training_columns(ROWS, CORPUS, loss, 3)
    assert cols == {
        "query": ["qa", "qb"],
        "docs": [["text p1", "text n1", "text n2", "text n3"], ["text p2", "text m1", "text n1"]],
        "labels": [[2.0, 0.0, 0.0, 0.0], [1.0, 0.0, 0.0]],
    }


def test_mnrl_gives_fixed_width_tuples() -> None:
    cols = build_training_columns(ROWS, CORPUS, "mnrl", 3)
    assert cols == {
        "query": ["qa", "qb"],
        "positive": ["text p1", "text p2"],
        "negative_1": ["text n1", "text m1"],
        "negative_2": ["text n2", "text n1"],
    }


def test_trainer_keys_pass_through_and_user_keys_win(tmp_path) -> None:
    trainer = {"learning_rate": 1e-4, "gradient_accumulation_steps": 2}
    cfg = RerankConfig(cross_encoder={"loss": "mnrl"}, batch_size=8, trainer=trainer)
    args = build_training_args(cfg, str(tmp_path / "out"), seed=7)
    assert args.learning_rate == 1e-4 and args.gradient_accumulation_steps == 2
    assert args.per_device_train_batch_size == 8 and args.seed == 7
    assert args.ddp_find_unused_parameters is False
    assert args.bf16 is bf16_training()
    assert build_training_args(RerankConfig(trainer={"bf16": False}), str(tmp_path), seed=0).bf16 is False
    assert args.batch_sampler == BatchSamplers.NO_DUPLICATES
    assert args.output_dir == str(tmp_path / "out")


def test_unknown_trainer_key_names_its_path(tmp_path) -> None:
    with pytest.raises(ConfigError, match=r"rerank\.trainer\.learning_rat\b"):
        build_training_args(RerankConfig(trainer={"learning_rat": 1e-4}), str(tmp_path), seed=0)
    with pytest.raises(ConfigError, match=r"rerank\.trainer\.output_dir"):
        build_training_args(RerankConfig(trainer={"output_dir": "/elsewhere"}), str(tmp_path), seed=0)


def test_only_train_queries_are_grouped_for_mining() -> None:
    queries = [
        {"qid": "t1", "text": "same", "positives": ["a"], "relevance": {"a": 2, "b": 1}, "split": "train"},
        {"qid": "t2", "text": "same", "positives": ["c"], "relevance": {"c": 2, "b": 2}, "split": "train"},
        {"qid": "e1", "text": "held out", "positives": ["d"], "relevance": {"d": 2}, "split": "eval"},
    ]
    groups = group_train_queries(queries)
    assert groups == [
        {"qids": ["t1", "t2"], "text": "same", "positives": ["a", "c"], "relevance": {"a": 2, "b": 2, "c": 2}}
    ]


def test_audit_samples_at_most_n_triples_naming_ids() -> None:
    rows = [dict(r, positive_score=0.9, negative_scores=[0.5] * len(r["negatives"])) for r in ROWS]
    text = format_audit(rows, CORPUS, samples=3, seed=0)
    assert text.count("- **Negative** `") == 3 and text.startswith("# Hard-negative audit: 3 of 5")
    assert format_audit(rows, CORPUS, samples=20, seed=0).count("- **Negative** `") == 5


class FakeRetriever:
    def __init__(self, ranking: list[str]) -> None:
        self.corpus = [{"id": cid, "text": cid} for cid in ranking]
        self.ranking = ranking

    def search(self, texts, k):
        top = self.ranking[:k]
        return [[1.0 - i / 10 for i in range(len(top))] for _ in texts], [top for _ in texts]


class FakeCrossEncoder:
    """Scores a passage by its position in a fixed preferred order."""

    def __init__(self, preferred: list[str]) -> None:
        self.preferred = preferred

    def predict(self, pairs, batch_size, show_progress_bar):
        return [-self.preferred.index(passage) for _, passage in pairs]


def test_evaluation_compares_retriever_and_reranked_with_hand_computed_values() -> None:
    retriever = FakeRetriever(["x", "y", "rel", "z"])
    reranker = FakeCrossEncoder(["rel", "x", "y", "z"])
    queries = [{"qid": "e1", "text": "q", "relevance": {"rel": 1}}]
    m = evaluate_reranking(score_candidates(retriever, reranker, queries, top_k=3), queries, fusion_weight=1.0)
    assert m["queries"] == 1 and m["top_k"] == 3 and m["reranker"] == m["retriever+reranker"]
    assert m["retriever"]["mrr@10"] == pytest.approx(1 / 3)
    assert m["retriever"]["ndcg@10"] == pytest.approx(0.5)  # 1 / log2(4)
    assert m["retriever+reranker"]["mrr@10"] == 1.0 and m["retriever+reranker"]["ndcg@10"] == 1.0
    assert m["retriever"]["hit@1"] == 0.0 and m["retriever+reranker"]["hit@1"] == 1.0
    assert m["per_query"] == [{"qid": "e1", "ndcg@10_retriever": 0.5, "ndcg@10_reranked": 1.0}]


def test_evaluation_at_a_fusion_weight_reports_the_fused_order() -> None:
    # Retriever: x (1.0), y (0.9), rel (0.8); the reranker prefers rel only slightly over x in scaled terms.
    retriever = FakeRetriever(["x", "y", "rel"])
    reranker = FakeCrossEncoder(["rel", "x", "y"])  # scores 0, -1, -2 -> scaled rel 1, x 0.5, y 0
    queries = [{"qid": "e1", "text": "q", "relevance": {"rel": 1}}]
    scored = score_candidates(retriever, reranker, queries, top_k=3)
    assert scored.ids == [["x", "y", "rel"]] and scored.reranker == [[-1.0, -2.0, 0.0]]
    # weight 0.2: x = 0.2*0.5 + 0.8*1 = 0.9, rel = 0.2*1 + 0 = 0.2 -> x stays first, rel last.
    low = evaluate_reranking(scored, queries, fusion_weight=0.2)
    assert low["retriever+reranker"]["ndcg@10"] == pytest.approx(low["retriever"]["ndcg@10"])
    assert low["reranker"]["ndcg@10"] == 1.0 and low["fusion_weight"] == 0.2
    # weight 0.8: rel = 0.8, x = 0.4 + 0.2 = 0.6 -> rel first.
    assert evaluate_reranking(scored, queries, fusion_weight=0.8)["retriever+reranker"]["ndcg@10"] == 1.0


def test_choose_weight_auto_gives_a_reranker_that_hurts_on_dev_no_say() -> None:
    retriever = FakeRetriever(["rel", "x", "y"])  # the retriever already ranks the relevant chunk first
    reranker = FakeCrossEncoder(["y", "x", "rel"])  # the reranker puts it last
    dev = dev_candidates(retriever, [{"qid": f"d{i}", "text": "q", "relevance": {"rel": 1}} for i in range(5)], 3)
    weight, record = choose_weight(RerankConfig(), dev, reranker)
    assert weight == 0.0 and "5 queries" in record["fusion_weight_source"]
    assert record["dev_ndcg@10_by_weight"]["0.0"] == 1.0 > record["dev_ndcg@10_by_weight"]["1.0"]
    # A configured number is used as given.
    assert choose_weight(RerankConfig(fusion_weight=0.3), dev, reranker)[0] == 0.3


def test_choose_weight_auto_without_a_dev_slice_gives_the_reranker_no_say() -> None:
    # An unmeasured reranker must not reorder a good retriever (it once took held-out nDCG@10 from 0.91 to 0.65).
    assert dev_candidates(FakeRetriever(["rel"]), [], 3) is None
    weight, record = choose_weight(RerankConfig(), None, FakeCrossEncoder(["rel"]))
    assert weight == 0.0 and "no dev slice" in record["fusion_weight_source"]
