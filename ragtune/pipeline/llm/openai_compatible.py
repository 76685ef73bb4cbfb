"""The ``openai`` provider: any OpenAI-compatible endpoint, concurrent, retried with backoff, rate-limited, budgeted.

The API key is read from the environment variable named by ``api_key_env`` and scrubbed from every
message this module or the HTTP client libraries log or raise.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import math
import os
import random
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from ragtune.pipeline.config import LLMConfig, redact_url, url_credentials
from ragtune.pipeline.llm.base import LLMBackend, LLMBackendError, Messages, OnDone, estimate_prompt_tokens

logger = logging.getLogger(__name__)

RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})  # every item would fail the same way: a config error
MAX_BACKOFF_S = 60.0
# loggers of the HTTP client libraries, which log request URLs
CLIENT_LOGGERS = ("openai", "openai._base_client", "httpx", "httpcore.http11", "httpcore.connection")


class _ScrubFilter(logging.Filter):
    """Rewrites the HTTP client libraries' log records through ``redact`` (their URLs may hold credentials)."""

    def __init__(self, redact: Callable[[str], str]) -> None:
        super().__init__()
        self.redact = redact

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg, record.args = self.redact(record.getMessage()), None
        if record.exc_info:  # tracebacks hold the request URL too
            record.exc_text = self.redact(logging.Formatter().formatException(record.exc_info))
            record.exc_info = None
        return True


class _Malformed(Exception):
    """A 200 response without a usable completion."""


class _RateLimiter:
    """Spaces request starts ``60 / rpm`` seconds apart, so no minute sees more than ``rpm``.

    ``clock`` (default: the event loop's clock) and ``sleep`` (default: ``asyncio.sleep``) can be replaced,
    e.g. by a virtual clock in a test.
    """

    def __init__(
        self,
        requests_per_minute: float | None,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()
        self.clock = clock
        self.sleep = sleep

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = self.clock() if self.clock else asyncio.get_running_loop().time()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        await self.sleep(start - now)


def _retry_after_s(headers: Any) -> float | None:
    """Seconds asked for by ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date), if any."""
    if headers is None:
        return None
    if (ms := headers.get("retry-after-ms")) is not None:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        when = email.utils.parsedate_to_datetime(value) if value else None
        return max(0.0, when.timestamp() - time.time()) if when else None


def _run_coroutine(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` to completion, also when called from inside a running event loop (e.g. Jupyter)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        asyncio.run(coro)
        return
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, coro).result()


class OpenAIBackend(LLMBackend):
    """An OpenAI-compatible chat endpoint: concurrent, retried, rate-limited, budgeted.

    The API key is read from ``os.environ[cfg.api_key_env]`` when the first call is due, and is
    scrubbed from every message this class logs or raises. With ``api_key_env`` unset no key is
    sent (local vLLM / Ollama servers).
    """

    def __init__(self, cfg: LLMConfig, cache_dir: Path) -> None:
        super().__init__(cfg, cache_dir)
        self._secret: str | None = None
        self._reserved_tokens = 0
        self._reserved_usd = 0.0
        prompt, completion = self.cache.recorded_spend(cfg.provider)
        self.usage.recorded_tokens = prompt + completion
        self.usage.recorded_cost_usd = self._cost(prompt, completion)

    @property
    def endpoint(self) -> str:
        return f"{redact_url(self.cfg.base_url) if self.cfg.base_url else 'OpenAI'} (model {self.cfg.model})"

    def _redact(self, text: str) -> str:
        if self.cfg.base_url:
            text = text.replace(self.cfg.base_url, redact_url(self.cfg.base_url))
        for secret in [self._secret, *url_credentials(self.cfg.base_url or "")]:
            text = text.replace(secret, "***") if secret else text
        return text

    def _api_key(self) -> str:
        if self.cfg.api_key_env is None:
            return "EMPTY"  # servers without auth still need a non-empty value in the client
        key = os.environ.get(self.cfg.api_key_env)
        if not key:
            raise LLMBackendError(
                f"environment variable {self.cfg.api_key_env} is not set: export the API key "
                f"under that name (llm.api_key_env names the variable, never the key)"
            )
        self._secret = key
        return key

    def _cost(self, prompt_tokens: float, completion_tokens: float) -> float:
        cfg = self.cfg
        return (prompt_tokens * cfg.price_prompt_per_1k + completion_tokens * cfg.price_completion_per_1k) / 1000

    def _spent(self) -> tuple[int, float]:
        """Tokens and USD spent on this run's cache: recorded before this backend opened, plus since."""
        u = self.usage
        return u.recorded_tokens + u.prompt_tokens + u.completion_tokens, u.recorded_cost_usd + u.cost_usd

    def _fits(self, est_tokens: int, est_usd: float) -> bool:
        tokens, usd = self._spent()
        if self.cfg.budget_tokens is not None and tokens + self._reserved_tokens + est_tokens > self.cfg.budget_tokens:
            return False
        return self.cfg.budget_usd is None or usd + self._reserved_usd + est_usd <= self.cfg.budget_usd

    def _complete(
        self, todo: list[tuple[str, Messages]], max_new_tokens: int, temperature: float, on_done: OnDone
    ) -> None:
        if self.cfg.budget_usd is not None and not (self.cfg.price_prompt_per_1k or self.cfg.price_completion_per_1k):
            logger.warning("budget_usd is set but both prices are 0: the money budget can never be reached")
        skipped_before = self.usage.skipped_budget
        scrub = _ScrubFilter(self._redact)
        client_loggers = [logging.getLogger(name) for name in CLIENT_LOGGERS]
        for client_logger in client_loggers:
            client_logger.addFilter(scrub)
        try:
            _run_coroutine(self._complete_all(todo, max_new_tokens, temperature, on_done))
        finally:
            for client_logger in client_loggers:
                client_logger.removeFilter(scrub)
        if (skipped := self.usage.skipped_budget - skipped_before) > 0:
            tokens, usd = self._spent()
            logger.warning(
                "LLM budget reached (budget_tokens=%s, budget_usd=%s; spent %d tokens, $%.4f, counting %d tokens "
                "recorded in %s by earlier runs): %d of %d calls left undone. Finished calls are cached; raise the "
                "budget and rerun to do the rest.",
                self.cfg.budget_tokens,
                self.cfg.budget_usd,
                tokens,
                usd,
                self.usage.recorded_tokens,
                self.cache.path,
                skipped,
                len(todo),
            )

    async def _complete_all(
        self, todo: list[tuple[str, Messages]], max_new_tokens: int, temperature: float, on_done: OnDone
    ) -> None:
        from openai import AsyncOpenAI

        client = AsyncOpenAI(
            api_key=self._api_key(), base_url=self.cfg.base_url, max_retries=0, timeout=self.cfg.timeout_s
        )
        semaphore = asyncio.Semaphore(self.cfg.concurrency)
        limiter = _RateLimiter(self.cfg.requests_per_minute)
        try:
            async with client, asyncio.TaskGroup() as group:
                for key, messages in todo:
                    group.create_task(
                        self._complete_one(
                            client, semaphore, limiter, key, messages, max_new_tokens, temperature, on_done
                        )
                    )
        except* LLMBackendError as errors:
            raise errors.exceptions[0] from None

    async def _complete_one(
        self,
        client: Any,
        semaphore: asyncio.Semaphore,
        limiter: _RateLimiter,
        key: str,
        messages: Messages,
        max_new_tokens: int,
        temperature: float,
        on_done: OnDone,
    ) -> None:
        async with semaphore:
            est_prompt = estimate_prompt_tokens(messages)
            est_tokens, est_usd = est_prompt + max_new_tokens, self._cost(est_prompt, max_new_tokens)
            if self.usage.budget_exhausted or not self._fits(est_tokens, est_usd):
                self.usage.budget_exhausted = True  # stop cleanly: no new call starts after the first refusal
                self.usage.skipped_budget += 1
                return
            self._reserved_tokens += est_tokens
            self._reserved_usd += est_usd
            try:
                await self._call_with_retries(client, limiter, key, messages, max_new_tokens, temperature, on_done)
            finally:
                self._reserved_tokens -= est_tokens
                self._reserved_usd -= est_usd

    def _fail(self, reason: str) -> None:
        """Count one item as failed permanently, remembering why."""
        self.last_error = reason
        self.usage.failed += 1
        logger.warning("LLM call to %s failed permanently (%s)", self.endpoint, reason)

    async def _call_with_retries(
        self,
        client: Any,
        limiter: _RateLimiter,
        key: str,
        messages: Messages,
        max_new_tokens: int,
        temperature: float,
        on_done: OnDone,
    ) -> None:
        import openai

        for attempt in range(self.cfg.max_retries + 1):
            await limiter.wait()
            self.usage.requests += 1
            self.usage.retries += attempt > 0
            retry_after = None
            try:
                response = await client.chat.completions.create(
                    model=self.cfg.model, messages=messages, max_tokens=max_new_tokens, temperature=temperature
                )
                if not response.choices or response.choices[0].message.content is None:
                    raise _Malformed("response has no message content")
            except openai.APIStatusError as e:
                reason = f"HTTP {e.status_code}: {self._redact(str(e))[:300]}"
                if e.status_code in FATAL_STATUS:
                    raise LLMBackendError(
                        f"{self.endpoint} refused the request ({reason}); check base_url, "
                        f"model {self.cfg.model!r} and the key in ${self.cfg.api_key_env}"
                    ) from None
                if e.status_code not in RETRYABLE_STATUS and e.status_code < 500:
                    self._fail(reason)
                    return
                retry_after = _retry_after_s(e.response.headers)
                if retry_after is not None and retry_after > self.cfg.max_retry_after_s:
                    self._fail(f"{reason}; Retry-After {retry_after:.0f} s exceeds max_retry_after_s")
                    return
            except (openai.APIConnectionError, openai.APIResponseValidationError, _Malformed, ValueError) as e:
                reason = f"{type(e).__name__}: {self._redact(str(e))[:300]}"
            else:
                text = response.choices[0].message.content
                usage = response.usage
                prompt_tokens = usage.prompt_tokens if usage else estimate_prompt_tokens(messages)
                completion_tokens = usage.completion_tokens if usage else math.ceil(len(text) / 4)
                self.usage.prompt_tokens += prompt_tokens
                self.usage.completion_tokens += completion_tokens
                self.usage.cost_usd += self._cost(prompt_tokens, completion_tokens)
                on_done(key, text, prompt_tokens, completion_tokens)
                return
            if attempt == self.cfg.max_retries:
                self._fail(f"{reason} (after {attempt + 1} attempts)")
                return
            backoff = min(MAX_BACKOFF_S, self.cfg.backoff_base_s * 2**attempt) * random.uniform(1.0, 1.1)
            delay = retry_after if retry_after is not None else backoff
            logger.info("LLM call: %s; retry %d/%d in %.2fs", reason, attempt + 1, self.cfg.max_retries, delay)
            await asyncio.sleep(delay)
