"""Length-grouped training batches: rows of similar length share a batch, so less of each batch is padding.

Every text column of a sentence-transformers batch pads to its longest row, so a batch that mixes a title with
a 250-token abstract pays for 250 tokens twice. For a loss without in-batch negatives (MarginMSE on the GPL
round's triples) which rows share a batch does not change what a row contributes, only how much padding it
carries. Batches are drawn as transformers' ``group_by_length`` draws them: a seeded shuffle, blocks of
:data:`MEGABATCH_BATCHES` batches each sorted by length, then the batches in a seeded random order, so every
epoch still sees the rows in a new order. A row's length is its longest text in characters (no tokenizer needed:
the grouping only has to be close).

Example:
    >>> import torch
    >>> seeded = torch.Generator().manual_seed(0)
    >>> sorted(sorted(b) for b in grouped_batches([5, 100, 6, 90], batch_size=2, drop_last=False, generator=seeded))
    [[0, 2], [1, 3]]
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from functools import cached_property
from typing import Any

import torch
from sentence_transformers.base.sampler import DefaultBatchSampler

MEGABATCH_BATCHES = 50  # batches per sorted block, as transformers' LengthGroupedSampler


def grouped_batches(
    lengths: Sequence[int], batch_size: int, drop_last: bool, generator: torch.Generator
) -> list[list[int]]:
    """Row indices in batches of similar length, in a random order drawn from ``generator``.

    Args:
        lengths: one length per row.
        batch_size: rows per batch.
        drop_last: leave out batches with fewer than ``batch_size`` rows.
        generator: the source of both shuffles (seed it for a reproducible order).

    Returns:
        The batches; without ``drop_last`` every row is in exactly one.
    """
    order = torch.randperm(len(lengths), generator=generator).tolist()
    block = batch_size * MEGABATCH_BATCHES
    batches: list[list[int]] = []
    for start in range(0, len(order), block):
        rows = sorted(order[start : start + block], key=lambda i: -lengths[i])
        batches += [rows[j : j + batch_size] for j in range(0, len(rows), batch_size)]
    if drop_last:
        batches = [b for b in batches if len(b) == batch_size]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def row_lengths(dataset: Any, exclude: Sequence[str] = ()) -> list[int]:
    """Each row's longest text in characters, over the dataset's string columns not in ``exclude``.

    Example:
        >>> from datasets import Dataset
        >>> row_lengths(Dataset.from_dict({"q": ["ab", "a"], "p": ["abcd", ""], "label": [0.1, 0.2]}), ["label"])
        [4, 1]
    """
    texts = ("string", "large_string")
    columns = [c for c in dataset.column_names if c not in exclude and dataset.features[c].dtype in texts]
    if not columns:
        return [0] * len(dataset)
    return [max(map(len, texts)) for texts in zip(*(dataset[c] for c in columns), strict=True)]


class LengthGroupedBatchSampler(DefaultBatchSampler):
    """A sentence-transformers batch sampler (``batch_sampler=LengthGroupedBatchSampler`` in the training
    arguments) yielding :func:`grouped_batches`, reshuffled each epoch from ``seed + epoch`` so a resumed run
    replays the same order. It takes the trainer's arguments as :class:`DefaultBatchSampler` does, which keeps the
    dataset as ``sampler``."""

    @cached_property
    def lengths(self) -> list[int]:
        """Each row's longest text (:func:`row_lengths`), label columns left out."""
        return row_lengths(self.sampler, self.valid_label_columns or ())

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        yield from grouped_batches(self.lengths, self.batch_size, self.drop_last, generator)

    def __len__(self) -> int:
        rows = len(self.lengths)
        return rows // self.batch_size if self.drop_last else math.ceil(rows / self.batch_size)
