"""Length-grouped batches: every row once, rows of similar length together, a reproducible order per epoch."""

from __future__ import annotations

import random
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from datasets import Dataset

from ragtune.pipeline.length_batches import MEGABATCH_BATCHES, LengthGroupedBatchSampler, grouped_batches, row_lengths


def seeded(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_every_row_once_in_batches_of_the_size() -> None:
    lengths = [random.Random(1).randint(1, 300) for _ in range(103)]
    batches = grouped_batches(lengths, batch_size=8, drop_last=False, generator=seeded())
    assert sorted(i for b in batches for i in b) == list(range(103))
    assert sorted(len(b) for b in batches) == [7] + [8] * 12


def test_batches_hold_neighbours_in_length() -> None:
    """Within one block, the batches partition the rows sorted by length: their length ranges never overlap."""
    lengths = list(range(64))
    random.Random(2).shuffle(lengths)
    batches = grouped_batches(lengths, batch_size=8, drop_last=False, generator=seeded())
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert all(high - low == 7 for low, high in spans)
    assert all(a[1] < b[0] for a, b in pairwise(spans))


def test_batch_order_is_random_not_sorted() -> None:
    lengths = list(range(400))
    firsts = [max(lengths[i] for i in b) for b in grouped_batches(lengths, 8, False, seeded())]
    assert firsts != sorted(firsts) and firsts != sorted(firsts, reverse=True)


def test_rows_are_sorted_within_blocks_not_across() -> None:
    """Sorting is per block of MEGABATCH_BATCHES batches after a shuffle, so with more rows than a block the
    batches' length ranges overlap across blocks (a global sort would make every batch the same each epoch)."""
    rows = 2 * MEGABATCH_BATCHES * 4
    lengths = list(range(rows))
    batches = grouped_batches(lengths, batch_size=4, drop_last=False, generator=seeded())
    spans = sorted((min(lengths[i] for i in b), max(lengths[i] for i in b)) for b in batches)
    assert any(a[1] > b[0] for a, b in pairwise(spans))


def test_drop_last_leaves_out_partial_batches_only() -> None:
    batches = grouped_batches(list(range(21)), batch_size=4, drop_last=True, generator=seeded())
    assert [len(b) for b in batches] == [4] * 5


def test_row_lengths_read_string_columns_and_skip_labels() -> None:
    data = Dataset.from_dict({"query": ["abc", "a"], "positive": ["a", "abcdef"], "label": [0.5, -0.5]})
    assert row_lengths(data, ["label"]) == [3, 6]


@pytest.mark.parametrize("drop_last", [False, True])
def test_sampler_length_matches_what_it_yields(drop_last: bool) -> None:
    data = Dataset.from_dict({"query": ["x" * (i % 17) for i in range(45)], "label": [0.0] * 45})
    sampler = LengthGroupedBatchSampler(data, batch_size=8, drop_last=drop_last, valid_label_columns=["label"])
    assert len(list(sampler)) == len(sampler) == (5 if drop_last else 6)


def test_sampler_replays_an_epoch_and_reshuffles_the_next() -> None:
    """The same seed and epoch give the same batches (a resumed run skips exactly the ones it trained on)."""
    data = Dataset.from_dict({"query": ["x" * i for i in range(40)], "label": [0.0] * 40})
    first = LengthGroupedBatchSampler(data, batch_size=4, drop_last=False, seed=42)
    again = LengthGroupedBatchSampler(data, batch_size=4, drop_last=False, seed=42)
    assert list(first) == list(again)
    epoch0 = list(first)
    first.set_epoch(1)
    assert list(first) != epoch0


def test_the_gpl_round_groups_by_length_unless_told_not_to(tmp_path: Path) -> None:
    from sentence_transformers.base.sampler import BatchSamplers

    from ragtune.pipeline.config import GplConfig
    from ragtune.stages.gpl.train import training_arguments

    assert training_arguments(GplConfig(), tmp_path, 0).batch_sampler is LengthGroupedBatchSampler
    plain = training_arguments(GplConfig(group_by_length=False), tmp_path, 0)
    assert plain.batch_sampler == BatchSamplers.BATCH_SAMPLER
    user = training_arguments(GplConfig(trainer={"batch_sampler": "no_duplicates"}), tmp_path, 0)
    assert user.batch_sampler == BatchSamplers.NO_DUPLICATES
