"""The generator at inference: load a causal LM (with an optional LoRA adapter), prompt it, generate in batches.

One copy for every reader of a generator: the eval harness, assembly (:mod:`ragtune.app.assemble`), the
``local`` LLM backend (:mod:`ragtune.pipeline.llm.local`) and ``scripts/raft_compare.py``. Prompts are the
tokenizer's chat template with the assistant turn opened (:func:`chat_prompt`), the format RAFT trains
on; generation is left-padded, sorted by prompt length so batches carry little padding, greedy unless a
temperature is given (:func:`generate_batched`); the tokens every prompt of a call starts with (the system
prompt, few-shot turns) are run through the model once and their key/value cache reused by every batch
(:func:`shared_prefix_length`); a caller whose parse reads only the start of a completion can pass a
``stop`` rule that finishes each row as soon as it holds (:class:`TextStop`); :class:`GenerationMemo`
generates identical prompts once. :class:`GenerationStream` is one prompt's completion as the model writes
it, under a request's :class:`Sampling` (token cap, temperature, top_p, stop strings), for the server.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from ragtune.pipeline.rundir import is_main_process

Messages = list[dict[str, str]]
# index of the request, completion text, prompt tokens, completion tokens
OnCompletion = Callable[[int, str, int, int], None]
StopRule = Callable[[str], bool]  # completion text so far -> finished


def load_generator(generator: str, adapter: str | None = None, dtype: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM (and its LoRA adapter) and a left-padding tokenizer.

    The tokenizer comes from the adapter folder when RAFT saved one there, so its chat template is the
    one the generator was trained with. By default the weights are fp32 on CPU and bf16 on a GPU; callers
    pass :func:`ragtune.pipeline.precision.inference_dtype` of their config. An adapter is merged into fp32 weights
    (for speed) and kept unmerged on bf16 ones: a LoRA delta is often smaller than a bf16 step of the weight
    it would be added to, and rounding it away would serve the base model.

    Args:
        generator: base (or merged) model folder.
        adapter: a peft adapter folder, or None.
        dtype: ``"float32"`` or ``"bfloat16"`` to choose the weights' precision; None for the default above.

    Returns:
        (model in eval mode on the GPU when there is one, tokenizer with ``padding_side="left"`` and a pad token).
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer_dir = adapter if adapter and (Path(adapter) / "tokenizer_config.json").exists() else generator
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    tokenizer.padding_side = "left"  # decoder-only: new tokens must follow the prompt directly
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype is None:
        dtype = "float32" if device == "cpu" else "bfloat16"
    model = AutoModelForCausalLM.from_pretrained(generator, dtype=getattr(torch, dtype))
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter)
        if dtype == "float32":
            model = model.merge_and_unload()
    return model.to(device).eval(), tokenizer


def chat_prompt(tokenizer: Any, messages: Messages) -> str:
    """The prompt string the generator sees: the tokenizer's chat template with the assistant turn opened.

    Messages that end with an assistant message are a prefilled answer: its turn is left open after its text, and
    the completion continues it.
    """
    if messages and messages[-1]["role"] == "assistant":
        return tokenizer.apply_chat_template(messages, continue_final_message=True, tokenize=False)
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


MIN_SHARED_PREFIX = 8  # tokens; a shorter common start is not worth its own forward pass


def shared_prefix_length(token_ids: Sequence[Sequence[int]]) -> int:
    """How many leading tokens every prompt shares, leaving each at least one token of its own.

    Example:
        >>> shared_prefix_length([[1, 2, 3, 4], [1, 2, 5], [1, 2, 3]])
        2
        >>> shared_prefix_length([[1, 2, 3]])  # a lone prompt keeps its last token to feed the model
        2
    """
    if not token_ids:
        return 0
    first, limit = token_ids[0], min(len(ids) for ids in token_ids) - 1
    n = 0
    while n < limit and all(ids[n] == first[n] for ids in token_ids):
        n += 1
    return n


def prefix_padded_batch(token_ids: Sequence[Sequence[int]], prefix: int, pad_id: int) -> tuple[list, list]:
    """(input ids, attention mask) of a batch whose rows share their first ``prefix`` tokens.

    The shared prefix stays in front, where its cached keys and values sit, and each row's own tokens are
    left-padded after it: the padding is masked out, so the model's positions (from the mask) run on from
    the prefix without a gap, and every row's new tokens start at the same column. With ``prefix`` 0 it is
    ordinary left padding.

    Example:
        >>> prefix_padded_batch([[7, 7, 1], [7, 7, 2, 3]], prefix=2, pad_id=0)
        ([[7, 7, 0, 1], [7, 7, 2, 3]], [[1, 1, 0, 1], [1, 1, 1, 1]])
    """
    width = max(len(ids) for ids in token_ids) - prefix
    rows, masks = [], []
    for ids in token_ids:
        own = list(ids[prefix:])
        pad = width - len(own)
        rows.append(list(ids[:prefix]) + [pad_id] * pad + own)
        masks.append([1] * prefix + [0] * pad + [1] * len(own))
    return rows, masks


class TextStop:
    """A transformers stopping criterion: a row is finished once ``rule`` holds for its completion so far.

    Pass it in ``generate(stopping_criteria=[...])``. Each step decodes the new tokens of the rows not yet
    finished (special tokens skipped, as the final decode does) and asks ``rule``; transformers pads a finished
    row from then on and ends the ``generate`` call once every row has finished, so a batch costs as many
    steps as its longest still-needed completion instead of ``max_new_tokens``. A row's tokens up to its stop
    are the ones it would have had without the criterion (rows do not interact), so with a rule that fires
    only once the caller's parse is settled, the parsed result is unchanged.

    Args:
        tokenizer: the generator's tokenizer.
        prompt_length: padded prompt length of the batch (new tokens start there).
        rule: completion text so far -> finished.
    """

    def __init__(self, tokenizer: Any, prompt_length: int, rule: StopRule) -> None:
        self.tokenizer, self.prompt_length, self.rule = tokenizer, prompt_length, rule
        self.finished: Any = None  # bool tensor, one per row

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        if self.finished is None:
            self.finished = torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)
        for row in (~self.finished).nonzero().flatten().tolist():
            text = self.tokenizer.decode(input_ids[row, self.prompt_length :], skip_special_tokens=True)
            self.finished[row] = self.rule(text)
        return self.finished.clone()


def generate_batched(
    model: Any,
    tokenizer: Any,
    requests: Sequence[Messages],
    max_new_tokens: int,
    batch_size: int = 8,
    desc: str | None = "generate",
    *,
    temperature: float = 0.0,
    seeds: Sequence[int] | None = None,
    on_completion: OnCompletion | None = None,
    stop: StopRule | None = None,
) -> list[str]:
    """Completions for chat requests, in left-padded batches of similar length.

    The tokens all prompts start with (at least :data:`MIN_SHARED_PREFIX`: a system prompt, few-shot turns)
    go through the model once per call; each batch starts from a copy of their key/value cache, so only
    its rows' own tokens are computed (:func:`prefix_padded_batch`). Greedy completions are those of
    plain left padding (the same computation in another order, up to float rounding).

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer, ``padding_side="left"``.
        requests: chat messages per item.
        max_new_tokens: completion cap.
        batch_size: prompts per ``generate`` call.
        desc: progress bar label; None shows no bar (the caller has its own).
        temperature: 0 is greedy decoding; above 0 samples (top_p 1, no top_k).
        seeds: per request; when sampling, each batch is seeded with its first request's seed, so a
            rerun draws the same samples.
        on_completion: called as each item finishes with (index, text, prompt tokens, completion tokens),
            e.g. to cache it at once.
        stop: completion text so far -> finished; a row ends at the first token after which it holds
            (:class:`TextStop`), and a batch ends once all its rows have. None: end of sequence or
            ``max_new_tokens`` only.

    Returns:
        One stripped completion per request, in order.
    """
    import copy

    import torch
    from transformers import DynamicCache, StoppingCriteriaList

    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
    else:
        sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    prompts = [chat_prompt(tokenizer, m) for m in requests]
    # The chat template already holds every special token the model was trained with.
    token_ids = tokenizer(prompts, add_special_tokens=False)["input_ids"] if prompts else []
    order = sorted(range(len(prompts)), key=lambda i: len(token_ids[i]))  # similar lengths: less padding
    prefix = shared_prefix_length(token_ids) if len(prompts) > 1 else 0
    prefix_cache = None
    if prefix >= MIN_SHARED_PREFIX:  # run the shared start once; every batch copies its keys and values
        prefix_cache = DynamicCache()
        with torch.inference_mode():
            model(input_ids=torch.tensor([token_ids[0][:prefix]], device=model.device), past_key_values=prefix_cache)
    else:
        prefix = 0
    outputs = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None or not is_main_process() or not prompts):
        batch = order[start : start + batch_size]
        rows, masks = prefix_padded_batch([token_ids[i] for i in batch], prefix, tokenizer.pad_token_id)
        enc = {
            "input_ids": torch.tensor(rows, device=model.device),
            "attention_mask": torch.tensor(masks, device=model.device),
        }
        if prefix_cache is not None:
            enc["past_key_values"] = copy.deepcopy(prefix_cache)
            enc["past_key_values"].batch_repeat_interleave(len(batch))
        if temperature > 0 and seeds is not None:
            torch.manual_seed(seeds[batch[0]])
        if stop is not None:
            sampling["stopping_criteria"] = StoppingCriteriaList([TextStop(tokenizer, len(rows[0]), stop)])
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
        new_tokens = out[:, len(rows[0]) :]
        for i, row in zip(batch, new_tokens, strict=True):
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            if on_completion is not None:
                on_completion(i, outputs[i], len(token_ids[i]), int((row != tokenizer.pad_token_id).sum()))
    return outputs


class GenerationMemo:
    """Answers of one generator by prompt, so identical prompts across configurations are generated once.

    Two configurations with the same generator often build the same prompts (e.g. a reranker fused at
    weight 0 keeps the retriever's order). Each answer keeps the milliseconds its batch took per prompt,
    so a configuration served from the memo still reports what its prompts cost to generate.
    """

    def __init__(self, model: Any, tokenizer: Any, batch_size: int) -> None:
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.answers: dict[str, tuple[str, float]] = {}

    def generate(
        self, requests: list[Messages], max_new_tokens: int, desc: str, stop: StopRule | None = None
    ) -> tuple[list[str], float]:
        """Answers for ``requests`` (generating only the new ones, batched) and their mean ms per prompt.

        ``stop`` (see :func:`generate_batched`) must only end a completion once what the caller reads of it is
        settled: a prompt answered earlier under another rule is served from the memo.
        """
        keys = [json.dumps([max_new_tokens, r], sort_keys=True) for r in requests]
        new = {k: r for k, r in zip(keys, requests, strict=True) if k not in self.answers}
        if new:
            started = time.perf_counter()
            outputs = generate_batched(
                self.model, self.tokenizer, list(new.values()), max_new_tokens, self.batch_size, desc, stop=stop
            )
            ms = 1000 * (time.perf_counter() - started) / len(new)
            self.answers |= {k: (out, ms) for k, out in zip(new, outputs, strict=True)}
        answers = [self.answers[k] for k in keys]
        return [a for a, _ in answers], sum(ms for _, ms in answers) / max(len(answers), 1)


@dataclass(frozen=True)
class Sampling:
    """One request's generation settings, by OpenAI's names.

    Attributes:
        max_new_tokens: cap on the completion's tokens.
        temperature: 0 decodes greedily; above 0 samples.
        top_p: nucleus sampling's mass (with ``temperature`` above 0).
        stop: the completion ends before the first of these strings (which is not shown).
    """

    max_new_tokens: int
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()

    def generate_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``model.generate`` for these settings (stop strings apart)."""
        if self.temperature > 0:
            return {"do_sample": True, "temperature": self.temperature, "top_p": self.top_p, "top_k": 0}
        return {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}


def stop_point(text: str, stops: Sequence[str]) -> tuple[int, bool]:
    """How much of a completion still being written may be shown, and whether a stop string has ended it.

    Text before the first stop string is final. Without one, a tail that may yet grow into a stop string is
    held back, so a stop string split across tokens never reaches the client.

    Example:
        >>> stop_point("Hello ##", ["###"])  # "##" may become "###": held back
        (6, False)
        >>> stop_point("Hi### there", ["###", "\\n"])
        (2, True)
    """
    found = [i for s in stops if (i := text.find(s)) >= 0]
    if found:
        return min(found), True
    held = 0
    for s in stops:
        held = max(held, next((k for k in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:k])), 0))
    return len(text) - held, False


class _Cancelled:
    """A stopping criterion that ends every row once ``event`` is set (the reader has gone)."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, input_ids: Any, scores: Any, **kwargs: Any) -> Any:
        import torch

        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool, device=input_ids.device)


class GenerationStream:
    """One prompt's completion as the model writes it: iterate for the new text pieces.

    ``model.generate`` runs in a thread and hands its tokens over through transformers'
    ``TextIteratorStreamer``; the pieces stop before a stop string (:func:`stop_point`, and a stopping
    criterion ends the generation there), at the end-of-sequence token, or at ``max_new_tokens``. After
    iterating, ``text`` is the whole completion and ``finish_reason`` is ``"stop"`` or ``"length"`` (OpenAI's
    names). :meth:`cancel` (or leaving the loop early and calling it) ends the generation at the next token.

    Args:
        model: a causal LM in eval mode.
        tokenizer: its tokenizer.
        prompt: the formatted prompt (the chat template applied).
        sampling: the request's settings.
        cancelled: an event the caller sets to end the generation (the same as :meth:`cancel`); None: a new one.
    """

    def __init__(
        self, model: Any, tokenizer: Any, prompt: str, sampling: Sampling, cancelled: threading.Event | None = None
    ) -> None:
        import torch
        from transformers import StoppingCriteriaList, TextIteratorStreamer

        self.text, self.finish_reason, self.new_tokens = "", "stop", 0
        self._sampling, self._cancelled, self._error = sampling, cancelled or threading.Event(), None
        self._streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        enc = tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(model.device)
        self._prompt_tokens = enc["input_ids"].shape[1]
        criteria = StoppingCriteriaList([_Cancelled(self._cancelled)])
        if sampling.stop:
            criteria.append(TextStop(tokenizer, self._prompt_tokens, lambda t: stop_point(t, sampling.stop)[1]))
        kwargs = {
            **enc,
            "streamer": self._streamer,
            "max_new_tokens": sampling.max_new_tokens,
            "stopping_criteria": criteria,
            "pad_token_id": tokenizer.pad_token_id,
            **sampling.generate_kwargs(),
        }

        def run() -> None:
            try:
                with torch.inference_mode():
                    self.new_tokens = int(model.generate(**kwargs).shape[1]) - self._prompt_tokens
            except Exception as e:  # re-raised in the reader's thread
                self._error = e
                self._streamer.end()

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()

    def __iter__(self) -> Iterator[str]:
        shown, stopped = 0, False
        try:
            for piece in self._streamer:
                self.text += piece
                end, stopped = stop_point(self.text, self._sampling.stop)
                if end > shown:
                    yield self.text[shown:end]
                    shown = end
                if stopped:
                    self.cancel()
                    break
        except GeneratorExit:  # the reader left early: nobody needs the rest
            self.cancel()
            raise
        self._thread.join()
        if self._error is not None:
            raise self._error
        if stopped:
            self.text = self.text[:shown]
        elif shown < len(self.text):  # a held-back tail that never became a stop string
            yield self.text[shown:]
        if not stopped and not self._cancelled.is_set() and self.new_tokens >= self._sampling.max_new_tokens:
            self.finish_reason = "length"

    def cancel(self) -> None:
        """End the generation at its next token (the reader has gone or has what it needs)."""
        self._cancelled.set()
