"""Benchmark: the GPL round's training steps with random batches against length-grouped ones.

Run it after a GPL round has written its triples (nothing else should be running):
    .venv/bin/python scripts/bench_gpl_batches.py runs/NAME [--batches N] [--batch-size 32]

On the run's gpl/train.jsonl and stage 1's embed/model, one epoch (or ``--batches``) of training steps
(MarginMSE, cosine, AdamW: forward, backward, optimizer step) with the batches sentence-transformers draws by
default (a seeded random order) and as many with
:class:`ragtune.pipeline.length_batches.LengthGroupedBatchSampler`, taken in turn (one of each, then the next) so
that a change in the machine's speed during the run affects both alike. Prints seconds per step, the padded tokens
per step (every text column padded to its longest row, as the trainer's collator pads) against the real ones, and
the ratio; ``--json`` writes them too. A part of an epoch is not a fair sample for the grouped layout: its batches
come in random order, short ones and long ones, so only a whole epoch compares totals.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COLUMNS = ("query", "positive", "negative")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path, help="a run folder with gpl/train.jsonl and embed/model")
    parser.add_argument("--batches", type=int, help="steps timed per layout (default: one epoch, every triple)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)

    import torch
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.sampler import DefaultBatchSampler
    from sentence_transformers.sentence_transformer import losses
    from sentence_transformers.util import pairwise_cos_sim
    from torch.utils.data import RandomSampler

    from ragtune.pipeline.length_batches import LengthGroupedBatchSampler
    from ragtune.pipeline.rundir import read_jsonl

    triples = read_jsonl(args.run / "gpl" / "train.jsonl")
    args.batches = args.batches or -(-len(triples) // args.batch_size)
    if (args.batches - 1) * args.batch_size >= len(triples):
        parser.error(f"--batches {args.batches} of {args.batch_size} needs more than the run's {len(triples)} triples")
    dataset = Dataset.from_dict(
        {c: [t[c] for t in triples] for c in COLUMNS} | {"label": [t["margin"] for t in triples]}
    )
    model = SentenceTransformer(str(args.run / "embed" / "model"), device="cpu")
    loss = losses.MarginMSELoss(model, similarity_fct=pairwise_cos_sim)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    generator = torch.Generator().manual_seed(args.seed)
    layouts = {
        "random": iter(DefaultBatchSampler(RandomSampler(dataset, generator=generator), args.batch_size, False)),
        "length-grouped": iter(LengthGroupedBatchSampler(dataset, args.batch_size, False, ["label"], seed=args.seed)),
    }
    seconds = {name: 0.0 for name in layouts}
    padded = {name: 0 for name in layouts}
    real = {name: 0 for name in layouts}
    model.train()
    for step in range(args.batches):
        for name, batches in layouts.items():
            rows = dataset[next(batches)]
            features = [model.preprocess(rows[c]) for c in COLUMNS]
            padded[name] += sum(f["input_ids"].numel() for f in features)
            real[name] += sum(int(f["attention_mask"].sum()) for f in features)
            started = time.perf_counter()
            value = loss(features, torch.tensor(rows["label"]))
            value.backward()
            optimizer.step()
            optimizer.zero_grad()
            seconds[name] += time.perf_counter() - started
        print(f"step {step + 1}/{args.batches}", {n: round(s / (step + 1), 2) for n, s in seconds.items()}, flush=True)
    figures = {
        name: {
            "seconds_per_step": round(seconds[name] / args.batches, 3),
            "padded_tokens_per_step": round(padded[name] / args.batches),
            "real_tokens_per_step": round(real[name] / args.batches),
        }
        for name in layouts
    }
    figures["speedup"] = round(seconds["random"] / seconds["length-grouped"], 3)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
