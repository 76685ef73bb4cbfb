"""Ingest a folder of documents and chunk them into the corpus.

Readers cover .txt, .md, .html/.htm, .pdf, .json and .jsonl (text in a configurable field).
A file that cannot be read (binary, empty, undecodable, broken PDF, bad JSON) is skipped and listed
in the report with its reason; identical documents are kept once. Chunking uses LlamaIndex's
SentenceSplitter; every chunk carries a stable content-based id, its document id, source path and
character span in the document text.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Document:
    """One ingested document: ``doc_id`` is its path relative to the docs folder (``#n`` per JSON record)."""

    doc_id: str
    source: str
    text: str


class SkipFile(Exception):
    """A file is unusable; the message is the reason shown in the ingest report."""


def normalize_whitespace(text: str) -> str:
    """Collapse every run of whitespace to one space and strip the ends."""
    return " ".join(text.split())


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw[:8192]:
        raise SkipFile("binary content")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise SkipFile(f"not UTF-8 text (byte {e.start})") from None


def _read_html(path: Path) -> str:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(_read_text(path), "html.parser")
    for tag in soup(["script", "style", "head"]):
        tag.decompose()
    lines = (re.sub(r"[ \t\r\f\v]+", " ", line).strip() for line in soup.get_text(" ").splitlines())
    return "\n".join(line for line in lines if line)


def _read_pdf(path: Path) -> str:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        reader = PdfReader(path)
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except (PdfReadError, ValueError, KeyError, OSError) as e:
        raise SkipFile(f"unreadable PDF ({type(e).__name__})") from None


def _json_records(path: Path, text_field: str) -> list[tuple[str, str]]:
    """(suffix, text) per record of a .json (object or list) or .jsonl file."""
    raw = _read_text(path)
    try:
        if path.suffix == ".jsonl":
            items = [json.loads(line) for line in raw.splitlines() if line.strip()]
        else:
            loaded = json.loads(raw)
            items = loaded if isinstance(loaded, list) else [loaded]
    except json.JSONDecodeError as e:
        raise SkipFile(f"invalid JSON at line {e.lineno}") from None
    records = []
    for i, item in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get(text_field), str):
            records.append((f"#{item.get('id', i)}", item[text_field]))
    if items and not records:
        raise SkipFile(f"no record has a string field {text_field!r}")
    return records


def read_documents(folder: Path, extensions: list[str], json_text_field: str) -> tuple[list[Document], dict]:
    """Read every usable file under ``folder`` (recursively, sorted) into documents.

    Args:
        folder: the documents folder; ``doc_id`` and ``source`` are paths relative to it.
        extensions: file endings to read (others are ignored silently, hidden files too).
        json_text_field: field holding the text in .json / .jsonl records.

    Returns:
        (documents, report) where report lists ``skipped`` files with reasons and ``duplicates``
        (identical text kept once, under the first path in sorted order).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"data.docs: folder {folder} does not exist")
    wanted = {e.lower() for e in extensions}
    files = sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and p.suffix.lower() in wanted and not any(s.startswith(".") for s in p.parts)
    )
    docs: list[Document] = []
    seen: dict[str, str] = {}
    report: dict = {"files": len(files), "skipped": [], "duplicates": []}
    for path in tqdm(files, desc="read documents", unit="file"):
        rel = path.relative_to(folder).as_posix()
        suffix = path.suffix.lower()
        try:
            if suffix in (".json", ".jsonl"):
                records = [(rel + tag, text) for tag, text in _json_records(path, json_text_field)]
            elif suffix in (".html", ".htm"):
                records = [(rel, _read_html(path))]
            elif suffix == ".pdf":
                records = [(rel, _read_pdf(path))]
            else:
                records = [(rel, _read_text(path))]
        except SkipFile as e:
            report["skipped"].append({"source": rel, "reason": str(e)})
            continue
        except OSError as e:
            report["skipped"].append({"source": rel, "reason": f"unreadable ({e.strerror or type(e).__name__})"})
            continue
        for doc_id, text in records:
            if not text.strip():
                report["skipped"].append({"source": doc_id, "reason": "empty"})
                continue
            key = hashlib.sha256(normalize_whitespace(text).encode()).hexdigest()
            if key in seen:
                report["duplicates"].append({"source": doc_id, "same_as": seen[key]})
                continue
            seen[key] = doc_id
            docs.append(Document(doc_id=doc_id, source=rel, text=text))
    for item in report["skipped"]:
        logger.warning("skipped %s: %s", item["source"], item["reason"])
    report["documents"] = len(docs)
    return docs, report


def chunk_id(doc_text: str, start: int, chunk_text: str) -> str:
    """Stable content-based chunk id: the same document text always gives the same ids."""
    doc_hash = hashlib.sha256(doc_text.encode()).hexdigest()
    return "c" + hashlib.sha256(f"{doc_hash}:{start}:{chunk_text}".encode()).hexdigest()[:15]


def locate_chunks(text: str, chunks: list[str]) -> list[tuple[int, int]]:
    """Character spans of consecutive (possibly overlapping) chunks inside ``text``.

    The splitter returns chunk strings, not offsets; searching forward from the previous chunk's
    start keeps repeated passages in order. A chunk the splitter re-spaced is found by its first
    40 characters and measured to its own length.

    Example:
        >>> locate_chunks("a b. a b.", ["a b.", "a b."])
        [(0, 4), (5, 9)]
    """
    spans, cursor = [], 0
    for chunk in chunks:
        start = text.find(chunk, cursor)
        if start < 0:
            start = text.find(chunk[:40], cursor)
        if start < 0:
            start = cursor
        spans.append((start, min(len(text), start + len(chunk))))
        cursor = start + 1
    return spans


def chunk_documents(docs: list[Document], chunk_size: int, chunk_overlap: int) -> list[dict]:
    """Split documents into corpus rows with LlamaIndex's SentenceSplitter.

    Returns:
        Rows ``{"id", "doc_id", "source", "text", "start", "end"}`` in document order.
    """
    from llama_index.core.node_parser import SentenceSplitter

    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap)
    rows = []
    for doc in tqdm(docs, desc="chunk documents", unit="doc"):
        texts = [t for t in splitter.split_text(doc.text) if t.strip()]
        for text, (start, end) in zip(texts, locate_chunks(doc.text, texts), strict=True):
            rows.append(
                {
                    "id": chunk_id(doc.text, start, text),
                    "doc_id": doc.doc_id,
                    "source": doc.source,
                    "text": text,
                    "start": start,
                    "end": end,
                }
            )
    return rows
