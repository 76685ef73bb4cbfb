"""The GPL round's training data: queries, negatives mined by the tuned embedder, the teacher's margins.

GPL (Wang et al. 2022) labels (query, positive, negative) triples with a reranker (the paper's cross-encoder; here
either kind, :class:`ragtune.pipeline.retrieval.Reranker`) and trains the
bi-encoder to reproduce the score margin ``score(q, pos) - score(q, neg)`` (MarginMSE). The steps here:

- :func:`gpl_queries`: the train-split queries outside stage 1's dev slice (each with its positive chunks),
  plus inverse-cloze pseudo-queries from chunks of documents no eval or dev query cites. No eval query and no
  dev query ever becomes a training query.
- :func:`mine_negatives`: one batched exact search with the tuned embedder over its cached corpus embeddings (or
  the hybrid teacher's ranking, ``gpl.negatives_from: teacher``);
  each query's negatives are a seeded random draw from its top ``k`` with its labelled relevant chunks left out
  (GPL draws from the retrievers' top 50). A chunk the labels missed may still be drawn: the teacher's margin
  for it is then small or negative, which is GPL's answer to false negatives.
- :func:`label_triples`: the teacher scores every (query, positive) and (query, negative) pair in batches
  (one ``predict`` call) and each (positive, negative) pair of a query becomes a triple.
- :func:`margin_scale`: how much the margins are scaled for a cosine student.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping, Sequence
from typing import Any

from ragtune.pipeline.dev_slice import split_dev_queries
from ragtune.pipeline.pseudo_queries import held_out_documents, inverse_cloze_pairs
from ragtune.pipeline.retrieval import DenseRetriever, Reranker, reranker_scores
from ragtune.stages.gpl.hybrid_teacher import HybridTeacher

COSINE_MARGIN = 2.0  # the widest margin two cosine scores can have


def gpl_queries(
    queries: Sequence[Mapping[str, Any]],
    corpus: Sequence[Mapping[str, Any]],
    dev_fraction: float,
    pseudo_queries: int,
    seed: int,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int]:
    """The GPL round's training queries and stage 1's dev slice, selected exactly as stage 1 selects them.

    Args:
        queries: rows of data/queries.jsonl (``qid``, ``text``, ``positives``, ``relevance``, ``split``,
            ``doc_ids``, ``dev_rank``).
        corpus: chunk rows (``id``, ``doc_id``, ``text``).
        dev_fraction: ``embed.dev_fraction``, for the same dev slice as stage 1's
            (:func:`ragtune.pipeline.dev_slice.split_dev_queries`).
        pseudo_queries: the most inverse-cloze queries to add (``gpl.pseudo_queries``).
        seed: the run seed (the inverse-cloze draw).

    Returns:
        ``(rows, dev_queries, n_pseudo)``. Each row: ``qid``, ``query`` (text), ``positives`` (``(chunk id, passage
        text)`` pairs; an inverse-cloze passage is its chunk without the sentence) and ``relevant`` (chunk ids never
        drawn as its negatives). ``dev_queries`` are stage 1's dev rows, untouched.

    Example:
        >>> corpus = [{"id": "c1", "doc_id": "a", "text": "Heron fails over to the standby router in time. Ask ops."},
        ...           {"id": "c2", "doc_id": "b", "text": "The eval document is never a training query's source."}]
        >>> queries = [{"qid": "t", "text": "heron failover", "positives": ["c1"], "relevance": {"c1": 2},
        ...             "split": "train", "doc_ids": ["a"], "dev_rank": {"a": 0}},
        ...            {"qid": "e", "text": "eval only", "positives": ["c2"], "relevance": {"c2": 2},
        ...             "split": "eval", "doc_ids": ["b"]}]
        >>> rows, dev, n_pseudo = gpl_queries(queries, corpus, 0.0, 5, seed=0)
        >>> [(r["qid"], r["query"], [p for p, _ in r["positives"]]) for r in rows]
        [('t', 'heron failover', ['c1']), ('ict-c1-0', 'Heron fails over to the standby router in time.', ['c1'])]
        >>> dev, n_pseudo
        ([], 1)
    """
    chunks = {c["id"]: c for c in corpus}
    train = [q for q in queries if q["split"] == "train" and q["positives"]]
    train, dev = split_dev_queries(train, dev_fraction)
    rows = [
        {
            "qid": q["qid"],
            "query": q["text"],
            "positives": [(p, chunks[p]["text"]) for p in q["positives"]],
            "relevant": sorted({*q["positives"], *(c for c, g in q.get("relevance", {}).items() if g > 0)}),
        }
        for q in train
    ]
    # As stage 1: no chunk of a document that an eval or dev query cites becomes a pseudo-query.
    held_out = held_out_documents(queries, dev)
    pseudo = inverse_cloze_pairs(corpus, held_out, pseudo_queries, seed) if pseudo_queries else []
    rows += [
        {
            "qid": p["qid"],
            "query": p["anchor"],
            "positives": [(p["positive_id"], p["positive"])],
            "relevant": [p["positive_id"]],
        }
        for p in pseudo
    ]
    return rows, dev, len(pseudo)


def draw_negatives(ranked: Sequence[str], relevant: Collection[str], count: int, rng: random.Random) -> list[str]:
    """``count`` chunk ids drawn at random from ``ranked`` less ``relevant``, kept in rank order.

    Example:
        >>> draw_negatives(["p", "a", "b", "c"], {"p"}, 2, random.Random(0))
        ['b', 'c']
        >>> draw_negatives(["p", "a"], {"p"}, 4, random.Random(0))   # fewer candidates than asked: all of them
        ['a']
    """
    candidates = [c for c in ranked if c not in relevant]
    picked = set(rng.sample(candidates, min(count, len(candidates))))
    return [c for c in candidates if c in picked]


def mine_negatives(
    retriever: DenseRetriever | HybridTeacher,
    rows: Sequence[Mapping[str, Any]],
    count: int,
    top_k: int,
    seed: int,
) -> list[list[str]]:
    """Each row's negatives: a seeded draw of ``count`` from the retriever's top ``top_k``, relevant chunks left out.

    One batched search for all rows (``search``: the tuned embedder's exact top k, or the hybrid teacher's ranking
    with ``gpl.negatives_from: teacher``); it is deep enough that the ``top_k`` candidates remain after the
    relevant chunks are removed.

    Returns:
        Per row, chunk ids (the retriever's order).
    """
    if not rows:
        return []
    depth = top_k + max(len(r["relevant"]) for r in rows)
    _, ranked = retriever.search([r["query"] for r in rows], k=depth)
    rng = random.Random(seed)
    out = []
    for row, ids in zip(rows, ranked, strict=True):
        relevant = set(row["relevant"])
        out.append(draw_negatives([c for c in ids if c not in relevant][:top_k], relevant, count, rng))
    return out


def label_triples(
    teacher: Reranker,
    rows: Sequence[Mapping[str, Any]],
    negatives: Sequence[Sequence[str]],
    chunks: Mapping[str, Mapping[str, Any]],
    batch_size: int,
) -> list[dict[str, Any]]:
    """The teacher's (query, positive, negative) triples with their margins ``score(q, pos) - score(q, neg)``.

    Every (query, positive) and (query, negative) pair is scored once, all in one batched
    ``predict`` call (:func:`ragtune.pipeline.retrieval.reranker_scores`), with a progress bar.

    Args:
        teacher: a loaded reranker, either kind (:class:`ragtune.pipeline.retrieval.Reranker`).
        rows: :func:`gpl_queries` rows.
        negatives: per row, negative chunk ids (:func:`mine_negatives`).
        chunks: chunk id -> chunk row (``text``).
        batch_size: pairs per predict batch (``gpl.teacher_batch_size``).

    Returns:
        One dict per (row, positive, negative): ``qid``, ``query``, ``positive_id``, ``positive``, ``negative_id``,
        ``negative``, ``score_positive``, ``score_negative``, ``margin``. Rows without negatives give none.
    """
    kept = [(r, n) for r, n in zip(rows, negatives, strict=True) if n]
    candidates = [[{"text": t} for _, t in r["positives"]] + [chunks[c] for c in n] for r, n in kept]
    scores = reranker_scores(teacher, [r["query"] for r, _ in kept], candidates, batch_size, True)
    triples = []
    for (row, negs), row_scores in zip(kept, scores, strict=True):
        positive_scores, negative_scores = row_scores[: len(row["positives"])], row_scores[len(row["positives"]) :]
        for (pid, ptext), sp in zip(row["positives"], positive_scores, strict=True):
            for nid, sn in zip(negs, negative_scores, strict=True):
                triples.append(
                    {
                        "qid": row["qid"],
                        "query": row["query"],
                        "positive_id": pid,
                        "positive": ptext,
                        "negative_id": nid,
                        "negative": chunks[nid]["text"],
                        "score_positive": sp,
                        "score_negative": sn,
                        "margin": sp - sn,
                    }
                )
    return triples


def margin_scale(margins: Sequence[float], setting: float | str) -> float:
    """The factor the teacher's margins are multiplied by (``gpl.label_scale``).

    ``auto`` maps the largest ``|margin|`` to 2, the widest margin of the student's cosine scores, keeping sign and
    zero (a pair the teacher cannot tell apart stays at margin 0); a number is used as is.

    Example:
        >>> margin_scale([4.0, -1.0, 8.0], "auto"), margin_scale([4.0], 1.0), margin_scale([0.0], "auto")
        (0.25, 1.0, 1.0)
    """
    if setting != "auto":
        return float(setting)
    widest = max((abs(m) for m in margins), default=0.0)
    return COSINE_MARGIN / widest if widest > 0 else 1.0
