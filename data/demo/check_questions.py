#!/usr/bin/env python3
"""Validate the ragtune demo domain: documents, evaluation questions, categories.

Usage:  python data/demo/check_questions.py [--demo-dir DIR] [--quiet]

Loads every document under docs/ (.md and .txt as raw text, .html through
BeautifulSoup get_text(" "), .pdf through pypdf) and checks that
eval/questions.jsonl is consistent with them:

  * each line is a JSON object with exactly the keys
    id, question, doc_ids, answer, evidence, key_terms;
  * ids are unique;
  * every doc_id exists (posix path relative to docs/, with extension);
  * len(evidence) == len(doc_ids);
  * every evidence span is a case-sensitive substring of its document's text
    after whitespace normalisation (runs of whitespace -> one space);
  * evidence spans contain no markdown formatting characters;
  * there are 1-4 key_terms and each occurs case-insensitively in the evidence
    (for multi-document questions: in at least one of the evidence spans);
  * the corpus meets the size floor (>= 60 documents, >= 40,000 words,
    >= 4 PDFs) and there are >= 90 questions;
  * every document is cited by at least one question;
  * eval/question_categories.json (if present) covers exactly the question ids.

Prints a summary (documents and words per file type, questions, questions per
category) and exits 1 on any failure. Only the standard library, pypdf and
beautifulsoup4 are used.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import Counter
from pathlib import Path

from bs4 import BeautifulSoup
from pypdf import PdfReader

EXPECTED_KEYS = {"id", "question", "doc_ids", "answer", "evidence", "key_terms"}
DOC_SUFFIXES = {".md", ".txt", ".html", ".pdf"}
MIN_DOCS, MIN_WORDS, MIN_PDFS, MIN_QUESTIONS = 60, 40_000, 4, 90
CATEGORIES = ("codename", "acronym", "synonym", "near-miss", "multi-doc")
MARKDOWN_RE = re.compile(r"\*\*|`|\]\(|^#|\|")
_WS = re.compile(r"\s+")


def norm(text: str) -> str:
    return _WS.sub(" ", text).strip()


def load_text(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".md", ".txt"):
        return path.read_text(encoding="utf-8")
    if suffix == ".html":
        soup = BeautifulSoup(path.read_text(encoding="utf-8"), "html.parser")
        return soup.get_text(" ")
    if suffix == ".pdf":
        reader = PdfReader(str(path))
        return "\n".join(page.extract_text() or "" for page in reader.pages)
    raise ValueError(f"unsupported document type: {path}")


def load_docs(docs_dir: Path) -> dict[str, str]:
    docs = {}
    for path in sorted(docs_dir.rglob("*")):
        if path.is_file() and path.suffix.lower() in DOC_SUFFIXES:
            docs[path.relative_to(docs_dir).as_posix()] = norm(load_text(path))
    return docs


def ngrams(words: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Validate the ragtune demo domain.")
    ap.add_argument("--demo-dir", type=Path, default=Path(__file__).resolve().parent)
    ap.add_argument("--quiet", action="store_true", help="print failures and the summary only")
    args = ap.parse_args(argv)

    demo = args.demo_dir
    docs_dir, qpath = demo / "docs", demo / "eval" / "questions.jsonl"
    cpath = demo / "eval" / "question_categories.json"
    failures: list[str] = []
    warnings: list[str] = []

    docs = load_docs(docs_dir)
    words_by_type: Counter = Counter()
    docs_by_type: Counter = Counter()
    for rel, text in docs.items():
        ext = Path(rel).suffix.lower().lstrip(".")
        docs_by_type[ext] += 1
        words_by_type[ext] += len(text.split())
        if not text:
            failures.append(f"{rel}: no text extracted")
    total_words = sum(words_by_type.values())

    questions = []
    for lineno, line in enumerate(qpath.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            failures.append(f"questions.jsonl:{lineno}: invalid JSON ({exc})")
            continue
        questions.append((lineno, obj))

    seen_ids: set[str] = set()
    cited: Counter = Counter()
    n_multi = 0
    for lineno, q in questions:
        where = f"questions.jsonl:{lineno}"
        if not isinstance(q, dict) or set(q) != EXPECTED_KEYS:
            keys = sorted(q) if isinstance(q, dict) else type(q).__name__
            failures.append(f"{where}: keys must be exactly {sorted(EXPECTED_KEYS)}, got {keys}")
            continue
        qid = q["id"]
        where = f"{where} ({qid})"
        if not isinstance(qid, str) or not re.fullmatch(r"q\d{3,}", qid):
            failures.append(f"{where}: id must look like q001")
        if qid in seen_ids:
            failures.append(f"{where}: duplicate id")
        seen_ids.add(qid)
        for key in ("question", "answer"):
            if not isinstance(q[key], str) or not q[key].strip():
                failures.append(f"{where}: {key} must be a non-empty string")
        doc_ids, evidence, key_terms = q["doc_ids"], q["evidence"], q["key_terms"]
        if not (isinstance(doc_ids, list) and doc_ids and all(isinstance(d, str) for d in doc_ids)):
            failures.append(f"{where}: doc_ids must be a non-empty list of strings")
            continue
        if len(set(doc_ids)) != len(doc_ids):
            failures.append(f"{where}: duplicate doc_ids")
        if not (isinstance(evidence, list) and all(isinstance(e, str) for e in evidence)):
            failures.append(f"{where}: evidence must be a list of strings")
            continue
        if len(evidence) != len(doc_ids):
            failures.append(f"{where}: {len(evidence)} evidence spans for {len(doc_ids)} doc_ids")
        if len(doc_ids) > 1:
            n_multi += 1
        for doc_id, span in zip(doc_ids, evidence, strict=False):
            if doc_id not in docs:
                failures.append(f"{where}: doc_id {doc_id!r} does not exist under docs/")
                continue
            cited[doc_id] += 1
            span_n = norm(span)
            if not span_n:
                failures.append(f"{where}: empty evidence for {doc_id}")
            elif span_n not in docs[doc_id]:
                failures.append(f"{where}: evidence not found verbatim in {doc_id}: {span_n[:90]!r}")
            if MARKDOWN_RE.search(span_n):
                failures.append(f"{where}: evidence contains markdown formatting: {span_n[:60]!r}")
        if not (
            isinstance(key_terms, list)
            and 1 <= len(key_terms) <= 4
            and all(isinstance(t, str) and t.strip() for t in key_terms)
        ):
            failures.append(f"{where}: key_terms must be a list of 1-4 non-empty strings")
        else:
            ev_lower = [norm(e).lower() for e in evidence]
            for term in key_terms:
                if not any(norm(term).lower() in e for e in ev_lower):
                    failures.append(f"{where}: key term {term!r} not in evidence")
        if isinstance(q["question"], str):
            qwords = norm(q["question"]).lower().split()
            for span in evidence:
                if ngrams(qwords, 7) & ngrams(norm(span).lower().split(), 7):
                    warnings.append(f"{where}: question copies 7+ consecutive words of its evidence")

    uncited = sorted(set(docs) - set(cited))
    for rel in uncited:
        failures.append(f"{rel}: not cited by any question")

    n_docs, n_pdf = len(docs), docs_by_type["pdf"]
    if n_docs < MIN_DOCS:
        failures.append(f"only {n_docs} documents (need >= {MIN_DOCS})")
    if total_words < MIN_WORDS:
        failures.append(f"only {total_words} words (need >= {MIN_WORDS})")
    if n_pdf < MIN_PDFS:
        failures.append(f"only {n_pdf} PDF documents (need >= {MIN_PDFS})")
    if len(questions) < MIN_QUESTIONS:
        failures.append(f"only {len(questions)} questions (need >= {MIN_QUESTIONS})")

    category_counts: Counter = Counter()
    if cpath.exists():
        cats = json.loads(cpath.read_text(encoding="utf-8"))
        if set(cats) != seen_ids:
            missing, extra = sorted(seen_ids - set(cats)), sorted(set(cats) - seen_ids)
            failures.append(f"question_categories.json ids differ: missing {missing[:5]}, extra {extra[:5]}")
        multi_ids = {
            q["id"]
            for _, q in questions
            if isinstance(q, dict) and isinstance(q.get("doc_ids"), list) and len(q["doc_ids"]) > 1
        }
        for qid, labels in cats.items():
            if not isinstance(labels, list) or not labels or any(label not in CATEGORIES for label in labels):
                failures.append(f"question_categories.json: {qid}: labels must be a non-empty subset of {CATEGORIES}")
                continue
            if ("multi-doc" in labels) != (qid in multi_ids):
                failures.append(f"question_categories.json: {qid}: multi-doc label disagrees with doc_ids")
            category_counts.update(labels)
    else:
        warnings.append("eval/question_categories.json not found; only multi-doc counted")
        category_counts["multi-doc"] = n_multi

    if not args.quiet:
        for w in warnings:
            print(f"WARNING: {w}")
    for f in failures:
        print(f"FAIL: {f}")

    print("\n== ragtune demo domain summary ==")
    print(f"documents: {n_docs}  words: {total_words}")
    for ext in sorted(docs_by_type):
        print(f"  .{ext:<5} {docs_by_type[ext]:>3} docs  {words_by_type[ext]:>6} words")
    print(f"questions: {len(questions)}  (single-doc {len(questions) - n_multi}, multi-doc {n_multi})")
    print("questions per category (a question can have several):")
    for cat in CATEGORIES:
        print(f"  {cat:<10} {category_counts[cat]:>3}")
    print(
        f"documents cited: {len(cited)}/{n_docs}  (cited once: {sum(1 for c in cited.values() if c == 1)}, "
        f"max citations: {max(cited.values()) if cited else 0})"
    )
    print(f"warnings: {len(warnings)}  failures: {len(failures)}")
    print("RESULT:", "FAIL" if failures else "PASS")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
