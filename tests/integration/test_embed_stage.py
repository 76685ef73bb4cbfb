"""The embed stage through the `ragtune` CLI on the fixture domain, with the tiny random BERT."""

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes.upstream import run_dir_of
from safetensors.torch import load_file
from sentence_transformers import SentenceTransformer

from ragtune.app.cli import main as cli
from ragtune.pipeline.dev_slice import assign_dev_ranks
from ragtune.pipeline.rundir import atomic_write_jsonl, read_jsonl

METRIC_KEYS = {"hit@1", "hit@3", "recall@1", "recall@3", "mrr@10", "ndcg@10"}


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(model_dir.rglob("model.safetensors"))))


def test_embed_stage_trains_saves_reports_and_skips_when_fresh(tiny_config: Path, tiny_bert_dir: Path, capsys) -> None:
    overrides = [
        f"embed.base_model={tiny_bert_dir}",
        "embed.learning_rate=1e-3",
        "embed.epochs=4",
        "embed.k_values=[1,3]",
    ]
    # Refused, with the command to run, before the data stage has run.
    with pytest.raises(SystemExit) as exit_info:
        cli(["embed", str(tiny_config), *overrides])
    assert exit_info.value.code == 2
    assert "ragtune data" in capsys.readouterr().err

    cli(["data", str(tiny_config)])
    cli(["embed", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)

    # Parameters changed; the model reloads and embeds.
    before, after = _weights(tiny_bert_dir), _weights(run.path("embed/model"))
    assert set(before) == set(after)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    model = SentenceTransformer(str(run.path("embed/model")))
    assert model.encode(["heron failover"]).shape == (1, 32)

    # Before/after metrics on the held-out queries, the loss fell, the card names base model and data size.
    report = json.loads(run.path("embed/metrics.json").read_text())
    assert set(report["before"]) == set(report["after"]) == METRIC_KEYS
    assert all(0 <= v <= 1 for v in [*report["before"].values(), *report["after"].values()])
    eval_queries = [q for q in read_jsonl(run.path("data/queries.jsonl")) if q["split"] == "eval"]
    assert report["eval_queries"] == len(eval_queries) > 0
    assert report["last_loss"] < report["first_loss"]
    card = run.path("embed/model/README.md").read_text()
    assert str(tiny_bert_dir) in card and f"{report['train_pairs']} (query, positive chunk) pairs" in card
    assert not run.path("embed/checkpoints").exists()

    rec = run.load_manifest()["embed"]
    assert rec.status == "done"
    assert rec.outputs["model"]["path"] == "embed/model" and rec.outputs["metrics"]["path"] == "embed/metrics.json"
    assert set(rec.inputs) == {"data/corpus", "data/queries"}
    assert rec.metrics["after_ndcg@10"] == report["after"]["ndcg@10"]

    # Finished and fresh: skipped; a changed embed setting reruns it.
    cli(["embed", str(tiny_config), *overrides])
    assert run.load_manifest()["embed"].ended == rec.ended
    cli(["embed", str(tiny_config), *overrides, "embed.loss=triplet", "embed.method=linear_adapter"])
    rerun = run.load_manifest()["embed"]
    assert rerun.ended > rec.ended and rerun.config_hash != rec.config_hash


def test_linear_adapter_with_triplet_loss_reloads_as_one_asymmetric_model(
    tiny_config: Path, tiny_bert_dir: Path
) -> None:
    cli(["data", str(tiny_config)])
    cli(
        [
            "embed",
            str(tiny_config),
            f"embed.base_model={tiny_bert_dir}",
            "embed.method=linear_adapter",
            "embed.loss=triplet",
            "embed.learning_rate=1e-2",
            "embed.epochs=3",
        ]
    )
    run = run_dir_of(tiny_config)
    report = json.loads(run.path("embed/metrics.json").read_text())
    assert report["random_negatives"] == report["train_pairs"] > 0  # fixture queries carry no negatives

    base = SentenceTransformer(str(tiny_bert_dir))
    tuned = SentenceTransformer(str(run.path("embed/model")))
    texts = ["heron failover", "ledgerfish lease renewal"]
    np.testing.assert_allclose(tuned.encode_document(texts), base.encode(texts), atol=1e-5)
    assert not np.allclose(tuned.encode_query(texts), base.encode(texts), atol=1e-4)


def test_lora_gist_matryoshka_run(tiny_config: Path, tiny_bert_dir: Path) -> None:
    cli(["data", str(tiny_config)])
    cli(
        [
            "embed",
            str(tiny_config),
            f"embed.base_model={tiny_bert_dir}",
            "embed.method=lora",
            "embed.loss=gist",
            "embed.matryoshka_dims=[32,16]",
            "embed.learning_rate=1e-2",
            "embed.epochs=2",
            "embed.trainer.report_to=tensorboard",  # local event files: allowed, nothing leaves the machine
            "embed.trainer.logging_steps=1",
        ]
    )
    run = run_dir_of(tiny_config)
    assert (run.path("embed/model") / "adapter_config.json").exists()
    assert list(run.root.rglob("events.out.tfevents.*")), "tensorboard wrote no event file inside the run"
    tuned = SentenceTransformer(str(run.path("embed/model")))
    base = SentenceTransformer(str(tiny_bert_dir))
    assert not np.allclose(tuned.encode(["heron failover"]), base.encode(["heron failover"]), atol=1e-5)


def test_best_checkpoint_is_selected_on_a_document_disjoint_dev_slice(tiny_config: Path, tiny_bert_dir: Path) -> None:
    """A hand-made data stage with enough train documents for a dev slice."""
    run = run_dir_of(tiny_config)
    words = ["heron", "tortoise", "ledgerfish", "pondview", "failover", "drain", "lease", "invoice", "shard", "window"]
    corpus, queries = [], []
    for i in range(40):
        text = f"{words[i % 10]} {words[(i * 3) % 10]} {words[(i * 7) % 10]} note {i}"
        corpus.append({"id": f"c{i}", "doc_id": f"d{i}", "source": f"d{i}", "text": text, "start": 0, "end": 1})
        split = "eval" if i < 8 else "train"
        queries.append({"qid": f"q{i}", "text": f"which {text}?", "positives": [f"c{i}"], "doc_ids": [f"d{i}"]})
        queries[-1] |= {"relevance": {f"c{i}": 1}, "origin": "synthetic", "split": split}
    atomic_write_jsonl(run.path("data/corpus.jsonl"), corpus)
    atomic_write_jsonl(run.path("data/queries.jsonl"), assign_dev_ranks(queries, seed=42))
    run.record(
        "data",
        config_hash="handmade",
        inputs={},
        outputs={"corpus": "data/corpus.jsonl", "queries": "data/queries.jsonl"},
        started=time.time(),
    )
    cli(["embed", str(tiny_config), f"embed.base_model={tiny_bert_dir}", "embed.dev_fraction=0.25", "embed.epochs=2"])
    report = json.loads(run.path("embed/metrics.json").read_text())
    assert report["dev_queries"] == 8 and report["train_queries"] == 24 and report["eval_queries"] == 8
    assert report["best_checkpoint"].startswith("checkpoint-")
    assert "best dev nDCG@10" in report["selection"]
    assert not run.path("embed/checkpoints").exists()


def test_unknown_trainer_key_is_a_one_line_error(tiny_config: Path, tiny_bert_dir: Path, capsys) -> None:
    cli(["data", str(tiny_config), "synth.enabled=false"])
    with pytest.raises(SystemExit) as exit_info:
        cli(["embed", str(tiny_config), f"embed.base_model={tiny_bert_dir}", "embed.trainer.warmup_ratoi=0.1"])
    assert exit_info.value.code == 2
    assert "embed.trainer.warmup_ratoi" in capsys.readouterr().err


def test_bm25_hard_negatives_train_the_embedder_with_a_third_column(tiny_config: Path, tiny_bert_dir: Path) -> None:
    cli(["data", str(tiny_config)])
    overrides = [f"embed.base_model={tiny_bert_dir}", "embed.learning_rate=1e-3", "embed.epochs=4"]
    cli(["embed", str(tiny_config), *overrides, "embed.hard_negatives=bm25", "embed.pseudo_queries=20"])
    run = run_dir_of(tiny_config)
    before, after = _weights(tiny_bert_dir), _weights(run.path("embed/model"))
    assert any(not torch.equal(before[k], after[k]) for k in before)
    report = json.loads(run.path("embed/metrics.json").read_text())
    losses = [loss for _, loss in report["loss_history"]]
    assert sum(losses[-2:]) < sum(losses[:2])
    assert report["random_negatives"] < report["train_pairs"]  # BM25 found a negative for most pairs


def test_base_share_saves_the_midpoint_of_start_and_trained_weights(
    tiny_config: Path, tiny_bert_dir: Path, capsys
) -> None:
    overrides = [f"embed.base_model={tiny_bert_dir}", "embed.learning_rate=1e-3", "embed.epochs=2"]
    cli(["data", str(tiny_config)])
    run = run_dir_of(tiny_config)
    cli(["embed", str(tiny_config), *overrides])
    trained = _weights(run.path("embed/model"))
    cli(["embed", str(tiny_config), *overrides, "embed.base_share=0.5"])  # a changed setting: trains again
    mixed, start = _weights(run.path("embed/model")), _weights(tiny_bert_dir)

    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert moved  # training changed weights, and the same seed trains the same weights again
    for key in start:
        torch.testing.assert_close(mixed[key], (start[key] + trained[key]) / 2, atol=1e-6, rtol=1e-5)
    report = json.loads(run.path("embed/metrics.json").read_text())
    assert report["base_share"] == 0.5
    assert "50% of the starting weights mixed back" in run.path("embed/model/README.md").read_text()

    # LoRA's start is not a weight to mix with: refused before any model loads, naming the key.
    capsys.readouterr()
    with pytest.raises(SystemExit):
        cli(["embed", str(tiny_config), *overrides, "embed.base_share=0.5", "embed.method=lora"])
    assert "embed.base_share" in capsys.readouterr().err
