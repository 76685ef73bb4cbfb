"""The generator at inference: load a causal LM (with an optional LoRA adapter), prompt it, generate in batches.

One copy for every reader of a generator: the eval harness, assembly (:mod:`pipeline.assemble`), the
``local`` LLM backend (:mod:`pipeline.llm.local`) and ``scripts/raft_compare.py``. Prompts are the
tokenizer's chat template with the assistant turn opened (:func:`chat_prompt`), the format RAFT trains
on; generation is left-padded, sorted by prompt length so batches carry little padding, greedy unless a
temperature is given (:func:`generate_batched`), and a caller whose parse reads only the start of a
completion can pass a ``stop`` rule that finishes each row as soon as it holds (:class:`TextStop`);
:class:`GenerationMemo` generates identical prompts once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from pipeline.rundir import is_main_process

Messages = list[dict[str, str]]
# index of the request, completion text, prompt tokens, completion tokens
OnCompletion = Callable[[int, str, int, int], None]
StopRule = Callable[[str], bool]  # completion text so far -> finished


def load_generator(generator: str, adapter: str | None = None) -> tuple[Any, Any]:
    """Load a causal LM (and its LoRA adapter, merged in for speed) and a left-padding tokenizer.

    The tokenizer comes from the adapter folder when RAFT saved one there, so its chat template is the
    one the generator was trained with. On CPU the weights are fp32 (bf16 matmuls are slow on most
    CPUs), on a GPU bf16.

    Args:
        generator: base (or merged) model folder.
        adapter: a peft adapter folder, or None.

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
    dtype = torch.float32 if device == "cpu" else torch.bfloat16
    model = AutoModelForCausalLM.from_pretrained(generator, dtype=dtype)
    if adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    return model.to(device).eval(), tokenizer


def chat_prompt(tokenizer: Any, messages: Messages) -> str:
    """The prompt string the generator sees: the tokenizer's chat template with the assistant turn opened."""
    return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)


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
    import torch

    if temperature > 0:
        sampling = {"do_sample": True, "temperature": temperature, "top_p": 1.0, "top_k": 0}
    else:
        sampling = {"do_sample": False, "temperature": None, "top_p": None, "top_k": None}
    prompts = [chat_prompt(tokenizer, m) for m in requests]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))  # similar lengths: less padding
    outputs = [""] * len(prompts)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc=desc, disable=desc is None or not is_main_process() or not prompts):
        batch = order[start : start + batch_size]
        # The chat template already holds every special token the model was trained with.
        enc = tokenizer([prompts[i] for i in batch], return_tensors="pt", padding=True, add_special_tokens=False)
        enc = enc.to(model.device)
        if temperature > 0 and seeds is not None:
            torch.manual_seed(seeds[batch[0]])
        if stop is not None:
            from transformers import StoppingCriteriaList

            sampling["stopping_criteria"] = StoppingCriteriaList([TextStop(tokenizer, enc["input_ids"].shape[1], stop)])
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=max_new_tokens, pad_token_id=tokenizer.pad_token_id, **sampling)
        new_tokens = out[:, enc["input_ids"].shape[1] :]
        for i, row, mask in zip(batch, new_tokens, enc["attention_mask"], strict=True):
            outputs[i] = tokenizer.decode(row, skip_special_tokens=True).strip()
            if on_completion is not None:
                on_completion(i, outputs[i], int(mask.sum()), int((row != tokenizer.pad_token_id).sum()))
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

    def generate(self, requests: list[Messages], max_new_tokens: int, desc: str) -> tuple[list[str], float]:
        """Answers for ``requests`` (generating only the new ones, batched) and their mean ms per prompt."""
        keys = [json.dumps([max_new_tokens, r], sort_keys=True) for r in requests]
        new = {k: r for k, r in zip(keys, requests, strict=True) if k not in self.answers}
        if new:
            started = time.perf_counter()
            outputs = generate_batched(
                self.model, self.tokenizer, list(new.values()), max_new_tokens, self.batch_size, desc
            )
            ms = 1000 * (time.perf_counter() - started) / len(new)
            self.answers |= {k: (out, ms) for k, out in zip(new, outputs, strict=True)}
        answers = [self.answers[k] for k in keys]
        return [a for a, _ in answers], sum(ms for _, ms in answers) / max(len(answers), 1)
