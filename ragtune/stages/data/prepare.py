"""Data stage: documents -> chunked corpus, labelled + synthetic queries, leakage-safe split.

Run it:
    ragtune data configs/demo.yaml
    python -m ragtune.stages.data.prepare --config configs/demo.yaml [data.chunk_size=384]

Writes data/corpus.jsonl, data/queries.jsonl, data/report.json (and data/cache/ for LLM calls).

Held-out synthetic queries (made only when no human question is held out) pass a lexical round trip
(``synth.eval_round_trip``), never the base embedder's: the report's ``held_out`` section says how many
held-out queries are human and synthetic, which model wrote the synthetic ones and how they were filtered,
and eval reads it. ``split.human_train: false`` is the no-labels mode: human questions of training documents
are dropped, so stage 1 learns from synthetic queries alone.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from ragtune.pipeline.config import LLMConfig, RagtuneConfig, SplitConfig
from ragtune.pipeline.dev_slice import assign_dev_ranks, dev_documents, rank_documents
from ragtune.pipeline.entry import run_stage
from ragtune.pipeline.llm import DryRunFinished
from ragtune.pipeline.rundir import (
    DATA_CORPUS,
    DATA_LLM_CACHE,
    DATA_QUERIES,
    DATA_REPORT,
    EMBEDDING_CACHE,
    RunDir,
    atomic_write_jsonl,
    atomic_write_text,
    hash_path,
    is_main_process,
)
from ragtune.stages.data.formats import attach_chunks, import_beir, import_llamaindex, load_questions, missing_evidence
from ragtune.stages.data.ingest import Document, chunk_documents, discover_files, fingerprint_files, read_documents
from ragtune.stages.data.query_filters import bm25_round_trip_on
from ragtune.stages.data.split import assign_split, check_no_leak, choose_eval_documents
from ragtune.stages.data.targets import document_round_robin, synthesize_shares, targets_stream

logger = logging.getLogger(__name__)
STAGE = "data"
CONFIG_SECTIONS = ("data", "split", "synth", "eval.min_queries")


def _source_hashes(cfg: RagtuneConfig) -> dict[str, str]:
    # manifest input name -> (config key, path)
    sources = {
        "questions": ("questions", cfg.data.questions),
        "beir": ("beir", cfg.data.beir),
        "llamaindex": ("llamaindex_dataset", cfg.data.llamaindex_dataset),
    }
    hashes = {}
    if cfg.data.docs:  # only the files ingest reads: never through a symlink that leads outside the folder
        folder = Path(cfg.data.docs)
        if not folder.is_dir():
            raise FileNotFoundError(f"data.docs: folder not found: {folder}")
        hashes["file/docs"] = fingerprint_files(folder, discover_files(folder, cfg.data.extensions)[0])
    for name, (key, value) in sources.items():
        if value:
            if not Path(value).exists():
                raise FileNotFoundError(f"data.{key}: not found: {value}")
            hashes[f"file/{name}"] = hash_path(Path(value))
    return hashes


def load_sources(cfg: RagtuneConfig) -> tuple[list[Document], list[dict], dict]:
    """Documents and document-level labelled questions from every configured source."""
    docs: list[Document] = []
    questions: list[dict] = []
    report: dict = {}
    if cfg.data.docs:
        docs, report["ingest"] = read_documents(Path(cfg.data.docs), cfg.data.extensions, cfg.data.json_text_field)
    if cfg.data.beir:
        beir_docs, beir_questions = import_beir(Path(cfg.data.beir), cfg.data.beir_splits)
        docs, questions = docs + beir_docs, questions + beir_questions
    if cfg.data.llamaindex_dataset:
        li_docs, li_questions = import_llamaindex(Path(cfg.data.llamaindex_dataset))
        docs, questions = docs + li_docs, questions + li_questions
    if cfg.data.questions:
        questions += load_questions(Path(cfg.data.questions), {d.doc_id for d in docs})
    if not docs:
        raise ValueError("data: no usable document found in the configured sources")
    return docs, questions, report


def held_out_origin(counts: dict[str, int], llm: LLMConfig, synth_report: dict | None) -> dict:
    """Where the held-out queries come from: the data report's ``held_out`` section, which eval reports.

    Args:
        counts: the split's ``{origin}_{split}`` counts.
        llm: ``synth.llm``, which wrote the synthetic queries.
        synth_report: the synth report (None: synthesis off).

    Returns:
        ``{"human", "synthetic", "synthetic_written_by", "synthetic_filter"}``; the last two are None when no
        held-out query is synthetic.

    Example:
        >>> counts, llm = {"human_eval": 0, "synthetic_eval": 12}, LLMConfig(provider="extractive")
        >>> held_out_origin(counts, llm, {"eval_round_trip": "bm25 top 10"})
        ... # doctest: +NORMALIZE_WHITESPACE
        {'human': 0, 'synthetic': 12, 'synthetic_written_by': 'the extractive provider (keyword queries, no LLM)',
         'synthetic_filter': 'bm25 top 10'}
    """
    synthetic = counts["synthetic_eval"]
    writer = (
        "the extractive provider (keyword queries, no LLM)"
        if llm.provider == "extractive"
        else f"{llm.provider}:{llm.model}"
    )
    return {
        "human": counts["human_eval"],
        "synthetic": synthetic,
        "synthetic_written_by": writer if synthetic else None,
        "synthetic_filter": (synth_report or {}).get("eval_round_trip") if synthetic else None,
    }


def dev_origin(queries: list[dict], dev_docs: set[str], fraction: float) -> dict:
    """The dev pool the data stage prepared: the data report's ``dev`` section, which the stages' reports cite.

    Args:
        queries: the split query rows.
        dev_docs: training documents ranked below ``split.dev_fraction``.
        fraction: ``split.dev_fraction``.

    Returns:
        ``{"fraction", "documents", "human", "synthetic"}``: the train queries of those documents by origin
        (synthetic ones passed BM25's round trip, not the base embedder's).

    Example:
        >>> rows = [{"origin": "synthetic", "split": "train", "doc_ids": ["a"]},
        ...         {"origin": "human", "split": "train", "doc_ids": ["b"]}]
        >>> dev_origin(rows, {"a"}, 0.2)
        {'fraction': 0.2, 'documents': 1, 'human': 0, 'synthetic': 1}
    """
    pool = [q for q in queries if q["split"] == "train" and set(q["doc_ids"]) <= dev_docs]
    human = sum(q["origin"] == "human" for q in pool)
    return {"fraction": fraction, "documents": len(dev_docs), "human": human, "synthetic": len(pool) - human}


def held_out_documents(cfg: RagtuneConfig, docs: list, labelled: list[dict]) -> tuple[set[str], bool]:
    """The held-out documents (``split``), and whether any labelled question is among them."""
    eval_docs = choose_eval_documents(
        [d.doc_id for d in docs],
        labelled,
        cfg.split.eval_fraction,
        cfg.split.seed,
        from_labelled=cfg.split.eval_docs_from == "human",
    )
    return eval_docs, any(set(q["doc_ids"]) <= eval_docs for q in labelled)


def synthesis_pools(
    corpus: list[dict], eval_docs: set[str], dev_share: set[str], has_labelled_eval: bool, seed: int
) -> tuple[list[dict], list[dict], list[dict]]:
    """The held-out, dev and training chunks synthesis may ask about, each in its visiting order.

    Held-out chunks are a share of their own only when no labelled question is held out (their synthetic queries
    are then the eval split); the chunks of ``dev_share`` (the dev documents, when they get a share: see
    :func:`dev_share_documents`) are the dev share; every other chunk of a training document is a training
    target. The order comes from a stream of its own (:func:`ragtune.stages.data.targets.targets_stream`), never
    the one that chose the held-out documents.

    Example:
        >>> rows = [{"id": f"{d}{i}", "doc_id": d} for d in "abc" for i in range(2)]
        >>> held, dev, train = synthesis_pools(rows, {"a"}, {"b"}, False, seed=0)
        >>> {c["doc_id"] for c in held}, {c["doc_id"] for c in dev}, {c["doc_id"] for c in train}
        ({'a'}, {'b'}, {'c'})
    """
    order = document_round_robin(corpus, targets_stream(seed))
    held_out = [] if has_labelled_eval else [c for c in order if c["doc_id"] in eval_docs]
    dev = [c for c in order if c["doc_id"] in dev_share]
    train = [c for c in order if c["doc_id"] not in eval_docs and c["doc_id"] not in dev_share]
    return held_out, dev, train


def dev_share_documents(split: SplitConfig, dev_docs: set[str], labelled: list[dict]) -> set[str]:
    """The dev documents when they get a synthesis share of their own, else none.

    They do when ``split.dev_min_queries`` > 0 and no labelled question on them is trained on (with one, the dev
    slice has human questions and the dev documents are visited with the other training documents).

    Example:
        >>> sorted(dev_share_documents(SplitConfig(), {"b"}, [{"doc_ids": ["a"]}]))
        ['b']
        >>> dev_share_documents(SplitConfig(), {"b"}, [{"doc_ids": ["b"]}])
        set()
    """
    labelled_dev = split.human_train and any(set(q["doc_ids"]) <= dev_docs for q in labelled)
    return set() if labelled_dev or split.dev_min_queries == 0 else dev_docs


def synthesize(
    cfg: RagtuneConfig,
    run: RunDir,
    corpus: list[dict],
    eval_docs: set[str],
    dev_docs: set[str],
    labelled_eval: bool,
    dev_share: set[str],
) -> tuple[list[dict], dict]:
    """Synthetic queries: held-out documents get enough for ``eval.min_queries``, dev documents enough for
    ``split.dev_min_queries`` (each only when no labelled question covers them), training documents the rest.

    Queries of held-out and dev documents pass the BM25 round trip, the others the base embedder's
    (:mod:`ragtune.stages.data.synthesize`). Returns the rows and the synth report, with the ``shares`` section that
    says how many targets and kept queries each share got (:func:`ragtune.stages.data.targets.synthesize_shares`).
    """
    from ragtune.stages.data.synthesize import synthesize_queries

    def ask(chunks: list[dict]) -> tuple[list[dict], dict]:
        return synthesize_queries(
            chunks,
            corpus,
            cfg.synth,
            run.path(DATA_LLM_CACHE),
            run.path(EMBEDDING_CACHE),
            held_out=eval_docs | dev_docs,
            score_block_mb=cfg.run.score_block_mb,
        )

    held_pool, dev_pool, train_pool = synthesis_pools(corpus, eval_docs, dev_share, labelled_eval, cfg.split.seed)
    measured = {"held_out": (held_pool, cfg.eval.min_queries), "dev": (dev_pool, cfg.split.dev_min_queries)}
    shared, train, out = synthesize_shares(
        measured, train_pool, cfg.synth.max_chunks, cfg.synth.held_out_yield, cfg.synth.held_out_margin, ask
    )
    held = shared["held_out"]
    # One query text on both sides would tie a training pair to an eval query: the held-out one is kept.
    seen = {q["text"].casefold() for q in held}
    on_train_docs = shared["dev"] + train
    kept_train = [q for q in on_train_docs if q["text"].casefold() not in seen]
    report = {**out["report"], "shares": out["shares"], "dropped_across_split": len(on_train_docs) - len(kept_train)}
    report["shares"]["dev"] |= {
        "documents": len(dev_docs),
        "kept": sum(set(q["doc_ids"]) <= dev_docs for q in kept_train),
        "filter": "bm25" if bm25_round_trip_on(cfg.synth) else "none",
    }
    return held + kept_train, report


def chunk_corpus(cfg: RagtuneConfig, docs: list, questions: list[dict], report: dict) -> tuple[list[dict], list[dict]]:
    """Chunk the documents and give each labelled question its evidence chunks; the report notes the questions
    whose evidence was not found (all their document's chunks count then).

    Returns:
        ``(corpus chunks, labelled questions with their chunks)``.
    """
    corpus = chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap)
    texts = {d.doc_id: d.text for d in docs}
    labelled = attach_chunks(questions, corpus, texts)
    if questions:
        not_found = missing_evidence(questions, texts)
        report["labelled"] = {"questions": len(questions), "evidence_not_found": not_found}
        for item in not_found:
            logger.warning("question %s: evidence not found in %s (all its chunks count)", item["qid"], item["doc_id"])
    return corpus, labelled


def split_queries(
    cfg: RagtuneConfig,
    queries: list[dict],
    eval_docs: set[str],
    dev_ranks: dict[str, float],
    dev_docs: set[str],
    docs: list,
    report: dict,
) -> tuple[list[dict], dict[str, int]]:
    """Split the labelled and synthetic queries by document, give the train ones their documents' dev ranks, and
    check that nothing leaks; the report records the split, the held-out queries' origin and the dev slice's.

    Returns:
        ``(queries, counts by origin and split)``.
    """
    split = assign_split(queries, eval_docs)
    split_count = len(split)
    if not cfg.split.human_train:  # the no-labels mode: stage 1 learns from synthetic queries alone
        split = [q for q in split if q["origin"] != "human" or q["split"] == "eval"]
    split = assign_dev_ranks(split, cfg.run.seed, dev_ranks)
    check_no_leak(split)
    counts = {
        f"{origin}_{part}": sum(q["origin"] == origin and q["split"] == part for q in split)
        for origin in ("human", "synthetic")
        for part in ("train", "eval")
    }
    report["split"] = {
        "eval_documents": len(eval_docs),
        "documents": len(docs),
        "dropped_straddling": len(queries) - split_count,
        "human_unused": split_count - len(split),
        **counts,
    }
    report["held_out"] = held_out_origin(counts, cfg.synth.llm, report.get("synth"))
    report["dev"] = dev_origin(split, dev_docs, cfg.split.dev_fraction)
    return split, counts


def main(cfg: RagtuneConfig, run: RunDir, force: bool = False) -> dict:
    """Build the corpus and the split query set; skipped when fresh unless ``force``."""
    config_hash, inputs = run.freshness(cfg, CONFIG_SECTIONS, inputs=_source_hashes(cfg))
    if not force and run.is_fresh(STAGE, config_hash, inputs):
        logger.info("data: finished and fresh, skipping (--force reruns it)")
        return run.load_manifest()[STAGE].metrics
    started = time.time()

    # 1. Load documents and labelled questions.
    docs, questions, report = load_sources(cfg)

    # 2. Chunk.
    corpus, labelled = chunk_corpus(cfg, docs, questions, report)

    # 3. Choose held-out documents before synthesis, so no LLM call is spent on them needlessly.
    eval_docs, has_labelled_eval = held_out_documents(cfg, docs, labelled)

    # 4. Rank the training documents for the stages' dev slices (a seeded stream of its own), then synthesize:
    #    held-out documents just enough for eval (when nothing labelled is held out), dev documents just enough
    #    for the gates (when no labelled question is on them), training documents the rest. Held-out and dev
    #    documents' queries pass a lexical round trip, never the base embedder's, which eval and the gates judge.
    dev_ranks = rank_documents((d.doc_id for d in docs if d.doc_id not in eval_docs), cfg.run.seed)
    dev_docs = dev_documents(dev_ranks, cfg.split.dev_fraction)
    dev_share = dev_share_documents(cfg.split, dev_docs, labelled)
    synthetic: list[dict] = []
    if cfg.synth.enabled:
        synthetic, report["synth"] = synthesize(cfg, run, corpus, eval_docs, dev_docs, has_labelled_eval, dev_share)
        if cfg.synth.llm.dry_run:
            raise DryRunFinished("synth.llm.dry_run is set: estimate printed above, nothing written")

    # 5. Split by document and check that nothing leaks; rank the train documents for the stages' dev slices.
    queries, counts = split_queries(cfg, labelled + synthetic, eval_docs, dev_ranks, dev_docs, docs, report)

    # 6. Write artifacts, then the manifest entry.
    metrics = {
        "documents": len(docs),
        "chunks": len(corpus),
        "queries": len(queries),
        **counts,
        "human_unused": report["split"]["human_unused"],
    }
    if is_main_process():
        atomic_write_jsonl(run.path(DATA_CORPUS), corpus)
        atomic_write_jsonl(run.path(DATA_QUERIES), queries)
        atomic_write_text(run.path(DATA_REPORT), json.dumps(report, indent=2))
    run.record(
        STAGE,
        config_hash=config_hash,
        inputs=inputs,
        started=started,
        metrics=metrics,
        outputs={"corpus": DATA_CORPUS, "queries": DATA_QUERIES, "report": DATA_REPORT},
    )
    logger.info("data: %d documents, %d chunks, queries %s", len(docs), len(corpus), counts)
    return metrics


if __name__ == "__main__":
    run_stage(STAGE, main, "ragtune data stage: ingest, chunk, synthesize queries, split")
