import numpy as np
import pytest

from ragtune.eval.metrics import (
    Interval,
    abstained,
    bootstrap_mean,
    format_compliance,
    labelled_recall,
    labelled_recall_at_k,
    mean_defined,
    oracle_citation,
    paired_bootstrap,
    parse_judge_score,
    quote_precision,
    relevance_level,
    verdict,
)
from ragtune.pipeline.answer_metrics import exact_match, normalize_answer, token_f1
from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, format_answer


def test_squad_normalisation_exact_match_and_f1_hand_values() -> None:
    assert normalize_answer("The  Heron-router, (v2)!") == "heronrouter v2"
    assert exact_match("An answer.", "answer") == 1.0
    assert exact_match("15 min", ["15 minutes", "fifteen min"]) == 0.0
    assert exact_match("Fifteen min", ["15 minutes", "fifteen min"]) == 1.0
    # p = 2/3, r = 1 -> 2 * (2/3) / (5/3) = 0.8
    assert token_f1("within 15 minutes", "15 minutes") == pytest.approx(0.8)
    # multiset overlap: red x1, blue x1 -> p = r = 2/3
    assert token_f1("red red blue", "red blue blue") == pytest.approx(2 / 3)
    assert token_f1("nothing shared", "15 minutes") == 0.0
    assert token_f1("", "") == 1.0 and token_f1("the", "15 minutes") == 0.0
    assert token_f1("15 minutes", ["no", "15 minutes"]) == 1.0  # best reference wins


def test_quote_metrics_format_and_abstention() -> None:
    context = ["Heron routes orders.\nIt fails over in 15 minutes.", "Tortoise drains queues."]
    # Whitespace and case differences still count; a span across two chunks does not.
    assert quote_precision(["it FAILS over  in 15 minutes."], context) == 1.0
    assert quote_precision(["made up", "Tortoise drains queues."], context) == 0.5
    assert quote_precision(["15 minutes. Tortoise drains"], context) == 0.0
    assert quote_precision([], context) is None
    assert oracle_citation(["fails over in 15"], ["It fails over in 15 minutes."]) == 1.0
    assert oracle_citation(["Tortoise drains queues."], ["It fails over in 15 minutes."]) == 0.0
    assert oracle_citation([], ["anything"]) == 0.0
    good = format_answer("The runbook says", ["It fails over in 15 minutes."], "15 minutes")
    assert format_compliance(good) == 1.0 and format_compliance("15 minutes") == 0.0
    assert abstained(format_answer("Nothing relevant.", [], ABSTAIN_ANSWER)) == 1.0
    assert abstained(good) == 0.0


@pytest.mark.parametrize(
    ("reply", "score"),
    [
        ("Score: 4", 4),
        ("**Score:** 5\nThe answer matches.", 5),
        ("I'd say 3/5 because it is partial.", 3),
        ("2 out of 5", 2),
        ("score=1", 1),
        ("4.5/5", 4),
        ("  3 ", 3),
        ("Score: 7", None),
        ("It is good.", None),
        ("", None),
        (None, None),
    ],
)
def test_judge_score_parsing_is_robust(reply: str | None, score: int | None) -> None:
    assert parse_judge_score(reply) == score


def test_paired_bootstrap_hand_values_pairing_and_seed() -> None:
    # A constant improvement: every resample has the same mean difference.
    iv = paired_bootstrap([0.2, 0.4, 0.6], [0.3, 0.5, 0.7], samples=200, seed=1)
    assert (iv.estimate, iv.low, iv.high, iv.n) == pytest.approx((0.1, 0.1, 0.1, 3))
    # Undefined pairs are dropped on both sides: diffs are [1, 0] -> mean 0.5, interval within [0, 1].
    iv = paired_bootstrap([0.0, None, 1.0, 0.5], [1.0, 1.0, 1.0, None], samples=500, seed=3)
    assert iv.n == 2 and iv.estimate == 0.5 and 0.0 <= iv.low <= 0.5 <= iv.high <= 1.0
    # Same seed, same interval; the percentiles equal a direct numpy computation.
    base, cand = [0, 1, 0, 1, 0, 0, 1, 0], [1, 1, 0, 1, 1, 0, 1, 1]
    a, b = paired_bootstrap(base, cand, 300, seed=7), paired_bootstrap(base, cand, 300, seed=7)
    assert a == b
    diff = np.array(cand) - np.array(base)
    rng = np.random.default_rng(7)
    means = diff[rng.integers(0, 8, size=(300, 8))].mean(axis=1)
    assert (a.low, a.high) == pytest.approx(tuple(np.percentile(means, [2.5, 97.5])))
    assert a.estimate == pytest.approx(3 / 8)
    assert paired_bootstrap([None], [1.0]) is None
    with pytest.raises(ValueError, match="length"):
        paired_bootstrap([1.0], [1.0, 2.0])


def test_bootstrap_mean_mean_defined_and_verdicts() -> None:
    assert bootstrap_mean([0.25, 0.75, None], samples=200).estimate == 0.5
    assert mean_defined([1.0, None, float("nan"), 0.0]) == 0.5 and mean_defined([]) is None
    assert verdict(Interval(0.1, 0.01, 0.2, 30)) == "gained"
    assert verdict(Interval(-0.1, -0.2, -0.01, 30)) == "hurt"
    assert verdict(Interval(0.05, -0.01, 0.1, 30)) == "no significant change"
    assert verdict(Interval(0.1, 0.01, 0.2, 30), higher_is_better=False) == "hurt"
    assert verdict(None) == "not measured"


DOC_OF = {"a1": "a", "a2": "a", "a3": "a", "a4": "a", "b1": "b", "c1": "c"}
EVIDENCE_Q = {"origin": "human", "positives": ["a2"], "relevance": {"a1": 1, "a2": 2, "a3": 1, "a4": 1}}
DOCUMENT_Q = {"origin": "human", "positives": ["a1", "a2", "a3", "a4", "b1"], "relevance": dict.fromkeys(DOC_OF, 1)}
del DOCUMENT_Q["relevance"]["c1"]


def test_recall_is_read_at_the_level_relevance_was_labelled_at() -> None:
    ranked = ["c1", "a3", "b1"]
    # evidence located: only the evidence chunk counts (graded recall over the whole document would be 1/4)
    assert relevance_level(EVIDENCE_Q) == "chunk"
    assert labelled_recall_at_k(ranked, EVIDENCE_Q, DOC_OF, k=3) == 0.0
    assert labelled_recall_at_k(["a2", *ranked], EVIDENCE_Q, DOC_OF, k=3) == 1.0
    # document-level: both cited documents have a chunk in the top 3 (chunk recall would be 2/5)
    assert relevance_level(DOCUMENT_Q) == "document"
    assert labelled_recall_at_k(ranked, DOCUMENT_Q, DOC_OF, k=3) == 1.0
    assert labelled_recall_at_k(ranked, DOCUMENT_Q, DOC_OF, k=2) == 0.5
    # the data stage's record wins over the grades
    assert relevance_level({**DOCUMENT_Q, "relevance_level": "chunk"}) == "chunk"
    synthetic = {"origin": "synthetic", "positives": ["b1"], "relevance": {"b1": 1}}
    one_chunk = {"origin": "human", "positives": ["c1"], "relevance": {"c1": 2}}
    assert relevance_level(synthetic) == "chunk" and relevance_level(one_chunk) == "both"

    summary = labelled_recall([EVIDENCE_Q, DOCUMENT_Q, one_chunk], [ranked] * 3, DOC_OF, k=3)
    assert summary == {"recall": 2 / 3, "k": 3, "level": "mixed", "chunk_queries": 2, "document_queries": 1}
    assert labelled_recall([DOCUMENT_Q, one_chunk], [ranked] * 2, DOC_OF, k=3)["level"] == "document"
    assert labelled_recall([one_chunk, synthetic], [ranked] * 2, DOC_OF, k=3)["level"] == "chunk"
