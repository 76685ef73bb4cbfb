"""Benchmark: the RAFT stage's training throughput against a bare trl SFTTrainer script, and batch layouts.

Run it (after `ragtune raft CONFIG` has built raft/train.jsonl in that run; nothing else should be running):
    .venv/bin/python scripts/bench_raft.py configs/demo.yaml [--steps 4] [--variants stage bare ...]

Each variant trains the same LoRA (the config's ``raft.lora``) on the same samples of raft/train.jsonl (those
within ``raft.max_length``, in the same seeded order) for ``--steps`` optimizer steps of ``raft.batch_size``,
in a fresh process, and reports the trainer's own runtime and the real (non-padding) tokens it read:

- ``stage``: :func:`ragtune.stages.raft.train.build_trainer`, exactly what ``ragtune raft`` trains with.
- ``bare``: a plain script: ``AutoModelForCausalLM`` + peft ``LoraConfig`` + trl ``SFTTrainer`` with the same
  ``SFTConfig`` values written out by hand (the throughput target: the stage >= 0.95x this).
- ``grouped``: the stage with ``train_sampling_strategy: group_by_length`` (batches of similar lengths, less
  padding; attention stays exact).
- ``checkpointing``: the stage with activation checkpointing, trl's default (the stage turns it off on CPU).
- ``padding_free``: the stage with trl's ``padding_free: true`` (no padding at all). Only correct where the
  attention kernel honours sequence boundaries (FlashAttention on a GPU); on CPU's SDPA the flattened samples
  attend to each other, so its speed is measured but it is not a recipe for CPU.

Prints one JSON line per variant and the tokens/s ratios against ``bare``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ragtune.pipeline.config import load_config  # noqa: E402 (after the path set-up)
from ragtune.pipeline.rundir import RAFT_BENCH, RunDir  # noqa: E402

VARIANTS = {
    "stage": {},
    "bare": {},
    "grouped": {"train_sampling_strategy": "group_by_length"},
    # samples are already within raft.max_length (overlong ones are dropped), so nothing needs truncating
    "padding_free": {"padding_free": True, "max_length": None},
    # trl's default, which the stage keeps on CUDA only: every forward runs twice to save activation memory
    "checkpointing": {"gradient_checkpointing": True},
}
COUNT_TOKENS = {"include_num_input_tokens_seen": "non_padding"}


def _samples(cfg, run: RunDir, tokenizer) -> list[dict]:
    from ragtune.pipeline.rundir import read_jsonl
    from ragtune.stages.raft.train import drop_overlong

    train_data = run.require("raft_build", "train_data")["train_data"]
    kept, _, _ = drop_overlong(read_jsonl(train_data), tokenizer, cfg.raft.max_length)
    return kept


def run_variant(config: str, overrides: list[str], name: str, steps: int) -> dict:
    """Train one variant in this process; returns its runtime, tokens and tokens/s."""
    from transformers import AutoTokenizer

    from ragtune.pipeline.models import resolve_model

    cfg = load_config(config, overrides)
    run = RunDir.from_config(cfg)
    model_path = resolve_model(cfg.raft.base_model)
    samples = _samples(cfg, run, AutoTokenizer.from_pretrained(model_path))
    out = run.path(RAFT_BENCH)
    if name == "bare":
        trainer = _bare_trainer(cfg, model_path, samples, out, steps)
    else:
        from ragtune.stages.raft.train import build_trainer

        raft = cfg.raft.model_copy(update={"max_steps": steps, "trainer": {**VARIANTS[name], **COUNT_TOKENS}})
        trainer, _ = build_trainer(raft, model_path, samples, out, cfg.run.seed)
    result = trainer.train()
    seconds, tokens = result.metrics["train_runtime"], trainer.state.num_input_tokens_seen
    return {"variant": name, "steps": trainer.state.global_step, "seconds": seconds, "tokens": tokens,
            "tokens_per_s": tokens / seconds}  # fmt: skip


def _bare_trainer(cfg, model_path: str, samples: list[dict], out: Path, steps: int):
    """The plain trl recipe, written out as a user would, with the stage's settings."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    r = cfg.raft
    dataset = Dataset.from_list([{"prompt": s["prompt"], "completion": s["completion"]} for s in samples])
    args = SFTConfig(
        output_dir=str(out),
        max_length=r.max_length,
        per_device_train_batch_size=r.batch_size,
        learning_rate=r.learning_rate,
        max_steps=steps,
        seed=cfg.run.seed,
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        use_cpu=not torch.cuda.is_available(),
        **COUNT_TOKENS,
    )
    lora = LoraConfig(
        r=r.lora.r,
        lora_alpha=r.lora.alpha,
        lora_dropout=r.lora.dropout,
        target_modules=r.lora.target_modules or ["q_proj", "k_proj", "v_proj", "o_proj"],
        task_type="CAUSAL_LM",
    )
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer, peft_config=lora)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--repeats", type=int, default=1, help="rounds over the variants; the best of each is kept")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # internal: run one variant in this process
    args = parser.parse_intermixed_args()  # overrides may follow the flags
    if args.variant:
        print("BENCH", json.dumps(run_variant(args.config, args.overrides, args.variant, args.steps)))
        return
    results: dict[str, dict] = {}
    for _ in range(args.repeats):  # alternating rounds: a slow moment of the machine hits every variant alike
        for name in args.variants:
            cmd = [sys.executable, __file__, args.config, *args.overrides, "--steps", str(args.steps)]
            cmd += ["--variant", name]
            done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in done.stdout.splitlines() if x.startswith("BENCH ")), None)
            if line is None:
                print(f"{name}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                continue
            result = json.loads(line[6:])
            print(json.dumps(result))
            if result["tokens_per_s"] > results.get(name, {}).get("tokens_per_s", 0):
                results[name] = result
    if "bare" in results:
        for name, r in results.items():
            ratio = r["tokens_per_s"] / results["bare"]["tokens_per_s"]
            print(f"{name}: {r['tokens_per_s']:.1f} tokens/s = {ratio:.3f}x bare")


if __name__ == "__main__":
    main()
