"""scripts/raft_curve.py: one checkpoint's dev figures, and the copied stages a recipe builds on."""

from pathlib import Path

import pytest

from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, format_answer


@pytest.fixture(scope="module")
def curve(load_script):
    return load_script("raft_curve")


def test_dev_figures_of_one_checkpoint(curve) -> None:
    rows = [{"answer": "40 minutes"}, {"answer": "two approvers"}, {"answer": "4 hours"}]
    contexts = [["The grace period is 40 minutes."], ["Two approvers sign."], ["Silence for 4 hours."]]
    positives = [["The grace period is 40 minutes."], ["Two approvers sign."], ["Silence for 4 hours."]]
    answers = [
        format_answer("", ["The grace period is 40 minutes."], "40 minutes"),  # right, quotes the oracle
        format_answer("", ["Two approvers sign.", "made up"], "two"),  # half its quotes verbatim
        f"##Answer: {ABSTAIN_ANSWER}",  # no ##Reason: not well formed, abstains, quotes nothing
    ]
    figures = curve.score_dev(answers, rows, contexts, positives)
    assert figures["f1"] == pytest.approx((1.0 + 2 / 3 + 0.0) / 3)
    assert figures["format"] == pytest.approx(2 / 3)
    assert figures["quote_precision"] == pytest.approx((1.0 + 0.5) / 2)  # over the answers that quote
    assert figures["oracle_citation"] == pytest.approx(2 / 3)
    assert figures["abstain"] == pytest.approx(1 / 3)
    assert figures["answer_words"] == pytest.approx((2 + 1 + 8) / 3)  # the final answers' words


def test_guided_answers_prefill_the_extractive_quote_and_score_the_final_answer(curve) -> None:
    quote = format_answer("", ["The grace period is 40 minutes."], "The grace period is 40 minutes.")
    row = {"prompt": [{"role": "user", "content": "grace period?"}], "extractive": quote, "answer": "40 minutes"}
    prefilled = curve.guided(row)
    assert prefilled[:-1] == row["prompt"] and prefilled[-1]["role"] == "assistant"
    prefill = "##Reason: ##begin_quote##The grace period is 40 minutes.##end_quote##\n##Answer:"
    assert prefilled[-1]["content"] == prefill
    figures = curve.guided_scores([" 40 minutes", "40 minutes, in all ##Answer: more"], [row, row])
    # read as eval reads a whole answer: its final answer ends where a second round of the format begins
    assert figures["guided_f1"] == pytest.approx((1.0 + 2 / 3) / 2)
    assert figures["guided_answer_words"] == pytest.approx((2 + 4) / 2)
    assert curve.guided_scores([], [row]) == {}


def test_the_finished_stages_are_copied_once(curve, tmp_path: Path) -> None:
    source, target = tmp_path / "demo", tmp_path / "curve"
    (source / "data").mkdir(parents=True)
    (source / "data/corpus.jsonl").write_text("{}\n")
    (source / "raft").mkdir()
    (source / "manifest.json").write_text("{}")
    curve.copy_stages(source, target)
    assert (target / "data/corpus.jsonl").read_text() == "{}\n"
    assert (target / "manifest.json").exists() and not (target / "raft").exists()  # RAFT is the recipe's own
    (target / "data/corpus.jsonl").write_text("changed")
    curve.copy_stages(source, target)  # a later call reuses the directory
    assert (target / "data/corpus.jsonl").read_text() == "changed"
