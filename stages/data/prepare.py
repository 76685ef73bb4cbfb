"""Data stage: documents -> chunked corpus, labelled + synthetic queries, leakage-safe split.

Run it:
    ragtune data configs/demo.yaml
    python -m stages.data.prepare --config configs/demo.yaml [data.chunk_size=384]

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

from pipeline.config import LLMConfig, RagtuneConfig
from pipeline.dev_slice import assign_dev_ranks
from pipeline.entry import run_stage
from pipeline.llm import DryRunFinished
from pipeline.rundir import (
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
from stages.data.formats import attach_chunks, import_beir, import_llamaindex, load_questions, missing_evidence
from stages.data.ingest import Document, chunk_documents, discover_files, fingerprint_files, read_documents
from stages.data.split import assign_split, check_no_leak, choose_eval_documents

logger = logging.getLogger(__name__)
STAGE = "data"
CONFIG_SECTIONS = ("data", "split", "synth")


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


def synthesis_targets(
    cfg: RagtuneConfig, corpus: list[dict], eval_docs: set[str], has_labelled_eval: bool
) -> list[dict]:
    """The chunks synthesis asks about: training chunks (held-out ones too when no labelled question is held
    out), at most ``synth.max_chunks`` of them spread across documents."""
    from stages.data.synthesize import spread_across_documents

    targets = [c for c in corpus if not has_labelled_eval or c["doc_id"] not in eval_docs]
    return spread_across_documents(targets, cfg.synth.max_chunks, cfg.split.seed)


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
    corpus = chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap)
    texts = {d.doc_id: d.text for d in docs}
    labelled = attach_chunks(questions, corpus, texts)
    if questions:
        not_found = missing_evidence(questions, texts)
        report["labelled"] = {"questions": len(questions), "evidence_not_found": not_found}
        for item in not_found:
            logger.warning("question %s: evidence not found in %s (all its chunks count)", item["qid"], item["doc_id"])

    # 3. Choose held-out documents before synthesis, so no LLM call is spent on them needlessly.
    eval_docs, has_labelled_eval = held_out_documents(cfg, docs, labelled)

    # 4. Synthesize queries for training chunks (for held-out chunks too when nothing labelled is held out:
    #    those pass a lexical round trip, never the base embedder's, which eval judges on them).
    synthetic: list[dict] = []
    if cfg.synth.enabled:
        from stages.data.synthesize import synthesize_queries

        synthetic, report["synth"] = synthesize_queries(
            synthesis_targets(cfg, corpus, eval_docs, has_labelled_eval),
            corpus,
            cfg.synth,
            run.path(DATA_LLM_CACHE),
            run.path(EMBEDDING_CACHE),
            held_out=eval_docs,
            score_block_mb=cfg.run.score_block_mb,
        )
        if cfg.synth.llm.dry_run:
            raise DryRunFinished("synth.llm.dry_run is set: estimate printed above, nothing written")

    # 5. Split by document and check that nothing leaks; rank the train documents for the stages' dev slices.
    queries = assign_split(labelled + synthetic, eval_docs)
    split_queries = len(queries)
    if not cfg.split.human_train:  # the no-labels mode: stage 1 learns from synthetic queries alone
        queries = [q for q in queries if q["origin"] != "human" or q["split"] == "eval"]
    queries = assign_dev_ranks(queries, cfg.run.seed)
    check_no_leak(queries)
    counts = {
        f"{origin}_{split}": sum(q["origin"] == origin and q["split"] == split for q in queries)
        for origin in ("human", "synthetic")
        for split in ("train", "eval")
    }
    report["split"] = {
        "eval_documents": len(eval_docs),
        "documents": len(docs),
        "dropped_straddling": len(labelled) + len(synthetic) - split_queries,
        "human_unused": split_queries - len(queries),
        **counts,
    }
    report["held_out"] = held_out_origin(counts, cfg.synth.llm, report.get("synth"))

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
