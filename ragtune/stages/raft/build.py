"""RAFT build step: train-split questions -> oracle + hard distractors + verified teacher answers.

Run it (``ragtune raft`` runs this step, then training):
    ragtune raft configs/demo.yaml
    accelerate launch -m ragtune.stages.raft.build --config configs/demo.yaml [raft.oracle_fraction=0.8]

Reads the data stage's corpus and queries, the tuned embedder (embed/model) and the tuned reranker
(rerank/model) through the manifest. Writes raft/train.jsonl (prompt/completion chat samples),
raft/report.json (counts of everything kept, repaired, replaced and dropped) and raft/cache/ (LLM
teacher calls); its manifest entry is ``raft_build``.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ragtune.pipeline.answer_metrics import best_span
from ragtune.pipeline.components import load_reranker
from ragtune.pipeline.config import AssembleConfig, RagtuneConfig
from ragtune.pipeline.dev_slice import dev_documents, split_dev_queries
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.extractive import ExtractiveAnswerer
from ragtune.pipeline.llm import make_backend
from ragtune.pipeline.pseudo_queries import held_out_documents, inverse_cloze_queries
from ragtune.pipeline.raft_format import build_messages, format_answer, parse_answer, quote_then_answer
from ragtune.pipeline.retrieval import DenseRetriever, Reranker, load_fusion_weight, rerank
from ragtune.pipeline.rundir import (
    EMBEDDING_CACHE,
    RAFT_DEV_DATA,
    RAFT_REPORT,
    RAFT_TEACHER_CACHE,
    RAFT_TRAIN_DATA,
    SCORE_CACHE,
    RunDir,
    atomic_write_jsonl,
    atomic_write_text,
    is_main_process,
    read_jsonl,
)
from ragtune.stages.raft.qa_pairs import write_qa_pairs
from ragtune.stages.raft.teacher import (
    MALFORMED,
    REPAIRED,
    REPLACED,
    VALID,
    build_teacher_messages,
    extractive_answers,
    no_oracle_target,
    verify_and_repair,
)

logger = logging.getLogger(__name__)
FALLBACK_SAMPLES = 40  # inverse-cloze questions built when no train question exists and raft.max_samples is null
STAGE = "raft_build"


@dataclass
class RaftContext:
    """One RAFT sample before its target: the question and the chunks its prompt shows, in order."""

    qid: str
    question: str
    reference: str | None
    oracle_ids: list[str]  # the labelled chunks chosen as oracle (present in chunk_ids only if has_oracle)
    chunk_ids: list[str]  # what the prompt shows, shuffled
    has_oracle: bool
    random_distractors: int = 0  # distractors drawn at random because too few hard ones existed


def choose_contexts(
    questions: Sequence[dict],
    ranked_ids: Sequence[Sequence[str]],
    corpus_ids: Sequence[str],
    *,
    top_n: int,
    oracle_fraction: float,
    seed: int,
) -> list[RaftContext]:
    """Pick each sample's oracle and distractors and decide which samples keep the oracle.

    Exactly ``round(oracle_fraction * len(questions))`` samples (a seeded random choice) include the
    oracle. The oracle is the question's labelled positives, best-ranked first, at most ``top_n - 1``
    of them (at least one) so that a sample always has a distractor when ``top_n > 1``. Distractors are
    the best-ranked chunks with no relevance at all for the question; only when too few exist are
    the remaining slots filled with random irrelevant chunks. Chunk order is shuffled.

    Args:
        questions: query rows (``qid``, ``text``, ``positives``, ``relevance``, optional ``answer``).
        ranked_ids: per question, candidate chunk ids ranked best first (the reranked retrieval pool;
            positives missing from it are placed after it).
        corpus_ids: every chunk id, for the random fallback.
        top_n: chunks per sample (``assemble.top_n``, what the generator sees when serving).
        oracle_fraction: the share P of samples that include the oracle.
        seed: seeds the oracle choice, the fallback draws and the shuffles.

    Returns:
        One :class:`RaftContext` per question, in input order.

    Example:
        >>> q = {"qid": "a", "text": "grace period?", "positives": ["c1"], "relevance": {"c1": 2, "c2": 1}}
        >>> ctx = choose_contexts([q], [["c2", "c1", "c3"]], ["c1", "c2", "c3", "c4"], top_n=2,
        ...                       oracle_fraction=1.0, seed=0)[0]
        >>> sorted(ctx.chunk_ids), ctx.has_oracle
        (['c1', 'c3'], True)
    """
    rng = random.Random(seed)
    with_oracle = set(rng.sample(range(len(questions)), round(oracle_fraction * len(questions))))
    contexts = []
    for i, (q, ranked) in enumerate(zip(questions, ranked_ids, strict=True)):
        relevant = {c for c, grade in q.get("relevance", {}).items() if grade > 0} | set(q["positives"])
        positives = set(q["positives"])
        ordered_positives = [c for c in ranked if c in positives] + [c for c in q["positives"] if c not in ranked]
        oracle = ordered_positives[: max(1, top_n - 1)]
        has_oracle = i in with_oracle
        needed = top_n - len(oracle) if has_oracle else top_n
        hard = [c for c in ranked if c not in relevant][:needed]
        taken = set(hard)
        pool = [c for c in corpus_ids if c not in relevant and c not in taken]
        fallback = rng.sample(pool, min(needed - len(hard), len(pool)))
        chunk_ids = (oracle if has_oracle else []) + hard + fallback
        rng.shuffle(chunk_ids)
        contexts.append(
            RaftContext(
                qid=q["qid"],
                question=q["text"],
                reference=q.get("answer"),
                oracle_ids=oracle,
                chunk_ids=chunk_ids,
                has_oracle=has_oracle,
                random_distractors=len(fallback),
            )
        )
    return contexts


def quote_then_span(target: str) -> str:
    """A target as :func:`~ragtune.pipeline.raft_format.quote_then_answer` writes it, whose final answer is the span
    of its quotes that best matches the answer (:func:`~ragtune.pipeline.answer_metrics.best_span`): an answer the
    generator copies from its own quote. A target whose quotes share no word with its answer (or that has no quotes:
    an abstention) keeps its answer.

    Example:
        >>> quote_then_span("##Reason: See ##begin_quote##The grace period is 40 min in total.##end_quote##\\n"
        ...                 "##Answer: Forty: 40 min")
        '##Reason: ##begin_quote##The grace period is 40 min in total.##end_quote##\\n##Answer: 40 min'
    """
    parsed = parse_answer(target)
    spans = [best_span(quote, parsed.answer) for quote in parsed.quotes]
    span, f1 = max(spans, key=lambda s: s[1], default=("", 0.0))
    return format_answer("", parsed.quotes, span if f1 > 0 else parsed.answer)


# raft.target: how a verified teacher answer becomes the student's target.
TARGET_FORMS = {"reasoning": lambda target: target, "quote_answer": quote_then_answer, "quote_span": quote_then_span}


def build_targets(
    contexts: Sequence[RaftContext],
    teacher_completions: dict[str, str | None],
    texts: dict[str, str],
    no_oracle_mode: str,
    form: str = "reasoning",
) -> tuple[list[tuple[RaftContext, str]], dict[str, int]]:
    """Turn teacher answers into verified student targets.

    Args:
        contexts: the samples.
        teacher_completions: qid -> the teacher's answer given the oracle (None: the call failed).
        texts: chunk id -> text.
        no_oracle_mode: ``abstain`` or ``memory`` (``raft.no_oracle_target``).
        form: ``reasoning`` (the teacher's reasoning kept), ``quote_answer`` (the verified quotes alone, then
            the answer: :func:`ragtune.pipeline.raft_format.quote_then_answer`) or ``quote_span`` (the quotes, then
            the span of them closest to the answer: :func:`quote_then_span`), ``raft.target``.

    Returns:
        ``(kept, counts)``: the (context, target) pairs kept, and counts of ``valid``, ``repaired``,
        ``replaced``, ``malformed`` and ``failed`` teacher answers for oracle samples, plus
        ``no_oracle_kept`` / ``no_oracle_dropped``.

    Example:
        >>> ctx = RaftContext("a", "grace period?", "40 minutes", ["c1"], ["c1", "c2"], has_oracle=True)
        >>> answer = "##Reason: ##begin_quote##It is 40 minutes.##end_quote## ##Answer: 40 minutes"
        >>> kept, counts = build_targets([ctx], {"a": answer}, {"c1": "It is 40 minutes.", "c2": "x"}, "abstain")
        >>> counts["valid"], len(kept)
        (1, 1)
    """
    counts = Counter({k: 0 for k in (VALID, REPAIRED, REPLACED, MALFORMED, "failed")})
    counts.update({"no_oracle_kept": 0, "no_oracle_dropped": 0})
    kept = []
    for ctx in contexts:
        completion = teacher_completions.get(ctx.qid)
        if ctx.has_oracle:
            if completion is None:
                counts["failed"] += 1
                continue
            target, status = verify_and_repair(completion, [texts[c] for c in ctx.oracle_ids])
            counts[status] += 1
        else:
            target = no_oracle_target(completion, no_oracle_mode)
            counts["no_oracle_kept" if target else "no_oracle_dropped"] += 1
        if target is not None:
            kept.append((ctx, TARGET_FORMS[form](target)))
    return kept, dict(counts)


# Exactly the settings that change the built data (not the training ones).
CONFIG_SECTIONS = (
    "raft.oracle_fraction",
    "raft.no_oracle_target",
    "raft.target",
    "raft.distractor_pool",
    "raft.quote_sentences",
    "raft.max_samples",
    "raft.synthetic_qa",
    "raft.qa_writer",
    "raft.dev_fraction",
    "raft.teacher",
    "assemble.top_k",
    "assemble.top_n",
)
NOT_CHANGING_THE_DATA = (
    "raft.teacher.dry_run",
    "raft.teacher.concurrency",
    "raft.qa_writer.dry_run",
    "raft.qa_writer.concurrency",
)


def served_prompts(
    retriever: DenseRetriever,
    reranker: Reranker,
    fusion_weight: float,
    questions: Sequence[dict],
    texts: dict[str, str],
    assemble: AssembleConfig,
) -> list[dict]:
    """Prompts for ``questions`` over the context serving would give them: top_k retrieved, reranked, top_n.

    Returns:
        Rows ``{"qid", "prompt": chat messages of build_messages, "answer": the reference, "chunk_ids",
        "extractive"}``; ``extractive`` is the extractive answerer's answer over the same context with the
        retriever's embedder (:mod:`ragtune.pipeline.extractive`), the third candidate of the generator gate.
    """
    if not questions:
        return []
    question_texts = [q["text"] for q in questions]
    vectors = retriever.encode_queries(question_texts)
    scores, ids = retriever.search(vectors, k=assemble.top_k)
    candidates = [[{"id": c, "text": texts[c]} for c in row] for row in ids]
    reranked = rerank(reranker, question_texts, candidates, scores, fusion_weight)
    served = [[chunk["id"] for chunk, _ in row][: assemble.top_n] for row in reranked]
    contexts = [[texts[c] for c in chunk_ids] for chunk_ids in served]
    extractive = ExtractiveAnswerer(retriever.model).answer(question_texts, contexts)
    return [
        {
            "qid": q["qid"],
            "prompt": build_messages(q["text"], context),
            "answer": q["answer"],
            "chunk_ids": chunk_ids,
            "extractive": answer,
        }
        for q, chunk_ids, context, answer in zip(questions, served, contexts, extractive, strict=True)
    ]


def select_questions(
    cfg: RagtuneConfig, corpus: list[dict], queries: list[dict], source: object
) -> tuple[list[dict], list[dict]]:
    """The questions to build samples from, and the dev questions (with a reference answer) kept out of them.

    Never an eval-split question: the generator must not see what eval asks. The dev slice's questions are kept out
    of the samples too: after training they measure the tuned generator against the base one. Without a train-split
    question, inverse-cloze questions of documents no held-out query cites.

    Raises:
        ValueError: no train-split question and no sentence to ask (``source`` names the queries file).
    """
    train, dev = split_dev_queries(
        [q for q in queries if q["split"] == "train" and q["positives"]], cfg.raft.dev_fraction
    )
    dev = [q for q in dev if q.get("answer")]
    if cfg.raft.max_samples and len(train) > cfg.raft.max_samples:
        keep = set(random.Random(cfg.run.seed).sample(range(len(train)), cfg.raft.max_samples))
        train = [q for i, q in enumerate(train) if i in keep]
    if not train:  # what exists: inverse-cloze questions of documents no held-out query cites
        doc_of = {c["id"]: c["doc_id"] for c in corpus}
        held_out = {doc_of[c] for q in queries if q["split"] != "train" for c in q["positives"]}
        train = inverse_cloze_queries(corpus, held_out, cfg.raft.max_samples or FALLBACK_SAMPLES, cfg.run.seed)
        logger.warning("raft: no train-split question; building on %d inverse-cloze questions", len(train))
    if not train:
        raise ValueError(f"raft: {source} has no train-split question and the corpus no sentence to ask")
    return train, dev


def synthetic_pairs(
    cfg: RagtuneConfig, run: RunDir, corpus: list[dict], queries: list[dict]
) -> tuple[list[dict], dict | None]:
    """``raft.synthetic_qa``'s checked question-answer pairs (:mod:`ragtune.stages.raft.qa_pairs`) over chunks of
    documents that no eval question cites and that are outside RAFT's dev documents; ``([], None)`` when it is 0."""
    if not cfg.raft.synthetic_qa:
        return [], None
    ranks = {d: r for q in queries if q["split"] == "train" for d, r in q.get("dev_rank", {}).items()}
    excluded = held_out_documents(queries, []) | dev_documents(ranks, cfg.raft.dev_fraction)
    rows, report = write_qa_pairs(
        cfg.raft.qa_writer, corpus, excluded, cfg.raft.synthetic_qa, cfg.run.seed, run.path(RAFT_TEACHER_CACHE)
    )
    logger.info("raft: %d of %d chunks gave a checked question-answer pair (%s)", len(rows), report["chunks"], report)
    return rows, report


@dataclass
class Pools:
    """Each question's pool ranked as serving ranks it, the dev questions' prompts over the served context, and the
    tuned reranker (the extractive teacher quotes with it)."""

    ranked: list[list[str]]
    dev_rows: list[dict]
    reranker: Reranker


def rank_pools(
    cfg: RagtuneConfig, run: RunDir, corpus: list[dict], train: list[dict], dev: list[dict], texts: dict[str, str]
) -> Pools:
    """Retrieve a pool with the tuned embedder and rerank it with the tuned reranker (one batched call), fused with
    the retriever's scores at the recorded weight, as serving orders it; the labelled positives join the pool so
    the reranker also orders them (the best one becomes the oracle)."""
    embedder = run.require("embed", "model")["model"]
    reranker_path = run.require("rerank", "model")["model"]
    retriever = DenseRetriever.load(
        str(embedder), corpus, cache_dir=run.path(EMBEDDING_CACHE), score_block_mb=cfg.run.score_block_mb
    )
    question_texts = [q["text"] for q in train]
    question_vectors = retriever.encode_queries(question_texts)  # encoded once: pool search and pool scores
    _, pool_ids = retriever.search(question_vectors, k=cfg.raft.distractor_pool)
    candidates = [
        [{"id": c, "text": texts[c]} for c in dict.fromkeys([*pool, *q["positives"]])]
        for q, pool in zip(train, pool_ids, strict=True)
    ]
    first_scores = retriever.similarities(question_vectors, [[c["id"] for c in row] for row in candidates])
    reranker = load_reranker(
        str(reranker_path),
        cfg.rerank.cross_encoder.max_length,
        cfg.run.seed,
        run.path(SCORE_CACHE),
        cfg.rerank.query_likelihood.prefix_cache_mb,
    )
    weight = load_fusion_weight(reranker_path)
    reranked = rerank(reranker, question_texts, candidates, first_scores, weight)
    ranked = [[chunk["id"] for chunk, _ in row] for row in reranked]
    return Pools(ranked, served_prompts(retriever, reranker, weight, dev, texts, cfg.assemble), reranker)


@dataclass
class TeacherAnswers:
    """The contexts the teacher was asked about (abstention targets need no answer), its answers and its backend
    (usage, for the report)."""

    asked: list[RaftContext]
    answers: list[str]
    backend: Any


def ask_teacher(
    cfg: RagtuneConfig, run: RunDir, contexts: list[RaftContext], texts: dict[str, str], reranker: Reranker
) -> TeacherAnswers:
    """The teacher's answer for each context that needs one, through ``raft.teacher``'s backend (the extractive
    teacher quotes the oracle sentences the reranker likes best)."""
    asking = [c for c in contexts if c.has_oracle or cfg.raft.no_oracle_target == "memory"]
    requests = [build_teacher_messages(c.question, [texts[i] for i in c.oracle_ids], c.reference) for c in asking]
    extractor = None
    if cfg.raft.teacher.provider == "extractive":
        answers = extractive_answers(
            reranker,
            [c.question for c in asking],
            [[texts[i] for i in c.oracle_ids] for c in asking],
            [c.reference for c in asking],
            cfg.raft.quote_sentences,
        )
        by_prompt = {r[-1]["content"]: a for r, a in zip(requests, answers, strict=True)}

        def extractor(messages: list[dict[str, str]]) -> str:
            return by_prompt[messages[-1]["content"]]

    backend = make_backend(cfg.raft.teacher, run.path(RAFT_TEACHER_CACHE), extractor=extractor)
    return TeacherAnswers(asking, backend.generate(requests, desc="RAFT teacher answers"), backend)


def sample_rows(kept: Sequence[tuple[RaftContext, str]], texts: dict[str, str]) -> list[dict]:
    """The training samples: the RAFT prompt over each context, the verified target as the completion."""
    return [
        {
            "prompt": build_messages(ctx.question, [texts[c] for c in ctx.chunk_ids]),
            "completion": [{"role": "assistant", "content": target}],
            "qid": ctx.qid,
            "has_oracle": ctx.has_oracle,
            "oracle_ids": ctx.oracle_ids,
            "chunk_ids": ctx.chunk_ids,
        }
        for ctx, target in kept
    ]


def build_report(
    cfg: RagtuneConfig,
    train: list[dict],
    queries: list[dict],
    rows: list[dict],
    pools: Pools,
    contexts: list[RaftContext],
    teacher_counts: dict[str, int],
    teacher: TeacherAnswers,
    qa_report: dict | None = None,
) -> dict:
    """``raft/report.json``: where the samples come from, the oracle share, the distractors, the teacher."""
    with_oracle = sum(r["has_oracle"] for r in rows)
    origin_of = {q["qid"]: q.get("origin", "human") for q in train}
    return {
        "train_questions": len(train),
        # where the samples' questions come from: human (labelled), synthetic (the data stage's generator),
        # synthetic_qa (raft.synthetic_qa's checked pairs) or inverse_cloze (the fallback)
        "sources": dict(Counter(origin_of[r["qid"]] for r in rows)),
        "synthetic_qa": qa_report,
        "eval_questions_excluded": sum(q["split"] != "train" for q in queries),
        "samples": len(rows),
        "dev_questions": len(pools.dev_rows),
        "with_oracle": with_oracle,
        "without_oracle": len(rows) - with_oracle,
        "oracle_share": round(with_oracle / len(rows), 4),
        "no_oracle_target": cfg.raft.no_oracle_target,
        "chunks_per_sample": cfg.assemble.top_n,
        "distractors": {
            "random_fallback_samples": sum(c.random_distractors > 0 for c in contexts),
            "random_fallback_chunks": sum(c.random_distractors for c in contexts),
            "short_context_samples": sum(len(c.chunk_ids) < cfg.assemble.top_n for c in contexts),
        },
        "teacher": {"provider": cfg.raft.teacher.provider, **teacher_counts, "usage": teacher.backend.usage.as_dict()},
    }


def stage_metrics(report: dict, teacher_counts: dict[str, int]) -> dict:
    """The manifest's metrics: sample counts, by origin, the teacher's verdicts, the random distractors."""
    metrics = {k: report[k] for k in ("samples", "with_oracle", "without_oracle")}
    metrics |= {f"samples_{origin}": n for origin, n in report["sources"].items()}
    metrics.update({f"teacher_{k}": v for k, v in teacher_counts.items()})
    metrics["random_fallback_chunks"] = report["distractors"]["random_fallback_chunks"]
    return metrics


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict:
    """Build raft/train.jsonl from the train split; skipped when finished and fresh unless ``force``.

    Runs on the main process only: building is LLM calls and batched scoring, nothing to shard, and a
    second rank would call (and bill) the teacher again. Other ranks of an ``accelerate launch`` exit.
    """
    if not is_main_process():
        logger.info("raft build: runs on the main process only; this rank has nothing to do")
        return {}
    # 1. Inputs, through the manifest (refused with the stage to run when missing or stale).
    data = run.require("data", "corpus", "queries")
    run.require("embed", "model")
    run.require("rerank", "model")
    config_hash, inputs = run.freshness(
        cfg,
        CONFIG_SECTIONS,
        {"data": ("corpus", "queries"), "embed": ("model",), "rerank": ("model",)},
        exclude=NOT_CHANGING_THE_DATA,
    )
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("raft build: finished and fresh, skipping (--force reruns it)")
        return run.load_manifest()[STAGE].metrics
    started = time.time()
    corpus = read_jsonl(data["corpus"])
    queries = read_jsonl(data["queries"])
    texts = {c["id"]: c["text"] for c in corpus}
    train, dev = select_questions(cfg, corpus, queries, data["queries"])
    # Beside the train questions: raft.synthetic_qa's question-answer pairs, each answer a span of its chunk.
    qa_rows, qa_report = synthetic_pairs(cfg, run, corpus, queries)
    train += qa_rows

    # 2. Retrieve a pool with the tuned embedder, rerank it with the tuned reranker (one batched call).
    pools = rank_pools(cfg, run, corpus, train, dev, texts)

    # 3. Oracle, distractors, P share, shuffled order.
    contexts = choose_contexts(
        train,
        pools.ranked,
        [c["id"] for c in corpus],
        top_n=cfg.assemble.top_n,
        oracle_fraction=cfg.raft.oracle_fraction,
        seed=cfg.run.seed,
    )

    # 4. Teacher answers, one per question that needs one (abstention targets need none).
    teacher = ask_teacher(cfg, run, contexts, texts, pools.reranker)
    if cfg.raft.teacher.dry_run:
        return {"dry_run": True, "teacher_requests": len(teacher.asked)}

    # 5. Verify every quote against the oracle; repair, replace or drop.
    answers = {c.qid: a for c, a in zip(teacher.asked, teacher.answers, strict=True)}
    kept, teacher_counts = build_targets(contexts, answers, texts, cfg.raft.no_oracle_target, cfg.raft.target)
    if not kept:
        raise ValueError(f"raft: every sample was dropped (teacher answers: {teacher_counts}); see raft/report.json")
    rows = sample_rows(kept, texts)

    # 6. Write the samples and the report, then the manifest entry.
    report = build_report(cfg, train, queries, rows, pools, contexts, teacher_counts, teacher, qa_report)
    atomic_write_jsonl(run.path(RAFT_TRAIN_DATA), rows)
    atomic_write_jsonl(run.path(RAFT_DEV_DATA), pools.dev_rows)
    atomic_write_text(run.path(RAFT_REPORT), json.dumps(report, indent=2))
    metrics = stage_metrics(report, teacher_counts)
    run.record(
        STAGE,
        config_hash=config_hash,
        inputs=inputs,
        started=started,
        metrics=metrics,
        outputs={"train_data": RAFT_TRAIN_DATA, "dev_data": RAFT_DEV_DATA, "report": RAFT_REPORT},
    )
    logger.info("raft build: %d samples (%d with oracle), teacher %s", len(rows), report["with_oracle"], teacher_counts)
    return metrics


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune RAFT build step: oracle + hard distractors + verified teacher answers")
