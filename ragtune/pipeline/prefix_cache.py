"""Passage prefixes read once: the key/value states of a query-likelihood prompt, kept for the next query.

A query-likelihood reranker reads ``prompt(passage)`` and then the query, and only the query's tokens are
scored. Everything before the query depends on the passage alone, so its key/value states can be computed once
per passage and reused for every query that reranks it: a query then costs a pass over its own ~15 tokens
instead of ~300. The scores are the same (exactly, in float32).

- :class:`PrefixStore` keeps passages' key/value states, least recently used first out, within a byte budget.
- :func:`pack_after_prefixes` lays out a batch of continuations (the prefix's last token, then the query) after
  cached prefixes of different lengths; :func:`stack_prefixes` left-pads the cached states into one batch.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable, Sequence

import torch

LayerStates = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (keys, values), each (kv heads, tokens, head dim)


def states_bytes(states: LayerStates) -> int:
    """Bytes held by one prefix's key/value tensors."""
    return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in states)


def cached_part(context: Sequence[int]) -> tuple[int, ...]:
    """The part of a passage's prompt whose key/value states are kept: all but its last token (the continuation
    starts with that one, so the query's first token is predicted in the query's own pass).

    Example:
        >>> cached_part([5, 6, 7])
        (5, 6)
    """
    return tuple(context[:-1])


class PrefixStore:
    """Key/value states of prefixes by key, least recently used evicted first, at most ``max_bytes`` in all.

    An entry larger than the whole budget is not kept. ``max_bytes`` 0 keeps nothing.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._entries: OrderedDict[Hashable, tuple[LayerStates, int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: Hashable) -> LayerStates | None:
        """The states under ``key`` (now the most recently used), or None."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[0]

    def put(self, key: Hashable, states: LayerStates) -> None:
        """Keep ``states`` under ``key``, evicting the least recently used entries until they fit."""
        size = states_bytes(states)
        if size > self.max_bytes:
            return
        if key in self._entries:
            self.nbytes -= self._entries.pop(key)[1]
        while self._entries and self.nbytes + size > self.max_bytes:
            self.nbytes -= self._entries.popitem(last=False)[1][1]
        self._entries[key] = (states, size)
        self.nbytes += size

    def clear(self) -> None:
        """Forget every entry (the weights that computed them changed)."""
        self._entries.clear()
        self.nbytes = 0


def pack_after_prefixes(
    prefix_lengths: Sequence[int], continuations: Sequence[Sequence[int]], pad_id: int
) -> dict[str, torch.Tensor]:
    """A batch of continuations, each to be read after its cached prefix (left-padded to the longest prefix).

    Each continuation is the prefix's last token followed by the query, so the query's first token is predicted
    inside this pass. Continuations are right-padded.

    Returns:
        ``input_ids``, ``position_ids`` and ``target_mask`` (B, N) for the continuations (True at the query's
        tokens), and ``attention_mask`` (B, P + N) over the padded prefixes and the continuations.

    Example:
        >>> b = pack_after_prefixes([2, 1], [[7, 8], [5, 8, 9]], pad_id=0)
        >>> b["input_ids"].tolist(), b["target_mask"].int().tolist()
        ([[7, 8, 0], [5, 8, 9]], [[0, 1, 0], [0, 1, 1]])
        >>> b["position_ids"].tolist(), b["attention_mask"].tolist()
        ([[2, 3, 0], [1, 2, 3]], [[1, 1, 1, 1, 0], [0, 1, 1, 1, 1]])
    """
    width, prefix_width = max(map(len, continuations)), max(prefix_lengths)
    ids = torch.full((len(continuations), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(continuations), prefix_width + width), dtype=torch.long)
    positions = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for row, (cached, tokens) in enumerate(zip(prefix_lengths, continuations, strict=True)):
        n = len(tokens)
        ids[row, :n] = torch.tensor(tokens, dtype=torch.long)
        attention[row, prefix_width - cached : prefix_width + n] = 1
        positions[row, :n] = torch.arange(cached, cached + n)
        target[row, 1:n] = True
    return {"input_ids": ids, "attention_mask": attention, "position_ids": positions, "target_mask": target}


def stack_prefixes(entries: Sequence[LayerStates]) -> LayerStates:
    """Per layer, the entries' keys and values left-padded (zeros) to the longest prefix: (B, kv heads, P, dim).

    The padding is masked out by :func:`pack_after_prefixes`' attention mask.
    """
    width = max(states[0][0].shape[1] for states in entries)
    layers = []
    for layer in range(len(entries[0])):
        first = entries[0][layer][0]
        keys = first.new_zeros((len(entries), first.shape[0], width, first.shape[2]))
        values = torch.zeros_like(keys)
        for row, states in enumerate(entries):
            k, v = states[layer]
            keys[row, :, width - k.shape[1] :] = k
            values[row, :, width - v.shape[1] :] = v
        layers.append((keys, values))
    return layers


def prefix_rounds(lengths: Sequence[int], bytes_per_token: int, budget: int, at_least: int) -> list[list[int]]:
    """Split prefixes (by index, in the given order) into rounds whose states fit ``budget`` bytes together.

    A round holds at least ``at_least`` prefixes (one batch), so a budget smaller than a batch still progresses.

    Example:
        >>> prefix_rounds([10, 10, 10, 10, 10], bytes_per_token=2, budget=45, at_least=1)
        [[0, 1], [2, 3], [4]]
        >>> prefix_rounds([10, 10, 10], bytes_per_token=2, budget=5, at_least=2)
        [[0, 1], [2]]
    """
    rounds: list[list[int]] = [[]]
    used = 0
    for i, length in enumerate(lengths):
        size = length * bytes_per_token
        if len(rounds[-1]) >= at_least and used + size > budget:
            rounds.append([])
            used = 0
        rounds[-1].append(i)
        used += size
    return [r for r in rounds if r]
