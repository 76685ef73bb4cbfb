"""Rerank stage: mine hard negatives with the tuned embedder, train a reranker, evaluate on held-out queries.

Run it:
    ragtune rerank configs/demo.yaml [rerank.kind=cross_encoder rerank.cross_encoder.loss=lambda] [--force]
    accelerate launch -m ragtune.stages.rerank.train --config configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 2 -m ragtune.stages.rerank.train --config configs/demo.yaml   # DDP
    python -m ragtune.stages.rerank.mine --config configs/demo.yaml    # mining only, to read the audit first

Reads embed/model (the tuned embedder, never the base: refused until `ragtune embed` has run) and the
data stage's corpus and queries through the manifest. Train queries of a document-disjoint dev slice
(rerank.dev_fraction) are neither mined nor trained on: they choose the fusion weight of reranker and
retriever scores and draw the learning curve (rerank/learning_curve.png). Writes rerank/negatives/ (mined
dataset, report, histogram, audit), rerank/model/ (the reranker of rerank.kind + model card + ragtune_fusion.json),
rerank/metrics.json (nDCG@10, MRR@10, hit@k of the
tuned retriever alone, the reranker alone and the two fused, on the eval split), then the manifest entry.
Training checkpoints, if any are asked for in `rerank.trainer`, go to rerank/checkpoints/.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.pipeline.components import load_reranker, untrained_reranker
from ragtune.pipeline.config import RagtuneConfig, RerankConfig, check_trainer_keys
from ragtune.pipeline.dev_slice import DEV_MIN_QUERIES
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.precision import bf16_training
from ragtune.pipeline.promotion import RerankFigures
from ragtune.pipeline.ranking import choose_fusion_weight, fused_order, mean_metrics, per_query_metrics
from ragtune.pipeline.retrieval import FUSION_FILE, DenseRetriever, Reranker, reranker_scores
from ragtune.pipeline.rundir import (
    EMBEDDING_CACHE,
    RERANK_CHECKPOINTS,
    RERANK_LEARNING_CURVE,
    RERANK_METRICS,
    RERANK_MODEL,
    RERANK_NEGATIVES,
    RERANK_UNTRAINED,
    SCORE_CACHE,
    RunDir,
    atomic_dir,
    atomic_write_text,
    is_main_process,
    read_jsonl,
)
from ragtune.pipeline.training_args import route_tensorboard
from ragtune.stages.rerank.curve import (
    BestPoint,
    DevCandidates,
    DevCurveCallback,
    curve_point,
    dev_candidates,
    plot_learning_curve,
)
from ragtune.stages.rerank.mine import rerank_dev_split, run_mining
from ragtune.stages.rerank.model import HEAD_PARAMETERS, build_cross_encoder, default_learning_rate
from ragtune.stages.rerank.warm_start import distillation_columns

if TYPE_CHECKING:
    from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainingArguments
    from torch import nn

logger = logging.getLogger(__name__)
KEPT = ("phase", "step", "fused")
STAGE = "rerank"
K_VALUES = (1, 3, 5, 10)


def build_training_columns(
    rows: Sequence[Mapping[str, Any]],
    corpus_by_id: Mapping[str, Mapping[str, Any]],
    loss: str,
    num_negatives: int,
) -> dict[str, list]:
    """Turn mined rows into the columns each cross-encoder loss expects.

    Args:
        rows: mined rows (``query``, ``positives``, ``relevance``, ``negatives`` and optional
            ``random_negatives``, trained on after the hard ones) from
            :func:`ragtune.stages.rerank.mine.mine_hard_negatives`.
        corpus_by_id: chunk id -> chunk row (``text``).
        loss: ``bce`` -> labelled pairs ``(query, passage, label)`` with label 1 for each positive and 0 for
            each negative; ``lambda`` / ``listnet`` -> ``(query, [docs], [labels])`` lists, positives graded
            by their relevance, negatives 0 (queries without negatives are left out: a list of positives
            only teaches nothing); ``mnrl`` -> ``(query, positive, negative_1..negative_n)`` with ``n`` the
            fewest negatives any query got (capped at ``num_negatives``, so every row has the same columns),
            one row per positive, queries without negatives left out.
        num_negatives: the configured negatives per query.

    Returns:
        Column name -> values, ready for ``datasets.Dataset.from_dict`` (column order is what the loss reads).

    Example:
        >>> corpus = {"p": {"text": "P"}, "n": {"text": "N"}}
        >>> rows = [{"query": "q", "positives": ["p"], "relevance": {"p": 2}, "negatives": ["n"]}]
        >>> build_training_columns(rows, corpus, "bce", 1)
        {'query': ['q', 'q'], 'passage': ['P', 'N'], 'label': [1.0, 0.0]}
        >>> build_training_columns(rows, corpus, "lambda", 1)
        {'query': ['q'], 'docs': [['P', 'N']], 'labels': [[2.0, 0.0]]}
    """
    text = {cid: row["text"] for cid, row in corpus_by_id.items()}
    rows = [{**r, "negatives": r["negatives"] + r.get("random_negatives", [])} for r in rows]
    if loss == "bce":
        cols: dict[str, list] = {"query": [], "passage": [], "label": []}
        for r in rows:
            for cid, label in [(p, 1.0) for p in r["positives"]] + [(n, 0.0) for n in r["negatives"]]:
                cols["query"].append(r["query"])
                cols["passage"].append(text[cid])
                cols["label"].append(label)
        return cols
    with_negatives = [r for r in rows if r["negatives"]]
    if loss in ("lambda", "listnet"):
        return {
            "query": [r["query"] for r in with_negatives],
            "docs": [[text[c] for c in r["positives"] + r["negatives"]] for r in with_negatives],
            "labels": [
                [float(r["relevance"][p]) for p in r["positives"]] + [0.0] * len(r["negatives"]) for r in with_negatives
            ],
        }
    if loss == "mnrl":
        n = min([num_negatives] + [len(r["negatives"]) for r in with_negatives])
        cols = {"query": [], "positive": [], **{f"negative_{i}": [] for i in range(1, n + 1)}}
        for r in with_negatives:
            for p in r["positives"]:
                cols["query"].append(r["query"])
                cols["positive"].append(text[p])
                for i, cid in enumerate(r["negatives"][:n], 1):
                    cols[f"negative_{i}"].append(text[cid])
        return cols
    raise ValueError(f"rerank.cross_encoder.loss: unknown loss {loss!r} (bce, lambda, listnet, mnrl)")


def build_loss(model: CrossEncoder, loss: str, columns: Mapping[str, list]) -> nn.Module:
    """The sentence-transformers cross-encoder loss for ``rerank.cross_encoder.loss`` (or its ``warm_start``).

    BCE weighs positives by the negatives-per-positive ratio, as the library's own BCE reranker
    examples do, so the few positives are not drowned out by the many negatives.
    """
    import torch
    from sentence_transformers.cross_encoder import losses

    if loss == "margin_mse":
        return losses.MarginMSELoss(model)
    if loss == "mse":
        return losses.MSELoss(model)
    if loss == "bce":
        positives = sum(label == 1.0 for label in columns["label"])
        ratio = (len(columns["label"]) - positives) / max(positives, 1)
        return losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(max(ratio, 1.0)))
    if loss == "lambda":
        return losses.LambdaLoss(model)
    if loss == "listnet":
        return losses.ListNetLoss(model)
    return losses.MultipleNegativesRankingLoss(model)


def build_training_args(cfg: RerankConfig, output_dir: str, seed: int) -> CrossEncoderTrainingArguments:
    """CrossEncoderTrainingArguments from the typed fields, with ``rerank.trainer`` keys winning.

    Raises:
        ConfigError: for a ``rerank.trainer`` key that is not a CrossEncoderTrainingArguments field, or
            ``output_dir`` (always inside the run directory).
    """
    import torch
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments

    check_trainer_keys("rerank", cfg.trainer, CrossEncoderTrainingArguments)
    route_tensorboard(cfg.trainer, output_dir)  # event files kept beside the checkpoints
    defaults: dict[str, Any] = {
        "num_train_epochs": cfg.epochs,
        "max_steps": cfg.max_steps,
        "per_device_train_batch_size": cfg.batch_size,
        "learning_rate": default_learning_rate(cfg),
        "warmup_steps": 0.1,  # a float below 1 is a share of the steps: no big updates to a fresh head at once
        "seed": seed,
        "save_strategy": "no",
        "report_to": "none",
        "logging_steps": 1,
        "disable_tqdm": not is_main_process(),
        # Without a GPU, only use_cpu makes transformers set up gloo DDP under `accelerate launch --multi_gpu`;
        # otherwise every process trains alone on the whole dataset.
        "use_cpu": not torch.cuda.is_available(),
        # Every parameter takes part in the loss; the CrossEncoderTrainer fails under DDP without this.
        "ddp_find_unused_parameters": False,
        # bf16 autocast where the hardware has native bf16 math: 1.5x faster steps on the demo, same dev figures.
        "bf16": bf16_training(),
    }
    if cfg.cross_encoder.head_learning_rate is not None:
        defaults["learning_rate_mapping"] = {HEAD_PARAMETERS: cfg.cross_encoder.head_learning_rate}
    if cfg.cross_encoder.loss == "mnrl":
        # In-batch negatives: a repeated query or passage in one batch would be its own false negative.
        defaults["batch_sampler"] = BatchSamplers.NO_DUPLICATES
    return CrossEncoderTrainingArguments(output_dir=output_dir, **(defaults | cfg.trainer))


@dataclass
class ScoredCandidates:
    """Per query: the retriever's top-k chunk ids (best first), its scores, and the cross-encoder's scores."""

    ids: list[list[str]]
    retriever: list[list[float]]
    reranker: list[list[float]]


def score_candidates(
    retriever: DenseRetriever, reranker: Reranker, queries: Sequence[Mapping[str, Any]], top_k: int
) -> ScoredCandidates:
    """Retrieve each query's top ``top_k`` (one batched search) and score them all with the cross-encoder (one call)."""
    found = dev_candidates(retriever, queries, top_k)
    if found is None:
        return ScoredCandidates([], [], [])
    return ScoredCandidates(found.ids, found.retriever, reranker_scores(reranker, found.texts, found.chunks))


def evaluate_reranking(
    scored: ScoredCandidates,
    queries: Sequence[Mapping[str, Any]],
    fusion_weight: float,
    k_values: Sequence[int] = K_VALUES,
) -> dict[str, Any]:
    """Held-out ranking metrics of the retriever alone, the reranker alone, and the two fused at ``fusion_weight``.

    Args:
        scored: the queries' candidates and scores (:func:`score_candidates`).
        queries: the same query rows (``qid``, ``relevance``).
        fusion_weight: the weight serving uses (1.0: plain reranking, then ``reranker`` equals ``retriever+reranker``).
        k_values: cut-offs for hit@k and recall@k.

    Returns:
        ``{"queries", "top_k", "fusion_weight", "retriever": {...}, "reranker": {...},
        "retriever+reranker": {...}, "per_query": [...]}`` with ``ndcg@10``, ``mrr@10``, ``hit@k`` and
        ``recall@k`` means (graded relevance, ragtune.pipeline.ranking).

    Example (with a loaded retriever and reranker, not run as a doctest):
        m = evaluate_reranking(score_candidates(retriever, reranker, eval_queries, 20), eval_queries, 0.6)
        m["retriever"]["ndcg@10"], m["retriever+reranker"]["ndcg@10"]
    """
    rows: dict[str, list[dict[str, float]]] = {"retriever": [], "reranker": [], "retriever+reranker": []}
    per_query = []
    for q, ids, first, second in zip(queries, scored.ids, scored.retriever, scored.reranker, strict=True):
        orders = {
            "retriever": ids,
            "reranker": fused_order(ids, first, second, 1.0),
            "retriever+reranker": fused_order(ids, first, second, fusion_weight),
        }
        for name, ranked in orders.items():
            rows[name].append(per_query_metrics(ranked, q["relevance"], k_values))
        per_query.append(
            {
                "qid": q["qid"],
                "ndcg@10_retriever": rows["retriever"][-1]["ndcg@10"],
                "ndcg@10_reranked": rows["retriever+reranker"][-1]["ndcg@10"],
            }
        )
    return {
        "queries": len(queries),
        "top_k": max((len(i) for i in scored.ids), default=0),
        "fusion_weight": fusion_weight,
        **{name: mean_metrics(r) for name, r in rows.items()},
        "per_query": per_query,
    }


def choose_weight(cfg: RerankConfig, dev: DevCandidates | None, reranker: Reranker) -> tuple[float, dict]:
    """The serving fusion weight: ``rerank.fusion_weight`` if a number, else chosen on the dev slice.

    Without a dev slice, ``auto`` gives the reranker no say (weight 0): a reranker nobody has measured is
    not promoted over the retriever it is meant to improve.

    Returns:
        (weight, record for metrics.json: how it was chosen, and the dev nDCG@10 per weight when auto).
    """
    if cfg.fusion_weight != "auto":
        return float(cfg.fusion_weight), {"fusion_weight_source": "rerank.fusion_weight"}
    if dev is None:
        logger.warning(
            "rerank: no dev slice (rerank.dev_fraction=%s gave fewer than %d queries, not counting synthetic ones "
            "a query-likelihood reranker's own LM wrote): the reranker cannot be measured, so it gets weight 0 (the "
            "retriever's order); human questions (data.questions) or synth.llm another model than "
            "rerank.query_likelihood.generator let it be measured",
            cfg.dev_fraction,
            DEV_MIN_QUERIES,
        )
        return 0.0, {"fusion_weight_source": "no dev slice: not measured, weight 0 (the retriever's order)"}
    scores = reranker_scores(reranker, dev.texts, dev.chunks)
    weight, curve = choose_fusion_weight(dev.ids, dev.retriever, scores, dev.relevance)
    return weight, {
        "fusion_weight_source": f"dev nDCG@10, one-standard-error rule, {len(dev.texts)} queries of held-out "
        "train documents",
        "dev_ndcg@10_by_weight": {f"{w:.1f}": v for w, v in curve.items()},
    }


def save_untrained(reranker: Any, folder: Path, cfg: RagtuneConfig) -> None:
    """Write the untrained reranker into ``folder`` so that :func:`ragtune.pipeline.components.load_reranker` loads it:
    a query-likelihood spec without an adapter, or the base cross-encoder with its seeded fresh head."""
    if cfg.rerank.kind == "query_likelihood":
        reranker.save(folder, cfg.rerank.query_likelihood.generator, cfg.rerank.query_likelihood.dtype)
    else:
        reranker.save_pretrained(str(folder))


def dev_figure_at(fusion: Mapping[str, Any], weight: float) -> float | None:
    """The dev nDCG@10 at the chosen weight, from :func:`choose_weight`'s record (None when it measured none).

    Example:
        >>> dev_figure_at({"dev_ndcg@10_by_weight": {"0.0": 0.5, "0.3": 0.56}}, 0.3)
        0.56
    """
    return (fusion.get("dev_ndcg@10_by_weight") or {}).get(f"{weight:.1f}")


def recipe_line(cfg: RerankConfig) -> str:
    """The model card's one-line recipe of the reranker.

    Example:
        >>> recipe_line(RerankConfig(max_steps=0))[:61]
        '- Query likelihood under `bundled:smollm2-135m-instruct` (UPR'
    """
    if cfg.kind == "query_likelihood":
        q = cfg.query_likelihood
        tuning = (
            "not trained (rerank.max_steps 0)"
            if cfg.max_steps == 0
            else f"LoRA r={q.lora.r} on {q.lora.target_modules} trained on the mined lists (listwise softmax, "
            f"temperature {q.temperature}; the kept step is the curve's best)"
        )
        return (
            f"- Query likelihood under `{q.generator}` (UPR: mean log-probability of the query's tokens after the "
            f"passage's prompt), passages cut at {q.max_length} tokens; {tuning}."
        )
    ce = cfg.cross_encoder  # the cross-encoder's own settings
    return (
        f"- Start: `{ce.start_from}` (`{ce.base_model}`), head `{ce.head}`, loss `{ce.loss}`, "
        f"warm start `{ce.warm_start}` ({ce.warm_start_steps} steps), max_length {ce.max_length}."
    )


def model_card_section(cfg: RerankConfig, curve: Sequence[Mapping[str, Any]], weight: float) -> str:
    """The model card's ragtune section: the recipe, the dev learning curve and the serving fusion weight."""
    lines = [
        "",
        "## ragtune: how this reranker was trained",
        "",
        recipe_line(cfg),
        f"- Serving fusion weight: {weight:.1f} (score = w·reranker + (1−w)·retriever, each min-max scaled).",
        "",
    ]
    if curve:
        lines += [
            "Dev-slice nDCG@10 during training (queries of held-out train documents, never trained on):",
            "",
            "| phase | step | retriever | reranker alone | fused | weight |",
            "|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {p['phase']} | {p['step']} | {p['retriever']:.4f} | {p['reranker']:.4f} | {p['fused']:.4f} | "
            f"{p['weight']:.1f} |"
            for p in curve
        ]
    return "\n".join(lines) + "\n"


@dataclass
class FitInputs:
    """What both kinds of reranker train from; the curve's points are appended to ``curve`` and offered to
    ``best``."""

    cfg: RagtuneConfig
    run: RunDir
    mined: Sequence[Mapping[str, Any]]
    corpus_by_id: Mapping[str, Mapping[str, Any]]
    retriever: DenseRetriever
    dev: DevCandidates | None
    curve: list[dict[str, Any]]
    best: BestPoint | None
    args: Any  # the training arguments (they set up the process group)


def fit_cross_encoder(fit: FitInputs) -> tuple[Any, dict[str, Any]]:
    """Build the one-logit cross-encoder and train it (an optional warm start, then the hard negatives).

    Returns:
        (the trained ``CrossEncoder``, training figures for the metrics: examples, steps, seconds, losses).
    """
    from datasets import Dataset
    from sentence_transformers.cross_encoder import CrossEncoderTrainer
    from transformers import set_seed

    cfg, dev, curve, best = fit.cfg, fit.dev, fit.curve, fit.best

    # a. The training set in the format the loss reads.
    settings = cfg.rerank.cross_encoder
    columns = build_training_columns(fit.mined, fit.corpus_by_id, settings.loss, cfg.rerank.mining.num_negatives)
    if not columns["query"]:
        raise ValueError(f"rerank: mining produced no training example; see {RERANK_NEGATIVES}/report.json")

    # b. The base or the tuned embedder's encoder, with a fresh head (or a hub cross-encoder's own).
    set_seed(cfg.run.seed)  # the fresh head starts the same on every rank and every rerun
    model = build_cross_encoder(settings, fit.run.require("embed", "model")["model"])
    start_curve(model, dev, cfg.rerank, curve, best)

    # c. Optionally distil the tuned embedder's scores first, then train on the hard negatives.
    phases = []
    if settings.warm_start != "none" and settings.warm_start_steps:
        queries = [r["query"] for r in fit.mined]
        first, ids = fit.retriever.search(queries, settings.warm_start_pool)
        distil = distillation_columns(queries, ids, first, fit.corpus_by_id, settings.warm_start)
        warm_cfg = cfg.rerank.model_copy(update={"max_steps": settings.warm_start_steps})
        warm_args = build_training_args(warm_cfg, str(fit.run.path(RERANK_CHECKPOINTS)), cfg.run.seed)
        phases.append(("warm start", warm_args, distil, build_loss(model, settings.warm_start, distil)))
    phases.append(("hard negatives", fit.args, columns, build_loss(model, settings.loss, columns)))
    losses, steps, seconds = [], 0, 0.0
    for phase, phase_args, phase_columns, loss in phases:
        callbacks = [DevCurveCallback(model, dev, cfg.rerank.curve_points, phase, curve, best)] if dev else []
        trainer = CrossEncoderTrainer(
            model=model,
            args=phase_args,
            train_dataset=Dataset.from_dict(phase_columns),
            loss=loss,
            callbacks=callbacks,
        )
        seconds += trainer.train().metrics["train_runtime"]
        losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        steps += trainer.state.global_step
    return model, training_figures(len(columns["query"]), steps, seconds, losses)


def fit_query_likelihood(fit: FitInputs) -> tuple[Any, dict[str, Any]]:
    """Build the query-likelihood reranker and, with ``rerank.max_steps`` other than 0, LoRA-tune it on the
    mined lists (``ragtune.stages.rerank.likelihood``). The untrained LM is the curve's start point.

    Returns:
        (the reranker, training figures for the metrics: lists, steps, seconds, losses).
    """
    from transformers import set_seed

    from ragtune.stages.rerank.likelihood import (
        build_query_likelihood,
        likelihood_lists,
        scorer_hard_lists,
        train_query_likelihood,
    )

    cfg, dev, curve, best = fit.cfg, fit.dev, fit.curve, fit.best
    lists = likelihood_lists(fit.mined, fit.corpus_by_id)
    if cfg.rerank.query_likelihood.negatives == "scorer" and lists:
        scorer = untrained_reranker(cfg, fit.run.path(SCORE_CACHE))  # its scores are cached for step 7 too
        lists = scorer_hard_lists(scorer, lists, cfg.rerank.mining.num_negatives)
        del scorer
    train = cfg.rerank.max_steps != 0 and bool(lists)
    set_seed(cfg.run.seed)  # the fresh adapter starts the same on every rank and every rerun
    model = build_query_likelihood(cfg.rerank, train)
    start_curve(model, dev, cfg.rerank, curve, best)
    if not train:
        logger.info("rerank: the query-likelihood reranker is used as it is (rerank.max_steps=0 or no lists)")
        return model, training_figures(len(lists), 0, 0.0, [])
    callbacks = [DevCurveCallback(model, dev, cfg.rerank.curve_points, "lists", curve, best)] if dev else []
    trainer = train_query_likelihood(model, lists, fit.args, callbacks)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    runtime = next((h["train_runtime"] for h in trainer.state.log_history if "train_runtime" in h), 0.0)
    return model.eval(), training_figures(len(lists), trainer.state.global_step, runtime, losses)


def start_curve(
    model: Any, dev: DevCandidates | None, cfg: RerankConfig, curve: list[dict[str, Any]], best: BestPoint | None
) -> None:
    """The learning curve's step-0 point (the untrained reranker), offered to ``best``: the start counts."""
    if dev is not None and is_main_process() and cfg.curve_points:
        curve.append({"phase": "start", **curve_point(model, dev, 0)})
        if best is not None:
            best.offer(model, curve[-1])


def training_figures(examples: int, steps: int, seconds: float, losses: Sequence[float]) -> dict[str, Any]:
    """The training part of the stage's metrics."""
    return {
        "train_examples": examples,
        "train_steps": steps,
        "train_seconds": seconds,
        "train_loss_first": losses[0] if losses else None,
        "train_loss_last": losses[-1] if losses else None,
    }


@dataclass
class Mined:
    """The mined training rows, the mining report and how long mining took."""

    rows: list[dict[str, Any]]
    report: dict[str, Any]
    seconds: float


def mine_on_main(cfg: RagtuneConfig, run: RunDir, args: Any) -> Mined:
    """Mine hard negatives with the tuned embedder on the main process (:func:`ragtune.stages.rerank.mine.run_mining`);
    the other ranks wait, then read its result."""
    started = time.time()
    with args.main_process_first(desc="mining hard negatives"):
        if is_main_process():
            rows, report = run_mining(cfg, run)
        else:
            rows = read_jsonl(run.path(RERANK_NEGATIVES) / "negatives.jsonl")
            report = json.loads((run.path(RERANK_NEGATIVES) / "report.json").read_text(encoding="utf-8"))
    return Mined(rows, report, time.time() - started)


@dataclass
class StageData:
    """What the stage reads beside the mined rows: the corpus, the queries, the dev slice (never mined, never
    trained on: it draws the learning curve and chooses the fusion weight), the tuned retriever and the dev slice's
    candidates under it."""

    corpus_by_id: dict[str, dict[str, Any]]
    queries: list[dict[str, Any]]
    dev_queries: list[dict[str, Any]]
    retriever: DenseRetriever
    dev: DevCandidates | None


def load_stage_data(cfg: RagtuneConfig, run: RunDir, args: Any) -> StageData:
    """Read the corpus and queries, split off the dev slice and fix its candidates under the tuned retriever (the
    corpus embeddings are encoded on the main process first, then read from the run's cache)."""
    data = run.require("data", "corpus", "queries")
    corpus = read_jsonl(data["corpus"])
    queries = read_jsonl(data["queries"])
    dev_queries = rerank_dev_split(cfg, queries)[0]
    embedder = run.require("embed", "model")["model"]
    with args.main_process_first(desc="encoding the corpus with the tuned embedder"):
        retriever = DenseRetriever.load(
            str(embedder), corpus, cache_dir=run.path(EMBEDDING_CACHE), score_block_mb=cfg.run.score_block_mb
        )
    dev = dev_candidates(retriever, dev_queries, cfg.rerank.retrieve_top_k)
    return StageData({c["id"]: c for c in corpus}, queries, dev_queries, retriever, dev)


def keep_best_point(model: Any, curve: list[dict[str, Any]], best: BestPoint | None) -> dict[str, Any] | None:
    """Put back the weights of the learning curve's best point (``rerank.keep_best``) when it is not the last one.

    Returns:
        The kept point (the last one without ``best``), or None without a curve.
    """
    kept = best.point if best is not None and best.point is not None else (curve[-1] if curve else None)
    if best is not None and kept is not None and kept != curve[-1]:
        best.restore(model)
        logger.info("rerank: kept the weights of %s step %d (dev fused nDCG@10 %.4f)", *map(kept.get, KEPT))
    return kept


def save_reranker(
    cfg: RagtuneConfig, run: RunDir, model: Any, weight: float, fusion: dict, curve: Sequence[Mapping[str, Any]]
) -> None:
    """Save the reranker, its model card (with the learning curve) and its fusion weight atomically, as one folder."""
    with atomic_dir(run.path(RERANK_MODEL)) as tmp:
        if cfg.rerank.kind == "query_likelihood":
            model.save(tmp, cfg.rerank.query_likelihood.generator, cfg.rerank.query_likelihood.dtype)
        else:
            model.save_pretrained(str(tmp))
        (tmp / FUSION_FILE).write_text(json.dumps({"fusion_weight": weight, **fusion}, indent=2) + "\n")
        card = tmp / "README.md"
        card.write_text(
            (card.read_text(encoding="utf-8") if card.exists() else "") + model_card_section(cfg.rerank, curve, weight)
        )


@dataclass
class Untrained:
    """The untrained reranker of the configured kind and the fusion weight the dev slice chose for it."""

    reranker: Any
    weight: float
    fusion: dict[str, Any]


def save_untrained_reranker(cfg: RagtuneConfig, run: RunDir, dev: DevCandidates | None) -> Untrained:
    """The untrained reranker of the same kind, its fusion weight chosen by the same rule on the same dev slice,
    saved to ``rerank/untrained``: what ``assemble.reranker: base`` serves and eval's ``embed_rerank_untrained``
    measures the training against."""
    untrained = untrained_reranker(cfg, run.path(SCORE_CACHE))
    weight, fusion = choose_weight(cfg.rerank, dev, untrained)
    logger.info("rerank: the untrained reranker's fusion weight %.1f", weight)
    with atomic_dir(run.path(RERANK_UNTRAINED)) as tmp:
        save_untrained(untrained, tmp, cfg)
        (tmp / FUSION_FILE).write_text(json.dumps({"fusion_weight": weight, **fusion}, indent=2) + "\n")
    return Untrained(untrained, weight, fusion)


def evaluate_on_eval_split(
    cfg: RagtuneConfig, run: RunDir, data: StageData, weight: float, untrained: Untrained
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The eval split's figures: the tuned retriever alone vs the saved reranker alone vs the two fused at
    ``weight`` (what serving does), and the untrained reranker fused at its own weight.

    Raises:
        ValueError: no eval-split query.
    """
    reranker = load_reranker(
        str(run.path(RERANK_MODEL)),
        cfg.rerank.cross_encoder.max_length,
        cfg.run.seed,
        run.path(SCORE_CACHE),
        cfg.rerank.query_likelihood.prefix_cache_mb,
    )
    eval_queries = [q for q in data.queries if q["split"] == "eval"]
    if not eval_queries:
        raise ValueError("rerank: no eval-split query to evaluate on (check the data stage's split)")
    top_k = cfg.rerank.retrieve_top_k
    evaluation = evaluate_reranking(
        score_candidates(data.retriever, reranker, eval_queries, top_k), eval_queries, weight
    )
    untrained_scored = score_candidates(data.retriever, untrained.reranker, eval_queries, top_k)
    return evaluation, evaluate_reranking(untrained_scored, eval_queries, untrained.weight)


def stage_metrics(
    weight: float,
    kept: Mapping[str, Any] | None,
    dev_queries: Sequence[Mapping[str, Any]],
    evaluation: Mapping[str, Any],
    untrained: Untrained,
    untrained_evaluation: Mapping[str, Any],
    mined: Mined,
    trained: Mapping[str, Any],
) -> dict[str, Any]:
    """The manifest's metrics of the stage: held-out figures, the reranker gate's dev figures, training figures."""
    before, after = evaluation["retriever"], evaluation["retriever+reranker"]
    return {
        "ndcg@10_retriever": before["ndcg@10"],
        "ndcg@10_reranked": after["ndcg@10"],
        "ndcg@10_reranker_only": evaluation["reranker"]["ndcg@10"],
        "mrr@10_retriever": before["mrr@10"],
        "mrr@10_reranked": after["mrr@10"],
        **RerankFigures(  # what the reranker gate reads (ragtune.pipeline.promotion)
            queries=len(dev_queries),
            fusion_weight=weight,
            retriever=kept["retriever"] if kept else None,
            fused=kept["fused"] if kept else None,
        ).as_metrics(),
        "dev_ndcg@10_reranker_only": kept["reranker"] if kept else None,
        "untrained_fusion_weight": untrained.weight,
        "dev_ndcg@10_untrained_fused": dev_figure_at(untrained.fusion, untrained.weight),
        "ndcg@10_untrained_reranked": untrained_evaluation["retriever+reranker"]["ndcg@10"],
        "kept_step": kept and f"{kept['phase']} {kept['step']}",
        "eval_queries": evaluation["queries"],
        "negatives": mined.report["selected"],
        **trained,
        "mining_seconds": mined.seconds,
    }


def write_metrics_file(
    cfg: RagtuneConfig,
    run: RunDir,
    metrics: Mapping[str, Any],
    fusion: Mapping[str, Any],
    curve: Sequence[Mapping[str, Any]],
    data: StageData,
    evaluation: Mapping[str, Any],
    untrained: Untrained,
    untrained_evaluation: Mapping[str, Any],
    mining_report: Mapping[str, Any],
) -> None:
    """``rerank/metrics.json``: the metrics, how the weight was chosen, the curve, both evaluations, the mining."""
    kind = cfg.rerank.kind
    record = {
        **metrics,
        **fusion,
        "kind": kind,
        "loss": cfg.rerank.cross_encoder.loss if kind == "cross_encoder" else "listwise query likelihood",
        "learning_curve": curve,
        "dev_qids": [q["qid"] for q in data.dev_queries],
        "evaluation": evaluation,
        "untrained": {**untrained.fusion, "evaluation": untrained_evaluation},
        "mining": mining_report,
    }
    atomic_write_text(run.path(RERANK_METRICS), json.dumps(record, indent=2) + "\n")


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict[str, Any]:
    """Mine, train and evaluate the reranker; skipped when finished and fresh unless ``force``."""
    # Refuse early, naming the stage to run, before anything heavy is imported.
    run.require("embed", "model")
    run.require("data", "corpus", "queries")
    config_hash, inputs = run.freshness(cfg, ("rerank",), {"data": ("corpus", "queries"), "embed": ("model",)})
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("rerank: finished and fresh, skipping (--force reruns it)")
        return run.load_manifest()[STAGE].metrics
    started = time.time()

    # 1. Load the training arguments first: they set up the process group that mining waits on.
    args = build_training_args(cfg.rerank, str(run.path(RERANK_CHECKPOINTS)), cfg.run.seed)

    # 2. Mine hard negatives with the tuned embedder on the main process; other ranks read its result.
    mined = mine_on_main(cfg, run, args)

    # 3. Fix the dev slice's candidates: they draw the learning curve and choose the fusion weight.
    data = load_stage_data(cfg, run, args)
    curve: list[dict[str, Any]] = []
    best = BestPoint() if cfg.rerank.keep_best else None

    # 4. Build and train the reranker on the mined rows, drawing the learning curve on the dev slice.
    fit = fit_query_likelihood if cfg.rerank.kind == "query_likelihood" else fit_cross_encoder
    fit_inputs = FitInputs(cfg, run, mined.rows, data.corpus_by_id, data.retriever, data.dev, curve, best, args)
    model, trained = fit(fit_inputs)
    if not is_main_process():
        return {}
    with contextlib.suppress(OSError):  # an empty folder the trainer made; checkpoints asked for are kept
        run.path(RERANK_CHECKPOINTS).rmdir()

    # 5. Keep the best curve point's weights; choose how much the reranker's score counts against the
    #    retriever's, on the dev slice of train.
    kept = keep_best_point(model, curve, best)
    weight, fusion = choose_weight(cfg.rerank, data.dev, model)
    logger.info("rerank: fusion weight %.1f (%s)", weight, fusion["fusion_weight_source"])
    if curve:
        plot_learning_curve(curve, run.path(RERANK_LEARNING_CURVE))

    # 6. Save the reranker (model card with its learning curve) and its fusion weight atomically, as one folder.
    save_reranker(cfg, run, model, weight, fusion, curve)

    # 7. The untrained reranker of the same kind, its fusion weight chosen by the same rule on the same dev slice.
    del model
    untrained = save_untrained_reranker(cfg, run, data.dev)

    # 8. Evaluate on the eval split: tuned retriever alone vs reranker alone vs the two fused (what serving does),
    #    and the untrained reranker fused at its weight; write the metrics.
    evaluation, untrained_evaluation = evaluate_on_eval_split(cfg, run, data, weight, untrained)
    metrics = stage_metrics(weight, kept, data.dev_queries, evaluation, untrained, untrained_evaluation, mined, trained)
    untrained.reranker = None  # let it go
    write_metrics_file(
        cfg, run, metrics, fusion, curve, data, evaluation, untrained, untrained_evaluation, mined.report
    )

    # 9. Record the stage last.
    run.record(
        STAGE,
        config_hash=config_hash,
        inputs=inputs,
        outputs={
            "model": RERANK_MODEL,
            "untrained": RERANK_UNTRAINED,
            "negatives": RERANK_NEGATIVES,
            "metrics": RERANK_METRICS,
        },
        metrics=metrics,
        started=started,
    )
    log_summary(evaluation, cfg.rerank.retrieve_top_k)
    return metrics


def log_summary(evaluation: Mapping[str, Any], top_k: int) -> None:
    """One log line: the held-out figures before and after reranking."""
    before, after = evaluation["retriever"], evaluation["retriever+reranker"]
    logger.info(
        "rerank: held-out nDCG@10 %.4f -> %.4f (reranker alone %.4f, weight %.1f), MRR@10 %.4f -> %.4f "
        "(%d queries, top %d reranked)",
        before["ndcg@10"],
        after["ndcg@10"],
        evaluation["reranker"]["ndcg@10"],
        evaluation["fusion_weight"],
        before["mrr@10"],
        after["mrr@10"],
        evaluation["queries"],
        top_k,
    )


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune rerank stage: mine hard negatives, train and evaluate a reranker")
