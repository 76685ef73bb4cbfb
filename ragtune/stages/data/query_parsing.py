"""Query parsing: pull search questions out of whatever an LLM answered, and tell text from garbage.

The data stage's query synthesis (:mod:`ragtune.stages.data.synthesize`) parses every reply here: a list of queries
(:func:`readable_queries`) for the list recipe, the first question (:func:`readable_first_question`) for the
small-model recipe. :func:`first_question_done` tells the local generator when a reply's first question is
settled, so it stops generating there.
"""

from __future__ import annotations

import json
import re
import unicodedata
from typing import Any

_STOPWORD_TEXT = (
    "a an and are as at be been but by can could did do does for from had has have how i if in into is it its "
    "may me might must my no not of on or our shall should so than that the their them then there these they "
    "this those to too was we were what when where which who whom why will with would you your"
)
STOPWORDS = frozenset(_STOPWORD_TEXT.split())
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")
_LIST_MARKER = re.compile(r"^\s*(?:[-*•·–]+|\(?\d{1,2}[.):\]]|\(?[a-hA-H][.)])\s*")
_PREFIX = re.compile(r"^\s*(?:\*\*)?(?:search\s+)?(?:query|question|q)\s*\d*\s*[:.-]\s*(?:\*\*)?\s*", re.IGNORECASE)
_PREAMBLE = re.compile(r"^(?:here (?:are|is)|sure|certainly|of course|okay|ok\b|i hope|note:|passage:|answer:)", re.I)


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, inner apostrophes)."""
    return _WORD.findall(text.lower())


def parse_queries(text: str) -> list[str]:
    """Pull queries out of whatever an LLM answered.

    Accepts JSON (a list of strings, a list of objects with ``query``/``question``/``text``, or an
    object holding ``queries``/``questions``), numbered or bulleted lists, ``Query:`` / ``Q1:``
    prefixes, quotes and markdown bold, and ignores preambles ("Here are 3 questions:") and, when the
    answer is a list, stray lines outside it. Several questions on one line are split at "? ".

    Args:
        text: the raw completion.

    Returns:
        Distinct queries in order of appearance (possibly empty).

    Example:
        >>> parse_queries("Sure! Here are two:\\n1. What is X?\\n2) **How does Y work?**\\nHope this helps.")
        ['What is X?', 'How does Y work?']
    """
    found = _parse_json(text)
    if found is None:
        lines = [line for line in text.splitlines() if line.strip()]
        marked = [line for line in lines if _LIST_MARKER.match(line)]
        found = []
        for line in marked or lines:
            line = _PREFIX.sub("", _LIST_MARKER.sub("", line, count=1), count=1).strip()
            if not line or line.endswith(":") or _PREAMBLE.match(line):
                continue
            found += re.split(r"(?<=\?)\s+(?=[A-Z])", line)
    out: list[str] = []
    for query in found:
        query = _PREFIX.sub("", query.strip(), count=1).strip().strip("*\"'`“”‘’ ").strip()
        if query and query not in out:
            out.append(query)
    return out


def _parse_json(text: str) -> list[str] | None:
    start = min((i for i in (text.find("["), text.find("{")) if i >= 0), default=-1)
    if start < 0:
        return None
    for end in range(len(text), start, -1):
        if text[end - 1] not in "]}":
            continue
        try:
            data = json.loads(text[start:end])
        except json.JSONDecodeError:
            continue
        return _strings_in(data)
    return None


def _strings_in(data: Any) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, list):
        return [s for item in data for s in _strings_in(item)]
    if isinstance(data, dict):
        for key in ("queries", "questions", "query", "question", "text"):
            if key in data:
                return _strings_in(data[key])
    return []


MAX_WORD_CHARS = 40  # a longer unbroken run of characters is no word of a search question


def is_garbage(candidate: str) -> bool:
    """True when a parsed candidate is not readable text: control characters or U+FFFD, an unbroken run
    of more than 40 characters, or fewer letters than half of its non-space characters.

    Example:
        >>> is_garbage("How long is the VPN token valid?"), is_garbage("{}{}%%$#@!~^&*"), is_garbage("x" * 300)
        (False, True, True)
    """
    if "\ufffd" in candidate or any(unicodedata.category(ch) == "Cc" for ch in candidate if ch not in "\t\n"):
        return True
    if any(len(token) > MAX_WORD_CHARS for token in candidate.split()):
        return True
    visible = [ch for ch in candidate if not ch.isspace()]
    return sum(ch.isalpha() for ch in visible) * 2 < len(visible)


def readable_queries(text: str) -> tuple[list[str], int]:
    """(queries parsed from a reply that are readable text, number of garbage candidates dropped)."""
    parsed = parse_queries(text)
    readable = [q for q in parsed if not is_garbage(q)]
    return readable, len(parsed) - len(readable)


def readable_first_question(text: str) -> str:
    """:func:`first_question` of a reply, or "" when it is garbage."""
    query = first_question(text)
    return "" if is_garbage(query) else query


def first_question(text: str) -> str:
    """The recipe's cut: first line of the answer, prefixes removed, up to and including the first "?".

    Example:
        >>> first_question("Question: What is the refund window? It is 30 days.")
        'What is the refund window?'
    """
    line = next((ln for ln in text.strip().splitlines() if ln.strip()), "")
    line = _PREFIX.sub("", _LIST_MARKER.sub("", line, count=1), count=1).strip().strip("*\"'`“”")
    return line[: line.index("?") + 1] if "?" in line else line


def first_question_done(text: str) -> bool:
    """True once :func:`first_question` of ``text`` is settled: no continuation of ``text`` can change it.

    That is as soon as the answer, leading whitespace aside, holds a "?" or a line break: the cut ends at
    the first "?" of the first non-blank line, and that line's start (list marker, ``Question:`` prefix) holds
    no "?". The local generator stops each completion of the small-model recipe here.

    Example:
        >>> first_question_done("\\n What is the refund"), first_question_done("What is the refund window?")
        (False, True)
        >>> first_question_done("Refund window\\n"), first_question_done("  \\n\\n")
        (True, False)
    """
    head = text.lstrip()
    return "?" in head or len((head + "x").splitlines()) > 1  # any line break str.splitlines knows
