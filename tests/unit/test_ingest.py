import itertools
import json
from pathlib import Path

import pytest
from fakes.hostile import KEPT, OUTSIDE_TEXT, SKIPPED, build_hostile_docs, permission_denied, remove_tree

from ragtune.stages.data.ingest import (
    Document,
    chunk_documents,
    chunk_id,
    document_hash,
    read_documents,
    text_windows,
)

EXTS = [".txt", ".md", ".html", ".pdf", ".json", ".jsonl"]


def _make_pdf(path: Path, text: str) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 6, text)
    pdf.output(str(path))


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    root = tmp_path / "docs"
    (root / "sub" / "deeper").mkdir(parents=True)
    (root / "a.md").write_text("# Heron\n\nHeron routes orders. A berth is an instance.")
    (root / "sub" / "copy.txt").write_text("# Heron\n\nHeron routes orders.   A berth is an instance.\n")
    (root / "sub" / "deeper" / "page.html").write_text(
        "<html><head><style>x{}</style></head><body><p>Pondview pages after <b>3</b> checks.</p>"
        "<script>alert(1)</script></body></html>"
    )
    _make_pdf(root / "sub" / "spec.pdf", "Ledgerfish stores one Shard Lease Agreement per shard.")
    (root / "records.jsonl").write_text('{"id": "r1", "body": "first record"}\n{"body": "second record"}\n')
    (root / "single.json").write_text('{"body": "a json document"}')
    (root / "empty.txt").write_text("   \n")
    (root / "binary.txt").write_bytes(b"\x00\x01\x02binary")
    (root / "latin1.md").write_bytes("caf\xe9".encode("latin-1"))
    (root / "broken.pdf").write_bytes(b"%PDF-1.4 this is not a pdf")
    (root / "bad.json").write_text("{not json")
    (root / "notes.docx").write_bytes(b"ignored by extension")
    (root / ".hidden.md").write_text("hidden")
    return root


def test_reads_every_format_and_reports_every_bad_file(messy_folder: Path) -> None:
    docs, report = read_documents(messy_folder, EXTS, "body")
    ids = [d.doc_id for d in docs]
    assert ids == [
        "a.md",
        "records.jsonl#r1",
        "records.jsonl#1",
        "single.json#0",
        "sub/deeper/page.html",
        "sub/spec.pdf",
    ]
    by_id = {d.doc_id: d.text for d in docs}
    assert "Pondview pages after 3 checks." in by_id["sub/deeper/page.html"]
    assert "alert" not in by_id["sub/deeper/page.html"] and "x{}" not in by_id["sub/deeper/page.html"]
    assert "Shard Lease Agreement" in by_id["sub/spec.pdf"]
    skipped = {s["source"]: s["reason"] for s in report["skipped"]}
    assert skipped["empty.txt"] == "empty"
    assert skipped["binary.txt"] == "binary content"
    assert "UTF-8" in skipped["latin1.md"]
    assert "PDF" in skipped["broken.pdf"]
    assert "JSON" in skipped["bad.json"]
    assert report["duplicates"] == [{"source": "sub/copy.txt", "same_as": "a.md"}]


def test_missing_folder_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="data.docs"):
        read_documents(tmp_path / "nope", EXTS, "text")


def test_chunk_spans_keep_repeated_text_in_order() -> None:
    text = " ".join(["The berth holds. The berth holds."] * 40)
    rows = chunk_documents([Document(doc_id="d", source="d", text=text)], chunk_size=24, chunk_overlap=8)
    assert len(rows) > 3 and len({r["text"] for r in rows}) < len(rows)  # the same chunk text repeats
    assert all(text[r["start"] : r["end"]] == r["text"] for r in rows)
    starts = [r["start"] for r in rows]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_chunks_have_spans_and_stable_content_ids(messy_folder: Path) -> None:
    docs, _ = read_documents(messy_folder, EXTS, "body")
    long_doc = docs[0].__class__(
        doc_id="long.md",
        source="long.md",
        text=" ".join(f"Sentence number {i} about the Heron berth." for i in range(80)),
    )
    rows = chunk_documents([*docs, long_doc], chunk_size=48, chunk_overlap=8)
    texts = {d.doc_id: d.text for d in [*docs, long_doc]}
    assert sum(r["doc_id"] == "long.md" for r in rows) > 3
    for r in rows:
        assert texts[r["doc_id"]][r["start"] : r["end"]] == r["text"]
        assert r["id"] == chunk_id(document_hash(texts[r["doc_id"]]), r["start"], r["text"])
    again = chunk_documents([*docs, long_doc], chunk_size=48, chunk_overlap=8)
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert len({r["id"] for r in rows}) == len(rows)


@pytest.fixture
def hostile_docs(tmp_path: Path, monkeypatch):
    root = build_hostile_docs(tmp_path)
    with permission_denied(monkeypatch):
        yield root
    remove_tree(tmp_path / ".config")  # pytest's own clean-up cannot delete 1,000 levels


def test_ingest_never_crashes_and_lists_every_skipped_entry_with_its_reason(hostile_docs: Path) -> None:
    docs, report = read_documents(hostile_docs, EXTS, "text")
    assert set(KEPT) <= {d.doc_id for d in docs}  # under a dot-folder, 1,000 levels down, 21 MB on one line
    assert all(OUTSIDE_TEXT not in d.text for d in docs)
    skipped = {s["source"]: s["reason"] for s in report["skipped"]}
    assert set(skipped) == set(SKIPPED)
    assert all(skipped[source].startswith(reason) for source, reason in SKIPPED.items())
    assert report["duplicates"] == [{"source": "inside.md", "same_as": "good.md"}]
    json.dumps(report)  # the report can be written


def test_chunk_ids_hash_each_document_once(monkeypatch) -> None:
    import hashlib

    from ragtune.stages.data import ingest

    hashed = []

    class CountingHashlib:
        @staticmethod
        def sha256(data: bytes = b""):
            hashed.append(len(data))
            return hashlib.sha256(data)

    monkeypatch.setattr(ingest, "hashlib", CountingHashlib)
    text = " ".join(f"Sentence number {i} about the Heron berth." for i in range(2000))
    rows = chunk_documents([ingest.Document("long.md", "long.md", text)], chunk_size=32, chunk_overlap=4)
    assert len(rows) > 100
    assert sum(hashed) < 3 * len(text.encode())  # the document once, then each chunk


def test_text_windows_cover_the_text_in_bounded_pieces() -> None:
    text = "A sentence here. " * 3000 + "x" * 250 + "\n\nlast paragraph"
    pieces = text_windows(text, size=1000)
    assert "".join(p for _, p in pieces) == text and all(text[o : o + len(p)] == p for o, p in pieces)
    assert all(len(p) <= 1000 for _, p in pieces) and len(pieces) > 50
    assert text_windows("short", size=1000) == [(0, "short")]


def test_a_huge_single_paragraph_is_chunked_with_exact_spans() -> None:
    text = " ".join(f"Sentence {i} of one long paragraph." for i in range(15_000))  # 520 KB, split in pieces
    rows = chunk_documents([Document("big.txt", "big.txt", text)], chunk_size=64, chunk_overlap=8)
    assert all(text[r["start"] : r["end"]] == r["text"] for r in rows)
    assert rows[-1]["end"] == len(text) and len({r["id"] for r in rows}) == len(rows)
    # in order, and nothing but whitespace left out between neighbours (they overlap inside a piece)
    assert all(a["start"] < b["start"] and not text[a["end"] : b["start"]].strip() for a, b in itertools.pairwise(rows))
