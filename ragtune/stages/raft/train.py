"""RAFT stage: build the RAFT data if needed, then (Q)LoRA-tune the generator on it with trl's SFTTrainer.

Run it:
    ragtune raft configs/demo.yaml [raft.max_steps=50] [raft.quantization=nf4]
    accelerate launch -m ragtune.stages.raft.train --config configs/demo.yaml

The build step (``ragtune.stages.raft.build``, manifest entry ``raft_build``) is skipped when fresh; under
several processes the main process builds first and the others then find it fresh. Training uses
prompt/completion chat samples, so the loss covers only the assistant completion (rendered through the
model's chat template). Writes raft/adapter/ (LoRA adapter, tokenizer, model card), optionally
raft/merged/ (``raft.merge``), and the manifest entry ``raft``; checkpoints go to raft/checkpoints/.
"""

from __future__ import annotations

import logging
import time
from functools import partial
from pathlib import Path
from typing import Any

import torch

from ragtune.pipeline.answer_metrics import final_answer, token_f1
from ragtune.pipeline.config import AssembleConfig, RaftConfig, RagtuneConfig, check_trainer_keys
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.generator import generate_batched
from ragtune.pipeline.generator import load_generator as load_for_inference
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.precision import bf16_training, inference_dtype
from ragtune.pipeline.promotion import RaftFigures
from ragtune.pipeline.raft_format import answer_settled, guided_messages, parse_answer, whole_answer
from ragtune.pipeline.rundir import (
    RAFT_ADAPTER,
    RAFT_CHECKPOINTS,
    RAFT_MERGED,
    RAFT_TRAIN_DATA,
    RunDir,
    atomic_dir,
    is_main_process,
    read_jsonl,
)
from ragtune.pipeline.training_args import route_tensorboard
from ragtune.stages.raft import build

logger = logging.getLogger(__name__)
STAGE = "raft"
DEFAULT_TARGET_MODULES = ["q_proj", "k_proj", "v_proj", "o_proj"]


def resolve_quantization(setting: str) -> str:
    """``nf4`` or ``none``: ``auto`` picks nf4 on CUDA (QLoRA) and none on CPU."""
    if setting == "auto":
        return "nf4" if torch.cuda.is_available() else "none"
    return setting


def _full_precision_dtype() -> torch.dtype:
    # bf16 is the GPU's native training precision; CPUs train in fp32.
    return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32


def load_generator(model_path: str, quantization: str) -> tuple[Any, Any]:
    """Load the causal LM and its tokenizer, in 4-bit NF4 (QLoRA) or in full precision.

    Args:
        model_path: a local folder or hub id (already resolved by :func:`ragtune.pipeline.models.resolve_model`).
        quantization: ``nf4`` (double-quantised NF4 weights, bf16 compute, prepared for k-bit training)
            or ``none`` (fp32 on CPU, bf16 on a bf16-capable GPU).

    Returns:
        ``(model, tokenizer)``; the model is ready for a LoRA adapter.

    Example (loads the bundled weights, not run as a doctest):
        model, tokenizer = load_generator(resolve_model("bundled:smollm2-135m-instruct"), "none")
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if quantization == "nf4":
        from peft import prepare_model_for_kbit_training
        from transformers import BitsAndBytesConfig

        bnb = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16,
        )
        model = AutoModelForCausalLM.from_pretrained(model_path, quantization_config=bnb, dtype=torch.bfloat16)
        model = prepare_model_for_kbit_training(model)
    else:
        model = AutoModelForCausalLM.from_pretrained(model_path, dtype=_full_precision_dtype())
    return model, tokenizer


def make_sft_config(raft: RaftConfig, output_dir: Path, seed: int) -> Any:
    """trl ``SFTConfig`` from the typed raft fields, with ``raft.trainer`` passed through (its keys win).

    Raises:
        ConfigError: a ``raft.trainer`` key that SFTConfig does not have, or one the run directory owns.

    Example:
        >>> make_sft_config(RaftConfig(trainer={"warmup_steps": 2}), Path("runs/x/raft/checkpoints"), 42).warmup_steps
        2
    """
    from trl import SFTConfig

    check_trainer_keys("raft", raft.trainer, SFTConfig)
    route_tensorboard(raft.trainer, output_dir)  # event files kept beside the checkpoints
    cuda = torch.cuda.is_available()
    args: dict[str, Any] = {
        "max_length": raft.max_length,
        "num_train_epochs": raft.epochs,
        "per_device_train_batch_size": raft.batch_size,
        "learning_rate": raft.learning_rate,
        "max_steps": raft.max_steps,
        "seed": seed,
        "logging_steps": 1,
        "save_strategy": "no",  # the adapter is saved once, atomically, by the stage
        "report_to": "none",
        "use_cpu": not cuda,
        "bf16": bf16_training(),  # autocast on a bf16 GPU, or a CPU with native bf16 math (1.4x tokens/s here)
        # trl turns activation checkpointing on by default: it saves GPU memory (QLoRA) by running each forward
        # twice. A CPU has the memory, and without it a step is 1.2x faster (scripts/bench_raft.py).
        "gradient_checkpointing": cuda,
        **raft.trainer,
    }
    return SFTConfig(output_dir=str(output_dir), **args)


def drop_overlong(samples: list[dict], tokenizer: Any, max_length: int) -> tuple[list[dict], int, dict[str, int]]:
    """Drop samples whose chat-rendered prompt + completion exceeds ``max_length`` tokens.

    Truncation would cut the answer off (or remove it entirely), teaching the model to stop mid-answer.

    Returns:
        ``(kept, dropped_count, token counts of the kept samples: min, median, max, total)`` — what a step costs.
    """
    texts = [tokenizer.apply_chat_template(s["prompt"] + s["completion"], tokenize=False) for s in samples]
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    kept = [s for s, n in zip(samples, lengths, strict=True) if n <= max_length]
    counts = sorted(n for n in lengths if n <= max_length)
    tokens = (
        {"min": counts[0], "median": counts[len(counts) // 2], "max": counts[-1], "total": sum(counts)}
        if counts
        else {}
    )
    return kept, len(samples) - len(kept), tokens


def build_trainer(
    raft: RaftConfig, model_path: str, samples: list[dict], output_dir: Path, seed: int
) -> tuple[Any, dict[str, Any]]:
    """An ``SFTTrainer`` with a LoRA adapter on the generator, over prompt/completion samples.

    Args:
        raft: the raft config (quantization, LoRA, lengths, optimisation, ``trainer`` pass-through).
        model_path: the resolved base model.
        samples: rows of raft/train.jsonl (``prompt`` and ``completion`` chat messages; other keys ignored).
        output_dir: the trainer's output folder, inside the run directory.
        seed: training seed.

    Returns:
        ``(trainer, info)`` with ``info`` = quantization used, samples kept, samples dropped as too long,
        and how many of the kept samples hold the oracle.

    Example (over a finished RAFT build, not run as a doctest):
        model_path = resolve_model(cfg.raft.base_model)
        trainer, info = build_trainer(cfg.raft, model_path, rows, run.path(RAFT_CHECKPOINTS), 42)
        trainer.train()
    """
    from datasets import Dataset
    from peft import LoraConfig
    from trl import SFTTrainer

    quantization = resolve_quantization(raft.quantization)
    model, tokenizer = load_generator(model_path, quantization)
    kept, too_long, tokens = drop_overlong(samples, tokenizer, raft.max_length)
    if not kept:
        raise ValueError(f"raft: every sample is longer than raft.max_length={raft.max_length} tokens")
    dataset = Dataset.from_list([{"prompt": s["prompt"], "completion": s["completion"]} for s in kept])
    lora = LoraConfig(
        r=raft.lora.r,
        lora_alpha=raft.lora.alpha,
        lora_dropout=raft.lora.dropout,
        target_modules=raft.lora.target_modules or DEFAULT_TARGET_MODULES,
        task_type="CAUSAL_LM",
    )
    trainer = SFTTrainer(
        model=model,
        args=make_sft_config(raft, output_dir, seed),
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
    )
    with_oracle = sum(s["has_oracle"] for s in kept)
    return trainer, {
        "quantization": quantization,
        "samples": len(kept),
        "dropped_too_long": too_long,
        "sample_tokens": tokens,  # prompt + completion of the kept samples, as the chat template renders them
        "with_oracle": with_oracle,  # of the samples kept, i.e. what the model trains on
        "without_oracle": len(kept) - with_oracle,
    }


def model_card(cfg: RagtuneConfig, model_path: str, info: dict[str, Any], metrics: dict[str, Any]) -> str:
    """README.md for the adapter: base model, data, LoRA and training settings, losses."""
    lora = cfg.raft.lora
    return f"""---
base_model: {cfg.raft.base_model}
library_name: peft
tags: [ragtune, raft, {"qlora" if info["quantization"] == "nf4" else "lora"}]
---
# RAFT LoRA adapter ({cfg.run.name})

Generator adapter trained by ragtune's RAFT stage (arXiv 2403.10131): answers questions over retrieved
chunks with `##Reason:` reasoning quoting evidence between `##begin_quote##` and `##end_quote##`, then
`##Answer:`. Prompt with `ragtune.pipeline.raft_format.build_messages` (the format it was trained on).

- Base model: `{cfg.raft.base_model}` (loaded from `{model_path}`), quantization `{info["quantization"]}`
- Data: {info["samples"]} samples from raft/train.jsonl ({metrics["with_oracle"]} with the oracle chunk,
  {metrics["without_oracle"]} without; no-oracle target `{cfg.raft.no_oracle_target}`;
  {cfg.assemble.top_n} chunks per prompt); {info["dropped_too_long"]} dropped as longer than
  {cfg.raft.max_length} tokens
- LoRA: r={lora.r}, alpha={lora.alpha}, dropout={lora.dropout},
  target modules {lora.target_modules or DEFAULT_TARGET_MODULES}
- Training: {metrics["steps"]} steps, learning rate {cfg.raft.learning_rate}, batch {cfg.raft.batch_size},
  loss {metrics["train_loss_first"]:.4f} -> {metrics["train_loss_last"]:.4f}
"""


def merge_adapter(model_path: str, adapter_dir: Path, target: Path) -> None:
    """Merge the adapter into an unquantised copy of the base and save it as a standalone model."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Merging into 4-bit weights would round the update away: always merge into full precision.
    base = AutoModelForCausalLM.from_pretrained(model_path, dtype=_full_precision_dtype())
    merged = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    with atomic_dir(target) as tmp:
        merged.save_pretrained(tmp)
        AutoTokenizer.from_pretrained(str(adapter_dir)).save_pretrained(tmp)


def dev_answer_f1(model_path: str, adapter: str, rows: list[dict], assemble: AssembleConfig) -> dict[str, Any]:
    """Answer F1 of the base and the tuned generator on the dev questions (what the promotion gate reads).

    Each generator answers twice when the rows hold the extractive answers the build wrote: writing its own
    quote, and guided, continuing the extractive answer's quote with the final answer alone
    (``assemble.quote: extractive``, :func:`ragtune.pipeline.raft_format.guided_messages`).

    Args:
        model_path: the base generator.
        adapter: the saved LoRA adapter.
        rows: raft/dev.jsonl rows (``prompt`` over the served context, reference ``answer``, and ``extractive``).
        assemble: serving sizes (``max_new_tokens``).

    Returns:
        ``{"dev_questions", "dev_f1_base", "dev_f1_tuned", "dev_abstain_base", "dev_abstain_tuned"}`` (the
        share of answers that abstain) and, when the rows hold extractive answers, ``dev_f1_extractive`` and the
        guided ``dev_f1_base_guided`` and ``dev_f1_tuned_guided``; ``{}`` without dev rows.
    """
    if not rows:
        return {}
    references = [r["answer"] for r in rows]
    requests = {"": [r["prompt"] for r in rows]}  # per mode: its suffix of the figure's name -> the requests
    extractive = None
    if all("extractive" in r for r in rows):
        extractive = mean_f1([r["extractive"] for r in rows], references)
        requests["_guided"] = [guided_messages(r["prompt"], r["extractive"]) for r in rows]
    f1: dict[str, float] = {}
    abstain: dict[str, float] = {}
    for label, adapter_dir in (("base", None), ("tuned", adapter)):
        model, tokenizer = load_for_inference(model_path, adapter_dir, inference_dtype(assemble.dtype))
        for mode, asked in requests.items():
            desc = f"RAFT dev ({label}{mode})"
            settled = partial(answer_settled, prefilled=bool(mode))  # stop once the answer is settled
            completions = generate_batched(model, tokenizer, asked, assemble.max_new_tokens, desc=desc, stop=settled)
            answers = [whole_answer(r, c) for r, c in zip(asked, completions, strict=True)]
            f1[label + mode] = mean_f1(answers, references)
            if not mode:
                abstain[f"dev_abstain_{label}"] = sum(parse_answer(a).abstained for a in answers) / len(answers)
        del model
    # What the generator gate reads (ragtune.pipeline.promotion); the extractive and guided figures when measured.
    gate = RaftFigures(
        questions=len(rows),
        base=f1["base"],
        tuned=f1["tuned"],
        extractive=extractive,
        base_guided=f1.get("base_guided"),
        tuned_guided=f1.get("tuned_guided"),
    )
    return gate.as_metrics(skip_unmeasured=True) | abstain


def mean_f1(answers: list[str], references: list[str]) -> float:
    """Mean token F1 of the answers' final answers against the references.

    Example:
        >>> mean_f1(["##Reason: r\\n##Answer: 40 minutes", "forty"], ["40 minutes", "40 minutes"])
        0.5
    """
    return sum(token_f1(final_answer(a), r) for a, r in zip(answers, references, strict=True)) / len(answers)


def training_metrics(trainer: Any, result: Any, info: dict[str, Any], build_metrics: dict[str, Any]) -> dict[str, Any]:
    """The manifest's metrics of the training: the trainer's figures, the losses, and the build's teacher counts."""
    losses = [row["loss"] for row in trainer.state.log_history if "loss" in row]
    return {
        **info,
        "steps": trainer.state.global_step,
        "train_loss_first": losses[0] if losses else float("nan"),
        "train_loss_last": losses[-1] if losses else float("nan"),
        "train_loss_mean": result.training_loss,
        "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 1),
        "build": {k: v for k, v in build_metrics.items() if k.startswith("teacher_") or k == "random_fallback_chunks"},
    }


def save_adapter(
    cfg: RagtuneConfig, run: RunDir, trainer: Any, model_path: str, info: dict[str, Any], metrics: dict[str, Any]
) -> None:
    """Save the adapter and the tokenizer with ragtune's model card atomically, and with ``raft.merge`` the merged
    model (main process)."""
    with atomic_dir(run.path(RAFT_ADAPTER)) as tmp:
        trainer.model.save_pretrained(tmp)
        trainer.processing_class.save_pretrained(tmp)
        # Replaces peft's placeholder card.
        (tmp / "README.md").write_text(model_card(cfg, model_path, info, metrics), encoding="utf-8")
    if cfg.raft.merge:
        merge_adapter(model_path, run.path(RAFT_ADAPTER), run.path(RAFT_MERGED))


def log_dev_figures(gate: RaftFigures) -> None:
    """One log line with the generator gate's figures, when measured."""
    if gate.tuned is not None:
        logger.info(
            "raft: dev answer F1 %.4f (base) -> %.4f (tuned), %.4f (extractive); guided %.4f (base) -> %.4f (tuned)"
            " on %d questions",
            gate.base,
            gate.tuned,
            *(nan_if_none(f) for f in (gate.extractive, gate.base_guided, gate.tuned_guided)),
            gate.questions,
        )


def nan_if_none(value: float | None) -> float:
    """``value``, or NaN when it was not measured (for log lines)."""
    return float("nan") if value is None else value


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict:
    """Build (if needed) and train; the training is skipped when finished and fresh unless ``force``."""
    from accelerate import PartialState

    # 1. RAFT data: the main process builds first, the other ranks then find it fresh.
    with PartialState().main_process_first():
        build_metrics = build.main(cfg, run, force)
    if cfg.raft.teacher.dry_run:
        return build_metrics
    train_data = run.require(build.STAGE, "train_data")["train_data"]
    dev_data = run.require(build.STAGE, "dev_data")["dev_data"]
    config_hash, inputs = run.freshness(
        cfg, ("raft", "assemble.max_new_tokens"), {build.STAGE: ("train_data", "dev_data")}
    )
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("raft: finished and fresh, skipping (--force reruns it)")
        return run.load_manifest()[STAGE].metrics
    started = time.time()
    samples = read_jsonl(train_data)

    # 2. Base model (NF4 or full precision), LoRA adapter, trainer.
    model_path = resolve_model(cfg.raft.base_model)
    trainer, info = build_trainer(cfg.raft, model_path, samples, run.path(RAFT_CHECKPOINTS), cfg.run.seed)

    # 3. Train.
    result = trainer.train()
    metrics = training_metrics(trainer, result, info, build_metrics)

    # 4. Save the adapter (+ card), optionally the merged model; the manifest entry comes last.
    outputs = {"adapter": RAFT_ADAPTER, "train_data": RAFT_TRAIN_DATA}
    if is_main_process():
        save_adapter(cfg, run, trainer, model_path, info, metrics)

        # 5. The promotion gate's figure: base and tuned generator on the dev questions, served context.
        metrics |= dev_answer_f1(model_path, str(run.path(RAFT_ADAPTER)), read_jsonl(dev_data), cfg.assemble)
        log_dev_figures(RaftFigures.from_metrics(metrics))
    if cfg.raft.merge:
        outputs["merged"] = RAFT_MERGED
    # The main process records; the other ranks wait for it where every stage module ends (entry.run_stage).
    run.record(STAGE, config_hash=config_hash, inputs=inputs, started=started, metrics=metrics, outputs=outputs)
    logger.info(
        "raft: %d steps, loss %.4f -> %.4f", metrics["steps"], metrics["train_loss_first"], metrics["train_loss_last"]
    )
    return metrics


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune RAFT stage: build RAFT data if needed, then (Q)LoRA-tune the generator")
