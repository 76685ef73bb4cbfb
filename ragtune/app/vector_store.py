"""Where the assembled index lives (``assemble.vector_store``): the simple store, Qdrant embedded, or a Qdrant server.

- ``simple``: LlamaIndex's in-memory ``SimpleVectorStore``, persisted as JSON in ``index/``. Loading it
  reads every vector into memory; fine for small corpora.
- ``qdrant``: Qdrant's embedded local mode through LlamaIndex's ``QdrantVectorStore``, in
  ``index/qdrant/`` — no server; one process opens it at a time (Qdrant's own lock).
- ``http(s)://host:port``: a running Qdrant server, same integration, collection ``ragtune-<run folder>``.

The index is rebuilt only when the embedder, the dimension it serves (``assemble.truncate_dim``), the corpus
or the store changes; ``index/meta.json`` records what it was built from. Qdrant point ids must be UUIDs, so
its nodes are keyed by a UUID derived from the chunk id, which is kept in the node's metadata
(:func:`chunk_id_of` reads either).

Example (a sketch over a finished run, not run as a doctest):
    index = load_vector_index(run, embed_model, embedder_path, store="qdrant")
    [chunk_id_of(n.node) for n in index.as_retriever(similarity_top_k=3).retrieve("what is a PTO?")]
    close_vector_index(index)
"""

from __future__ import annotations

import json
import logging
import time
import urllib.parse
from pathlib import Path

from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import TextNode

from ragtune.pipeline.nodes import corpus_nodes
from ragtune.pipeline.retrieval import DenseRetriever, corpus_hash, model_hash
from ragtune.pipeline.rundir import EMBEDDING_CACHE, INDEX_DIR, RunDir, atomic_dir, is_main_process, read_jsonl

logger = logging.getLogger(__name__)

INDEX_META = "meta.json"
QDRANT_DIR = "qdrant"
STORE_SIMPLE = "simple"
STORE_QDRANT = "qdrant"


def is_server_url(store: str) -> bool:
    """True when ``store`` is an ``http(s)://`` URL (a running Qdrant server)."""
    parts = urllib.parse.urlsplit(store)
    return parts.scheme in ("http", "https") and bool(parts.netloc)


def collection_name(run: RunDir) -> str:
    """The Qdrant collection of a run: ``ragtune-<run folder name>``."""
    return f"ragtune-{run.root.name}"


def qdrant_vector_store(store: str, local_path: Path, collection: str):
    """LlamaIndex's ``QdrantVectorStore`` on a server (``store`` is its URL) or in local mode at ``local_path``."""
    import qdrant_client
    from llama_index.vector_stores.qdrant import QdrantVectorStore

    client = (
        qdrant_client.QdrantClient(url=store)
        if is_server_url(store)
        else qdrant_client.QdrantClient(path=str(local_path))
    )
    return QdrantVectorStore(client=client, collection_name=collection)


def close_vector_index(index: VectorStoreIndex) -> None:
    """Release the store's client (Qdrant's local mode locks its folder until then); no-op for the simple store."""
    client = getattr(index.vector_store, "client", None)
    if client is not None:
        client.close()


def attach_cached_embeddings(
    nodes: list[TextNode], embed_model: BaseEmbedding, embedder_path: str, corpus: list[dict], cache_dir: Path
) -> None:
    """Give every node its vector from the run's shared corpus-embedding cache, so the index build encodes nothing.

    Only for an embedding model that wraps the same sentence-transformers model with normalised document
    vectors (:class:`ragtune.app.assemble.SentenceTransformerEmbedding`, whose ``_get_text_embeddings`` is
    ``encode_document``): LlamaIndex embeds only nodes without an ``embedding``. The cache is read, or written
    once here (the eval harness and the training stages read the same file); it holds full-dimension vectors,
    cut to the model's ``truncate_dim`` here when it has one. Any other model embeds as usual.
    """
    model = getattr(embed_model, "_model", None)
    if not (hasattr(model, "encode_document") and getattr(embed_model, "normalize", False)):
        return
    retriever = DenseRetriever.cached(model, embedder_path, corpus, cache_dir, embed_model.embed_batch_size)
    for node, vector in zip(nodes, retriever.embeddings.tolist(), strict=True):
        node.embedding = vector


def served_dimension(embed_model: BaseEmbedding) -> int | None:
    """The ``truncate_dim`` of the sentence-transformers model inside ``embed_model`` (None: full vectors)."""
    return getattr(getattr(embed_model, "_model", None), "truncate_dim", None)


def load_vector_index(
    run: RunDir, embed_model: BaseEmbedding, embedder_path: str, store: str = STORE_SIMPLE
) -> VectorStoreIndex:
    """The run's persisted index in the chosen store, rebuilt when the embedder, its served dimension, the corpus
    or the store changed.

    Args:
        run: the run directory (reads ``data/corpus.jsonl``; writes ``index/`` on the main process).
        embed_model: the embedding model to index and query with (its vectors' dimension is the index's).
        embedder_path: its folder, hashed to detect a changed embedder.
        store: ``simple``, ``qdrant`` or a Qdrant server URL (``assemble.vector_store``).

    Returns:
        A ``VectorStoreIndex`` whose nodes are the corpus chunks; close a Qdrant one with
        :func:`close_vector_index` before another client opens the same folder.
    """
    corpus = read_jsonl(run.require("data", "corpus")["corpus"])
    meta = {
        "embedder": embedder_path,
        "embedder_hash": model_hash(embedder_path),
        "truncate_dim": served_dimension(embed_model),
        "corpus_hash": corpus_hash(corpus),
        "vector_store": store,
    }
    if store != STORE_SIMPLE:
        meta["collection"] = collection_name(run)
    index_dir = run.path(INDEX_DIR)
    meta_path = index_dir / INDEX_META
    if meta_path.exists():
        built = json.loads(meta_path.read_text(encoding="utf-8"))
        if all(built.get(k, STORE_SIMPLE if k == "vector_store" else None) == v for k, v in meta.items()):
            if store == STORE_SIMPLE:
                return load_index_from_storage(
                    StorageContext.from_defaults(persist_dir=str(index_dir)), embed_model=embed_model
                )
            vector_store = qdrant_vector_store(store, index_dir / QDRANT_DIR, meta["collection"])
            return VectorStoreIndex.from_vector_store(vector_store, embed_model=embed_model)
        logger.info("index: embedder, dimension, corpus or store changed since %s was built: rebuilding", index_dir)
    started = time.time()
    nodes = corpus_nodes(corpus, uuid_ids=store != STORE_SIMPLE)
    attach_cached_embeddings(nodes, embed_model, embedder_path, corpus, run.path(EMBEDDING_CACHE))
    if store == STORE_SIMPLE:
        index = VectorStoreIndex(nodes, embed_model=embed_model, show_progress=is_main_process())
    if is_main_process():
        with atomic_dir(index_dir) as tmp:
            if store == STORE_SIMPLE:
                index.storage_context.persist(persist_dir=str(tmp))
            else:
                vector_store = qdrant_vector_store(store, tmp / QDRANT_DIR, meta["collection"])
                if is_server_url(store) and vector_store.client.collection_exists(meta["collection"]):
                    vector_store.client.delete_collection(meta["collection"])
                storage = StorageContext.from_defaults(vector_store=vector_store)
                VectorStoreIndex(nodes, storage_context=storage, embed_model=embed_model, show_progress=True)
                vector_store.client.close()
            meta |= {"chunks": len(corpus), "built": time.time(), "seconds": round(time.time() - started, 2)}
            (tmp / INDEX_META).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        logger.info("index: %d chunks embedded and persisted in %s (%s)", len(corpus), index_dir, store)
    if store == STORE_SIMPLE:
        return index
    vector_store = qdrant_vector_store(store, index_dir / QDRANT_DIR, meta["collection"])
    return VectorStoreIndex.from_vector_store(vector_store, embed_model=embed_model)
