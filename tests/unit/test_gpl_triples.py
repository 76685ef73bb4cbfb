"""The GPL round's triples: negatives from the tuned embedder's top k without relevant chunks, teacher margins."""

import pytest
import torch

from ragtune.pipeline.dev_slice import assign_dev_ranks, split_dev_queries
from ragtune.pipeline.retrieval import DenseRetriever
from ragtune.stages.gpl.triples import gpl_queries, label_triples, mine_negatives


class LengthTeacher:
    """A stand-in cross-encoder: a pair scores the length of its passage; it records every predict call."""

    def __init__(self) -> None:
        self.calls: list[tuple[list, int]] = []

    def predict(self, pairs, batch_size, show_progress_bar):
        self.calls.append((list(pairs), batch_size))
        return [float(len(passage)) for _, passage in pairs]


def _retriever(n: int, order: list[int]) -> DenseRetriever:
    """A retriever over ``n`` chunks whose every query ranks them in ``order`` (best first)."""
    corpus = [{"id": f"c{i}", "doc_id": f"d{i}", "text": "x" * (i + 1)} for i in range(n)]
    retriever = DenseRetriever(None, corpus, torch.eye(n))
    weights = torch.zeros(n)
    weights[order] = torch.linspace(1.0, 0.5, len(order))
    retriever.encode_queries = lambda texts: weights.repeat(len(texts), 1)
    return retriever


def test_negatives_come_from_the_top_k_and_never_from_the_querys_relevant_chunks() -> None:
    retriever = _retriever(8, [3, 0, 5, 1, 7, 2, 6, 4])
    rows = [{"query": "q", "relevant": ["c3", "c5"]}, {"query": "p", "relevant": ["c0"]}]
    negatives = mine_negatives(retriever, rows, count=2, top_k=3, seed=0)
    # The top 3 once the relevant chunks are gone: c0, c1, c7 for the first row; c3, c5, c1 for the second.
    assert set(negatives[0]) < {"c0", "c1", "c7"} and set(negatives[1]) < {"c3", "c5", "c1"}
    assert all(len(n) == 2 for n in negatives)
    assert mine_negatives(retriever, rows, count=2, top_k=3, seed=0) == negatives  # seeded
    assert mine_negatives(retriever, rows, count=5, top_k=3, seed=0) == [["c0", "c1", "c7"], ["c3", "c5", "c1"]]


def test_every_positive_negative_pair_is_one_triple_with_the_teachers_margin() -> None:
    chunks = {f"c{i}": {"id": f"c{i}", "text": "x" * (i + 1)} for i in range(4)}
    rows = [
        {"qid": "a", "query": "qa", "positives": [("c3", "xxxx"), ("c2", "xxx")], "relevant": ["c3", "c2"]},
        {"qid": "b", "query": "qb", "positives": [("c0", "passage without its sentence")], "relevant": ["c0"]},
        {"qid": "c", "query": "qc", "positives": [("c1", "xx")], "relevant": ["c1"]},
    ]
    teacher = LengthTeacher()
    triples = label_triples(teacher, rows, [["c0", "c1"], ["c2"], []], chunks, batch_size=7)
    assert len(teacher.calls) == 1 and teacher.calls[0][1] == 7  # one batched predict for every pair
    assert [(t["qid"], t["positive_id"], t["negative_id"]) for t in triples] == [
        ("a", "c3", "c0"),
        ("a", "c3", "c1"),
        ("a", "c2", "c0"),
        ("a", "c2", "c1"),
        ("b", "c0", "c2"),
    ]  # a row without negatives gives none
    assert [t["margin"] for t in triples] == [3.0, 2.0, 2.0, 1.0, pytest.approx(28.0 - 3.0)]
    assert triples[4]["positive"] == "passage without its sentence"  # an inverse-cloze passage as given


def test_training_queries_are_train_split_outside_the_dev_slice_and_pseudo_queries_avoid_held_out_documents() -> None:
    text = "Chunk {} tells the heron failover story well. Operators read it before any change is made."
    corpus = [{"id": f"c{i}", "doc_id": f"d{i}", "text": text.format(i)} for i in range(20)]
    queries = [
        {"qid": f"q{i}", "text": f"q{i}", "positives": [f"c{i}"], "relevance": {f"c{i}": 1, f"c{(i + 1) % 20}": 1}}
        | {"doc_ids": [f"d{i}"], "split": "eval" if i < 4 else "train"}
        for i in range(20)
    ]
    rows, dev, n_pseudo = gpl_queries(assign_dev_ranks(queries, 1), corpus, 0.4, 100, seed=0)
    # Stage 1's dev slice, exactly: the same function on the same rows.
    assert dev == split_dev_queries([q for q in assign_dev_ranks(queries, 1) if q["split"] == "train"], 0.4)[1]
    labelled = [r for r in rows if not r["qid"].startswith("ict-")]
    # 16 train documents ranked in sixteenths: the 7 below 0.4 are the dev slice
    assert len(dev) == 7 and {r["qid"] for r in labelled} == {f"q{i}" for i in range(4, 20)} - {q["qid"] for q in dev}
    # Every labelled relevant chunk is kept out of the negatives, not only the positives.
    assert all(set(r["relevant"]) == {r["positives"][0][0], f"c{(int(r['qid'][1:]) + 1) % 20}"} for r in labelled)
    # Two inverse-cloze queries per chunk of the 9 documents no eval or dev query cites, none of the others.
    held_out = {d for q in queries[:4] + dev for d in q["doc_ids"]}
    pseudo_docs = {"d" + r["qid"].split("-")[1][1:] for r in rows if r["qid"].startswith("ict-")}
    assert n_pseudo == 2 * 9 and len(held_out) == 11 and not pseudo_docs & held_out
