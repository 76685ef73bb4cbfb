"""The ``extractive`` provider: no LLM, the caller's deterministic ``extractor(messages)`` (offline runs, tests)."""

from __future__ import annotations

import logging
from pathlib import Path

from ragtune.pipeline.config import LLMConfig
from ragtune.pipeline.llm.base import Extractor, LLMBackend, LLMBackendError, Messages, OnDone

logger = logging.getLogger(__name__)


class ExtractiveBackend(LLMBackend):
    """No LLM: ``extractor(messages)`` answers each request deterministically; nothing is written to disk."""

    persistent_cache = False  # the extractor is code: a stale cache would hide a change to it

    def __init__(self, cfg: LLMConfig, cache_dir: Path, extractor: Extractor | None) -> None:
        super().__init__(cfg, cache_dir)
        self.extractor = extractor

    def _complete(
        self, todo: list[tuple[str, Messages]], max_new_tokens: int, temperature: float, on_done: OnDone
    ) -> None:
        if self.extractor is None:
            raise LLMBackendError(
                "provider 'extractive' needs an extractor: the stage that uses it must call "
                "make_backend(cfg, cache_dir, extractor=...), or pick provider local/openai"
            )
        for key, messages in todo:
            try:
                text = self.extractor(messages)
            except Exception as e:
                self.last_error = f"{type(e).__name__}: {e}"
                logger.warning("extractor failed on one item (%s)", self.last_error)
                self.usage.failed += 1
                continue
            on_done(key, text, 0, 0)
