"""RAFT learning curve: the generator's dev-question scores against training steps, for one recipe.

    python scripts/raft_curve.py CONFIG --from runs/demo run.name=curve-short raft.target=quote_answer \
        [--steps 200] [--every 50] [--out FILE]

Copies the finished ``data``, ``embed`` and ``rerank`` stages of ``--from`` into the run directory that
``run.name`` names (once; a later call reuses it), builds the RAFT data there with the config and overrides
given (the recipe), then trains the LoRA for ``--steps`` steps. Before the first step and every ``--every``
steps it answers RAFT's own dev questions (``raft/dev.jsonl``: train-split questions of held-out train
documents, over the context serving gives them; never eval questions) greedily with the adapter as it is, and
records per checkpoint: answer token-F1 against the reference, format compliance, quote precision (over answers
that quote), oracle citation, abstention, the final answers' mean length in words, and the mean training loss
since the last checkpoint. The extractive answerer's F1 on the same questions is printed beside, as the bar to
clear. With ``--guided`` each checkpoint also answers with the extractive answerer's sentence prefilled as the
quote (``##Reason: ##begin_quote##…##end_quote##`` then ``##Answer:``), so the generator writes the final answer
alone: F1 and answer length of that reading go in ``guided_f1`` and ``guided_answer_words``. Rows go to ``--out``
(default ``<run>/raft/curve.jsonl``) and a table is printed.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragtune.eval.metrics import abstained, format_compliance, mean_defined, oracle_citation, quote_precision  # noqa: E402
from ragtune.pipeline.answer_metrics import final_answer, token_f1  # noqa: E402
from ragtune.pipeline.config import load_config  # noqa: E402
from ragtune.pipeline.generator import generate_batched  # noqa: E402
from ragtune.pipeline.models import resolve_model  # noqa: E402
from ragtune.pipeline.precision import bf16_training  # noqa: E402
from ragtune.pipeline.raft_format import guided_messages, parse_answer, whole_answer  # noqa: E402
from ragtune.pipeline.rundir import (  # noqa: E402
    CONFIG_RESOLVED,
    DATA_CORPUS,
    DATA_QUERIES,
    MANIFEST,
    RAFT_CHECKPOINTS,
    RAFT_CURVE,
    RAFT_DEV_DATA,
    RAFT_TRAIN_DATA,
    RunDir,
    read_jsonl,
)

logger = logging.getLogger(__name__)
COPIED = ("data", "embed", "rerank", "index", "cache", MANIFEST, CONFIG_RESOLVED)


def copy_stages(source: Path, target: Path) -> None:
    """The finished stages RAFT builds on, copied from ``source`` into a new run directory ``target``."""
    if target.exists():
        return
    target.mkdir(parents=True)
    for name in COPIED:
        if (source / name).is_dir():
            shutil.copytree(source / name, target / name)
        elif (source / name).exists():
            shutil.copy2(source / name, target / name)


def guided_scores(finals: list[str], rows: list[dict]) -> dict:
    """F1 and mean length in words of the final answers written after a prefilled quote (empty: not asked)."""
    if not finals:
        return {}
    # read as eval reads a whole answer (its final answer: :func:`ragtune.pipeline.raft_format.parse_answer`)
    answers = [final_answer(whole_answer(guided(r), f)) for f, r in zip(finals, rows, strict=True)]
    return {
        "guided_f1": sum(token_f1(a, r["answer"]) for a, r in zip(answers, rows, strict=True)) / len(rows),
        "guided_answer_words": sum(len(a.split()) for a in answers) / len(rows),
    }


def score_dev(answers: list[str], rows: list[dict], contexts: list[list[str]], positives: list[list[str]]) -> dict:
    """Mean dev figures of one checkpoint's answers (quote precision over the answers that quote)."""
    n = len(rows)
    quotes = [parse_answer(a).quotes for a in answers]
    return {
        "f1": sum(token_f1(final_answer(a), r["answer"]) for a, r in zip(answers, rows, strict=True)) / n,
        "format": sum(format_compliance(a) for a in answers) / n,
        "quote_precision": mean_defined([quote_precision(q, c) for q, c in zip(quotes, contexts, strict=True)]),
        "oracle_citation": sum(oracle_citation(q, p) for q, p in zip(quotes, positives, strict=True)) / n,
        "abstain": sum(abstained(a) for a in answers) / n,
        "answer_words": sum(len(final_answer(a).split()) for a in answers) / n,
    }


def guided(row: dict) -> list[dict]:
    """A dev question's prompt with the extractive answerer's quote prefilled as the answer's start (up to the
    answer tag), as ``assemble.quote: extractive`` serves it: the generator then writes the final answer alone."""
    return guided_messages(row["prompt"], row["extractive"])


def main() -> None:
    import torch
    from transformers import TrainerCallback

    from ragtune.stages.raft import build
    from ragtune.stages.raft.train import build_trainer

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config")
    parser.add_argument("--from", dest="source", required=True, help="finished run to copy data/embed/rerank from")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--every", type=int, default=50)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--guided", action="store_true", help="also answer with the extractive quote prefilled")
    parser.add_argument("overrides", nargs="*", help="key=value config overrides (the recipe)")
    args = parser.parse_intermixed_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    cfg = load_config(args.config, args.overrides)
    run = RunDir.from_config(cfg)
    if run.root.resolve() == Path(args.source).resolve():
        parser.error("run.name must name a new run directory, not --from's")
    copy_stages(Path(args.source), run.root)

    # 1. The recipe's RAFT data, and the dev questions with their served context and labelled evidence.
    build.main(cfg, run)
    samples = read_jsonl(run.path(RAFT_TRAIN_DATA))
    rows = read_jsonl(run.path(RAFT_DEV_DATA))
    texts = {c["id"]: c["text"] for c in read_jsonl(run.path(DATA_CORPUS))}
    positives_of = {q["qid"]: q["positives"] for q in read_jsonl(run.path(DATA_QUERIES))}
    contexts = [[texts[c] for c in r["chunk_ids"]] for r in rows]
    positives = [[texts[c] for c in positives_of[r["qid"]]] for r in rows]
    extractive = sum(token_f1(final_answer(r["extractive"]), r["answer"]) for r in rows) / len(rows)
    reference_words = sum(len(r["answer"].split()) for r in rows) / len(rows)

    # 2. The trainer, with a callback that answers the dev questions at each checkpoint.
    raft = cfg.raft.model_copy(update={"max_steps": args.steps})
    trainer, info = build_trainer(
        raft, resolve_model(cfg.raft.base_model), samples, run.path(RAFT_CHECKPOINTS), cfg.run.seed
    )
    curve: list[dict] = []
    clock = {"began": 0.0, "evaluating": 0.0}  # training time = since the first step, less the evaluations

    def checkpoint(step: int, log_history: list[dict]) -> None:
        model, tokenizer = trainer.model, trainer.processing_class
        side, began = tokenizer.padding_side, time.perf_counter()
        model.eval()
        tokenizer.padding_side = "left"
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16_training()):
            answers = generate_batched(
                model, tokenizer, [r["prompt"] for r in rows], cfg.assemble.max_new_tokens, desc=f"dev @ {step}"
            )
            prefilled = [guided(r) for r in rows] if args.guided else []
            finals = generate_batched(model, tokenizer, prefilled, cfg.assemble.max_new_tokens, desc="guided")
        tokenizer.padding_side = side
        model.train()
        since = curve[-1]["step"] if curve else 0
        losses = [h["loss"] for h in log_history if "loss" in h and since < h["step"] <= step]
        row = {
            "step": step,
            "train_loss": sum(losses) / len(losses) if losses else None,
            **score_dev(answers, rows, contexts, positives),
            **guided_scores(finals, rows),
            "extractive_f1": extractive,
            "train_s": round(began - clock["began"] - clock["evaluating"], 1) if step else 0.0,
            "examples": [{"qid": r["qid"], "answer": a} for r, a in zip(rows[:3], answers, strict=False)],
        }
        curve.append(row)
        clock["evaluating"] += time.perf_counter() - began
        logger.info("curve @ %d: %s", step, {k: v for k, v in row.items() if k != "examples"})

    class DevCurve(TrainerCallback):
        def on_train_begin(self, _args, state, control, **kwargs):
            checkpoint(0, state.log_history)
            clock["began"], clock["evaluating"] = time.perf_counter(), 0.0

        def on_log(self, _args, state, control, logs=None, **kwargs):  # after the step's loss is logged
            if "loss" in (logs or {}) and (state.global_step % args.every == 0 or state.global_step == state.max_steps):
                checkpoint(state.global_step, state.log_history)

    trainer.add_callback(DevCurve())

    # 3. Train; the rows and a table.
    trainer.train()
    out = args.out or run.path(RAFT_CURVE)
    recipe = {"overrides": args.overrides, "samples": info["samples"], "sample_tokens": info["sample_tokens"]}
    out.write_text("".join(json.dumps(recipe | r) + "\n" for r in curve), encoding="utf-8")
    print(f"\n{' '.join(args.overrides)}: {info['samples']} samples, {len(rows)} dev questions, extractive F1 "
          f"{extractive:.3f}, reference answers {reference_words:.1f} words")  # fmt: skip
    print("| step | train loss | F1 | format | quote precision | oracle citation | abstain | answer words | train s "
          "| guided F1 (words) |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in curve:
        qp = "–" if r["quote_precision"] is None else f"{r['quote_precision']:.2f}"
        loss = "–" if r["train_loss"] is None else f"{r['train_loss']:.3f}"
        led = f"{r['guided_f1']:.3f} ({r['guided_answer_words']:.1f})" if "guided_f1" in r else "–"
        print(f"| {r['step']} | {loss} | {r['f1']:.3f} | {r['format']:.2f} | {qp} | {r['oracle_citation']:.2f} | "
              f"{r['abstain']:.2f} | {r['answer_words']:.1f} | {r['train_s']:.0f} | {led} |")  # fmt: skip


if __name__ == "__main__":
    main()
