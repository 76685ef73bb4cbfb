from ragtune.pipeline.raft_format import (
    ABSTAIN_ANSWER,
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
