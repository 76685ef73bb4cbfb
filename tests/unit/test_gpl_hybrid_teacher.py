"""``gpl.teacher: hybrid``: a passage scores the fused rank served hybrid retrieval would give it."""

import pytest
import torch

from ragtune.pipeline.config import GplConfig
from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever, fuse_rankings
from ragtune.pipeline.retrieval import DenseRetriever
from ragtune.stages.gpl.hybrid_teacher import HybridTeacher

CORPUS = [
    {"id": "c0", "doc_id": "a", "text": "Heron fails over to the standby router within ninety seconds."},
    {"id": "c1", "doc_id": "b", "text": "The ledgerfish invoice run drains the billing queue every night."},
    {"id": "c2", "doc_id": "c", "text": "Pondview keeps a lease on each shard of the tortoise cluster."},
    {"id": "c3", "doc_id": "d", "text": "Router upgrades wait for the maintenance window on Sunday."},
    {"id": "c4", "doc_id": "e", "text": "A standby shard takes over when its lease is not renewed."},
]


class CharacterModel:
    """A deterministic embedder by letter counts: it ranks unlike BM25, which counts whole words."""

    def _encode(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for i, text in enumerate(texts):
            row = torch.zeros(27)
            for ch in text.lower():
                row[ord(ch) - 97 if "a" <= ch <= "z" else 26] += 1.0
            row[26] += 0.01 * i  # no two passages tie
            rows.append(row / row.norm())
        return torch.stack(rows)

    def encode_query(self, texts: list[str], **kwargs) -> torch.Tensor:
        return self._encode(texts)

    def encode_document(self, texts: list[str], **kwargs) -> torch.Tensor:
        return self._encode(texts)

    def truncate_embeddings(self, dim):
        import contextlib

        return contextlib.nullcontext()


def teacher(depth: int = 50) -> HybridTeacher:
    model = CharacterModel()
    return HybridTeacher(DenseRetriever(model, CORPUS, model.encode_document([c["text"] for c in CORPUS])), depth)


def test_a_corpus_chunk_scores_what_served_hybrid_retrieval_fuses_for_it() -> None:
    queries = ["standby router failover", "lease on a shard"]
    base = teacher().base
    _, dense = base.search(queries, k=len(CORPUS))
    ranked, fused = fuse_rankings(dense, bm25_rankings(bm25_retriever(CORPUS, 5), queries), 50, 10)
    served = {}
    for q, ids, scores in zip(queries, ranked, fused, strict=True):
        served |= {(q, c): s for c, s in zip(ids, scores, strict=True)}
    pairs = [(q, c["text"]) for q in queries for c in CORPUS]
    scores = teacher().predict(pairs)
    for (q, text), score in zip(pairs, scores, strict=True):
        chunk = next(c["id"] for c in CORPUS if c["text"] == text)
        assert abs(score - served.get((q, chunk), 0.0)) < 1e-6, (q, chunk)


def test_a_passage_outside_the_corpus_is_ranked_against_the_corpus_chunks() -> None:
    query = "ledgerfish invoice billing"
    near = "The ledgerfish invoice run drains the billing queue."  # c1 without its last words
    far = "Nothing here matches anything at all."
    near_score, far_score, own_score = teacher().predict([(query, near), (query, far), (query, CORPUS[1]["text"])])
    # The near passage is second to its own chunk in both lists at most: fused ranks 1-2 each.
    assert 2 / 62 - 1e-6 <= near_score <= 2 / 61 + 1e-6 and own_score == pytest.approx(2 / 61)
    assert far_score < near_score and far_score <= 1 / 61 + 1e-6  # no BM25 hit: the dense list alone


def test_only_the_top_depth_of_each_list_counts() -> None:
    query = "standby router failover"
    scores = teacher(depth=1).predict([(query, c["text"]) for c in CORPUS])
    assert sum(s > 0 for s in scores) <= 2  # one chunk from each list at most
    assert max(scores) > 0


def test_its_search_is_the_served_hybrid_ranking() -> None:
    queries = ["standby router failover", "lease on a shard"]
    t = teacher(depth=3)
    _, dense = t.base.search(queries, k=3)
    ranked, fused = fuse_rankings(dense, bm25_rankings(bm25_retriever(CORPUS, 3), queries), 3, 4)
    assert t.search(queries, k=4) == (fused, ranked)


def test_only_the_hybrid_teacher_can_mine_the_negatives() -> None:
    with pytest.raises(ValueError, match="negatives_from: teacher needs"):
        GplConfig(teacher="tuned", negatives_from="teacher")
    assert GplConfig(teacher="hybrid", negatives_from="teacher").negatives_from == "teacher"
