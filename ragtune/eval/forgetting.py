"""Forgetting check: does the RAFT adapter cost the generator what it knew before tuning?

Fine-tuning a small generator on one domain's documents can wear away what it knew in general
(catastrophic forgetting; RAGLAB's users saw a tuned model score below the untuned one). The check
asks the base and the tuned generator the same bundled general-knowledge questions, written by the
team (ragtune/eval/general_knowledge.jsonl: capitals, planets, units, authors; one or more accepted answers
each), without any retrieved context and greedily, and compares the share each answers correctly:
an accepted answer, normalised as SQuAD does, found in the generation. The paired bootstrap interval
of the difference says whether the adapter cost (``hurt``) or changed nothing measurable.

In the eval stage the questions are asked of each generator while it is loaded to answer the held-out queries
(:class:`GeneralQuestions`), so neither generator is loaded a second time for the check.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ragtune.eval.metrics import paired_bootstrap, verdict
from ragtune.pipeline.answer_metrics import normalize_answer
from ragtune.pipeline.generator import generate_batched, load_generator
from ragtune.pipeline.stack import GeneratorKey

GENERAL_KNOWLEDGE = Path(__file__).with_name("general_knowledge.jsonl")
INSTRUCTION = "Answer in a few words."


def load_general_questions(path: str | Path = GENERAL_KNOWLEDGE) -> list[dict[str, Any]]:
    """The question set: rows ``{"id", "question", "answers": [accepted answers]}``.

    Raises:
        ValueError: a line that is not such a row, naming the file and line.

    Example:
        >>> rows = load_general_questions()
        >>> len(rows) >= 40, rows[0]["question"], rows[0]["answers"]
        (True, 'What is the capital of France?', ['Paris'])
    """
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row.get("question"), str) and row.get("answers") and isinstance(row["answers"], list)
        except (json.JSONDecodeError, AttributeError):
            ok = False
        if not ok:
            raise ValueError(f"{path}:{n}: expected {{'id', 'question', 'answers': [...]}}, got {line[:80]!r}")
        rows.append(row)
    return rows


def answered_correctly(generation: str, answers: Sequence[str]) -> float:
    """1.0 when any accepted answer (SQuAD-normalised) occurs as whole words in the generation, else 0.0.

    Example:
        >>> answered_correctly("The capital of France is Paris.", ["Paris"])
        1.0
        >>> answered_correctly("It is 1000 degrees.", ["100"]), answered_correctly("", ["Paris"])
        (0.0, 0.0)
    """
    text = f" {normalize_answer(generation)} "
    return float(any(f" {normalize_answer(a)} " in text for a in answers if normalize_answer(a)))


def general_messages(question: str) -> list[dict[str, str]]:
    """The plain chat request for one question: no system prompt, no documents."""
    return [{"role": "user", "content": f"{question} {INSTRUCTION}"}]


def ask_general(
    model: Any, tokenizer: Any, questions: Sequence[dict[str, Any]], batch_size: int, max_new_tokens: int, label: str
) -> list[str]:
    """One generator's greedy answers to every question (:func:`general_messages`: no documents)."""
    requests = [general_messages(q["question"]) for q in questions]
    return generate_batched(model, tokenizer, requests, max_new_tokens, batch_size, f"forgetting check ({label})")


class GeneralQuestions:
    """The questions asked of the base and the tuned generator whenever one of them is loaded for other work.

    Call it with a loaded generator's key, model and tokenizer
    (:func:`ragtune.eval.answers.generate_answers`'s ``while_loaded``); :attr:`answers` holds what each label
    answered, for :func:`forgetting_check`'s ``asked``.

    Args:
        generators: ``{"base": key, "tuned": key}``, each ``(folder, adapter, dtype)``.
        questions: rows of :func:`load_general_questions`.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: completion cap.
    """

    def __init__(
        self,
        generators: dict[str, GeneratorKey],
        questions: Sequence[dict[str, Any]],
        batch_size: int,
        max_new_tokens: int,
    ) -> None:
        self.generators, self.questions = generators, questions
        self.batch_size, self.max_new_tokens = batch_size, max_new_tokens
        self.answers: dict[str, list[str]] = {}

    def __call__(self, key: GeneratorKey, model: Any, tokenizer: Any) -> None:
        for label, wanted in self.generators.items():
            if wanted == key and label not in self.answers:
                self.answers[label] = ask_general(
                    model, tokenizer, self.questions, self.batch_size, self.max_new_tokens, label
                )


def forgetting_check(
    base: tuple[str, str | None],
    tuned: tuple[str, str | None],
    questions: Sequence[dict[str, Any]],
    *,
    batch_size: int,
    max_new_tokens: int,
    samples: int,
    seed: int,
    dtype: str | None = None,
    load: Callable[[str, str | None, str | None], tuple[Any, Any]] | None = None,
    asked: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Ask both generators every question and compare their accuracy with a paired bootstrap.

    Args:
        base: ``(generator folder, adapter or None)`` of the untuned generator.
        tuned: the same for the RAFT-tuned one.
        questions: rows of :func:`load_general_questions`.
        batch_size: prompts per ``generate`` call.
        max_new_tokens: completion cap.
        samples: bootstrap resamples.
        seed: bootstrap seed.
        dtype: the generators' weights (``assemble.dtype`` resolved), None for load_generator's default.
        load: loads ``(folder, adapter, dtype) -> (model, tokenizer)`` (the eval's
            :meth:`ragtune.pipeline.stack.StackLoader.generator`); default
            :func:`ragtune.pipeline.generator.load_generator`.
        asked: answers already given per label (``"base"``, ``"tuned"``; :class:`GeneralQuestions`): that
            generator is not loaded again.

    Returns:
        ``{"questions", "base", "tuned", "delta": interval dict, "verdict", "per_question": [...]}``:
        accuracies, the paired delta tuned − base and its verdict, and each question's answers.
    """
    load = load or load_generator
    answers = dict(asked or {})
    scores = {}
    for label, (generator, adapter) in (("base", base), ("tuned", tuned)):
        if label not in answers:
            model, tokenizer = load(generator, adapter, dtype)
            answers[label] = ask_general(model, tokenizer, questions, batch_size, max_new_tokens, label)
            del model, tokenizer
        scores[label] = [answered_correctly(a, q["answers"]) for a, q in zip(answers[label], questions, strict=True)]
    delta = paired_bootstrap(scores["base"], scores["tuned"], samples, seed)
    return {
        "questions": len(questions),
        "base": sum(scores["base"]) / max(len(questions), 1),
        "tuned": sum(scores["tuned"]) / max(len(questions), 1),
        "delta": delta.as_dict() if delta else None,
        "verdict": verdict(delta),
        "per_question": [
            {"id": q["id"], "question": q["question"], "base": a, "tuned": b, "base_ok": sa, "tuned_ok": sb}
            for q, a, b, sa, sb in zip(
                questions, answers["base"], answers["tuned"], scores["base"], scores["tuned"], strict=True
            )
        ],
    }
