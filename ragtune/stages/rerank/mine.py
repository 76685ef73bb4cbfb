"""Hard-negative mining with the tuned embedder (stage 2, first half).

Run it on its own to read the negatives before training:
    python -m ragtune.stages.rerank.mine --config configs/demo.yaml
`ragtune rerank configs/demo.yaml` (ragtune.stages.rerank.train) runs it before training the reranker.

Reads data/corpus.jsonl, the train split of data/queries.jsonl and embed/model through the manifest
(never the base embedder); writes rerank/negatives/: negatives.jsonl (the mined dataset), report.json
(counts kept and dropped per rule), scores.png (positive vs negative scores) and audit.md (triples for
a person to read). It records no manifest entry of its own: the rerank stage's entry covers these files.

Why the library is called the way it is: sentence-transformers' ``mine_hard_negatives`` encodes, searches
the whole corpus (exact, or faiss), removes the given positives and caches embeddings, so it does the
retrieval. It cannot know our labels beyond the positives, nor chunk spans, and it reports what its
margin filters drop only as printed text, after which its ``top`` sampling would spend the negative
budget on candidates our rules then drop. So it returns the whole ``range_min..range_max`` window with
scores, and :mod:`ragtune.stages.rerank.negatives` applies every rule (with counts) and then samples. Its
embedding cache is keyed by the model's *name* (``model_card_data.base_model``, ``None`` for both the
bundled MiniLM and a tuned copy of it), so the cache folder is keyed by the model's content hash:
a retrained embedder never reuses stale vectors, and a rerun never re-encodes. The corpus vectors themselves
are the run's shared ones (``cache/embeddings``, written by stage 1 for the tuned embedder):
:func:`seed_library_cache` hands them to the library's cache before the call, so mining encodes only queries.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import statistics
import time
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ragtune.pipeline.config import MiningConfig, RagtuneConfig
from ragtune.pipeline.dev_slice import DEV_MIN_QUERIES, split_dev_queries, written_by_the_scorer
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.pseudo_queries import inverse_cloze_queries
from ragtune.pipeline.retrieval import DenseRetriever, model_hash
from ragtune.pipeline.rundir import (
    EMBEDDING_CACHE,
    RERANK_NEGATIVES,
    RunDir,
    atomic_file,
    atomic_save_figure,
    atomic_write_jsonl,
    atomic_write_text,
    is_main_process,
    read_jsonl,
)
from ragtune.stages.rerank.negatives import RULES, choose_negatives, draw_random_negatives, filter_candidates

logger = logging.getLogger(__name__)
STAGE = "rerank"
# Above this many chunks the exact (queries x corpus) score matrix gets large: search with faiss instead.
FAISS_MIN_CORPUS = 50_000


def group_train_queries(queries: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Train-split queries, merged by exact text (the embedder sees one query per text).

    Args:
        queries: rows of data/queries.jsonl (``qid``, ``text``, ``positives``, ``relevance``, ``split``).

    Returns:
        One row per distinct train text: ``qids``, ``text``, ``positives`` (top-graded chunk ids, in
        order) and ``relevance`` (the highest grade each chunk got). Eval queries never appear.

    Example:
        >>> rows = [{"qid": "a", "text": "q", "positives": ["c1"], "relevance": {"c1": 2}, "split": "train"},
        ...         {"qid": "b", "text": "q", "positives": ["c2"], "relevance": {"c2": 2}, "split": "train"},
        ...         {"qid": "e", "text": "x", "positives": ["c3"], "relevance": {"c3": 2}, "split": "eval"}]
        >>> [(g["qids"], g["positives"]) for g in group_train_queries(rows)]
        [(['a', 'b'], ['c1', 'c2'])]
    """
    groups: dict[str, dict[str, Any]] = {}
    for q in queries:
        if q["split"] != "train":
            continue
        g = groups.setdefault(q["text"], {"qids": [], "text": q["text"], "positives": [], "relevance": {}})
        g["qids"].append(q["qid"])
        g["positives"] += [p for p in q["positives"] if p not in g["positives"]]
        for cid, grade in q["relevance"].items():
            g["relevance"][cid] = max(grade, g["relevance"].get(cid, 0))
    return list(groups.values())


def seed_library_cache(
    folder: Path, model: Any, embedder_path: str | Path, corpus: Sequence[Mapping[str, Any]], shared_cache: Path
) -> Path:
    """Write the run's shared corpus embeddings as sentence-transformers' ``mine_hard_negatives`` cache file.

    The library de-duplicates the corpus texts (first occurrence kept) and names its cache file by a hash of
    ``(model_card_data.base_model, corpus prompt, corpus prompt name, texts)``; this writes the shared vectors
    (``shared_cache``; encoded here once and stored there if missing) under that name, so the library reads
    instead of re-encoding. Should the library change its naming, it encodes again (a test counts encodes).

    Returns:
        The library's cache file.
    """
    import numpy as np

    embeddings = DenseRetriever.cached(model, str(embedder_path), corpus, shared_cache).embeddings
    first: dict[str, int] = {}
    for i, row in enumerate(corpus):
        first.setdefault(row["text"], i)
    key = repr((model.model_card_data.base_model or "", None, None, list(first))).encode()
    target = folder / f"corpus_embeddings_{hashlib.sha256(key, usedforsecurity=False).hexdigest()}.npy"
    if not target.exists() and is_main_process():
        with atomic_file(target) as tmp, tmp.open("wb") as fh:  # a file handle: np.save would add ".npy" to a name
            np.save(fh, embeddings[list(first.values())].numpy())
    return target


def mine_hard_negatives(
    corpus: Sequence[Mapping[str, Any]],
    queries: Sequence[Mapping[str, Any]],
    embedder_path: str | Path,
    mining: MiningConfig,
    cache_dir: Path | None = None,
    seed: int = 42,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mine hard negatives for every train query over the whole corpus, with false-negative control.

    The embedder retrieves each query's candidates ranked ``range_min..range_max`` (sentence-transformers'
    ``mine_hard_negatives``: exact search, or faiss when ``use_faiss`` or the corpus is large); candidates
    labelled relevant, overlapping a labelled chunk's span, above ``max_score`` or within
    ``relative_margin`` of the positive are dropped (:mod:`ragtune.stages.rerank.negatives`), and
    ``num_negatives`` of the rest are chosen by ``sampling_strategy``.

    Args:
        corpus: chunk rows (``id``, ``doc_id``, ``text``, ``start``, ``end``).
        queries: query rows; only the train split is mined.
        embedder_path: the tuned sentence-transformers folder.
        mining: the ``rerank.mining`` config section.
        cache_dir: where corpus and query embeddings are cached (by model hash, then by content);
            ``None`` for no cache.
        seed: seed of the ``random`` sampling strategy.

    Returns:
        ``(rows, report)``. One row per mined query text: ``qids``, ``query``, ``positives``,
        ``relevance``, ``positive_score`` (lowest positive similarity), ``negatives`` (chunk ids, best
        first), ``negative_scores`` and ``random_negatives`` (``mining.random_negatives`` easy ones drawn
        from the whole corpus, :func:`ragtune.stages.rerank.negatives.draw_random_negatives`). The report counts
        candidates, drops per rule, kept, selected and random negatives, and queries left without any.

    Example (over a finished embed stage, not run as a doctest):
        rows, report = mine_hard_negatives(corpus, queries, run.require("embed", "model")["model"], cfg.rerank.mining)
        report["dropped"]  # {'labelled_positive': ..., 'same_source_span': ..., 'max_score': ..., ...}
    """
    from datasets import Dataset
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.util import mine_hard_negatives as st_mine_hard_negatives

    groups = group_train_queries(queries)
    by_id = {c["id"]: c for c in corpus}
    by_text: dict[str, list[Mapping[str, Any]]] = {}
    for chunk in corpus:
        by_text.setdefault(chunk["text"], []).append(chunk)
    report: dict[str, Any] = {
        "train_queries": sum(q["split"] == "train" for q in queries),
        "eval_queries_not_mined": sum(q["split"] != "train" for q in queries),
        "query_texts": len(groups),
        "corpus_chunks": len(corpus),
    }
    if not groups:
        raise ValueError("rerank: no train-split query to mine negatives for (check the data stage's split)")

    use_faiss = mining.use_faiss if mining.use_faiss is not None else len(corpus) >= FAISS_MIN_CORPUS
    model = SentenceTransformer(str(embedder_path))
    library_cache = cache_dir / f"mine-{model_hash(str(embedder_path))}" if cache_dir else None
    if library_cache is not None:
        seed_library_cache(library_cache, model, embedder_path, corpus, cache_dir)
    pairs = Dataset.from_dict(
        {
            "query": [g["text"] for g in groups for _ in g["positives"]],
            "positive": [by_id[p]["text"] for g in groups for p in g["positives"]],
        }
    )
    window = mining.range_max - mining.range_min
    # Ask for the whole window, unfiltered: our rules (with counts) decide, then we sample.
    ranked = st_mine_hard_negatives(
        pairs,
        model,
        corpus=[c["text"] for c in corpus],
        range_min=mining.range_min,
        range_max=mining.range_max,
        num_negatives=window,
        sampling_strategy="top",
        output_format="labeled-list",
        output_scores=True,
        use_faiss=use_faiss,
        cache_folder=str(library_cache) if library_cache else None,
        verbose=is_main_process(),
    )
    retrieved: dict[str, dict[str, Any]] = {}
    for row in ranked:
        entry = retrieved.setdefault(row["query"], {"positive_scores": [], "candidates": row["positive"][1:]})
        entry["positive_scores"].append(row["scores"][0])
        entry.setdefault("candidate_scores", row["scores"][1:])

    rng = random.Random(seed)
    rows, dropped, candidates, kept_total = [], Counter(), 0, 0
    for g in groups:
        found = retrieved.get(g["text"])
        if found is None:
            continue
        labelled = [by_id[cid] for cid, grade in g["relevance"].items() if grade > 0 and cid in by_id]
        positive_score = min(found["positive_scores"])
        ranked_candidates = [
            (by_text[text], score) for text, score in zip(found["candidates"], found["candidate_scores"], strict=True)
        ]
        kept, dropped_here = filter_candidates(
            ranked_candidates, g["relevance"], labelled, positive_score, mining.max_score, mining.relative_margin
        )
        chosen = choose_negatives(kept, mining.num_negatives, mining.sampling_strategy, rng)
        easy = draw_random_negatives(
            corpus, g["relevance"], labelled, [c["id"] for c, _ in chosen], mining.random_negatives, rng
        )
        candidates += len(ranked_candidates)
        kept_total += len(kept)
        dropped += dropped_here
        rows.append(
            {
                "qids": g["qids"],
                "query": g["text"],
                "positives": g["positives"],
                "relevance": g["relevance"],
                "positive_score": positive_score,
                "negatives": [c["id"] for c, _ in chosen],
                "negative_scores": [s for _, s in chosen],
                "random_negatives": [c["id"] for c in easy],
            }
        )
    report |= {
        "use_faiss": use_faiss,
        "candidates": candidates,
        "dropped": {rule: dropped[rule] for rule in RULES},
        "kept": kept_total,
        "selected": sum(len(r["negatives"]) for r in rows),
        "random_negatives": sum(len(r["random_negatives"]) for r in rows),
        "queries_without_negatives": len(groups) - sum(bool(r["negatives"]) for r in rows),
        "settings": mining.model_dump(mode="json"),
        "scores": {
            "positive": _summary([r["positive_score"] for r in rows]),
            "negative": _summary([s for r in rows for s in r["negative_scores"]]),
        },
    }
    logger.info(
        "mining: %d candidates, dropped %s, kept %d, selected %d negatives for %d query texts",
        candidates,
        report["dropped"],
        kept_total,
        report["selected"],
        len(rows),
    )
    return rows, report


def _summary(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def plot_score_histogram(rows: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Overlaid histograms of positive and chosen negative similarities, saved as a PNG (atomically).

    Args:
        rows: mined rows from :func:`mine_hard_negatives`.
        path: where the PNG goes.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on training machines
    import matplotlib.pyplot as plt

    positives = [r["positive_score"] for r in rows]
    negatives = [s for r in rows for s in r["negative_scores"]]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(positives, bins=30, alpha=0.6, label=f"positive (n={len(positives)})", color="tab:green")
    ax.hist(negatives, bins=30, alpha=0.6, label=f"hard negative (n={len(negatives)})", color="tab:red")
    ax.set_xlabel("embedder similarity to the query")
    ax.set_ylabel("count")
    ax.set_title("Mined hard negatives vs positives")
    ax.legend()
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)


def _quote(text: str, limit: int = 700) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[:limit] + " …"


def format_audit(
    rows: Sequence[Mapping[str, Any]], corpus_by_id: Mapping[str, Mapping[str, Any]], samples: int, seed: int
) -> str:
    """A Markdown page of up to ``samples`` random (query, positive, negative) triples for a person to read.

    Args:
        rows: mined rows from :func:`mine_hard_negatives`.
        corpus_by_id: chunk id -> chunk row.
        samples: how many triples to draw.
        seed: seed of the draw.

    Returns:
        The Markdown text; each triple is a ``## n. query `qid` `` section naming the chunk ids and scores.
    """
    triples = [(r, i) for r in rows for i in range(len(r["negatives"]))]
    drawn = random.Random(seed).sample(triples, min(samples, len(triples)))
    lines = [
        f"# Hard-negative audit: {len(drawn)} of {len(triples)} mined triples",
        "",
        "For each triple, check that the negative does NOT answer the query. A negative that does is a false",
        "negative: raise `rerank.mining.relative_margin`, set `max_score`, or raise `range_min`.",
        "",
    ]
    for n, (row, i) in enumerate(drawn, 1):
        pos, neg = row["positives"][0], row["negatives"][i]
        lines += [
            f"## {n}. query `{row['qids'][0]}`",
            "",
            f"- **Query:** {_quote(row['query'])}",
            f"- **Positive** `{pos}` (score {row['positive_score']:.3f}, {corpus_by_id[pos]['doc_id']}):",
            f"  > {_quote(corpus_by_id[pos]['text'])}",
            f"- **Negative** `{neg}` (score {row['negative_scores'][i]:.3f}, {corpus_by_id[neg]['doc_id']}):",
            f"  > {_quote(corpus_by_id[neg]['text'])}",
            "",
        ]
    return "\n".join(lines)


def write_mining_outputs(
    out_dir: Path,
    rows: Sequence[Mapping[str, Any]],
    report: Mapping[str, Any],
    corpus_by_id: Mapping[str, Mapping[str, Any]],
    audit_samples: int,
    seed: int,
) -> None:
    """Write negatives.jsonl, report.json, scores.png and audit.md into ``out_dir`` (each atomically)."""
    atomic_write_jsonl(out_dir / "negatives.jsonl", list(rows))
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2) + "\n")
    plot_score_histogram(rows, out_dir / "scores.png")
    atomic_write_text(out_dir / "audit.md", format_audit(rows, corpus_by_id, audit_samples, seed))


def rerank_dev_split(cfg: RagtuneConfig, queries: Sequence[Mapping[str, Any]]) -> tuple[list[dict], set[str]]:
    """The dev slice of the train split that chooses the fusion weight, and the queries kept out of training.

    The slice is by document (``rerank.dev_fraction`` of the data stage's seeded document ranks), as embed's
    is: with equal fractions both stages hold out the same queries, and a smaller fraction's slice lies inside
    a larger one's. A query-likelihood reranker is not judged on the queries its own LM wrote
    (:func:`written_by_the_scorer`); with fewer than ``DEV_MIN_QUERIES`` left there is no dev slice (weight 0:
    the retriever's order). Every query of the dev documents stays out of training either way.

    Returns:
        (dev queries, qids never mined nor trained on).
    """
    train = [dict(q) for q in queries if q["split"] == "train" and q["positives"]]
    rest, dev = split_dev_queries(train, cfg.rerank.dev_fraction)
    kept_out = {q["qid"] for q in train} - {q["qid"] for q in rest}
    dev = [q for q in dev if not written_by_the_scorer(q, cfg)]
    return (dev if len(dev) >= DEV_MIN_QUERIES else []), kept_out


def run_mining(cfg: RagtuneConfig, run: RunDir) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mine with the run's tuned embedder and write rerank/negatives/ (main process only writes).

    Raises:
        StageInputError: when the embed or data stage has not finished (naming the command to run).
    """
    # 1. Load: the tuned embedder from the manifest (never the base), the corpus and the queries.
    embedder = run.require("embed", "model")["model"]
    data = run.require("data", "corpus", "queries")
    corpus, queries = read_jsonl(data["corpus"]), read_jsonl(data["queries"])

    # 2. Mine over the whole corpus for the reranker's training queries: train split, dev slice left out, plus
    #    for a cross-encoder, inverse-cloze pseudo-queries from chunks of documents no held-out query cites (a
    #    query-likelihood reranker would only learn to copy a sentence that is in its passage).
    _, dev_ids = rerank_dev_split(cfg, queries)
    doc_of = {c["id"]: c["doc_id"] for c in corpus}
    held_out_docs = {doc_of[c] for q in queries if q["split"] != "train" or q["qid"] in dev_ids for c in q["relevance"]}
    #    With no train-split query at all (a corpus whose every synthetic query was held out), inverse-cloze
    #    queries are what exists, for either kind: the stage trains on them rather than stopping the run.
    training = [q for q in queries if q["split"] == "train" and q["qid"] not in dev_ids]
    count = cfg.rerank.pseudo_queries if cfg.rerank.kind == "cross_encoder" or not training else 0
    pseudo = inverse_cloze_queries(corpus, held_out_docs, count, cfg.run.seed)
    if not training:
        logger.warning("rerank: no train-split query; training on %d inverse-cloze queries alone", len(pseudo))
    mining = cfg.rerank.mining
    if cfg.rerank.kind == "query_likelihood" and cfg.rerank.query_likelihood.negatives == "scorer":
        # A wider pool, in the embedder's order; training keeps the ones the untrained LM scores highest.
        mining = mining.model_copy(update={"num_negatives": cfg.rerank.query_likelihood.scorer_pool})
    rows, report = mine_hard_negatives(
        corpus,
        [q for q in queries if q["qid"] not in dev_ids] + pseudo,
        embedder,
        mining,
        run.path(EMBEDDING_CACHE),
        cfg.run.seed,
    )
    report["dev_queries_not_mined"] = len(dev_ids)
    report["pseudo_queries"] = len(pseudo)
    report["pseudo_queries_only"] = not training
    report["embedder"] = str(embedder.relative_to(run.root))

    # 3. Write the mined dataset, report, histogram and audit.
    if is_main_process():
        by_id = {c["id"]: c for c in corpus}
        write_mining_outputs(
            run.path(RERANK_NEGATIVES), rows, report, by_id, cfg.rerank.mining.audit_samples, cfg.run.seed
        )
    return rows, report


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict[str, Any]:
    """Mine hard negatives on their own (no manifest entry; ``ragtune rerank`` mines again before training)."""
    started = time.time()
    _, report = run_mining(cfg, run)
    logger.info("mining: wrote %s in %.0f s", run.path(RERANK_NEGATIVES), time.time() - started)
    return report


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune rerank, first half: mine hard negatives with the tuned embedder")
