import json
from pathlib import Path

import pytest

from stages.data.formats import (
    attach_chunks,
    export_llamaindex,
    find_normalized_span,
    import_beir,
    import_llamaindex,
    load_questions,
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
    assert row["positives"] == ["c2"] and row["doc_ids"] == ["d"]
    [row] = attach_chunks([{**q, "evidence": {}}], corpus, {"d": doc, "other": "0123456789"})
    assert row["relevance"] == {"c1": 1, "c2": 1, "c3": 1} and row["positives"] == ["c1", "c2", "c3"]


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
