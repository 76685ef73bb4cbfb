"""What every LLM provider shares: the request key, the append-only response cache, usage, and the backend front.

:class:`LLMBackend` does the cache lookup, dry run, progress bar, ordering, failure threshold and usage
for every provider; a provider implements only ``_complete`` for the keys the cache does not hold.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ragtune.pipeline.config import LLMConfig
from ragtune.pipeline.rundir import is_main_process, reporting_full_disk

logger = logging.getLogger(__name__)

Messages = list[dict[str, str]]
Extractor = Callable[[Messages], str]
CACHE_FILE = "llm.jsonl"


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
        'ae4b86d9'
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
        with reporting_full_disk(self.path, len(line.encode())), self.path.open("a", encoding="utf-8") as fh:
            fh.write(line)  # a torn line left by a full disk is cut off on the next open
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
            >>> import tempfile
            >>> from ragtune.pipeline.llm import make_backend
            >>> backend = make_backend(LLMConfig(provider="extractive"), Path(tempfile.mkdtemp()), lambda m: "Blue.")
            >>> backend.generate([[{"role": "user", "content": "Name a colour."}]], temperature=0, desc="colour")
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
