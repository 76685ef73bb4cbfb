"""Zero-shot retrieval of a run's labelled questions with a base embedder (no training involved).

    python scripts/baseline_retrieval.py runs/demo [--model bundled:minilm-l6] [--origin human]

Needs a finished data stage. Prints hit@k, MRR@10, nDCG@10 and recall@k over all questions of the
given origin (both splits: nothing is trained here) and over the held-out split alone.
"""

from __future__ import annotations

import argparse

from ragtune.pipeline.ranking import mean_metrics, per_query_metrics
from ragtune.pipeline.retrieval import DenseRetriever
from ragtune.pipeline.rundir import EMBEDDING_CACHE, RunDir, read_jsonl


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    parser.add_argument("--model", default="bundled:minilm-l6")
    parser.add_argument("--origin", default="human")
    args = parser.parse_args()
    run = RunDir(args.run_dir)
    paths = run.require("data", "corpus", "queries")
    corpus = read_jsonl(paths["corpus"])
    queries = [q for q in read_jsonl(paths["queries"]) if q["origin"] == args.origin]
    retriever = DenseRetriever.load(args.model, corpus, cache_dir=run.path(EMBEDDING_CACHE))
    _, ranked = retriever.search([q["text"] for q in queries], k=10)
    rows = [per_query_metrics(r, q["relevance"]) for r, q in zip(ranked, queries, strict=True)]
    held = [row for row, q in zip(rows, queries, strict=True) if q["split"] == "eval"]
    print(f"corpus: {len(corpus)} chunks; model: {args.model}")
    for name, subset in (("all", rows), ("eval split", held)):
        means = mean_metrics(subset)
        print(f"{name} ({len(subset)} queries): " + ", ".join(f"{k}={v:.3f}" for k, v in means.items()))


if __name__ == "__main__":
    main()
