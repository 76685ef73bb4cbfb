"""Embed stage: fine-tune the bi-encoder on (query, positive chunk) pairs with SentenceTransformerTrainer.

Run it (all three call the same ``main``):
    ragtune embed configs/demo.yaml [embed.method=lora] [--force]
    python -m ragtune.stages.embed.train --config configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 2 -m ragtune.stages.embed.train --config configs/demo.yaml

Reads data/corpus.jsonl and data/queries.jsonl (train split to train, eval split to report); writes
embed/model/ (sentence-transformers folder + model card) and embed/metrics.json
({"before": {...}, "after": {...}} on the held-out queries over the whole corpus).
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from ragtune.pipeline.config import EmbedConfig, RagtuneConfig, check_trainer_keys
from ragtune.pipeline.dev_slice import DEV_MIN_QUERIES, split_dev_queries
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever, hybrid_retrieval_metrics
from ragtune.pipeline.merge import mix_back, trainable_snapshot
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.promotion import EmbedFigures
from ragtune.pipeline.pseudo_queries import held_out_documents, inverse_cloze_pairs
from ragtune.pipeline.retrieval import DenseRetriever, retrieval_metrics
from ragtune.pipeline.rundir import (
    EMBED_CHECKPOINTS,
    EMBED_METRICS,
    EMBED_MODEL,
    EMBEDDING_CACHE,
    RunDir,
    atomic_dir,
    atomic_write_text,
    is_main_process,
    read_jsonl,
)
from ragtune.pipeline.training_args import common_training_args, route_tensorboard
from ragtune.stages.embed.adapter import ROUTER_MAPPING, add_query_adapter
from ragtune.stages.embed.evaluate import dev_pool, selection_evaluator
from ragtune.stages.embed.pairs import (
    NoDuplicateKeysBatchSampler,
    attach_negatives,
    bm25_negatives,
    build_pairs,
    pair_keys,
    trained_queries,
)
from ragtune.stages.embed.tsdae import adapt_with_tsdae, adaptation_sentences

logger = logging.getLogger(__name__)
STAGE = "embed"
EVALS_PER_RUN = 4  # dev evaluations (and checkpoints) per training run when selecting the best


def build_loss(cfg: EmbedConfig, model: SentenceTransformer, base_path: str) -> torch.nn.Module:
    """The configured loss, optionally wrapped in MatryoshkaLoss."""
    if cfg.loss == "mnrl":
        loss = losses.MultipleNegativesRankingLoss(model)
    elif cfg.loss == "cached_mnrl":
        # Gradient caching: the batch size is the number of in-batch negatives, not the memory used.
        loss = losses.CachedMultipleNegativesRankingLoss(model, mini_batch_size=min(32, cfg.batch_size))
    elif cfg.loss == "gist":
        guide = SentenceTransformer(base_path, device=str(model.device))
        guide.requires_grad_(False)
        loss = losses.GISTEmbedLoss(model, guide=guide)
    else:
        loss = losses.TripletLoss(model)
    if cfg.matryoshka_dims:
        dim = model.get_embedding_dimension()
        too_big = [d for d in cfg.matryoshka_dims if d > dim]
        if too_big:
            raise ValueError(f"embed.matryoshka_dims: {too_big} exceed the model's embedding dimension {dim}")
        loss = losses.MatryoshkaLoss(model, loss, matryoshka_dims=sorted(cfg.matryoshka_dims, reverse=True))
    return loss


def load_model(cfg: EmbedConfig, base_path: str) -> SentenceTransformer:
    """The model to train: the base itself (full), with a LoRA adapter (lora), or wrapped by a query adapter."""
    model = SentenceTransformer(base_path, device="cuda" if torch.cuda.is_available() else "cpu")
    if cfg.method == "lora":
        from peft import LoraConfig, TaskType

        model.add_adapter(
            LoraConfig(
                task_type=TaskType.FEATURE_EXTRACTION,
                r=cfg.lora.r,
                lora_alpha=cfg.lora.alpha,
                lora_dropout=cfg.lora.dropout,
                target_modules=cfg.lora.target_modules,
            )
        )
    elif cfg.method == "linear_adapter":
        model = add_query_adapter(model)
    return model


def training_arguments(
    cfg: EmbedConfig,
    output_dir: Path,
    seed: int,
    keys: list[frozenset[str]],
    steps: int,
    eval_steps: int | None,
    best_metric: str,
) -> SentenceTransformerTrainingArguments:
    """Our defaults, then ``embed.trainer`` on top (user keys win); unknown keys name ``embed.trainer.<key>``."""
    check_trainer_keys("embed", cfg.trainer, SentenceTransformerTrainingArguments)
    route_tensorboard(cfg.trainer, output_dir)  # event files kept beside the checkpoints
    args: dict[str, Any] = {
        **common_training_args(cfg.epochs, cfg.max_steps, cfg.batch_size, cfg.learning_rate, seed),
        "batch_sampler": functools.partial(NoDuplicateKeysBatchSampler, keys=keys),
        "disable_tqdm": False,
        "logging_steps": max(1, steps // 20),
    }
    if cfg.method == "linear_adapter":
        args["router_mapping"] = ROUTER_MAPPING
    if eval_steps:
        args |= {
            "eval_strategy": "steps",
            "eval_steps": eval_steps,
            "save_strategy": "steps",
            "save_steps": eval_steps,
            "save_total_limit": 1,  # with load_best_model_at_end the trainer keeps the best and the last
            "load_best_model_at_end": True,
            "metric_for_best_model": best_metric,
            "greater_is_better": True,
        }
    else:
        args |= {"eval_strategy": "no", "save_strategy": "no"}
    args |= cfg.trainer
    return SentenceTransformerTrainingArguments(output_dir=str(output_dir), **args)


def _estimated_steps(cfg: EmbedConfig, n_pairs: int, world_size: int) -> int:
    if cfg.max_steps > 0:
        return cfg.max_steps
    per_epoch = -(-n_pairs // (cfg.batch_size * world_size))
    return max(1, int(per_epoch * cfg.epochs))


def _model_card_section(cfg: EmbedConfig, n_pairs: int, n_queries: int, metrics: dict[str, Any]) -> str:
    before, after = metrics["before"], metrics["after"]
    rows = "\n".join(f"| {k} | {before[k]:.4f} | {after[k]:.4f} |" for k in after)
    return (
        "\n\n## Fine-tuned by ragtune (embed stage)\n\n"
        f"- Base model: `{cfg.base_model}`\n"
        f"- Method: `{cfg.method}`, loss: `{cfg.loss}`"
        + (f" wrapped in MatryoshkaLoss {cfg.matryoshka_dims}" if cfg.matryoshka_dims else "")
        + "\n"
        f"- Training data: {n_pairs} (query, positive chunk) pairs from {n_queries} train-split queries\n"
        f"- Checkpoint selection: {metrics['selection']}\n"
        + (
            f"- Weight-space ensemble: {cfg.base_share:.0%} of the starting weights mixed back\n"
            if cfg.base_share
            else ""
        )
        + "\n"
        "Held-out (eval split) retrieval over the whole corpus:\n\n"
        "| metric | before | after |\n|---|---|---|\n" + rows + "\n"
    )


@dataclass
class TrainingData:
    """The stage's queries and training pairs: the corpus, the held-out (eval) and dev queries, the train queries
    the pairs come from, and how the pairs were made."""

    corpus: list[dict[str, Any]]
    eval_queries: list[dict[str, Any]]
    train_queries: list[dict[str, Any]]
    dev_queries: list[dict[str, Any]]
    pairs: list[dict[str, Any]]
    dataset: Dataset
    held_out: set[str]  # documents no training pair or pseudo-query may come from
    inverse_cloze: int  # inverse-cloze pairs among the pairs
    drawn: int  # negatives drawn at random
    selection: str  # how the checkpoint is chosen (for the card and the report)


def load_training_data(cfg: RagtuneConfig, paths: dict[str, Path]) -> TrainingData:
    """Train pairs (labelled, synthetic and inverse-cloze, with negatives where the loss or ``embed.hard_negatives``
    wants them), a document-disjoint dev slice of train, and the held-out eval queries.

    Raises:
        ValueError: no eval-split query, or fewer than two training pairs.
    """
    ecfg = cfg.embed
    corpus = read_jsonl(paths["corpus"])
    chunks = {c["id"]: c for c in corpus}
    queries = read_jsonl(paths["queries"])
    eval_queries = [q for q in queries if q["split"] == "eval" and q["positives"]]
    train_queries = [q for q in queries if q["split"] == "train" and q["positives"]]
    if not eval_queries:
        raise ValueError(f"{paths['queries']}: no eval-split query; embed needs held-out queries to report on")
    train_queries, dev_queries = split_dev_queries(train_queries, ecfg.dev_fraction)
    pairs = build_pairs(trained_queries(train_queries, ecfg.synthetic_queries), chunks)
    held_out = held_out_documents(queries, dev_queries)
    pseudo = inverse_cloze_pairs(corpus, held_out, ecfg.pseudo_queries, cfg.run.seed) if ecfg.pseudo_queries else []
    logger.info("embed: %d inverse-cloze pairs added to %d labelled and synthetic ones", len(pseudo), len(pairs))
    pairs += pseudo
    if len(pairs) < 2:
        raise ValueError(f"{paths['queries']}: {len(pairs)} training pair(s); embed needs at least 2")
    drawn = 0
    if ecfg.hard_negatives == "bm25":  # one negative per pair from BM25's top: what the embedder must add to it
        mined = bm25_negatives(pairs, corpus)
        rows = [{"qid": p["qid"], "positives": [p["positive_id"]], "negatives": mined[p["qid"]]} for p in pairs]
        pairs, drawn = attach_negatives(pairs, [*{r["qid"]: r for r in rows}.values()], chunks, cfg.run.seed)
        logger.info(
            "embed: BM25 hard negatives for %d of %d pairs (the rest drawn at random)", len(pairs) - drawn, len(pairs)
        )
    elif ecfg.loss == "triplet":
        pairs, drawn = attach_negatives(pairs, train_queries, chunks, cfg.run.seed)
        logger.info("embed: %d of %d triplet negatives drawn at random (no negatives given)", drawn, len(pairs))
    with_negative = ecfg.loss == "triplet" or ecfg.hard_negatives == "bm25"
    columns = ["anchor", "positive", "negative"] if with_negative else ["anchor", "positive"]
    dataset = Dataset.from_list([{c: p[c] for c in columns} for p in pairs])
    if dev_queries:
        selection = f"best dev nDCG@10 on {len(dev_queries)} queries of held-out train documents"
    else:
        selection = (
            f"none (embed.dev_fraction=0, or fewer than {DEV_MIN_QUERIES} dev queries that the base embedder's round "
            "trip did not choose): last step kept"
        )
        logger.info("embed: no checkpoint selection: %s", selection)
    return TrainingData(
        corpus, eval_queries, train_queries, dev_queries, pairs, dataset, held_out, len(pseudo), drawn, selection
    )


@dataclass
class BaseFigures:
    """The base model's held-out and dev figures (main process only), the dev queries' BM25 rankings, and the fixed
    dev pool with the evaluator that checkpoint selection ranks within (None without a dev slice)."""

    before: dict[str, float]
    dev_before: dict[str, float]
    dev_before_hybrid: dict[str, float]
    dev_bm25: list[list[str]]
    pool: list[str]
    evaluator: Any


def measure_base(cfg: RagtuneConfig, run: RunDir, data: TrainingData) -> BaseFigures:
    """The base model's figures over the whole corpus (its corpus embeddings are cached: the round trip and the
    eval harness read the same file), and the dev pool checkpoint selection ranks within."""
    ecfg, dev_queries = cfg.embed, data.dev_queries
    base = DenseRetriever.load(
        ecfg.base_model, data.corpus, cache_dir=run.path(EMBEDDING_CACHE), score_block_mb=cfg.run.score_block_mb
    )
    before, dev_before, dev_before_hybrid = {}, {}, {}
    depth = cfg.assemble.hybrid_depth
    texts = [q["text"] for q in dev_queries]
    dev_bm25 = bm25_rankings(bm25_retriever(data.corpus, depth), texts) if dev_queries else []
    if is_main_process():
        before = retrieval_metrics(base, data.eval_queries, ecfg.k_values)
        logger.info("embed: before training, held-out %s", before)
        # The base model's dev figures, dense and hybrid: the gate serves the tuned embedder, and hybrid
        # retrieval, only where they beat these (ragtune.pipeline.promotion.first_stage_choice).
        dev_before = retrieval_metrics(base, dev_queries, ecfg.k_values)
        dev_before_hybrid = hybrid_retrieval_metrics(base, dev_queries, ecfg.k_values, dev_bm25, depth)
    pool = dev_pool(base, dev_queries, ecfg.dev_pool_top_k) if dev_queries else []
    evaluator = selection_evaluator(dev_queries, pool, ecfg.k_values) if dev_queries else None
    if dev_queries:
        logger.info("embed: checkpoint selection ranks %d dev queries among %d chunks", len(dev_queries), len(pool))
    return BaseFigures(before, dev_before, dev_before_hybrid, dev_bm25, pool, evaluator)


@dataclass
class Training:
    """The trained model and what its trainer recorded."""

    model: SentenceTransformer
    trainer: SentenceTransformerTrainer
    runtime: float | None
    tsdae: dict[str, Any] | None
    losses: list[float]
    selection_seconds: float


def train_embedder(cfg: RagtuneConfig, run: RunDir, data: TrainingData, base: BaseFigures) -> Training:
    """Build the model (optionally TSDAE-adapted first) and its loss, and train; the trainer keeps the best
    checkpoint by dev nDCG@10 on the pool, and ``embed.base_share`` of the starting weights is mixed back."""
    ecfg = cfg.embed
    base_path = resolve_model(ecfg.base_model)
    model = load_model(ecfg, base_path)
    tsdae = None
    if ecfg.tsdae_steps:
        sentences = adaptation_sentences(data.corpus, data.held_out, ecfg.tsdae_steps * ecfg.batch_size, cfg.run.seed)
        tsdae = adapt_with_tsdae(
            model, base_path, sentences, ecfg.tsdae_steps, ecfg.batch_size, run.path(EMBED_CHECKPOINTS), cfg.run.seed
        )
    loss = build_loss(ecfg, model, base_path)
    steps = _estimated_steps(ecfg, len(data.pairs), int(os.environ.get("WORLD_SIZE", "1")))
    eval_steps = max(1, -(-steps // EVALS_PER_RUN)) if base.evaluator else None
    sim = model.similarity_fn_name or "cosine"
    keys = [pair_keys(p) for p in data.pairs]
    args = training_arguments(
        ecfg, run.path(EMBED_CHECKPOINTS), cfg.run.seed, keys, steps, eval_steps, f"eval_dev_{sim}_ndcg@10"
    )
    trainer = SentenceTransformerTrainer(
        model=model, args=args, train_dataset=data.dataset, loss=loss, evaluator=base.evaluator
    )
    start = trainable_snapshot(model) if ecfg.base_share else {}
    result = trainer.train()
    if start:  # the kept weights (best checkpoint, or the last step without selection) and the start
        mix_back(trainer.model, start, ecfg.base_share)
        logger.info("embed: %.0f%% of the starting weights mixed back (embed.base_share)", 100 * ecfg.base_share)
    return Training(
        trainer.model,
        trainer,
        result.metrics.get("train_runtime"),
        tsdae,
        [h["loss"] for h in trainer.state.log_history if "loss" in h],
        sum(h.get("eval_runtime", 0.0) for h in trainer.state.log_history),
    )


def stage_report(
    data: TrainingData, base: BaseFigures, trained: Training, tuned: DenseRetriever, cfg: RagtuneConfig, started: float
) -> dict[str, Any]:
    """``embed/metrics.json``: held-out and dev figures before and after (dense and hybrid), and how it trained."""
    ecfg, depth, state = cfg.embed, cfg.assemble.hybrid_depth, trained.trainer.state
    after = retrieval_metrics(tuned, data.eval_queries, ecfg.k_values)
    logger.info("embed: after training, held-out %s", after)
    dev_after = retrieval_metrics(tuned, data.dev_queries, ecfg.k_values)
    dev_after_hybrid = hybrid_retrieval_metrics(tuned, data.dev_queries, ecfg.k_values, base.dev_bm25, depth)
    stage_seconds = time.time() - started
    return {
        "before": base.before,
        "after": after,
        "dev_before": base.dev_before,
        "dev_after": dev_after,
        "dev_before_hybrid": base.dev_before_hybrid,
        "dev_after_hybrid": dev_after_hybrid,
        "selection": data.selection,
        "best_checkpoint": state.best_model_checkpoint and Path(state.best_model_checkpoint).name,
        "train_pairs": len(data.pairs),
        "base_share": cfg.embed.base_share,
        "inverse_cloze_pairs": data.inverse_cloze,
        "train_queries": len(data.train_queries),
        "dev_queries": len(data.dev_queries),
        "eval_queries": len(data.eval_queries),
        "random_negatives": data.drawn,
        "steps": state.global_step,
        "train_seconds": trained.runtime,
        "tsdae": trained.tsdae,
        "dev_pool_chunks": len(base.pool),
        "selection_seconds": round(trained.selection_seconds, 2),
        "selection_share": round(trained.selection_seconds / stage_seconds, 3),
        "first_loss": trained.losses[0] if trained.losses else None,
        "last_loss": trained.losses[-1] if trained.losses else None,
        "loss_history": [[h["step"], h["loss"]] for h in state.log_history if "loss" in h],
    }


def save_embedder(
    cfg: RagtuneConfig, run: RunDir, model: SentenceTransformer, data: TrainingData, report: dict
) -> None:
    """Save the model with its card and ``ragtune_embed.json`` atomically, and the report beside it."""
    ecfg = cfg.embed
    with atomic_dir(run.path(EMBED_MODEL)) as tmp:
        model.save(str(tmp))
        card = tmp / "README.md"
        card.write_text(
            (card.read_text(encoding="utf-8") if card.exists() else "")
            + _model_card_section(ecfg, len(data.pairs), len(data.train_queries), report),
            encoding="utf-8",
        )
        (tmp / "ragtune_embed.json").write_text(
            json.dumps({"base_model": ecfg.base_model, "method": ecfg.method, "loss": ecfg.loss}, indent=2)
        )
    atomic_write_text(run.path(EMBED_METRICS), json.dumps(report, indent=2) + "\n")


def stage_metrics(report: dict[str, Any]) -> dict[str, Any]:
    """The manifest's metrics: held-out figures before and after, sizes, and the embedder and retrieval gates'
    dev figures."""
    gate = EmbedFigures(  # what the embedder and retrieval gates read (ragtune.pipeline.promotion)
        queries=report["dev_queries"],
        base=report["dev_before"].get("ndcg@10"),
        tuned=report["dev_after"].get("ndcg@10"),
        base_hybrid=report["dev_before_hybrid"].get("ndcg@10"),
        tuned_hybrid=report["dev_after_hybrid"].get("ndcg@10"),
    )
    return {
        **{f"before_{k}": v for k, v in report["before"].items()},
        **{f"after_{k}": v for k, v in report["after"].items()},
        **{k: report[k] for k in ("train_pairs", "eval_queries", "steps")},
        **gate.as_metrics(),
    }


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict:
    """Fine-tune the embedder; skipped when finished and fresh unless ``force``."""
    ecfg = cfg.embed
    # Before any model is loaded: a typo should cost nothing.
    check_trainer_keys("embed", ecfg.trainer, SentenceTransformerTrainingArguments)
    if ecfg.tsdae_steps and ecfg.method != "full":
        raise ValueError(f"embed.tsdae_steps: TSDAE trains the whole encoder; embed.method is {ecfg.method}, not full")
    if ecfg.base_share and ecfg.method == "lora":
        raise ValueError("embed.base_share: mixing weights back needs embed.method full or linear_adapter, not lora")
    paths = run.require("data", "corpus", "queries")
    config_hash, inputs = run.freshness(cfg, ("embed", "assemble.hybrid_depth"), {"data": ("corpus", "queries")})
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("embed: finished and fresh, skipping (--force reruns it)")
        return run.load_manifest()[STAGE].metrics
    started = time.time()

    # 1. Load data: train pairs, a document-disjoint dev slice of train, held-out eval queries.
    data = load_training_data(cfg, paths)

    # 2. The base model's figures over the whole corpus, and the fixed dev pool that checkpoint selection ranks within.
    base = measure_base(cfg, run, data)

    # 3. Build the model and loss, and train; the trainer keeps the best checkpoint by dev nDCG@10 on the pool.
    trained = train_embedder(cfg, run, data, base)

    # 4. Evaluate on the held-out queries and save the model, card and metrics (main process only).
    metrics: dict[str, Any] = {}
    if is_main_process():
        # The tuned corpus embeddings: encoded once, cached below under the saved model's hash for every consumer.
        tuned = DenseRetriever.encode(
            trained.model, data.corpus, score_block_mb=cfg.run.score_block_mb, name="the tuned embedder"
        )
        report = stage_report(data, base, trained, tuned, cfg, started)
        save_embedder(cfg, run, trained.model, data, report)
        tuned.save_cache(run.path(EMBEDDING_CACHE), str(run.path(EMBED_MODEL)))
        shutil.rmtree(run.path(EMBED_CHECKPOINTS), ignore_errors=True)

        # 5. Record the stage last.
        metrics = stage_metrics(report)
        run.record(
            STAGE,
            config_hash=config_hash,
            inputs=inputs,
            outputs={"model": EMBED_MODEL, "metrics": EMBED_METRICS},
            metrics=metrics,
            started=started,
        )
        logger.info(
            "embed: held-out nDCG@10 %.4f -> %.4f (%d pairs, %d steps)",
            report["before"].get("ndcg@10", float("nan")),
            report["after"].get("ndcg@10", float("nan")),
            len(data.pairs),
            trained.trainer.state.global_step,
        )
    return metrics  # other ranks wait for the main one where every stage module ends (entry.run_stage)


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune embed stage: fine-tune the embedding model on query-chunk pairs")
