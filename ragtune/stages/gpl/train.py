"""GPL stage: a second round of stage 1 on a reranker teacher's score margins (optional, off by default).

Run it (all three call the same ``main``):
    ragtune gpl configs/demo.yaml gpl.enabled=true [gpl.teacher=tuned] [--force]
    python -m ragtune.stages.gpl.train --config configs/demo.yaml gpl.enabled=true
    accelerate launch -m ragtune.stages.gpl.train --config configs/demo.yaml gpl.enabled=true

GPL (Generative Pseudo Labeling, Wang et al. 2022): the tuned embedder mines negatives for each training query,
a reranker teacher (either kind) scores (query, positive) and (query, negative), and the embedder retrains on the
margins with sentence-transformers' ``MarginMSELoss``. With ``gpl.enabled: false`` (the default) the stage returns at
once and records nothing, so ``ragtune run`` and every later stage behave as without it.

Reads data/corpus.jsonl and data/queries.jsonl (train split only: the queries outside stage 1's dev slice, plus
inverse-cloze pseudo-queries from chunks of documents no eval or dev query cites), embed/model (the start, and
the miner) and, with ``gpl.teacher: tuned``, rerank/model (the teacher) through the manifest. Writes
gpl/train.jsonl (the labelled triples), gpl/model/ (sentence-transformers folder + model card), gpl/metrics.json
and the manifest entry ``gpl`` with ``dev_ndcg@10_embed`` and ``dev_ndcg@10_embed_hybrid`` (stage 1's tuned dev
figures, from its record) and ``dev_ndcg@10_gpl`` and ``dev_ndcg@10_gpl_hybrid`` (this model's, on the same dev
slice over the whole corpus, alone and inside hybrid retrieval). The promotion gate serves the GPL model as the
tuned embedder only if it beats stage 1's where each would serve (``ragtune.pipeline.promotion.tuned_embedder``).
``gpl.base_share`` of stage 1's weights is mixed back into the trained ones before the model is saved.
Checkpoints go to gpl/checkpoints/ every ``gpl.checkpoint_steps``; a killed run resumes from the last one.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.pipeline.components import load_reranker, untrained_reranker
from ragtune.pipeline.config import ConfigError, GplConfig, RagtuneConfig, check_trainer_keys
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever, hybrid_retrieval_metrics
from ragtune.pipeline.merge import mix_back, trainable_snapshot
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.promotion import EmbedFigures, GplFigures
from ragtune.pipeline.retrieval import DenseRetriever, model_hash, retrieval_metrics
from ragtune.pipeline.rundir import (
    EMBED_MODEL,
    EMBEDDING_CACHE,
    GPL_CHECKPOINTS,
    GPL_METRICS,
    GPL_MODEL,
    GPL_RESUME,
    GPL_TRAIN_DATA,
    RERANK_MODEL,
    SCORE_CACHE,
    RunDir,
    StageInputError,
    atomic_dir,
    atomic_write_jsonl,
    atomic_write_text,
    hash_path,
    is_main_process,
    read_jsonl,
)
from ragtune.pipeline.training_args import common_training_args, route_tensorboard
from ragtune.stages.gpl.hybrid_teacher import HybridTeacher
from ragtune.stages.gpl.triples import gpl_queries, label_triples, margin_scale, mine_negatives

if TYPE_CHECKING:
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

logger = logging.getLogger(__name__)
STAGE = "gpl"
# Besides its own section, the round depends on stage 1's dev slice, the cut-offs its figures use and the depth of
# hybrid retrieval its hybrid dev figure fuses.
CONFIG_SECTIONS = ("gpl", "embed.dev_fraction", "embed.k_values", "assemble.hybrid_depth")
UNTRAINED_TEACHER = ("rerank.kind", "rerank.query_likelihood", "rerank.cross_encoder.base_model")  # gpl.teacher: base
HYBRID_TEACHER = ("embed.base_model",)  # gpl.teacher: hybrid (its depth is in CONFIG_SECTIONS)
MINERS = {"embedder": "tuned embedder", "teacher": "teacher"}  # gpl.negatives_from, as the model card names it
WEAK_TEACHER_MARGIN = 1e-3  # a teacher whose margins all stay below this cannot rank: refused


def training_arguments(cfg: GplConfig, output_dir: Path, seed: int) -> SentenceTransformerTrainingArguments:
    """Our defaults, then ``gpl.trainer`` on top (user keys win); unknown keys name ``gpl.trainer.<key>``."""
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    check_trainer_keys("gpl", cfg.trainer, SentenceTransformerTrainingArguments)
    route_tensorboard(cfg.trainer, output_dir)  # event files kept beside the checkpoints
    args: dict[str, Any] = {
        **common_training_args(cfg.epochs, cfg.max_steps, cfg.batch_size, cfg.learning_rate, seed),
        "disable_tqdm": not is_main_process(),
        "logging_steps": 0.05,  # below 1: a ratio of the total steps, so about 20 loss points whatever the length
        "eval_strategy": "no",
    }
    if cfg.group_by_length:
        from ragtune.pipeline.length_batches import LengthGroupedBatchSampler

        args["batch_sampler"] = LengthGroupedBatchSampler
    if cfg.checkpoint_steps:
        # Only the last checkpoint is needed to resume; GPL selects nothing on the way.
        args |= {"save_strategy": "steps", "save_steps": cfg.checkpoint_steps, "save_total_limit": 1}
    else:
        args["save_strategy"] = "no"
    args |= cfg.trainer
    return SentenceTransformerTrainingArguments(output_dir=str(output_dir), **args)


def resume_state(run: RunDir, config_hash: str) -> tuple[list[dict[str, Any]] | None, str | None]:
    """What an interrupted round with this config hash left: its labelled triples and its last checkpoint.

    The checkpoints folder holds :data:`~ragtune.pipeline.rundir.GPL_RESUME` (the config hash, which covers the inputs'
    hashes, and the hash of gpl/train.jsonl it trained on). Anything left by another config or other inputs is
    removed (main process), and the round starts afresh.

    Returns:
        ``(triples or None, checkpoint folder or None)``.
    """
    from transformers.trainer_utils import get_last_checkpoint

    marker, data, checkpoints = run.path(GPL_RESUME), run.path(GPL_TRAIN_DATA), run.path(GPL_CHECKPOINTS)
    try:
        left = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        left = {}
    if left.get("config_hash") == config_hash and data.is_file() and hash_path(data) == left.get("train_data"):
        return read_jsonl(data), get_last_checkpoint(str(checkpoints)) if checkpoints.is_dir() else None
    if checkpoints.exists() and is_main_process():
        shutil.rmtree(checkpoints)
    return None, None


def model_card_section(cfg: GplConfig, teacher: str, report: dict[str, Any]) -> str:
    """The model card's ragtune section: the recipe and the dev figures against stage 1's."""
    shown = [
        ("stage 1 (embed/model)", report["dev_ndcg@10_embed"], report["dev_ndcg@10_embed_hybrid"]),
        ("GPL round (this model)", report["dev_ndcg@10_gpl"], report["dev_ndcg@10_gpl_hybrid"]),
    ]
    cells = [(name, ["–" if v is None else f"{v:.4f}" for v in figures]) for name, *figures in shown]
    rows = "\n".join(f"| {name} | {' | '.join(values)} |" for name, values in cells)
    mixed = (
        f"- Weight-space ensemble: {cfg.base_share:.0%} of the start's weights mixed back (gpl.base_share)\n"
        if cfg.base_share
        else ""
    )
    return (
        "\n\n## Second round by ragtune (GPL)\n\n"
        f"- Start: stage 1's tuned embedder (`{EMBED_MODEL}`)\n"
        f"- Teacher: `{teacher}`, margins scaled by {report['label_scale']:.4g}\n"
        f"- Training data: {report['train_triples']} (query, positive, negative) triples from "
        f"{report['train_queries']} train-split queries and {report['pseudo_queries']} inverse-cloze queries, "
        f"{cfg.negatives_per_query} negatives each from the {MINERS[cfg.negatives_from]}'s top {cfg.negatives_top_k}\n"
        f"- Loss: MarginMSELoss (cosine), {report['steps']} steps"
        f"{' of length-grouped batches' if cfg.group_by_length else ''}\n"
        f"{mixed}\n"
        f"Dev slice ({report['dev_queries']} queries of held-out train documents) nDCG@10 over the whole corpus, "
        "alone and fused with BM25 (hybrid retrieval):\n\n"
        "| model | dense | hybrid |\n|---|---|---|\n" + rows + "\n"
    )


@dataclass
class Teacher:
    """The reranker that labels the triples (``gpl.teacher``): a path or a description, and what the freshness hash
    covers for it (the stage outputs it reads and the hashes of the weights it loads)."""

    path: str
    upstream: dict[str, tuple[str, ...]]
    inputs: dict[str, str]


def choose_teacher(cfg: RagtuneConfig, run: RunDir) -> Teacher:
    """``gpl.teacher``: stage 2's tuned reranker, the untrained reranker of ``rerank.kind`` or the untrained hybrid
    retriever (their settings go into the hash, their weights' hash into the inputs), or a reranker by reference."""
    gcfg = cfg.gpl
    upstream: dict[str, tuple[str, ...]] = {"data": ("corpus", "queries"), "embed": ("model",)}
    if gcfg.teacher == "tuned":
        return Teacher(str(run.require("rerank", "model")["model"]), upstream | {"rerank": ("model",)}, {})
    if gcfg.teacher == "base":  # the untrained reranker of rerank.kind: settings in the hash, weights below
        rcfg = cfg.rerank
        base = rcfg.query_likelihood.generator if rcfg.kind == "query_likelihood" else rcfg.cross_encoder.base_model
        path = "the untrained reranker (rerank.kind: " + rcfg.kind + ")"
        return Teacher(path, upstream, {"teacher/model": model_hash(resolve_model(base))})
    if gcfg.teacher == "hybrid":  # BM25 + the base embedder: settings in the hash, the embedder's weights below
        path = "the untrained hybrid retriever (BM25 + " + cfg.embed.base_model + ")"
        return Teacher(path, upstream, {"teacher/model": model_hash(resolve_model(cfg.embed.base_model))})
    path = resolve_model(gcfg.teacher)
    return Teacher(path, upstream, {"teacher/model": model_hash(path)})


@dataclass
class GplData:
    """The round's corpus, training queries (train split outside stage 1's dev slice, plus inverse-cloze ones), the
    dev slice, and stage 1's recorded metrics."""

    corpus: list[dict[str, Any]]
    rows: list[dict[str, Any]]
    dev_queries: list[dict[str, Any]]
    pseudo_queries: int
    embed_metrics: dict[str, Any]


def load_gpl_data(cfg: RagtuneConfig, run: RunDir) -> GplData:
    """The training and dev queries.

    Raises:
        StageInputError: stage 1 measured its dev figure on another dev slice than ``embed.dev_fraction`` gives now.
    """
    paths = run.require("data", "corpus", "queries")
    corpus = read_jsonl(paths["corpus"])
    rows, dev_queries, n_pseudo = gpl_queries(
        read_jsonl(paths["queries"]), corpus, cfg.embed.dev_fraction, cfg.gpl.pseudo_queries, cfg.run.seed
    )
    embed_metrics = run.load_manifest()["embed"].metrics
    stage_one_queries = EmbedFigures.from_metrics(embed_metrics).queries
    if stage_one_queries not in (None, len(dev_queries)):
        raise StageInputError(
            f"gpl: stage 1 measured its dev figure on {stage_one_queries} dev queries, embed.dev_fraction="
            f"{cfg.embed.dev_fraction} gives {len(dev_queries)} now: run `ragtune embed CONFIG` again so both "
            "figures are on the same slice"
        )
    logger.info("gpl: %d training queries (%d inverse-cloze), %d dev queries", len(rows), n_pseudo, len(dev_queries))
    return GplData(corpus, rows, dev_queries, n_pseudo, embed_metrics)


def label_on_main(
    cfg: RagtuneConfig, run: RunDir, data: GplData, teacher: Teacher, args: Any, config_hash: str
) -> tuple[list[dict[str, Any]], str | None]:
    """Mine negatives with the tuned embedder (its cached corpus embeddings) and let the teacher label the triples,
    on the main process (the other ranks read them); an interrupted round with this config reuses its labels.

    Returns:
        ``(triples, the checkpoint to resume from or None)``.

    Raises:
        ValueError: no triple.
        ConfigError: the teacher's margins are all too small to rank with.
    """
    gcfg, seed = cfg.gpl, cfg.run.seed
    triples, checkpoint = resume_state(run, config_hash)
    with args.main_process_first(desc="mining negatives and labelling triples"):
        if triples is None and is_main_process():
            cache, block_mb = run.path(EMBEDDING_CACHE), cfg.run.score_block_mb
            if gcfg.teacher == "hybrid":
                base = DenseRetriever.load(cfg.embed.base_model, data.corpus, cache_dir=cache, score_block_mb=block_mb)
                reranker = HybridTeacher(base, cfg.assemble.hybrid_depth, block_mb)
            if gcfg.negatives_from == "teacher":  # the hybrid teacher's own ranking (the config allows no other)
                miner: Any = reranker
            else:
                embedder = run.require("embed", "model")["model"]
                miner = DenseRetriever.load(str(embedder), data.corpus, cache_dir=cache, score_block_mb=block_mb)
            negatives = mine_negatives(miner, data.rows, gcfg.negatives_per_query, gcfg.negatives_top_k, seed)
            del miner
            if gcfg.teacher == "base":  # the rerankers load once the miner is gone (memory)
                reranker = untrained_reranker(cfg, run.path(SCORE_CACHE))
            elif gcfg.teacher != "hybrid":
                prefix_mb = cfg.rerank.query_likelihood.prefix_cache_mb
                reranker = load_reranker(teacher.path, gcfg.max_length, seed, run.path(SCORE_CACHE), prefix_mb)
            chunks = {c["id"]: c for c in data.corpus}
            triples = label_triples(reranker, data.rows, negatives, chunks, gcfg.teacher_batch_size)
            del reranker
            atomic_write_jsonl(run.path(GPL_TRAIN_DATA), triples)
            resume = {"config_hash": config_hash, "train_data": hash_path(run.path(GPL_TRAIN_DATA))}
            atomic_write_text(run.path(GPL_RESUME), json.dumps(resume) + "\n")
        elif triples is None:
            triples = read_jsonl(run.path(GPL_TRAIN_DATA))
    if not triples:
        raise ValueError(f"gpl: no (query, positive, negative) triple to train on; see {GPL_TRAIN_DATA}")
    widest = max(abs(t["margin"]) for t in triples)
    if widest < WEAK_TEACHER_MARGIN:  # scaled up, its noise would be the student's only target
        raise ConfigError(
            f"gpl.teacher: the teacher ({teacher.path}) cannot tell a positive from a negative: its widest margin "
            f"over {len(triples)} triples is {widest:.2g} (below {WEAK_TEACHER_MARGIN:g}), so GPL would train on "
            f"noise. Its labels are kept in {GPL_TRAIN_DATA}. Use a cross-encoder that ranks (gpl.teacher=<hub id or "
            "path>, e.g. cross-encoder/ms-marco-MiniLM-L6-v2), or leave gpl.enabled false"
        )
    if checkpoint:
        logger.info("gpl: resuming from %s (labels reused from %s)", Path(checkpoint).name, GPL_TRAIN_DATA)
    return triples, checkpoint


def train_on_margins(
    run: RunDir, triples: list[dict[str, Any]], scale: float, args: Any, checkpoint: str | None, base_share: float
) -> tuple[Any, Any, Any]:
    """Train stage 1's model on the scaled margins with MarginMSE (cosine: ragtune's retrieval normalises), then
    mix ``base_share`` of stage 1's weights back in (``gpl.base_share``; 0: none).

    Returns:
        ``(the trained model, its trainer, the training result)``.
    """
    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
    from sentence_transformers.util import pairwise_cos_sim

    embedder = run.require("embed", "model")["model"]
    model = SentenceTransformer(str(embedder), device="cuda" if torch.cuda.is_available() else "cpu")
    dataset = Dataset.from_dict(
        {
            "query": [t["query"] for t in triples],
            "positive": [t["positive"] for t in triples],
            "negative": [t["negative"] for t in triples],
            "label": [t["margin"] * scale for t in triples],
        }
    )
    start = trainable_snapshot(model) if base_share else {}  # stage 1's weights, before a checkpoint is resumed
    loss = losses.MarginMSELoss(model, similarity_fct=pairwise_cos_sim)
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=dataset, loss=loss)
    result = trainer.train(resume_from_checkpoint=checkpoint)
    if base_share:
        mix_back(trainer.model, start, base_share)
        logger.info("gpl: %.0f%% of stage 1's weights mixed back (gpl.base_share)", 100 * base_share)
    return trainer.model, trainer, result


def gpl_report(
    cfg: RagtuneConfig,
    data: GplData,
    dev: dict[str, float],
    dev_hybrid: dict[str, float],
    triples: list[dict[str, Any]],
    scale: float,
    trainer: Any,
    result: Any,
    checkpoint: str | None,
) -> dict[str, Any]:
    """``gpl/metrics.json``: the dev figures against stage 1's, the teacher, the triples' margins, the training."""
    margins = [t["margin"] for t in triples]
    history = [h for h in trainer.state.log_history if "loss" in h]
    stage_one = EmbedFigures.from_metrics(data.embed_metrics)
    gate = GplFigures(  # what decides which model is the tuned embedder (ragtune.pipeline.promotion)
        queries=len(data.dev_queries),
        embed=stage_one.tuned,
        gpl=dev.get("ndcg@10"),
        embed_hybrid=stage_one.tuned_hybrid,
        gpl_hybrid=dev_hybrid.get("ndcg@10"),
    )
    return {
        **gate.as_metrics(),
        "dev": dev,
        "dev_hybrid": dev_hybrid,
        "teacher": cfg.gpl.teacher if cfg.gpl.teacher != "tuned" else RERANK_MODEL,
        "train_queries": len(data.rows) - data.pseudo_queries,
        "pseudo_queries": data.pseudo_queries,
        "train_triples": len(triples),
        "label_scale": scale,
        "base_share": cfg.gpl.base_share,
        "margin_mean": sum(margins) / len(margins),
        "margin_min": min(margins),
        "margin_max": max(margins),
        "steps": trainer.state.global_step,
        "resumed_from": checkpoint and Path(checkpoint).name,
        "train_seconds": result.metrics.get("train_runtime"),
        "first_loss": history[0]["loss"] if history else None,
        "last_loss": history[-1]["loss"] if history else None,
        "loss_history": [[h["step"], h["loss"]] for h in history],
        "dev_qids": [q["qid"] for q in data.dev_queries],
    }


def save_gpl_model(cfg: RagtuneConfig, run: RunDir, model: Any, report: dict[str, Any]) -> None:
    """Save the model with its card and ``ragtune_gpl.json`` atomically, and the report beside it."""
    with atomic_dir(run.path(GPL_MODEL)) as tmp:
        model.save(str(tmp))
        card = tmp / "README.md"
        card.write_text(
            (card.read_text(encoding="utf-8") if card.exists() else "")
            + model_card_section(cfg.gpl, report["teacher"], report),
            encoding="utf-8",
        )
        (tmp / "ragtune_gpl.json").write_text(
            json.dumps({"start": EMBED_MODEL, "teacher": report["teacher"], "loss": "margin_mse"}, indent=2)
        )
    atomic_write_text(run.path(GPL_METRICS), json.dumps(report, indent=2) + "\n")


def dev_hybrid_metrics(cfg: RagtuneConfig, tuned: DenseRetriever, data: GplData) -> dict[str, float]:
    """The model's dev figures inside hybrid retrieval (BM25 fused by reciprocal rank at ``assemble.hybrid_depth``),
    as stage 1 measures its own: the gate compares the two models where each would serve."""
    if not data.dev_queries:
        return {}
    depth = cfg.assemble.hybrid_depth
    bm25 = bm25_rankings(bm25_retriever(data.corpus, depth), [q["text"] for q in data.dev_queries])
    return hybrid_retrieval_metrics(tuned, data.dev_queries, cfg.embed.k_values, bm25, depth)


METRICS_KEYS = (*GplFigures.keys().values(), "train_queries", "pseudo_queries")
METRICS_KEYS += ("train_triples", "label_scale", "steps", "first_loss", "last_loss")  # the manifest's, of the report


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict[str, Any]:
    """Run the GPL round; nothing (and nothing recorded) when ``gpl.enabled`` is false; skipped when fresh."""
    gcfg = cfg.gpl
    if not gcfg.enabled:
        logger.info("gpl: off (gpl.enabled: false): nothing to do, stage 1's model stays the tuned embedder")
        return {}
    from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

    # Before any model is loaded: a typo should cost nothing.
    check_trainer_keys("gpl", gcfg.trainer, SentenceTransformerTrainingArguments)
    if cfg.embed.method != "full":
        raise ConfigError(
            f"gpl: the GPL round retrains a fully fine-tuned stage-1 embedder; embed.method is {cfg.embed.method}, "
            "not full"
        )
    run.require("data", "corpus", "queries")
    run.require("embed", "model")
    teacher = choose_teacher(cfg, run)
    sections = CONFIG_SECTIONS + {"base": UNTRAINED_TEACHER, "hybrid": HYBRID_TEACHER}.get(gcfg.teacher, ())
    config_hash, inputs = run.freshness(cfg, sections, teacher.upstream, inputs=teacher.inputs)
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("gpl: finished and fresh, skipping (--force reruns it)")
        return run.load_manifest()[STAGE].metrics
    started = time.time()

    # 1. Load data: the train-split queries outside stage 1's dev slice, inverse-cloze queries, the dev slice.
    data = load_gpl_data(cfg, run)

    # 2-3. Mine negatives with the tuned embedder and let the teacher label the triples, on the main process. The
    #      training arguments come first: they set up the process group the other ranks wait on.
    args = training_arguments(gcfg, run.path(GPL_CHECKPOINTS), cfg.run.seed)
    triples, checkpoint = label_on_main(cfg, run, data, teacher, args, config_hash)
    scale = margin_scale([t["margin"] for t in triples], gcfg.label_scale)

    # 4. Train stage 1's model on the scaled margins with MarginMSE (cosine: ragtune's retrieval normalises).
    model, trainer, result = train_on_margins(run, triples, scale, args, checkpoint, gcfg.base_share)

    # 5. The dev figures over the whole corpus, dense and hybrid, as stage 1's; save the model, card, metrics;
    #    record (main only).
    metrics: dict[str, Any] = {}
    if is_main_process():
        tuned = DenseRetriever.encode(model, data.corpus, score_block_mb=cfg.run.score_block_mb, name="the GPL model")
        dev = retrieval_metrics(tuned, data.dev_queries, cfg.embed.k_values)
        dev_hybrid = dev_hybrid_metrics(cfg, tuned, data)
        report = gpl_report(cfg, data, dev, dev_hybrid, triples, scale, trainer, result, checkpoint)
        save_gpl_model(cfg, run, model, report)
        tuned.save_cache(run.path(EMBEDDING_CACHE), str(run.path(GPL_MODEL)))
        shutil.rmtree(run.path(GPL_CHECKPOINTS), ignore_errors=True)
        metrics = {k: report[k] for k in METRICS_KEYS}
        run.record(
            STAGE,
            config_hash=config_hash,
            inputs=inputs,
            outputs={"model": GPL_MODEL, "metrics": GPL_METRICS, "train_data": GPL_TRAIN_DATA},
            metrics=metrics,
            started=started,
        )
        figures = ("dev_ndcg@10_embed", "dev_ndcg@10_embed_hybrid", "dev_ndcg@10_gpl", "dev_ndcg@10_gpl_hybrid")
        shown = ["nan" if report[key] is None else f"{report[key]:.4f}" for key in figures]
        logger.info(
            "gpl: dev nDCG@10 dense / hybrid: stage 1 %s / %s, GPL %s / %s (%d triples, %d steps)",
            *shown,
            len(triples),
            metrics["steps"],
        )
    return metrics  # other ranks wait for the main one where every stage module ends (entry.run_stage)


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune gpl stage: retrain the tuned embedder on a reranker's score margins")
