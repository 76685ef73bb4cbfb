"""Leakage-safe train/eval split by source document.

Held-out queries are chosen by document: no document contributes positives to both splits.
Documents linked by one query (a question citing two documents) move together.
"""

from __future__ import annotations

import random
from collections.abc import Iterable


def document_groups(doc_ids: Iterable[str], queries: list[dict]) -> list[list[str]]:
    """Group documents that share a query (connected components), each group sorted, groups sorted.

    Example:
        >>> document_groups(["a", "b", "c"], [{"doc_ids": ["a", "c"]}])
        [['a', 'c'], ['b']]
    """
    parent = {d: d for d in doc_ids}

    def find(d: str) -> str:
        while parent[d] != d:
            parent[d] = parent[parent[d]]
            d = parent[d]
        return d

    for q in queries:
        docs = [d for d in q["doc_ids"] if d in parent]
        for other in docs[1:]:
            parent[find(other)] = find(docs[0])
    groups: dict[str, list[str]] = {}
    for d in parent:
        groups.setdefault(find(d), []).append(d)
    return sorted(sorted(g) for g in groups.values())


def choose_eval_documents(
    doc_ids: Iterable[str], labelled: list[dict], eval_fraction: float, seed: int, from_labelled: bool
) -> set[str]:
    """Pick the held-out documents: whole groups, until ``eval_fraction`` of the candidates is reached.

    Args:
        doc_ids: every document of the corpus.
        labelled: queries known before synthesis (human / imported), with ``doc_ids``.
        eval_fraction: share of candidate documents to hold out.
        seed: makes the choice reproducible.
        from_labelled: draw candidates among documents the labelled queries cite (so the eval set is
            made of those queries); falls back to all documents when there are none.

    Returns:
        The set of held-out document ids.
    """
    groups = document_groups(doc_ids, labelled)
    cited = {d for q in labelled for d in q["doc_ids"]}
    if from_labelled and cited:
        groups = [g for g in groups if cited.intersection(g)]
    total = sum(len(g) for g in groups)
    random.Random(seed).shuffle(groups)
    chosen: set[str] = set()
    for group in groups:
        if len(chosen) >= eval_fraction * total:
            break
        chosen.update(group)
    return chosen


def assign_split(queries: list[dict], eval_docs: set[str]) -> list[dict]:
    """Set ``split`` on every query: eval when all its documents are held out, train when none is.

    A query straddling both sides would leak; it is dropped and counted by the caller.
    """
    kept = []
    for q in queries:
        held = [d in eval_docs for d in q["doc_ids"]]
        if all(held):
            kept.append({**q, "split": "eval"})
        elif not any(held):
            kept.append({**q, "split": "train"})
    return kept


def leaking_documents(queries: list[dict]) -> set[str]:
    """Documents that hold positives of both a train and an eval query (must be empty)."""
    train = {d for q in queries if q["split"] == "train" for d in q["doc_ids"]}
    held = {d for q in queries if q["split"] == "eval" for d in q["doc_ids"]}
    return train & held


SIDES = ("train", "eval")


class SplitLeakError(ValueError):
    """A document is cited by both a train and an eval query; the message names them."""


def check_no_leak(queries: list[dict]) -> None:
    """Refuse a split in which a train and an eval query share a document.

    Raises:
        SplitLeakError: naming the first leaking document (sorted) and one train and one eval query citing it.

    Example:
        >>> try:
        ...     check_no_leak([{"qid": "a", "doc_ids": ["d1"], "split": "train"},
        ...                    {"qid": "b", "doc_ids": ["d1"], "split": "eval"}])
        ... except SplitLeakError as e:
        ...     print(e)
        split leak: document 'd1' is in train query 'a' and eval query 'b' (1 leaking document in all)
    """
    leaks = sorted(leaking_documents(queries))
    if not leaks:
        return
    doc = leaks[0]
    train, held = (next(q["qid"] for q in queries if q["split"] == side and doc in q["doc_ids"]) for side in SIDES)
    raise SplitLeakError(
        f"split leak: document {doc!r} is in train query {train!r} and eval query {held!r} "
        f"({len(leaks)} leaking document{'s' if len(leaks) > 1 else ''} in all)"
    )
