"""The extractive answerer: no LLM, the context sentence that best matches the question.

It is the floor every generator must clear (``assemble.generator: extractive``, the eval's ``extractive``
configuration, and the third candidate of the generator gate): a RAFT generator's promise is to find the
evidence among distractors and quote it, and this answerer does exactly that with the served embedder. Its
answer is written in the RAFT format (the sentence quoted, then given as the final answer), so parsing,
metrics and the server treat it like any generator's.

Sentence splitting lives here too: the RAFT teacher quotes the same sentences.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import torch

from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, format_answer

EXTRACTIVE = "extractive"  # the generator choice, and the generator "path" of its configurations
EXTRACTIVE_REASON = "The context sentence that best matches the question:"
NO_CONTEXT_REASON = "The context holds no sentence to quote."
MIN_QUOTE_WORDS = 4  # shorter pieces (headings, labels) are quoted only when nothing longer exists

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n\s*\n|\n(?=\s*(?:[-*+#>|]|\d+[.)]\s))")
_WORD = re.compile(r"\w+")


def split_sentences(text: str) -> list[str]:
    """Split a chunk into sentences: at end punctuation, blank lines and list items or headings.

    A hard-wrapped line break inside a sentence does not split it; the sentence comes back with its
    whitespace collapsed, which :func:`~ragtune.pipeline.raft_format.quote_is_verbatim` still finds in the chunk.

    Example:
        >>> split_sentences("# Drain\\n\\nLet every batch\\nfinish. It takes 40 minutes!\\n- Owner: Routing")
        ['# Drain', 'Let every batch finish.', 'It takes 40 minutes!', '- Owner: Routing']
    """
    return [" ".join(s.split()) for s in _SENTENCE_END.split(text) if s.strip()]


def words(text: str) -> list[str]:
    """Case-folded word tokens."""
    return _WORD.findall(text.casefold())


def quotable(sentences: list[str]) -> list[str]:
    """The sentences worth quoting: those of at least :data:`MIN_QUOTE_WORDS` words, else all of them.

    Example:
        >>> quotable(["# Drain", "Let every batch finish first."])
        ['Let every batch finish first.']
    """
    return [s for s in sentences if len(words(s)) >= MIN_QUOTE_WORDS] or sentences


def context_sentences(chunks: Sequence[str]) -> list[str]:
    """The quotable sentences of context chunks, in context order, each once."""
    return quotable(list(dict.fromkeys(s for text in chunks for s in split_sentences(text))))


def best_sentences(question_vectors: torch.Tensor, sentence_vectors: torch.Tensor, groups: Sequence[int]) -> list[int]:
    """Per question, the index (within its group) of its best sentence by dot product; ties go to the first.

    Args:
        question_vectors: (q, d) normalised question embeddings.
        sentence_vectors: (sum(groups), d) normalised sentence embeddings, the questions' groups one after another.
        groups: how many sentences each question has (each at least 1).

    Example:
        >>> q = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
        >>> s = torch.tensor([[0.0, 1.0], [1.0, 0.0], [1.0, 0.0], [0.6, 0.8]])
        >>> best_sentences(q, s, [2, 2])
        [1, 1]
    """
    owner = torch.repeat_interleave(torch.arange(len(groups)), torch.tensor(list(groups)))
    scores = (sentence_vectors * question_vectors[owner]).sum(dim=1)  # each sentence against its own question
    best, start = [], 0
    for size in groups:
        best.append(int(torch.argmax(scores[start : start + size])))  # argmax returns the first maximum
        start += size
    return best


class ExtractiveAnswerer:
    """Answers with the context sentence the embedder finds closest to the question (no LLM).

    Args:
        embedder: a loaded ``SentenceTransformer`` — the served one, so queries take its query route.
        batch_size: texts per encode call.
    """

    def __init__(self, embedder: Any, batch_size: int = 64) -> None:
        self.embedder, self.batch_size = embedder, batch_size

    def answer(self, questions: Sequence[str], contexts: Sequence[Sequence[str]]) -> list[str]:
        """One RAFT-format answer per question: its best context sentence, quoted and given as the answer.

        Every question and every sentence is encoded in one batched call each; a question without any context
        sentence gets the abstention the RAFT format uses.
        """
        sentences = [context_sentences(chunks) for chunks in contexts]
        asked = [i for i, s in enumerate(sentences) if s]
        answers = [format_answer(NO_CONTEXT_REASON, [], ABSTAIN_ANSWER)] * len(questions)
        if not asked:
            return answers
        encode = {"batch_size": self.batch_size, "convert_to_tensor": True, "normalize_embeddings": True}
        q_vectors = self.embedder.encode_query([questions[i] for i in asked], **encode).cpu()
        flat = [s for i in asked for s in sentences[i]]
        s_vectors = self.embedder.encode_document(flat, **encode).cpu()
        for i, best in zip(
            asked, best_sentences(q_vectors, s_vectors, [len(sentences[i]) for i in asked]), strict=True
        ):
            sentence = sentences[i][best]
            answers[i] = format_answer(EXTRACTIVE_REASON, [sentence], sentence)
        return answers
