"""The RAFT prompt and answer format: the contract between stage 3 (training), assembly and eval.

The generator sees a question and numbered context chunks and answers as

    ##Reason: <reasoning> ##begin_quote##<verbatim span of a chunk>##end_quote## <more reasoning>
    ##Answer: <short answer>

(arXiv 2403.10131). When the context does not hold the answer the target is :data:`ABSTAIN_ANSWER`
(config ``raft.no_oracle_target: abstain``). It lives in the core so that the stage that trains on it,
the engine that serves it and the harness that scores it share one definition.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from ragtune.pipeline.generator import stop_point
from ragtune.pipeline.quoting import DATA_RULE, neutralise, quote_documents

BEGIN_QUOTE = "##begin_quote##"
END_QUOTE = "##end_quote##"
REASON_TAG = "##Reason:"
ANSWER_TAG = "##Answer:"
ABSTAIN_ANSWER = "The provided documents do not contain the answer."

SYSTEM_PROMPT = (
    "You answer questions about internal documentation using only the documents given. "
    f"First reason after '{REASON_TAG}', copying the supporting sentences exactly between "
    f"{BEGIN_QUOTE} and {END_QUOTE}; then give a short final answer after '{ANSWER_TAG}'. "
    f"If the documents do not contain the answer, say so: '{ANSWER_TAG} {ABSTAIN_ANSWER}' {DATA_RULE}"
)

_QUOTE_RE = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)
# The tags that open a section of the format; after the final answer one starts a second round the format does not
# have (an answer holds no tag: its documents' tags are neutralised). Both cases of the named tags: small generators
# write "##reason:" too.
SECTION_TAGS = (REASON_TAG, ANSWER_TAG, BEGIN_QUOTE, END_QUOTE, REASON_TAG.lower(), ANSWER_TAG.lower())
_SECTION_RE = re.compile(r"#*\s*(?:" + "|".join(re.escape(t) for t in SECTION_TAGS) + ")", re.IGNORECASE)
_TRAILING_HASHES = re.compile(r"\s*#{2,}$")  # a tag begun when the generation ended


def format_context(chunks: list[str]) -> str:
    """Number and delimit the context chunks the way training and serving both show them (their format
    tags neutralised: :mod:`ragtune.pipeline.quoting`)."""
    return quote_documents(chunks)


def build_messages(question: str, chunks: list[str], history: Sequence[dict[str, str]] = ()) -> list[dict[str, str]]:
    """Chat messages (system, the conversation's earlier turns, user) for a question over context chunks.

    Args:
        question: the question the context answers.
        chunks: the context, best first.
        history: earlier ``{"role": "user"|"assistant", "content"}`` turns of a conversation, oldest first; their
            text is neutralised (an earlier answer may quote a document).

    Example:
        >>> build_messages("What is Heron?", ["Heron routes orders."])[1]["content"].splitlines()[0]
        '<document index="1">'
    """
    user = f"{format_context(chunks)}\n\nQuestion: {neutralise(question.strip())}"
    earlier = [{"role": t["role"], "content": neutralise(t["content"])} for t in history]
    return [{"role": "system", "content": SYSTEM_PROMPT}, *earlier, {"role": "user", "content": user}]


def answer_end(text: str) -> int:
    """Where a generation's final answer ends: at the first tag after its answer tag (a second reasoning, quote or
    answer, which the format does not have), with the ``#`` and whitespace that lead into it; else the text's end.

    Example:
        >>> text = "##Reason: r\\n##Answer: 14 days.##\\n##Reason: again"
        >>> text[: answer_end(text)]
        '##Reason: r\\n##Answer: 14 days.'
    """
    at = text.find(ANSWER_TAG)
    found = _SECTION_RE.search(text, at + len(ANSWER_TAG)) if at >= 0 else None
    return found.start() if found else len(text)


def answer_settled(completion: str, prefilled: bool = False) -> bool:
    """Whether an answer being generated is settled: a format tag follows its answer tag (:func:`answer_end`), so
    nothing the generator writes next can change what :func:`parse_answer` reads. A generation can stop there.

    Args:
        completion: the generated text so far.
        prefilled: the completion continues a prefill that ends with the answer tag (:func:`guided_messages`).

    Example:
        >>> answer_settled("##Reason: r ##Answer: 14 days."), answer_settled("##Reason: r ##Answer: 14 days.##Reason:")
        (False, True)
        >>> answer_settled(" 14 days.##", prefilled=True), answer_settled(" 14 days.\\n##Answer:", prefilled=True)
        (False, True)
    """
    text = ANSWER_TAG + completion if prefilled else completion
    return answer_end(text) < len(text)


def _clean_answer(answer: str) -> str:
    """An answer's text without surrounding whitespace or a tag begun as the generation ended."""
    return _TRAILING_HASHES.sub("", answer.strip())


def answer_so_far(text: str) -> str:
    """The final answer's text in a generation still being written, as far as it can be shown.

    That is the text after the first ``##Answer:`` tag, up to the next tag (:func:`answer_end`: the format has
    one answer), with a tail that may yet grow into a tag and trailing whitespace held back; empty before the
    tag. Each call's result extends the previous one's as the text grows, and on the finished text it equals
    :func:`parse_answer`'s ``answer``.

    Example:
        >>> answer_so_far("##Reason: r ##Answer: Forty min")
        'Forty min'
        >>> answer_so_far("##Reason: r ##Answer: Forty ##")
        'Forty'
    """
    at = text.find(ANSWER_TAG)
    if at < 0:
        return ""
    answer = text[at + len(ANSWER_TAG) : answer_end(text)]
    end, _ = stop_point(answer, SECTION_TAGS)  # hold back a tail that may become a tag
    return _clean_answer(answer[:end])


def format_answer(reason: str, quotes: list[str], answer: str) -> str:
    """The target completion: reasoning with quoted evidence, then the final answer. Quotes and answer are
    neutralised (a quote shows a document as the prompt did), so the only tags in them are the target's own;
    ``reason`` is the teacher's, who saw the documents neutralised, and may hold its own checked quotes."""
    quoted = " ".join(f"{BEGIN_QUOTE}{neutralise(q.strip())}{END_QUOTE}" for q in quotes)
    body = f"{reason.strip()} {quoted}".strip()
    return f"{REASON_TAG} {body}".strip() + f"\n{ANSWER_TAG} {neutralise(answer.strip())}"


def quote_prefill(answer: str) -> str:
    """The start of a guided answer: ``answer`` up to and including its answer tag (its reasoning and quotes).

    A generator continues it with the final answer alone (``assemble.quote: extractive`` writes the extractive
    answerer's sentence in this way); the whole answer is the prefill followed by the completion.

    Example:
        >>> quote_prefill("##Reason: ##begin_quote##It is 40 min.##end_quote##\\n##Answer: It is 40 min.")
        '##Reason: ##begin_quote##It is 40 min.##end_quote##\\n##Answer:'
    """
    return answer.split(ANSWER_TAG)[0] + ANSWER_TAG


def guided_messages(messages: Sequence[dict[str, str]], answer: str) -> list[dict[str, str]]:
    """A RAFT request whose answer starts with :func:`quote_prefill` of ``answer`` (an assistant message the
    generator continues: :func:`ragtune.pipeline.generator.chat_prompt`).

    Example:
        >>> guided_messages([{"role": "user", "content": "Q"}], "##Reason: r\\n##Answer: a")[-1]
        {'role': 'assistant', 'content': '##Reason: r\\n##Answer:'}
    """
    return [*messages, {"role": "assistant", "content": quote_prefill(answer)}]


def whole_answer(request: Sequence[dict[str, str]], completion: str) -> str:
    """The answer a request got: a prefilled answer's start (:func:`guided_messages`), then the completion.

    Example:
        >>> whole_answer([{"role": "assistant", "content": "##Reason: r\\n##Answer:"}], " 40 minutes")
        '##Reason: r\\n##Answer: 40 minutes'
        >>> whole_answer([{"role": "user", "content": "Q"}], "40 minutes")
        '40 minutes'
    """
    return request[-1]["content"] + completion if request and request[-1]["role"] == "assistant" else completion


def quote_then_answer(target: str) -> str:
    """A target with its reasoning prose removed: the verbatim quotes alone, then the final answer.

    Example:
        >>> quote_then_answer("##Reason: It says ##begin_quote##It is 40 min.##end_quote## so.\\n##Answer: 40 min")
        '##Reason: ##begin_quote##It is 40 min.##end_quote##\\n##Answer: 40 min'
        >>> quote_then_answer("##Reason: They do not say.\\n##Answer: Not in the documents.")
        '##Reason:\\n##Answer: Not in the documents.'
    """
    parsed = parse_answer(target)
    return format_answer("", parsed.quotes, parsed.answer)


@dataclass
class ParsedAnswer:
    """A generated answer taken apart; ``well_formed`` means it has both tags in order."""

    reason: str
    quotes: list[str] = field(default_factory=list)
    answer: str = ""
    well_formed: bool = False

    @property
    def abstained(self) -> bool:
        return normalize(ABSTAIN_ANSWER) in normalize(self.answer)


def parse_answer(text: str) -> ParsedAnswer:
    """Split a generation into reason, quoted spans and final answer; tolerant of missing parts.

    The final answer is the text after the first ``##Answer:`` up to :func:`answer_end`: what a generator writes
    after it (a second round of reasoning, quotes or answer) is not part of the answer, and its quotes are not
    the answer's.

    Example:
        >>> p = parse_answer("##Reason: x ##begin_quote##A b.##end_quote## ##Answer: b")
        >>> (p.quotes, p.answer, p.well_formed)
        (['A b.'], 'b', True)
        >>> p = parse_answer("##Reason: ##begin_quote##A b.##end_quote## ##Answer: b##\\n##Reason: ##begin_quote##C##")
        >>> (p.quotes, p.answer)
        (['A b.'], 'b')
    """
    text = text[: answer_end(text)]
    quotes = [q.strip() for q in _QUOTE_RE.findall(text) if q.strip()]
    reason_at, answer_at = text.find(REASON_TAG), text.find(ANSWER_TAG)
    well_formed = 0 <= reason_at < answer_at
    if answer_at >= 0:
        answer = _clean_answer(text[answer_at + len(ANSWER_TAG) :])
        reason = text[:answer_at]
    else:
        answer, reason = "", text
    reason = reason.replace(REASON_TAG, "").strip()
    return ParsedAnswer(reason=reason, quotes=quotes, answer=answer, well_formed=well_formed)


def normalize(text: str) -> str:
    """Whitespace-collapsed, case-folded text for verbatim-quote checks."""
    return " ".join(text.split()).casefold()


def quote_is_verbatim(quote: str, context: str) -> bool:
    """True when ``quote`` occurs in ``context`` as the prompt showed it (format tags neutralised), after
    whitespace normalisation (case-insensitive)."""
    return bool(quote.strip()) and normalize(quote) in normalize(neutralise(context))
