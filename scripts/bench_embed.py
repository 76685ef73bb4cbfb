"""Benchmark: wall time of the embed stage against a bare sentence-transformers script on the same work.

Run it:
    .venv/bin/python scripts/bench_embed.py [--pairs 200] [--batch-size 16] [--repeats 1]

Both sides train the bundled MiniLM with MNRL for one epoch on the same generated pairs (same batch size,
learning rate, seed, no-duplicates batching, so the same number of steps) and save the model, each in a
fresh process (imports included). The stage additionally reads the run directory, evaluates before and
after training on held-out queries over the whole corpus, writes the card, metrics and manifest; that
is its overhead. Checkpoint selection is off (embed.dev_fraction=0) because the bare script has none.
Prints wall, CPU and train-loop times and the overhead ratios (target: at most 1.05). On a shared machine
the wall ratio swings with other load; the CPU-time ratio is the one to compare.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LR, SEED = 3e-5, 42
WORDS = (  # noqa: SIM905 (a word list reads better as text)
    "lantern cobble wicket millpond bellows thimble gannet foxglove quarry slipway heron tortoise "
    "ledgerfish pondview shard lease invoice rotation failover drain window retention policy paging "
    "storm clock drift billing login outage dashboard stale freeze access key customer data incident "
    "review planning steering migration escalation silence runbook export warehouse renewal settlement "
    "queue replica backup restore"
).split()

BARE = """
import json, sys, time
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import BatchSamplers, SentenceTransformerTrainingArguments
from pipeline.models import resolve_model

work, batch_size, lr, seed = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
pairs = [json.loads(line) for line in open(f"{work}/pairs.jsonl")]
model = SentenceTransformer(resolve_model("bundled:minilm-l6"))
args = SentenceTransformerTrainingArguments(
    output_dir=f"{work}/bare_ckpt", num_train_epochs=1, per_device_train_batch_size=batch_size, learning_rate=lr,
    warmup_steps=0.1, seed=seed, batch_sampler=BatchSamplers.NO_DUPLICATES, use_cpu=True, report_to="none",
    save_strategy="no",
)
trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=Dataset.from_list(pairs),
                                     loss=MultipleNegativesRankingLoss(model))
out = trainer.train()
model.save(f"{work}/bare_model")
print("BENCH", json.dumps({"steps": trainer.state.global_step, "train_seconds": out.metrics["train_runtime"]}))
"""


def make_domain(work: Path, n_train: int, n_eval: int, seed: int = 0) -> Path:
    """Write a generated corpus, its queries and a finished data stage into a run directory; return the config."""
    sys.path.insert(0, str(ROOT))
    from pipeline.rundir import RunDir, atomic_write_jsonl

    rng = random.Random(seed)
    run = RunDir(work / "runs" / "bench")
    corpus, queries, pairs = [], [], []
    for i in range(n_train + n_eval):
        sentences = [" ".join(rng.choices(WORDS, k=14)).capitalize() + "." for _ in range(6)]
        text = f"Note {i}. " + " ".join(sentences)
        topic = rng.sample(WORDS, 4)
        query = f"what about {' '.join(topic)} in note {i}?"
        text += f" It covers {' '.join(topic)}."
        corpus.append({"id": f"c{i}", "doc_id": f"d{i}", "source": f"d{i}", "text": text, "start": 0, "end": len(text)})
        split = "train" if i < n_train else "eval"
        queries.append(
            {
                "qid": f"q{i}",
                "text": query,
                "positives": [f"c{i}"],
                "relevance": {f"c{i}": 1},
                "doc_ids": [f"d{i}"],
                "origin": "synthetic",
                "split": split,
            }
        )
        if split == "train":
            pairs.append({"anchor": query, "positive": text})
    atomic_write_jsonl(run.path("data/corpus.jsonl"), corpus)
    atomic_write_jsonl(run.path("data/queries.jsonl"), queries)
    atomic_write_jsonl(work / "pairs.jsonl", pairs)
    run.record(
        "data",
        config_hash="bench",
        inputs={},
        outputs={"corpus": "data/corpus.jsonl", "queries": "data/queries.jsonl"},
        started=time.time(),
    )
    config = work / "bench.yaml"
    config.write_text(
        json.dumps(
            {
                "run": {"name": "bench", "root": str(work / "runs"), "seed": SEED},
                "data": {"docs": str(work)},
                "embed": {"base_model": "bundled:minilm-l6", "loss": "mnrl", "epochs": 1, "learning_rate": LR},
            }
        )
    )
    return config


def timed(cmd: list[str]) -> tuple[float, float, str]:
    """Run ``cmd``; return its wall seconds, its CPU seconds (user + system; robust to other load), stdout."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:4])} failed:\n{proc.stderr[-3000:]}")
    return wall, after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime, proc.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=200, help="training pairs")
    parser.add_argument("--eval-queries", type=int, default=20, help="held-out queries the stage reports on")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=1, help="alternating (bare, stage) runs")
    opts = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench_embed_") as tmp:
        work = Path(tmp)
        config = make_domain(work, opts.pairs, opts.eval_queries)
        python = sys.executable
        bare_cmd = [python, "-c", BARE, str(work), str(opts.batch_size), str(LR), str(SEED)]
        stage_cmd = [python, "-m", "stages.embed.train", "--config", str(config), "--force"]
        stage_cmd += [f"embed.batch_size={opts.batch_size}", "embed.dev_fraction=0"]
        rows = []
        for _ in range(opts.repeats):
            bare_wall, bare_cpu, out = timed(bare_cmd)
            bare = json.loads(out.split("BENCH ", 1)[1])
            stage_wall, stage_cpu, _ = timed(stage_cmd)
            stage = json.loads((work / "runs" / "bench" / "embed" / "metrics.json").read_text())
            rows.append((bare_wall, bare, stage_wall, stage, bare_cpu, stage_cpu))

    bare_wall = min(r[0] for r in rows)
    stage_wall = min(r[2] for r in rows)
    bare_cpu = min(r[4] for r in rows)
    stage_cpu = min(r[5] for r in rows)
    bare_train = min(r[1]["train_seconds"] for r in rows)
    stage_train = min(r[3]["train_seconds"] for r in rows)
    steps = {r[1]["steps"] for r in rows} | {r[3]["steps"] for r in rows}
    print(f"pairs={opts.pairs} batch={opts.batch_size} steps={sorted(steps)} repeats={opts.repeats} (best of)")
    print(f"bare sentence-transformers: wall {bare_wall:.1f} s, CPU {bare_cpu:.1f} s, train loop {bare_train:.1f} s")
    print(f"ragtune embed stage:        wall {stage_wall:.1f} s, CPU {stage_cpu:.1f} s, train loop {stage_train:.1f} s")
    print(f"overhead ratio (wall)       {stage_wall / bare_wall:.3f}")
    print(f"overhead ratio (CPU time)   {stage_cpu / bare_cpu:.3f}  (least sensitive to other load on the machine)")
    print(f"overhead ratio (train loop) {stage_train / bare_train:.3f}")
    print(f"held-out nDCG@10 {rows[-1][3]['before']['ndcg@10']:.4f} -> {rows[-1][3]['after']['ndcg@10']:.4f}")


if __name__ == "__main__":
    main()
