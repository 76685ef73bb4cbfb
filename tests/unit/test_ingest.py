from pathlib import Path

import pytest

from stages.data.ingest import chunk_documents, chunk_id, locate_chunks, read_documents

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


def test_locate_chunks_keeps_repeated_text_in_order() -> None:
    assert locate_chunks("a b. a b. a b.", ["a b. a b.", "a b. a b."]) == [(0, 9), (5, 14)]


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
        assert r["id"] == chunk_id(texts[r["doc_id"]], r["start"], r["text"])
    again = chunk_documents([*docs, long_doc], chunk_size=48, chunk_overlap=8)
    assert [r["id"] for r in again] == [r["id"] for r in rows]
    assert len({r["id"] for r in rows}) == len(rows)
