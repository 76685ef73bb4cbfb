"""Synthetic question-answer pairs over training chunks, each answer checked to be a span of its chunk.

RAFT teaches the generator to find the evidence among distractors and quote it. A few dozen labelled questions
are few steps of that skill (docs/raft.md), and synthetic search queries have no reference answer to end on.
``raft.synthetic_qa`` chunks of training documents are each asked for one question with a short answer, written
by ``raft.qa_writer``:

- ``extractive`` (default, no LLM): a cloze question, the unsupervised question writer of Lewis et al. (2019,
  "Unsupervised Question Answering by Cloze Translation"): a sentence of the chunk with one answer-like span (a
  command in backticks, a number with the word after it, a capitalised name) replaced by "what"
  (:func:`cloze_pair`).
- ``local`` / ``openai``: the LLM reads the chunk and writes ``Question: ...`` then ``Answer: ...``, the answer
  copied from the chunk (:func:`writer_messages`).

Both go through the same parse (:func:`parse_pair`) and checks (:func:`check_pair`): the answer is a verbatim
span of the chunk, of 1 to 12 words, and not given away by the question, which has 3 to 40 words and borrows
nothing from the few-shot examples. Only chunks of documents that no eval or dev question cites are asked.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from collections.abc import Collection, Sequence
from pathlib import Path
from typing import Any

from ragtune.pipeline.config import LLMConfig
from ragtune.pipeline.extractive import split_sentences, words
from ragtune.pipeline.llm import make_backend
from ragtune.pipeline.quoting import DATA_RULE, quote_document
from ragtune.pipeline.raft_format import normalize, quote_is_verbatim

ORIGIN = "synthetic_qa"
WRITER_SYSTEM_PROMPT = (
    "Read the passage. Write one question that the passage answers, then its answer copied word for word from "
    f"the passage: a short phrase, not a whole sentence. {DATA_RULE}"
)
WRITER_EXAMPLES = (
    (
        "Members may borrow up to ten books at a time for three weeks. A loan can be renewed twice online, unless "
        "another reader has reserved the title.",
        "How many times can a library loan be renewed online?",
        "twice",
    ),
    (
        "The bakery opens at seven on weekdays and at eight on Saturdays. Sourdough comes out of the oven every "
        "morning and usually sells out before noon.",
        "When does the bakery open on Saturdays?",
        "at eight",
    ),
)
# The examples' topic words: a question about a passage without them was copied from an example.
EXAMPLE_WORDS = frozenset(("library", "loan", "renewed", "books", "borrow", "reader", "bakery", "sourdough", "oven"))
MAX_ANSWER_WORDS = 12
QUESTION_WORDS = (3, 40)
SENTENCE_WORDS = (6, 40)  # the sentences a cloze question is made from
# Words that never follow a number as its unit ("5 and 10", "24 of them").
_NOT_A_UNIT = (
    "and|or|but|so|to|of|the|a|an|in|on|at|for|by|with|via|per|from|after|before|until|is|are|was|were|be|than|if|"
    "as|it|this|that|when|where|which|who|while"
)
_ANSWER_LIKE = re.compile(
    r"`(?P<code>[^`\n]{2,60})`"  # a command or identifier in backticks (the answer is what is inside)
    rf"|(?<![\w-])\d[\d,.:/%-]*(?:\s(?!(?:{_NOT_A_UNIT})\b)[a-z]{{1,12}}\b)?"  # a number (not inside an id), unit
    r"|(?<=\w )[A-Z][\w-]*(?: [A-Z][\w-]*)*"  # a capitalised name, not the sentence's first word
)
_LIST_MARKER = re.compile(r"^[-*#>\s]+")  # a list item's or heading's marker before a sentence
_PAIR = re.compile(r"Question:\s*(?P<question>[^\n]+?\?)\s*Answer:\s*(?P<answer>[^\n]+)", re.IGNORECASE)


def answer_spans(sentence: str) -> list[tuple[int, int, str]]:
    """The answer-like spans of a sentence, in order: ``(start, end, answer)``, ``start:end`` what the question
    replaces (backticks included) and ``answer`` the text without backticks or trailing punctuation.

    Example:
        >>> [a for _, _, a in answer_spans("Run `pondctl promote` at Elmstead within 30 minutes (INC-2026-003).")]
        ['pondctl promote', 'Elmstead', '30 minutes']
    """
    spans = []
    for match in _ANSWER_LIKE.finditer(sentence):
        code = match.group("code")
        text = code or match.group(0).rstrip(".,:;/-")
        if words(text):
            spans.append((match.start(), match.end() if code else match.start() + len(text), text))
    return spans


def cloze_pair(sentence: str, rng: random.Random) -> tuple[str, str] | None:
    """A cloze question and its answer: one answer-like span of ``sentence`` (a seeded choice) replaced by "what".

    Returns:
        ``(question, answer)``, or None when the sentence has no answer-like span.

    Example:
        >>> cloze_pair("Heron fails over to Elmstead in 5 seconds.", random.Random(0))
        ('Heron fails over to Elmstead in what?', '5 seconds')
    """
    spans = answer_spans(sentence)
    if not spans:
        return None
    start, end, answer = rng.choice(spans)
    question = " ".join(f"{sentence[:start]}what{sentence[end:]}".split()).rstrip(" .;:!?") + "?"
    return question[0].upper() + question[1:], answer


def cloze_reply(passage: str, rng: random.Random) -> str:
    """The extractive writer's reply for one passage: a cloze pair of one of its sentences (not a table row; a list
    marker dropped), in the LLM writer's format (``Question: ...`` / ``Answer: ...``); empty when no sentence has an
    answer-like span.

    Example:
        >>> cloze_reply("Drain first. Heron fails over to Elmstead in 5 seconds.", random.Random(1)).splitlines()
        ['Question: Heron fails over to what in 5 seconds?', 'Answer: Elmstead']
    """
    low, high = SENTENCE_WORDS
    sentences = [_LIST_MARKER.sub("", s) for s in split_sentences(passage) if "|" not in s]  # no table rows
    candidates = [s for s in sentences if low <= len(s.split()) <= high and answer_spans(s)]
    if not candidates:
        return ""
    pair = cloze_pair(rng.choice(candidates), rng)
    return f"Question: {pair[0]}\nAnswer: {pair[1]}" if pair else ""


def parse_pair(reply: str | None) -> tuple[str, str] | None:
    """The first ``Question: ...?`` / ``Answer: ...`` pair of a reply; the answer's trailing period is dropped.

    Example:
        >>> parse_pair("Question: When does it open on Saturdays?\\nAnswer: at eight.\\nQuestion: more")
        ('When does it open on Saturdays?', 'at eight')
    """
    match = _PAIR.search(reply or "")
    if match is None:
        return None
    answer = match.group("answer").strip().rstrip(".")
    return (match.group("question").strip(), answer) if answer else None


def check_pair(question: str, answer: str, passage: str) -> str | None:
    """Why a pair is dropped, or None when it is kept: ``not_span`` (the answer is not verbatim in the passage),
    ``answer_length`` (not 1 to 12 words), ``question_length`` (not 3 to 40 words), ``in_question`` (the
    question contains the answer) or ``example_words`` (the question borrows the few-shot examples' topic words
    that the passage lacks: a small LLM copies the example).

    Example:
        >>> passage = "The grace period is 40 minutes."
        >>> check_pair("How long is the grace period?", "40 minutes", passage), check_pair("Why?", "40", passage)
        (None, 'question_length')
        >>> check_pair("How long is the grace period?", "an hour", passage)
        'not_span'
    """
    if not quote_is_verbatim(answer, passage):
        return "not_span"
    if not 1 <= len(words(answer)) <= MAX_ANSWER_WORDS:
        return "answer_length"
    if not QUESTION_WORDS[0] <= len(words(question)) <= QUESTION_WORDS[1]:
        return "question_length"
    if normalize(answer) in normalize(question):
        return "in_question"
    if set(words(question)) & (EXAMPLE_WORDS - set(words(passage))):
        return "example_words"
    return None


def writer_messages(passage: str) -> list[dict[str, str]]:
    """Chat messages asking an LLM for one question about ``passage`` and its answer copied from it (few-shot).

    Example:
        >>> writer_messages("The grace period is 40 minutes.")[-1]["content"].splitlines()[:2]
        ['Passage:', '<document>']
    """
    messages = [{"role": "system", "content": WRITER_SYSTEM_PROMPT}]
    for example, question, answer in WRITER_EXAMPLES:
        messages += [
            {"role": "user", "content": f"Passage:\n{quote_document(example)}"},
            {"role": "assistant", "content": f"Question: {question}\nAnswer: {answer}"},
        ]
    return [*messages, {"role": "user", "content": f"Passage:\n{quote_document(passage)}"}]


def qa_writer_name(writer: LLMConfig) -> str:
    """Who wrote the pairs: ``cloze`` (no LLM) or ``provider:model``.

    Example:
        >>> qa_writer_name(LLMConfig(provider="extractive"))
        'cloze'
    """
    return "cloze" if writer.provider == "extractive" else f"{writer.provider}:{writer.model}"


def write_qa_pairs(
    writer: LLMConfig,
    corpus: Sequence[dict[str, Any]],
    excluded_docs: Collection[str],
    count: int,
    seed: int,
    cache_dir: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Ask ``count`` chunks (a seeded draw of those outside ``excluded_docs``) for one checked pair each.

    Args:
        writer: ``raft.qa_writer`` (``extractive``: cloze questions, no LLM).
        corpus: chunk rows (``id``, ``doc_id``, ``text``).
        excluded_docs: documents an eval or dev question cites; their chunks are never asked.
        count: chunks to ask (``raft.synthetic_qa``).
        seed: seeds the draw and the cloze choices.
        cache_dir: the LLM writer's per-item cache.

    Returns:
        (question rows in the data stage's format, ``origin: synthetic_qa``, ``answer`` the checked span; a
        report: writer, chunks asked, pairs kept and a count per reason for dropping).
    """
    rng = random.Random(seed)
    eligible = [c for c in corpus if c["doc_id"] not in excluded_docs]
    chunks = rng.sample(eligible, min(count, len(eligible)))
    requests = [writer_messages(chunk["text"]) for chunk in chunks]
    passage_of = {request[-1]["content"]: chunk for request, chunk in zip(requests, chunks, strict=True)}

    def extractor(messages: list[dict[str, str]]) -> str:
        chunk = passage_of[messages[-1]["content"]]
        return cloze_reply(chunk["text"], random.Random(f"{seed}:{chunk['id']}"))

    backend = make_backend(writer, cache_dir, extractor=extractor)
    replies = backend.generate(requests, temperature=0.0, desc="RAFT question-answer pairs")
    dropped: Counter[str] = Counter()
    rows = []
    for chunk, reply in zip(chunks, replies, strict=True):
        pair = parse_pair(reply)
        reason = "no_pair" if pair is None else check_pair(*pair, chunk["text"])
        if reason is not None:
            dropped[reason] += 1
            continue
        question, answer = pair
        rows.append(
            {
                "qid": "qa-" + hashlib.sha256(f"{chunk['id']}\n{question}".encode()).hexdigest()[:16],
                "text": question,
                "positives": [chunk["id"]],
                "relevance": {chunk["id"]: 2},
                "split": "train",
                "origin": ORIGIN,
                "doc_ids": [chunk["doc_id"]],
                "answer": answer,
            }
        )
    report = {"writer": qa_writer_name(writer), "chunks": len(chunks), "kept": len(rows), "dropped": dict(dropped)}
    return rows, report
