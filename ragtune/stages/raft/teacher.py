"""RAFT teacher answers: the prompt for LLM teachers, the offline extractive teacher, and quote checks.

Every teacher answer is checked before it becomes a training target: each quoted span must occur
verbatim (whitespace-normalised) in an oracle chunk. :func:`verify_and_repair` drops bad quotes,
inserts the oracle sentence that best matches the answer when no valid quote is left, and rejects
answers without the ``##Reason`` / ``##Answer`` structure. :func:`no_oracle_target` writes the target
of a sample whose context lacks the oracle (``raft.no_oracle_target``).

Example:
    >>> target, status = verify_and_repair(
    ...     "##Reason: ##begin_quote##Heron fails over##end_quote## ##Answer: yes", ["Heron fails over in 5 s."]
    ... )
    >>> status
    'valid'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ragtune.pipeline.extractive import quotable, split_sentences, words
from ragtune.pipeline.quoting import DATA_RULE, neutralise, quote_documents
from ragtune.pipeline.raft_format import (
    ABSTAIN_ANSWER,
    ANSWER_TAG,
    BEGIN_QUOTE,
    END_QUOTE,
    REASON_TAG,
    answer_end,
    format_answer,
    parse_answer,
    quote_is_verbatim,
)
from ragtune.pipeline.retrieval import Reranker

TEACHER_SYSTEM_PROMPT = (
    "You write model answers for an open-book exam. Given a question, the document that answers it and "
    "possibly a reference answer, explain step by step why the answer follows from the document. Start with "
    f"'{REASON_TAG}', copy the supporting sentences of the document exactly between {BEGIN_QUOTE} and "
    f"{END_QUOTE}, and end with '{ANSWER_TAG}' followed by a short final answer. {DATA_RULE}"
)
EXTRACTIVE_REASON = "The relevant document states:"
NO_ORACLE_REASON = "None of the provided documents addresses this question."
MEMORY_REASON = "None of the provided documents addresses this question, so the answer comes from general knowledge."

# Outcomes of verify_and_repair, in the order the report lists them.
VALID, REPAIRED, REPLACED, MALFORMED = "valid", "repaired", "replaced", "malformed"


def best_matching_sentence(answer: str, oracle_texts: Sequence[str]) -> str:
    """The oracle sentence sharing the most words with ``answer`` (ties: the earliest; no overlap: the first).

    Args:
        answer: the teacher's final answer (or any text to match).
        oracle_texts: the oracle chunk texts.

    Returns:
        One sentence of the oracle, verbatim.

    Example:
        >>> best_matching_sentence("40 minutes", ["Drain first. The grace period is 40 minutes."])
        'The grace period is 40 minutes.'
    """
    sentences = quotable([s for text in oracle_texts for s in split_sentences(text)])
    if not sentences:
        raise ValueError("the oracle has no sentence to quote")
    target = set(words(answer))
    # max() keeps the first of equal scores, so ties (and no overlap at all) go to the earliest sentence.
    return max(sentences, key=lambda s: len(target & set(words(s))))


def verify_and_repair(completion: str, oracle_texts: Sequence[str]) -> tuple[str | None, str]:
    """Check that every quote of a teacher answer is verbatim in the oracle; repair or reject it.

    Args:
        completion: the teacher's answer in the RAFT format (``##Reason: ... ##Answer: ...``).
        oracle_texts: the texts of the sample's oracle chunks; a quote must occur in one of them.

    Returns:
        ``(target, status)``: status ``valid`` (unchanged), ``repaired`` (bad quotes removed, valid ones
        kept), ``replaced`` (no valid quote was left: the oracle sentence best matching the answer is
        quoted instead) or ``malformed`` (no ``##Reason`` before a non-empty ``##Answer``; target None).

    Example:
        >>> verify_and_repair("##Reason: ##begin_quote##made up##end_quote## ##Answer: 40 minutes",
        ...                   ["The grace period is 40 minutes."])
        ('##Reason: ##begin_quote##The grace period is 40 minutes.##end_quote##\\n##Answer: 40 minutes', 'replaced')
    """
    completion = completion[: answer_end(completion)]  # a second round after the answer is not part of it
    parsed = parse_answer(completion)
    if not parsed.well_formed or not parsed.answer:
        return None, MALFORMED
    good = [q for q in parsed.quotes if any(quote_is_verbatim(q, text) for text in oracle_texts)]
    if good and len(good) == len(parsed.quotes):
        return completion.strip(), VALID
    # Rebuild the reasoning without the bad quote spans, keeping the teacher's words around them.
    reason_part = completion[: completion.find(ANSWER_TAG)].replace(REASON_TAG, "", 1)

    def keep_if_good(match: re.Match[str]) -> str:
        return match.group(0) if match.group(1).strip() in good else ""

    quote_span = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.DOTALL)
    reason = " ".join(quote_span.sub(keep_if_good, reason_part).split())
    if good:
        return format_answer(reason, [], parsed.answer), REPAIRED
    return format_answer(reason, [best_matching_sentence(parsed.answer, oracle_texts)], parsed.answer), REPLACED


def no_oracle_target(teacher_completion: str | None, mode: str) -> str | None:
    """Target for a sample whose context lacks the oracle.

    Args:
        teacher_completion: the teacher's answer given the oracle (only read in ``memory`` mode).
        mode: ``abstain`` (the target says the documents do not contain the answer) or ``memory``
            (as in the RAFT paper: keep the teacher's final answer; the reasoning says the documents
            lack it and quotes nothing, since nothing in the context supports a quote).

    Returns:
        The target completion, or None when ``memory`` has no usable teacher answer.

    Example:
        >>> no_oracle_target(None, "abstain").endswith("The provided documents do not contain the answer.")
        True
    """
    if mode == "abstain":
        return format_answer(NO_ORACLE_REASON, [], ABSTAIN_ANSWER)
    parsed = parse_answer(teacher_completion or "")
    if not parsed.well_formed or not parsed.answer:
        return None
    return format_answer(MEMORY_REASON, [], parsed.answer)


def build_teacher_messages(question: str, oracle_texts: Sequence[str], reference: str | None) -> list[dict[str, str]]:
    """Chat messages asking an LLM teacher for a RAFT answer given the question, oracle and reference.

    Example:
        >>> build_teacher_messages("Grace period?", ["It is 40 minutes."], "40 minutes")[1]["content"].splitlines()[0]
        'Question: Grace period?'
    """
    user = f"Question: {neutralise(question.strip())}\n\nDocument:\n{quote_documents(list(oracle_texts))}"
    if reference:
        user += f"\n\nReference answer: {neutralise(reference.strip())}"
    user += f"\n\nWrite the answer: {REASON_TAG} ... {BEGIN_QUOTE}...{END_QUOTE} ... {ANSWER_TAG} ..."
    return [{"role": "system", "content": TEACHER_SYSTEM_PROMPT}, {"role": "user", "content": user}]


def extractive_answers(
    reranker: Reranker,
    questions: Sequence[str],
    oracle_texts: Sequence[Sequence[str]],
    references: Sequence[str | None],
    quote_sentences: int,
    batch_size: int = 64,
) -> list[str]:
    """Deterministic teacher answers without an LLM: quote the oracle sentences the reranker likes best.

    All (question, oracle sentence) pairs of all samples are scored in ONE batched ``predict`` call.

    Args:
        reranker: the tuned reranker, either kind (:class:`ragtune.pipeline.retrieval.Reranker`).
        questions: question texts.
        oracle_texts: per question, its oracle chunk texts.
        references: per question, the reference answer or None.
        quote_sentences: sentences quoted per answer (the best-scoring ones, in document order).

    Returns:
        One RAFT-format answer per question; its quotes are verbatim by construction, and its final
        answer is the reference when given, else the best-scoring sentence.

    Example (with a loaded ``reranker``, not run as a doctest):
        extractive_answers(reranker, ["Grace period?"], [["Drain first. It is 40 minutes."]], ["40 minutes"], 1)
        # -> one answer quoting 'It is 40 minutes.' and ending '##Answer: 40 minutes'
    """
    sentences = [quotable([s for text in texts for s in split_sentences(text)]) for texts in oracle_texts]
    pairs = [(q, s) for q, sents in zip(questions, sentences, strict=True) for s in sents]
    flat = list(reranker.predict(pairs, batch_size=batch_size, show_progress_bar=False)) if pairs else []
    answers, pos = [], 0
    for sents, reference in zip(sentences, references, strict=True):
        if not sents:
            raise ValueError("an oracle chunk has no sentence to quote")
        scores = [float(s) for s in flat[pos : pos + len(sents)]]
        pos += len(sents)
        ranked = sorted(range(len(sents)), key=lambda i: (-scores[i], i))
        chosen = sorted(ranked[:quote_sentences])  # document order reads naturally
        answer = reference.strip() if reference and reference.strip() else sents[ranked[0]]
        answers.append(format_answer(EXTRACTIVE_REASON, [sents[i] for i in chosen], answer))
    return answers
