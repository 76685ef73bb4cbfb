"""TSDAE adaptation: the encoder learns from damaged sentences (parameters move, loss is reported)."""

import random
from pathlib import Path

import pytest
import torch
from sentence_transformers import SentenceTransformer

from ragtune.stages.embed.tsdae import adapt_with_tsdae, adaptation_sentences, damage

pytestmark = pytest.mark.slow


def test_damage_keeps_order_and_at_least_one_word() -> None:
    sentence = "the standby router takes over within thirty seconds"
    for seed in range(20):
        kept = damage(sentence, random.Random(seed)).split()
        assert kept and all(w in sentence.split() for w in kept)
        assert kept == sorted(kept, key=sentence.split().index)  # words keep their order
    assert damage("word", random.Random(0), ratio=1.0) == "word"


def test_tsdae_trains_the_encoder(tiny_bert_dir: Path, tmp_path: Path) -> None:
    model = SentenceTransformer(str(tiny_bert_dir))
    before = [p.detach().clone() for p in model.parameters()]
    corpus = [{"doc_id": f"d{i}", "text": f"Heron berth {i} routes the night orders to the quay."} for i in range(8)]
    sentences = adaptation_sentences(corpus, {"d0"}, 100, seed=0)
    assert len(sentences) == 7
    report = adapt_with_tsdae(model, str(tiny_bert_dir), sentences, 3, 4, tmp_path / "ckpt", seed=0, learning_rate=1e-3)
    assert report["steps"] == 3 and report["first_loss"] > 0
    assert any(not torch.equal(a, b.detach()) for a, b in zip(before, model.parameters(), strict=True))
