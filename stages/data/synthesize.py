"""Synthetic queries: N search questions per chunk from an LLM, parsed robustly and filtered, with a report.

Called by the data stage (``ragtune data CONFIG``) through :func:`synthesize_queries`; the LLM is
``synth.llm`` (see ``docs/llm-backends.md``). Filters, each counted in the report: length bounds,
n-gram copies of the chunk, words borrowed from the few-shot examples, exact and near duplicates
(word-set Jaccard), and an optional round trip (the base embedder must rank the query's chunk in its
top k among the whole corpus). Human queries are never touched: only new ``origin: synthetic`` rows
are returned.

For the local provider with one query per chunk, the recipe measured for small models on the demo
domain is used: greedy first, cut at the first "?", accept a 3-25 word question
that copies nothing, borrows no example words and passes the round trip; otherwise sample
``synth.resample_candidates`` (4) at temperature 0.5 and keep the best that passes; drop the chunk if none does.

Example (a sketch over a finished run, not run as a doctest):
    queries, report = synthesize_queries(train_chunks, corpus, cfg.synth, run.path("data/cache"))
    report["kept"], report["round_trip_hit_at_k"]
    # -> (56, 0.93)
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable
from collections.abc import Set as AbstractSet
from pathlib import Path
from typing import Any

from pipeline.config import SynthConfig
from pipeline.llm import make_backend

logger = logging.getLogger(__name__)

SYSTEM_ONE = (
    "Write one short search question an employee would type to find this passage, in your own words; "
    "do not copy the passage."
)
SYSTEM_MANY = (
    "Write short search questions an employee would type to find this passage, in your own words; "
    "do not copy sentences from the passage. Answer with a numbered list only."
)
BUILTIN_EXAMPLES = [
    {
        "passage": "Members may borrow up to ten books at a time for three weeks. A loan can be renewed twice "
        "online, unless another reader has reserved the title.",
        "query": "How many times can a library loan be extended?",
    },
    {
        "passage": "The bakery opens at seven on weekdays and at eight on Saturdays. Sourdough comes out of the "
        "oven every morning and usually sells out before noon.",
        "query": "When is fresh sourdough bread available?",
    },
]
TURN_ONE = "Passage: {passage}\n\nSearch question:"
TEMPLATE_MANY = "{examples}\n\nPassage: {passage}\nWrite {n} different questions, as a numbered list.\nQuestions:"
SAMPLE_TEMPERATURE = 0.5
RECIPE_MAX_NEW_TOKENS = 48  # a 25-word question fits; stops a rambling small model early
_STOPWORD_TEXT = (
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it its "
    "may me might must my no not of on or our shall should so than that the their them then there these they "
    "this those to too was we were what when where which who whom why will with would you your"
)
_QUESTION_WORD_TEXT = "what when where which who whom whose why how is are can could do does did should will"
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
QUESTION_WORDS = frozenset(_QUESTION_WORD_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•·–]+|\(?\d{1,2}[.):\]]|\(?[a-hA-H][.)])\s*")
_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:search\s+)?(?:query|question|q)\s*\d*\s*[:.-]\s*(?:\*\*)?\s*", re.IGNORECASE)
_PREAMBLE = re.compile(r"^(?:here (?:are|is)|sure|certainly|of course|okay|ok\b|i hope|note:|passage:|answer:)", re.I)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, inner apostrophes)."""
    return _WORD.findall(text.lower())


def parse_queries(text: str) -> list[str]:
    """Pull queries out of whatever an LLM answered.

    Accepts JSON (a list of strings, a list of objects with ``query``/``question``/``text``, or an
    object holding ``queries``/``questions``), numbered or bulleted lists, ``Query:`` / ``Q1:``
    prefixes, quotes and markdown bold, and ignores preambles ("Here are 3 questions:") and, when the
    answer is a list, stray lines outside it. Several questions on one line are split at "? ".

    Args:
        text: the raw completion.

    Returns:
        Distinct queries in order of appearance (possibly empty).

    Example:
        >>> parse_queries("Sure! Here are two:\\n1. What is X?\\n2) **How does Y work?**\\nHope this helps.")
        ['What is X?', 'How does Y work?']
    """
    found = _parse_json(text)
    if found is None:
        lines = [line for line in text.splitlines() if line.strip()]
        marked = [line for line in lines if _LIST_MARKER.match(line)]
        found = []
        for line in marked or lines:
            line = _PREFIX.sub("", _LIST_MARKER.sub("", line, count=1), count=1).strip()
            if not line or line.endswith(":") or _PREAMBLE.match(line):
                continue
            found += re.split(r"(?<=\?)\s+(?=[A-Z])", line)
    out: list[str] = []
    for query in found:
        query = _PREFIX.sub("", query.strip(), count=1).strip().strip("*\"'`“”‘’ ").strip()
        if query and query not in out:
            out.append(query)
    return out


def _parse_json(text: str) -> list[str] | None:
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    for end in range(len(text), start, -1):
        if text[end - 1] not in "]}":
            continue
        try:
            data = json.loads(text[start:end])
        except json.JSONDecodeError:
            continue
        return _strings_in(data)
    return None


def _strings_in(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, list):
        return [s for item in data for s in _strings_in(item)]
    if isinstance(data, dict):
        for key in ("queries", "questions", "query", "question", "text"):
            if key in data:
                return _strings_in(data[key])
    return []


MAX_WORD_CHARS = 40  # a longer unbroken run of characters is no word of a search question


def is_garbage(candidate: str) -> bool:
    """True when a parsed candidate is not readable text: control characters or U+FFFD, an unbroken run
    of more than 40 characters, or fewer letters than half of its non-space characters.

    Example:
        >>> is_garbage("How long is the VPN token valid?"), is_garbage("{}{}%%$#@!~^&*"), is_garbage("x" * 300)
        (False, True, True)
    """
    if "\ufffd" in candidate or any(unicodedata.category(ch) == "Cc" for ch in candidate if ch not in "\t\n"):
        return True
    if any(len(token) > MAX_WORD_CHARS for token in candidate.split()):
        return True
    visible = [ch for ch in candidate if not ch.isspace()]
    return sum(ch.isalpha() for ch in visible) * 2 < len(visible)


def readable_queries(text: str) -> tuple[list[str], int]:
    """(queries parsed from a reply that are readable text, number of garbage candidates dropped)."""
    parsed = parse_queries(text)
    readable = [q for q in parsed if not is_garbage(q)]
    return readable, len(parsed) - len(readable)


def readable_first_question(text: str) -> str:
    """:func:`first_question` of a reply, or "" when it is garbage."""
    query = first_question(text)
    return "" if is_garbage(query) else query


def first_question(text: str) -> str:
    """The recipe's cut: first line of the answer, prefixes removed, up to and including the first "?".

    Example:
        >>> first_question("Question: What is the refund window? It is 30 days.")
        'What is the refund window?'
    """
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", _LIST_MARKER.sub("", line, count=1), count=1).strip().strip("*\"'`“”")
    return line[: line.index("?") + 1] if "?" in line else line


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


def keyword_query(passage: str, idf: dict[str, float], rank: int = 0, max_words: int = 6) -> str:
    """Deterministic keyword query: the most distinctive content words of an informative sentence.

    Sentences are scored by the mean IDF of their three rarest content words; ``rank`` picks the
    rank-th best (cycling), so several queries per chunk differ. The words keep their order in the
    sentence and there are at most ``max_words`` of them, so the query is not a long verbatim copy.

    Args:
        passage: chunk text.
        idf: word -> inverse document frequency over the corpus.
        rank: which sentence (0 = most informative).
        max_words: query length cap.

    Example:
        >>> keyword_query("The VPN token expires after 90 days. Renew it in the portal.", {"vpn": 3.0, "token": 2.5})
        'vpn token expires after days'
    """
    sentences = [s for s in re.split(r"(?<=[.!?])\s+|\n+", passage) if words(s)]
    if not sentences:
        return ""

    def content(sentence: str) -> list[str]:
        return [w for w in dict.fromkeys(words(sentence)) if w not in STOPWORDS and len(w) > 2]

    def score(sentence: str) -> float:
        top = sorted((idf.get(w, 1.0) for w in content(sentence)), reverse=True)[:3]
        return sum(top) / 3

    ranked = sorted(range(len(sentences)), key=lambda i: (-score(sentences[i]), i))
    chosen = content(sentences[ranked[rank % len(ranked)]])
    best = set(sorted(chosen, key=lambda w: (-idf.get(w, 1.0), chosen.index(w)))[:max_words])
    return " ".join(w for w in chosen if w in best)


def corpus_idf(corpus: list[dict]) -> dict[str, float]:
    """Smoothed inverse document frequency of every word in the corpus texts."""
    df = Counter(w for row in corpus for w in set(words(row["text"])))
    n = len(corpus)
    return {w: math.log((n + 1) / (c + 1)) + 1 for w, c in df.items()}


class RoundTripRanker:
    """Rank of each query's own chunk among the whole corpus under the base embedder (1 = first).

    The corpus is encoded once; queries are encoded in one batch and scored by one matrix product per
    block of 1,024 queries, so ranks are exact (no approximate index).

    Args:
        corpus: corpus rows (``id``, ``text``).
        model_ref: sentence-transformers model reference (``synth.round_trip_model``).
    """

    def __init__(self, corpus: list[dict], model_ref: str) -> None:
        from sentence_transformers import SentenceTransformer

        from pipeline.models import resolve_model

        self.model = SentenceTransformer(resolve_model(model_ref))
        self.position = {row["id"]: i for i, row in enumerate(corpus)}
        self.corpus_emb = self._encode([row["text"] for row in corpus], "round trip: corpus")

    def _encode(self, texts: list[str], desc: str) -> Any:
        logger.info("%s: encoding %d texts", desc, len(texts))
        return self.model.encode(texts, batch_size=64, convert_to_tensor=True, normalize_embeddings=True)

    def ranks(self, queries: list[str], chunk_ids: list[str]) -> list[int]:
        """1-based rank of ``chunk_ids[i]`` for ``queries[i]`` (ties count in the chunk's favour)."""
        import torch

        if not queries:
            return []
        q = self._encode(queries, "round trip: queries")
        target = torch.tensor([self.position[c] for c in chunk_ids], device=q.device)
        ranks: list[int] = []
        for start in range(0, len(queries), 1024):
            scores = q[start : start + 1024] @ self.corpus_emb.T
            own = scores.gather(1, target[start : start + 1024, None])
            ranks += ((scores > own).sum(dim=1) + 1).tolist()
        return ranks


def _render_examples(examples: list[dict[str, str]]) -> str:
    return "\n\n".join(f"Passage: {ex['passage']}\nQuestion: {ex['query']}" for ex in examples)


def _prompt_builder(cfg: SynthConfig) -> Callable[[str], list[dict[str, str]]]:
    """Passage -> chat messages. Built-in, one query: the examples as earlier chat turns (a small model
    imitates turns far better than examples pasted into one message); N queries or a template from
    ``synth.prompt``: one user message with {examples}, {passage} and {n} filled in."""
    n = cfg.queries_per_chunk
    examples = cfg.examples or BUILTIN_EXAMPLES
    if cfg.prompt:
        template = Path(cfg.prompt).read_text(encoding="utf-8")
        if "{passage}" not in template:
            raise ValueError(f"synth.prompt {cfg.prompt}: the template needs a {{passage}} placeholder")
    elif n == 1:
        shots = []
        for ex in examples:
            shots += [
                {"role": "user", "content": TURN_ONE.replace("{passage}", ex["passage"])},
                {"role": "assistant", "content": ex["query"]},
            ]

        def build_turns(passage: str) -> list[dict[str, str]]:
            user = TURN_ONE.replace("{passage}", passage.strip())
            return [{"role": "system", "content": SYSTEM_ONE}, *shots, {"role": "user", "content": user}]

        return build_turns
    else:
        template = TEMPLATE_MANY
    rendered = _render_examples(examples)
    system = SYSTEM_ONE if n == 1 else SYSTEM_MANY

    def build(passage: str) -> list[dict[str, str]]:
        # str.replace, not str.format: passages contain braces
        user = template.replace("{examples}", rendered).replace("{n}", str(n)).replace("{passage}", passage.strip())
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    return build


def spread_across_documents(chunks: list[dict], max_chunks: int | None, seed: int) -> list[dict]:
    """At most ``max_chunks`` of ``chunks``, taken from every document in turn (seeded), in corpus order.

    Documents are visited in a seeded random order, one chunk each (a seeded random one of those not yet
    taken) per round, so a cap smaller than the corpus still draws queries from as many documents as it
    can instead of the first few in path order.

    Args:
        chunks: corpus rows (``id``, ``doc_id``, ...), in corpus order.
        max_chunks: how many to keep (None: all).
        seed: seed of both random orders (the data stage passes ``split.seed``).

    Returns:
        The chosen rows, in their order in ``chunks``.

    Example:
        >>> rows = [{"id": f"{d}{i}", "doc_id": d} for d in "ab" for i in range(3)]
        >>> sorted({r["doc_id"] for r in spread_across_documents(rows, 2, seed=1)})
        ['a', 'b']
    """
    if max_chunks is None or max_chunks >= len(chunks):
        return list(chunks)
    rng = random.Random(seed)
    by_doc: dict[str, list[int]] = {}
    for i, chunk in enumerate(chunks):
        by_doc.setdefault(chunk["doc_id"], []).append(i)
    queues = [by_doc[d] for d in sorted(by_doc)]
    rng.shuffle(queues)
    for queue in queues:
        rng.shuffle(queue)
    chosen: list[int] = []
    while len(chosen) < max_chunks:
        for queue in queues:
            if queue and len(chosen) < max_chunks:
                chosen.append(queue.pop())
    return [chunks[i] for i in sorted(chosen)]


def synthesis_recipe(cfg: SynthConfig) -> str:
    """The name of the generation recipe ``cfg`` runs, as the synth report gives it.

    - ``extractive-keywords``: no LLM; keyword queries from each chunk's most distinctive sentences;
    - ``greedy-only``: local provider, one query per chunk, ``resample_candidates: 0``;
    - ``greedy-then-sample``: local provider, one query per chunk, samples drawn where greedy fails;
    - ``list``: one LLM call per chunk asking for ``queries_per_chunk`` queries as a numbered list.

    Example:
        >>> synthesis_recipe(SynthConfig(resample_candidates=0, llm={"provider": "local"}))
        'greedy-only'
    """
    if cfg.llm.provider == "extractive":
        return "extractive-keywords"
    if cfg.llm.provider == "local" and cfg.queries_per_chunk == 1:
        return "greedy-then-sample" if cfg.resample_candidates else "greedy-only"
    return "list"


def qid_for(chunk_id: str, text: str) -> str:
    """Stable query id: ``syn-`` + hash of chunk id and query text."""
    return "syn-" + hashlib.sha256(f"{chunk_id}\n{text}".encode()).hexdigest()[:16]


class _Filters:
    """Per-candidate checks and their counts, shared by both generation paths."""

    def __init__(self, cfg: SynthConfig, require_question: bool) -> None:
        self.cfg = cfg
        self.require_question = require_question
        example_words = {w for ex in cfg.examples or BUILTIN_EXAMPLES for w in words(ex["passage"] + " " + ex["query"])}
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


def synthesize_queries(
    chunks: list[dict], corpus: list[dict], cfg: SynthConfig, cache_dir: Path
) -> tuple[list[dict], dict]:
    """Generate, filter and report synthetic queries for ``chunks``.

    Args:
        chunks: corpus rows to ask about (``id``, ``doc_id``, ``text``, ...).
        corpus: every corpus row (the round trip ranks each chunk among all of them).
        cfg: the ``synth`` config section (its ``llm`` picks the backend).
        cache_dir: per-item LLM cache folder (``data/cache`` in the run directory).

    Returns:
        (query rows ``{"qid", "text", "positives", "relevance", "relevance_level": "chunk",
        "origin": "synthetic", "doc_ids", "answer": None}``, report with a count per filter, question_rate, copy_rate,
        round_trip_hit_at_k and the LLM usage).

    Example (with chunks and a corpus, not run as a doctest):
        rows, report = synthesize_queries(chunks, corpus, SynthConfig(round_trip_top_k=None), tmp)
        rows[0]["origin"], report["dropped_copy"]
        # -> ('synthetic', 0)
    """
    started = time.time()
    n = cfg.queries_per_chunk
    # 1. Prompts, and the deterministic extractor for the extractive provider
    build = _prompt_builder(cfg)
    requests = [build(chunk["text"]) for chunk in chunks]
    idf = corpus_idf(corpus)
    passage_of = {req[-1]["content"]: chunk["text"] for req, chunk in zip(requests, chunks, strict=True)}

    def extractor(messages: list[dict[str, str]]) -> str:
        passage = passage_of[messages[-1]["content"]]
        return "\n".join(f"{i + 1}. {keyword_query(passage, idf, rank=i)}" for i in range(n))

    backend = make_backend(cfg.llm, cache_dir, extractor=extractor)
    recipe_name = synthesis_recipe(cfg)
    recipe = recipe_name.startswith("greedy")
    filters = _Filters(cfg, require_question=recipe)
    ranker: list[RoundTripRanker] = []  # built on first use: nothing to load when nothing needs checking

    def round_trip(queries: list[str], chunk_ids: list[str]) -> list[int]:
        if cfg.round_trip_top_k is None:
            return [1] * len(queries)
        if not ranker:
            ranker.append(RoundTripRanker(corpus, cfg.round_trip_model))
        ranks = ranker[0].ranks(queries, chunk_ids)
        filters.counts["round_trip_checked"] += len(ranks)
        filters.counts["round_trip_hits"] += sum(r <= cfg.round_trip_top_k for r in ranks)
        return ranks

    # 2. Generate and filter candidates: per chunk, accepted queries in preference order
    if recipe:
        accepted = _recipe_candidates(backend, requests, chunks, cfg, filters, round_trip)
    else:
        accepted = _list_candidates(backend, requests, chunks, filters)
    # 3. Exact and near duplicates, across all chunks (one query shared by two chunks is a false negative)
    flat = [(i, q) for i, qs in enumerate(accepted) for q in qs]
    keep, exact, near = drop_duplicates([q for _, q in flat], cfg.near_duplicate_threshold)
    filters.counts["dropped_duplicate"] += exact
    filters.counts["dropped_near_duplicate"] += near
    flat = [flat[j] for j in keep]
    # 4. Round trip (the recipe path checked it per candidate already), then at most n per chunk
    if not recipe and cfg.round_trip_top_k is not None:
        ranks = round_trip([q for _, q in flat], [chunks[i]["id"] for i, _ in flat])
        filters.counts["dropped_round_trip"] += sum(r > cfg.round_trip_top_k for r in ranks)
        flat = [item for item, r in zip(flat, ranks, strict=True) if r <= cfg.round_trip_top_k]
    per_chunk: Counter[int] = Counter()
    rows = []
    for i, query in flat:
        per_chunk[i] += 1
        if per_chunk[i] > n:
            filters.counts["dropped_surplus"] += 1
            continue
        chunk = chunks[i]
        rows.append(
            {
                "qid": qid_for(chunk["id"], query),
                "text": query,
                "positives": [chunk["id"]],
                "relevance": {chunk["id"]: 1},
                "relevance_level": "chunk",
                "origin": "synthetic",
                "doc_ids": [chunk["doc_id"]],
                "answer": None,
            }
        )
    # 5. Report
    c = filters.counts
    c["llm_failed"] += backend.usage.failed
    c["skipped_budget"] += backend.usage.skipped_budget
    c["dropped_unparseable"] += backend.usage.rejected
    report: dict[str, Any] = {
        "provider": cfg.llm.provider,
        "model": cfg.llm.model if cfg.llm.provider != "extractive" else None,
        "recipe": recipe_name,
        "chunks": len(chunks),
        "documents": len({chunk["doc_id"] for chunk in chunks}),
        **{
            key: c[key]
            for key in (
                "generated",
                "llm_failed",
                "skipped_budget",
                "parsed",
                "dropped_unparseable",
                "dropped_length",
                "dropped_copy",
                "dropped_not_question",
                "dropped_example_words",
                "dropped_duplicate",
                "dropped_near_duplicate",
                "dropped_round_trip",
                "dropped_surplus",
            )
        },
        "kept": len(rows),
        "chunks_without_query": len(chunks) - len({r["positives"][0] for r in rows}),
        "question_rate": round(c["questions"] / c["parsed"], 4) if c["parsed"] else None,
        "copy_rate": round(c["copies"] / c["parsed"], 4) if c["parsed"] else None,
        "round_trip_k": cfg.round_trip_top_k,
        "round_trip_hit_at_k": round(c["round_trip_hits"] / c["round_trip_checked"], 4)
        if c["round_trip_checked"]
        else None,
        "seconds": round(time.time() - started, 2),
        "llm": backend.usage.as_dict(),
    }
    logger.info(
        "synthetic queries (%s): %d kept for %d chunks (%d without); question rate %s, copy rate %s, "
        "round trip hit@%s %s",
        recipe_name,
        len(rows),
        len(chunks),
        report["chunks_without_query"],
        report["question_rate"],
        report["copy_rate"],
        cfg.round_trip_top_k,
        report["round_trip_hit_at_k"],
    )
    return rows, report


def _list_candidates(backend: Any, requests: list, chunks: list[dict], filters: _Filters) -> list[list[str]]:
    """General path: one call per chunk asking for N queries; parse and filter each."""
    accepted: list[list[str]] = []
    replies = backend.generate(requests, desc="synthesize queries", accept=lambda t: bool(readable_queries(t)[0]))
    for chunk, text in zip(chunks, replies, strict=True):
        accepted.append([])
        if text is None:  # failed, over budget or unparseable: counted from the backend's usage
            continue
        filters.counts["generated"] += 1
        queries, garbage = readable_queries(text)
        filters.counts["dropped_unparseable"] += garbage
        accepted[-1] = [q for q in queries if filters.check(q, chunk["text"])]
    return accepted


def _recipe_candidates(
    backend: Any,
    requests: list,
    chunks: list[dict],
    cfg: SynthConfig,
    filters: _Filters,
    round_trip: Callable[[list[str], list[str]], list[int]],
) -> list[list[str]]:
    """Small-model path: greedy first; where that fails, the best passing one of N samples at T 0.5."""
    max_new = min(cfg.llm.max_new_tokens, RECIPE_MAX_NEW_TOKENS)
    top_k = cfg.round_trip_top_k or math.inf
    accepted: list[list[str]] = [[] for _ in chunks]

    def screen(indices: list[int], texts: list[str | None]) -> list[tuple[int, str, int]]:
        passing = []
        for i, text in zip(indices, texts, strict=True):
            if text is None:  # failed, over budget or unparseable: counted from the backend's usage
                continue
            filters.counts["generated"] += 1
            query = first_question(text)
            if filters.check(query, chunks[i]["text"]):
                passing.append((i, query))
        ranks = round_trip([q for _, q in passing], [chunks[i]["id"] for i, _ in passing])
        filters.counts["dropped_round_trip"] += sum(r > top_k for r in ranks)
        return [(i, q, r) for (i, q), r in zip(passing, ranks, strict=True) if r <= top_k]

    def accept(text: str) -> bool:
        return bool(readable_first_question(text))

    greedy = backend.generate(
        requests, temperature=0.0, max_new_tokens=max_new, desc="synthesize queries (greedy)", accept=accept
    )
    for i, query, _ in screen(list(range(len(chunks))), greedy):
        accepted[i] = [query]
    retry = [i for i in range(len(chunks)) if not accepted[i]]
    if retry and cfg.resample_candidates:
        indices = [i for i in retry for _ in range(cfg.resample_candidates)]
        sampled = backend.generate(
            [requests[i] for i in indices],
            temperature=SAMPLE_TEMPERATURE,
            max_new_tokens=max_new,
            desc="synthesize queries (sampled)",
            accept=accept,
        )
        best: dict[int, tuple[int, str]] = {}
        for i, query, rank in screen(indices, sampled):
            if i in best:
                filters.counts["dropped_surplus"] += 1
                if rank >= best[i][0] or query == best[i][1]:
                    continue
            best[i] = (rank, query)
        for i, (_, query) in best.items():
            accepted[i] = [query]
    return accepted
