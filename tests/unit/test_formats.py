import json
from pathlib import Path

import pytest

from ragtune.app.export import export_llamaindex
from ragtune.stages.data.formats import (
    attach_chunks,
    find_normalized_span,
    import_beir,
    import_llamaindex,
    load_questions,
    missing_evidence,
)


def test_find_normalized_span_maps_back_to_original_offsets() -> None:
    text = "Intro.\n\nThe  grace period\n is 40 minutes by default. Tail."
    start, end = find_normalized_span(text, "The grace period is 40 minutes by default.")
    assert text[start:end] == "The  grace period\n is 40 minutes by default."
    assert find_normalized_span(text, "not there") is None
    assert find_normalized_span(text, "   ") is None


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_questions_errors_name_file_and_line(tmp_path: Path) -> None:
    good = {"id": "a", "question": "q?", "doc_ids": ["d1"], "answer": "x"}
    path = _write(tmp_path / "q.jsonl", [good, {**good, "id": "b", "doc_ids": ["ghost"]}])
    with pytest.raises(ValueError, match=r"q\.jsonl:2: .*unknown document.*ghost"):
        load_questions(path, {"d1"})
    path = _write(tmp_path / "q.jsonl", [good, good])
    with pytest.raises(ValueError, match=r"q\.jsonl:2: duplicate question id"):
        load_questions(path, {"d1"})
    path = _write(tmp_path / "q.jsonl", [{"id": "a", "doc_ids": ["d1"]}])
    with pytest.raises(ValueError, match=r"q\.jsonl:1: missing field 'question'"):
        load_questions(path, {"d1"})
    path.write_text('{"id": "a"\n')
    with pytest.raises(ValueError, match=r"q\.jsonl:1: not valid JSON"):
        load_questions(path, {"d1"})


def test_attach_chunks_grades_the_evidence_chunk_highest() -> None:
    doc = "First part about berths. " * 3 + "The grace period is 40 minutes. " + "Closing words here. " * 3
    corpus = [
        {"id": "c1", "doc_id": "d", "start": 0, "end": 75},
        {"id": "c2", "doc_id": "d", "start": 60, "end": 120},
        {"id": "c3", "doc_id": "d", "start": 110, "end": len(doc)},
        {"id": "x", "doc_id": "other", "start": 0, "end": 10},
    ]
    q = {
        "qid": "q",
        "text": "grace?",
        "doc_relevance": {"d": 1},
        "evidence": {"d": "grace period is 40 minutes."},
        "answer": "40",
        "origin": "human",
    }
    [row] = attach_chunks([q], corpus, {"d": doc, "other": "0123456789"})
    assert row["relevance"] == {"c1": 1, "c2": 2, "c3": 1}
    assert row["positives"] == ["c2"] and row["doc_ids"] == ["d"] and row["relevance_level"] == "chunk"
    [row] = attach_chunks([{**q, "evidence": {}}], corpus, {"d": doc, "other": "0123456789"})
    assert row["relevance"] == {"c1": 1, "c2": 1, "c3": 1} and row["positives"] == ["c1", "c2", "c3"]
    assert row["relevance_level"] == "document"


def test_import_beir_with_graded_qrels(tmp_path: Path) -> None:
    _write(
        tmp_path / "corpus.jsonl",
        [{"_id": "d1", "title": "Heron", "text": "routes orders"}, {"_id": "d2", "title": "", "text": "queue"}],
    )
    _write(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "what routes orders"}, {"_id": "q2", "text": "x"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\td2\t1\nq2\td2\t0\n")
    docs, questions = import_beir(tmp_path, ["test"])
    assert [d.text for d in docs] == ["Heron\n\nroutes orders", "queue"]
    assert questions == [
        {
            "qid": "q1",
            "text": "what routes orders",
            "doc_relevance": {"d1": 2, "d2": 1},
            "evidence": {},
            "answer": None,
            "origin": "human",
        }
    ]
    (tmp_path / "qrels" / "test.tsv").write_text("q1\tghost\t1\n")
    with pytest.raises(ValueError, match=r"test\.tsv:1: document 'ghost'"):
        import_beir(tmp_path, ["test"])


def test_llamaindex_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "li.json"
    path.write_text(
        json.dumps(
            {
                "queries": {"q1": "what is heron"},
                "corpus": {"n1": "Heron routes.", "n2": "x"},
                "relevant_docs": {"q1": ["n1"]},
                "mode": "text",
            }
        )
    )
    docs, questions = import_llamaindex(path)
    assert [d.doc_id for d in docs] == ["n1", "n2"]
    assert questions[0]["doc_relevance"] == {"n1": 1} and questions[0]["origin"] == "synthetic"
    corpus = [{"id": "c1", "doc_id": "n1", "text": "Heron routes."}]
    queries = [
        {"qid": "q1", "text": "what is heron", "positives": ["c1"], "split": "train"},
        {"qid": "q2", "text": "held out", "positives": ["c1"], "split": "eval"},
    ]
    export_llamaindex(tmp_path / "out.json", queries, corpus, "train")
    out = json.loads((tmp_path / "out.json").read_text())
    assert out == {
        "queries": {"q1": "what is heron"},
        "corpus": {"c1": "Heron routes."},
        "relevant_docs": {"q1": ["c1"]},
        "mode": "text",
    }
    (tmp_path / "bad.json").write_text('{"queries": {}}')
    with pytest.raises(ValueError, match="missing key 'corpus'"):
        import_llamaindex(tmp_path / "bad.json")


GOOD = {"id": "a", "question": "q?", "doc_ids": ["d1"], "answer": "x"}


@pytest.mark.parametrize(
    ("second_line", "message"),
    [
        ('["a list", "not an object"]', r"q\.jsonl:2: expected a JSON object, got list"),
        ("7", r"q\.jsonl:2: expected a JSON object, got int"),
        (
            json.dumps({**GOOD, "id": "b", "doc_ids": "d1"}),
            r"q\.jsonl:2: 'doc_ids' must be a list of non-empty strings",
        ),
        (json.dumps({**GOOD, "id": "b", "doc_ids": [1]}), r"q\.jsonl:2: 'doc_ids' must be a list"),
        (json.dumps({**GOOD, "id": 7, "question": ["q"]}), r"q\.jsonl:2: 'question' must be a string"),
        (json.dumps({**GOOD, "id": True}), r"q\.jsonl:2: 'id' must be a non-empty string or an integer"),
        (json.dumps({**GOOD, "id": "b", "evidence": [3]}), r"q\.jsonl:2: 'evidence' must be a list"),
    ],
)
def test_mistyped_question_lines_are_errors_naming_file_and_line(tmp_path: Path, second_line: str, message: str):
    path = tmp_path / "q.jsonl"
    path.write_text(json.dumps(GOOD) + "\n" + second_line + "\n")
    with pytest.raises(ValueError, match=message):
        load_questions(path, {"d1"})


def test_numeric_and_string_ids_that_collide_are_duplicates(tmp_path: Path) -> None:
    path = _write(tmp_path / "q.jsonl", [{**GOOD, "id": 1}, {**GOOD, "id": "1"}])
    with pytest.raises(ValueError, match=r"q\.jsonl:2: duplicate question id '1'"):
        load_questions(path, {"d1"})


def test_evidence_not_found_in_its_document_is_listed() -> None:
    questions = [
        {"qid": "a", "evidence": {"d1": "Heron  routes\norders"}},
        {"qid": "b", "evidence": {"d1": "a sentence that is not there"}},
    ]
    assert missing_evidence(questions, {"d1": "Heron routes orders to berths."}) == [
        {"qid": "b", "doc_id": "d1", "evidence": "a sentence that is not there"}
    ]


@pytest.mark.parametrize(
    ("file", "content", "message"),
    [
        (
            "corpus.jsonl",
            '{"_id": "d1", "text": "x"}\n{"title": "no id", "text": "y"}\n',
            r"corpus\.jsonl:2: missing '_id'",
        ),
        ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n{"_id": "d2"}\n', r"corpus\.jsonl:2: missing 'text'"),
        ("queries.jsonl", '{"_id": "q1"}\n', r"queries\.jsonl:1: missing 'text'"),
        ("corpus.jsonl", '{"_id": "d1", "text": "x"}\n[1]\n', r"corpus\.jsonl:2: expected a JSON object"),
        (
            "qrels/test.tsv",
            "query-id\tcorpus-id\tscore\nq1\td1\thigh\n",
            r"test\.tsv:2: score 'high' is not an integer",
        ),
        ("qrels/test.tsv", "q1\td1\t1.5\n", r"test\.tsv:1: score '1.5' is not an integer"),
    ],
)
def test_bad_beir_rows_are_errors_naming_file_and_line(tmp_path: Path, file: str, content: str, message: str):
    _write(tmp_path / "corpus.jsonl", [{"_id": "d1", "text": "x"}])
    _write(tmp_path / "queries.jsonl", [{"_id": "q1", "text": "what"}])
    (tmp_path / "qrels").mkdir()
    (tmp_path / "qrels" / "test.tsv").write_text("q1\td1\t1\n\n")  # a blank last line is fine
    assert import_beir(tmp_path, ["test"])[1][0]["doc_relevance"] == {"d1": 1}
    (tmp_path / file).write_text(content)
    with pytest.raises(ValueError, match=message):
        import_beir(tmp_path, ["test"])
