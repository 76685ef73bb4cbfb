"""The one loader of a configuration's models: each model loaded once per process, whoever asks for it.

:func:`ragtune.pipeline.components.resolve_components` turns a choice of base and tuned parts into paths; a
:class:`StackLoader` turns those paths into loaded models — the embedder (a ``SentenceTransformer``), the
reranker of either kind (:class:`ragtune.pipeline.retrieval.Reranker`) with its fusion weight, and the generator
with its tokenizer (or the extractive marker, no model). Assembly (and so the server and the LangChain wrapper)
and every eval step load through one loader, so a model several configurations share is loaded once:

- an embedder once per path; a configuration served at ``assemble.truncate_dim`` gets a view of the same
  weights that encodes at that dimension (sentence-transformers' own ``truncate_dim``), not a second copy;
- a reranker once per path (its fusion weight read once beside it);
- a generator once per (path, adapter, dtype); at most ``resident_generators`` stay loaded (default one: eval
  answers with one generator at a time), and :meth:`StackLoader.release_generators` lets the last one go.

Example (a sketch over a finished run, not run as a doctest):
    loader = StackLoader(cfg)
    stack = loader.stack(resolve_components(cfg, run, cfg.assemble), cfg.assemble)
    stack.embedder.encode_query(["how do I fail over Heron?"])
"""

from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ragtune.pipeline.components import Components, load_reranker
from ragtune.pipeline.config import AssembleConfig, RagtuneConfig
from ragtune.pipeline.extractive import EXTRACTIVE
from ragtune.pipeline.generator import load_generator
from ragtune.pipeline.precision import inference_dtype
from ragtune.pipeline.retrieval import Reranker, check_truncate_dim, load_embedder, load_fusion_weight

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer

logger = logging.getLogger(__name__)

GeneratorKey = tuple[str, str | None, str | None]  # (generator folder, adapter folder or None, dtype or None)


@dataclass
class Stack:
    """The loaded models of one configuration.

    Attributes:
        components: the paths they were loaded from.
        embedder: the ``SentenceTransformer``, encoding at the configuration's ``truncate_dim``.
        reranker: the reranker of either kind, or None without one.
        fusion_weight: the share of the reranker's score against the retriever's (None without a reranker).
        generator: the causal LM (with its adapter), or None: retrieval only, or the extractive answerer.
        tokenizer: the generator's tokenizer (left padding), or None.
    """

    components: Components
    embedder: SentenceTransformer
    reranker: Reranker | None = None
    fusion_weight: float | None = None
    generator: Any = None
    tokenizer: Any = None

    @property
    def extractive(self) -> bool:
        """True when the configuration answers without an LLM (:mod:`ragtune.pipeline.extractive`)."""
        return self.components.generator == EXTRACTIVE


class StackLoader:
    """Loads configurations' models, each at most once (see the module docstring).

    Args:
        cfg: the run's config: ``rerank.cross_encoder.max_length`` (a cross-encoder's tokens per pair) and
            ``run.seed`` (the fresh head a base encoder gets is seeded, so every loader gives it the same weights).
        score_cache: where a query-likelihood reranker keeps its score cache (None: in memory only).
        resident_generators: how many generators stay loaded; loading one more lets the oldest go first.
    """

    def __init__(self, cfg: RagtuneConfig, score_cache: Path | None = None, resident_generators: int = 1) -> None:
        self.reranker_max_length = cfg.rerank.cross_encoder.max_length
        self.seed = cfg.run.seed
        self.prefix_cache_mb = cfg.rerank.query_likelihood.prefix_cache_mb
        self.score_cache = score_cache
        self.resident_generators = max(1, resident_generators)
        self._embedders: dict[str, Any] = {}
        self._views: dict[tuple[str, int], Any] = {}
        self._rerankers: dict[str, Reranker] = {}
        self._weights: dict[str, float] = {}
        self._generators: dict[GeneratorKey, tuple[Any, Any]] = {}

    def embedder(self, path: str, truncate_dim: int | None = None) -> SentenceTransformer:
        """The ``SentenceTransformer`` in ``path``, encoding at ``truncate_dim`` (None: its full dimension).

        Every dimension of one path shares the weights loaded once: a truncated one is a shallow copy whose own
        ``truncate_dim`` is set (what ``SentenceTransformer(path, truncate_dim=...)`` would give).

        Raises:
            ConfigError: ``truncate_dim`` exceeds the model's dimension.
        """
        if path not in self._embedders:
            self._embedders[path] = load_embedder(path)
        full = self._embedders[path]
        if truncate_dim is None:
            return full
        if (path, truncate_dim) not in self._views:
            check_truncate_dim(full, truncate_dim, path)
            view = copy.copy(full)  # the same modules and parameters; its own truncate_dim
            view.truncate_dim = truncate_dim
            self._views[path, truncate_dim] = view
        return self._views[path, truncate_dim]

    def reranker(self, path: str) -> Reranker:
        """The reranker in ``path``, either kind (:func:`ragtune.pipeline.components.load_reranker`)."""
        if path not in self._rerankers:
            self._rerankers[path] = load_reranker(
                path, self.reranker_max_length, self.seed, self.score_cache, self.prefix_cache_mb
            )
        return self._rerankers[path]

    def fusion_weight(self, path: str) -> float:
        """The fusion weight stage 2 chose for the reranker in ``path`` (1.0 without one recorded)."""
        if path not in self._weights:
            self._weights[path] = load_fusion_weight(path)
        return self._weights[path]

    def generator(self, path: str, adapter: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
        """The causal LM in ``path`` (with ``adapter``) at ``dtype``, and its tokenizer
        (:func:`ragtune.pipeline.generator.load_generator`)."""
        key = (path, adapter, dtype)
        if key not in self._generators:
            while len(self._generators) >= self.resident_generators:  # let the oldest go before loading
                del self._generators[next(iter(self._generators))]
            self._generators[key] = load_generator(path, adapter, dtype)
        return self._generators[key]

    def release_generators(self) -> None:
        """Let every loaded generator go (its memory is freed once no caller holds it)."""
        self._generators.clear()

    def stack(self, components: Components, choice: AssembleConfig, generator: bool = True) -> Stack:
        """The loaded models of one configuration.

        Args:
            components: its paths (:func:`ragtune.pipeline.components.resolve_components`).
            choice: the configuration (``truncate_dim``; ``dtype`` for the generator).
            generator: load the generator too (False: retrieval and reranking only).
        """
        stack = Stack(components, self.embedder(components.embedder, choice.truncate_dim))
        if components.reranker is not None:
            stack.reranker = self.reranker(components.reranker)
            stack.fusion_weight = self.fusion_weight(components.reranker)
        if generator and components.generator not in (None, EXTRACTIVE):
            stack.generator, stack.tokenizer = self.generator(
                components.generator, components.adapter, inference_dtype(choice.dtype)
            )
        return stack
