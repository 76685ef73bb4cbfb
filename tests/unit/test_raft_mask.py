"""The RAFT training loss covers exactly the assistant completion, through trl's real data pipeline."""

from pathlib import Path

import pytest

from ragtune.pipeline.config import RaftConfig
from ragtune.pipeline.raft_format import build_messages, format_answer, quote_then_answer
from ragtune.stages.raft.build import quote_then_span
from ragtune.stages.raft.train import build_trainer

IGNORE = -100
REASONING = format_answer("The runbook says:", ["The grace period is 40 minutes."], "Forty: 40 minutes")
TARGETS = [REASONING, quote_then_answer(REASONING), quote_then_span(REASONING)]


@pytest.mark.parametrize("answer", TARGETS, ids=["reasoning", "quote_answer", "quote_span"])
def test_labels_cover_exactly_the_completion_tokens(answer: str, tiny_llama_dir: Path, tmp_path: Path) -> None:
    sample = {
        "prompt": build_messages("default grace period?", ["The grace period is 40 minutes by default.", "x"]),
        "completion": [{"role": "assistant", "content": answer}],
        "has_oracle": True,
    }
    # A long sample is dropped (never truncated), and the oracle counts describe what is kept.
    long_sample = {**sample, "prompt": build_messages("q?", ["grace period " * 400]), "has_oracle": False}
    trainer, info = build_trainer(
        RaftConfig(quantization="none", max_length=512),
        str(tiny_llama_dir),
        [sample, long_sample],
        tmp_path / "out",
        seed=0,
    )
    tokens = info.pop("sample_tokens")
    assert info == {
        "quantization": "none",
        "samples": 1,
        "dropped_too_long": 1,
        "with_oracle": 1,
        "without_oracle": 0,
    }
    tok = trainer.processing_class
    rendered = tok.apply_chat_template(sample["prompt"] + sample["completion"], tokenize=False)
    n = len(tok(rendered, add_special_tokens=False)["input_ids"])
    assert tokens == {"min": n, "median": n, "max": n, "total": n}  # what a step costs, of the kept sample only

    # What the chat template renders: the prompt with the generation prompt, then the completion.
    # The completion is the answer, the end-of-turn token <|im_end|> (the model must learn to stop)
    # and the template's newline after it; nothing of the prompt, not even "<|im_start|>assistant\n".
    prompt_text = tok.apply_chat_template(sample["prompt"], tokenize=False, add_generation_prompt=True)
    assert prompt_text.endswith("<|im_start|>assistant\n")
    prompt_ids = tok(prompt_text, add_special_tokens=False)["input_ids"]
    completion_ids = tok(answer + "<|im_end|>\n", add_special_tokens=False)["input_ids"]
    assert completion_ids[-2] == tok.convert_tokens_to_ids("<|im_end|>")

    row = trainer.train_dataset[0]
    assert row["input_ids"] == prompt_ids + completion_ids
    assert row["labels"] == [IGNORE] * len(prompt_ids) + completion_ids

    # The collator (what the model receives) keeps exactly that mask.
    batch = trainer.data_collator([row])
    labels = batch["labels"][0].tolist()
    supervised = [i for i, label in enumerate(labels) if label != IGNORE]
    assert supervised == list(range(len(prompt_ids), len(prompt_ids) + len(completion_ids)))
    assert tok.decode([labels[i] for i in supervised]) == answer + "<|im_end|>\n"
