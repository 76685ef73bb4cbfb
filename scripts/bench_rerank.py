"""Benchmark: the rerank stage's mining time and training throughput against bare sentence-transformers scripts.

Run it (after `ragtune embed CONFIG` has finished in that run; nothing else should be running):
    .venv/bin/python scripts/bench_rerank.py configs/demo.yaml [--steps 30] [--repeats 1] [key=value ...]

Three commands, each in a fresh process, on the run's corpus, train queries and tuned embedder:

1. ``ragtune rerank CONFIG --force`` with ``rerank.curve_points=0`` (the bare script draws no learning curve)
   and ``rerank.max_steps=STEPS``: the stage records ``mining_seconds`` (tuned embedder loaded, corpus and
   queries encoded with the embedding cache cleared first, candidates filtered by the false-negative rules,
   negatives.jsonl, report, histogram and audit written) and ``train_seconds`` (the trainer's own runtime).
2. ``bare mining``: ``sentence_transformers.util.mine_hard_negatives`` on the same (query, positive) pairs
   over the same corpus with the same range, margin and number of negatives, model load included.
3. ``bare training``: a ``CrossEncoderTrainer`` script on the (query, passage, label) pairs the stage mined,
   with the same cross-encoder (start, head), batch size, learning rates, warm-up, seed and steps.

Prints seconds and pairs/s for each and the ratios (throughput target: the stage >= 0.95x the bare script).

Serving latency of the query-likelihood reranker (after `ragtune rerank CONFIG`; nothing else running):
    .venv/bin/python scripts/bench_rerank.py configs/demo.yaml --serving [--queries 20] [key=value ...]

The run's first ``--queries`` questions each get the tuned embedder's top ``rerank.retrieve_top_k`` and the served
(tuned) reranker scores the ten pairs in one ``predict`` call, no score cache. Where the time goes, one row per
setting: precision (float32, and bfloat16 where the machine has native bf16 math), batch layout (the ten pairs in
one batch or one at a time), passage length (``max_length`` 256 or 128) and the passage prefixes (off: every pair
read whole; cold: no prefix cached; warm: all ten cached, as for a passage reranked before). Then replays: every
question of the run in order through one reranker, as a server sees them, with
``rerank.query_likelihood.prefix_cache_mb`` (and twice that), started empty or after reading the corpus ahead
(``ragtune serve --warm-reranker``), with the share of prefixes found.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ragtune.pipeline.config import load_config  # noqa: E402 (after the path set-up)
from ragtune.pipeline.precision import bf16_training  # noqa: E402
from ragtune.pipeline.rundir import EMBEDDING_CACHE, RERANK_MODEL, RunDir, read_jsonl  # noqa: E402
from ragtune.stages.rerank.model import default_learning_rate  # noqa: E402

BARE_MINING = """
import json, sys, time
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.util import mine_hard_negatives

run, margin = sys.argv[1], float(sys.argv[4])
range_min, range_max, n = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
corpus = {c["id"]: c["text"] for c in map(json.loads, open(f"{run}/data/corpus.jsonl"))}
dev = set(json.loads(sys.argv[6]))
train = [q for q in map(json.loads, open(f"{run}/data/queries.jsonl")) if q["split"] == "train" and q["qid"] not in dev]
pairs = Dataset.from_dict({
    "query": [q["text"] for q in train for p in q["positives"]],
    "positive": [corpus[p] for q in train for p in q["positives"]],
})
t0 = time.time()
model = SentenceTransformer(f"{run}/embed/model")
mined = mine_hard_negatives(pairs, model, corpus=list(corpus.values()), range_min=range_min, range_max=range_max,
                            relative_margin=margin, num_negatives=n, sampling_strategy="top", use_faiss=False,
                            output_format="labeled-pair", verbose=False)
print("BENCH", json.dumps({"seconds": time.time() - t0, "rows": len(mined)}))
"""

BARE_TRAINING = """
import json, sys
import torch
from datasets import Dataset
from sentence_transformers.cross_encoder import CrossEncoder, CrossEncoderTrainer, losses
from sentence_transformers.cross_encoder.training_args import CrossEncoderTrainingArguments
from sentence_transformers.base.modules import Dense, Transformer
from sentence_transformers.sentence_transformer.modules import Pooling

run, start, head, steps, bs, lr, head_lr, max_length, seed, bf16 = sys.argv[1:11]
text = {c["id"]: c["text"] for c in map(json.loads, open(f"{run}/data/corpus.jsonl"))}
rows = [json.loads(line) for line in open(f"{run}/rerank/negatives/negatives.jsonl")]
cols = {"query": [], "passage": [], "label": []}
for r in rows:
    for cid, label in [(p, 1.0) for p in r["positives"]] + [(n, 0.0) for n in r["negatives"] + r["random_negatives"]]:
        cols["query"].append(r["query"]); cols["passage"].append(text[cid]); cols["label"].append(label)
torch.manual_seed(int(seed))
if head == "mean_pool":
    encoder = Transformer(
        start, transformer_task="feature-extraction", model_kwargs={"add_pooling_layer": False},
        processor_kwargs={"model_max_length": int(max_length)},
    )
    dim = encoder.get_embedding_dimension()
    score = Dense(dim, 1, activation_function=None, init_weight=torch.zeros(1, dim), init_bias=torch.zeros(1),
                  module_output_name="scores")
    model = CrossEncoder(modules=[encoder, Pooling(dim, "mean"), score])
    model.max_seq_length = int(max_length)
    head_pattern = r"\\.2\\.linear\\."
else:
    model = CrossEncoder(start, num_labels=1, max_length=int(max_length))
    head_pattern = r"\\.classifier\\."
positives = sum(cols["label"])
ratio = max((len(cols["label"]) - positives) / positives, 1.0)
loss = losses.BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(ratio))
args = CrossEncoderTrainingArguments(
    output_dir=f"{run}/bench_ckpt", max_steps=int(steps), per_device_train_batch_size=int(bs), learning_rate=float(lr),
    learning_rate_mapping={head_pattern: float(head_lr)} if head_lr != "none" else None, warmup_steps=0.1,
    seed=int(seed), save_strategy="no", report_to="none", logging_steps=1, use_cpu=True, disable_tqdm=True,
    bf16=bf16 == "True",
)
out = CrossEncoderTrainer(model=model, args=args, train_dataset=Dataset.from_dict(cols), loss=loss).train()
print("BENCH", json.dumps({"seconds": out.metrics["train_runtime"], "steps": int(steps)}))
"""


def bench(script: str, *argv: str) -> dict:
    """Run a bare script in a fresh process and return the JSON it prints after ``BENCH``."""
    out = subprocess.run([sys.executable, "-c", script, *argv], check=True, cwd=ROOT, capture_output=True, text=True)
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("BENCH "))[6:])


def serving_latency(config: str, overrides: list[str], n_queries: int) -> None:
    """Print the serving-latency table described in the module docstring."""
    import statistics
    import time

    import torch

    from ragtune.pipeline.precision import inference_dtype
    from ragtune.pipeline.prefix_cache import cached_part
    from ragtune.pipeline.query_likelihood import SPEC_FILE, QueryLikelihoodReranker
    from ragtune.pipeline.retrieval import DenseRetriever

    cfg = load_config(config, overrides)
    run = RunDir.from_config(cfg)
    corpus = read_jsonl(run.require("data", "corpus")["corpus"])
    texts = {c["id"]: c["text"] for c in corpus}
    questions = [q["text"] for q in read_jsonl(run.require("data", "queries")["queries"])]
    retriever = DenseRetriever.load(
        str(run.require("embed", "model")["model"]), corpus, cache_dir=run.path(EMBEDDING_CACHE)
    )
    _, ranked = retriever.search(questions, cfg.rerank.retrieve_top_k)
    lists = [[(q, texts[c]) for c in ids] for q, ids in zip(questions, ranked, strict=True)]
    model = run.path(RERANK_MODEL)
    spec = json.loads((model / SPEC_FILE).read_text())
    adapter = str(model) if (model / "adapter_config.json").is_file() else None
    budget = cfg.rerank.query_likelihood.prefix_cache_mb
    dtype = inference_dtype(spec["dtype"])
    top_k = cfg.rerank.retrieve_top_k
    print(f"{torch.get_num_threads()} threads, {dtype} weights; {len(questions)} questions, top {top_k} each")

    def load(dtype: str, max_length: int = spec["max_length"], prefix_mb: int = budget) -> QueryLikelihoodReranker:
        return QueryLikelihoodReranker.from_generator(
            spec["generator"], spec["prompt"], max_length, dtype, adapter, None, prefix_mb
        )

    def per_query(reranker: QueryLikelihoodReranker, batch: int, prefixes: str) -> tuple[float, float]:
        """Median seconds to rerank one question's list, and its mean tokens per pair."""
        seconds = []
        for pairs in lists[:n_queries]:
            reranker.prefixes.clear()
            if prefixes == "warm":
                reranker.predict(pairs, batch_size=batch)
            reranker.memo = {}
            start = time.perf_counter()
            reranker.predict(pairs, batch_size=batch)
            seconds.append(time.perf_counter() - start)
        tokens = statistics.mean(len(c) + len(q) for c, q in reranker.encode(lists[0]))
        return statistics.median(seconds), tokens

    print(f"{'precision':10} {'batch':>5} {'max_length':>10} {'prefixes':>8} {'tokens/pair':>11} {'s/query':>8}")
    rows = [
        ("float32", 10, spec["max_length"], "off"),
        ("bfloat16", 1, spec["max_length"], "off"),
        ("bfloat16", 10, spec["max_length"], "off"),
        ("bfloat16", 10, 128, "off"),
        ("bfloat16", 10, spec["max_length"], "cold"),
        ("bfloat16", 10, spec["max_length"], "warm"),
        ("float32", 10, spec["max_length"], "warm"),
    ]
    native_bf16 = inference_dtype("auto") == "bfloat16"
    for dtype, batch, max_length, prefixes in rows:
        if dtype == "bfloat16" and not native_bf16:  # emulated bf16 is many times slower: it measures nothing served
            print(f"{dtype:10} {batch:>5} {max_length:>10} {prefixes:>8}  skipped: no native bf16 math on this machine")
            continue
        reranker = load(dtype, max_length, 0 if prefixes == "off" else budget)
        median, tokens = per_query(reranker, batch, prefixes)
        print(f"{dtype:10} {batch:>5} {max_length:>10} {prefixes:>8} {tokens:>11.0f} {median:>8.3f}")
        del reranker
    for prefix_mb, warm in ((budget, False), (budget, True), (2 * budget, True)):
        reranker = load(spec["dtype"], prefix_mb=prefix_mb)
        start = time.perf_counter()
        warmed = reranker.warm(list(texts.values()), batch_size=10) if warm else 0
        warm_seconds = time.perf_counter() - start
        seconds, found = [], []
        for pairs in lists:
            keys = [cached_part(c) for c, _ in reranker.encode(pairs)]
            found.append(sum(reranker.prefixes.get(k) is not None for k in keys) / len(keys))
            start = time.perf_counter()
            reranker.predict(pairs, batch_size=10)
            seconds.append(time.perf_counter() - start)
        cuts = statistics.quantiles(seconds, n=20)
        ahead = f", {warmed} of {len(texts)} passages read ahead in {warm_seconds:.0f} s" if warm else ""
        print(
            f"replay, prefix_cache_mb={prefix_mb}{ahead}: mean {statistics.mean(seconds):.3f} s, p50 "
            f"{statistics.median(seconds):.3f} s, p95 {cuts[-1]:.3f} s; prefixes found {statistics.mean(found):.0%}, "
            f"{len(reranker.prefixes)} kept ({reranker.prefixes.nbytes / 2**20:.0f} MB)"
        )
        del reranker


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config")
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=1, help="rounds; the best of each command is reported")
    p.add_argument("--serving", action="store_true", help="the query-likelihood reranker's serving latency instead")
    p.add_argument("--queries", type=int, default=20, help="--serving: questions per setting")
    p.add_argument("overrides", nargs="*", help="dotted overrides for the stage (and the bare scripts' settings)")
    a = p.parse_intermixed_args()
    if a.serving:
        serving_latency(a.config, a.overrides, a.queries)
        return
    # The cross-encoder path: the one a bare CrossEncoderTrainer script can be compared with.
    overrides = [
        "rerank.kind=cross_encoder",
        *a.overrides,
        "rerank.curve_points=0",
        "rerank.cross_encoder.warm_start_steps=0",
        f"rerank.max_steps={a.steps}",
    ]
    cfg = load_config(a.config, overrides)
    run = RunDir.from_config(cfg)
    r, m, ce = cfg.rerank, cfg.rerank.mining, cfg.rerank.cross_encoder
    start = str(run.require("embed", "model")["model"]) if ce.start_from == "tuned_embedder" else ce.base_model
    if start.startswith("bundled:"):
        from ragtune.pipeline.models import resolve_model

        start = resolve_model(start)
    best: dict[str, float] = {}
    for _ in range(a.repeats):
        shutil.rmtree(run.path(EMBEDDING_CACHE), ignore_errors=True)  # the stage must encode like the bare call
        subprocess.run(
            [str(ROOT / ".venv/bin/ragtune"), "rerank", a.config, *overrides, "--force"],
            check=True,
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        metrics = json.loads(run.require("rerank", "metrics")["metrics"].read_text())
        mining = bench(
            BARE_MINING, str(run.root), str(m.range_min), str(m.range_max), str(m.relative_margin or 0),
            str(m.num_negatives), json.dumps(metrics["dev_qids"]),
        )  # fmt: skip
        training = bench(
            BARE_TRAINING, str(run.root), start, ce.head, str(a.steps), str(r.batch_size),
            str(default_learning_rate(r)), str(ce.head_learning_rate or "none"), str(ce.max_length), str(cfg.run.seed),
            str(bf16_training()),
        )  # fmt: skip
        for key, value in (
            ("stage_mining", metrics["mining_seconds"]),
            ("bare_mining", mining["seconds"]),
            ("stage_train", metrics["train_seconds"]),
            ("bare_train", training["seconds"]),
        ):
            best[key] = min(best.get(key, float("inf")), value)
    pairs = a.steps * r.batch_size
    print(f"mining: stage {best['stage_mining']:.1f} s, bare mine_hard_negatives {best['bare_mining']:.1f} s")
    print(
        f"training ({a.steps} steps x {r.batch_size} pairs): stage {pairs / best['stage_train']:.2f} pairs/s "
        f"({best['stage_train']:.1f} s), bare CrossEncoderTrainer {pairs / best['bare_train']:.2f} pairs/s "
        f"({best['bare_train']:.1f} s) -> {best['bare_train'] / best['stage_train']:.3f}x"
    )
    print("BENCH", json.dumps(best))


if __name__ == "__main__":
    main()
