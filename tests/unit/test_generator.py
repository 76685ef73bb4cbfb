"""The core generator: left-padded batched generation equals one-at-a-time, the memo, sampling seeds."""

import functools
from pathlib import Path

import pytest
import torch

from ragtune.pipeline.generator import GenerationMemo, chat_prompt, generate_batched, load_generator
from ragtune.pipeline.raft_format import build_messages

REQUESTS = [
    build_messages("short?", ["Heron."]),
    build_messages("a much longer question about the ledgerfish shard lease?", ["Ledgerfish " * 20]),
    build_messages("mid question?", ["Tortoise drains the batch queue."]),
]


def _varied_generator(path: Path):
    """The tiny Llama with large random weights: it emits varied tokens, not one repeated newline."""
    model, tokenizer = load_generator(str(path))
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.5)
    return model, tokenizer


def counting(forward, record):
    """``forward`` that calls ``record`` first; keeps its signature (``generate`` reads which inputs it takes)."""

    @functools.wraps(forward)
    def wrapper(*args, **kwargs):
        record(*args, **kwargs)
        return forward(*args, **kwargs)

    return wrapper


def test_batched_left_padded_generation_equals_one_at_a_time(tiny_llama_dir: Path) -> None:
    model, tokenizer = _varied_generator(tiny_llama_dir)
    requests = REQUESTS
    batched = generate_batched(model, tokenizer, requests, max_new_tokens=6, batch_size=3)
    single = [generate_batched(model, tokenizer, [r], max_new_tokens=6, batch_size=1)[0] for r in requests]
    assert batched == single
    assert len(set(batched)) > 1 and all(batched)

    # The memo generates each distinct prompt once and answers repeats from memory, identically.
    calls = []
    memo = GenerationMemo(model, tokenizer, batch_size=3)
    original = memo.model.generate
    memo.model.generate = lambda **kw: calls.append(kw["input_ids"].shape[0]) or original(**kw)
    first, ms = memo.generate([requests[0], requests[1], requests[0]], max_new_tokens=6, desc="a")
    again, ms_again = memo.generate([requests[1], requests[0]], max_new_tokens=6, desc="b")
    assert calls == [2] and first == [batched[0], batched[1], batched[0]] and again == [batched[1], batched[0]]
    assert ms > 0 and ms_again == pytest.approx(ms)
    memo.generate([requests[2]], max_new_tokens=6, desc="c")
    memo.generate([requests[2]], max_new_tokens=5, desc="d")  # another length is another prompt
    assert calls == [2, 1, 1]


def test_a_prefilled_answer_is_continued_not_answered_anew(tiny_llama_dir: Path) -> None:
    model, tokenizer = _varied_generator(tiny_llama_dir)
    prefill = "##Reason: ##begin_quote##Heron.##end_quote##\n##Answer:"
    request = [*REQUESTS[0], {"role": "assistant", "content": prefill}]
    opened = chat_prompt(tokenizer, REQUESTS[0])
    assert chat_prompt(tokenizer, request) == opened + prefill  # the turn stays open after the prefill
    continued = generate_batched(model, tokenizer, [request, REQUESTS[1]], max_new_tokens=4, batch_size=2)
    alone = generate_batched(model, tokenizer, [request], max_new_tokens=4, batch_size=1)
    assert continued[0] == alone[0] and continued[0] != generate_batched(model, tokenizer, REQUESTS[:1], 4)[0]


def test_stop_rule_ends_each_row_early_and_keeps_its_tokens(tiny_llama_dir: Path) -> None:
    model, tokenizer = _varied_generator(tiny_llama_dir)
    requests = REQUESTS
    full_tokens, stopped_tokens = [], []
    full = generate_batched(model, tokenizer, requests, 12, 3, on_completion=lambda i, t, p, c: full_tokens.append(c))

    def rule(text: str) -> bool:
        return len(text.strip()) >= 2

    steps = []
    original = model.forward
    model.forward = counting(original, lambda *a, **kw: steps.append(1))
    stopped = generate_batched(
        model, tokenizer, requests, 12, 3, stop=rule, on_completion=lambda i, t, p, c: stopped_tokens.append(c)
    )
    model.forward = original
    assert all(len(t.strip()) >= 2 for t in full)  # the rule fires for every row within the cap
    # greedy: a stopped row is the start of its full completion, cut at the first token where the rule holds
    for s, f in zip(stopped, full, strict=True):
        assert f.startswith(s) and rule(s)
    assert sum(stopped_tokens) < sum(full_tokens)
    assert len(steps) < 12  # the batch ended once every row had stopped, not at max_new_tokens


def test_shared_prefix_is_computed_once_and_changes_no_completion(tiny_llama_dir: Path, monkeypatch) -> None:
    from ragtune.pipeline import generator

    model, tokenizer = _varied_generator(tiny_llama_dir)
    requests = [*REQUESTS, build_messages("another question?", ["Heron drains the queue " * 3])]
    lengths = []
    original = model.forward
    model.forward = counting(original, lambda *a, **kw: lengths.append(kw["input_ids"].shape[1]))
    shared = generate_batched(model, tokenizer, requests, 8, 2)
    sampled = generate_batched(model, tokenizer, requests, 8, 2, temperature=0.9, seeds=[1, 2, 3, 4])
    prompts = [generator.chat_prompt(tokenizer, r) for r in requests]
    prefix = generator.shared_prefix_length(tokenizer(prompts, add_special_tokens=False)["input_ids"])
    assert prefix >= generator.MIN_SHARED_PREFIX  # the RAFT system prompt and the turn's opening tokens
    assert lengths.count(prefix) == 2  # once per call, not once per batch
    lengths.clear()

    monkeypatch.setattr(generator, "MIN_SHARED_PREFIX", 10_000)  # plain left padding
    model.forward = original
    assert generate_batched(model, tokenizer, requests, 8, 2) == shared
    assert generate_batched(model, tokenizer, requests, 8, 2, temperature=0.9, seeds=[1, 2, 3, 4]) == sampled


def test_an_adapter_is_merged_into_fp32_weights_and_kept_apart_from_bf16_ones(tiny_llama_dir: Path, tmp_path) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    lm = get_peft_model(
        AutoModelForCausalLM.from_pretrained(tiny_llama_dir), LoraConfig(r=4, target_modules=["q_proj"])
    )
    with torch.no_grad():  # a small delta, as LoRA's are: below a bf16 step of the weights it is added to
        for name, p in lm.named_parameters():
            if "lora_B" in name:
                p.fill_(1e-4)
    lm.save_pretrained(tmp_path / "adapter")
    ids = torch.tensor([[5, 6, 7, 8]])

    merged, _ = load_generator(str(tiny_llama_dir), str(tmp_path / "adapter"), "float32")
    assert not isinstance(merged, PeftModel)
    kept, _ = load_generator(str(tiny_llama_dir), str(tmp_path / "adapter"), "bfloat16")
    base, _ = load_generator(str(tiny_llama_dir), None, "bfloat16")
    assert isinstance(kept, PeftModel)
    # The adapter still acts beside the bf16 weights: unmerged, its own delta is not rounded into them. (The
    # logits of a random tiny model can round a 1e-4 delta away at the output, so the layer is checked itself.)
    q_proj = kept.get_submodule("base_model.model.model.layers.0.self_attn.q_proj")
    x = torch.ones(1, q_proj.in_features, dtype=q_proj.lora_A["default"].weight.dtype)
    with torch.no_grad():
        lora_delta = q_proj.lora_B["default"](q_proj.lora_A["default"](x))
    assert not q_proj.merged and lora_delta.abs().max() > 0
    assert base(input_ids=ids).logits.shape == kept(input_ids=ids).logits.shape


def test_stop_point_shows_text_before_a_stop_and_holds_back_what_may_become_one() -> None:
    from ragtune.pipeline.generator import stop_point

    assert stop_point("no stops here", []) == (13, False)
    assert stop_point("abc END def", ["END"]) == (4, True)
    assert stop_point("abc EN", ["END"]) == (4, False)  # "EN" may become "END"
    assert stop_point("abc ENX", ["END"]) == (7, False)
    assert stop_point("x\nEND", ["\n", "END"]) == (1, True)  # the first stop wins


def test_generation_stream_equals_greedy_generation_and_honours_caps_stops_and_cancel(tiny_llama_dir: Path) -> None:
    from ragtune.pipeline.generator import GenerationStream, Sampling, chat_prompt

    model, tokenizer = _varied_generator(tiny_llama_dir)
    prompt = chat_prompt(tokenizer, REQUESTS[0])
    greedy = generate_batched(model, tokenizer, REQUESTS[:1], max_new_tokens=10, desc=None)[0]
    stream = GenerationStream(model, tokenizer, prompt, Sampling(10))
    pieces = list(stream)
    assert len(pieces) > 1 and "".join(pieces).strip() == greedy == stream.text.strip()
    assert stream.finish_reason == "length" and stream.new_tokens == 10
    # A stop string ends it before the stop, which is never shown, even when split across tokens.
    stop = stream.text[len(stream.text) // 2 : len(stream.text) // 2 + 2]
    stopped = GenerationStream(model, tokenizer, prompt, Sampling(10, stop=(stop,)))
    assert "".join(stopped) == stopped.text == stream.text[: stream.text.find(stop)]
    assert stopped.finish_reason == "stop" and stopped.new_tokens < 10
    # Cancelled after its first piece, the generation ends at the next token instead of running to its cap.
    long = GenerationStream(model, tokenizer, prompt, Sampling(200))
    next(iter(long))
    long.cancel()
    list(long)
    assert long.new_tokens < 20 and long.finish_reason == "stop"
    # Sampling draws (a fixed seed repeats its draw).
    torch.manual_seed(0)
    first = "".join(GenerationStream(model, tokenizer, prompt, Sampling(10, temperature=1.5, top_p=0.9)))
    torch.manual_seed(0)
    again = "".join(GenerationStream(model, tokenizer, prompt, Sampling(10, temperature=1.5, top_p=0.9)))
    assert first == again and first.strip() != greedy
