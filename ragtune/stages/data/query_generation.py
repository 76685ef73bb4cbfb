"""Query generation: the prompts, the LLM recipes and the extractive keyword queries.

Two recipes ask the LLM (``synth.llm``) and screen what it answers through the query filters
(:mod:`ragtune.stages.data.query_filters`): :func:`list_candidates` (one call per chunk for ``queries_per_chunk``
queries as a numbered list) and :func:`recipe_candidates` (the small-model recipe: greedy first, then the
best of ``synth.resample_candidates`` samples; the local generator stops each reply once its first question
is settled, :data:`RECIPE_STOP`). The ``extractive`` provider answers with
:func:`keyword_query` instead of a model. :func:`synthesis_recipe` names the recipe a config runs.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ragtune.pipeline.config import SynthConfig
from ragtune.pipeline.llm.local import stop_when
from ragtune.pipeline.quoting import DATA_RULE, quote_document
from ragtune.stages.data.query_filters import CandidateFilters
from ragtune.stages.data.query_parsing import (
    STOPWORDS,
    first_question,
    first_question_done,
    readable_first_question,
    readable_queries,
    words,
)

SYSTEM_ONE = (
    "Write one short search question an employee would type to find this passage, in your own words; "
    f"do not copy the passage. {DATA_RULE}"
)
SYSTEM_MANY = (
    "Write short search questions an employee would type to find this passage, in your own words; "
    f"do not copy sentences from the passage. Answer with a numbered list only. {DATA_RULE}"
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
# {passage} becomes the delimited, neutralised passage (ragtune.pipeline.quoting.quote_document).
TURN_ONE = "Passage:\n{passage}\n\nSearch question:"
TEMPLATE_MANY = "{examples}\n\nPassage:\n{passage}\nWrite {n} different questions, as a numbered list.\nQuestions:"
SAMPLE_TEMPERATURE = 0.5
RECIPE_MAX_NEW_TOKENS = 48  # a 25-word question fits; stops a rambling small model early
# The recipe reads only the first question of a reply: the local generator stops each row once it is settled
# (same parsed queries, greedy or sampled; fewer tokens generated). None generates to the end (benchmarks).
RECIPE_STOP: Callable[[str], bool] | None = first_question_done


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


def _render_examples(examples: list[dict[str, str]]) -> str:
    return "\n\n".join(f"Passage:\n{quote_document(ex['passage'])}\nQuestion: {ex['query']}" for ex in examples)


def prompt_builder(cfg: SynthConfig) -> Callable[[str], list[dict[str, str]]]:
    """Passage -> chat messages. Built-in, one query: the examples as earlier chat turns (a small model
    imitates turns far better than examples pasted into one message); N queries or a template from
    ``synth.prompt``: one user message with {examples}, {passage} and {n} filled in. A passage always enters
    delimited and neutralised (:func:`ragtune.pipeline.quoting.quote_document`): it is data, never instructions."""
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
                {"role": "user", "content": TURN_ONE.replace("{passage}", quote_document(ex["passage"]))},
                {"role": "assistant", "content": ex["query"]},
            ]

        def build_turns(passage: str) -> list[dict[str, str]]:
            user = TURN_ONE.replace("{passage}", quote_document(passage))
            return [{"role": "system", "content": SYSTEM_ONE}, *shots, {"role": "user", "content": user}]

        return build_turns
    else:
        template = TEMPLATE_MANY
    rendered = _render_examples(examples)
    system = SYSTEM_ONE if n == 1 else SYSTEM_MANY

    def build(passage: str) -> list[dict[str, str]]:
        # str.replace, not str.format: passages contain braces
        filled = template.replace("{examples}", rendered).replace("{n}", str(n))
        user = filled.replace("{passage}", quote_document(passage))
        return [{"role": "system", "content": system}, {"role": "user", "content": user}]

    return build


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


def list_candidates(backend: Any, requests: list, chunks: list[dict], filters: CandidateFilters) -> list[list[str]]:
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


def recipe_candidates(
    backend: Any,
    requests: list,
    chunks: list[dict],
    cfg: SynthConfig,
    filters: CandidateFilters,
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

    with stop_when(backend, RECIPE_STOP):
        greedy = backend.generate(
            requests, temperature=0.0, max_new_tokens=max_new, desc="synthesize queries (greedy)", accept=accept
        )
    for i, query, _ in screen(list(range(len(chunks))), greedy):
        accepted[i] = [query]
    retry = [i for i in range(len(chunks)) if not accepted[i]]
    if retry and cfg.resample_candidates:
        indices = [i for i in retry for _ in range(cfg.resample_candidates)]
        with stop_when(backend, RECIPE_STOP):
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
