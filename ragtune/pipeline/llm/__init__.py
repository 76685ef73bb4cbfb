"""LLM backends: one interface, three providers, and the cache, budget and retries they share.

Providers (``LLMConfig.provider``):

- ``openai`` — any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, TGI) through ``AsyncOpenAI``:
  requests run concurrently (``concurrency``), 429/5xx/timeouts/connection errors are retried with
  exponential backoff that honours ``Retry-After``, a requests-per-minute limit is kept, tokens are
  counted, and a token or money budget stops the run cleanly. The key is read from the environment
  variable *named* by ``api_key_env`` and never written or logged.
- ``local`` — a transformers causal LM (bundled SmolLM2 by default), left-padded batched generation
  (:mod:`ragtune.pipeline.generator`).
- ``extractive`` — no LLM: the caller's deterministic ``extractor(messages)`` (offline runs, tests).

One module per provider (:mod:`ragtune.pipeline.llm.openai_compatible`, :mod:`ragtune.pipeline.llm.local`,
:mod:`ragtune.pipeline.llm.extractive`) over :mod:`ragtune.pipeline.llm.base` (request key, cache, usage, the shared
front); this package builds the one the config names (:func:`make_backend`).

Every finished call is appended at once to ``<cache_dir>/llm.jsonl`` (append + flush + fsync), keyed
by the sha256 of provider, model, generation parameters and messages. A rerun after a crash, even
``kill -9``, repeats no finished call; a torn last line is dropped on load. A reply the caller rejects
(``accept``) is recorded as not final: it counts towards the budget but is asked again on a rerun.
The token/USD budget counts every call the cache has recorded, so reruns cannot exceed it.

When more than ``max_failed_fraction`` of a batch's calls fail (an unreachable endpoint: all of them),
``generate`` raises :class:`LLMEndpointError` naming the endpoint and the last error; the stage fails and
a rerun retries only the failed calls.

Example (a sketch over a finished run, not run as a doctest):
    backend = make_backend(cfg.synth.llm, run.path(DATA_LLM_CACHE))
    backend.generate([[{"role": "user", "content": "Say hi"}]], max_new_tokens=8)
    # -> ['Hi!']
    backend.usage.as_dict()["calls"]
    # -> 1
"""

from __future__ import annotations

from pathlib import Path

from ragtune.pipeline.config import LLMConfig
from ragtune.pipeline.llm.base import (
    CACHE_FILE,
    DryRunFinished,
    Extractor,
    LLMBackend,
    LLMBackendError,
    LLMEndpointError,
    LLMUsage,
    Messages,
    ResponseCache,
    estimate_prompt_tokens,
    request_key,
    too_many_failed,
)
from ragtune.pipeline.llm.extractive import ExtractiveBackend
from ragtune.pipeline.llm.local import LocalBackend
from ragtune.pipeline.llm.openai_compatible import OpenAIBackend

__all__ = [
    "CACHE_FILE",
    "DryRunFinished",
    "ExtractiveBackend",
    "Extractor",
    "LLMBackend",
    "LLMBackendError",
    "LLMEndpointError",
    "LLMUsage",
    "LocalBackend",
    "Messages",
    "OpenAIBackend",
    "ResponseCache",
    "estimate_prompt_tokens",
    "make_backend",
    "request_key",
    "too_many_failed",
]


def make_backend(cfg: LLMConfig, cache_dir: Path, extractor: Extractor | None = None) -> LLMBackend:
    """Build the backend ``cfg.provider`` names.

    Args:
        cfg: an ``LLMConfig`` (``synth.llm``, ``raft.teacher``, ``eval.judge``).
        cache_dir: folder of the per-item cache, normally ``run.path(DATA_LLM_CACHE)``.
        extractor: for ``extractive`` only: ``messages -> completion``, deterministic.

    Returns:
        An :class:`LLMBackend`; nothing is loaded or called until ``generate``.

    Example:
        >>> import tempfile
        >>> echo = lambda messages: messages[-1]["content"][:20]
        >>> backend = make_backend(LLMConfig(provider="extractive"), Path(tempfile.mkdtemp()), extractor=echo)
        >>> backend.generate([[{"role": "user", "content": "an echo"}]])
        ['an echo']
    """
    if cfg.provider == "openai":
        return OpenAIBackend(cfg, cache_dir)
    if cfg.provider == "local":
        return LocalBackend(cfg, cache_dir)
    return ExtractiveBackend(cfg, cache_dir, extractor)
