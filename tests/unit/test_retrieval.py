import json
from pathlib import Path

import pytest
import torch

from ragtune.pipeline.config import ConfigError
from ragtune.pipeline.retrieval import (
    FUSION_FILE,
    DenseRetriever,
    corpus_hash,
    exact_top_k,
    load_embedder,
    load_fusion_weight,
    query_block,
    rerank,
    truncate_normalized,
)


def test_exact_top_k_matches_full_sort_across_blocks() -> None:
    torch.manual_seed(0)
    q, c = torch.randn(7, 5), torch.randn(40, 5)
    three_queries = 3 * 40 * 4 / 2**20  # MiB of a (3, 40) float32 block
    assert query_block(40, three_queries) == 3
    scores, idx = exact_top_k(q, c, k=4, score_block_mb=three_queries)
    full = torch.argsort(q @ c.T, dim=1, descending=True)[:, :4]
    assert torch.equal(idx, full)
    assert torch.allclose(scores, torch.gather(q @ c.T, 1, full))
    assert exact_top_k(q, c[:2], k=10)[1].shape == (7, 2)


def test_retriever_caches_corpus_embeddings_by_content(tiny_bert_dir: Path, tmp_path: Path) -> None:
    corpus = [{"id": f"c{i}", "text": f"Heron berth number {i} routes orders."} for i in range(6)]
    cache = tmp_path / "emb"
    r = DenseRetriever.load(str(tiny_bert_dir), corpus, cache_dir=cache)
    [cached] = list(cache.iterdir())
    assert corpus_hash(corpus) in cached.name
    scores, ids = r.search([corpus[3]["text"]], k=3)
    assert ids[0][0] == "c3" and scores[0][0] >= scores[0][1]
    # Scores of given ids (e.g. a pool plus positives) equal the search's scores for the same ids.
    assert r.similarities([corpus[3]["text"]], [ids[0][::-1]])[0] == pytest.approx(scores[0][::-1], abs=1e-6)
    # Reloading reads the cache (poisoned here to prove it is read, not recomputed).
    torch.save(torch.zeros_like(r.embeddings), cached)
    assert torch.count_nonzero(DenseRetriever.load(str(tiny_bert_dir), corpus, cache_dir=cache).embeddings) == 0
    # A changed corpus gets its own cache file.
    DenseRetriever.load(str(tiny_bert_dir), [*corpus, {"id": "new", "text": "x"}], cache_dir=cache)
    assert len(list(cache.iterdir())) == 2


def test_a_truncated_retriever_serves_cut_vectors_and_the_cache_keeps_full_ones(
    tiny_bert_dir: Path, tmp_path: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    corpus = [{"id": f"c{i}", "text": f"Heron berth number {i} routes orders."} for i in range(6)]
    texts, query = [c["text"] for c in corpus], ["which berth routes orders"]
    cache = tmp_path / "emb"
    full_dim = SentenceTransformer(str(tiny_bert_dir)).get_embedding_dimension()
    # Truncated first: the cache file it writes still holds full vectors.
    cut = DenseRetriever.load(str(tiny_bert_dir), corpus, cache_dir=cache, truncate_dim=16)
    [cached] = list(cache.iterdir())
    assert torch.load(cached).shape == (6, full_dim) == (6, 32)
    assert cut.embeddings.shape == (6, 16) and cut.encode_queries(query).shape == (1, 16)
    # The cut cached vectors are sentence-transformers' own truncate_dim vectors (cut, then normalised).
    library = SentenceTransformer(str(tiny_bert_dir), truncate_dim=16)
    assert torch.allclose(
        cut.embeddings, library.encode_document(texts, convert_to_tensor=True, normalize_embeddings=True), atol=1e-5
    )
    assert torch.allclose(cut.embeddings.norm(dim=1), torch.ones(6), atol=1e-5)
    # A full retriever reads the same file and gets full vectors, never the truncated ones.
    full = DenseRetriever.load(str(tiny_bert_dir), corpus, cache_dir=cache)
    assert full.embeddings.shape == (6, 32) and len(list(cache.iterdir())) == 1
    assert torch.equal(truncate_normalized(full.embeddings, 16), cut.embeddings)
    # ... and a truncated retriever reading a cache a full one wrote cuts it the same way.
    again = DenseRetriever.load(str(tiny_bert_dir), corpus, cache_dir=cache, truncate_dim=8)
    assert again.embeddings.shape == (6, 8) and again.encode_queries(query).shape == (1, 8)
    with pytest.raises(ValueError, match="not cached"):
        again.save_cache(cache, str(tiny_bert_dir))


def test_a_truncate_dim_above_the_model_dimension_names_the_key(tiny_bert_dir: Path) -> None:
    with pytest.raises(ConfigError, match=r"assemble\.truncate_dim: 64 exceeds the embedding dimension 32"):
        load_embedder(str(tiny_bert_dir), 64)
    assert load_embedder(str(tiny_bert_dir), 32).encode(["x"]).shape == (1, 32)  # the full dimension is allowed


class _LengthScorer:
    """Stands in for a CrossEncoder: scores a pair by passage length; records batch calls."""

    calls = 0

    def predict(self, pairs, batch_size=32, show_progress_bar=False):
        _LengthScorer.calls += 1
        return [float(len(p[1])) for p in pairs]


def test_rerank_scores_all_pairs_in_one_call_and_sorts() -> None:
    cands = [[{"text": "aa"}, {"text": "aaaa"}, {"text": "a"}], [{"text": "bbb"}]]
    out = rerank(_LengthScorer(), ["q1", "q2"], cands)
    assert _LengthScorer.calls == 1
    assert [c["text"] for c, _ in out[0]] == ["aaaa", "aa", "a"] and out[1][0][1] == 3.0


def test_rerank_with_fusion_weight_zero_keeps_the_retriever_order() -> None:
    cands = [[{"text": "aa"}, {"text": "aaaa"}, {"text": "a"}]]
    first = [[0.9, 0.5, 0.1]]
    assert [c["text"] for c, _ in rerank(_LengthScorer(), ["q"], cands, first, 0.0)[0]] == ["aa", "aaaa", "a"]
    assert [c["text"] for c, _ in rerank(_LengthScorer(), ["q"], cands, first, 0.5)[0]] == ["aaaa", "aa", "a"]
    with pytest.raises(ValueError, match="first_scores"):
        rerank(_LengthScorer(), ["q"], cands, None, 0.5)


def test_fusion_weight_travels_with_the_reranker_folder(tmp_path: Path) -> None:
    assert load_fusion_weight(tmp_path) == 1.0  # a base or hub cross-encoder reranks plainly
    (tmp_path / FUSION_FILE).write_text(json.dumps({"fusion_weight": 0.3}))
    assert load_fusion_weight(tmp_path) == 0.3


def test_ranks_and_search_are_the_same_in_any_block_size() -> None:
    torch.manual_seed(1)
    corpus = [{"id": f"c{i}", "text": str(i)} for i in range(30)]
    emb, queries = torch.randn(30, 4), torch.randn(9, 4)
    targets = [f"c{i}" for i in range(9)]
    one_query = 30 * 4 / 2**20  # a block of one query
    small, large = DenseRetriever(None, corpus, emb, one_query), DenseRetriever(None, corpus, emb)
    scores = queries @ emb.T
    expected = [int((scores[i] > scores[i, i]).sum()) + 1 for i in range(9)]
    assert small.ranks(queries, targets) == large.ranks(queries, targets) == expected
    assert small.search(queries, 5)[1] == large.search(queries, 5)[1]
