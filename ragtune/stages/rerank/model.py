"""The cross-encoder to train: where its encoder starts and what scores the pair.

``rerank.cross_encoder.start_from`` picks the encoder: ``base_model`` (``rerank.cross_encoder.base_model``: the
bundled MiniLM, any encoder, or a hub cross-encoder) or ``tuned_embedder`` (stage 1's tuned encoder, which already
knows the domain's words). ``rerank.cross_encoder.head`` picks what turns the encoded (query, passage) pair into one
score:
``classifier`` is transformers' sequence-classification head (a tanh pooler on the [CLS] token, then one
logit: what hub cross-encoders ship with), ``mean_pool`` is a zero-initialised linear layer on the mean of
the token states, built from sentence-transformers modules (Transformer, Pooling, Dense) so it saves and
loads as a plain ``CrossEncoder``. A base that already is a cross-encoder keeps its own trained head.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from pathlib import Path
from typing import TYPE_CHECKING

from ragtune.pipeline.config import CrossEncoderConfig, RerankConfig
from ragtune.pipeline.models import resolve_model

if TYPE_CHECKING:
    from sentence_transformers.cross_encoder import CrossEncoder

logger = logging.getLogger(__name__)
# What the learning-rate mapping of the trainer matches to give a fresh head its own rate.
HEAD_PARAMETERS = r"\.classifier\.|\.score\.linear\."


def is_cross_encoder(path: str | Path) -> bool:
    """Whether a local model folder is already a trained cross-encoder (a sequence-classification model).

    A hub id that is not in the local cache is judged by name (``cross-encoder/...`` or ``...reranker...``).

    Example:
        >>> is_cross_encoder("cross-encoder/ms-marco-MiniLM-L6-v2")
        True
    """
    config = Path(path) / "config.json"
    if config.is_file():
        architectures = json.loads(config.read_text(encoding="utf-8")).get("architectures") or []
        return any(a.endswith("ForSequenceClassification") for a in architectures)
    name = str(path).lower()
    return name.startswith("cross-encoder/") or "reranker" in name


def default_learning_rate(cfg: RerankConfig) -> float:
    """``rerank.learning_rate``, or: 1e-4 for the query-likelihood LoRA adapter, 1e-3 for a cross-encoder's
    fresh head and 2e-5 for a base that already is a cross-encoder.

    Example:
        >>> default_learning_rate(RerankConfig()), default_learning_rate(RerankConfig(kind="cross_encoder"))
        (0.0001, 0.001)
        >>> default_learning_rate(RerankConfig(learning_rate=5e-4))
        0.0005
    """
    if cfg.learning_rate is not None:
        return cfg.learning_rate
    if cfg.kind == "query_likelihood":
        return 1e-4
    ce = cfg.cross_encoder
    pretrained = ce.start_from == "base_model" and is_cross_encoder(resolve_model(ce.base_model))
    return 2e-5 if pretrained else 1e-3


def build_cross_encoder(cfg: CrossEncoderConfig, tuned_embedder: Path) -> CrossEncoder:
    """The one-logit cross-encoder the rerank stage trains.

    Args:
        cfg: the ``rerank.cross_encoder`` section (``start_from``, ``head``, ``base_model``, ``max_length``).
        tuned_embedder: stage 1's model folder (a sentence-transformers folder whose root holds the encoder).

    Returns:
        A ``CrossEncoder`` with ``num_labels == 1``. With ``head: mean_pool`` the score starts at exactly 0
        for every pair, so before training it cannot reorder anything.
    """
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.cross_encoder import CrossEncoder
    from sentence_transformers.sentence_transformer.modules import Pooling

    start = str(tuned_embedder) if cfg.start_from == "tuned_embedder" else resolve_model(cfg.base_model)
    if is_cross_encoder(start):
        logger.info(
            "rerank: %s is a cross-encoder; training it with its own head (rerank.cross_encoder.head ignored)", start
        )
        return CrossEncoder(start, max_length=cfg.max_length)
    if cfg.head == "classifier":
        return CrossEncoder(start, num_labels=1, max_length=cfg.max_length)
    import torch

    encoder = Transformer(
        start,
        transformer_task="feature-extraction",
        model_kwargs={"add_pooling_layer": False},  # the [CLS] pooler gets no gradient here (DDP would refuse it)
        processor_kwargs={"model_max_length": cfg.max_length},
    )
    dim = encoder.get_embedding_dimension()
    score = Dense(
        dim,
        1,
        activation_function=None,
        init_weight=torch.zeros(1, dim),
        init_bias=torch.zeros(1),
        module_output_name="scores",
    )
    modules = OrderedDict([("encoder", encoder), ("pooling", Pooling(dim, "mean")), ("score", score)])
    model = CrossEncoder(modules=modules)
    model.max_seq_length = cfg.max_length
    return model
