"""The dev slice: ranked once per train document by the data stage, selected by fraction by embed and rerank."""

import itertools

from ragtune.pipeline.dev_slice import (
    CHOSEN_BY_BASE,
    assign_dev_ranks,
    dev_documents,
    rank_documents,
    split_dev_queries,
)


def _ranked(n_queries: int, n_docs: int, seed: int) -> list[dict]:
    queries = [{"qid": f"q{i}", "split": "train", "doc_ids": [f"d{i % n_docs}"]} for i in range(n_queries)]
    return assign_dev_ranks(queries, seed)


def test_dev_slice_is_document_disjoint_and_falls_back_when_too_small() -> None:
    queries = [{"qid": f"q{i}", "split": "train", "doc_ids": [f"d{i % 10}"]} for i in range(40)]
    queries.append({"qid": "straddle", "split": "train", "doc_ids": ["d0", "d1", "d2", "d3", "d4"]})
    queries = assign_dev_ranks(queries, seed=1)
    train, dev = split_dev_queries(queries, 0.3, min_queries=5)
    dev_docs = {d for q in dev for d in q["doc_ids"]}
    train_docs = {d for q in train for d in q["doc_ids"]}
    assert len(dev_docs) == 3 and len(dev) == 12
    assert not dev_docs & train_docs
    assert "straddle" not in {q["qid"] for q in train + dev}

    assert split_dev_queries(queries, 0.3, min_queries=13) == (queries, [])
    assert split_dev_queries(queries, 0.0, min_queries=1) == (queries, [])


def test_ranks_are_per_document_seeded_and_only_on_train_queries() -> None:
    queries = [{"qid": f"q{i}", "split": "train" if i % 4 else "eval", "doc_ids": [f"d{i % 6}"]} for i in range(24)]
    ranked = assign_dev_ranks(queries, seed=3)
    assert all("dev_rank" not in q for q in ranked if q["split"] == "eval")
    ranks = {d: r for q in ranked if q["split"] == "train" for d, r in q["dev_rank"].items()}
    train_docs = {d for q in queries if q["split"] == "train" for d in q["doc_ids"]}
    assert set(ranks) == train_docs and sorted(ranks.values()) == [i / len(train_docs) for i in range(len(train_docs))]
    # every query of a document carries that document's rank; the same seed gives the same ranks
    assert all(q["dev_rank"] == {q["doc_ids"][0]: ranks[q["doc_ids"][0]]} for q in ranked if q["split"] == "train")
    assert assign_dev_ranks(queries, seed=3) == ranked
    assert assign_dev_ranks(queries, seed=4) != ranked


def test_ranks_given_by_the_data_stage_cover_documents_no_query_cites() -> None:
    ranks = rank_documents([f"d{i}" for i in range(10)], seed=1)
    queries = assign_dev_ranks([{"qid": "q", "split": "train", "doc_ids": ["d3"]}], seed=1, ranks=ranks)
    assert queries[0]["dev_rank"] == {"d3": ranks["d3"]}
    assert len(dev_documents(ranks, 0.2)) == 2  # a share of every training document, cited or not


def test_slices_are_nested_and_equal_fractions_hold_out_the_same_queries() -> None:
    queries = _ranked(200, 50, seed=42)
    slices = [{q["qid"] for q in split_dev_queries(queries, f, min_queries=1)[1]} for f in (0.1, 0.2, 0.3, 0.5)]
    assert [len(s) for s in slices] == [20, 40, 60, 100]
    assert all(small < large for small, large in itertools.pairwise(slices))
    # what embed and rerank do with the same fraction: the same dev queries, the same train queries
    assert split_dev_queries(queries, 0.2) == split_dev_queries([dict(q) for q in queries], 0.2)


def test_queries_the_base_embedder_chose_never_judge_on_the_dev_slice() -> None:
    rows = [{"qid": f"h{i}", "split": "train", "doc_ids": [f"d{i}"], "origin": "human"} for i in range(20)]
    rows += [
        {"qid": f"s{i}", "split": "train", "doc_ids": [f"d{i}"], "origin": "synthetic", "round_trip": CHOSEN_BY_BASE}
        for i in range(20)
    ]
    train, dev = split_dev_queries(assign_dev_ranks(rows, 0), 0.5, min_queries=5)
    assert len(dev) == 10 and {q["origin"] for q in dev} == {"human"}
    dev_docs = {d for q in dev for d in q["doc_ids"]}
    assert not any(set(q["doc_ids"]) & dev_docs for q in train)  # nor are they trained on
    assert len(train) == 20


def test_a_query_likelihood_reranker_is_not_judged_on_the_queries_its_own_lm_wrote() -> None:
    from ragtune.pipeline.config import RagtuneConfig
    from ragtune.stages.rerank.mine import rerank_dev_split

    lm = "local:bundled:smollm2-135m-instruct"
    rows = [
        {
            "qid": f"s{i}",
            "split": "train",
            "positives": [f"c{i}"],
            "doc_ids": [f"d{i}"],
            "origin": "synthetic",
            "written_by": lm if i % 2 else "openai:other",
            "round_trip": "bm25",
        }
        for i in range(60)
    ]
    rows = assign_dev_ranks(rows, 0)
    cfg = RagtuneConfig(run={"name": "x"}, data={"docs": "d"}, rerank={"dev_fraction": 0.5})
    dev, kept_out = rerank_dev_split(cfg, rows)
    assert dev and all(q["written_by"] != lm for q in dev)
    assert {q["qid"] for q in dev} < kept_out  # the LM's own dev queries are not judged on, nor trained on
    assert len(kept_out) == len(split_dev_queries(rows, 0.5, min_queries=1)[1])
    cross = RagtuneConfig(run={"name": "x"}, data={"docs": "d"}, rerank={"dev_fraction": 0.5, "kind": "cross_encoder"})
    assert len(rerank_dev_split(cross, rows)[0]) == len(kept_out)  # a cross-encoder wrote nothing: all judge
