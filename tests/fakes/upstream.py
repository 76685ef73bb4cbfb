"""Stand-ins for finished upstream stages, so a stage's tests need not train everything before it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from ragtune.pipeline.rundir import RunDir

# A whole tiny run in seconds: the fewest steps each stage takes and still trains.
SHORT_RUN = [
    "embed.max_steps=2",
    "rerank.max_steps=2",
    "raft.max_steps=1",
    "raft.max_length=1024",
    "assemble.max_new_tokens=4",
    "eval.bootstrap_samples=100",
]


def ranker_giving(rank: int) -> type:
    """A stand-in for ``DenseRetriever`` in the round trip: every query's chunk at ``rank``; it records the
    chunk ids it was asked about in its class attribute ``seen`` (reset it first)."""

    class FixedRanker:
        seen: list[str] = []  # noqa: RUF012 (shared on purpose: the test reads what the stage asked)

        @classmethod
        def load(cls, model_ref, corpus, **kwargs):
            return cls()

        def ranks(self, queries, chunk_ids):
            FixedRanker.seen += chunk_ids
            return [rank] * len(queries)

    return FixedRanker


def tiny_model_overrides(bert: Path, llama: Path) -> list[str]:
    """Overrides that point every stage at the tiny models and skip query synthesis."""
    return [
        "synth.enabled=false",
        f"embed.base_model={bert}",
        f"rerank.cross_encoder.base_model={bert}",
        f"rerank.query_likelihood.generator={llama}",
        f"raft.base_model={llama}",
    ]


def run_dir_of(config: Path) -> RunDir:
    """The run directory a config file points at."""
    tree = yaml.safe_load(config.read_text())
    return RunDir(Path(tree["run"]["root"]) / tree["run"]["name"])


def simulate_embed_stage(run: RunDir, model_dir: Path, metrics: dict | None = None) -> None:
    """What `ragtune embed` leaves behind: embed/model and its manifest entry (with ``metrics``, e.g. dev figures)."""
    shutil.copytree(model_dir, run.path("embed/model"))
    run.record(
        "embed",
        config_hash="simulated",
        inputs=run.input_hashes("data", "corpus", "queries"),
        outputs={"model": "embed/model"},
        metrics=metrics,
        started=time.time(),
    )


def simulate_rerank_stage(run: RunDir, bert: Path, varied: bool = False) -> None:
    """What `ragtune rerank` leaves behind, as far as later stages read it: rerank/model (a fresh-head
    one-logit CrossEncoder on the tiny BERT, seeded) and its manifest entry. ``varied``: every weight drawn
    large, so the scores differ visibly between pairs (a fresh head on the tiny BERT scores all alike)."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(3)
    model = CrossEncoder(str(bert), num_labels=1)
    if varied:
        with torch.no_grad():
            for param in model.model.parameters():
                param.normal_(0, 0.5)
    model.save(str(run.path("rerank/model")))
    run.record("rerank", config_hash="simulated", inputs={}, outputs={"model": "rerank/model"}, started=time.time())


def record_tuned_reranker_and_adapter(run: RunDir, bert: Path, llama: Path) -> None:
    """Record finished rerank and raft stages: fresh-head CrossEncoders as the tuned and the untrained reranker
    (the latter with a recorded fusion weight of 0.5), and a random, non-zero LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    CrossEncoder(str(bert), num_labels=1).save(str(run.path("rerank/model")))
    CrossEncoder(str(bert), num_labels=1).save(str(run.path("rerank/untrained")))
    run.path("rerank/untrained/ragtune_fusion.json").write_text('{"fusion_weight": 0.5}')
    outputs = {"model": "rerank/model", "untrained": "rerank/untrained"}
    run.record("rerank", config_hash="t", inputs={}, outputs=outputs, started=time.time())
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    adapted = get_peft_model(AutoModelForCausalLM.from_pretrained(llama), lora)
    torch.manual_seed(2)
    with torch.no_grad():  # large random LoRA weights: the adapter visibly changes what is generated
        for name, param in adapted.named_parameters():
            if "lora_" in name:
                param.normal_(0, 1.0)
    adapted.save_pretrained(run.path("raft/adapter"))
    AutoTokenizer.from_pretrained(llama).save_pretrained(run.path("raft/adapter"))
    run.record("raft", config_hash="t", inputs={}, outputs={"adapter": "raft/adapter"}, started=time.time())


def cache_as_hub_model(folder: Path, hub_cache: Path, repo_id: str) -> None:
    """Lay ``folder`` out in a Hugging Face hub cache as the model ``repo_id``: offline loads (``HF_HUB_CACHE``
    pointing there) find it by its id, as if it had been downloaded."""
    commit = "0" * 40
    repo = hub_cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)


PROMOTING_RERANK_METRICS = {  # dev figures that promote the reranker (fusion weight above 0)
    "fusion_weight": 0.5,
    "dev_ndcg@10_fused": 0.6,
    "dev_ndcg@10_retriever": 0.5,
    "dev_queries": 8,
}


def simulate_query_likelihood_stage(run: RunDir, llama: Path, generator: str) -> Any:
    """What `ragtune rerank` leaves behind with ``rerank.kind: query_likelihood``, its dev figures promoting it:
    rerank/model (the spec naming ``generator``, a random non-zero LoRA adapter on the tiny Llama ``llama``, the
    fusion weight) and its manifest entry. Returns the reranker as trained (its adapter unmerged, fp32)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from ragtune.pipeline.config import QUERY_LIKELIHOOD_PROMPT
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker

    reranker = QueryLikelihoodReranker.from_generator(str(llama), QUERY_LIKELIHOOD_PROMPT, 64, "float32")
    lora = LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    reranker.lm = get_peft_model(reranker.lm, lora)
    torch.manual_seed(4)
    with torch.no_grad():  # large random LoRA weights: the adapter visibly changes the scores
        for name, param in reranker.lm.named_parameters():
            if "lora_" in name:
                param.normal_(0, 1.0)
    reranker.save(run.path("rerank/model"), generator, "float32")
    run.path("rerank/model/ragtune_fusion.json").write_text('{"fusion_weight": 0.5}')
    run.path("rerank/model/README.md").write_text("## The rerank stage's own card\n")
    run.record(
        "rerank",
        config_hash="q",
        inputs={},
        outputs={"model": "rerank/model"},
        metrics=PROMOTING_RERANK_METRICS,
        started=time.time(),
    )
    return reranker.eval()


def launch_ddp(module: str, config: Path, overrides: list[str], timeout: int) -> subprocess.CompletedProcess:
    """Run a stage module as 2-process gloo DDP on CPU (`accelerate launch --multi_gpu --num_processes 2`).

    From the repository root, offline, one thread per rank; ``timeout`` bounds a rank hung on a collective.
    """
    root = Path(__file__).parents[2]
    accelerate = shutil.which("accelerate") or str(Path(sys.executable).with_name("accelerate"))
    cmd = [accelerate, "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1"]
    cmd += ["--mixed_precision", "no", "--dynamo_backend", "no", "-m", module, "--config", str(config), *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=root)
