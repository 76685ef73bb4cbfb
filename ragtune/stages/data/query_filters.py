"""Query filters: the checks a synthetic query must pass, each counted for the synth report.

Per candidate (:class:`CandidateFilters`): length bounds, n-gram copies of its chunk, not a question (the
small-model recipe), words borrowed from the few-shot examples. Across all chunks: exact and near duplicates
(:func:`drop_duplicates`, word-set Jaccard). The round trip (:class:`RoundTrip`): the base embedder must rank
the query's own chunk in its top k among the whole corpus. That holds for training queries only: a held-out
query chosen by the base embedder would be one it finds by construction (base hit@k 1.0 on the eval set), so
held-out chunks get a filter no compared model takes part in (:class:`LexicalRoundTrip`, BM25, or none), and
:class:`SplitRoundTrip` sends each chunk to its side's filter.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import TYPE_CHECKING

from ragtune.pipeline.config import SynthConfig
from ragtune.stages.data.query_parsing import STOPWORDS, words

if TYPE_CHECKING:
    from llama_index.retrievers.bm25 import BM25Retriever

    from ragtune.pipeline.retrieval import DenseRetriever

_QUESTION_WORD_TEXT = "what when where which who whom whose why how is are can could do does did should will"
QUESTION_WORDS = frozenset(_QUESTION_WORD_TEXT.split())


def is_question(query: str) -> bool:
    """A question mark at the end, or a question word first."""
    tokens = words(query)
    return query.rstrip().endswith("?") or bool(tokens and tokens[0] in QUESTION_WORDS)


def copies_passage(query: str, passage: str, n: int) -> bool:
    """True when the query repeats ``n`` consecutive words of the passage verbatim.

    Args:
        query: candidate query.
        passage: its chunk's text.
        n: n-gram length (``synth.copy_ngram``).

    Example:
        >>> copies_passage("refunds are paid within thirty days of the return", "All refunds are paid within "
        ...                "thirty days of the return date.", 8)
        True
    """
    q, p = words(query), words(passage)
    grams = {tuple(p[i : i + n]) for i in range(len(p) - n + 1)}
    return any(tuple(q[i : i + n]) in grams for i in range(len(q) - n + 1))


def jaccard(a: AbstractSet[str], b: AbstractSet[str]) -> float:
    """Jaccard similarity of two word sets (1.0 for two empty sets).

    Example:
        >>> jaccard(set(words("how do I reset my password")), set(words("How do I reset my password?")))
        1.0
    """
    return len(a & b) / len(a | b) if a | b else 1.0


def drop_duplicates(queries: list[str], threshold: float) -> tuple[list[int], int, int]:
    """Keep the first of each group of exact or near-duplicate queries.

    Near duplicates are found without comparing all pairs: prefix filtering (Chaudhuri et al. 2006).
    Words are ordered rarest first; if two sets reach Jaccard ``t``, their first
    ``|x| - ceil(t|x|) + 1`` words must share one, so only queries sharing a prefix word are compared.

    Args:
        queries: candidate queries in priority order.
        threshold: word-set Jaccard at or above which a later query is dropped.

    Returns:
        (indices kept, number dropped as exact duplicates, number dropped as near duplicates).

    Example:
        >>> drop_duplicates(["What is X?", "what is x", "How is Y made?"], 0.85)
        ([0, 2], 1, 0)
    """
    sets = [frozenset(words(q)) for q in queries]
    freq = Counter(w for s in sets for w in s)
    kept: list[int] = []
    seen_exact: set[tuple[str, ...]] = set()
    index: dict[str, list[int]] = {}
    exact = near = 0
    for i, (query, s) in enumerate(zip(queries, sets, strict=True)):
        key = tuple(words(query))
        if key in seen_exact:
            exact += 1
            continue
        ordered = sorted(s, key=lambda w: (freq[w], w))
        prefix = ordered[: len(ordered) - math.ceil(threshold * len(ordered)) + 1]
        candidates = {j for w in prefix for j in index.get(w, ())}
        if any(jaccard(s, sets[j]) >= threshold for j in candidates if s | sets[j]):
            near += 1
            continue
        seen_exact.add(key)
        kept.append(i)
        for w in prefix:
            index.setdefault(w, []).append(i)
    return kept, exact, near


class CandidateFilters:
    """Per-candidate checks and their counts (``counts``, read by the synth report), shared by both recipes.

    Args:
        cfg: the ``synth`` config section (``min_words``, ``max_words``, ``copy_ngram``).
        examples: the few-shot examples of the prompt (``passage``, ``query``); their content words are
            borrowed words in a query about a passage that does not hold them.
        require_question: drop a candidate that is no question (the small-model recipe).
    """

    def __init__(self, cfg: SynthConfig, examples: Sequence[dict[str, str]], require_question: bool) -> None:
        self.cfg = cfg
        self.require_question = require_question
        example_words = {w for ex in examples for w in words(ex["passage"] + " " + ex["query"])}
        self.example_words = {w for w in example_words if w not in STOPWORDS and len(w) > 3}
        self.counts: Counter[str] = Counter()

    def check(self, query: str, passage: str) -> bool:
        """Count the candidate, and the first filter that drops it; True when it passes them all."""
        self.counts["parsed"] += 1
        self.counts["questions"] += is_question(query)
        copied = copies_passage(query, passage, self.cfg.copy_ngram)
        self.counts["copies"] += copied
        n_words = len(words(query))
        if not self.cfg.min_words <= n_words <= self.cfg.max_words:
            reason = "length"
        elif copied:
            reason = "copy"
        elif self.require_question and not is_question(query):
            reason = "not_question"
        elif set(words(query)) & (self.example_words - set(words(passage))):
            reason = "example_words"
        else:
            return True
        self.counts[f"dropped_{reason}"] += 1
        return False


class RoundTrip:
    """The round trip: the rank the base embedder gives each query's own chunk among the whole corpus.

    The ranks come from the shared :class:`ragtune.pipeline.retrieval.DenseRetriever` (``synth.round_trip_model``,
    documents and queries each through its own encoding, corpus embeddings cached in ``cache_dir``), loaded
    on first use: nothing is loaded when nothing needs checking. Checks and hits within
    ``synth.round_trip_top_k`` are counted in ``counts`` (``round_trip_checked``, ``round_trip_hits``).

    Args:
        corpus: every corpus row (``id``, ``text``).
        cfg: the ``synth`` config section; ``round_trip_top_k: null`` turns the round trip off (rank 1 for all).
        counts: the filters' counts, which the synth report reads.
        cache_dir: where the retriever caches corpus embeddings (``None``: no cache).
        score_block_mb: memory bound of its score blocks (``run.score_block_mb``; None: the default).
    """

    def __init__(
        self,
        corpus: list[dict],
        cfg: SynthConfig,
        counts: Counter[str],
        cache_dir: Path | None,
        score_block_mb: float | None = None,
    ) -> None:
        self.corpus = corpus
        self.cfg = cfg
        self.counts = counts
        self.cache_dir = cache_dir
        self.score_block_mb = score_block_mb
        self.retriever: DenseRetriever | None = None

    def ranks(self, queries: list[str], chunk_ids: list[str]) -> list[int]:
        """1-based rank of ``chunk_ids[i]`` for ``queries[i]`` among the whole corpus (ties in its favour)."""
        if self.cfg.round_trip_top_k is None:
            return [1] * len(queries)
        if not queries:
            return []
        if self.retriever is None:
            from ragtune.pipeline.retrieval import DenseRetriever

            block = {} if self.score_block_mb is None else {"score_block_mb": self.score_block_mb}
            model = self.cfg.round_trip_model
            self.retriever = DenseRetriever.load(model, self.corpus, cache_dir=self.cache_dir, **block)
        ranks = self.retriever.ranks(queries, chunk_ids)
        self.counts["round_trip_checked"] += len(ranks)
        self.counts["round_trip_hits"] += sum(r <= self.cfg.round_trip_top_k for r in ranks)
        return ranks


def bm25_round_trip_on(cfg: SynthConfig) -> bool:
    """Whether held-out synthetic queries pass the BM25 round trip (``synth.eval_round_trip`` and a top k).

    Example:
        >>> bm25_round_trip_on(SynthConfig()), bm25_round_trip_on(SynthConfig(round_trip_top_k=None))
        (True, False)
    """
    return cfg.eval_round_trip == "bm25" and cfg.round_trip_top_k is not None


class LexicalRoundTrip:
    """The held-out queries' round trip: the rank BM25 gives each query's own chunk among the whole corpus.

    BM25 is the project's own (:func:`ragtune.pipeline.hybrid.bm25_retriever`: bm25s through LlamaIndex, English
    stemmer and stopwords), so no embedder under evaluation chooses the queries it is judged on. A chunk
    outside BM25's top ``synth.round_trip_top_k``, or with no query term at all, gets rank ``top_k + 1``.
    ``synth.eval_round_trip: none`` (or ``round_trip_top_k: null``) turns it off: rank 1 for all. Checks and
    hits are counted in ``counts`` (``eval_round_trip_checked``, ``eval_round_trip_hits``).

    Args:
        corpus: every corpus row (``id``, ``text``, ``doc_id``, ``source``).
        cfg: the ``synth`` config section (``eval_round_trip``, ``round_trip_top_k``).
        counts: the filters' counts, which the synth report reads.
    """

    def __init__(self, corpus: list[dict], cfg: SynthConfig, counts: Counter[str]) -> None:
        self.corpus = corpus
        self.cfg = cfg
        self.counts = counts
        self.retriever: BM25Retriever | None = None

    @property
    def enabled(self) -> bool:
        return bm25_round_trip_on(self.cfg)

    def ranks(self, queries: list[str], chunk_ids: list[str]) -> list[int]:
        """1-based rank of ``chunk_ids[i]`` for ``queries[i]`` under BM25 (``top_k + 1``: not in its top k)."""
        if not self.enabled:
            return [1] * len(queries)
        if not queries:
            return []
        top_k = self.cfg.round_trip_top_k
        assert top_k is not None  # enabled
        from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever

        if self.retriever is None:
            self.retriever = bm25_retriever(self.corpus, top_k)
        ranked = bm25_rankings(self.retriever, queries)
        ranks = [
            ids[:top_k].index(chunk) + 1 if chunk in ids[:top_k] else top_k + 1
            for ids, chunk in zip(ranked, chunk_ids, strict=True)
        ]
        self.counts["eval_round_trip_checked"] += len(ranks)
        self.counts["eval_round_trip_hits"] += sum(r <= top_k for r in ranks)
        return ranks


class SplitRoundTrip:
    """Each chunk's round trip by its side of the split: held-out chunks lexical, the others the base embedder.

    Args:
        train: the round trip of training chunks (:meth:`RoundTrip.ranks`).
        held_out: the round trip of held-out chunks (:meth:`LexicalRoundTrip.ranks`).
        held_out_chunks: ids of the chunks whose documents are held out for evaluation.

    Example:
        >>> trip = SplitRoundTrip(lambda q, c: [7] * len(q), lambda q, c: [2] * len(q), {"e1"})
        >>> trip.ranks(["a", "b", "c"], ["t1", "e1", "t2"])
        [7, 2, 7]
    """

    def __init__(
        self,
        train: Callable[[list[str], list[str]], list[int]],
        held_out: Callable[[list[str], list[str]], list[int]],
        held_out_chunks: AbstractSet[str],
    ) -> None:
        self.train, self.held_out, self.held_out_chunks = train, held_out, held_out_chunks

    def ranks(self, queries: list[str], chunk_ids: list[str]) -> list[int]:
        """Ranks in input order; each side's queries go to its own round trip in one batch."""
        out = [0] * len(queries)
        for check, side in ((self.train, False), (self.held_out, True)):
            idx = [i for i, c in enumerate(chunk_ids) if (c in self.held_out_chunks) == side]
            if idx:
                for i, r in zip(idx, check([queries[i] for i in idx], [chunk_ids[i] for i in idx]), strict=True):
                    out[i] = r
        return out
