"""Base generator vs RAFT-tuned generator on held-out questions, with the same retrieved context.

    python scripts/raft_compare.py runs/demo [--max-questions 40] [--max-new-tokens 128] [--out FILE]

For every eval-split question with a reference answer: retrieve ``assemble.top_k`` chunks with the tuned
embedder (embed/model), rerank them with the tuned reranker (rerank/model), keep ``assemble.top_n``, prompt
with ``ragtune.pipeline.raft_format.build_messages``, and generate greedily with the base model and with the base
plus the RAFT adapter (raft/adapter). Prints, per model: answer token-F1 against the reference (the text
after ``##Answer:``, or the whole output when the tag is missing), quote precision (share of quoted spans
found verbatim in the context, over answers that quote), format compliance and abstention rate; F1 is also
split by whether the context holds a labelled positive chunk. Per-question rows go to ``--out``
(default <run>/raft/compare.json).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragtune.pipeline.answer_metrics import token_f1  # noqa: E402
from ragtune.pipeline.config import load_config  # noqa: E402
from ragtune.pipeline.generator import generate_batched, load_generator  # noqa: E402
from ragtune.pipeline.models import resolve_model  # noqa: E402
from ragtune.pipeline.raft_format import build_messages, parse_answer, quote_is_verbatim  # noqa: E402
from ragtune.pipeline.retrieval import DenseRetriever, load_fusion_weight, rerank  # noqa: E402
from ragtune.pipeline.rundir import (  # noqa: E402
    CONFIG_RESOLVED,
    EMBEDDING_CACHE,
    RAFT_COMPARE,
    RunDir,
    atomic_write_text,
    read_jsonl,
)

logger = logging.getLogger(__name__)


def score_generation(text: str, reference: str, context: list[str]) -> dict:
    """Per-answer metrics: F1 of the final answer, quote precision (None without quotes), format, abstention."""
    parsed = parse_answer(text)
    answer = parsed.answer if parsed.answer else text
    joined = "\n\n".join(context)
    verbatim = [quote_is_verbatim(q, joined) for q in parsed.quotes]
    return {
        "f1": token_f1(answer, reference),
        "quote_precision": sum(verbatim) / len(verbatim) if verbatim else None,
        "quotes": len(verbatim),
        "well_formed": parsed.well_formed,
        "abstained": parsed.abstained,
    }


def summarize(rows: list[dict], key: str) -> dict:
    """Means over questions of one model's metrics (quote precision over answers that quote)."""
    scores = [r[key] for r in rows]
    qp = [s["quote_precision"] for s in scores if s["quote_precision"] is not None]
    with_pos = [s["f1"] for s, r in zip(scores, rows, strict=True) if r["positive_in_context"]]
    without = [s["f1"] for s, r in zip(scores, rows, strict=True) if not r["positive_in_context"]]

    def mean(xs: list[float]) -> float | None:
        return round(sum(xs) / len(xs), 4) if xs else None

    return {
        "f1": mean([s["f1"] for s in scores]),
        "f1_positive_in_context": mean(with_pos),
        "f1_no_positive_in_context": mean(without),
        "quote_precision": mean(qp),
        "answers_with_quotes": len(qp),
        "well_formed": mean([float(s["well_formed"]) for s in scores]),
        "abstained": mean([float(s["abstained"]) for s in scores]),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", help="a run directory whose raft stage has finished")
    parser.add_argument("--max-questions", type=int, default=40, help="eval questions to use (first by qid)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--out", default=None, help="per-question JSON (default <run>/raft/compare.json)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from sentence_transformers import CrossEncoder

    run = RunDir(args.run_dir)
    cfg = load_config(run.path(CONFIG_RESOLVED), resolved=True)

    # 1. Held-out questions with reference answers, and the tuned retrieval stack.
    data = run.require("data", "corpus", "queries")
    adapter = run.require("raft", "adapter")["adapter"]
    corpus = read_jsonl(data["corpus"])
    texts = {c["id"]: c["text"] for c in corpus}
    questions = sorted(
        (q for q in read_jsonl(data["queries"]) if q["split"] == "eval" and q.get("answer")), key=lambda q: q["qid"]
    )[: args.max_questions]
    if not questions:
        raise SystemExit(f"{data['queries']} has no eval-split question with a reference answer")

    # 2. The same context for both models: tuned embedder top_k, tuned reranker, top_n.
    retriever = DenseRetriever.load(str(run.require("embed", "model")["model"]), corpus, run.path(EMBEDDING_CACHE))
    first_scores, ids = retriever.search([q["text"] for q in questions], k=cfg.assemble.top_k)
    reranker = run.require("rerank", "model")["model"]
    ranked = rerank(
        CrossEncoder(str(reranker)),
        [q["text"] for q in questions],
        [[{"id": i, "text": texts[i]} for i in r] for r in ids],
        first_scores,
        load_fusion_weight(reranker),
    )
    contexts = [[c["id"] for c, _ in row[: cfg.assemble.top_n]] for row in ranked]
    prompts = [build_messages(q["text"], [texts[c] for c in ctx]) for q, ctx in zip(questions, contexts, strict=True)]

    # 3. Generate with the base model, then with the adapter; both read the prompts through the tokenizer
    #    RAFT saved beside the adapter, so they see the same chat template.
    base_path = resolve_model(cfg.raft.base_model)
    tuned, tokenizer = load_generator(base_path, str(adapter))
    tuned_out = generate_batched(tuned, tokenizer, prompts, args.max_new_tokens, args.batch_size, "RAFT generator")
    del tuned
    base, _ = load_generator(base_path)
    base_out = generate_batched(base, tokenizer, prompts, args.max_new_tokens, args.batch_size, "base generator")

    # 4. Score, print, write per-question rows.
    rows = []
    for q, ctx, b, t in zip(questions, contexts, base_out, tuned_out, strict=True):
        chunk_texts = [texts[c] for c in ctx]
        rows.append(
            {
                "qid": q["qid"],
                "question": q["text"],
                "reference": q["answer"],
                "context_ids": ctx,
                "positive_in_context": bool(set(ctx) & set(q["positives"])),
                "base_output": b,
                "tuned_output": t,
                "base": score_generation(b, q["answer"], chunk_texts),
                "tuned": score_generation(t, q["answer"], chunk_texts),
            }
        )
    summary = {
        "run": str(run.root),
        "questions": len(rows),
        "positive_in_context": sum(r["positive_in_context"] for r in rows),
        "top_k": cfg.assemble.top_k,
        "top_n": cfg.assemble.top_n,
        "max_new_tokens": args.max_new_tokens,
        "base": summarize(rows, "base"),
        "tuned": summarize(rows, "tuned"),
    }
    out = Path(args.out) if args.out else run.path(RAFT_COMPARE)
    atomic_write_text(out, json.dumps({"summary": summary, "rows": rows}, indent=2, ensure_ascii=False))
    print(f"{len(rows)} held-out questions, context holds a positive for {summary['positive_in_context']}")
    print(f"{'metric':<28}{'base':>10}{'RAFT':>10}")
    for key in summary["base"]:
        print(f"{key:<28}{summary['base'][key]!s:>10}{summary['tuned'][key]!s:>10}")
    print(f"per-question rows: {out}")
    return summary


if __name__ == "__main__":
    main()
