"""Stand-ins for finished upstream stages, so a stage's tests need not train everything before it."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from pipeline.rundir import RunDir


def run_dir_of(config: Path) -> RunDir:
    """The run directory a config file points at."""
    tree = yaml.safe_load(config.read_text())
    return RunDir(Path(tree["run"]["root"]) / tree["run"]["name"])


def simulate_embed_stage(run: RunDir, model_dir: Path) -> None:
    """What `ragtune embed` leaves behind: embed/model and its manifest entry."""
    import shutil

    shutil.copytree(model_dir, run.path("embed/model"))
    run.record(
        "embed",
        config_hash="simulated",
        inputs=run.input_hashes("data", "corpus", "queries"),
        outputs={"model": "embed/model"},
        started=time.time(),
    )


def record_tuned_reranker_and_adapter(run: RunDir, bert: Path, llama: Path) -> None:
    """Record finished rerank and raft stages: a fresh-head CrossEncoder and a random, non-zero LoRA adapter."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(1)
    CrossEncoder(str(bert), num_labels=1).save(str(run.path("rerank/model")))
    run.record("rerank", config_hash="t", inputs={}, outputs={"model": "rerank/model"}, started=time.time())
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
