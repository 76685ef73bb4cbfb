"""The forgetting check: scoring general answers, reading the question set, and the base-vs-tuned verdict."""

from pathlib import Path

import pytest

from ragtune.eval import forgetting
from ragtune.eval.forgetting import answered_correctly, forgetting_check, load_general_questions


def test_an_accepted_answer_counts_only_as_whole_words() -> None:
    assert answered_correctly("Paris is the capital.", ["Paris"]) == 1.0
    assert answered_correctly("The answer is four.", ["4", "four"]) == 1.0
    assert answered_correctly("About 1000 degrees", ["100"]) == 0.0  # not a substring match
    assert answered_correctly("Mount Everest, in Nepal", ["Everest"]) == 1.0
    assert answered_correctly("I do not know.", ["Paris"]) == 0.0


def test_the_bundled_set_loads_and_a_bad_line_names_its_file_and_line(tmp_path: Path) -> None:
    rows = load_general_questions()
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40
    assert all(r["question"].endswith("?") and r["answers"] for r in rows)
    bad = tmp_path / "general.jsonl"
    bad.write_text('{"id": "a", "question": "Q?", "answers": ["x"]}\n{"id": "b", "question": "Q?"}\n')
    with pytest.raises(ValueError, match=r"general\.jsonl:2: expected"):
        load_general_questions(bad)


def test_a_generator_that_forgot_is_reported_as_hurt(monkeypatch: pytest.MonkeyPatch) -> None:
    questions = [{"id": f"g{i}", "question": f"Capital {i}?", "answers": [f"city{i}"]} for i in range(30)]
    monkeypatch.setattr(forgetting, "load_generator", lambda generator, adapter, dtype=None: (adapter, None))

    def fake_generate(model, tokenizer, requests, max_new_tokens, batch_size, desc):
        assert all(r[0]["content"].endswith(forgetting.INSTRUCTION) for r in requests)  # no documents, no system
        # The base answers every question; the tuned one (adapter set) only the first five.
        return [f"It is city{i}." if model is None or i < 5 else "No idea." for i in range(len(requests))]

    monkeypatch.setattr(forgetting, "generate_batched", fake_generate)
    result = forgetting_check(
        ("base", None), ("base", "adapter"), questions, batch_size=8, max_new_tokens=8, samples=200, seed=0
    )
    assert (result["base"], result["tuned"]) == (1.0, pytest.approx(5 / 30))
    assert result["verdict"] == "hurt" and result["delta"]["high"] < 0
    assert result["per_question"][10] == {
        "id": "g10",
        "question": "Capital 10?",
        "base": "It is city10.",
        "tuned": "No idea.",
        "base_ok": 1.0,
        "tuned_ok": 0.0,
    }
