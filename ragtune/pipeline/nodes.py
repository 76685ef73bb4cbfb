"""Corpus chunks as LlamaIndex nodes, and a node's chunk id back: shared by hybrid retrieval (core) and every
vector store of the app layer.

Qdrant point ids must be UUIDs, so its nodes are keyed by a UUID derived from the chunk id, which is kept in
the node's metadata; :func:`chunk_id_of` reads either form.
"""

from __future__ import annotations

import uuid

from llama_index.core.schema import BaseNode, TextNode

NODE_METADATA = ("doc_id", "source")
CHUNK_ID_KEY = "chunk_id"
_CHUNK_NAMESPACE = uuid.UUID("5b0f3c57-3f0e-4d0e-9a53-2d3c5e7a9b11")  # fixed: the same chunk gets the same UUID


def corpus_nodes(corpus: list[dict], uuid_ids: bool = False) -> list[TextNode]:
    """One ``TextNode`` per chunk, metadata doc_id/source (kept out of embeddings and prompts).

    Args:
        corpus: chunk rows (``id``, ``text``, ``doc_id``, ``source``).
        uuid_ids: node id = a UUID derived from the chunk id, which goes into ``metadata["chunk_id"]``
            (Qdrant accepts only UUIDs or integers as point ids); otherwise node id = chunk id.
    """
    nodes = []
    for row in corpus:
        metadata = {key: row.get(key) for key in NODE_METADATA}
        if uuid_ids:
            metadata[CHUNK_ID_KEY] = row["id"]
        nodes.append(
            TextNode(
                id_=str(uuid.uuid5(_CHUNK_NAMESPACE, row["id"])) if uuid_ids else row["id"],
                text=row["text"],
                metadata=metadata,
                excluded_embed_metadata_keys=list(metadata),
                excluded_llm_metadata_keys=list(metadata),
            )
        )
    return nodes


def chunk_id_of(node: BaseNode) -> str:
    """The corpus chunk id of a node from any store (Qdrant's nodes carry it in their metadata)."""
    return node.metadata.get(CHUNK_ID_KEY, node.node_id)
