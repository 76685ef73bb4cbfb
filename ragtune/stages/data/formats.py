"""Labelled data in: ragtune questions, BEIR layout, LlamaIndex's EmbeddingQAFinetuneDataset.

Every importer returns documents (chunked by the caller like any other) and labelled queries whose
relevance is given per document; :func:`attach_chunks` then maps documents to chunk-level graded
relevance. Errors name the file and line. ``ragtune export RUN --format beir|llamaindex``
(:mod:`ragtune.app.export`) writes a finished run's data back out in the two outside formats.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ragtune.stages.data.ingest import Document


def find_normalized_span(text: str, needle: str) -> tuple[int, int] | None:
    """Character span in ``text`` of ``needle``, comparing with all whitespace runs collapsed.

    Example:
        >>> find_normalized_span("a  b\\n c d", "b c")  # the span of "b\\n c"
        (3, 7)
    """
    words = needle.split()
    if not words:
        return None
    # Map every character of the whitespace-normalized text back to its offset in the original.
    norm_chars, offsets, prev_space = [], [], True
    for i, ch in enumerate(text):
        if ch.isspace():
            if not prev_space:
                norm_chars.append(" ")
                offsets.append(i)
            prev_space = True
        else:
            norm_chars.append(ch)
            offsets.append(i)
            prev_space = False
    pos = "".join(norm_chars).find(" ".join(words))
    if pos < 0:
        return None
    end = pos + len(" ".join(words)) - 1
    return offsets[pos], offsets[end] + 1


def json_objects(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    """``("path:line", object)`` for each non-blank line of a JSONL file.

    Raises:
        ValueError: naming ``path:line`` for a line that is not JSON, or not a JSON object.
    """
    try:
        fh = path.open(encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} does not exist") from None
    with fh:
        try:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                where = f"{path}:{lineno}"
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict):
                    raise ValueError(f"{where}: expected a JSON object, got {type(row).__name__}")
                yield where, row
        except UnicodeDecodeError as e:
            raise ValueError(f"{path}: not UTF-8 text (byte {e.start} of a line)") from None


def _string_list(where: str, key: str, value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{where}: {key!r} must be a list of non-empty strings")
    return value


def _question_id(where: str, value: Any) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int) or value == "":
        raise ValueError(f"{where}: 'id' must be a non-empty string or an integer")
    return str(value)


def load_questions(path: Path, doc_ids: set[str]) -> list[dict]:
    """Read hand-labelled questions (JSONL: id, question, doc_ids, answer, optional evidence).

    Ids are compared as strings, so ``1`` and ``"1"`` are the same id (a duplicate).

    Raises:
        ValueError: naming ``path:line`` for a line that is not an object, a missing or mistyped field,
            a duplicate id, or an unknown document.
    """
    seen: set[str] = set()
    questions = []
    for where, row in json_objects(path):
        for key in ("id", "question", "doc_ids"):
            if row.get(key) in (None, "", []):
                raise ValueError(f"{where}: missing field {key!r}")
        qid = _question_id(where, row["id"])
        if not isinstance(row["question"], str):
            raise ValueError(f"{where}: 'question' must be a string")
        cited = _string_list(where, "doc_ids", row["doc_ids"])
        if qid in seen:
            raise ValueError(f"{where}: duplicate question id {qid!r} (ids are compared as strings)")
        seen.add(qid)
        unknown = [d for d in cited if d not in doc_ids]
        if unknown:
            raise ValueError(f"{where}: question {qid!r} cites unknown document(s) {unknown}")
        evidence = row.get("evidence") or []
        if evidence:
            _string_list(where, "evidence", evidence)
        if evidence and len(evidence) != len(cited):
            raise ValueError(f"{where}: evidence must have one entry per doc_id")
        if row.get("answer") is not None and not isinstance(row["answer"], str):
            raise ValueError(f"{where}: 'answer' must be a string")
        questions.append(
            {
                "qid": qid,
                "text": row["question"],
                "doc_relevance": {d: 1 for d in row["doc_ids"]},
                "evidence": dict(zip(row["doc_ids"], evidence, strict=False)),
                "answer": row.get("answer"),
                "origin": "human",
            }
        )
    return questions


def missing_evidence(questions: list[dict], documents: dict[str, str]) -> list[dict[str, str]]:
    """``{"qid", "doc_id", "evidence"}`` for each evidence span not found in its document.

    Such a question still counts every chunk of the document as a positive (no graded oracle); the
    data stage lists them in its report as a warning.

    Example:
        >>> missing_evidence([{"qid": "q", "evidence": {"d": "absent"}}], {"d": "some text"})
        [{'qid': 'q', 'doc_id': 'd', 'evidence': 'absent'}]
    """
    return [
        {"qid": q["qid"], "doc_id": doc_id, "evidence": evidence[:200]}
        for q in questions
        for doc_id, evidence in q.get("evidence", {}).items()
        if evidence and doc_id in documents and find_normalized_span(documents[doc_id], evidence) is None
    ]


def attach_chunks(questions: list[dict], corpus: list[dict], documents: dict[str, str]) -> list[dict]:
    """Turn document-level labels into chunk-level graded relevance (query rows of queries.jsonl).

    A chunk overlapping a question's evidence span gets grade ``2 * doc_grade`` (the oracle);
    other chunks of a cited document get ``doc_grade``. Without evidence every chunk of the cited
    document is an equal positive. ``positives`` lists the top-graded chunks; ``relevance_level`` says
    which labelling the row has: ``chunk`` when some evidence was located, else ``document``.

    Args:
        questions: rows from :func:`load_questions` or an importer (``doc_relevance``, ``evidence``).
        corpus: chunk rows (``id``, ``doc_id``, ``start``, ``end``).
        documents: doc_id -> full document text (to locate evidence spans).
    """
    by_doc: dict[str, list[dict]] = defaultdict(list)
    for chunk in corpus:
        by_doc[chunk["doc_id"]].append(chunk)
    rows = []
    for q in questions:
        relevance: dict[str, int] = {}
        located = False
        for doc_id, grade in q["doc_relevance"].items():
            if grade <= 0:
                continue
            span = None
            evidence = q.get("evidence", {}).get(doc_id)
            if evidence:
                span = find_normalized_span(documents[doc_id], evidence)
            located |= span is not None
            for chunk in by_doc.get(doc_id, []):
                hit = span is not None and chunk["start"] < span[1] and span[0] < chunk["end"]
                relevance[chunk["id"]] = max(relevance.get(chunk["id"], 0), 2 * grade if hit else grade)
        if not relevance:
            continue
        top = max(relevance.values())
        rows.append(
            {
                "qid": q["qid"],
                "text": q["text"],
                "positives": [c for c, g in relevance.items() if g == top],
                "relevance": relevance,
                "relevance_level": "chunk" if located else "document",
                "doc_ids": sorted(q["doc_relevance"]),
                "answer": q.get("answer"),
                "origin": q["origin"],
            }
        )
    return rows


def import_beir(folder: Path, splits: list[str]) -> tuple[list[Document], list[dict]]:
    """Read a BEIR-layout dataset: corpus.jsonl, queries.jsonl, qrels/<split>.tsv (graded).

    Returns:
        (documents, questions) — one document per corpus entry (title + text); queries that have
        qrels become labelled questions with origin ``human`` and no reference answer.
    """
    docs = []
    for where, r in json_objects(folder / "corpus.jsonl"):
        doc_id, text = _beir_fields(where, r)
        title = r.get("title")
        docs.append(
            Document(
                doc_id=doc_id,
                source=f"corpus.jsonl#{doc_id}",
                text=(f"{title}\n\n" if isinstance(title, str) and title else "") + text,
            )
        )
    texts = dict(_beir_fields(where, r) for where, r in json_objects(folder / "queries.jsonl"))
    known = {d.doc_id for d in docs}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for split in splits:
        path = folder / "qrels" / f"{split}.tsv"
        if not path.is_file():
            raise FileNotFoundError(f"data.beir_splits: {path} does not exist")
        with path.open(encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
                if not row or not "".join(row).strip():
                    continue
                if lineno == 1 and not _is_number(row[-1]):
                    continue  # header
                if len(row) < 3:
                    raise ValueError(f"{path}:{lineno}: expected query-id, corpus-id, score")
                qid, doc_id = row[0], row[1]
                try:
                    score = int(row[-1])
                except ValueError:
                    raise ValueError(f"{path}:{lineno}: score {row[-1]!r} is not an integer") from None
                if qid not in texts:
                    raise ValueError(f"{path}:{lineno}: query {qid!r} not in queries.jsonl")
                if doc_id not in known:
                    raise ValueError(f"{path}:{lineno}: document {doc_id!r} not in corpus.jsonl")
                qrels[qid][doc_id] = max(score, qrels[qid].get(doc_id, 0))
    questions = [
        {"qid": qid, "text": texts[qid], "doc_relevance": rel, "evidence": {}, "answer": None, "origin": "human"}
        for qid, rel in qrels.items()
        if any(g > 0 for g in rel.values())
    ]
    return docs, questions


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _beir_fields(where: str, row: dict[str, Any]) -> tuple[str, str]:
    """(``_id`` as a string, ``text``) of a BEIR corpus or queries row; ValueError naming ``where``."""
    if isinstance(row.get("_id"), bool) or not isinstance(row.get("_id"), str | int) or row["_id"] == "":
        raise ValueError(f"{where}: missing '_id' (a string or an integer)")
    if not isinstance(row.get("text"), str):
        raise ValueError(f"{where}: missing 'text' (a string)")
    return str(row["_id"]), row["text"]


def import_llamaindex(path: Path) -> tuple[list[Document], list[dict]]:
    """Read LlamaIndex's EmbeddingQAFinetuneDataset JSON (queries, corpus, relevant_docs, mode).

    Each corpus node becomes a document; its queries keep origin ``synthetic`` (that format is what
    LlamaIndex's ``generate_qa_embedding_pairs`` writes).
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text (byte {e.start})") from None
    for key in ("queries", "corpus", "relevant_docs"):
        if not isinstance(raw, dict) or not isinstance(raw.get(key), dict):
            raise ValueError(f"{path}: missing key {key!r} (not an EmbeddingQAFinetuneDataset)")
    for key in ("queries", "corpus"):
        if bad := [k for k, v in raw[key].items() if not isinstance(v, str)][:3]:
            raise ValueError(f"{path}: {key} {bad} must map to strings")
    if bad := [k for k, v in raw["relevant_docs"].items() if not isinstance(v, list)][:3]:
        raise ValueError(f"{path}: relevant_docs {bad} must map to lists of corpus ids")
    docs = [Document(doc_id=str(k), source=f"{path.name}#{k}", text=v) for k, v in raw["corpus"].items()]
    questions = [
        {
            "qid": str(qid),
            "text": text,
            "doc_relevance": {str(d): 1 for d in raw["relevant_docs"].get(qid, [])},
            "evidence": {},
            "answer": None,
            "origin": "synthetic",
        }
        for qid, text in raw["queries"].items()
        if raw["relevant_docs"].get(qid)
    ]
    return docs, questions
