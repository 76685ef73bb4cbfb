"""The rerank stage under 2-process DDP on CPU (gloo): `accelerate launch --multi_gpu --num_processes 2`."""

import json
from pathlib import Path

import pytest
from fakes.upstream import launch_ddp, run_dir_of, simulate_embed_stage

from ragtune.app.cli import main as cli

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def test_rerank_under_two_process_ddp_writes_one_model_and_one_entry(tiny_config: Path, tiny_bert_dir: Path) -> None:
    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)

    # bce: 4 train queries x (1 positive + 2 negatives) = 12 pairs in 6 batches of 2: one process would take
    # 6 steps, two processes share the batches and take 3 each.
    overrides = [
        "rerank.kind=cross_encoder",
        f"rerank.cross_encoder.base_model={tiny_bert_dir}",
        "rerank.mining.relative_margin=null",
        "rerank.batch_size=2",
        "rerank.pseudo_queries=0",  # the counts below are for the labelled train queries
    ]
    proc = launch_ddp("ragtune.stages.rerank.train", tiny_config, overrides, 600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    metrics = json.loads(run.path("rerank/metrics.json").read_text())
    assert metrics["train_examples"] == 12
    assert metrics["train_steps"] == 3  # the batches really were shared by 2 processes
    stages = run.load_manifest()
    assert stages["rerank"].status == "done"
    assert list(stages) == ["data", "embed", "rerank"]
    assert (run.path("rerank/model") / "model.safetensors").exists()
    leftovers = [p.name for p in run.path("rerank").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_query_likelihood_rerank_under_two_process_ddp_shares_the_lists(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)

    # 4 train lists in batches of 1: one process would take 4 steps for an epoch, two take 2 each.
    overrides = [
        f"rerank.query_likelihood.generator={tiny_llama_dir}",
        "rerank.mining.relative_margin=null",
        "rerank.batch_size=1",
    ]
    proc = launch_ddp("ragtune.stages.rerank.train", tiny_config, overrides, 600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    metrics = json.loads(run.path("rerank/metrics.json").read_text())
    assert metrics["kind"] == "query_likelihood" and metrics["train_examples"] == 4
    assert metrics["train_steps"] == 2  # the lists really were shared by 2 processes
    assert (run.path("rerank/model") / "adapter_model.safetensors").exists()
    assert list(run.load_manifest()) == ["data", "embed", "rerank"]
