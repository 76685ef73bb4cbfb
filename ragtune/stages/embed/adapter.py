"""Query-side linear adapter over a frozen embedder, saved as ONE sentence-transformers model.

LlamaIndex's EmbeddingAdapterFinetuneEngine trained a linear map applied to query embeddings only, so
the document index built with the base model stays valid. Here the same idea is a
sentence-transformers ``Router``: the ``query`` route runs the base modules and then an
identity-initialised ``Dense``; the ``document`` route runs the same (shared, frozen) base modules
alone. The result saves with ``model.save`` and loads back with plain ``SentenceTransformer(path)``;
``encode_query`` goes through the adapter and ``encode_document`` does not.
"""

from __future__ import annotations

import logging

import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.base.modules import Dense, Normalize, Router

logger = logging.getLogger(__name__)

# Columns of the training dataset -> Router route (SentenceTransformerTrainingArguments.router_mapping).
ROUTER_MAPPING = {"anchor": "query", "positive": "document", "negative": "document"}


def add_query_adapter(base: SentenceTransformer) -> SentenceTransformer:
    """Wrap ``base`` in a Router whose query route adds a trainable, identity-initialised linear layer.

    The base modules are shared by both routes and frozen; a trailing ``Normalize`` stays after the
    Router so queries are normalised after the adapter, as documents are.

    Args:
        base: a plain sentence-transformers model (e.g. Transformer, Pooling[, Normalize]).

    Returns:
        A new SentenceTransformer ``[Router(query=base+Dense, document=base)(, Normalize)]``; before
        training, its query and document embeddings equal the base model's.

    Example (with a loaded model, not run as a doctest):
        model = add_query_adapter(SentenceTransformer("path/to/minilm"))
        model.encode_query(["q"]).shape == model.encode_document(["d"]).shape  # True
    """
    modules = list(base)
    tail = [modules.pop()] if isinstance(modules[-1], Normalize) else []
    for module in modules:
        module.requires_grad_(False)
    dim = base.get_embedding_dimension()
    dense = Dense(
        dim,
        dim,
        bias=True,
        activation_function=None,
        init_weight=torch.eye(dim),
        init_bias=torch.zeros(dim),
    )
    router = Router.for_query_document(query_modules=[*modules, dense], document_modules=modules)
    model = SentenceTransformer(modules=[router, *tail], similarity_fn_name=base.similarity_fn_name, device=base.device)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    logger.info("linear adapter: %d trainable parameters over a frozen base", trainable)
    return model
