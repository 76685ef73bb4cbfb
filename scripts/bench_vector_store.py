"""Benchmark: the assembled index at 100,000 chunks in each embedded ``assemble.vector_store``.

    .venv/bin/python scripts/bench_vector_store.py [--chunks 100000] [--queries 20] [--json out.json]

The chunks carry precomputed random unit vectors (384-d, MiniLM's size), so what is timed is the
store, not the encoder: building the ``VectorStoreIndex`` and persisting it, opening it again in a
fresh client, and top-10 search. Each store's top 10 must equal exact top-k by dot product (the
harness's search), which the script checks.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import torch
from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.vector_stores import VectorStoreQuery

from ragtune.app.vector_store import STORE_QDRANT, STORE_SIMPLE, qdrant_vector_store
from ragtune.pipeline.nodes import chunk_id_of, corpus_nodes
from ragtune.pipeline.retrieval import exact_top_k

logger = logging.getLogger("bench_vector_store")
DIM = 384


def make_vectors(n: int, seed: int) -> torch.Tensor:
    """``n`` random unit vectors of MiniLM's dimension."""
    g = torch.Generator().manual_seed(seed)
    return torch.nn.functional.normalize(torch.randn(n, DIM, generator=g), dim=1)


def bench_store(store: str, corpus: list[dict], vectors: torch.Tensor, queries: torch.Tensor, folder: Path) -> dict:
    """Build, persist, reopen and search one store; returns seconds per phase and the top-10 ids."""
    nodes = corpus_nodes(corpus, uuid_ids=store != STORE_SIMPLE)
    for node, vec in zip(nodes, vectors.tolist(), strict=True):
        node.embedding = vec
    embed = MockEmbedding(embed_dim=DIM)  # never called for the chunks: they carry their vectors
    started = time.perf_counter()
    if store == STORE_SIMPLE:
        VectorStoreIndex(nodes, embed_model=embed).storage_context.persist(persist_dir=str(folder))
    else:
        vector_store = qdrant_vector_store(store, folder / "qdrant", "bench")
        VectorStoreIndex(
            nodes, storage_context=StorageContext.from_defaults(vector_store=vector_store), embed_model=embed
        )
        vector_store.client.close()
    built = time.perf_counter() - started
    started = time.perf_counter()
    if store == STORE_SIMPLE:
        index = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(folder)), embed_model=embed)
    else:
        vector_store = qdrant_vector_store(store, folder / "qdrant", "bench")
        index = VectorStoreIndex.from_vector_store(vector_store, embed_model=embed)
    opened = time.perf_counter() - started
    started = time.perf_counter()
    ranked = []
    for q in queries.tolist():
        result = index.vector_store.query(VectorStoreQuery(query_embedding=q, similarity_top_k=10))
        ranked.append([chunk_id_of(n) for n in result.nodes] if result.nodes else list(result.ids))
    searched = time.perf_counter() - started
    if store != STORE_SIMPLE:
        index.vector_store.client.close()
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return {
        "build_s": round(built, 2),
        "open_s": round(opened, 2),
        "search_ms_per_query": round(1000 * searched / len(queries), 2),
        "disk_mb": round(size / 2**20, 1),
        "ranked": ranked,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20)
    parser.add_argument("--stores", nargs="+", default=[STORE_SIMPLE, STORE_QDRANT])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)

    corpus = [
        {"id": f"c{i:06d}", "text": f"chunk {i}", "doc_id": f"d{i // 10}", "source": "bench"}
        for i in range(args.chunks)
    ]
    vectors = make_vectors(args.chunks, 0)
    queries = make_vectors(args.queries, 1)
    _, exact = exact_top_k(queries, vectors, 10)
    expected = [[corpus[i]["id"] for i in row] for row in exact.tolist()]
    results = {}
    for store in args.stores:
        with tempfile.TemporaryDirectory() as tmp:
            result = bench_store(store, corpus, vectors, queries, Path(tmp))
        ranked = result.pop("ranked")
        result["top10_equals_exact"] = ranked == expected
        results[store] = result
        logger.info("%s, %d chunks: %s", store, args.chunks, result)
    if args.json:
        args.json.write_text(json.dumps({"chunks": args.chunks, "queries": args.queries, **results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
