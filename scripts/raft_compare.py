"""Base generator vs RAFT-tuned generator on held-out questions, with the same retrieved context.

    python scripts/raft_compare.py runs/demo [--max-questions 40] [--max-new-tokens 128] [--out FILE]

For every eval-split question with a reference answer: retrieve ``assemble.top_k`` chunks with the tuned
embedder (embed/model), rerank them with the tuned reranker (rerank/model), keep ``assemble.top_n``, prompt
with ``stages.raft.prompts.build_messages``, and generate greedily with the base model and with the base
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
import re
import string
import sys
from collections import Counter
from pathlib import Path

import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pipeline.config import load_config  # noqa: E402
from pipeline.models import resolve_model  # noqa: E402
from pipeline.retrieval import DenseRetriever, load_fusion_weight, rerank  # noqa: E402
from pipeline.rundir import RunDir, atomic_write_text, read_jsonl  # noqa: E402
from stages.raft.prompts import build_messages, parse_answer, quote_is_verbatim  # noqa: E402

logger = logging.getLogger(__name__)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    """SQuAD token F1 between a prediction and one reference.

    Example:
        >>> round(token_f1("RPO is 5 minutes", "RPO 5 minutes, RTO 30 minutes."), 3)
        0.545
    """
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    common = sum((Counter(pred) & Counter(ref)).values())
    if not pred or not ref or common == 0:
        return float(pred == ref)
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


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


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[dict]], max_new_tokens: int, batch_size: int, desc: str) -> list[str]:
    """Greedy, left-padded batched chat generation; returns only the new text."""
    tokenizer.padding_side = "left"
    outputs = []
    for start in tqdm(range(0, len(prompts), batch_size), desc=desc):
        texts = [
            tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True)
            for m in prompts[start : start + batch_size]
        ]
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
        outputs += tokenizer.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
    return outputs


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
    from peft import PeftModel
    from sentence_transformers import CrossEncoder
    from transformers import AutoModelForCausalLM, AutoTokenizer

    run = RunDir(args.run_dir)
    cfg = load_config(run.path("config.resolved.yaml"))

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
    retriever = DenseRetriever.load(str(run.require("embed", "model")["model"]), corpus, run.path("cache/embeddings"))
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

    # 3. Generate with the base model, then with the adapter on the same weights.
    base_path = resolve_model(cfg.raft.base_model)
    tokenizer = AutoTokenizer.from_pretrained(str(adapter))
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32).eval()
    base_out = generate(model, tokenizer, prompts, args.max_new_tokens, args.batch_size, "base generator")
    tuned = PeftModel.from_pretrained(model, str(adapter)).eval()
    tuned_out = generate(tuned, tokenizer, prompts, args.max_new_tokens, args.batch_size, "RAFT generator")

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
    out = Path(args.out) if args.out else run.path("raft/compare.json")
    atomic_write_text(out, json.dumps({"summary": summary, "rows": rows}, indent=2, ensure_ascii=False))
    print(f"{len(rows)} held-out questions, context holds a positive for {summary['positive_in_context']}")
    print(f"{'metric':<28}{'base':>10}{'RAFT':>10}")
    for key in summary["base"]:
        print(f"{key:<28}{summary['base'][key]!s:>10}{summary['tuned'][key]!s:>10}")
    print(f"per-question rows: {out}")
    return summary


if __name__ == "__main__":
    main()
