"""Eval stage: plain RAG against the tuned stack, component by component, on held-out queries.

Run it:
    ragtune eval configs/demo.yaml
    python -m eval.harness --config configs/demo.yaml [eval.max_queries=50]

Configurations (``eval.configurations``, evaluated in order, ``rag_only`` always first):
rag_only (base embedder, no reranker, base generator), embed (+ tuned embedder), embed_rerank
(+ tuned reranker), full (+ RAFT generator), and any combination named in ``eval.custom``. A
configuration whose tuned component's stage has not run is skipped with a logged note, so eval works
after any subset of stages.

Retrieval is batched: one :class:`~pipeline.retrieval.DenseRetriever` per embedder (corpus
embeddings cached under ``cache/embeddings``), exact top-k for all queries in one matrix product, one
batched rerank per reranker — never one LlamaIndex retrieve per query. Generation is left-padded,
batched, greedy decoding with the HF model, prompted exactly as RAFT trained
(:func:`pipeline.raft_format.build_messages` + the tokenizer's chat template, :mod:`pipeline.generator`).

Writes eval/report.md, eval/report.json, eval/per_query.csv, eval/metrics.png, eval/deltas.png and
eval/report.html (one self-contained page with the stage cards, :mod:`eval.html_report`).
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from eval import report as report_io
from eval.html_report import write_html_report
from eval.metrics import (
    Interval,
    abstained,
    bootstrap_mean,
    exact_match,
    format_compliance,
    labelled_recall,
    mean_defined,
    oracle_citation,
    paired_bootstrap,
    parse_judge_score,
    quote_precision,
    token_f1,
    verdict,
)
from eval.probes import probe_similarities
from pipeline.components import Components, load_cross_encoder, resolve_components
from pipeline.config import AssembleConfig, RagtuneConfig
from pipeline.entry import run_stage
from pipeline.generator import GenerationMemo, load_generator
from pipeline.hybrid import bm25_rankings, bm25_retriever, fuse_rankings
from pipeline.llm import make_backend
from pipeline.models import resolve_model
from pipeline.promotion import promotion_report
from pipeline.raft_format import build_messages, parse_answer
from pipeline.ranking import per_query_metrics
from pipeline.retrieval import DenseRetriever, load_fusion_weight, rerank
from pipeline.rundir import RunDir, StageInputError, is_main_process, read_jsonl

logger = logging.getLogger(__name__)

STAGE = "eval"
# The base model of every component is read from its stage's section, so those sections count too.
CONFIG_SECTIONS = ("eval", "assemble", "embed", "rerank", "raft")
BASELINE = "rag_only"
BUILTIN_CONFIGURATIONS: dict[str, dict[str, str]] = {
    "rag_only": {"embedder": "base", "reranker": "none", "generator": "base"},
    "embed": {"embedder": "tuned", "reranker": "none", "generator": "base"},
    "embed_rerank": {"embedder": "tuned", "reranker": "tuned", "generator": "base"},
    "full": {"embedder": "tuned", "reranker": "tuned", "generator": "tuned"},
}
VERDICT_METRICS = ("ndcg@10", "recall@10", "f1")
GENERATION_METRICS = (
    "em",
    "f1",
    "quote_precision",
    "oracle_citation",
    "format_ok",
    "abstain_with_evidence",
    "abstain_no_oracle",
    "judge",
)
LOWER_IS_BETTER = frozenset({"abstain_with_evidence"})
JUDGE_SYSTEM = (
    "You grade answers to questions about internal documentation. Compare the candidate answer with "
    "the reference answer and rate it from 1 (wrong or unrelated) to 5 (fully correct and complete). "
    "Reply with one line: 'Score: N'."
)
_JUDGE_FIELDS = re.compile(r"Reference answer:\n(.*?)\n\nCandidate answer:\n(.*?)\n\nScore", re.DOTALL)
Messages = list[dict[str, str]]


# -- configurations and their components ------------------------------------------------------------
def configuration_choices(cfg: RagtuneConfig) -> dict[str, AssembleConfig]:
    """Every configuration to evaluate, in order (``rag_only`` first), as a complete AssembleConfig.

    A custom configuration only overrides the fields it sets; the rest (top_k, top_n,
    max_new_tokens) come from ``cfg.assemble``, so all configurations share one retrieval depth unless
    a custom one says otherwise.

    Raises:
        ValueError: a name in ``eval.configurations`` that is neither built in nor in ``eval.custom``.
    """
    names = [BASELINE, *(n for n in cfg.eval.configurations if n != BASELINE)]
    names += [n for n in cfg.eval.custom if n not in names]
    choices = {}
    for name in names:
        if name in cfg.eval.custom:
            custom = cfg.eval.custom[name]
            update = custom.model_dump(include=custom.model_fields_set)
        elif name in BUILTIN_CONFIGURATIONS:
            update = BUILTIN_CONFIGURATIONS[name]
        else:
            raise ValueError(
                f"eval.configurations: unknown configuration {name!r}; built in: "
                f"{', '.join(BUILTIN_CONFIGURATIONS)}; define others under eval.custom"
            )
        choices[name] = cfg.assemble.model_copy(update=update)
    return choices


# -- retrieval ----------------------------------------------------------------------------------------
@dataclass
class Ranking:
    """Per query, chunk ids best first, and the wall time it took for all queries.

    ``scores`` are the retriever's scores of ``ranked`` (first stage only; None once reranked).
    """

    ranked: list[list[str]]
    seconds: float
    scores: list[list[float]] | None = None


def retrieve(retriever: DenseRetriever, texts: Sequence[str], depth: int) -> Ranking:
    """Top-``depth`` chunk ids for every query: one batched encode and one exact top-k."""
    started = time.perf_counter()
    scores, ids = retriever.search(list(texts), k=depth)
    return Ranking(ids, time.perf_counter() - started, scores)


def rerank_ranking(
    cross_encoder,
    texts: Sequence[str],
    first: Ranking,
    chunks: dict[str, dict],
    top_k: int,
    fusion_weight: float = 1.0,
) -> Ranking:
    """Rerank each query's first ``top_k`` candidates in one batched call; deeper ranks keep their order.

    The order is the one serving uses: the cross-encoder's scores fused with the retriever's at
    ``fusion_weight`` (1.0: the cross-encoder alone). Keeping the retriever's tail below ``top_k`` lets
    recall@k for k > top_k stay comparable with the configurations without a reranker.
    """
    started = time.perf_counter()
    candidates = [[chunks[c] for c in ranked[:top_k]] for ranked in first.ranked]
    first_scores = [row[:top_k] for row in first.scores] if first.scores is not None else None
    scored = rerank(cross_encoder, texts, candidates, first_scores, fusion_weight)
    ranked = [[c["id"] for c, _ in s] + r[top_k:] for s, r in zip(scored, first.ranked, strict=True)]
    return Ranking(ranked, first.seconds + time.perf_counter() - started)


def any_hybrid(choices) -> bool:
    """True when some configuration retrieves with BM25 + dense (``assemble.retrieval: hybrid``)."""
    return any(c.retrieval == "hybrid" for c in choices)


def hybrid_ranking(dense: Ranking, bm25: list[list[str]], hybrid_depth: int, depth: int) -> Ranking:
    """The dense and BM25 top ``hybrid_depth`` of every query fused by reciprocal rank (as served), cut to ``depth``.

    BM25's time is not in ``seconds``: it is measured once for all configurations, not per query here.
    """
    started = time.perf_counter()
    ranked, scores = fuse_rankings(dense.ranked, bm25, hybrid_depth, depth)
    return Ranking(ranked, dense.seconds + time.perf_counter() - started, scores)


# -- queries ------------------------------------------------------------------------------------------
def select_queries(queries: list[dict], origin: str, max_queries: int | None, seed: int) -> tuple[list[dict], str]:
    """Held-out queries of the requested origin (auto: human if any, else all), capped by a seeded sample.

    Returns:
        (queries in file order, the origin actually used).
    """
    held_out = [q for q in queries if q.get("split") == "eval"]
    if origin == "auto":
        origin = "human" if any(q["origin"] == "human" for q in held_out) else "all"
    chosen = held_out if origin == "all" else [q for q in held_out if q["origin"] == origin]
    if max_queries is not None and len(chosen) > max_queries:
        keep = set(random.Random(seed).sample(range(len(chosen)), max_queries))
        chosen = [q for i, q in enumerate(chosen) if i in keep]
    return chosen, origin


# -- scoring ------------------------------------------------------------------------------------------
def score_generation(
    generation: str, no_oracle_generation: str, context: Sequence[str], reference: str, positives: Sequence[str]
) -> dict[str, float | None]:
    """Per-query generation metrics (see :mod:`eval.metrics`).

    The final answer is the text after ``##Answer:``; a generation without that tag is scored as a
    whole, so an untrained base generator still gets credit for a correct answer in free form.
    """
    parsed = parse_answer(generation)
    answer = parsed.answer if parsed.well_formed or parsed.answer else generation
    return {
        "em": exact_match(answer, reference),
        "f1": token_f1(answer, reference),
        "quote_precision": quote_precision(parsed.quotes, context),
        "oracle_citation": oracle_citation(parsed.quotes, positives),
        "format_ok": format_compliance(generation),
        "abstain_with_evidence": abstained(generation),
        "abstain_no_oracle": abstained(no_oracle_generation),
    }


def judge_messages(question: str, reference: str, answer: str) -> Messages:
    """Chat messages asking the judge for a 1-5 score of ``answer`` against ``reference``."""
    user = (
        f"Question:\n{question.strip()}\n\nReference answer:\n{reference.strip()}\n\n"
        f"Candidate answer:\n{answer.strip()}\n\nScore the candidate from 1 to 5."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def extractive_judge(messages: Messages) -> str:
    """Offline stand-in judge (provider ``extractive``): the score follows token F1, 1 + round(4 F1)."""
    match = _JUDGE_FIELDS.search(messages[-1]["content"])
    if match is None:
        raise ValueError("judge prompt without reference and candidate answers")
    return f"Score: {1 + round(4 * token_f1(match.group(2), match.group(1)))}"


def compare(
    rows: dict[str, list[dict]], names: list[str], metrics: Sequence[str], samples: int, seed: int
) -> dict[str, dict]:
    """Paired bootstrap deltas of every metric against ``rag_only`` and against the previous configuration."""
    deltas: dict[str, dict] = {}
    for i, name in enumerate(names[1:], 1):
        refs = {"vs_rag_only": names[0], "vs_previous": names[i - 1]}
        deltas[name] = {}
        for label, ref in refs.items():
            intervals = {}
            for metric in metrics:
                iv = paired_bootstrap(
                    [r.get(metric) for r in rows[ref]], [r.get(metric) for r in rows[name]], samples, seed
                )
                intervals[metric] = iv.as_dict() if iv else None
            deltas[name][label] = {"reference": ref, "metrics": intervals}
    return deltas


def verdicts(deltas: dict[str, dict], metrics: Sequence[str]) -> dict[str, list[dict]]:
    """Gained / no significant change / hurt per configuration, metric and reference.

    Each configuration's verdicts against its previous step come first: they say what that step itself
    added (a tuned reranker over the tuned embedder), where the verdicts against ``rag_only`` also count
    every earlier step's gain.
    """
    out: dict[str, list[dict]] = {}
    for name, by_ref in deltas.items():
        out[name] = []
        for label, entry in sorted(by_ref.items(), key=lambda item: item[0] != "vs_previous"):
            if label == "vs_previous" and entry["reference"] == by_ref["vs_rag_only"]["reference"]:
                continue  # the first compared configuration's previous one is rag_only itself
            for metric in metrics:
                iv = entry["metrics"].get(metric)
                if iv is None:
                    continue
                word = verdict(Interval(**iv), higher_is_better=metric not in LOWER_IS_BETTER)
                out[name].append({"metric": metric, "vs": entry["reference"], "label": label, "verdict": word, **iv})
    return out


# -- the stage ----------------------------------------------------------------------------------------
def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict:
    """Evaluate every available configuration on the held-out queries and write the report.

    Returns:
        The report (also written to eval/report.json); the stage is skipped when fresh unless ``force``.
    """
    started = time.time()
    seed = cfg.run.seed

    # 1. Load the corpus and the held-out queries.
    paths = run.require("data", "corpus", "queries")
    corpus = read_jsonl(paths["corpus"])
    chunks = {c["id"]: c for c in corpus}
    queries, origin = select_queries(read_jsonl(paths["queries"]), cfg.eval.query_origin, cfg.eval.max_queries, seed)
    if not queries:
        raise ValueError(f"eval: no held-out queries of origin {cfg.eval.query_origin!r} in {paths['queries']}")
    texts = [q["text"] for q in queries]
    answered = [i for i, q in enumerate(queries) if q.get("answer")]
    if cfg.eval.generation_max_queries and len(answered) > cfg.eval.generation_max_queries:
        answered = sorted(random.Random(seed).sample(answered, cfg.eval.generation_max_queries))
    generation = cfg.eval.generation and bool(answered)
    if cfg.eval.generation and not answered:
        logger.info("eval: no held-out query has a reference answer: retrieval-only mode")
    logger.info("eval: %d held-out %s queries (%d answered and scored)", len(queries), origin, len(answered))
    too_few = report_io.too_few_queries_warning(len(queries), cfg.eval.min_queries)
    if too_few:
        logger.warning("eval: %s", too_few)

    # 2. Resolve each configuration's components; skip those whose stages have not run.
    components: dict[str, Components] = {}
    choices: dict[str, AssembleConfig] = {}
    skipped: dict[str, str] = {}
    for name, choice in configuration_choices(cfg).items():
        try:
            comp = resolve_components(cfg, run, choice, need_generator=generation)
        except StageInputError as e:
            skipped[name] = str(e)
            logger.warning("eval: skipping configuration %r: %s", name, e)
            continue
        twin = next(
            (n for n, c in components.items() if not generation and c.retrieval_key == comp.retrieval_key), None
        )
        same_first_stage = twin is not None and choices[twin].retrieval == choice.retrieval
        if same_first_stage and choices[twin].top_k == choice.top_k:
            skipped[name] = f"same retrieval as {twin!r} (retrieval-only mode)"
            logger.info("eval: skipping configuration %r: %s", name, skipped[name])
            continue
        components[name], choices[name] = comp, choice
    names = list(components)
    if BASELINE not in components:
        raise StageInputError(f"eval: the baseline configuration {BASELINE!r} cannot run: {skipped.get(BASELINE)}")
    # Fresh means: same config, same data, and the same tuned components as the last evaluation.
    config_hash = cfg.section_hash(*CONFIG_SECTIONS)
    inputs = run.input_hashes("data", "corpus", "queries")
    for comp in components.values():
        inputs |= comp.inputs
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("eval: finished and fresh, skipping (--force reruns it)")
        report = report_io.read_report(run.path("eval/report.json"))
        print(report_io.render_table(report))
        return report
    k_values = sorted({*cfg.eval.k_values, 10})
    depth = max(max(k_values), *(c.top_k for c in choices.values()))
    depth = max(depth, *(c.hybrid_depth for c in choices.values() if c.retrieval == "hybrid"), 0)
    bm25 = bm25_rankings(bm25_retriever(corpus, depth), texts) if any_hybrid(choices.values()) else None

    # 3. Retrieve (one batched pass per embedder) and rerank (one batched pass per reranker).
    retrievers: dict[str, DenseRetriever] = {}
    first_stage: dict[str, Ranking] = {}
    rankings: dict[str, Ranking] = {}
    cross_encoders: dict[str, Any] = {}
    for name in names:
        comp, choice = components[name], choices[name]
        if comp.embedder not in retrievers:
            retrievers[comp.embedder] = DenseRetriever.load(
                comp.embedder, corpus, cache_dir=run.path("cache/embeddings")
            )
            first_stage[comp.embedder] = retrieve(retrievers[comp.embedder], texts, depth)
        ranking = first_stage[comp.embedder]
        if choice.retrieval == "hybrid":
            ranking = hybrid_ranking(ranking, bm25, choice.hybrid_depth, depth)
        if comp.reranker is not None:
            if comp.reranker not in cross_encoders:
                cross_encoders[comp.reranker] = load_cross_encoder(comp.reranker, cfg.rerank.max_length, seed)
            weight = load_fusion_weight(comp.reranker)
            ranking = rerank_ranking(cross_encoders[comp.reranker], texts, ranking, chunks, choice.top_k, weight)
        rankings[name] = ranking
    cross_encoders.clear()

    # 4. Score retrieval per query.
    rows: dict[str, list[dict]] = {
        name: [
            {"qid": q["qid"], **per_query_metrics(ranked, q["relevance"], k_values)}
            for q, ranked in zip(queries, rankings[name].ranked, strict=True)
        ]
        for name in names
    }
    retrieval_metrics = [k for k in rows[BASELINE][0] if k != "qid"]
    # the fine-tune rule reads recall at the level relevance was labelled at (evidence chunks or documents)
    baseline_recall = labelled_recall(queries, rankings[BASELINE].ranked, {c["id"]: c["doc_id"] for c in corpus})
    latency = {name: {"retrieval_ms": 1000 * rankings[name].seconds / len(queries)} for name in names}

    # 5. Generate (batched, per generator), with and without the evidence in context.
    answers: dict[str, dict[int, tuple[str, str]]] = {}
    judge_usage = None
    if generation:
        by_generator: dict[tuple[str | None, str | None], list[str]] = {}
        for name in names:
            by_generator.setdefault(components[name].generator_key, []).append(name)
        for (gen_path, adapter), group in by_generator.items():
            memo = GenerationMemo(*load_generator(gen_path, adapter), cfg.eval.generation_batch_size)
            for name in group:
                answers[name], latency[name]["generation_ms"] = _generate_for(
                    memo, queries, answered, rankings[name].ranked, chunks, choices[name], name
                )
            del memo

    # 6. Score generations (and ask the judge, when configured).
    if generation:
        for name in names:
            top_n = choices[name].top_n
            for i in answered:
                q = queries[i]
                context = [chunks[c]["text"] for c in rankings[name].ranked[i][:top_n]]
                positives = [chunks[c]["text"] for c in q["positives"] if c in chunks]
                main_answer, no_oracle_answer = answers[name][i]
                rows[name][i] |= score_generation(main_answer, no_oracle_answer, context, q["answer"], positives)
                rows[name][i] |= {"answer": main_answer, "no_oracle_answer": no_oracle_answer}
        if cfg.eval.judge is not None:
            judge_usage = _judge(cfg, run, queries, answered, names, rows)
    for name in names:
        latency[name]["total_ms"] = sum(latency[name].values())

    # 7. Aggregate, bootstrap the deltas, read the verdicts.
    metrics = retrieval_metrics + (
        [m for m in GENERATION_METRICS if m != "judge" or cfg.eval.judge] if generation else []
    )
    samples = cfg.eval.bootstrap_samples
    configurations = {}
    for name in names:
        summary, intervals = {}, {}
        for metric in metrics:
            values = [r.get(metric) for r in rows[name]]
            summary[metric] = mean_defined(values)
            iv = bootstrap_mean(values, samples, seed)
            intervals[metric] = iv.as_dict() if iv else None
        configurations[name] = {
            "components": {"embedder": choices[name].embedder, "reranker": choices[name].reranker}
            | ({"generator": choices[name].generator} if generation else {})
            | {"paths": {k: v for k, v in vars(components[name]).items() if k != "inputs" and v is not None}},
            "retrieval": choices[name].retrieval,
            # how much the reranker's score counted against the retriever's (None: no reranker)
            "reranker_weight": load_fusion_weight(components[name].reranker) if components[name].reranker else None,
            "top_k": choices[name].top_k,
            "top_n": choices[name].top_n,
            "metrics": summary,
            "intervals": intervals,
            "latency_ms_per_query": latency[name],
        }
    deltas = compare(rows, names, metrics, samples, seed)
    verdict_metrics = [m for m in VERDICT_METRICS if m in metrics]

    # 8. Probe the base and tuned embedders.
    probes = _probes(cfg, run, retrievers)

    # 9. Write the report, the per-query rows and the charts; record the stage last.
    report = {
        "mode": "retrieval+generation" if generation else "retrieval-only",
        "queries": {"n": len(queries), "origin": origin, "with_answers": len(answered), "split": "eval"},
        "k_values": k_values,
        "metrics": metrics,
        "configurations": configurations,
        "skipped": skipped,
        "deltas": deltas,
        "verdicts": verdicts(deltas, verdict_metrics),
        "baseline_recall": baseline_recall,
        "fine_tune_note": report_io.fine_tune_note(
            baseline_recall["recall"], report_io.recall_label(baseline_recall), len(queries), cfg.eval.min_queries
        ),
        "warnings": [too_few] if too_few else [],
        "probes": probes,
        "promotion": promotion_report(run),
        "judge": judge_usage,
        "bootstrap": {"samples": samples, "seed": seed, "confidence": 0.95},
    }
    per_query = [
        {"configuration": name, "origin": q["origin"], "question": q["text"], **row}
        for name in names
        for q, row in zip(queries, rows[name], strict=True)
    ]
    outputs = report_io.write_report(run, report, per_query) if is_main_process() else {}
    if is_main_process():
        outputs |= write_html_report(run, report, per_query)
    run.record(
        STAGE,
        config_hash=config_hash,
        inputs=inputs,
        started=started,
        outputs=outputs,
        metrics={
            **{f"{n}.{m}": configurations[n]["metrics"][m] for n in names for m in verdict_metrics},
            "queries": len(queries),
            "evaluated": names,
            "skipped": sorted(skipped),
        },
    )
    print(report_io.render_table(report))
    return report


def _generate_for(
    memo: GenerationMemo,
    queries: list[dict],
    answered: list[int],
    ranked: list[list[str]],
    chunks: dict[str, dict],
    choice: AssembleConfig,
    name: str,
) -> tuple[dict[int, tuple[str, str]], float]:
    """Answers with the configuration's top_n context, and without any relevant chunk (should abstain).

    Returns:
        (``{query index: (answer, no-oracle answer)}``, generation ms per query). Only the pass with
        the evidence counts: it is the one a user runs.
    """
    top_n = choice.top_n
    with_evidence = [
        build_messages(queries[i]["text"], [chunks[c]["text"] for c in ranked[i][:top_n]]) for i in answered
    ]
    without = [
        build_messages(
            queries[i]["text"],
            [chunks[c]["text"] for c in ranked[i] if queries[i]["relevance"].get(c, 0) <= 0][:top_n],
        )
        for i in answered
    ]
    main_answers, ms = memo.generate(with_evidence, choice.max_new_tokens, f"generate {name}")
    no_oracle, _ = memo.generate(without, choice.max_new_tokens, f"generate {name} (no oracle)")
    return dict(zip(answered, zip(main_answers, no_oracle, strict=True), strict=True)), ms


def _judge(
    cfg: RagtuneConfig, run: RunDir, queries: list[dict], answered: list[int], names: list[str], rows: dict
) -> dict:
    """Score every answer 1-5 with the configured judge through the LLM backend layer (cached, budgeted)."""
    backend = make_backend(cfg.eval.judge, run.path("eval/cache"), extractor=extractive_judge)
    items = [(name, i) for name in names for i in answered]
    requests = [
        judge_messages(
            queries[i]["text"],
            queries[i]["answer"],
            parse_answer(rows[name][i]["answer"]).answer or rows[name][i]["answer"],
        )
        for name, i in items
    ]
    replies = backend.generate(requests, temperature=0.0, desc="judge")
    unreadable = 0
    for (name, i), reply in zip(items, replies, strict=True):
        score = parse_judge_score(reply)
        unreadable += score is None
        rows[name][i]["judge"] = score
    if unreadable:
        logger.warning("eval: %d judge replies had no readable 1-5 score (left out of the judge mean)", unreadable)
    return {"model": cfg.eval.judge.model, "provider": cfg.eval.judge.provider, "unreadable": unreadable} | {
        "usage": backend.usage.as_dict()
    }


def _probes(cfg: RagtuneConfig, run: RunDir, retrievers: dict[str, DenseRetriever]) -> dict | None:
    """Probe similarities for the base embedder and, when stage 1 has run, the tuned one."""
    probes = cfg.eval.probes
    if not probes.close and not probes.far:
        return None
    from sentence_transformers import SentenceTransformer

    paths = {"base": resolve_model(cfg.embed.base_model)}
    try:
        paths["tuned"] = str(run.require("embed", "model")["model"])
    except StageInputError as e:
        logger.info("eval: tuned embedder not available for probes (%s)", e)
    out = {}
    for label, path in paths.items():
        model = retrievers[path].model if path in retrievers else SentenceTransformer(path)
        out[label] = probe_similarities(model, probes.close, probes.far)
    return out


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune eval stage: plain RAG vs the tuned stack, on held-out queries")
