"""Batched retrieval shared by mining, RAFT building and evaluation.

Corpus embeddings are computed once per (model, corpus) pair and cached on disk by content hash, always at
the model's full dimension; an embedder served truncated (``assemble.truncate_dim``) cuts the cached vectors
and renormalises them, which is what sentence-transformers' ``truncate_dim`` gives, so one file serves every
dimension and never holds vectors of two. Queries are encoded in batches; scores are one matrix product and
exact top-k (no approximate index, no per-query Python loop); reranking scores every (query, candidate) pair
in one batched ``predict`` call of the reranker, either kind (:class:`Reranker`).

Example (a sketch over a finished run, not run as a doctest):
    retriever = DenseRetriever.load("bundled:minilm-l6", corpus, cache_dir=run.path(EMBEDDING_CACHE))
    scores, ids = retriever.search(["how do I fail over Heron?"], k=10)
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import torch

from ragtune.pipeline.config import ConfigError
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.ranking import fuse_scores, mean_metrics, per_query_metrics
from ragtune.pipeline.rundir import atomic_file, hash_path, is_main_process

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)


def corpus_hash(corpus: Sequence[dict]) -> str:
    """Content hash of a corpus (chunk ids and texts, in order)."""
    h = hashlib.sha256()
    for row in corpus:
        h.update(row["id"].encode())
        h.update(b"\0")
        h.update(row["text"].encode())
        h.update(b"\1")
    return h.hexdigest()[:16]


def model_hash(model_path: str) -> str:
    """Content hash of a local model folder; a hub id hashes by name (it is pinned by the hub cache)."""
    path = Path(model_path)
    return hash_path(path) if path.exists() else hashlib.sha256(model_path.encode()).hexdigest()[:16]


def embedding_cache_file(cache_dir: Path, model_path: str, corpus: Sequence[dict]) -> Path:
    """Where the corpus embeddings of ``model_path`` are cached: ``<model hash>-<corpus hash>.pt``."""
    return Path(cache_dir) / f"{model_hash(model_path)}-{corpus_hash(corpus)}.pt"


def check_truncate_dim(model: SentenceTransformer, truncate_dim: int | None, name: str) -> None:
    """Refuse an ``assemble.truncate_dim`` above the embedder's own dimension (sentence-transformers would serve
    its full vectors without a word).

    Args:
        model: a loaded ``SentenceTransformer``.
        truncate_dim: the dimension it is to serve (None: full).
        name: the model's path or reference, for the message.

    Raises:
        ConfigError: naming ``assemble.truncate_dim``, the embedder and its dimension.
    """
    if truncate_dim is None:
        return
    with model.truncate_embeddings(None):
        dim = model.get_embedding_dimension()
    if truncate_dim > dim:
        raise ConfigError(f"assemble.truncate_dim: {truncate_dim} exceeds the embedding dimension {dim} of {name}")


def load_embedder(model_path: str, truncate_dim: int | None = None) -> SentenceTransformer:
    """The ``SentenceTransformer`` in ``model_path``, encoding at ``truncate_dim`` (its own ``truncate_dim``: every
    ``encode*`` cuts the vectors, then normalises them when asked).

    Raises:
        ConfigError: ``truncate_dim`` exceeds the model's dimension (:func:`check_truncate_dim`).
    """
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_path, truncate_dim=truncate_dim)
    check_truncate_dim(model, truncate_dim, model_path)
    return model


def truncate_normalized(embeddings: torch.Tensor, dim: int | None) -> torch.Tensor:
    """Normalised embeddings cut to their first ``dim`` columns and normalised again.

    The same vectors, up to rounding, as sentence-transformers' ``encode(..., truncate_dim=dim,
    normalize_embeddings=True)``, which cuts before it normalises: the cut of a normalised vector differs from the
    cut of the raw one only by a scale, which normalising removes.

    Example:
        >>> truncate_normalized(torch.tensor([[0.6, 0.0, 0.8], [0.0, 0.6, 0.8]]), 2)
        tensor([[1., 0.],
                [0., 1.]])
        >>> truncate_normalized(torch.tensor([[0.6, 0.8]]), None)   # None (or the full dimension): unchanged
        tensor([[0.6000, 0.8000]])
    """
    if dim is None or dim >= embeddings.shape[-1]:
        return embeddings
    from sentence_transformers.util import truncate_embeddings

    return torch.nn.functional.normalize(truncate_embeddings(embeddings, dim), dim=-1)


def encode_corpus(
    model: SentenceTransformer, corpus: Sequence[dict], batch_size: int = 64, name: str = "the model in memory"
) -> torch.Tensor:
    """Normalised document embeddings of the corpus at the model's full dimension, its ``truncate_dim`` set aside
    (the form the cache holds); on the CPU."""
    logger.info("corpus embeddings of %s (%d chunks): encoding", name, len(corpus))
    with model.truncate_embeddings(None):
        return model.encode_document(
            [row["text"] for row in corpus],
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=is_main_process(),
        ).cpu()


def write_embedding_cache(cache: Path, embeddings: torch.Tensor) -> bool:
    """Write full-dimension corpus embeddings to their cache file, atomically, on the main process only.

    Returns:
        Whether this process wrote it.
    """
    if not is_main_process():
        return False
    with atomic_file(cache) as tmp:
        torch.save(embeddings, tmp)
    return True


SCORE_BLOCK_MB = 256  # default of ``run.score_block_mb``


def query_block(n_corpus: int, score_block_mb: float = SCORE_BLOCK_MB) -> int:
    """Queries per block so that a (block, n_corpus) float32 score matrix fits in ``score_block_mb`` MiB.

    Example:
        >>> query_block(100_000, 256)   # 256 MiB / (100,000 x 4 bytes)
        671
        >>> query_block(10**9, 1)       # never fewer than one query
        1
    """
    return max(1, int(score_block_mb * 2**20 // (4 * max(1, n_corpus))))


def exact_top_k(
    queries: torch.Tensor, corpus: torch.Tensor, k: int, score_block_mb: float = SCORE_BLOCK_MB
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact top-``k`` by dot product, in query blocks so no score matrix exceeds ``score_block_mb`` MiB.

    Args:
        queries: (q, d) embeddings (normalised for cosine).
        corpus: (n, d) embeddings.
        k: neighbours per query (clipped to n).
        score_block_mb: memory bound of one block's (queries, n) float32 scores.

    Returns:
        (scores, indices), each (q, min(k, n)), best first.
    """
    k = min(k, corpus.shape[0])
    block = query_block(corpus.shape[0], score_block_mb)
    scores, indices = [], []
    for start in range(0, queries.shape[0], block):
        s, i = torch.topk(queries[start : start + block] @ corpus.T, k, dim=1)
        scores.append(s)
        indices.append(i)
    if not scores:
        return torch.empty(0, k), torch.empty(0, k, dtype=torch.long)
    return torch.cat(scores), torch.cat(indices)


class DenseRetriever:
    """A bi-encoder over a fixed corpus with cached, normalised corpus embeddings.

    A model loaded with ``truncate_dim`` (:func:`load_embedder`) retrieves at that dimension: its queries are cut
    by sentence-transformers, the corpus embeddings by :func:`truncate_normalized`.

    Args:
        model: a loaded ``SentenceTransformer``.
        corpus: chunk rows (``id``, ``text``).
        embeddings: (n, d) normalised corpus embeddings at the model's full dimension (as the cache holds them),
            aligned with ``corpus``.
        score_block_mb: memory bound of any (queries, n) score matrix it holds (``run.score_block_mb``).
    """

    def __init__(
        self, model, corpus: Sequence[dict], embeddings: torch.Tensor, score_block_mb: float = SCORE_BLOCK_MB
    ) -> None:
        self.model = model
        self.corpus = list(corpus)
        self.ids = [row["id"] for row in corpus]
        self.positions = {cid: i for i, cid in enumerate(self.ids)}
        self.truncate_dim: int | None = getattr(model, "truncate_dim", None)
        self.embeddings = truncate_normalized(embeddings, self.truncate_dim)
        self.score_block_mb = score_block_mb

    @classmethod
    def load(
        cls,
        model_ref: str,
        corpus: Sequence[dict],
        cache_dir: Path | None = None,
        batch_size: int = 64,
        score_block_mb: float = SCORE_BLOCK_MB,
        truncate_dim: int | None = None,
    ) -> DenseRetriever:
        """Load the embedder (at ``truncate_dim``, :func:`load_embedder`) and encode (or read from cache) the corpus.

        The cache file is ``<cache_dir>/<model hash>-<corpus hash>.pt``: a changed model or corpus
        never reuses stale vectors, and a rerun never re-encodes an unchanged corpus. Every consumer
        (round trip, stage 1's evaluations, mining, RAFT, the eval harness, the assembled index) reads
        this one file, so each (model, corpus) pair is encoded once per run; the log says which. It holds
        full-dimension vectors whatever ``truncate_dim`` is: the retriever cuts them.

        Raises:
            ConfigError: ``truncate_dim`` exceeds the model's dimension.
        """
        path = resolve_model(model_ref)
        model = load_embedder(path, truncate_dim)
        return cls.from_model(model, path, corpus, cache_dir, batch_size, score_block_mb, name=model_ref)

    @classmethod
    def from_model(
        cls,
        model,
        model_path: str,
        corpus: Sequence[dict],
        cache_dir: Path | None = None,
        batch_size: int = 64,
        score_block_mb: float = SCORE_BLOCK_MB,
        name: str | None = None,
    ) -> DenseRetriever:
        """The retriever of an already loaded model (e.g. :meth:`ragtune.pipeline.stack.StackLoader.embedder`'s),
        over ``cache_dir``'s corpus embeddings of ``model_path`` (:meth:`cached`), or encoding them when
        ``cache_dir`` is None (:meth:`encode`). A model with ``truncate_dim`` retrieves with the cached full-dimension
        vectors cut."""
        if cache_dir is None:
            return cls.encode(model, corpus, batch_size, score_block_mb, name=name or model_path)
        return cls.cached(model, model_path, corpus, cache_dir, batch_size, score_block_mb, name=name)

    @classmethod
    def cached(
        cls,
        model,
        model_path: str,
        corpus: Sequence[dict],
        cache_dir: Path,
        batch_size: int = 64,
        score_block_mb: float = SCORE_BLOCK_MB,
        name: str | None = None,
    ) -> DenseRetriever:
        """A loaded model's retriever over the run's cache: read ``model_path``'s file, or encode once and store it
        (full-dimension vectors either way; a model with ``truncate_dim`` retrieves with them cut)."""
        name, cache = name or model_path, embedding_cache_file(cache_dir, model_path, corpus)
        if cache.exists():
            logger.info("corpus embeddings of %s (%d chunks): read from %s", name, len(corpus), cache.name)
            return cls(model, corpus, torch.load(cache), score_block_mb)
        embeddings = encode_corpus(model, corpus, batch_size, name)
        write_embedding_cache(cache, embeddings)
        return cls(model, corpus, embeddings, score_block_mb)

    @classmethod
    def encode(
        cls,
        model,
        corpus: Sequence[dict],
        batch_size: int = 64,
        score_block_mb: float = SCORE_BLOCK_MB,
        name: str = "the model in memory",
    ) -> DenseRetriever:
        """Encode the corpus with a loaded model (no cache read; :meth:`save_cache` stores it once saved)."""
        return cls(model, corpus, encode_corpus(model, corpus, batch_size, name), score_block_mb)

    def save_cache(self, cache_dir: Path, model_path: str) -> Path | None:
        """Store the corpus embeddings as the cache file of ``model_path`` (main process; atomic).

        Raises:
            ValueError: the retriever's vectors are truncated; the cache holds full-dimension ones only.
        """
        if self.truncate_dim is not None:
            raise ValueError(f"{model_path}: vectors truncated to {self.truncate_dim} dimensions are not cached")
        cache = embedding_cache_file(cache_dir, model_path, self.corpus)
        return cache if write_embedding_cache(cache, self.embeddings) else None

    def encode_queries(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Normalised query embeddings in batches (through the model's query route, if it has one)."""
        return self.model.encode_query(
            list(texts),
            batch_size=batch_size,
            convert_to_tensor=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        ).cpu()

    def _embedded(self, queries: Sequence[str] | torch.Tensor) -> torch.Tensor:
        return queries if isinstance(queries, torch.Tensor) else self.encode_queries(queries)

    def search(self, queries: Sequence[str] | torch.Tensor, k: int) -> tuple[list[list[float]], list[list[str]]]:
        """Top-``k`` chunk ids and cosine scores for every query (texts, or their ``encode_queries``), best first."""
        scores, indices = exact_top_k(self._embedded(queries), self.embeddings, k, self.score_block_mb)
        return scores.tolist(), [[self.ids[i] for i in row] for row in indices.tolist()]

    def ranks(self, queries: Sequence[str] | torch.Tensor, chunk_ids: Sequence[str]) -> list[int]:
        """1-based rank of ``chunk_ids[i]`` among the whole corpus for ``queries[i]`` (texts, or their
        ``encode_queries``); chunks scoring the same as it do not count against it.

        Exact, with no top-k cut: one matrix product per block of queries (the data stage's round trip).

        Example (over a loaded retriever, not run as a doctest):
            retriever.ranks(["how long is the VPN token valid?"], ["vpn-0003"])
            # -> [1]
        """
        if not chunk_ids:
            return []
        queries = self._embedded(queries)
        target = torch.tensor([self.positions[c] for c in chunk_ids], dtype=torch.long)
        ranks: list[int] = []
        block = query_block(len(self.ids), self.score_block_mb)
        for start in range(0, queries.shape[0], block):
            scores = queries[start : start + block] @ self.embeddings.T
            own = scores.gather(1, target[start : start + block, None])
            ranks += ((scores > own).sum(dim=1) + 1).tolist()
        return ranks

    def similarities(
        self, queries: Sequence[str] | torch.Tensor, candidate_ids: Sequence[Sequence[str]]
    ) -> list[list[float]]:
        """Cosine scores of the given chunk ids for every query (texts, or their ``encode_queries``).

        For candidate lists the search did not produce, e.g. a retrieved pool with the labelled positives added.
        """
        queries = self._embedded(queries)
        rows = [torch.tensor([self.positions[c] for c in ids], dtype=torch.long) for ids in candidate_ids]
        return [(self.embeddings[idx] @ q).tolist() for q, idx in zip(queries, rows, strict=True)]


def retrieval_metrics(retriever: DenseRetriever, queries: Sequence[dict], k_values: Sequence[int]) -> dict[str, float]:
    """Mean ``hit@k``, ``recall@k``, ``mrr@10`` and ``ndcg@10`` of ``queries`` over the retriever's whole corpus.

    Relevance is binary (each of a query's ``positives`` counts 1), as in sentence-transformers'
    ``InformationRetrievalEvaluator``; one batched query encode and one exact top-k. Stage 1's held-out and
    dev figures and the GPL round's dev figure are this function, so the promotion gate compares like with like.

    Returns:
        Metric name -> mean over the queries; ``{}`` for no query.
    """
    if not queries:
        return {}
    ks = sorted(set(k_values))
    _, ranked = retriever.search([q["text"] for q in queries], k=max([*ks, 10]))
    rows = [per_query_metrics(r, dict.fromkeys(q["positives"], 1), ks) for r, q in zip(ranked, queries, strict=True)]
    return mean_metrics(rows)


FUSION_FILE = "ragtune_fusion.json"


def load_fusion_weight(reranker_path: str | Path) -> float:
    """The fusion weight the rerank stage chose for this reranker (``FUSION_FILE`` in its folder).

    A reranker without the file (a base encoder, a hub cross-encoder) reranks plainly: weight 1.0.
    """
    path = Path(reranker_path) / FUSION_FILE
    if not path.is_file():
        return 1.0
    return float(json.loads(path.read_text(encoding="utf-8"))["fusion_weight"])


class Reranker(Protocol):
    """What every consumer needs of a reranker, either kind: the query-likelihood scorer
    (:class:`ragtune.pipeline.query_likelihood.QueryLikelihoodReranker`) or a sentence-transformers ``CrossEncoder``.
    Higher scores rank first."""

    def predict(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = ..., show_progress_bar: bool = ...
    ) -> Sequence[float]: ...


def reranker_scores(
    reranker: Reranker,
    queries: Sequence[str],
    candidates: Sequence[Sequence[dict]],
    batch_size: int = 64,
    show_progress_bar: bool = False,
) -> list[list[float]]:
    """The reranker's scores of every (query, candidate chunk) pair, from one batched ``predict`` call.

    Args:
        show_progress_bar: the library's bar over the batches (on the main process only), for long scorings
            such as the GPL round's teacher labels.

    Returns:
        Per query, one score per candidate, in the candidates' order.
    """
    pairs = [(q, c["text"]) for q, cands in zip(queries, candidates, strict=True) for c in cands]
    bar = show_progress_bar and is_main_process()
    flat = reranker.predict(pairs, batch_size=batch_size, show_progress_bar=bar) if pairs else []
    out, pos = [], 0
    for cands in candidates:
        out.append([float(s) for s in flat[pos : pos + len(cands)]])
        pos += len(cands)
    return out


def rerank(
    reranker: Reranker,
    queries: Sequence[str],
    candidates: Sequence[Sequence[dict]],
    first_scores: Sequence[Sequence[float]] | None = None,
    fusion_weight: float = 1.0,
    batch_size: int = 64,
) -> list[list[tuple[dict, float]]]:
    """Rerank every query's candidates: one batched reranker call, then sort.

    Args:
        reranker: a loaded reranker of either kind (:class:`Reranker`).
        queries: query texts.
        candidates: per query, chunk rows (``text``) to rerank.
        first_scores: per query, the retriever's scores of the candidates (needed when ``fusion_weight < 1``).
        fusion_weight: 1.0 sorts by the reranker alone; below 1 by
            :func:`ragtune.pipeline.ranking.fuse_scores` of retriever and reranker scores.

    Returns:
        Per query, ``(chunk, score)`` pairs sorted by score, best first (ties keep the candidates' order).
    """
    scores = reranker_scores(reranker, queries, candidates, batch_size)
    if fusion_weight < 1.0:
        if first_scores is None:
            raise ValueError(f"fusion weight {fusion_weight} needs the retriever's scores (first_scores)")
        scores = [fuse_scores(f, s, fusion_weight) for f, s in zip(first_scores, scores, strict=True)]
    ranked = zip(candidates, scores, strict=True)
    return [sorted(zip(cands, row, strict=True), key=lambda cs: -cs[1]) for cands, row in ranked]
