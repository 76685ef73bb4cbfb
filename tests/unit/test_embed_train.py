"""Embed stage building blocks: trainer arguments, metrics, losses, the LoRA and linear-adapter models."""

from pathlib import Path

import numpy as np
import pytest
import torch
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer import losses

from ragtune.pipeline.config import EmbedConfig
from ragtune.pipeline.precision import bf16_training
from ragtune.pipeline.retrieval import DenseRetriever, retrieval_metrics
from ragtune.stages.embed.adapter import add_query_adapter
from ragtune.stages.embed.evaluate import dev_pool, selection_evaluator
from ragtune.stages.embed.pairs import NoDuplicateKeysBatchSampler
from ragtune.stages.embed.train import build_loss, load_model, training_arguments

TEXTS = ["heron failover runbook", "ledgerfish renews leases", "tortoise drain window"]


def _args(tmp_path: Path, **embed):
    return training_arguments(EmbedConfig(**embed), tmp_path / "ckpt", 3, [frozenset()], 40, 10, "eval_dev_ndcg")


def test_trainer_arguments_ours_then_user_keys_and_unknown_keys_named(tmp_path: Path) -> None:
    args = _args(tmp_path)
    assert args.output_dir == str(tmp_path / "ckpt")
    assert args.use_cpu is (not torch.cuda.is_available())
    assert args.bf16 is bf16_training()  # autocast only where the hardware has native bf16 math
    assert args.report_to in ("none", [], ["none"]) and args.disable_tqdm is False
    assert args.load_best_model_at_end and args.metric_for_best_model == "eval_dev_ndcg" and args.eval_steps == 10
    assert args.batch_sampler.func is NoDuplicateKeysBatchSampler

    user = _args(tmp_path, trainer={"logging_steps": 7, "save_total_limit": 3})
    assert user.logging_steps == 7 and user.save_total_limit == 3
    assert _args(tmp_path, trainer={"bf16": False}).bf16 is False

    no_dev = training_arguments(EmbedConfig(), tmp_path / "c", 3, [], 40, None, "unused")
    assert not no_dev.load_best_model_at_end and no_dev.save_strategy == "no"

    with pytest.raises(ValueError, match=r"embed\.trainer\.learning_rat\b"):
        _args(tmp_path, trainer={"learning_rat": 1e-3})
    with pytest.raises(ValueError, match=r"embed\.trainer\.output_dir"):
        _args(tmp_path, trainer={"output_dir": "/elsewhere"})


def test_retrieval_metrics_hand_computed_and_equal_to_the_library_evaluator(tiny_bert_dir: Path) -> None:
    model = SentenceTransformer(str(tiny_bert_dir))
    corpus = [{"id": f"c{i}", "text": t} for i, t in enumerate(TEXTS)]
    retriever = DenseRetriever.encode(model, corpus)
    # The query is a chunk's own text, so its nearest chunk is that chunk: hit@1 = MRR = nDCG = 1.
    queries = [{"qid": "q", "text": TEXTS[1], "positives": ["c1"]}]
    metrics = retrieval_metrics(retriever, queries, [1, 2])
    assert metrics == pytest.approx(
        {"hit@1": 1.0, "hit@2": 1.0, "recall@1": 1.0, "recall@2": 1.0, "mrr@10": 1.0, "ndcg@10": 1.0}
    )
    # Over the whole corpus (no pool cut), the selection evaluator and our metrics agree on other queries too.
    others = [{"qid": f"o{i}", "text": w, "positives": [f"c{i}"]} for i, w in enumerate(["leases", "drain", "heron"])]
    library = selection_evaluator(others, dev_pool(retriever, others, None), [1, 2])(model)
    ours = retrieval_metrics(retriever, others, [1, 2])
    assert library["dev_cosine_ndcg@10"] == pytest.approx(ours["ndcg@10"])
    assert library["dev_cosine_accuracy@1"] == pytest.approx(ours["hit@1"])


def test_dev_pool_is_positives_plus_each_querys_top_k() -> None:
    corpus = [{"id": f"c{i}", "text": str(i)} for i in range(6)]
    emb = torch.eye(6)
    retriever = DenseRetriever(None, corpus, emb)
    queries = [{"qid": "a", "text": "x", "positives": ["c5"]}]
    retriever.encode_queries = lambda texts: emb[[0] * len(texts)] + 0.5 * emb[[1] * len(texts)]  # c0, then c1
    pool = dev_pool(retriever, queries, 2)
    assert [c["id"] for c in pool] == ["c0", "c1", "c5"]  # corpus order; the positive always in
    assert len(dev_pool(retriever, queries, None)) == 6


def test_losses_and_matryoshka_dims_checked(tiny_bert_dir: Path) -> None:
    model = SentenceTransformer(str(tiny_bert_dir))
    base = str(tiny_bert_dir)
    assert isinstance(build_loss(EmbedConfig(), model, base), losses.MultipleNegativesRankingLoss)
    cached = build_loss(EmbedConfig(loss="cached_mnrl"), model, base)
    assert isinstance(cached, losses.CachedMultipleNegativesRankingLoss)
    gist = build_loss(EmbedConfig(loss="gist"), model, base)
    assert isinstance(gist, losses.GISTEmbedLoss)
    assert not any(p.requires_grad for p in gist.guide.parameters())
    assert isinstance(build_loss(EmbedConfig(loss="triplet"), model, base), losses.TripletLoss)
    wrapped = build_loss(EmbedConfig(matryoshka_dims=[16, 32]), model, base)
    assert isinstance(wrapped, losses.MatryoshkaLoss) and list(wrapped.matryoshka_dims) == [32, 16]
    with pytest.raises(ValueError, match=r"embed\.matryoshka_dims.*\[64\]"):
        build_loss(EmbedConfig(matryoshka_dims=[16, 64]), model, base)


def test_lora_trains_only_adapter_weights(tiny_bert_dir: Path) -> None:
    model = load_model(EmbedConfig(method="lora", lora={"r": 4, "alpha": 8}), str(tiny_bert_dir))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert model.active_adapters()


def test_linear_adapter_is_identity_at_start_and_reloads_as_one_model(tiny_bert_dir: Path, tmp_path: Path) -> None:
    base = SentenceTransformer(str(tiny_bert_dir))
    before = base.encode(TEXTS)
    model = add_query_adapter(base)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("Dense" in n or "linear" in n for n in trainable)
    np.testing.assert_allclose(model.encode_query(TEXTS), before, atol=1e-5)
    np.testing.assert_allclose(model.encode_document(TEXTS), before, atol=1e-5)

    dense = model[0].sub_modules["query"][-1]
    with torch.no_grad():
        dense.linear.weight.copy_(torch.flip(torch.eye(dense.linear.in_features), dims=[0]))
    model.save(str(tmp_path / "adapted"))

    loaded = SentenceTransformer(str(tmp_path / "adapted"))
    np.testing.assert_allclose(loaded.encode_document(TEXTS), before, atol=1e-5)
    np.testing.assert_allclose(loaded.encode_query(TEXTS), before[:, ::-1], atol=1e-5)
    # Encoder weights are stored once, not once per route.
    assert (
        sum(p.numel() for p in loaded.parameters())
        == sum(p.numel() for p in base.parameters()) + dense.linear.weight.numel() + dense.linear.bias.numel()
    )
