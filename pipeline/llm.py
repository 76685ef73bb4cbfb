"""LLM backends: one interface, three providers, and the cache, budget and retries they share.

Providers (``LLMConfig.provider``):

- ``openai`` — any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, TGI) through ``AsyncOpenAI``:
  requests run concurrently (``concurrency``), 429/5xx/timeouts/connection errors are retried with
  exponential backoff that honours ``Retry-After``, a requests-per-minute limit is kept, tokens are
  counted, and a token or money budget stops the run cleanly. The key is read from the environment
  variable *named* by ``api_key_env`` and never written or logged.
- ``local`` — a transformers causal LM (bundled SmolLM2 by default), left-padded batched generation
  (:mod:`pipeline.generator`).
- ``extractive`` — no LLM: the caller's deterministic ``extractor(messages)`` (offline runs, tests).

Every finished call is appended at once to ``<cache_dir>/llm.jsonl`` (append + flush + fsync), keyed
by the sha256 of provider, model, generation parameters and messages. A rerun after a crash, even
``kill -9``, repeats no finished call; a torn last line is dropped on load. A reply the caller rejects
(``accept``) is recorded as not final: it counts towards the budget but is asked again on a rerun.
The token/USD budget counts every call the cache has recorded, so reruns cannot exceed it.

When more than ``max_failed_fraction`` of a batch's calls fail (an unreachable endpoint: all of them),
``generate`` raises :class:`LLMEndpointError` naming the endpoint and the last error; the stage fails and
a rerun retries only the failed calls.

Example:
    >>> backend = make_backend(cfg.synth.llm, run.path("data/cache"))
    >>> backend.generate([[{"role": "user", "content": "Say hi"}]], max_new_tokens=8)
    ['Hi!']
    >>> backend.usage.as_dict()["calls"]
    1
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import hashlib
import json
import logging
import math
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.config import LLMConfig, redact_url, url_credentials
from pipeline.rundir import is_main_process

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Extractor = Callable[[Messages], str]
CACHE_FILE = "llm.jsonl"
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504})
FATAL_STATUS = frozenset({401, 403, 404})  # every item would fail the same way: a config error
MAX_BACKOFF_S = 60.0
# loggers of the HTTP client libraries, which log request URLs
CLIENT_LOGGERS = ("openai", "openai._base_client", "httpx", "httpcore.http11", "httpcore.connection")


class LLMBackendError(RuntimeError):
    """The backend cannot run at all (missing key, wrong endpoint or model, no extractor)."""


class LLMEndpointError(LLMBackendError):
    """Too many calls of one batch failed (more than ``max_failed_fraction``): the stage must not pass as done."""


class DryRunFinished(Exception):
    """A dry run printed its estimate; the stage stops here and records nothing."""


@dataclass
class LLMUsage:
    """What a backend spent, cumulative over its ``generate`` calls (cached items cost nothing)."""

    calls: int = 0  # items computed by the model / endpoint in this process
    cached: int = 0  # items answered from the cache
    failed: int = 0  # items that failed permanently (None)
    rejected: int = 0  # replies the caller's ``accept`` refused (None; recorded as not final)
    skipped_budget: int = 0  # items left undone because the budget was reached (None)
    requests: int = 0  # openai: HTTP attempts, retries included
    retries: int = 0  # openai: attempts that were retries
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0
    recorded_tokens: int = 0  # openai: tokens the cache had recorded when the backend opened (count for the budget)
    recorded_cost_usd: float = 0.0
    budget_exhausted: bool = False

    def as_dict(self) -> dict[str, Any]:
        """Plain dict for reports and the manifest."""
        d = asdict(self)
        d["cost_usd"] = round(self.cost_usd, 6)
        d["recorded_cost_usd"] = round(self.recorded_cost_usd, 6)
        return d


def too_many_failed(failed: int, calls: int, max_fraction: float) -> bool:
    """True when ``failed`` of ``calls`` is more than ``max_fraction`` of them (0 calls never fail).

    Example:
        >>> too_many_failed(1, 10, 0.1), too_many_failed(2, 10, 0.1), too_many_failed(3, 3, 1.0)
        (False, True, False)
    """
    return calls > 0 and failed > max_fraction * calls


def estimate_prompt_tokens(messages: Messages) -> int:
    """Rough prompt size used for budgets and dry runs: characters / 4, rounded up."""
    return math.ceil(sum(len(m.get("content") or "") for m in messages) / 4)


def request_key(provider: str, model: str, params: dict[str, Any], messages: Messages) -> str:
    """Content hash identifying one call: sha256 of provider, model, parameters and messages.

    Args:
        provider: ``openai`` / ``local`` / ``extractive``.
        model: the configured model reference or served name.
        params: generation parameters that change the output (max_new_tokens, temperature, sample).
        messages: chat messages.

    Returns:
        64 hex digits.

    Example:
        >>> request_key("openai", "m", {"temperature": 0}, [{"role": "user", "content": "hi"}])[:8]
        '...'
    """
    payload = {"provider": provider, "model": model, "params": params, "messages": messages}
    return hashlib.sha256(json.dumps(payload, sort_keys=True, ensure_ascii=False).encode()).hexdigest()


class ResponseCache:
    """Append-only JSONL cache of finished calls.

    Rows are ``{"key", "text", "prompt_tokens", "completion_tokens", "provider", "final"}``; a row with
    ``final: false`` (a reply the caller rejected) is not an answer, only spend. On open, a torn last line
    (a process killed mid-write) is cut off, so later appends stay valid. Only the main process writes.

    Args:
        path: the cache file (created on first append).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.entries: dict[str, str] = {}
        self._spend: dict[str | None, list[int]] = {}  # provider (None: rows before it was recorded) -> tokens
        if path.exists():
            self._load()

    def _load(self) -> None:
        raw = self.path.read_bytes()
        end = raw.rfind(b"\n") + 1
        if end < len(raw):
            logger.warning(
                "LLM cache %s: dropping a torn last line (%d bytes) left by an interrupted run",
                self.path,
                len(raw) - end,
            )
            if is_main_process():
                with self.path.open("r+b") as fh:
                    fh.truncate(end)
        for line in raw[:end].decode("utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                if row.get("final", True):
                    self.entries[row["key"]] = row["text"]
                self._add_spend(row.get("provider"), row.get("prompt_tokens") or 0, row.get("completion_tokens") or 0)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                logger.warning("LLM cache %s: skipping an unreadable line", self.path)

    def _add_spend(self, provider: str | None, prompt_tokens: int, completion_tokens: int) -> None:
        spent = self._spend.setdefault(provider, [0, 0])
        spent[0] += int(prompt_tokens)
        spent[1] += int(completion_tokens)

    def recorded_spend(self, provider: str) -> tuple[int, int]:
        """(prompt, completion) tokens of every recorded call of ``provider`` (rows without one count too)."""
        rows = [self._spend.get(provider, [0, 0]), self._spend.get(None, [0, 0])]
        return sum(r[0] for r in rows), sum(r[1] for r in rows)

    def append(
        self, key: str, text: str, prompt_tokens: int, completion_tokens: int, *, provider: str, final: bool = True
    ) -> None:
        """Record one finished call durably (append, flush, fsync) before anything else happens.

        A row with ``final=False`` records the spend of a rejected reply without making it an answer.
        """
        if final:
            self.entries[key] = text
        self._add_spend(provider, prompt_tokens, completion_tokens)
        if not is_main_process():
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        row = {
            "key": key,
            "text": text,
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "provider": provider,
            "final": final,
        }
        line = json.dumps(row, ensure_ascii=False) + "\n"
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)
            fh.flush()
            os.fsync(fh.fileno())


OnDone = Callable[[str, str, int, int], None]  # key, text, prompt_tokens, completion_tokens


class LLMBackend(ABC):
    """Shared front of every provider: cache lookup, dry run, progress bar, ordering, usage.

    Subclasses implement :meth:`_complete` for the keys not in the cache.

    Args:
        cfg: the backend's config section.
        cache_dir: folder of the per-item cache (``data/cache`` in the run directory).
    """

    persistent_cache = True  # False: results are recomputed each time (cheap and deterministic)

    def __init__(self, cfg: LLMConfig, cache_dir: Path) -> None:
        self.cfg = cfg
        self.cache = ResponseCache(Path(cache_dir) / CACHE_FILE)
        self.usage = LLMUsage()
        self.last_error: str | None = None  # the latest permanent failure, for the stage's error message

    def __repr__(self) -> str:
        return f"{type(self).__name__}(provider={self.cfg.provider!r}, model={self.cfg.model!r})"

    @property
    def endpoint(self) -> str:
        """Where calls go, credentials redacted (for error messages)."""
        return f"{self.cfg.provider} model {self.cfg.model}"

    def generate(
        self,
        requests: Sequence[Messages],
        *,
        max_new_tokens: int | None = None,
        temperature: float | None = None,
        desc: str = "generate",
        accept: Callable[[str], bool] | None = None,
    ) -> list[str | None]:
        """Complete each chat request; cached ones return at once without a call.

        At temperature 0 identical requests are computed once. At temperature > 0 the k-th copy of
        an identical request in one call is a distinct sample (its cache key carries k), so passing
        a request 4 times draws 4 candidates, and a rerun gets the same 4 back from the cache.

        Args:
            requests: chat messages per item (``[{"role": ..., "content": ...}, ...]``).
            max_new_tokens: completion cap (default ``cfg.max_new_tokens``).
            temperature: 0 is greedy (default ``cfg.temperature``).
            desc: progress bar label.
            accept: ``reply -> bool``; a refused reply (garbage) comes back None, is counted in
                ``usage.rejected`` and is cached as not final, so a rerun asks again.

        Returns:
            One completion per request, in order; None where the item failed permanently, was
            rejected or the budget was reached.

        Raises:
            LLMEndpointError: more than ``cfg.max_failed_fraction`` of the calls failed; the finished
                ones are cached, so a rerun retries only the failed ones.

        Example:
            >>> backend.generate([[{"role": "user", "content": "Name a colour."}]], temperature=0)
            ['Blue.']
        """
        max_new = self.cfg.max_new_tokens if max_new_tokens is None else max_new_tokens
        temp = self.cfg.temperature if temperature is None else temperature
        keys: list[str] = []
        seen: dict[str, int] = {}
        for messages in requests:
            base = request_key(
                self.cfg.provider, self.cfg.model, {"max_new_tokens": max_new, "temperature": temp}, list(messages)
            )
            sample = seen.get(base, 0)
            seen[base] = sample + 1
            keys.append(
                base
                if temp == 0 or sample == 0
                else request_key(
                    self.cfg.provider,
                    self.cfg.model,
                    {"max_new_tokens": max_new, "temperature": temp, "sample": sample},
                    list(messages),
                )
            )
        results: list[str | None] = [None] * len(requests)
        pending: dict[str, list[int]] = {}
        for i, key in enumerate(keys):
            if key in self.cache.entries:
                results[i] = self.cache.entries[key]
                self.usage.cached += 1
            else:
                pending.setdefault(key, []).append(i)
        todo = [(key, list(requests[idx[0]])) for key, idx in pending.items()]
        if self.cfg.dry_run:
            self._print_dry_run(todo, len(requests) - sum(len(v) for v in pending.values()), max_new, desc)
            return [None] * len(requests)
        if not todo:
            return results
        bar = tqdm(
            total=len(requests),
            initial=len(requests) - sum(len(v) for v in pending.values()),
            desc=desc,
            disable=not is_main_process(),
        )

        def on_done(key: str, text: str, prompt_tokens: int, completion_tokens: int) -> None:
            final = accept is None or accept(text)
            if self.persistent_cache:
                self.cache.append(key, text, prompt_tokens, completion_tokens, provider=self.cfg.provider, final=final)
            self.usage.calls += 1
            self.usage.rejected += not final
            for i in pending[key]:
                results[i] = text if final else None
            bar.update(len(pending[key]))

        failed_before = self.usage.failed
        try:
            self._complete(todo, max_new, temp, on_done)
        finally:
            bar.close()
        failed = self.usage.failed - failed_before
        if too_many_failed(failed, len(todo), self.cfg.max_failed_fraction):
            raise LLMEndpointError(
                f"{self.endpoint}: {failed} of {len(todo)} calls failed ({desc}), more than max_failed_fraction="
                f"{self.cfg.max_failed_fraction}; last error: {self.last_error}. The finished calls are cached: "
                f"fix the endpoint and rerun to retry only the failed ones"
            )
        return results

    @abstractmethod
    def _complete(
        self, todo: list[tuple[str, Messages]], max_new_tokens: int, temperature: float, on_done: OnDone
    ) -> None:
        """Compute every ``(key, messages)`` item, calling ``on_done`` as each one finishes."""

    def _print_dry_run(self, todo: list[tuple[str, Messages]], cached: int, max_new_tokens: int, desc: str) -> None:
        prompt = sum(estimate_prompt_tokens(m) for _, m in todo)
        completion = max_new_tokens * len(todo)
        cost = prompt / 1000 * self.cfg.price_prompt_per_1k + completion / 1000 * self.cfg.price_completion_per_1k
        msg = (
            f"dry run ({desc}, provider {self.cfg.provider}, model {self.cfg.model}): {len(todo)} calls "
            f"({cached} cached), estimated {prompt + completion:,} tokens ({prompt:,} prompt + "
            f"{completion:,} completion at most), estimated cost ${cost:.4f}; nothing was called"
        )
        print(msg)
        logger.info(msg)


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


class LocalBackend(LLMBackend):
    """A transformers causal LM, loaded once; prompts sorted by length and generated in left-padded batches."""

    def __init__(self, cfg: LLMConfig, cache_dir: Path) -> None:
        super().__init__(cfg, cache_dir)
        self._model: Any = None
        self._tokenizer: Any = None

    def _load(self) -> None:
        if self._model is not None:
            return
        from pipeline.generator import load_generator
        from pipeline.models import resolve_model

        path = resolve_model(self.cfg.model)
        self._model, self._tokenizer = load_generator(path)
        logger.info("local LLM %s loaded from %s on %s", self.cfg.model, path, self._model.device)

    def _complete(
        self, todo: list[tuple[str, Messages]], max_new_tokens: int, temperature: float, on_done: OnDone
    ) -> None:
        from pipeline.generator import generate_batched

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
        )


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
    """Spaces request starts ``60 / rpm`` seconds apart, so no minute sees more than ``rpm``."""

    def __init__(self, requests_per_minute: float | None) -> None:
        self.interval = 60.0 / requests_per_minute if requests_per_minute else 0.0
        self.next_start = 0.0
        self.lock = asyncio.Lock()

    async def wait(self) -> None:
        if not self.interval:
            return
        async with self.lock:
            now = asyncio.get_running_loop().time()
            start = max(now, self.next_start)
            self.next_start = start + self.interval
        await asyncio.sleep(start - now)


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


def make_backend(cfg: LLMConfig, cache_dir: Path, extractor: Extractor | None = None) -> LLMBackend:
    """Build the backend ``cfg.provider`` names.

    Args:
        cfg: an ``LLMConfig`` (``synth.llm``, ``raft.teacher``, ``eval.judge``).
        cache_dir: folder of the per-item cache, normally ``run.path("data/cache")``.
        extractor: for ``extractive`` only: ``messages -> completion``, deterministic.

    Returns:
        An :class:`LLMBackend`; nothing is loaded or called until ``generate``.

    Example:
        >>> backend = make_backend(LLMConfig(provider="extractive"), tmp, extractor=lambda m: m[-1]["content"][:20])
        >>> backend.generate([[{"role": "user", "content": "an echo"}]])
        ['an echo']
    """
    if cfg.provider == "openai":
        return OpenAIBackend(cfg, cache_dir)
    if cfg.provider == "local":
        return LocalBackend(cfg, cache_dir)
    return ExtractiveBackend(cfg, cache_dir, extractor)
