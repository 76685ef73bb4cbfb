"""Labelled data in and out: ragtune questions, BEIR layout, LlamaIndex's EmbeddingQAFinetuneDataset.

Every importer returns documents (chunked by the caller like any other) and labelled queries whose
relevance is given per document; :func:`attach_chunks` then maps documents to chunk-level graded
relevance. Errors name the file and line.
"""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

from pipeline.rundir import atomic_write_text, read_jsonl
from stages.data.ingest import Document


def find_normalized_span(text: str, needle: str) -> tuple[int, int] | None:
    """Character span in ``text`` of ``needle``, comparing with all whitespace runs collapsed.

    Example:
        >>> find_normalized_span("a  b\\n c d", "b c")
        (3, 8)
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


def load_questions(path: Path, doc_ids: set[str]) -> list[dict]:
    """Read hand-labelled questions (JSONL: id, question, doc_ids, answer, optional evidence).

    Raises:
        ValueError: naming ``path:line`` for a missing field, duplicate id, or unknown document.
    """
    rows = read_jsonl(path)
    seen: set[str] = set()
    questions = []
    with path.open(encoding="utf-8") as fh:
        line_numbers = [n for n, line in enumerate(fh, 1) if line.strip()]
    for lineno, row in zip(line_numbers, rows, strict=True):
        where = f"{path}:{lineno}"
        for key in ("id", "question", "doc_ids"):
            if not row.get(key):
                raise ValueError(f"{where}: missing field {key!r}")
        if row["id"] in seen:
            raise ValueError(f"{where}: duplicate question id {row['id']!r}")
        seen.add(row["id"])
        unknown = [d for d in row["doc_ids"] if d not in doc_ids]
        if unknown:
            raise ValueError(f"{where}: question {row['id']!r} cites unknown document(s) {unknown}")
        evidence = row.get("evidence") or []
        if evidence and len(evidence) != len(row["doc_ids"]):
            raise ValueError(f"{where}: evidence must have one entry per doc_id")
        questions.append(
            {
                "qid": str(row["id"]),
                "text": row["question"],
                "doc_relevance": {d: 1 for d in row["doc_ids"]},
                "evidence": dict(zip(row["doc_ids"], evidence, strict=False)),
                "answer": row.get("answer"),
                "origin": "human",
            }
        )
    return questions


def attach_chunks(questions: list[dict], corpus: list[dict], documents: dict[str, str]) -> list[dict]:
    """Turn document-level labels into chunk-level graded relevance (query rows of queries.jsonl).

    A chunk overlapping a question's evidence span gets grade ``2 * doc_grade`` (the oracle);
    other chunks of a cited document get ``doc_grade``. Without evidence every chunk of the cited
    document is an equal positive. ``positives`` lists the top-graded chunks.

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
        for doc_id, grade in q["doc_relevance"].items():
            if grade <= 0:
                continue
            span = None
            evidence = q.get("evidence", {}).get(doc_id)
            if evidence:
                span = find_normalized_span(documents[doc_id], evidence)
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
    docs = [
        Document(
            doc_id=str(r["_id"]),
            source=f"corpus.jsonl#{r['_id']}",
            text=(f"{r['title']}\n\n" if r.get("title") else "") + r.get("text", ""),
        )
        for r in read_jsonl(folder / "corpus.jsonl")
    ]
    texts = {str(r["_id"]): r["text"] for r in read_jsonl(folder / "queries.jsonl")}
    known = {d.doc_id for d in docs}
    qrels: dict[str, dict[str, int]] = defaultdict(dict)
    for split in splits:
        path = folder / "qrels" / f"{split}.tsv"
        with path.open(encoding="utf-8") as fh:
            for lineno, row in enumerate(csv.reader(fh, delimiter="\t"), 1):
                if lineno == 1 and not row[-1].lstrip("-").isdigit():
                    continue  # header
                if len(row) < 3:
                    raise ValueError(f"{path}:{lineno}: expected query-id, corpus-id, score")
                qid, doc_id, score = row[0], row[1], int(row[-1])
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


def import_llamaindex(path: Path) -> tuple[list[Document], list[dict]]:
    """Read LlamaIndex's EmbeddingQAFinetuneDataset JSON (queries, corpus, relevant_docs, mode).

    Each corpus node becomes a document; its queries keep origin ``synthetic`` (that format is what
    LlamaIndex's ``generate_qa_embedding_pairs`` writes).
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    for key in ("queries", "corpus", "relevant_docs"):
        if key not in raw:
            raise ValueError(f"{path}: missing key {key!r} (not an EmbeddingQAFinetuneDataset)")
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


def export_llamaindex(path: Path, queries: list[dict], corpus: list[dict], split: str) -> None:
    """Write one split as an EmbeddingQAFinetuneDataset JSON that LlamaIndex users can load."""
    chosen = [q for q in queries if q["split"] == split]
    payload = {
        "queries": {q["qid"]: q["text"] for q in chosen},
        "corpus": {c["id"]: c["text"] for c in corpus},
        "relevant_docs": {q["qid"]: q["positives"] for q in chosen},
        "mode": "text",
    }
    atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=1))
