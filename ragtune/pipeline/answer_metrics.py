"""Answer metrics shared by the RAFT stage's dev check and the eval harness (SQuAD conventions).

Lower-case, drop punctuation and the articles a/an/the, collapse whitespace; token F1 is the multiset
overlap of the normalised tokens. :func:`final_answer` is the part of a generation that is scored: the text
after ``##Answer:`` (the RAFT format, :mod:`ragtune.pipeline.raft_format`), or the whole generation when it has no
such tag, so an untrained base generator still gets credit for a correct free-form answer.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Sequence

from ragtune.pipeline.raft_format import parse_answer

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation)


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lower-case, no punctuation, no articles, single spaces.

    Example:
        >>> normalize_answer("The  Heron router, v2!")
        'heron router v2'
    """
    text = text.lower().translate(_PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def _as_list(references: str | Sequence[str]) -> list[str]:
    return [references] if isinstance(references, str) else list(references)


def exact_match(prediction: str, references: str | Sequence[str]) -> float:
    """1.0 when the normalised prediction equals any normalised reference.

    Args:
        prediction: the generated final answer.
        references: one reference answer or several acceptable ones.

    Returns:
        1.0 or 0.0.

    Example:
        >>> exact_match("the 15 minutes.", "15 Minutes"), exact_match("15 min", ["15 minutes"])
        (1.0, 0.0)
    """
    pred = normalize_answer(prediction)
    return float(any(pred == normalize_answer(r) for r in _as_list(references)))


def token_f1(prediction: str, references: str | Sequence[str]) -> float:
    """SQuAD token-overlap F1 between prediction and reference, best over references.

    Args:
        prediction: the generated final answer.
        references: one reference answer or several acceptable ones.

    Returns:
        Harmonic mean of token precision and recall (multiset overlap); 0.0 when either side is
        empty after normalisation, unless both are.

    Example:
        >>> token_f1("within 15 minutes", "15 minutes")  # p = 2/3, r = 2/2 -> 0.8
        0.8
    """
    best = 0.0
    pred_tokens = normalize_answer(prediction).split()
    for ref in _as_list(references):
        ref_tokens = normalize_answer(ref).split()
        if not pred_tokens or not ref_tokens:
            best = max(best, float(pred_tokens == ref_tokens))
            continue
        common = sum((Counter(pred_tokens) & Counter(ref_tokens)).values())
        if common == 0:
            continue
        precision, recall = common / len(pred_tokens), common / len(ref_tokens)
        best = max(best, 2 * precision * recall / (precision + recall))
    return best


def final_answer(generation: str) -> str:
    """The scored part of a generation: the text after ``##Answer:``, else the whole generation.

    Example:
        >>> final_answer("##Reason: it says so. ##Answer: 40 minutes"), final_answer("About 40 minutes.")
        ('40 minutes', 'About 40 minutes.')
    """
    parsed = parse_answer(generation)
    return parsed.answer if parsed.well_formed or parsed.answer else generation


def best_span(text: str, reference: str) -> tuple[str, float]:
    """The run of whole words of ``text`` with the highest token F1 against ``reference`` (the shortest on a tie).

    How a free-form reference answer becomes an extractive one (the span a reader model is trained to point at).

    Example:
        >>> best_span("The pool runs 24 workers and can go to 64 on request.", "24 workers, up to 64")
        ('24 workers and can go to 64', 0.6666666666666666)
        >>> best_span("Nothing in common.", "40 minutes")
        ('', 0.0)
    """
    words = text.split()
    best, best_f1 = "", 0.0
    for length in range(1, len(words) + 1):
        for start in range(len(words) - length + 1):
            span = " ".join(words[start : start + length])
            f1 = token_f1(span, reference)
            if f1 > best_f1:
                best, best_f1 = span, f1
    return best, best_f1
