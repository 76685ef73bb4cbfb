#!/usr/bin/env python3
"""Render the demo domain's PDF documents from their plain-text sources.

Source: data/demo/pdf_sources/<subfolder>/<name>.txt
Output: data/demo/docs/<subfolder>/<name>.pdf

Source format: the first non-empty line is the title; the rest is split into
blocks on blank lines. A block that is a single short line without a final
full stop is rendered as a bold heading; every other block is a paragraph.
Rendering uses fpdf2 with the core Helvetica font, so characters outside
latin-1 are replaced first. Line wrapping is done by multi_cell at spaces, so
words are never split or hyphenated and pypdf extraction keeps them whole.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import sys
from pathlib import Path

from fpdf import FPDF
from fpdf.enums import XPos, YPos

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "data" / "demo"
SRC_DIR = DEMO / "pdf_sources"
OUT_DIR = DEMO / "docs"

_REPLACEMENTS = {
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u2013": "-",
    "\u2014": "-",
    "\u2212": "-",
    "\u2026": "...",
    "\u00a0": " ",
    "\u2022": "-",
    "\u2192": "->",
}


def to_latin1(text: str) -> str:
    for bad, good in _REPLACEMENTS.items():
        text = text.replace(bad, good)
    return text.encode("latin-1", errors="replace").decode("latin-1")


def parse(source: str) -> tuple[str, list[str]]:
    lines = source.splitlines()
    while lines and not lines[0].strip():
        lines.pop(0)
    if not lines:
        raise ValueError("empty source")
    title = lines[0].strip()
    blocks: list[str] = []
    current: list[str] = []
    for line in lines[1:]:
        if line.strip():
            current.append(line.strip())
        elif current:
            blocks.append(" ".join(current))
            current = []
    if current:
        blocks.append(" ".join(current))
    return title, blocks


def is_heading(block: str) -> bool:
    return len(block) <= 60 and not block.endswith((".", ":", ";", ","))


def render(src: Path, dst: Path) -> None:
    title, blocks = parse(src.read_text(encoding="utf-8"))
    pdf = FPDF(format="A4")
    pdf.set_creation_date(_dt.datetime(2026, 5, 15, tzinfo=_dt.UTC))
    pdf.set_title(to_latin1(title))
    pdf.set_author("Kestrel Vale Networks (fictional demo domain)")
    pdf.set_auto_page_break(auto=True, margin=18)
    pdf.set_margins(20, 20, 20)
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.multi_cell(0, 8, to_latin1(title), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.ln(3)
    for block in blocks:
        if is_heading(block):
            pdf.ln(1)
            pdf.set_font("Helvetica", "B", 12)
            pdf.multi_cell(0, 7, to_latin1(block), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        else:
            pdf.set_font("Helvetica", "", 10.5)
            pdf.multi_cell(0, 5.5, to_latin1(block), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.ln(2)
    dst.parent.mkdir(parents=True, exist_ok=True)
    pdf.output(str(dst))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--src", type=Path, default=SRC_DIR)
    ap.add_argument("--out", type=Path, default=OUT_DIR)
    args = ap.parse_args(argv)
    sources = sorted(args.src.rglob("*.txt"))
    if not sources:
        print(f"no sources under {args.src}", file=sys.stderr)
        return 1
    for src in sources:
        rel = src.relative_to(args.src).with_suffix(".pdf")
        dst = args.out / rel
        render(src, dst)
        print(f"wrote {dst.relative_to(ROOT) if dst.is_relative_to(ROOT) else dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
