"""Components: which model paths a configuration of base and tuned parts uses.

A choice (:class:`~ragtune.pipeline.config.AssembleConfig`: embedder, reranker and generator each ``base``,
``tuned`` or ``auto``) becomes paths: base models from their stage's section, tuned ones through the run's
manifest. Assembly, the server and the eval harness read components only through
:func:`resolve_components`, so they serve and measure the same models, and load them only through
:class:`ragtune.pipeline.stack.StackLoader`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ragtune.pipeline.config import AssembleConfig, RagtuneConfig
from ragtune.pipeline.extractive import EXTRACTIVE
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.promotion import resolve_auto, tuned_embedder
from ragtune.pipeline.retrieval import Reranker
from ragtune.pipeline.rundir import RunDir, StageInputError


@dataclass
class Components:
    """Model paths one configuration uses, and the hashes of the upstream outputs it read."""

    embedder: str
    reranker: str | None
    generator: str | None  # None in retrieval-only mode; ragtune.pipeline.extractive.EXTRACTIVE: no LLM
    adapter: str | None = None  # a peft LoRA adapter applied on top of ``generator``
    inputs: dict[str, str] = field(default_factory=dict)

    @property
    def retrieval_key(self) -> tuple[str, str | None]:
        return self.embedder, self.reranker

    @property
    def generator_key(self) -> tuple[str | None, str | None]:
        return self.generator, self.adapter


def tuned_embedder_path(cfg: RagtuneConfig, run: RunDir) -> tuple[str, dict[str, str]]:
    """The tuned embedder's folder and the upstream hashes it stands on.

    Stage 1's ``embed/model``, or with ``gpl.enabled`` the GPL round's ``gpl/model`` when
    :func:`ragtune.pipeline.promotion.tuned_embedder` names it (finished on stage 1's current model, better on dev).
    With the GPL round on, its model's hash counts as an input whichever serves: its figures decide which.

    Raises:
        StageInputError: the stage whose model it is has not finished (or its output is stale).
    """
    inputs = run.input_hashes("gpl", "model") if cfg.gpl.enabled else {}
    if tuned_embedder(run.load_manifest(), cfg.gpl.enabled, cfg.assemble.retrieval).stage == "gpl":
        return str(run.require("gpl", "model")["model"]), inputs
    return str(run.require("embed", "model")["model"]), inputs | run.input_hashes("embed", "model")


def resolve_components(
    cfg: RagtuneConfig, run: RunDir, choice: AssembleConfig, need_generator: bool = True
) -> Components:
    """Model paths for one combination of base / tuned components.

    Base models come from ``embed.base_model``, the untrained reranker of ``rerank.kind``
    (:func:`untrained_reranker_path`) and ``raft.base_model``; tuned ones from the run's manifest: ``embed/model``
    (or ``gpl/model``, see :func:`tuned_embedder_path`), ``rerank/model``, and ``raft/merged`` when the RAFT stage
    saved it, else ``raft/adapter`` over the base generator.

    Raises:
        StageInputError: a tuned component's stage has not finished (or its output is stale).
    """
    choice = resolve_auto(choice, run, cfg.gpl.enabled)
    inputs: dict[str, str] = {}
    if choice.embedder == "tuned":
        embedder, inputs = tuned_embedder_path(cfg, run)
    else:
        embedder = resolve_model(cfg.embed.base_model)
    reranker = None
    if choice.reranker == "tuned":
        reranker = str(run.require("rerank", "model")["model"])
        inputs |= run.input_hashes("rerank", "model")
    elif choice.reranker == "base":
        reranker, untrained_inputs = untrained_reranker_path(cfg, run)
        inputs |= untrained_inputs
    generator = adapter = None
    if need_generator and choice.generator == "tuned":
        raft = run.load_manifest().get("raft")
        if raft is not None and "merged" in raft.outputs:
            generator = str(run.require("raft", "merged")["merged"])
            inputs |= run.input_hashes("raft", "merged")
        else:
            adapter = str(run.require("raft", "adapter")["adapter"])
            generator = resolve_model(cfg.raft.base_model)
            inputs |= run.input_hashes("raft", "adapter")
    elif need_generator and choice.generator == EXTRACTIVE:
        generator = EXTRACTIVE  # no model: the embedder answers (ragtune.pipeline.extractive)
    elif need_generator:
        generator = resolve_model(cfg.raft.base_model)
    return Components(embedder, reranker, generator, adapter, inputs)


def untrained_reranker_path(cfg: RagtuneConfig, run: RunDir) -> tuple[str, dict[str, str]]:
    """``assemble.reranker: base``: the untrained reranker of ``rerank.kind`` stage 2 saved (``rerank/untrained``,
    with the fusion weight the dev slice chose for it), and the hash it stands on.

    Before stage 2 a cross-encoder kind falls back to ``rerank.cross_encoder.base_model`` reranking plainly (weight 1).

    Raises:
        StageInputError: a query-likelihood kind before stage 2 (its untrained form and weight come from there).
    """
    record = run.load_manifest().get("rerank")
    if record is not None and "untrained" in record.outputs:
        return str(run.require("rerank", "untrained")["untrained"]), run.input_hashes("rerank", "untrained")
    if cfg.rerank.kind == "cross_encoder":
        return resolve_model(cfg.rerank.cross_encoder.base_model), {}
    raise StageInputError(
        f"assemble.reranker: base is the untrained query-likelihood reranker with the fusion weight stage 2 chose "
        f"for it on the dev slice; run `ragtune rerank CONFIG` first ({run.root})"
    )


def load_reranker(
    path: str, max_length: int, seed: int, cache_dir: Path | None = None, prefix_cache_mb: int | None = None
) -> Reranker:
    """The reranker in ``path``: a query-likelihood reranker the rerank stage saved, else a one-logit CrossEncoder.

    Both have ``predict(pairs, batch_size=..., show_progress_bar=...)`` (:class:`ragtune.pipeline.retrieval.Reranker`);
    assembly and eval load rerankers through :class:`ragtune.pipeline.stack.StackLoader`, which calls this once per
    path.

    Args:
        max_length: a CrossEncoder's (query, passage) tokens (a query-likelihood reranker keeps its own).
        seed: seeds the fresh head a base encoder gets, so runs agree.
        cache_dir: where a query-likelihood reranker keeps its score cache (None: in memory only).
        prefix_cache_mb: a query-likelihood reranker's memory for passages' key/value prefixes
            (``rerank.query_likelihood.prefix_cache_mb``; None: its default).
    """
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker, is_query_likelihood

    if is_query_likelihood(path):
        budget = {} if prefix_cache_mb is None else {"prefix_cache_mb": prefix_cache_mb}
        return QueryLikelihoodReranker.load(path, cache_dir, **budget)
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(seed)
    return CrossEncoder(path, num_labels=1, max_length=max_length)


def untrained_reranker(cfg: RagtuneConfig, cache_dir: Path | None = None) -> Reranker:
    """The configured kind's reranker before stage 2 trains it.

    Query likelihood: ``rerank.query_likelihood.generator`` with the stage's prompt, no adapter (it ranks
    before any training); cross-encoder: ``rerank.cross_encoder.base_model`` as a one-logit CrossEncoder (a fresh
    head unless the model is a trained cross-encoder).

    Args:
        cache_dir: where a query-likelihood reranker keeps its score cache (a file named by the generator's
            content hash and the prompt), or None.
    """
    if cfg.rerank.kind == "query_likelihood":
        from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker, untrained_cache_name

        ql = cfg.rerank.query_likelihood
        name = untrained_cache_name(ql.generator, ql.prompt, ql.max_length)
        cache_file = Path(cache_dir) / f"{name}.jsonl" if cache_dir is not None else None
        return QueryLikelihoodReranker.from_generator(
            ql.generator, ql.prompt, ql.max_length, ql.dtype, cache_file=cache_file, prefix_cache_mb=ql.prefix_cache_mb
        )
    settings = cfg.rerank.cross_encoder
    return load_reranker(resolve_model(settings.base_model), settings.max_length, cfg.run.seed, cache_dir)
