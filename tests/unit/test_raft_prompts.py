import itertools

import pytest

from ragtune.pipeline.raft_format import (
    ABSTAIN_ANSWER,
    answer_settled,
    answer_so_far,
    build_messages,
    format_answer,
    parse_answer,
    quote_is_verbatim,
)


def test_answer_round_trips_through_the_parser() -> None:
    text = format_answer("The runbook says", ["Grace is 40 minutes.", "Never at 01:00."], "40 minutes")
    parsed = parse_answer(text)
    assert parsed.well_formed
    assert parsed.quotes == ["Grace is 40 minutes.", "Never at 01:00."]
    assert parsed.answer == "40 minutes" and not parsed.abstained
    assert parsed.reason.startswith("The runbook says")


def test_parser_tolerates_malformed_generations() -> None:
    assert parse_answer("just some text").well_formed is False
    assert parse_answer("just some text").answer == ""
    p = parse_answer("##Answer: x ##Reason: late")
    assert not p.well_formed
    assert parse_answer(f"##Reason: none ##Answer: {ABSTAIN_ANSWER}").abstained


# Generations of the demo's tuned generator that went on past their final answer (guided: the quote written in).
CONTINUED = [
    (
        "14 days.##\n##Reason: ##begin_quote##Rejected readings stay 14 days.##end_quote##\n##Answer: 14 days.",
        "14 days.",
    ),
    (
        "Yes, unless a TTL window is active.##reason: ##begin_quote##-##end_quote##",
        "Yes, unless a TTL window is active.",
    ),
    ("lantern_intake_pending##", "lantern_intake_pending"),
    (
        "Monday 10:00 | Tuesday 11:00 |##\n##Reason: Handover is on Monday.\n##Answer: Monday 10:00",
        "Monday 10:00 | Tuesday 11:00 |",
    ),
    ("C# 12 ships it.", "C# 12 ships it."),  # a '#' that begins no tag stays
]


@pytest.mark.parametrize(("completion", "answer"), CONTINUED)
def test_the_answer_ends_where_a_second_round_of_the_format_begins(completion: str, answer: str) -> None:
    text = "##Reason: ##begin_quote##The first quote.##end_quote##\n##Answer: " + completion
    parsed = parse_answer(text)
    assert parsed.answer == answer and parsed.quotes == ["The first quote."] and parsed.well_formed
    # The streamed answer grows by appending and ends at the same answer: what the server sends is what eval scores.
    shown = [answer_so_far(text[:n]) for n in range(len(text) + 1)]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
    assert shown[-1] == answer


@pytest.mark.parametrize(("completion", "answer"), CONTINUED)
def test_a_generation_stopped_once_its_answer_is_settled_parses_as_the_whole(completion: str, answer: str) -> None:
    # Eval and the RAFT dev check stop each completion at the first point answer_settled holds: every score must
    # read the same there as on the completion the generator would have gone on to write.
    prefill = "##Reason: ##begin_quote##The first quote.##end_quote##\n##Answer:"
    whole = parse_answer(prefill + " " + completion)
    for free in (True, False):
        text = prefill + " " + completion if free else " " + completion
        stop = next((n for n in range(len(text) + 1) if answer_settled(text[:n], prefilled=not free)), None)
        # it stops only where the generator began a second round (a '##' alone may still become a tag, or not)
        assert (stop is not None) == ("reason:" in completion.casefold())
        stopped = text[:stop] if free else prefill + text[:stop]
        assert parse_answer(stopped) == whole


def test_quote_check_normalises_whitespace_only() -> None:
    ctx = "The grace  period\nis 40 minutes by default."
    assert quote_is_verbatim("grace period is 40 minutes", ctx)
    assert not quote_is_verbatim("grace period was 40 minutes", ctx)
    assert not quote_is_verbatim("  ", ctx)


def test_messages_number_the_chunks() -> None:
    msgs = build_messages("What is Heron?", ["Heron routes.", "Tortoise queues."])
    assert [m["role"] for m in msgs] == ["system", "user"]
    assert '<document index="2">\nTortoise queues.\n</document>' in msgs[1]["content"]
    assert msgs[1]["content"].endswith("Question: What is Heron?")
