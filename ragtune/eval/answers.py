"""Answers of each configuration's generator, with and without the evidence in context, and their scores.

Generation runs once per distinct generator, loaded once through the eval's
:class:`~ragtune.pipeline.stack.StackLoader` (a :class:`~ragtune.pipeline.generator.GenerationMemo` answers
identical prompts of several configurations once), prompted with the RAFT format
(:func:`ragtune.pipeline.raft_format.build_messages`). Each answered query is asked twice: with the
configuration's top_n chunks, and with the same ranking minus every relevant chunk (it should abstain).
An ``extractive`` configuration answers without an LLM (:class:`ragtune.pipeline.extractive.ExtractiveAnswerer` with its
embedder), over the same two contexts; a guided one (``assemble.quote: extractive``) has that answerer's quote
written in, and its generator writes the final answer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from ragtune.eval.metrics import abstained, format_compliance, oracle_citation, quote_precision
from ragtune.pipeline.answer_metrics import exact_match, final_answer, token_f1
from ragtune.pipeline.components import Components
from ragtune.pipeline.config import AssembleConfig
from ragtune.pipeline.extractive import EXTRACTIVE, ExtractiveAnswerer
from ragtune.pipeline.generator import GenerationMemo
from ragtune.pipeline.precision import inference_dtype
from ragtune.pipeline.raft_format import answer_settled, build_messages, guided_messages, parse_answer, whole_answer
from ragtune.pipeline.stack import GeneratorKey, StackLoader

Answers = dict[int, tuple[str, str]]  # query index -> (answer, no-oracle answer)
WhileLoaded = Callable[[GeneratorKey, Any, Any], None]  # (generator key, model, tokenizer) -> None


def score_generation(
    generation: str, no_oracle_generation: str, context: Sequence[str], reference: str, positives: Sequence[str]
) -> dict[str, float | None]:
    """Per-query generation metrics (see :mod:`ragtune.eval.metrics`).

    The final answer is the text after ``##Answer:``; a generation without that tag is scored as a
    whole, so an untrained base generator still gets credit for a correct answer in free form.
    """
    parsed = parse_answer(generation)
    answer = final_answer(generation)
    return {
        "em": exact_match(answer, reference),
        "f1": token_f1(answer, reference),
        "quote_precision": quote_precision(parsed.quotes, context),
        "oracle_citation": oracle_citation(parsed.quotes, positives),
        "format_ok": format_compliance(generation),
        "abstain_with_evidence": abstained(generation),
        "abstain_no_oracle": abstained(no_oracle_generation),
    }


def generate_answers(
    components: dict[str, Components],
    choices: dict[str, AssembleConfig],
    queries: list[dict],
    answered: list[int],
    ranked: dict[str, list[list[str]]],
    chunks: dict[str, dict],
    batch_size: int,
    loader: StackLoader,
    while_loaded: WhileLoaded | None = None,
) -> tuple[dict[str, Answers], dict[str, float]]:
    """Every configuration's answers, one distinct generator (and adapter, and dtype) at a time.

    Args:
        components: model paths per configuration.
        choices: the configuration per name (top_n, max_new_tokens, dtype, truncate_dim).
        queries: the held-out queries.
        answered: indices of the queries with a reference answer (the ones generated for).
        ranked: chunk ids best first, per configuration and query.
        chunks: chunk by id.
        batch_size: prompts per ``generate`` call.
        loader: loads each generator once, and the extractive answerer's embedder (the one retrieval used).
        while_loaded: called with each generator's key, model and tokenizer after its configurations answered,
            before the next one loads (the forgetting check asks its questions then).

    Returns:
        (answers per configuration, generation ms per query per configuration).
    """
    answers: dict[str, Answers] = {}
    ms: dict[str, float] = {}
    by_generator: dict[GeneratorKey, list[str]] = {}
    by_embedder: dict[tuple[str, int | None], list[str]] = {}  # extractive configurations: their embedder answers
    for name, comp in components.items():
        if comp.generator == EXTRACTIVE:
            by_embedder.setdefault((comp.embedder, choices[name].truncate_dim), []).append(name)
        else:
            by_generator.setdefault((*comp.generator_key, inference_dtype(choices[name].dtype)), []).append(name)
    for key, group in by_generator.items():
        model, tokenizer = loader.generator(*key)
        memo = GenerationMemo(model, tokenizer, batch_size)
        for name in group:
            quoter = None
            if choices[name].quote == "extractive":  # guided: the configuration's embedder picks the quote
                quoter = ExtractiveAnswerer(loader.embedder(components[name].embedder, choices[name].truncate_dim))
            answers[name], ms[name] = _generate_for(
                memo, queries, answered, ranked[name], chunks, choices[name], name, quoter
            )
        if while_loaded is not None:
            while_loaded(key, model, tokenizer)
        del memo, model, tokenizer  # one generator in memory at a time
    for (embedder, truncate_dim), group in by_embedder.items():
        answerer = ExtractiveAnswerer(loader.embedder(embedder, truncate_dim), batch_size)
        for name in group:
            answers[name], ms[name] = _extract_for(
                answerer, queries, answered, ranked[name], chunks, choices[name].top_n
            )
    return answers, ms


def score_answers(
    rows: list[dict],
    answers: Answers,
    queries: list[dict],
    ranked: list[list[str]],
    chunks: dict[str, dict],
    top_n: int,
) -> None:
    """Add the generation metrics and both answers to one configuration's per-query rows (in place)."""
    for i, (main_answer, no_oracle_answer) in answers.items():
        q = queries[i]
        context = [chunks[c]["text"] for c in ranked[i][:top_n]]
        positives = [chunks[c]["text"] for c in q["positives"] if c in chunks]
        rows[i] |= score_generation(main_answer, no_oracle_answer, context, q["answer"], positives)
        rows[i] |= {"answer": main_answer, "no_oracle_answer": no_oracle_answer}


def _contexts(
    queries: list[dict], answered: list[int], ranked: list[list[str]], chunks: dict[str, dict], top_n: int
) -> tuple[list[list[str]], list[list[str]]]:
    """Per answered query, the top_n context texts with the evidence, and the top_n without any relevant chunk."""
    with_evidence = [[chunks[c]["text"] for c in ranked[i][:top_n]] for i in answered]
    without = [
        [chunks[c]["text"] for c in ranked[i] if queries[i]["relevance"].get(c, 0) <= 0][:top_n] for i in answered
    ]
    return with_evidence, without


def _extract_for(
    answerer: ExtractiveAnswerer,
    queries: list[dict],
    answered: list[int],
    ranked: list[list[str]],
    chunks: dict[str, dict],
    top_n: int,
) -> tuple[dict[int, tuple[str, str]], float]:
    """The extractive answerer's answers over the same two contexts as :func:`_generate_for` (no LLM)."""
    with_evidence, without = _contexts(queries, answered, ranked, chunks, top_n)
    questions = [queries[i]["text"] for i in answered]
    started = time.perf_counter()
    main_answers = answerer.answer(questions, with_evidence)
    ms = 1000 * (time.perf_counter() - started) / max(len(answered), 1)
    no_oracle = answerer.answer(questions, without)
    return dict(zip(answered, zip(main_answers, no_oracle, strict=True), strict=True)), ms


def _generate_for(
    memo: GenerationMemo,
    queries: list[dict],
    answered: list[int],
    ranked: list[list[str]],
    chunks: dict[str, dict],
    choice: AssembleConfig,
    name: str,
    quoter: ExtractiveAnswerer | None = None,
) -> tuple[dict[int, tuple[str, str]], float]:
    """Answers with the configuration's top_n context, and without any relevant chunk (should abstain).

    With a ``quoter`` (``assemble.quote: extractive``) each answer starts with the quote of its extractive answer
    over the same context (:func:`ragtune.pipeline.raft_format.guided_messages`) and the generator writes the
    final answer; the answer is the two together.

    Returns:
        (``{query index: (answer, no-oracle answer)}``, generation ms per query). Only the pass with
        the evidence counts: it is the one a user runs (the extractive quote's time included).
    """
    questions = [queries[i]["text"] for i in answered]
    passes = []
    contexts = _contexts(queries, answered, ranked, chunks, choice.top_n)
    for group, desc in zip(contexts, ("", " (no oracle)"), strict=True):
        started = time.perf_counter()
        requests = [build_messages(q, ctx) for q, ctx in zip(questions, group, strict=True)]
        if quoter is not None:
            quoted = quoter.answer(questions, group)
            requests = [guided_messages(r, a) for r, a in zip(requests, quoted, strict=True)]
        quote_ms = 1000 * (time.perf_counter() - started) / max(len(answered), 1)
        # a completion ends once its answer is settled (the scores read no further)
        settled = partial(answer_settled, prefilled=quoter is not None)
        completions, ms = memo.generate(requests, choice.max_new_tokens, f"generate {name}{desc}", stop=settled)
        passes.append(([whole_answer(r, c) for r, c in zip(requests, completions, strict=True)], quote_ms + ms))
    (main_answers, ms), (no_oracle, _) = passes
    return dict(zip(answered, zip(main_answers, no_oracle, strict=True), strict=True)), ms
