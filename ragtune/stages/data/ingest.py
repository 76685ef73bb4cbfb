"""Ingest a folder of documents and chunk them into the corpus.

Readers cover .txt, .md, .html/.htm, .pdf, .json and .jsonl (text in a configurable field).
Ingest never stops on a file: one that cannot be read (binary, empty, undecodable, broken PDF, bad
JSON, no permission, a non-UTF-8 name) or a folder that cannot be listed is skipped and listed in the
report with its reason, and so is a .json/.jsonl record without the text field (per file and line).
Symlinks are followed only to places inside the docs folder (others could send files from elsewhere to
an LLM endpoint); loops are detected. Hidden names are those that start with "." below the docs folder.
Identical documents are kept once. Chunking uses LlamaIndex's SentenceSplitter; every chunk carries a
stable content-based id, its document id, source path and character span in the document text.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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

    try:
        reader = PdfReader(path)
        return "\n\n".join(page.extract_text() or "" for page in reader.pages)
    except OSError:
        raise
    except Exception as e:  # pypdf raises many kinds (and RecursionError) on broken files
        raise SkipFile(f"unreadable PDF ({type(e).__name__})") from None


def _json_records(path: Path, rel: str, text_field: str) -> tuple[list[tuple[str, str]], list[dict[str, str]]]:
    """(suffix, text) per record of a .json (object or list) or .jsonl file, and the records skipped.

    A .jsonl line that is not JSON, or a record without a string ``text_field``, is skipped and
    listed as ``<rel>:<line>`` (``<rel>#<index>`` in a .json list); the other records are kept.
    """
    raw = _read_text(path)
    items: list[tuple[str, Any]] = []  # (where, item)
    skipped: list[dict[str, str]] = []
    if path.suffix.lower() == ".jsonl":
        for lineno, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                items.append((f"{rel}:{lineno}", json.loads(line)))
            except json.JSONDecodeError as e:
                skipped.append({"source": f"{rel}:{lineno}", "reason": f"invalid JSON ({e.msg})"})
    else:
        try:
            loaded = json.loads(raw)
        except json.JSONDecodeError as e:
            raise SkipFile(f"invalid JSON at line {e.lineno}") from None
        listed = loaded if isinstance(loaded, list) else [loaded]
        items = [(f"{rel}#{i}", item) for i, item in enumerate(listed)]
    records = []
    for i, (where, item) in enumerate(items):
        if isinstance(item, dict) and isinstance(item.get(text_field), str):
            records.append((f"#{item.get('id', i)}", item[text_field]))
        else:
            skipped.append({"source": where, "reason": f"no string field {text_field!r}"})
    if not records and not skipped:
        raise SkipFile("no JSON record")
    return records, skipped


def _display_name(path: str) -> str:
    """A path as text for the report, even when its bytes are not UTF-8."""
    return os.fsencode(path).decode("utf-8", errors="replace")


def discover_files(folder: Path, extensions: list[str]) -> tuple[list[Path], list[dict[str, str]]]:
    """Every file under ``folder`` with a wanted ending, sorted, and what was skipped on the way.

    The walk uses an explicit stack (no recursion limit on deep folders) and never raises on an
    entry: unlistable folders, non-UTF-8 names, symlink loops and symlinks that lead outside
    ``folder`` are skipped with their reason. Names starting with "." below ``folder`` are ignored,
    and so are files with other endings.

    Args:
        folder: the documents folder (``data.docs``).
        extensions: file endings to keep, e.g. ``[".md", ".pdf"]`` (case-insensitive).

    Returns:
        (files, skipped) where skipped rows are ``{"source": path relative to folder, "reason"}``.

    Example:
        >>> discover_files(Path("data/demo/docs"), [".md"])[0][:1]  # from the repository root
        [PosixPath('data/demo/docs/architecture/dual-site-topology.md')]
    """
    wanted = {e.lower() for e in extensions}
    root = folder.resolve()
    files: list[Path] = []
    skipped: list[dict[str, str]] = []
    root_stat = root.stat()
    seen_dirs = {(root_stat.st_dev, root_stat.st_ino)}
    stack = [folder]
    while stack:
        current = stack.pop()
        rel_dir = current.relative_to(folder).as_posix()
        try:
            with os.scandir(current) as it:
                entries = list(it)
        except OSError as e:
            skipped.append({"source": _display_name(rel_dir) + "/", "reason": f"unreadable folder ({e.strerror})"})
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            rel = path.relative_to(folder).as_posix()
            try:
                rel.encode("utf-8")
            except UnicodeEncodeError:
                skipped.append({"source": _display_name(rel), "reason": "file name is not valid UTF-8"})
                continue
            if reason := _symlink_problem(entry, path, root):
                skipped.append({"source": rel, "reason": reason})
                continue
            if _is_dir(entry):
                st = entry.stat()
                if (st.st_dev, st.st_ino) in seen_dirs:
                    skipped.append({"source": rel + "/", "reason": "symlink loop (folder already read)"})
                    continue
                seen_dirs.add((st.st_dev, st.st_ino))
                stack.append(path)
            elif Path(entry.name).suffix.lower() in wanted and entry.is_file():
                files.append(path)
    return sorted(files, key=lambda p: p.relative_to(folder).parts), skipped


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()
    except OSError:
        return False


def _symlink_problem(entry: os.DirEntry, path: Path, root: Path) -> str | None:
    """Why a symlink cannot be followed (a loop, broken, or leading outside ``root``); None for anything else."""
    if not entry.is_symlink():
        return None
    try:
        target = path.resolve(strict=True)
    except RuntimeError:  # Python 3.11 reports a symlink loop this way
        return "symlink loop"
    except OSError as e:
        return "symlink loop" if e.errno == errno.ELOOP else f"broken symlink ({e.strerror})"
    if not target.is_relative_to(root):
        return "symlink to a place outside data.docs"
    return None


def fingerprint_files(folder: Path, files: list[Path]) -> str:
    """Content hash of ``files`` (names relative to ``folder`` + contents); an unreadable file hashes its error."""
    h = hashlib.sha256()
    for path in files:
        h.update(path.relative_to(folder).as_posix().encode() + b"\0")
        try:
            with path.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    h.update(block)
        except OSError as e:
            h.update(f"unreadable: {e.strerror}".encode())
        h.update(b"\0")
    return h.hexdigest()[:16]


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
    files, skipped = discover_files(folder, extensions)
    docs: list[Document] = []
    seen: dict[str, str] = {}
    report: dict = {"files": len(files), "skipped": skipped, "duplicates": []}
    for path in tqdm(files, desc="read documents", unit="file"):
        rel = path.relative_to(folder).as_posix()
        suffix = path.suffix.lower()
        try:
            if suffix in (".json", ".jsonl"):
                found, bad_records = _json_records(path, rel, json_text_field)
                report["skipped"] += bad_records
                records = [(rel + tag, text) for tag, text in found]
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
        except Exception as e:  # a reader library failing on one file must not stop the ingest
            report["skipped"].append({"source": rel, "reason": f"could not be read ({type(e).__name__})"})
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


def document_hash(doc_text: str) -> str:
    """sha256 of a document's text: computed once per document, then shared by its chunk ids."""
    return hashlib.sha256(doc_text.encode()).hexdigest()


def chunk_id(doc_hash: str, start: int, chunk_text: str) -> str:
    """Stable content-based chunk id from the document's :func:`document_hash`, the span start and the text.

    The same document text always gives the same ids, and hashing costs the chunk, not the document.
    """
    return "c" + hashlib.sha256(f"{doc_hash}:{start}:{chunk_text}".encode()).hexdigest()[:15]


SPLIT_WINDOW_CHARS = 100_000  # the splitter's sentence regex has a time limit; a huge paragraph can exceed it


def text_windows(text: str, size: int = SPLIT_WINDOW_CHARS) -> list[tuple[int, str]]:
    """Cut ``text`` into consecutive pieces of at most ``size`` characters: ``(offset, piece)``.

    Each cut falls after the last paragraph break, sentence end or line break before ``size``, else
    after the last whitespace (a hard cut when there is none), so a document of any size reaches the
    splitter in bounded pieces. A text up to ``size`` is one piece: ordinary documents split as a whole.

    Example:
        >>> text_windows("One. Two. Three.", size=10)
        [(0, 'One. Two. '), (10, 'Three.')]
    """
    pieces, start = [], 0
    while len(text) - start > size:
        window = text[start : start + size]
        ends = [pos + len(sep) for sep in ("\n\n", ". ", "\n") if (pos := window.rfind(sep)) > 0]
        cut = max(ends, default=0) or next((i + 1 for i in range(size - 1, 0, -1) if window[i].isspace()), size)
        pieces.append((start, text[start : start + cut]))
        start += cut
    pieces.append((start, text[start:]))
    return pieces


def chunk_documents(docs: list[Document], chunk_size: int, chunk_overlap: int) -> list[dict]:
    """Split documents into corpus rows with LlamaIndex's SentenceSplitter.

    Spans are the nodes' own ``start_char_idx`` / ``end_char_idx``. A chunk the splitter re-spaced has
    none (it is not verbatim in the text); it is placed after the previous chunk, at its own length.
    Time is linear in the documents' size: a document longer than ``SPLIT_WINDOW_CHARS`` is split
    piece by piece (:func:`text_windows`), and each document's text is hashed once.

    Returns:
        Rows ``{"id", "doc_id", "source", "text", "start", "end"}`` in document order.
    """
    from llama_index.core import Document as LlamaDocument
    from llama_index.core.node_parser import SentenceSplitter

    # include_metadata=False: our documents carry none, and the splitter then splits the text alone.
    splitter = SentenceSplitter(chunk_size=chunk_size, chunk_overlap=chunk_overlap, include_metadata=False)
    rows = []
    for doc in tqdm(docs, desc="chunk documents", unit="doc"):
        doc_hash = document_hash(doc.text)
        spans: list[tuple[str, int, int]] = []
        for offset, piece in text_windows(doc.text):
            cursor = 0
            for node in splitter.get_nodes_from_documents([LlamaDocument(text=piece)]):
                if not node.text.strip():
                    continue
                start = cursor if node.start_char_idx is None else node.start_char_idx
                end = min(len(piece), start + len(node.text)) if node.end_char_idx is None else node.end_char_idx
                spans.append((node.text, offset + start, offset + end))
                cursor = start + 1
        for text, start, end in spans:
            rows.append(
                {
                    "id": chunk_id(doc_hash, start, text),
                    "doc_id": doc.doc_id,
                    "source": doc.source,
                    "text": text,
                    "start": start,
                    "end": end,
                }
            )
    return rows
