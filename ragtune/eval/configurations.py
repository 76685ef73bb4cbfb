"""The configurations eval measures (built in and ``eval.custom``) and the held-out queries it measures them on."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

from ragtune.pipeline.components import Components, resolve_components
from ragtune.pipeline.config import AssembleConfig, RagtuneConfig
from ragtune.pipeline.promotion import resolve_auto
from ragtune.pipeline.rundir import RunDir, StageInputError

logger = logging.getLogger(__name__)

BASELINE = "rag_only"
# The untrained baselines are plain RAG: the base embedder at its full dimension, whatever assemble.truncate_dim says,
# and the base generator writing its own quote. The other configurations take assemble.quote (auto: each generator
# answers the way the RAFT stage's dev check scored best for it, its own quote or the extractive one written in).
BUILTIN_CONFIGURATIONS: dict[str, dict[str, str | None]] = {
    "rag_only": {
        "embedder": "base",
        "reranker": "none",
        "generator": "base",
        "quote": "generator",
        "retrieval": "dense",
        "truncate_dim": None,
    },
    "rag_hybrid": {
        "embedder": "base",
        "reranker": "none",
        "generator": "base",
        "quote": "generator",
        "retrieval": "hybrid",
        "truncate_dim": None,
    },
    "embed": {"embedder": "tuned", "reranker": "none", "generator": "base"},
    "embed_rerank_untrained": {"embedder": "tuned", "reranker": "base", "generator": "base"},
    "embed_rerank": {"embedder": "tuned", "reranker": "tuned", "generator": "base"},
    "extractive": {"embedder": "tuned", "reranker": "tuned", "generator": "extractive"},
    "full": {"embedder": "tuned", "reranker": "tuned", "generator": "tuned"},
}

# The configurations whose answers the generation verdicts read (eval.generation_configurations: null): plain RAG end
# to end, the base generator over the tuned retrieval, the extractive answerer and the tuned generator.
ANSWERED_BY_DEFAULT = ("rag_only", "embed_rerank", "extractive", "full")


def answered_names(names: list[str], listed: list[str] | None, custom: Iterable[str]) -> list[str]:
    """The configurations among ``names`` whose answers are generated (``eval.generation_configurations``).

    Example:
        >>> names = ["rag_only", "rag_hybrid", "embed", "embed_rerank", "extractive", "full", "mine"]
        >>> answered_names(names, None, ["mine"])
        ['rag_only', 'embed_rerank', 'extractive', 'full', 'mine']
        >>> answered_names(names, ["embed", "full"], ["mine"])
        ['embed', 'full']
    """
    wanted = {*ANSWERED_BY_DEFAULT, *custom} if listed is None else set(listed)
    return [n for n in names if n in wanted]


def configuration_choices(cfg: RagtuneConfig) -> dict[str, AssembleConfig]:
    """Every configuration to evaluate, in order (``rag_only`` first), as a complete AssembleConfig.

    A custom configuration only overrides the fields it sets; the rest (top_k, top_n, truncate_dim,
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


@dataclass
class Plan:
    """The configurations that can run, their components, and why the others were skipped."""

    components: dict[str, Components] = field(default_factory=dict)
    choices: dict[str, AssembleConfig] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    answered: list[str] = field(default_factory=list)  # the configurations whose answers are generated

    @property
    def names(self) -> list[str]:
        return list(self.components)

    @property
    def inputs(self) -> dict[str, str]:
        """Hashes of every tuned component's upstream output (freshness of the evaluation)."""
        out: dict[str, str] = {}
        for comp in self.components.values():
            out |= comp.inputs
        return out


def plan_configurations(cfg: RagtuneConfig, run: RunDir, generation: bool) -> Plan:
    """Resolve each configuration's components; skip those whose stages have not run.

    In retrieval-only mode a configuration whose retrieval equals an earlier one's (same embedder and dimension,
    reranker, retrieval mode and top_k) is skipped too: it would measure the same ranking twice.

    Raises:
        StageInputError: the baseline ``rag_only`` cannot run.
    """
    plan = Plan()
    components, choices, skipped = plan.components, plan.choices, plan.skipped
    all_choices = configuration_choices(cfg)
    answered = set(answered_names(list(all_choices), cfg.eval.generation_configurations, cfg.eval.custom))
    for name, choice in all_choices.items():
        try:
            choice = resolve_auto(choice, run, cfg.gpl.enabled)  # what each auto serves, retrieval mode included
            comp = resolve_components(cfg, run, choice, need_generator=generation and name in answered)
        except StageInputError as e:
            skipped[name] = str(e)
            logger.warning("eval: skipping configuration %r: %s", name, e)
            continue
        twin = next(
            (n for n, c in components.items() if not generation and c.retrieval_key == comp.retrieval_key), None
        )
        same = ("retrieval", "truncate_dim", "top_k")
        if twin is not None and all(getattr(choices[twin], f) == getattr(choice, f) for f in same):
            skipped[name] = f"same retrieval as {twin!r} (retrieval-only mode)"
            logger.info("eval: skipping configuration %r: %s", name, skipped[name])
            continue
        components[name], choices[name] = comp, choice
    if BASELINE not in components:
        raise StageInputError(f"eval: the baseline configuration {BASELINE!r} cannot run: {skipped.get(BASELINE)}")
    plan.answered = [n for n in components if generation and n in answered]
    return plan


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
