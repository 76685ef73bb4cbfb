"""A query-likelihood reranker: a causal LM scores a passage by how likely it makes the query.

``score(query, passage)`` is the mean, over the query's tokens, of log P(token | prompt(passage), the query's
earlier tokens): the UPR reranker (Sachan et al., 2022, "Improving Passage Retrieval with Zero-Shot Question
Generation"). Like a cross-encoder it reads query and passage jointly; unlike a fresh one-logit head on a
bi-encoder it ranks before any training, because a language model already knows which questions a passage
answers. The rerank stage can fine-tune it with LoRA on the hard negatives it mined
(``ragtune.stages.rerank.likelihood``).

A reranker folder holds :data:`SPEC_FILE` (kind, generator reference, prompt, passage length, precision) and,
once trained, a peft adapter. :meth:`QueryLikelihoodReranker.predict` has ``CrossEncoder.predict``'s
signature, so the learning curve, the eval harness, RAFT, GPL and the LlamaIndex postprocessor call it as they
call a cross-encoder (:func:`ragtune.pipeline.components.load_reranker` tells the two folders apart). Scores are
memoised by (query, passage) content while the weights are frozen, and kept on disk when a cache file is
given: the eval harness then reuses the scores the rerank stage computed for the same eval candidates.

Outside training, ``predict`` reads each passage's prompt once and keeps its key/value states
(:mod:`ragtune.pipeline.prefix_cache`, ``prefix_cache_mb``): a passage reranked for another query costs only
that query's tokens. In float32 the scores equal the full pass's.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ragtune.pipeline.config import QUERY_LIKELIHOOD_PROMPT
from ragtune.pipeline.prefix_cache import (
    PrefixStore,
    cached_part,
    pack_after_prefixes,
    prefix_rounds,
    stack_prefixes,
)
from ragtune.pipeline.quoting import neutralise

SPEC_FILE = "ragtune_reranker.json"
KIND = "query_likelihood"
PREFIX_CACHE_MB = 1024


def is_query_likelihood(path: str | Path) -> bool:
    """True when ``path`` is a folder the rerank stage saved a query-likelihood reranker to."""
    spec = Path(path) / SPEC_FILE
    return spec.is_file() and json.loads(spec.read_text(encoding="utf-8")).get("kind") == KIND


def pack_left_padded(sequences: Sequence[tuple[Sequence[int], Sequence[int]]], pad_id: int) -> dict[str, torch.Tensor]:
    """Left-pad (context ids, query ids) pairs into one batch whose rows all end with their query.

    Returns:
        ``input_ids`` and ``attention_mask`` (B, L), ``position_ids`` counting from each row's first real
        token, and ``target_mask`` (B, L), True at the query's tokens: the ones whose likelihood is scored.

    Example:
        >>> b = pack_left_padded([([5, 6], [7]), ([5], [8, 9])], pad_id=0)
        >>> b["input_ids"].tolist(), b["target_mask"].int().tolist(), b["position_ids"].tolist()
        ([[5, 6, 7], [5, 8, 9]], [[0, 0, 1], [0, 1, 1]], [[0, 1, 2], [0, 1, 2]])
        >>> pack_left_padded([([5], [7]), ([5, 6, 6], [8])], pad_id=0)["input_ids"].tolist()
        [[0, 0, 5, 7], [5, 6, 6, 8]]
    """
    width = max(len(c) + len(q) for c, q in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for row, (context, query) in enumerate(sequences):
        n = len(context) + len(query)
        ids[row, width - n :] = torch.tensor([*context, *query], dtype=torch.long)
        attention[row, width - n :] = 1
        target[row, width - len(query) :] = True
    positions = (attention.cumsum(-1) - 1).clamp(min=0)
    return {"input_ids": ids, "attention_mask": attention, "position_ids": positions, "target_mask": target}


def mean_token_log_likelihood(logits_at: Any, hidden: torch.Tensor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Per row, the mean log-probability of its target tokens, each predicted from the position before it.

    Args:
        logits_at: maps (N, d) hidden states to (N, vocab) logits (the LM head): applied to the query's
            positions only, which saves the head's cost on every passage token.
        hidden: (B, L, d) last hidden states of ``batch``.
        batch: :func:`pack_left_padded` output.

    Returns:
        (B,) float32 scores (differentiable).
    """
    predicts = batch["target_mask"][:, 1:]  # position t predicts token t + 1
    states = hidden[:, :-1][predicts]
    targets = batch["input_ids"][:, 1:][predicts]
    log_probs = torch.log_softmax(logits_at(states).float(), dim=-1).gather(1, targets[:, None]).squeeze(1)
    rows = predicts.nonzero()[:, 0]
    totals = torch.zeros(hidden.shape[0], device=hidden.device).index_add(0, rows, log_probs)
    return totals / predicts.sum(1).clamp(min=1)


def listwise_cross_entropy(scores: torch.Tensor, sizes: Sequence[int], temperature: float) -> torch.Tensor:
    """Mean over lists of the softmax cross-entropy of each list's scores / ``temperature`` against its first
    entry (the positive leads every training list).

    Example:
        >>> round(float(listwise_cross_entropy(torch.tensor([0.0, 0.0, 1.0, 1.0]), [2, 2], 1.0)), 4)  # ln 2 each
        0.6931
    """
    first = torch.zeros(1, dtype=torch.long, device=scores.device)
    return torch.stack(
        [nn.functional.cross_entropy(row[None] / temperature, first) for row in scores.split(sizes)]
    ).mean()


def pair_key(query: str, passage: str) -> str:
    """Content key of a (query, passage) pair in the score cache."""
    return hashlib.sha256(f"{query}\0{passage}".encode()).hexdigest()[:24]


def new_pairs(keys: Sequence[str], memo: Mapping[str, float]) -> list[int]:
    """Indices of the pairs to score: the first of each key the memo lacks (a repeated pair is scored once).

    Example:
        >>> new_pairs(["a", "b", "a", "c"], {"c": 0.1})
        [0, 1]
    """
    first: dict[str, int] = {}
    for i, key in enumerate(keys):
        if key not in memo and key not in first:
            first[key] = i
    return list(first.values())


def read_score_cache(path: Path) -> dict[str, float]:
    """The scores of an append-only cache file (JSON lines ``[key, score]``); a line cut short by a killed
    process is skipped, and a missing file is an empty cache."""
    if not path.is_file():
        return {}
    memo = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            key, score = json.loads(line)
        except (ValueError, TypeError):
            continue
        memo[key] = float(score)
    return memo


def append_scores(path: Path, scores: Mapping[str, float]) -> None:
    """Append new scores to the cache file in one write: each ``predict`` adds its lines, never rewrites the file."""
    from ragtune.pipeline.rundir import reporting_full_disk

    if not scores:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with reporting_full_disk(path), path.open("a", encoding="utf-8") as fh:
        fh.write("".join(json.dumps([k, v]) + "\n" for k, v in scores.items()))


def untrained_cache_name(generator: str, prompt: str, max_length: int) -> str:
    """The score cache file stem of an untrained reranker: the LM's content hash, the prompt, the passage length."""
    import hashlib

    from ragtune.pipeline.models import resolve_model
    from ragtune.pipeline.retrieval import model_hash

    key = hashlib.sha256(f"{model_hash(resolve_model(generator))}\n{prompt}\n{max_length}".encode())
    return f"untrained-{key.hexdigest()[:16]}"


class QueryLikelihoodReranker(nn.Module):
    """A causal LM (optionally with a LoRA adapter) that scores (query, passage) pairs by query likelihood.

    Args:
        lm: a ``*ForCausalLM`` or a peft model wrapping one (training adds the adapter in place).
        tokenizer: its tokenizer.
        prompt: the passage's prompt; ``{passage}`` marks where the passage goes, the query follows it.
        max_length: passage tokens read (the rest of a longer passage is cut).
        cache_file: an append-only JSON-lines file of scores by :func:`pair_key` to read and extend (None: memory
            only).
        prefix_cache_mb: memory for passages' key/value prefixes kept between ``predict`` calls (0: none; each
            pair is then read whole).

    Attributes:
        temperature: divides the scores in the training loss (``rerank.query_likelihood.temperature``).
    """

    def __init__(
        self,
        lm: Any,
        tokenizer: Any,
        prompt: str = QUERY_LIKELIHOOD_PROMPT,
        max_length: int = 256,
        cache_file: Path | None = None,
        prefix_cache_mb: int = PREFIX_CACHE_MB,
    ) -> None:
        super().__init__()
        if prompt.count("{passage}") != 1:
            raise ValueError(f"rerank.query_likelihood.prompt must contain {{passage}} once: {prompt!r}")
        self.lm, self.tokenizer, self.prompt, self.max_length = lm, tokenizer, prompt, max_length
        head, tail = prompt.split("{passage}")
        self.head_ids = tokenizer(head, add_special_tokens=False).input_ids
        self.tail_ids = tokenizer(tail, add_special_tokens=False).input_ids
        self.cache_file = cache_file
        self.memo: dict[str, float] = {}
        self.prefixes = PrefixStore(prefix_cache_mb * 2**20)
        self.temperature = 0.1
        if cache_file is not None:
            self.memo = read_score_cache(cache_file)

    def causal_lm(self) -> Any:
        """The ``*ForCausalLM`` itself (under a peft wrapper, the base model with the adapter layers in it)."""
        return self.lm.get_base_model() if hasattr(self.lm, "get_base_model") else self.lm

    def train(self, mode: bool = True) -> QueryLikelihoodReranker:
        """As ``nn.Module.train``; switching to training forgets memoised scores and prefixes (the weights will
        change)."""
        if mode:
            self.memo, self.cache_file = {}, None
            self.prefixes.clear()
        return super().train(mode)

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        """As ``nn.Module.load_state_dict``; new weights forget memoised scores and prefixes."""
        self.memo, self.cache_file = {}, None
        self.prefixes.clear()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def encode(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[list[int], list[int]]]:
        """(prompt with the passage, query) token ids per pair: each cut at ``max_length`` tokens, the passage's
        format tags neutralised (a chat-template token in a document would otherwise become the real one)."""
        tok = self.tokenizer
        passages = tok(
            [" " + neutralise(p) for _, p in pairs],
            add_special_tokens=False,
            truncation=True,
            max_length=self.max_length,
        )
        # The query is cut to the passage's window too: an 8 KB question must not ask for gigabytes.
        queries = tok(
            [" " + q for q, _ in pairs], add_special_tokens=False, truncation=True, max_length=self.max_length
        )
        return [
            ([*self.head_ids, *p, *self.tail_ids], q)
            for p, q in zip(passages.input_ids, queries.input_ids, strict=True)
        ]

    def forward(self, input_ids, attention_mask, position_ids, target_mask, list_sizes=None) -> dict[str, Any]:
        """Scores of a packed batch; with ``list_sizes`` (a training batch of lists, positive first) also the
        listwise loss: softmax cross-entropy of each list's scores against its first passage."""
        batch = {"input_ids": input_ids, "attention_mask": attention_mask, "target_mask": target_mask}
        lm = self.causal_lm()
        hidden = lm.get_decoder()(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids
        ).last_hidden_state
        scores = mean_token_log_likelihood(lm.get_output_embeddings(), hidden, batch)
        if list_sizes is None:
            return {"scores": scores}
        return {"loss": listwise_cross_entropy(scores, list_sizes.tolist(), self.temperature), "scores": scores}

    @torch.no_grad()
    def predict(
        self, pairs: Sequence[tuple[str, str]], batch_size: int = 16, show_progress_bar: bool = False, **_: Any
    ) -> list[float]:
        """Query-likelihood scores of (query, passage) pairs, as ``CrossEncoder.predict`` returns them.

        Pairs already scored by these weights come from the memo (and the cache file). The rest are scored after
        their passages' cached prefixes (``prefix_cache_mb`` > 0), else batched by length, whole. ``batch_size``
        is in pairs.
        """
        from tqdm.auto import tqdm

        keys = [pair_key(q, p) for q, p in pairs]
        todo = new_pairs(keys, self.memo)
        if todo:
            was_training = self.training
            super().train(False)
            encoded = self.encode([pairs[i] for i in todo])
            score = self._score_after_prefixes if self.prefixes.max_bytes else self._score_whole
            with tqdm(total=len(todo), desc="query likelihood", disable=not show_progress_bar) as bar:
                scores = score(encoded, batch_size, bar)
            for i, value in zip(todo, scores, strict=True):
                self.memo[keys[i]] = value
            super().train(was_training)
            if self.cache_file is not None and not self.training:
                append_scores(self.cache_file, {keys[i]: self.memo[keys[i]] for i in todo})
        return [self.memo[k] for k in keys]

    @torch.no_grad()
    def warm(self, passages: Sequence[str], batch_size: int = 16, show_progress_bar: bool = False) -> int:
        """Read passages' prompts before any query and keep their key/value prefixes, in order, while the store
        has room: a server's first queries over them then cost what later ones do. Returns how many are kept."""
        from tqdm.auto import tqdm

        was_training = self.training
        super().train(False)
        encoded = self.encode([("", p) for p in passages])
        prefixes = list(dict.fromkeys(cached_part(context) for context, _ in encoded))
        per_token, device = self._state_bytes_per_token(), next(self.lm.parameters()).device
        kept = 0
        for start in tqdm(range(0, len(prefixes), batch_size), desc="passage prefixes", disable=not show_progress_bar):
            chunk = prefixes[start : start + batch_size]
            if self.prefixes.nbytes + sum(map(len, chunk)) * per_token > self.prefixes.max_bytes:
                break
            self._prefix_states(chunk, batch_size, device)
            kept += len(chunk)
        super().train(was_training)
        return kept

    def _score_whole(self, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, bar: Any) -> list[float]:
        """Scores of encoded pairs, each read whole, in batches of similar length (little padding)."""
        scores = [0.0] * len(encoded)
        order = sorted(range(len(encoded)), key=lambda j: len(encoded[j][0]) + len(encoded[j][1]))
        device = next(self.lm.parameters()).device
        for start in range(0, len(order), batch_size):
            chunk = order[start : start + batch_size]
            packed = pack_left_padded([encoded[j] for j in chunk], self.tokenizer.pad_token_id)
            batch_scores = self(**{k: v.to(device) for k, v in packed.items()})["scores"].tolist()
            for j, value in zip(chunk, batch_scores, strict=True):
                scores[j] = value
            bar.update(len(chunk))
        return scores

    def _score_after_prefixes(
        self, encoded: Sequence[tuple[list[int], list[int]]], batch_size: int, bar: Any
    ) -> list[float]:
        """Scores of encoded pairs, each query read after its passage's cached key/value prefix.

        The prefix is :func:`ragtune.pipeline.prefix_cache.cached_part` of the passage's prompt. Distinct
        prefixes are taken in rounds that fit the store's budget: each round computes the prefixes it lacks, then
        scores every pair over them.
        """
        device = next(self.lm.parameters()).device
        prefix_of = [cached_part(context) for context, _ in encoded]
        by_prefix: dict[tuple[int, ...], list[int]] = {}
        for j, prefix in enumerate(prefix_of):
            by_prefix.setdefault(prefix, []).append(j)
        prefixes = sorted(by_prefix, key=len)
        scores = [0.0] * len(encoded)
        lengths = [len(p) for p in prefixes]
        for indices in prefix_rounds(lengths, self._state_bytes_per_token(), self.prefixes.max_bytes, batch_size):
            states = self._prefix_states([prefixes[i] for i in indices], batch_size, device)
            rows = sorted((j for i in indices for j in by_prefix[prefixes[i]]), key=lambda j: len(encoded[j][1]))
            for start in range(0, len(rows), batch_size):
                chunk = rows[start : start + batch_size]
                batch = self.scores_after([encoded[j] for j in chunk], [prefix_of[j] for j in chunk], states)
                for j, value in zip(chunk, batch.tolist(), strict=True):
                    scores[j] = value
                bar.update(len(chunk))
        return scores

    def scores_after(
        self,
        encoded: Sequence[tuple[list[int], list[int]]],
        prefixes: Sequence[tuple[int, ...]],
        states: Mapping[tuple[int, ...], Any],
    ) -> torch.Tensor:
        """Scores of encoded pairs as one batch, each query read after its passage's cached key/value prefix.

        Args:
            encoded: (prompt with the passage, query) ids per pair (:meth:`encode`).
            prefixes: each pair's :func:`~ragtune.pipeline.prefix_cache.cached_part` of its prompt.
            states: the key/value states of every prefix (:meth:`_prefix_states`).

        Returns:
            (B,) scores, differentiable through the query's tokens (the prefixes' states are inputs).
        """
        from transformers import DynamicCache

        lm = self.causal_lm()
        device = next(self.lm.parameters()).device
        packed = pack_after_prefixes(
            [len(p) for p in prefixes],
            [[context[-1], *query] for context, query in encoded],
            self.tokenizer.pad_token_id,
        )
        packed = {k: v.to(device) for k, v in packed.items()}
        past = DynamicCache(stack_prefixes([states[p] for p in prefixes]), config=lm.config)
        hidden = lm.get_decoder()(
            input_ids=packed["input_ids"],
            attention_mask=packed["attention_mask"],
            position_ids=packed["position_ids"],
            past_key_values=past,
            use_cache=True,
        ).last_hidden_state
        return mean_token_log_likelihood(lm.get_output_embeddings(), hidden, packed)

    def _prefix_states(self, prefixes: Sequence[tuple[int, ...]], batch_size: int, device: Any) -> dict[tuple, Any]:
        """Key/value states of each prefix: from the store, or computed in left-padded batches and stored."""
        found = {p: s for p in prefixes if (s := self.prefixes.get(p)) is not None}
        missing = [p for p in prefixes if p not in found]
        decoder = self.causal_lm().get_decoder()
        for start in range(0, len(missing), batch_size):
            chunk = missing[start : start + batch_size]
            packed = pack_left_padded([(list(p), []) for p in chunk], self.tokenizer.pad_token_id)
            past = decoder(
                input_ids=packed["input_ids"].to(device),
                attention_mask=packed["attention_mask"].to(device),
                position_ids=packed["position_ids"].to(device),
                use_cache=True,
            ).past_key_values
            width = packed["input_ids"].shape[1]
            for row, prefix in enumerate(chunk):
                cut = width - len(prefix)
                found[prefix] = [(la.keys[row, :, cut:].clone(), la.values[row, :, cut:].clone()) for la in past.layers]
                self.prefixes.put(prefix, found[prefix])
        return found

    def _state_bytes_per_token(self) -> int:
        """Bytes of key/value state one prefix token holds (every layer's keys and values)."""
        config = self.causal_lm().config
        heads = config.num_attention_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        size = self.causal_lm().get_input_embeddings().weight.element_size()
        return 2 * config.num_hidden_layers * kv_heads * head_dim * size

    def save(self, path: Path, generator: str, dtype: str) -> None:
        """Write the spec (and the adapter, when the LM carries one) into the folder ``path``."""
        path.mkdir(parents=True, exist_ok=True)
        if hasattr(self.lm, "save_pretrained") and hasattr(self.lm, "peft_config"):
            self.lm.save_pretrained(str(path))
        spec = {"kind": KIND, "generator": generator, "prompt": self.prompt, "max_length": self.max_length}
        (path / SPEC_FILE).write_text(json.dumps({**spec, "dtype": dtype}, indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(
        cls,
        path: str | Path,
        cache_dir: Path | None = None,
        base: str | None = None,
        prefix_cache_mb: int = PREFIX_CACHE_MB,
    ) -> QueryLikelihoodReranker:
        """Load a saved reranker (adapter merged in), in the precision its spec names.

        The folder may be the rerank stage's or one ``ragtune export`` wrote (with the tokenizer beside the
        adapter, which is then read from there).

        Args:
            cache_dir: where its score cache lives (a file named by the folder's content hash), or None; not
                used with ``base``, whose scores are not the folder's.
            base: the causal LM to put the adapter on (bundled:<name>, hub id or path) instead of the spec's
                ``generator``: e.g. the hub's weights of a bundled base, or a base moved since.
            prefix_cache_mb: memory for passages' key/value prefixes (0: none).
        """
        from ragtune.pipeline.rundir import hash_path

        path = Path(path)
        spec = json.loads((path / SPEC_FILE).read_text(encoding="utf-8"))
        adapter = str(path) if (path / "adapter_config.json").is_file() else None
        cache_file = None
        if cache_dir is not None and base is None:
            # A trained reranker's scores belong to its folder's content; an untrained one's to its LM and prompt,
            # so stage 2, eval and GPL's untrained teacher share one cache file.
            if adapter:
                name = hash_path(path)
            else:
                name = untrained_cache_name(spec["generator"], spec["prompt"], spec["max_length"])
            cache_file = Path(cache_dir) / f"{name}.jsonl"
        settings = (base or spec["generator"], spec["prompt"], spec["max_length"], spec["dtype"])
        return cls.from_generator(*settings, adapter, cache_file, prefix_cache_mb)

    @classmethod
    def from_generator(
        cls,
        generator: str,
        prompt: str,
        max_length: int,
        dtype: str,
        adapter: str | None = None,
        cache_file: Path | None = None,
        prefix_cache_mb: int = PREFIX_CACHE_MB,
    ) -> QueryLikelihoodReranker:
        """A reranker over the causal LM ``generator`` (bundled:<name>, hub id or path), in eval mode.

        Args:
            dtype: ``auto``, ``float32`` or ``bfloat16`` (:func:`ragtune.pipeline.precision.inference_dtype`).
            adapter: a peft adapter folder to merge in (or keep beside bf16 weights), or None.
            cache_file: the score cache file (None: memory only).
            prefix_cache_mb: memory for passages' key/value prefixes (0: none).
        """
        from ragtune.pipeline.generator import load_generator
        from ragtune.pipeline.models import resolve_model
        from ragtune.pipeline.precision import inference_dtype

        lm, tokenizer = load_generator(resolve_model(generator), adapter, inference_dtype(dtype))
        return cls(lm, tokenizer, prompt, max_length, cache_file, prefix_cache_mb).eval()
