"""Why training the query-likelihood reranker adds little: its loss and dev gain by query origin and negative source.

Run it on a finished run (after `ragtune rerank CONFIG`; only the train split and the rerank dev slice are read,
never the eval split):
    .venv/bin/python scripts/rerank_sources.py configs/demo.yaml [--lists 40] [--steps 20] [--out FILE]

Training lists (a positive and ``--negatives`` negatives) are built per query origin:
- ``human``: the train split's labelled questions (outside the dev slice);
- ``synthetic``: the data stage's queries, written by the same LM that scores (the default reranker's);
- ``sampled``: the same chunks' queries written again by that LM, sampled at temperature ``--temperature``
  (another draw of its words, not its most likely ones);
- ``inverse_cloze``: a sentence of a chunk of a training document, the rest of the chunk its positive;
and per negative source, from the candidates of the tuned embedder's top ``--pool`` (labelled chunks left out):
- ``embedder``: the embedder's highest-ranked (what stage 2 mines);
- ``bm25``: BM25's highest-ranked over the whole corpus;
- ``lm``: the untrained LM's highest-scored among the embedder's pool (hard for the scorer itself);
- ``distill``: no label at all: the embedder's top ``--pool`` candidates as they come (positives included), each
  weighted by the fused order the stage serves, ``--teacher-weight``·mm(untrained LM) + (1 − it)·mm(embedder)
  (min-max within the list); the loss is the KL divergence from the softmax of those weights (temperature
  ``--teacher-temperature``) to the reranker's (the stage's temperature). Distillation from the fused order.

With ``--query-side`` the adapter reads the query's tokens only: every passage prefix is the frozen LM's (computed
once with the adapter off and kept), so a training step costs the queries' ~15 tokens instead of whole passages,
and ``--steps`` can be many passes at ``--learning-rate`` (``--eval-every`` draws the dev curve). It asks whether
the budget or the signal is what keeps training from paying: cheap steps, many of them, at a rate that moves the
scores.

For each (origin, source) the script prints the untrained LM's listwise loss on the lists (softmax
cross-entropy at the stage's temperature; ln(1 + negatives) is chance) and how often it already ranks the positive
first; then it LoRA-trains a fresh adapter for ``--steps`` steps on those lists with the stage's settings and
prints the dev slice's nDCG@10 of the reranker alone and fused with the retriever (weight by the stage's rule),
against the untrained LM's, and how far training moved the dev scores: the share of dev queries whose candidate
order changed and the mean absolute change of a score (nats). The table goes in docs/rerank.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from datasets import Dataset  # noqa: E402
from torch import nn  # noqa: E402
from transformers import Trainer  # noqa: E402

from ragtune.pipeline.config import load_config  # noqa: E402 (after the path set-up)
from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever  # noqa: E402
from ragtune.pipeline.llm import make_backend  # noqa: E402
from ragtune.pipeline.llm.local import stop_when  # noqa: E402
from ragtune.pipeline.prefix_cache import cached_part  # noqa: E402
from ragtune.pipeline.pseudo_queries import inverse_cloze_queries  # noqa: E402
from ragtune.pipeline.query_likelihood import (  # noqa: E402
    QueryLikelihoodReranker,
    listwise_cross_entropy,
    untrained_cache_name,
)
from ragtune.pipeline.ranking import fuse_scores  # noqa: E402
from ragtune.pipeline.retrieval import DenseRetriever, reranker_scores  # noqa: E402
from ragtune.pipeline.rundir import DATA_LLM_CACHE, EMBEDDING_CACHE, SCORE_CACHE, RunDir, read_jsonl  # noqa: E402
from ragtune.stages.data.query_generation import RECIPE_MAX_NEW_TOKENS, RECIPE_STOP, prompt_builder  # noqa: E402
from ragtune.stages.data.query_parsing import first_question  # noqa: E402
from ragtune.stages.rerank.curve import curve_point, dev_candidates  # noqa: E402
from ragtune.stages.rerank.likelihood import (  # noqa: E402
    ListCollator,
    build_query_likelihood,
    train_query_likelihood,
)
from ragtune.stages.rerank.mine import rerank_dev_split  # noqa: E402
from ragtune.stages.rerank.train import build_training_args  # noqa: E402

ORIGINS = ("human", "synthetic", "sampled", "inverse_cloze")
SOURCES = ("embedder", "bm25", "lm", "distill")


def origin_of(query: dict[str, Any]) -> str:
    return query.get("origin") or ("inverse_cloze" if query["qid"].startswith("ict-") else "human")


def sampled_queries(cfg: Any, run: RunDir, queries: list[dict], by_id: dict, temperature: float) -> list[dict]:
    """``queries``' positive chunks asked about again with the data stage's prompt and LM, sampled at ``temperature``
    (cached beside the data stage's calls, so a rerun draws the same samples)."""
    backend = make_backend(cfg.synth.llm, run.path(DATA_LLM_CACHE))
    build = prompt_builder(cfg.synth)
    requests = [build(by_id[q["positives"][0]]["text"]) for q in queries]
    with stop_when(backend, RECIPE_STOP):
        replies = backend.generate(
            requests, temperature=temperature, max_new_tokens=RECIPE_MAX_NEW_TOKENS, desc="sample queries"
        )
    rows = []
    for q, reply in zip(queries, replies, strict=True):
        text = first_question(reply or "")
        if text and text.casefold() != q["text"].casefold():
            rows.append({**q, "qid": f"sampled-{q['qid']}", "text": text, "origin": "sampled"})
    return rows


def first_negatives(ranked: list[str], relevant: set[str], n: int) -> list[str]:
    """The first ``n`` chunk ids of ``ranked`` that are not labelled relevant.

    Example:
        >>> first_negatives(["a", "p", "b", "c"], {"p"}, 2)
        ['a', 'b']
    """
    return [c for c in ranked if c not in relevant][:n]


def distillation_loss(
    scores: torch.Tensor, teacher: torch.Tensor, sizes: list[int], temperature: float, teacher_temperature: float
) -> torch.Tensor:
    """Mean over lists of KL(softmax(teacher / teacher_temperature) ‖ softmax(scores / temperature)).

    Example:
        >>> round(float(distillation_loss(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), [2], 0.1, 0.1)), 6)
        0.0
    """
    losses = []
    for row, target in zip(scores.split(sizes), teacher.split(sizes), strict=True):
        target = torch.softmax(target / teacher_temperature, dim=0)
        losses.append(torch.sum(target * (target.clamp_min(1e-12).log() - torch.log_softmax(row / temperature, 0))))
    return torch.stack(losses).mean()


class TeacherCollator(ListCollator):
    """:class:`ListCollator` with each list's teacher weights (``"teacher"``) packed beside its pairs."""

    def __call__(self, rows: Any) -> dict[str, torch.Tensor]:
        return {**super().__call__(rows), "teacher": torch.tensor([t for r in rows for t in r["teacher"]])}


class DistillTrainer(Trainer):
    """A Trainer whose loss is :func:`distillation_loss` of the reranker's scores against the lists' teacher."""

    teacher_temperature = 0.1

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        teacher, sizes = inputs.pop("teacher"), inputs.pop("list_sizes").tolist()
        out = model(**inputs)
        loss = distillation_loss(out["scores"], teacher, sizes, model.temperature, self.teacher_temperature)
        return (loss, out) if return_outputs else loss


class QuerySideReranker(QueryLikelihoodReranker):
    """The query-likelihood reranker with its LoRA adapter on the query's tokens only.

    Every passage prefix is the frozen LM's (computed with the adapter off), so prefixes outlive training steps and
    a step reads only the queries' tokens over them. ``lm`` must be a peft model.
    """

    def _prefix_states(self, prefixes: Any, batch_size: int, device: Any) -> dict[tuple, Any]:
        with self.lm.disable_adapter(), torch.no_grad():
            return super()._prefix_states(prefixes, batch_size, device)

    def train(self, mode: bool = True) -> QuerySideReranker:
        """As ``nn.Module.train``; forgets memoised scores but keeps the prefixes (the frozen LM's)."""
        self.memo, self.cache_file = {}, None
        return nn.Module.train(self, mode)

    def list_scores(self, lists: list[dict[str, Any]]) -> torch.Tensor:
        """Differentiable scores of every (query, passage) pair of ``lists``, in order, read after the prefixes."""
        encoded = self.encode([(r["query"], p) for r in lists for p in r["passages"]])
        prefix_of = [cached_part(context) for context, _ in encoded]
        device = next(self.lm.parameters()).device
        return self.scores_after(encoded, prefix_of, self._prefix_states(list(dict.fromkeys(prefix_of)), 16, device))


def list_loss(
    scores: torch.Tensor, lists: list[dict[str, Any]], temperature: float, teacher_temperature: float
) -> torch.Tensor:
    """The listwise loss of ``lists``' scores: against each list's teacher where lists carry one (distillation),
    else softmax cross-entropy with the first passage (the positive) as the target."""
    sizes = [len(r["passages"]) for r in lists]
    if "teacher" in lists[0]:
        teacher = torch.tensor([t for r in lists for t in r["teacher"]])
        return distillation_loss(scores, teacher, sizes, temperature, teacher_temperature)
    return listwise_cross_entropy(scores, sizes, temperature)


def train_query_side(
    model: QuerySideReranker, lists: list[dict[str, Any]], args: Any, seed: int, evaluate: Any
) -> tuple[list[float], list[Any]]:
    """AdamW on the adapter for ``args.steps`` steps of ``args.batch`` lists (reshuffled every pass), the rate
    decaying linearly from ``args.learning_rate``. Returns the losses and ``evaluate(model, step)`` of every
    ``args.eval_every``-th step before the last."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=args.learning_rate, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1 - step / args.steps)
    rng, order, losses, curve = random.Random(seed), [], [], []
    for step in range(1, args.steps + 1):
        if len(order) < args.batch:
            order = rng.sample(lists, len(lists))
        batch, order = order[: args.batch], order[args.batch :]
        model.train()
        loss = list_loss(model.list_scores(batch), batch, model.temperature, args.teacher_temperature)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(float(loss.detach()))
        if args.eval_every and step % args.eval_every == 0 and step < args.steps:
            curve.append(evaluate(model, step))
    return losses, curve


def score_shift(before: list[list[float]], after: list[list[float]]) -> tuple[float, float]:
    """How far training moved a reranker's scores of the same candidate lists: the share of lists whose order
    changed, and the mean absolute change of a score.

    Example:
        >>> score_shift([[0.0, -1.0], [0.0, -1.0]], [[0.0, -0.5], [-2.0, -1.0]])
        (0.5, 0.75)
    """

    def order(row: list[float]) -> list[int]:
        return sorted(range(len(row)), key=lambda i: -row[i])

    changed = [order(b) != order(a) for b, a in zip(before, after, strict=True)]
    shifts = [abs(x - y) for b, a in zip(before, after, strict=True) for x, y in zip(b, a, strict=True)]
    return sum(changed) / len(changed), sum(shifts) / len(shifts)


def listwise_loss(
    model: QueryLikelihoodReranker, lists: list[dict[str, Any]], teacher_temperature: float
) -> tuple[float, float]:
    """The untrained model's mean loss on ``lists`` (listwise, or against the teacher where lists carry one) and
    the share of lists whose first passage (the positive; the teacher's best) it ranks first. Every pair is scored
    in one batched ``predict`` (passage prefixes read once, scores memoised)."""
    pairs = [(r["query"], p) for r in lists for p in r["passages"]]
    scores = torch.tensor(model.predict(pairs, batch_size=16))
    loss = list_loss(scores, lists, model.temperature, teacher_temperature)
    firsts = [int(row.argmax()) == 0 for row in scores.split([len(r["passages"]) for r in lists])]
    return float(loss), sum(firsts) / len(firsts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config")
    parser.add_argument("--lists", type=int, default=40, help="training lists per variant (the same for all)")
    parser.add_argument("--negatives", type=int, default=3)
    parser.add_argument("--pool", type=int, default=20, help="the embedder's candidates the lm source scores")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", type=Path, default=None, help="JSON lines of the results")
    parser.add_argument("--only", nargs="*", default=None, help="variants origin/source to measure (default all)")
    parser.add_argument("--temperature", type=float, default=1.0, help="sampling temperature of the sampled origin")
    parser.add_argument("--teacher-weight", type=float, default=0.5, help="the LM's weight in the distill teacher")
    parser.add_argument("--teacher-temperature", type=float, default=0.1, help="softmax temperature of the teacher")
    parser.add_argument("--query-side", action="store_true", help="the adapter on the query's tokens only")
    parser.add_argument("--learning-rate", type=float, default=None, help="--query-side: peak rate (the stage's)")
    parser.add_argument("--batch", type=int, default=None, help="--query-side: lists per step (the stage's)")
    parser.add_argument("--eval-every", type=int, default=0, help="--query-side: dev curve every N steps (0: end)")
    parser.add_argument("--prefix-mb", type=int, default=6144, help="--query-side: memory for passage prefixes")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_intermixed_args()  # overrides may follow the flags
    cfg = load_config(args.config, args.overrides)
    run = RunDir(Path(cfg.run.root) / cfg.run.name)
    rng = random.Random(cfg.run.seed)

    # 1. The run's corpus, train queries by origin (the dev slice left out), the dev candidates.
    corpus = read_jsonl(run.require("data", "corpus")["corpus"])
    by_id = {c["id"]: c for c in corpus}
    queries = read_jsonl(run.require("data", "queries")["queries"])
    dev_queries, kept_out = rerank_dev_split(cfg, queries)
    held_out_docs = {by_id[c]["doc_id"] for q in queries if q["split"] != "train" or q["qid"] in kept_out
                     for c in q["relevance"]}  # fmt: skip
    train = [q for q in queries if q["split"] == "train" and q["qid"] not in kept_out and q["positives"]]
    train += inverse_cloze_queries(corpus, held_out_docs, args.lists, cfg.run.seed)
    groups = {o: [q for q in train if origin_of(q) == o] for o in ORIGINS}
    groups = {o: rng.sample(g, min(args.lists, len(g))) for o, g in groups.items() if g}
    if "synthetic" in groups:
        groups["sampled"] = sampled_queries(cfg, run, groups["synthetic"], by_id, args.temperature)
    print("train queries per origin:", {o: len(g) for o, g in groups.items()}, "dev queries:", len(dev_queries))
    retriever = DenseRetriever.load(
        str(run.require("embed", "model")["model"]), corpus, cache_dir=run.path(EMBEDDING_CACHE)
    )
    dev = dev_candidates(retriever, dev_queries, cfg.rerank.retrieve_top_k)

    # 2. Negatives of every source for every chosen query.
    chosen = [q for g in groups.values() for q in g]
    texts = [q["text"] for q in chosen]
    cosines, pools = retriever.search(texts, args.pool + 5)
    bm25 = bm25_rankings(bm25_retriever(corpus, args.pool + 5), texts)
    ql = cfg.rerank.query_likelihood
    cache = run.path(SCORE_CACHE) / f"{untrained_cache_name(ql.generator, ql.prompt, ql.max_length)}.jsonl"
    untrained = QueryLikelihoodReranker.from_generator(
        ql.generator, ql.prompt, ql.max_length, ql.dtype, cache_file=cache, prefix_cache_mb=ql.prefix_cache_mb
    )
    untrained.temperature = ql.temperature
    # each query's embedder top (the distill lists) and its first non-relevant candidates, scored in one call
    relevant = [set(q["relevance"]) | set(q["positives"]) for q in chosen]
    candidates = [first_negatives(pool, rel, args.pool) for pool, rel in zip(pools, relevant, strict=True)]
    scored = sorted({(q["text"], c) for q, pool, cand in zip(chosen, pools, candidates, strict=True)
                     for c in [*pool[: args.pool], *cand]})  # fmt: skip
    scores = untrained.predict([(t, by_id[c]["text"]) for t, c in scored], batch_size=16, show_progress_bar=True)
    lm_score = dict(zip(scored, scores, strict=True))
    negatives: dict[tuple[str, str], list[str]] = {}
    teachers: dict[str, list[tuple[str, float]]] = {}
    for q, pool, cosine, lexical, rel, cand in zip(chosen, pools, cosines, bm25, relevant, candidates, strict=True):
        top = pool[: args.pool]
        fused = fuse_scores(cosine[: args.pool], [lm_score[q["text"], c] for c in top], args.teacher_weight)
        teachers[q["qid"]] = sorted(zip(top, fused, strict=True), key=lambda t: -t[1])  # the teacher's best first
        by_lm = sorted(cand, key=lambda c: -lm_score[q["text"], c])
        negatives[q["qid"], "embedder"] = cand[: args.negatives]
        negatives[q["qid"], "bm25"] = first_negatives(lexical, rel, args.negatives)
        negatives[q["qid"], "lm"] = by_lm[: args.negatives]

    def lists_of(origin: str, source: str) -> list[dict[str, Any]]:
        if source == "distill":
            return [
                {
                    "query": q["text"],
                    "passages": [by_id[c]["text"] for c, _ in teachers[q["qid"]]],
                    "teacher": [w for _, w in teachers[q["qid"]]],
                }
                for q in groups[origin]
            ]
        rows = []
        for q in groups[origin]:
            best = max(q["positives"], key=lambda p: q["relevance"].get(p, 0))
            neg = negatives[q["qid"], source]
            if len(neg) == args.negatives:
                rows.append({"query": q["text"], "passages": [by_id[c]["text"] for c in [best, *neg]]})
        return rows

    # 3. The untrained LM on every variant's lists, and on the dev slice.
    start = curve_point(untrained, dev, 0)
    start_scores = reranker_scores(untrained, dev.texts, dev.chunks)  # memoised: the point above scored them
    chance = math.log(1 + args.negatives)
    print(f"untrained on dev: reranker alone {start['reranker']:.3f}, fused {start['fused']:.3f} (weight "
          f"{start['weight']}), retriever {start['retriever']:.3f}; chance loss {chance:.3f}")  # fmt: skip
    results = []
    for origin in groups:
        for source in SOURCES:
            if args.only is not None and f"{origin}/{source}" not in args.only:
                continue
            lists = lists_of(origin, source)
            loss, first = listwise_loss(untrained, lists, args.teacher_temperature)
            results.append({"origin": origin, "source": source, "lists": len(lists), "loss_untrained": loss,
                            "positive_first": first})  # fmt: skip
            print(
                f"{origin:14s} {source:9s} lists {len(lists):3d}  untrained loss {loss:.3f}  positive first {first:.2f}"
            )
    del untrained

    # 4. Train a fresh adapter per variant for the same steps; the dev slice after (and on the way, query-side).
    def dev_point(model: Any, step: int) -> dict[str, Any]:
        after = curve_point(model.eval(), dev, step)
        changed, shift = score_shift(start_scores, reranker_scores(model, dev.texts, dev.chunks))
        point = {**after, "orders_changed": round(changed, 3), "mean_shift": round(shift, 4)}
        print("dev", json.dumps(point), flush=True)
        return point

    for row in results:
        lists = lists_of(row["origin"], row["source"])
        torch.manual_seed(cfg.run.seed)
        model = build_query_likelihood(cfg.rerank, train=True)
        with tempfile.TemporaryDirectory() as tmp:
            targs = build_training_args(cfg.rerank, tmp, cfg.run.seed)
            targs.max_steps, targs.disable_tqdm = args.steps, True
            started = time.time()
            if args.query_side:
                model = QuerySideReranker(model.lm, model.tokenizer, model.prompt, model.max_length,
                                          prefix_cache_mb=args.prefix_mb)  # fmt: skip
                model.temperature = cfg.rerank.query_likelihood.temperature
                args.learning_rate = args.learning_rate or targs.learning_rate
                args.batch = args.batch or targs.per_device_train_batch_size
                losses, curve = train_query_side(model, lists, args, cfg.run.seed, dev_point)
                row |= {"query_side": True, "learning_rate": args.learning_rate, "batch": args.batch, "curve": curve}
            elif row["source"] == "distill":
                targs.remove_unused_columns = False
                trainer = DistillTrainer(model=model, args=targs, train_dataset=Dataset.from_list(lists),
                                         data_collator=TeacherCollator(model))  # fmt: skip
                trainer.teacher_temperature = args.teacher_temperature
                trainer.train()
            else:
                trainer = train_query_likelihood(model, lists, targs, [])
            if not args.query_side:
                losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
        seconds = round(time.time() - started)
        after = dev_point(model, args.steps)
        first, last = losses[:5], losses[-5:]  # the loss on the first and the last five steps
        row |= {"steps": args.steps, "loss_first": sum(first) / len(first), "loss_last": sum(last) / len(last),
                "train_seconds": seconds, "dev_reranker": after["reranker"], "dev_fused": after["fused"],
                "dev_weight": after["weight"], "orders_changed": after["orders_changed"],
                "mean_shift": after["mean_shift"], "dev_reranker_untrained": start["reranker"],
                "dev_fused_untrained": start["fused"]}  # fmt: skip
        print(json.dumps(row), flush=True)
        if args.out:
            with args.out.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(row) + "\n")
        del model


if __name__ == "__main__":
    main()
