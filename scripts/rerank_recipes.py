"""Measure reranker recipes on the dev slice of a finished run (never its eval split).

Run it (after `ragtune embed CONFIG` has finished in that run):
    .venv/bin/python scripts/rerank_recipes.py configs/demo.yaml [--steps 30] [--only NAME ...] [key=value ...]

Each recipe is the rerank stage itself (`ragtune rerank CONFIG <recipe overrides> --force`, mining included)
with the same number of optimizer steps; the table prints, per recipe, the dev-slice nDCG@10 of the tuned
retriever, of the reranker alone and of the fused order at the weight the one-standard-error rule chose, the
learning curve's reranker-alone points, and the training seconds. Only dev figures are printed: choosing a
recipe by the eval split would leak it. The last run's rerank/ folder is left in the run directory (rerun
`ragtune rerank CONFIG --force` to restore the configured recipe).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ragtune.pipeline.config import load_config  # noqa: E402 (after the path set-up)
from ragtune.pipeline.rundir import RunDir  # noqa: E402

CE = "rerank.cross_encoder"  # the cross-encoder's own settings
OLD = [f"{CE}.start_from=base_model", f"{CE}.head=classifier", f"{CE}.warm_start=none"]
TUNED_MEAN = [f"{CE}.start_from=tuned_embedder", f"{CE}.head=mean_pool", f"{CE}.warm_start=none"]
RECIPES: dict[str, list[str]] = {
    "base, [CLS] head, BCE, lr 1e-4 (the old default)": [*OLD, "rerank.learning_rate=1e-4"],
    "base, [CLS] head, BCE, lr 1e-3 (learning rate alone)": [*OLD, "rerank.learning_rate=1e-3"],
    "(c) base, mean-pool head, BCE, lr 1e-3": [
        f"{CE}.start_from=base_model",
        f"{CE}.head=mean_pool",
        f"{CE}.warm_start=none",
        "rerank.learning_rate=1e-3",
    ],
    "(b)+(c) tuned embedder, mean-pool head, BCE, lr 1e-3": [*TUNED_MEAN, "rerank.learning_rate=1e-3"],
    "(b)+(c)+(d) ... LambdaLoss (3 lists of 6 a step)": [
        *TUNED_MEAN,
        "rerank.learning_rate=1e-3",
        f"{CE}.loss=lambda",
        "rerank.batch_size=3",
    ],
    "(b)+(c)+(e) ... BCE + 3 random negatives": [
        *TUNED_MEAN,
        "rerank.learning_rate=1e-3",
        "rerank.mining.random_negatives=3",
    ],
    "(b)+(c)+(f) ... BCE, max_length 128": [*TUNED_MEAN, "rerank.learning_rate=1e-3", f"{CE}.max_length=128"],
    "(b)+(c)+(d)+(f) tuned embedder, mean-pool head, LambdaLoss, max_length 128": [
        *TUNED_MEAN,
        "rerank.learning_rate=1e-3",
        f"{CE}.loss=lambda",
        "rerank.batch_size=3",
        f"{CE}.max_length=128",
    ],
    "(c)+(d)+(f) base, mean-pool head, LambdaLoss, max_length 128": [
        f"{CE}.start_from=base_model",
        f"{CE}.head=mean_pool",
        f"{CE}.warm_start=none",
        "rerank.learning_rate=1e-3",
        f"{CE}.loss=lambda",
        "rerank.batch_size=3",
        f"{CE}.max_length=128",
    ],
    "(a)+(b)+(c) ... MarginMSE warm start (1/3 of the steps), then BCE": [
        f"{CE}.start_from=tuned_embedder",
        f"{CE}.head=mean_pool",
        f"{CE}.warm_start=margin_mse",
        f"{CE}.warm_start_pool=6",
        "rerank.learning_rate=1e-3",
    ],
}


# Every recipe above trains on the mined train queries alone; these add inverse-cloze pseudo-queries.
RECIPES = {name: ["rerank.pseudo_queries=0", *overrides] for name, overrides in RECIPES.items()}
RECIPES |= {
    "(g) + inverse-cloze pseudo-queries: tuned embedder, mean-pool head, BCE, lr 1e-3, max_length 128": [
        *TUNED_MEAN,
        "rerank.learning_rate=1e-3",
        f"{CE}.max_length=128",
    ],
    "(g) + inverse-cloze pseudo-queries: base, [CLS] head, BCE, lr 1e-3, max_length 128": [
        *OLD,
        "rerank.learning_rate=1e-3",
        f"{CE}.max_length=128",
    ],
}
RECIPES = {name: ["rerank.kind=cross_encoder", *overrides] for name, overrides in RECIPES.items()}
# The query-likelihood reranker (the default kind): LoRA on the mined lists, 2 lists a step.
RECIPES |= {"query likelihood (bundled SmolLM2), LoRA on the mined lists": ["rerank.batch_size=2"]}


def run_recipe(config: str, overrides: list[str], steps: int) -> dict:
    """Run the rerank stage with ``overrides`` for ``steps`` steps; return its dev figures and timing."""
    warm = any(o == f"{CE}.warm_start=margin_mse" for o in overrides)
    step_overrides = (
        [f"{CE}.warm_start_steps={steps // 3}", f"rerank.max_steps={steps - steps // 3}"]
        if warm
        else [f"{CE}.warm_start_steps=0", f"rerank.max_steps={steps}"]
    )
    cmd = [str(ROOT / ".venv/bin/ragtune"), "rerank", config, *overrides, *step_overrides, "--force"]
    started = time.time()
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    cfg = load_config(config, [o for o in overrides if o.startswith("run.")])
    metrics = json.loads(RunDir.from_config(cfg).require("rerank", "metrics")["metrics"].read_text())
    return {"metrics": metrics, "wall": time.time() - started}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=30, help="optimizer steps per recipe (warm start included)")
    p.add_argument("--only", nargs="*", help="recipe names to run (substring match)")
    p.add_argument("--json", help="also write the rows here")
    p.add_argument("overrides", nargs="*", help="extra dotted overrides for every recipe, e.g. run.root=/tmp/x")
    a = p.parse_intermixed_args()
    rows = []
    print("| recipe | dev retriever | reranker alone | fused (weight) | reranker alone during training | train s |")
    print("|---|---|---|---|---|---|")
    for name, overrides in RECIPES.items():
        if a.only and not any(o in name for o in a.only):
            continue
        out = run_recipe(a.config, [*a.overrides, *overrides], a.steps)
        m = out["metrics"]
        curve = " → ".join(f"{pt['reranker']:.3f}" for pt in m["learning_curve"])
        row = {
            "recipe": name,
            "dev_retriever": m["dev_ndcg@10_retriever"],
            "dev_reranker": m["dev_ndcg@10_reranker_only"],
            "dev_fused": m["dev_ndcg@10_fused"],
            "weight": m["fusion_weight"],
            "curve": [pt["reranker"] for pt in m["learning_curve"]],
            "train_seconds": m["train_seconds"],
        }
        rows.append(row)
        print(
            f"| {name} | {row['dev_retriever']:.4f} | {row['dev_reranker']:.4f} | {row['dev_fused']:.4f} "
            f"({row['weight']:.1f}) | {curve} | {row['train_seconds']:.0f} |",
            flush=True,
        )
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
