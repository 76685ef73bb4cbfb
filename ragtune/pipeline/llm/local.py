"""The ``local`` provider: a transformers causal LM, batched generation through :mod:`ragtune.pipeline.generator`.

A caller that reads only the start of each completion can make the backend stop there (:func:`stop_when`):
the data stage's small-model recipe stops each row at its first settled question.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ragtune.pipeline.config import LLMConfig
from ragtune.pipeline.generator import StopRule
from ragtune.pipeline.llm.base import LLMBackend, Messages, OnDone

logger = logging.getLogger(__name__)


class LocalBackend(LLMBackend):
    """A transformers causal LM, loaded once in ``dtype`` (:func:`~ragtune.pipeline.precision.inference_dtype`);
    prompts sorted by length and generated in left-padded batches that share the prompts' common start.

    ``stop`` (None unless set, see :func:`stop_when`): a rule on a completion so far that finishes it early.
    """

    def __init__(self, cfg: LLMConfig, cache_dir: Path) -> None:
        super().__init__(cfg, cache_dir)
        self._model: Any = None
        self._tokenizer: Any = None
        self.stop: StopRule | None = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from ragtune.pipeline.generator import load_generator
        from ragtune.pipeline.models import resolve_model
        from ragtune.pipeline.precision import inference_dtype

        path = resolve_model(self.cfg.model)
        dtype = inference_dtype(self.cfg.dtype)
        self._model, self._tokenizer = load_generator(path, dtype=dtype)
        logger.info("local LLM %s loaded from %s on %s in %s", self.cfg.model, path, self._model.device, dtype)

    def _complete(
        self, todo: list[tuple[str, Messages]], max_new_tokens: int, temperature: float, on_done: OnDone
    ) -> None:
        from ragtune.pipeline.generator import generate_batched

        self._load()

        def on_completion(i: int, text: str, prompt_tokens: int, completion_tokens: int) -> None:
            self.usage.prompt_tokens += prompt_tokens
            self.usage.completion_tokens += completion_tokens
            on_done(todo[i][0], text, prompt_tokens, completion_tokens)

        generate_batched(
            self._model,
            self._tokenizer,
            [m for _, m in todo],
            max_new_tokens,
            self.cfg.batch_size,
            desc=None,  # the backend's own bar counts the items
            temperature=temperature,
            seeds=[int(key[:8], 16) for key, _ in todo],  # same batch, same samples on a rerun
            on_completion=on_completion,
            stop=self.stop,
        )


@contextmanager
def stop_when(backend: Any, rule: StopRule | None) -> Iterator[None]:
    """Within the block, a :class:`LocalBackend` ends each completion as soon as ``rule`` holds for it.

    For a caller whose parse reads only the start of a completion (with a rule that fires once that start is
    settled, the parse is the same and the tokens after it are never generated). The cache keeps the shortened
    text under the usual key, so use it only where every reader of those entries parses them the same way.
    Other providers, and ``rule`` None, are unaffected.
    """
    if not isinstance(backend, LocalBackend) or rule is None:
        yield
        return
    previous, backend.stop = backend.stop, rule
    try:
        yield
    finally:
        backend.stop = previous
