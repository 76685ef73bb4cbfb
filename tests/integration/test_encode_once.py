"""Each (model, corpus) pair is encoded once over a whole run: every consumer reads the shared cache."""

import hashlib
from collections import Counter
from pathlib import Path

import pytest
from fakes.upstream import SHORT_RUN, run_dir_of, tiny_model_overrides
from sentence_transformers import SentenceTransformer

from ragtune.app.cli import main as cli
from ragtune.pipeline.rundir import read_jsonl


def _fingerprint(model: SentenceTransformer) -> str:
    """The model's weights, hashed: a checkpoint, the tuned model and the base are told apart by content."""
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(p.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:12]


def test_a_full_run_and_the_assembled_index_encode_each_model_corpus_pair_once(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, frozenset[str]]] = []
    encode = SentenceTransformer.encode

    def counting_encode(self, inputs, *args, **kwargs):
        if not isinstance(inputs, str) and len(inputs) > 1:
            calls.append((_fingerprint(self), frozenset(inputs)))
        return encode(self, inputs, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", counting_encode)
    overrides = [
        *tiny_model_overrides(tiny_bert_dir, tiny_llama_dir),
        # the extractive synthesis with the round trip on (every query kept: the tiny embedder is random)
        "synth.enabled=true",
        f"synth.round_trip_model={tiny_bert_dir}",
        "synth.round_trip_top_k=100000",
        *SHORT_RUN,
    ]
    cli(["run", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    cli(["query", str(run.root), "how long may a failover take"])
    corpus = frozenset(c["text"] for c in read_jsonl(run.path("data/corpus.jsonl")))
    corpus_encodes = Counter(model for model, texts in calls if texts == corpus)

    # The base model (round trip, stage 1's "before", rag_only) and the tuned embedder (stage 1's "after",
    # mining, the rerank dev slice, RAFT's distractor pool, the eval harness, the index): once each.
    assert run.path("index/meta.json").exists()
    assert len(corpus_encodes) == 2, corpus_encodes
    assert set(corpus_encodes.values()) == {1}, corpus_encodes

    # Serving the embedder truncated (assemble.truncate_dim) rebuilds the index from the same full-dimension cache.
    cli(["query", str(run.root), "how long may a failover take", "assemble.truncate_dim=16"])
    assert run.path("index/meta.json").read_text().count('"truncate_dim": 16') == 1
    assert Counter(model for model, texts in calls if texts == corpus) == corpus_encodes
