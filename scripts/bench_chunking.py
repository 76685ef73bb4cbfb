"""Benchmark: ingest + chunking time of one large document (chunking must be linear in its size).

Writes a document of ``--mb`` megabytes into a temporary docs folder — one line of sentences by
default (``--lines`` spreads it over that many lines) — then times ``read_documents`` and
``chunk_documents`` with the default chunk size and overlap, and reports chunks per second.

    .venv/bin/python scripts/bench_chunking.py --mb 20
    .venv/bin/python scripts/bench_chunking.py --mb 2 --mb 20   # compare sizes: linear means equal rates
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragtune.pipeline.config import DataConfig  # noqa: E402
from ragtune.stages.data.ingest import Document, chunk_documents, read_documents  # noqa: E402

WORDS = [
    "heron",
    "berth",
    "shard",
    "lease",
    "ledger",
    "pondview",
    "meter",
    "reading",
    "tariff",
    "failover",
    "drain",
    "queue",
    "invoice",
]


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, action="append", help="document size in MB (repeatable; default 20)")
    parser.add_argument("--lines", type=int, default=1, help="spread the document over this many lines")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random sentences")
    return parser


def make_document(n_bytes: int, lines: int, seed: int = 0) -> str:
    """Sentences of 8-20 random domain words, ``n_bytes`` long, on ``lines`` lines."""
    rng = random.Random(seed)
    sentences, size = [], 0
    while size < n_bytes:
        sentence = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 20))).capitalize() + "."
        sentences.append(sentence)
        size += len(sentence) + 1
    per_line = max(1, len(sentences) // lines)
    return "\n".join(" ".join(sentences[i : i + per_line]) for i in range(0, len(sentences), per_line))


def bench(mb: float, lines: int, seed: int) -> None:
    data = DataConfig()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "big.txt").write_text(make_document(int(mb * 1_000_000), lines, seed), encoding="utf-8")
        start = time.perf_counter()
        docs, _ = read_documents(folder, data.extensions, data.json_text_field)
        read_s = time.perf_counter() - start
        start = time.perf_counter()
        rows = chunk_documents(docs, data.chunk_size, data.chunk_overlap)
        chunk_s = time.perf_counter() - start
    print(
        f"{mb:g} MB on {lines} line(s): read {read_s:.2f} s, chunked into {len(rows):,} chunks in {chunk_s:.2f} s "
        f"({len(rows) / chunk_s:,.0f} chunks/s, {mb / chunk_s:.2f} MB/s)"
    )


def main() -> None:
    args = make_parser().parse_args()
    chunk_documents([Document("warm-up", "warm-up", "Loads the tokenizer.")], 256, 32)  # not timed
    for mb in args.mb or [20.0]:
        bench(mb, args.lines, args.seed)


if __name__ == "__main__":
    main()
