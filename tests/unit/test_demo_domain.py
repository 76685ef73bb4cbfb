"""The bundled demo domain loads through the data stage and its questions are answerable."""

from pathlib import Path

import pytest

from ragtune.pipeline.rundir import read_jsonl
from ragtune.stages.data.formats import find_normalized_span, load_questions
from ragtune.stages.data.ingest import normalize_whitespace, read_documents

DEMO = Path(__file__).parents[2] / "data" / "demo"


@pytest.fixture(scope="module")
def demo_docs() -> dict[str, str]:
    docs, report = read_documents(DEMO / "docs", [".txt", ".md", ".html", ".pdf", ".json", ".jsonl"], "text")
    assert report["skipped"] == [] and report["duplicates"] == []
    return {d.doc_id: d.text for d in docs}


def test_demo_corpus_size_and_formats(demo_docs: dict[str, str]) -> None:
    assert len(demo_docs) >= 60
    assert sum(len(t.split()) for t in demo_docs.values()) >= 40_000
    suffixes = {Path(d).suffix for d in demo_docs}
    assert {".md", ".txt", ".html", ".pdf"} <= suffixes
    assert sum(d.endswith(".pdf") for d in demo_docs) >= 3


def test_every_question_cites_existing_documents(demo_docs: dict[str, str]) -> None:
    questions = load_questions(DEMO / "eval" / "questions.jsonl", set(demo_docs))  # raises on unknown ids
    assert len(questions) >= 80
    assert all(q["answer"] for q in questions)


def test_every_answer_is_stated_in_its_document(demo_docs: dict[str, str]) -> None:
    missing = []
    for row in read_jsonl(DEMO / "eval" / "questions.jsonl"):
        cited = normalize_whitespace(" ".join(demo_docs[d] for d in row["doc_ids"])).casefold()
        missing += [(row["id"], t) for t in row["key_terms"] if normalize_whitespace(t).casefold() not in cited]
        for doc_id, evidence in zip(row["doc_ids"], row["evidence"], strict=True):
            if find_normalized_span(demo_docs[doc_id], evidence) is None:
                missing.append((row["id"], evidence[:40]))
    assert missing == []
