"""Eval stage: plain RAG against the tuned stack, component by component, on held-out queries.

Run it:
    ragtune eval configs/demo.yaml
    python -m ragtune.eval.harness --config configs/demo.yaml [eval.max_queries=50]

Configurations (``eval.configurations``, evaluated in order, ``rag_only`` always first):
rag_only (base embedder, no reranker, base generator), embed (+ tuned embedder), embed_rerank
(+ tuned reranker), extractive (embed_rerank's context answered by its best-matching sentence, no LLM: the
floor every generator is compared with), full (+ RAFT generator), and any combination named in ``eval.custom``. A
configuration whose tuned component's stage has not run is skipped with a logged note, so eval works
after any subset of stages. Answers are generated for the configurations ``eval.generation_configurations`` names
(by default the ones the generation verdicts read: rag_only, embed_rerank, extractive, full and the custom ones);
the others are scored on retrieval alone.

The steps live in their own modules: which configurations and queries (:mod:`ragtune.eval.configurations`),
batched retrieval and reranking (:mod:`ragtune.eval.rankings`), answers and their scores (:mod:`ragtune.eval.answers`:
left-padded, batched, greedy decoding prompted exactly as RAFT trained), the optional judge
(:mod:`ragtune.eval.judge`), means, paired deltas and verdicts (:mod:`ragtune.eval.comparison`), the forgetting
check of a tuned generator on general-knowledge questions (:mod:`ragtune.eval.forgetting`), and with
``embed.matryoshka_dims`` the embedders' retrieval at each dimension (:mod:`ragtune.eval.dimensions`).

Writes eval/report.md, eval/report.json, eval/per_query.csv, eval/metrics.png, eval/deltas.png and
eval/report.html (one self-contained page with the stage cards, :mod:`ragtune.eval.html_report`).
"""

from __future__ import annotations

import json
import logging
import random
import time
from dataclasses import dataclass

from ragtune.eval import report as report_io
from ragtune.eval.answers import generate_answers, score_answers
from ragtune.eval.comparison import VERDICT_METRICS, compare, summarize, verdicts
from ragtune.eval.configurations import BASELINE, Plan, plan_configurations, select_queries
from ragtune.eval.dimensions import dimension_table
from ragtune.eval.forgetting import GENERAL_KNOWLEDGE, GeneralQuestions, forgetting_check, load_general_questions
from ragtune.eval.html_report import write_html_report
from ragtune.eval.judge import judge_answers
from ragtune.eval.metrics import labelled_recall
from ragtune.eval.probes import probe_similarities
from ragtune.eval.rankings import Ranking, rank_configurations
from ragtune.pipeline.components import tuned_embedder_path
from ragtune.pipeline.config import RagtuneConfig
from ragtune.pipeline.dev_slice import written_by_the_scorer
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.extractive import EXTRACTIVE
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.precision import inference_dtype
from ragtune.pipeline.promotion import EmbedFigures, promotion_report
from ragtune.pipeline.ranking import per_query_metrics
from ragtune.pipeline.rundir import EVAL_JSON, SCORE_CACHE, RunDir, StageInputError, is_main_process, read_jsonl
from ragtune.pipeline.stack import StackLoader

logger = logging.getLogger(__name__)

STAGE = "eval"
# The base model of every component is read from its stage's section, so those sections count too.
CONFIG_SECTIONS = ("eval", "assemble", "embed", "rerank", "raft")
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


@dataclass
class HeldOut:
    """The corpus and the held-out queries eval measures, and which of them are answered and scored."""

    corpus: list[dict]
    queries: list[dict]
    origin: str
    answered: list[int]  # indices of the queries whose answers are generated and scored
    generation: bool  # False: retrieval-only mode
    warning: str | None  # too few queries for the intervals to mean much

    @property
    def chunks(self) -> dict[str, dict]:
        return {c["id"]: c for c in self.corpus}

    @property
    def texts(self) -> list[str]:
        return [q["text"] for q in self.queries]


def load_held_out(cfg: RagtuneConfig, run: RunDir) -> HeldOut:
    """The corpus and the held-out queries of ``eval.query_origin``, capped as ``eval`` says.

    Raises:
        ValueError: no held-out query of that origin.
    """
    seed = cfg.run.seed
    paths = run.require("data", "corpus", "queries")
    queries, origin = select_queries(read_jsonl(paths["queries"]), cfg.eval.query_origin, cfg.eval.max_queries, seed)
    if not queries:
        raise ValueError(f"eval: no held-out queries of origin {cfg.eval.query_origin!r} in {paths['queries']}")
    answered = [i for i, q in enumerate(queries) if q.get("answer")]
    if cfg.eval.generation_max_queries and len(answered) > cfg.eval.generation_max_queries:
        answered = sorted(random.Random(seed).sample(answered, cfg.eval.generation_max_queries))
    if cfg.eval.generation and not answered:
        logger.info("eval: no held-out query has a reference answer: retrieval-only mode")
    logger.info("eval: %d held-out %s queries (%d answered and scored)", len(queries), origin, len(answered))
    warning = report_io.too_few_queries_warning(len(queries), cfg.eval.min_queries)
    if warning:
        logger.warning("eval: %s", warning)
    generation = cfg.eval.generation and bool(answered)
    return HeldOut(read_jsonl(paths["corpus"]), queries, origin, answered, generation, warning)


def score_retrieval(held: HeldOut, rankings: dict[str, Ranking], k_values: list[int]) -> dict[str, list[dict]]:
    """Per configuration, one row per query with its graded ranking metrics at every k."""
    return {
        name: [
            {"qid": q["qid"], **per_query_metrics(ranked, q["relevance"], k_values)}
            for q, ranked in zip(held.queries, ranking.ranked, strict=True)
        ]
        for name, ranking in rankings.items()
    }


def configuration_entry(
    plan: Plan, name: str, generation: bool, loader: StackLoader, summary: dict, intervals: dict, latency: dict
) -> dict:
    """One configuration in the report: its components, retrieval settings, metrics and latency."""
    choice, comp = plan.choices[name], plan.components[name]
    return {
        "components": {"embedder": choice.embedder, "reranker": choice.reranker}
        | ({"generator": choice.generator} if generation else {})
        | ({"quote": choice.quote} if generation and choice.generator != EXTRACTIVE else {})  # who writes the quote
        | ({"truncate_dim": choice.truncate_dim} if choice.truncate_dim else {})  # the embedder's served dimension
        | {"paths": {k: v for k, v in vars(comp).items() if k != "inputs" and v is not None}},
        "retrieval": choice.retrieval,
        # how much the reranker's score counted against the retriever's (None: no reranker)
        "reranker_weight": loader.fusion_weight(comp.reranker) if comp.reranker else None,
        "top_k": choice.top_k,
        "top_n": choice.top_n,
        "metrics": summary,
        "intervals": intervals,
        "latency_ms_per_query": latency,
    }


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict:
    """Evaluate every available configuration on the held-out queries and write the report.

    Returns:
        The report (also written to eval/report.json); the stage is skipped when fresh unless ``force``.
    """
    started = time.time()
    seed = cfg.run.seed

    # 1. Load the corpus and the held-out queries.
    held = load_held_out(cfg, run)
    queries, chunks = held.queries, held.chunks

    # 2. Resolve each configuration's components; skip those whose stages have not run.
    plan = plan_configurations(cfg, run, held.generation)
    names = plan.names
    # Fresh means: same config, same data, and the same tuned components as the last evaluation.
    config_hash, inputs = run.freshness(cfg, CONFIG_SECTIONS, {"data": ("corpus", "queries")}, inputs=plan.inputs)
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("eval: finished and fresh, skipping (--force reruns it)")
        report = report_io.read_report(run.path(EVAL_JSON))
        print(report_io.render_table(report))
        return report

    # 3. Retrieve (one batched pass per embedder) and rerank (one batched pass per reranker); every model the
    #    configurations share is loaded once, by one loader.
    loader = StackLoader(cfg, run.path(SCORE_CACHE))
    k_values = sorted({*cfg.eval.k_values, 10})
    choices = plan.choices.values()
    depth = max(max(k_values), *(c.top_k for c in choices))
    depth = max(depth, *(c.hybrid_depth for c in choices if c.retrieval == "hybrid"), 0)
    rankings, retrievers = rank_configurations(
        run, held.corpus, held.texts, plan.components, plan.choices, depth, loader, cfg.run.score_block_mb
    )

    # 4. Score retrieval per query.
    rows = score_retrieval(held, rankings, k_values)
    retrieval_metrics = [k for k in rows[BASELINE][0] if k != "qid"]
    # the fine-tune rule reads recall at the level relevance was labelled at (evidence chunks or documents), on
    # the human-written queries alone: a recall on synthetic ones is one the data stage's own filters produced
    doc_of = {c["id"]: c["doc_id"] for c in held.corpus}
    origins = query_origins(run, queries)
    baseline_recall = human_recall(queries, rankings[BASELINE].ranked, doc_of)
    latency = {name: {"retrieval_ms": 1000 * rankings[name].seconds / len(queries)} for name in names}

    # 5. Generate (batched, per generator) with and without the evidence for the answered configurations, and the
    #    forgetting check's questions while each generator is loaded; score, ask the judge.
    judge_usage = forgetting = None
    if held.generation:
        ranked = {name: rankings[name].ranked for name in plan.answered}
        general = general_questions(cfg, plan)
        answers, generation_ms = generate_answers(
            {name: plan.components[name] for name in plan.answered},
            {name: plan.choices[name] for name in plan.answered},
            queries,
            held.answered,
            ranked,
            chunks,
            cfg.eval.generation_batch_size,
            loader,
            general,
        )
        forgetting = check_forgetting(cfg, general, loader)
        loader.release_generators()
        for name in plan.answered:
            latency[name]["generation_ms"] = generation_ms[name]
            score_answers(rows[name], answers[name], queries, ranked[name], chunks, plan.choices[name].top_n)
        if cfg.eval.judge is not None:
            judge_usage = judge_answers(cfg, run, queries, held.answered, plan.answered, rows)
    for name in names:
        latency[name]["total_ms"] = sum(latency[name].values())

    # 6. Aggregate, bootstrap the deltas, read the verdicts; probe the embedders, measure them at each dimension.
    metrics = retrieval_metrics + (
        [m for m in GENERATION_METRICS if m != "judge" or cfg.eval.judge] if held.generation else []
    )
    samples = cfg.eval.bootstrap_samples
    configurations = {
        name: configuration_entry(
            plan, name, name in plan.answered, loader, *summarize(rows[name], metrics, samples, seed), latency[name]
        )
        for name in names
    }
    deltas = compare(rows, names, metrics, samples, seed)
    verdict_metrics = [m for m in VERDICT_METRICS if m in metrics]
    probes = _probes(cfg, run, loader)
    dimensions = dimension_table(cfg, run, held.corpus, queries, retrievers, loader)

    # 7. Write the report, the per-query rows and the charts; record the stage last.
    report = {
        "mode": "retrieval+generation" if held.generation else "retrieval-only",
        "queries": {
            "n": len(queries),
            "origin": held.origin,
            "with_answers": len(held.answered),
            "split": "eval",
            "origins": origins,
        },
        "k_values": k_values,
        "metrics": metrics,
        "configurations": configurations,
        "skipped": plan.skipped,
        "deltas": deltas,
        "verdicts": verdicts(deltas, verdict_metrics),
        "baseline_recall": baseline_recall,
        "fine_tune_note": report_io.fine_tune_call(baseline_recall, origins, cfg.eval.min_queries),
        "warnings": [
            w
            for w in (
                held.warning,
                report_io.optimistic_warning(origins),
                report_io.circular_reranker_warning(origins, any(written_by_the_scorer(q, cfg) for q in queries)),
            )
            if w
        ],
        "probes": probes,
        "dimensions": dimensions,
        "promotion": promotion_report(run, cfg.gpl.enabled),
        "dev_slice": dev_slice_origin(run),
        "judge": judge_usage,
        "forgetting": forgetting,
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
            "skipped": sorted(plan.skipped),
        },
    )
    print(report_io.render_table(report))
    return report


def human_recall(queries: list[dict], ranked: list[list[str]], doc_of: dict[str, str]) -> dict | None:
    """:func:`ragtune.eval.metrics.labelled_recall` over the human-written queries alone (None: there are none).

    The fine-tune rule reads it: a synthetic query passed the data stage's own filters, so a recall on it is
    one the pipeline produced.

    Example:
        >>> queries = [{"origin": "human", "positives": ["a"], "relevance": {"a": 1}},
        ...            {"origin": "synthetic", "positives": ["b"], "relevance": {"b": 1}}]
        >>> human_recall(queries, [["x"], ["b"]], {"a": "A", "b": "B", "x": "X"})["recall"]
        0.0
    """
    human = [i for i, q in enumerate(queries) if q["origin"] == "human"]
    if not human:
        return None
    return labelled_recall([queries[i] for i in human], [ranked[i] for i in human], doc_of)


def query_origins(run: RunDir, queries: list[dict]) -> dict:
    """The evaluated queries' origin: counts, and from the data report who wrote the synthetic ones and how
    they were filtered (:func:`ragtune.stages.data.prepare.held_out_origin` writes it).

    Returns:
        ``{"human", "synthetic", "synthetic_written_by", "synthetic_filter", "optimistic"}``.
    """
    human = sum(q["origin"] == "human" for q in queries)
    synthetic = len(queries) - human
    out = {"human": human, "synthetic": synthetic, "synthetic_written_by": None, "synthetic_filter": None}
    if synthetic:
        try:
            data = json.loads(run.require("data", "report")["report"].read_text(encoding="utf-8"))
        except (StageInputError, ValueError) as e:
            logger.warning("eval: no data report to say where the synthetic queries come from (%s)", e)
            data = {}
        held_out = data.get("held_out")
        if held_out is not None:
            out["synthetic_written_by"] = held_out.get("synthetic_written_by")
            out["synthetic_filter"] = held_out.get("synthetic_filter")
    out["optimistic"] = report_io.optimistic_warning(out) is not None
    return out


def dev_slice_origin(run: RunDir) -> dict | None:
    """What the promotion gates judged on: stage 1's dev queries and, from the data report, their origin.

    Returns:
        ``{"queries", "human", "synthetic", "filter"}`` (the data report's ``dev`` section and stage 1's
        ``dev_queries``), or None when stage 1 recorded no dev slice.
    """
    embed = run.load_manifest().get("embed")
    n = EmbedFigures.from_metrics(embed.metrics).queries if embed is not None else None
    if not n:
        return None
    try:
        data = json.loads(run.require("data", "report")["report"].read_text(encoding="utf-8"))
    except (StageInputError, ValueError):
        data = {}
    pool = data.get("dev") or {}
    synth = data.get("synth") or {}
    human = min(pool.get("human", 0), n)
    return {
        "queries": n,
        "human": human,
        "synthetic": n - human,
        "filter": (synth.get("shares") or {}).get("dev", {}).get("filter"),
    }


def general_questions(cfg: RagtuneConfig, plan: Plan) -> GeneralQuestions | None:
    """The forgetting check (:mod:`ragtune.eval.forgetting`) of the first tuned generator against the base one:
    its questions, to ask each of the two while eval has it loaded.

    Returns:
        None when it is off or no evaluated configuration uses a tuned generator.
    """
    keys = [plan.components[name].generator_key for name in plan.answered]
    keys = [k for k in keys if k[0] != EXTRACTIVE]  # the extractive answerer has no knowledge to forget
    tuned = next((k for k in keys if k[1] is not None or k[0] != keys[0][0]), None)
    if not cfg.eval.forgetting or tuned is None:
        return None
    dtype = inference_dtype(cfg.assemble.dtype)
    return GeneralQuestions(
        {"base": (*keys[0], dtype), "tuned": (*tuned, dtype)},
        load_general_questions(cfg.eval.forgetting_questions or GENERAL_KNOWLEDGE),
        cfg.eval.generation_batch_size,
        cfg.eval.forgetting_max_new_tokens,
    )


def check_forgetting(cfg: RagtuneConfig, general: GeneralQuestions | None, loader: StackLoader) -> dict | None:
    """The forgetting check's result: the answers ``general`` collected, a generator it missed asked now.

    Returns:
        Its result, or None when there is no check (:func:`general_questions`).
    """
    if general is None:
        return None
    result = forgetting_check(
        general.generators["base"][:2],
        general.generators["tuned"][:2],
        general.questions,
        batch_size=general.batch_size,
        max_new_tokens=general.max_new_tokens,
        samples=cfg.eval.bootstrap_samples,
        seed=cfg.run.seed,
        dtype=general.generators["base"][2],
        load=loader.generator,
        asked=general.answers,
    )
    logger.info(
        "eval: forgetting check on %d general questions: base %.3f, tuned %.3f (%s)",
        result["questions"],
        result["base"],
        result["tuned"],
        result["verdict"],
    )
    return result


def _probes(cfg: RagtuneConfig, run: RunDir, loader: StackLoader) -> dict | None:
    """Probe similarities for the base embedder and, when stage 1 has run, the tuned one (full dimension)."""
    probes = cfg.eval.probes
    if not probes.close and not probes.far:
        return None
    paths = {"base": resolve_model(cfg.embed.base_model)}
    try:
        paths["tuned"] = tuned_embedder_path(cfg, run)[0]  # stage 1's model, or the GPL round's when it serves
    except StageInputError as e:
        logger.info("eval: tuned embedder not available for probes (%s)", e)
    return {label: probe_similarities(loader.embedder(path), probes.close, probes.far) for label, path in paths.items()}


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune eval stage: plain RAG vs the tuned stack, on held-out queries")
