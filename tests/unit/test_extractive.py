"""The extractive answerer: the context sentence closest to the question under the embedder, in one batched
encode per side, written in the RAFT format."""

from pathlib import Path

import torch

from ragtune.pipeline.extractive import ExtractiveAnswerer, context_sentences
from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, parse_answer, quote_is_verbatim

CONTEXT = [
    "# Tortoise drain\n\nDraining Tortoise lets every queued batch finish. The grace period is 40 minutes by default.",
    "Heron routes card payments. Failover to the standby site takes five minutes.",
]


class BagOfWords:
    """A stand-in embedder: normalised word counts over a fixed vocabulary; records every encode call."""

    def __init__(self) -> None:
        self.vocabulary: dict[str, int] = {}
        self.calls: list[tuple[str, int]] = []

    def _encode(self, texts: list[str]) -> torch.Tensor:
        rows = []
        for text in texts:
            row = torch.zeros(256)
            for word in text.lower().replace(".", " ").replace("?", " ").split():
                row[self.vocabulary.setdefault(word, len(self.vocabulary))] += 1.0
            rows.append(row / row.norm().clamp(min=1e-9))
        return torch.stack(rows)

    def encode_query(self, texts: list[str], **kwargs) -> torch.Tensor:
        self.calls.append(("query", len(texts)))
        return self._encode(texts)

    def encode_document(self, texts: list[str], **kwargs) -> torch.Tensor:
        self.calls.append(("document", len(texts)))
        return self._encode(texts)


def test_the_answer_is_the_best_matching_sentence_quoted_and_given() -> None:
    embedder = BagOfWords()
    questions = ["how long is the grace period", "how long does failover take", "anything?"]
    answers = ExtractiveAnswerer(embedder).answer(questions, [CONTEXT, CONTEXT[::-1], []])
    first, second, empty = (parse_answer(a) for a in answers)
    assert first.answer == "The grace period is 40 minutes by default."
    assert second.answer == "Failover to the standby site takes five minutes."
    for parsed in (first, second):
        assert parsed.well_formed and parsed.quotes == [parsed.answer]
        assert any(quote_is_verbatim(parsed.answer, chunk) for chunk in CONTEXT)
    assert empty.abstained  # no context sentence: the RAFT abstention
    # One batched encode per side, every question and every sentence at once (no per-question loop).
    assert embedder.calls == [("query", 2), ("document", 2 * len(context_sentences(CONTEXT)))]
    assert "# Tortoise drain" not in context_sentences(CONTEXT)  # a heading is not worth quoting


def test_the_answerer_runs_on_a_sentence_transformer(tiny_bert_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    answers = ExtractiveAnswerer(SentenceTransformer(str(tiny_bert_dir))).answer(["grace period"], [CONTEXT])
    parsed = parse_answer(answers[0])
    assert parsed.answer in context_sentences(CONTEXT)
    assert ABSTAIN_ANSWER not in answers[0]
