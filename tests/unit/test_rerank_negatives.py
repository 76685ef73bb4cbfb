"""False-negative rules, candidate filtering and negative sampling (ragtune/stages/rerank/negatives.py)."""

import random

import pytest

from ragtune.stages.rerank.negatives import (
    RULES,
    choose_negatives,
    drop_reason,
    exceeds_max_score,
    filter_candidates,
    is_labelled_positive,
    shares_source_span,
    spans_overlap,
    within_relative_margin,
)


def chunk(cid: str, doc: str, start: int, end: int) -> dict:
    return {"id": cid, "doc_id": doc, "start": start, "end": end, "text": cid}


def test_labelled_positive_means_any_grade_above_zero() -> None:
    relevance = {"a": 2, "b": 1, "z": 0}
    assert is_labelled_positive("a", relevance) and is_labelled_positive("b", relevance)
    assert not is_labelled_positive("z", relevance) and not is_labelled_positive("other", relevance)


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ((0, 100), (90, 200), True),  # chunk overlap: the neighbour repeats the positive's tail
        ((0, 100), (100, 200), False),  # only touching: half-open spans
        ((50, 60), (0, 200), True),  # contained
        ((300, 400), (0, 200), False),
    ],
)
def test_spans_overlap_in_same_document(a: tuple, b: tuple, expected: bool) -> None:
    assert spans_overlap(chunk("x", "d", *a), chunk("y", "d", *b)) is expected
    assert spans_overlap(chunk("x", "d", *b), chunk("y", "d", *a)) is expected


def test_spans_in_different_documents_never_overlap() -> None:
    assert not spans_overlap(chunk("x", "d", 0, 100), chunk("y", "e", 0, 100))
    assert shares_source_span(chunk("n", "d", 80, 180), [chunk("p", "e", 0, 100), chunk("q", "d", 0, 100)])
    assert not shares_source_span(chunk("n", "d", 80, 180), [chunk("p", "e", 0, 100)])


def test_score_rules() -> None:
    assert exceeds_max_score(0.91, 0.9) and not exceeds_max_score(0.9, 0.9) and not exceeds_max_score(5.0, None)
    # threshold = 0.8 - 0.8 * 0.05 = 0.76
    assert within_relative_margin(0.77, 0.8, 0.05) and not within_relative_margin(0.75, 0.8, 0.05)
    # a negative positive score: the threshold (-0.525) stays below the positive; (1 - margin) x positive
    # would put it at -0.475, above the positive (sentence-transformers #3819)
    assert within_relative_margin(-0.49, -0.5, 0.05) and within_relative_margin(-0.52, -0.5, 0.05)
    assert not within_relative_margin(-0.53, -0.5, 0.05)
    assert not within_relative_margin(0.99, 0.8, None)


def test_drop_reason_checks_rules_in_order() -> None:
    pos = chunk("p", "d", 0, 100)
    weak = chunk("w", "e", 0, 100)  # another chunk of a cited document, grade 1
    relevance = {"p": 2, "w": 1}
    labelled = [pos, weak]
    args = (relevance, labelled, 0.8, 0.7, 0.05)
    assert drop_reason([weak], 0.99, *args) == "labelled_positive"
    assert drop_reason([chunk("n", "d", 90, 190)], 0.99, *args) == "same_source_span"
    assert drop_reason([chunk("n", "f", 0, 100)], 0.75, *args) == "max_score"
    assert drop_reason([chunk("n", "f", 0, 100)], 0.69, relevance, labelled, 0.7, None, 0.05) == "relative_margin"
    assert drop_reason([chunk("n", "f", 0, 100)], 0.3, *args) is None
    # a duplicate text: one copy is the positive, so the text is an answer whatever the other copy is
    assert drop_reason([chunk("n", "f", 0, 100), pos], 0.3, *args) == "labelled_positive"


def test_filter_candidates_counts_every_rule_and_keeps_order() -> None:
    pos = chunk("p", "d", 0, 100)
    ranked = [
        ([chunk("w", "e", 0, 100)], 0.95),  # labelled grade 1
        ([chunk("s", "d", 95, 200)], 0.9),  # overlaps the positive's span
        ([chunk("h", "f", 0, 100)], 0.85),  # above max_score
        ([chunk("m", "f", 100, 200)], 0.79),  # within 5% of the positive (threshold 0.76)
        ([chunk("k1", "g", 0, 100)], 0.6),
        ([chunk("k2", "h", 0, 100)], 0.5),
    ]
    kept, dropped = filter_candidates(ranked, {"p": 2, "w": 1}, [pos, chunk("w", "e", 0, 100)], 0.8, 0.82, 0.05)
    assert [(c["id"], s) for c, s in kept] == [("k1", 0.6), ("k2", 0.5)]
    assert dict(dropped) == dict.fromkeys(RULES, 1)


def test_choose_negatives_top_and_seeded_random() -> None:
    kept = [(f"c{i}", 1.0 - i / 10) for i in range(6)]
    assert choose_negatives(kept, 2, "top", random.Random(0)) == kept[:2]
    drawn = choose_negatives(kept, 3, "random", random.Random(1))
    assert drawn == choose_negatives(kept, 3, "random", random.Random(1))
    assert len(drawn) == 3 and [s for _, s in drawn] == sorted((s for _, s in drawn), reverse=True)
    assert set(drawn) <= set(kept)
    assert choose_negatives(kept[:2], 5, "random", random.Random(0)) == kept[:2]
