"""raft.synthetic_qa: question-answer pairs over training chunks, each answer checked to be a span of its chunk."""

import random
from pathlib import Path

from ragtune.pipeline.config import LLMConfig, RagtuneConfig
from ragtune.pipeline.raft_format import normalize, quote_is_verbatim
from ragtune.pipeline.rundir import RunDir
from ragtune.stages.raft.build import synthetic_pairs
from ragtune.stages.raft.qa_pairs import ORIGIN, check_pair, cloze_pair, cloze_reply, parse_pair, write_qa_pairs

SENTENCES = [
    "Heron fails over to the Elmstead site within 5 seconds of a lost heartbeat.",
    "Run `pondctl promote --site elm` only after both approvers have signed the change.",
    "Every replica volume must stay below 80% used before the Millpond promotion starts.",
    "The validation pool runs 24 workers by default and scales up to 64 during a backlog.",
]
CORPUS = [
    {"id": f"c{i}", "doc_id": f"d{i % 4}", "text": f"Owner notes. {SENTENCES[i % 4]} Ask the team lead first."}
    for i in range(12)
]


def test_a_cloze_question_leaves_out_its_answer_which_is_a_span_of_the_sentence() -> None:
    for sentence in SENTENCES:
        for seed in range(5):
            question, answer = cloze_pair(sentence, random.Random(seed))
            assert quote_is_verbatim(answer, sentence) and normalize(answer) not in normalize(question)
            assert question.endswith("?") and "what" in question.lower()
            assert check_pair(question, answer, sentence) is None
    assert cloze_pair("the team reviews the notes and then writes them down again.", random.Random(0)) is None
    assert cloze_reply("| Heron | NQ active | 5 seconds | Heron failover runbook |", random.Random(0)) == ""


def test_llm_replies_are_parsed_and_checked_against_the_chunk() -> None:
    passage = "The grace period is 40 minutes."
    assert parse_pair("I cannot write a question.") is None
    assert parse_pair("Question: How long is the grace period?\nAnswer: ") is None
    assert parse_pair("Question: How long is the grace period?\nAnswer: 40 minutes.") == (
        "How long is the grace period?",
        "40 minutes",
    )
    assert check_pair("How long is the grace period?", "an hour", passage) == "not_span"  # invented
    assert check_pair("Is the grace period 40 minutes?", "40 minutes", passage) == "in_question"
    assert check_pair("How long is it?", "The grace period is 40 minutes", passage) is None
    assert check_pair("Long?", "40", passage) == "question_length"
    copied = "How many times can a library loan be renewed online?"  # the few-shot example, not this passage
    assert check_pair(copied, "40 minutes", passage) == "example_words"


def test_pairs_skip_excluded_documents_count_every_chunk_and_are_seeded(tmp_path: Path) -> None:
    writer = LLMConfig(provider="extractive")
    rows, report = write_qa_pairs(writer, CORPUS, {"d0"}, 100, seed=3, cache_dir=tmp_path / "a")
    assert report["writer"] == "cloze" and report["chunks"] == 9  # every chunk outside d0
    assert report["kept"] == len(rows) > 0 and report["kept"] + sum(report["dropped"].values()) == 9
    texts = {c["id"]: c["text"] for c in CORPUS}
    for row in rows:
        assert row["doc_ids"] != ["d0"] and row["split"] == "train" and row["origin"] == ORIGIN
        assert check_pair(row["text"], row["answer"], texts[row["positives"][0]]) is None
    again, _ = write_qa_pairs(writer, CORPUS, {"d0"}, 100, seed=3, cache_dir=tmp_path / "b")
    assert again == rows
    fewer, report = write_qa_pairs(writer, CORPUS, set(), 4, seed=3, cache_dir=tmp_path / "c")
    assert report["chunks"] == 4 and len(fewer) <= 4


def test_the_build_keeps_eval_and_dev_documents_out_of_the_pairs(tmp_path: Path) -> None:
    queries = [
        {"qid": "e", "split": "eval", "doc_ids": ["d0"], "positives": ["c0"]},
        {"qid": "dev", "split": "train", "doc_ids": ["d1"], "positives": ["c1"], "dev_rank": {"d1": 0.1}},
        {"qid": "t2", "split": "train", "doc_ids": ["d2"], "positives": ["c2"], "dev_rank": {"d2": 0.6}},
        {"qid": "t3", "split": "train", "doc_ids": ["d3"], "positives": ["c3"], "dev_rank": {"d3": 0.9}},
    ]
    run = RunDir(tmp_path / "run")
    cfg = RagtuneConfig(run={"name": "x"}, data={"docs": "d"}, raft={"synthetic_qa": 100, "dev_fraction": 0.3})
    rows, report = synthetic_pairs(cfg, run, CORPUS, queries)
    assert rows and {d for r in rows for d in r["doc_ids"]} <= {"d2", "d3"} and report["chunks"] == 6
    off = RagtuneConfig(run={"name": "x"}, data={"docs": "d"})
    assert synthetic_pairs(off, run, CORPUS, queries) == ([], None)
