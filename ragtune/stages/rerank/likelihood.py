"""Fine-tuning the query-likelihood reranker (``rerank.kind: query_likelihood``) on the mined lists.

Each training row is one query's list: its best-graded positive first, then its hard negatives. A LoRA adapter
(``rerank.query_likelihood.lora``) on the causal LM learns to give the positive the highest mean query
log-likelihood: softmax cross-entropy over the list's scores divided by ``rerank.query_likelihood.temperature``.
transformers' ``Trainer`` runs it (``accelerate launch`` and DDP as for any Trainer); the model is the
:class:`~ragtune.pipeline.query_likelihood.QueryLikelihoodReranker` itself, whose ``forward`` returns the loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ragtune.pipeline.config import RerankConfig
from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker, pack_left_padded


def likelihood_lists(
    rows: Sequence[Mapping[str, Any]], corpus_by_id: Mapping[str, Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """Mined rows as training lists ``{"query", "passages": [positive, negative_1, ...]}``.

    The positive is the query's best-graded one; queries without negatives are left out (a list of one
    teaches nothing).

    Example:
        >>> corpus = {"p": {"text": "P"}, "q": {"text": "Q"}, "n": {"text": "N"}}
        >>> likelihood_lists([{"query": "x", "positives": ["p", "q"], "relevance": {"p": 1, "q": 2},
        ...                    "negatives": ["n"]}], corpus)
        [{'query': 'x', 'passages': ['Q', 'N']}]
    """
    lists = []
    for r in rows:
        negatives = r["negatives"] + r.get("random_negatives", [])
        if not negatives:
            continue
        best = max(r["positives"], key=lambda p: r["relevance"].get(p, 0))
        lists.append({"query": r["query"], "passages": [corpus_by_id[c]["text"] for c in [best, *negatives]]})
    return lists


def hardest_negatives(passages: Sequence[str], scores: Sequence[float], keep: int) -> list[str]:
    """A list with its positive (first) and the ``keep`` negatives the scorer rates highest, best first.

    Example:
        >>> hardest_negatives(["pos", "a", "b", "c"], [-1.0, -3.0, -0.5, -2.0], keep=2)
        ['pos', 'b', 'c']
    """
    ranked = sorted(range(1, len(passages)), key=lambda i: -scores[i])[:keep]
    return [passages[0], *(passages[i] for i in ranked)]


def scorer_hard_lists(scorer: Any, lists: Sequence[Mapping[str, Any]], keep: int) -> list[dict[str, Any]]:
    """``lists`` with each list's negatives cut to the ``keep`` that ``scorer`` (the untrained reranker) rates
    highest: the negatives hard for the model being trained (``rerank.query_likelihood.negatives: scorer``).
    Every pair is scored in one batched ``predict``."""
    pairs = [(r["query"], p) for r in lists for p in r["passages"]]
    scores = iter(scorer.predict(pairs, batch_size=16, show_progress_bar=True))
    return [
        {"query": r["query"], "passages": hardest_negatives(r["passages"], [next(scores) for _ in r["passages"]], keep)}
        for r in lists
    ]


class ListCollator:
    """Packs a batch of lists into one left-padded batch of (passage prompt, query) pairs, with list sizes."""

    def __init__(self, reranker: QueryLikelihoodReranker) -> None:
        self.reranker = reranker

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        pairs = [(r["query"], p) for r in rows for p in r["passages"]]
        batch = pack_left_padded(self.reranker.encode(pairs), self.reranker.tokenizer.pad_token_id)
        return {**batch, "list_sizes": torch.tensor([len(r["passages"]) for r in rows])}


def build_query_likelihood(cfg: RerankConfig, train: bool) -> QueryLikelihoodReranker:
    """The reranker to train (a fresh LoRA adapter on ``rerank.query_likelihood.generator``) or, with
    ``train=False``, the plain LM (nothing to save but the spec)."""
    from peft import LoraConfig, get_peft_model

    qcfg = cfg.query_likelihood
    reranker = QueryLikelihoodReranker.from_generator(
        qcfg.generator, qcfg.prompt, qcfg.max_length, qcfg.dtype, prefix_cache_mb=qcfg.prefix_cache_mb
    )
    if train:
        lora = qcfg.lora
        reranker.lm = get_peft_model(
            reranker.lm,
            LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=lora.target_modules),
        )
    reranker.temperature = qcfg.temperature
    return reranker.eval()


def train_query_likelihood(
    reranker: QueryLikelihoodReranker, lists: Sequence[Mapping[str, Any]], args: Any, callbacks: Sequence[Any]
) -> Any:
    """Train the reranker's adapter on ``lists`` with ``args`` (TrainingArguments); returns the Trainer."""
    from datasets import Dataset
    from transformers import Trainer

    args.remove_unused_columns = False  # the collator reads the raw rows
    trainer = Trainer(
        model=reranker,
        args=args,
        train_dataset=Dataset.from_list(list(lists)),
        data_collator=ListCollator(reranker),
        callbacks=list(callbacks),
    )
    trainer.train()
    return trainer
