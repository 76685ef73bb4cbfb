"""RAFT teacher: sentence split, quote verification and repair, no-oracle targets, extractive answers."""

from ragtune.pipeline.extractive import split_sentences
from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, format_answer, parse_answer, quote_is_verbatim
from ragtune.stages.raft.teacher import (
    MEMORY_REASON,
    best_matching_sentence,
    build_teacher_messages,
    extractive_answers,
    no_oracle_target,
    verify_and_repair,
)

ORACLE = (
    "# Tortoise drain runbook\n\nDraining Tortoise means letting every\nqueued batch finish. "
    "The grace period is 40 minutes by default.\n- Never drain during the settlement window."
)


class FakeCrossEncoder:
    """Scores a pair by how many words the sentence shares with the query; records every call."""

    def __init__(self) -> None:
        self.calls: list[list[tuple[str, str]]] = []

    def predict(self, pairs, batch_size=64, show_progress_bar=False):
        self.calls.append(list(pairs))
        return [len(set(q.lower().split()) & set(s.lower().split())) for q, s in pairs]


def test_split_sentences_keeps_wrapped_sentences_whole() -> None:
    assert split_sentences(ORACLE) == [
        "# Tortoise drain runbook",
        "Draining Tortoise means letting every queued batch finish.",
        "The grace period is 40 minutes by default.",
        "- Never drain during the settlement window.",
    ]
    assert all(quote_is_verbatim(s, ORACLE) for s in split_sentences(ORACLE))


def test_valid_answer_is_kept_unchanged() -> None:
    answer = format_answer("It says", ["The grace period is 40 minutes\nby default."], "40 minutes")
    assert verify_and_repair(answer, ["other chunk", ORACLE]) == (answer, "valid")


def test_a_teacher_that_goes_on_past_its_answer_is_cut_to_its_first_answer() -> None:
    answer = format_answer("It says", ["The grace period is 40 minutes\nby default."], "40 minutes")
    continued = answer + "\n##Reason: ##begin_quote##made up##end_quote##\n##Answer: 50 minutes"
    assert verify_and_repair(continued, [ORACLE]) == (answer, "valid")


def test_bad_quote_is_dropped_and_good_one_kept() -> None:
    answer = (
        "##Reason: First ##begin_quote##The grace period is 40 minutes by default.##end_quote## and "
        "##begin_quote##The grace period is 50 minutes.##end_quote## so.\n##Answer: 40 minutes"
    )
    target, status = verify_and_repair(answer, [ORACLE])
    assert status == "repaired"
    assert target == (
        "##Reason: First ##begin_quote##The grace period is 40 minutes by default.##end_quote## and so.\n"
        "##Answer: 40 minutes"
    )


def test_no_valid_quote_is_replaced_by_best_matching_oracle_sentence() -> None:
    for reason in ("##Reason: ##begin_quote##made up##end_quote## so", "##Reason: no quote at all"):
        target, status = verify_and_repair(f"{reason}\n##Answer: the grace period is 40 minutes", [ORACLE])
        assert status == "replaced"
        parsed = parse_answer(target)
        assert parsed.quotes == ["The grace period is 40 minutes by default."]
        assert parsed.answer == "the grace period is 40 minutes" and "made up" not in target


def test_malformed_answers_are_rejected() -> None:
    for text in ("40 minutes", "##Answer: 40 minutes", "##Reason: because\n##Answer:   "):
        assert verify_and_repair(text, [ORACLE]) == (None, "malformed")


def test_best_matching_sentence_prefers_overlap_then_earliest_long_sentence() -> None:
    assert best_matching_sentence("settlement window", [ORACLE]) == "- Never drain during the settlement window."
    assert best_matching_sentence("zzz", [ORACLE]) == "Draining Tortoise means letting every queued batch finish."


def test_no_oracle_targets() -> None:
    abstain = parse_answer(no_oracle_target(None, "abstain"))
    assert abstain.well_formed and abstain.answer == ABSTAIN_ANSWER and abstain.abstained and not abstain.quotes
    teacher = format_answer("x", ["The grace period is 40 minutes by default."], "40 minutes")
    memory = parse_answer(no_oracle_target(teacher, "memory"))
    assert memory.answer == "40 minutes" and not memory.quotes and memory.reason == MEMORY_REASON
    assert no_oracle_target(None, "memory") is None and no_oracle_target("junk", "memory") is None


def test_teacher_prompt_shows_question_oracle_and_reference() -> None:
    messages = build_teacher_messages("grace period?", [ORACLE], "40 minutes")
    assert [m["role"] for m in messages] == ["system", "user"]
    assert "grace period?" in messages[1]["content"] and "Reference answer: 40 minutes" in messages[1]["content"]
    assert "queued batch finish" in messages[1]["content"]
    assert "Reference answer" not in build_teacher_messages("q", [ORACLE], None)[1]["content"]


def test_extractive_answers_quote_top_scored_sentences_in_one_batched_call() -> None:
    ce = FakeCrossEncoder()
    answers = extractive_answers(
        ce,
        ["what is the grace period by default", "when to never drain"],
        [[ORACLE], [ORACLE]],
        ["40 minutes", None],
        quote_sentences=2,
    )
    assert len(ce.calls) == 1 and len(ce.calls[0]) == 2 * 3  # headings (< 4 words) are not quotable
    first, second = (parse_answer(a) for a in answers)
    # The two best-scored sentences (5 and 1 shared words; the unrelated one scores 0), in document order.
    assert first.quotes == [
        "The grace period is 40 minutes by default.",
        "- Never drain during the settlement window.",
    ]
    assert first.answer == "40 minutes"
    assert second.answer == "- Never drain during the settlement window."  # no reference: the top sentence
    for answer in answers:
        assert verify_and_repair(answer, [ORACLE]) == (answer, "valid")
