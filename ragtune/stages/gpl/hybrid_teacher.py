"""``gpl.teacher: hybrid``: the untrained hybrid retriever as the GPL round's teacher.

GPL needs a teacher that ranks better than its student. Without labels or a downloadable cross-encoder, the one
ragtune always has is hybrid retrieval: BM25 fused with the base embedder by reciprocal rank
(:mod:`ragtune.pipeline.hybrid`), the eval's ``rag_hybrid`` baseline. :class:`HybridTeacher` scores a (query,
passage) pair with the fused score the passage would get in that retriever's ranking of the corpus: its rank among
the corpus chunks under BM25 and under the base embedder, each turned into ``1 / (RRF_K + rank)`` within the top
``depth`` (a BM25 score of 0 counts for nothing, as in serving). A passage that is not a corpus chunk (an
inverse-cloze positive: its chunk without the sentence) is ranked against the corpus chunks as if it were one.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy
import torch

from ragtune.pipeline.hybrid import RRF_K, bm25_rankings, bm25_retriever, fuse_rankings
from ragtune.pipeline.retrieval import SCORE_BLOCK_MB, DenseRetriever, encode_corpus, query_block


def rank_against(corpus_scores: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Row by row, the 1-based rank ``scores[i]`` would take among ``corpus_scores[i]`` (ties do not count against it).

    Example:
        >>> rank_against(torch.tensor([[0.9, 0.5, 0.1], [0.9, 0.5, 0.1]]), torch.tensor([0.5, 0.0])).tolist()
        [2, 4]
    """
    return (corpus_scores > scores[:, None]).sum(dim=1) + 1


def fused_rank_scores(
    dense_ranks: torch.Tensor, bm25_ranks: torch.Tensor, bm25_hit: torch.Tensor, depth: int, k: int = RRF_K
) -> torch.Tensor:
    """Reciprocal-rank fusion of two ranks per passage: ``1 / (k + rank)`` from each list whose top ``depth`` holds it;
    BM25 counts only where it scored the passage above 0 (``bm25_hit``).

    Example:
        >>> fused_rank_scores(torch.tensor([1, 3]), torch.tensor([1, 60]), torch.tensor([True, True]), 50, k=1)
        tensor([1.0000, 0.2500])
    """
    dense = torch.where(dense_ranks <= depth, 1.0 / (k + dense_ranks), 0.0)
    sparse = torch.where((bm25_ranks <= depth) & bm25_hit, 1.0 / (k + bm25_ranks), 0.0)
    return dense + sparse


class HybridTeacher:
    """Scores (query, passage) pairs as BM25 + the base embedder, fused by reciprocal rank, would rank the passage
    among the corpus chunks (:class:`ragtune.pipeline.retrieval.Reranker`'s ``predict``, so GPL's labelling treats it
    as any reranker), and ranks the corpus itself (``search``, as :class:`ragtune.pipeline.retrieval.DenseRetriever`
    does, so it can mine the negatives: ``gpl.negatives_from: teacher``).

    Args:
        base: the base embedder's retriever over the corpus (cached corpus embeddings).
        depth: the top of each list that counts (``assemble.hybrid_depth``, as served).
        score_block_mb: memory bound of the (queries, corpus) score blocks (``run.score_block_mb``).
    """

    def __init__(self, base: DenseRetriever, depth: int, score_block_mb: float = SCORE_BLOCK_MB) -> None:
        self.base = base
        self.depth = depth
        self.score_block_mb = score_block_mb

    def search(self, queries: Sequence[str], k: int) -> tuple[list[list[float]], list[list[str]]]:
        """The hybrid retriever's top ``k`` chunk ids and fused scores per query, best first (as served)."""
        _, dense = self.base.search(queries, self.depth)
        sparse = bm25_rankings(bm25_retriever(self.base.corpus, self.depth), queries)
        ranked, scores = fuse_rankings(dense, sparse, self.depth, k)
        return scores, ranked

    def predict(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 64, show_progress_bar: bool = False
    ) -> list[float]:
        """The fused score of every pair: one BM25 index, one batch of query and passage encodings for all of them."""
        import bm25s

        if not pairs:
            return []
        corpus = self.base.corpus
        queries = sorted({q for q, _ in pairs})
        column = {row["text"]: i for i, row in enumerate(corpus)}
        extras = [
            {"id": f"gpl-passage-{i}", "text": t} for i, t in enumerate(sorted({p for _, p in pairs} - set(column)))
        ]
        column |= {row["text"]: len(corpus) + i for i, row in enumerate(extras)}
        # 1. BM25 over the corpus and the passages that are not chunks, with the served retriever's tokeniser.
        bm25 = bm25_retriever([*corpus, *extras], 1)
        tokens = bm25s.tokenize(
            queries, stemmer=bm25.stemmer, token_pattern=bm25.token_pattern, return_ids=False, show_progress=False
        )
        # 2. The base embedder's cosine scores over the same rows (the corpus's from the cache).
        passages = self.base.embeddings
        if extras:
            passages = torch.cat([passages, encode_corpus(self.base.model, extras, batch_size, "the base embedder")])
        vectors = self.base.encode_queries(queries, batch_size)
        # 3. Each passage's rank among the corpus chunks in both lists, fused; blocks of queries bound the memory.
        index = {q: i for i, q in enumerate(queries)}
        pair_query = torch.tensor([index[q] for q, _ in pairs])
        pair_column = torch.tensor([column[p] for _, p in pairs])
        n, block, fused = len(corpus), query_block(passages.shape[0], self.score_block_mb), torch.zeros(len(pairs))
        for start in range(0, len(queries), block):
            dense = vectors[start : start + block] @ passages.T
            sparse = torch.tensor(
                numpy.stack(
                    [bm25.bm25.get_scores(t) if t else numpy.zeros(len(column)) for t in tokens[start : start + block]]
                ),
                dtype=dense.dtype,
            )
            mine = ((pair_query >= start) & (pair_query < start + block)).nonzero().flatten()
            r, c = pair_query[mine] - start, pair_column[mine]
            own_dense, own_sparse = dense[r, c], sparse[r, c]
            ranks = rank_against(dense[r, :n], own_dense), rank_against(sparse[r, :n], own_sparse)
            fused[mine] = fused_rank_scores(*ranks, own_sparse > 0, self.depth)
        return fused.tolist()
