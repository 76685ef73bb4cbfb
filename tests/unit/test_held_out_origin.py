"""Held-out queries: never chosen by a model under evaluation, and the eval report says where they come from."""

import json
from pathlib import Path

from fakes.upstream import ranker_giving, run_dir_of

from ragtune.app.cli import main as cli
from ragtune.eval.harness import human_recall, query_origins
from ragtune.eval.report import fine_tune_call, optimistic_warning, origin_line, render_markdown, render_table
from ragtune.pipeline.rundir import RunDir, read_jsonl

RecordingRanker = ranker_giving(1)  # keeps every query


def test_without_labels_held_out_synthetic_queries_skip_the_base_embedders_round_trip(tiny_config, monkeypatch):
    RecordingRanker.seen = []
    monkeypatch.setattr("ragtune.pipeline.retrieval.DenseRetriever", RecordingRanker)
    cli(["data", str(tiny_config), "data.questions=null", "synth.round_trip_top_k=10"])
    run = run_dir_of(tiny_config)
    queries = read_jsonl(run.path("data/queries.jsonl"))
    held = [q for q in queries if q["split"] == "eval"]
    assert held and all(q["origin"] == "synthetic" for q in held)
    chunk_doc = {c["id"]: c["doc_id"] for c in read_jsonl(run.path("data/corpus.jsonl"))}
    held_docs = {d for q in held for d in q["doc_ids"]}
    assert RecordingRanker.seen and not {chunk_doc[c] for c in RecordingRanker.seen} & held_docs
    report = json.loads(run.path("data/report.json").read_text())
    assert report["held_out"] == {
        "human": 0,
        "synthetic": len(held),
        "synthetic_written_by": "the extractive provider (keyword queries, no LLM)",
        "synthetic_filter": "bm25 top 10",
    }
    assert report["synth"]["shares"]["held_out"]["kept"] == len(held)

    # eval reads the origin back from the data report, flags the figures optimistic, and makes no call
    origins = query_origins(run, held)
    assert origins["synthetic_filter"] == "bm25 top 10" and origins["optimistic"]
    note = fine_tune_call(None, origins, min_queries=1)
    assert note.startswith("No call on fine-tuning") and "cannot be applied honestly" in note


def test_no_labels_mode_trains_on_synthetic_queries_alone(tiny_config: Path) -> None:
    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    default = read_jsonl(run.path("data/queries.jsonl"))
    human_train = sum(q["split"] == "train" for q in default)
    assert human_train
    cli(["data", str(tiny_config), "split.human_train=false"])
    queries = read_jsonl(run.path("data/queries.jsonl"))
    assert {q["qid"] for q in queries if q["origin"] == "human"} == {q["qid"] for q in default if q["split"] == "eval"}
    assert all(q["split"] == "train" for q in queries if q["origin"] == "synthetic")
    report = json.loads(run.path("data/report.json").read_text())
    assert report["split"]["human_unused"] == human_train and report["split"]["human_train"] == 0
    assert report["held_out"]["human"] == report["split"]["human_eval"] and report["held_out"]["synthetic"] == 0


def test_the_fine_tune_rule_reads_human_queries_only() -> None:
    doc_of = {"a": "A", "b": "B", "x": "X"}
    queries = [
        {"origin": "human", "positives": ["a"], "relevance": {"a": 1}},
        {"origin": "synthetic", "positives": ["b"], "relevance": {"b": 1}},
        {"origin": "synthetic", "positives": ["b"], "relevance": {"b": 1}},
    ]
    ranked = [["x"], ["b"], ["b"]]  # the synthetic queries are found, the human one is not
    baseline = human_recall(queries, ranked, doc_of)
    assert baseline["recall"] == 0.0
    origins = {"human": 1, "synthetic": 2}
    note = fine_tune_call(baseline, origins, min_queries=1)
    assert note.startswith("Baseline recall@10 of the evidence chunks") and "is 0.00 (below 0.80)" in note
    assert "on the 1 human-written held-out queries (synthetic ones left out)" in note
    assert human_recall(queries[1:], ranked[1:], doc_of) is None
    assert "none of the 2 held-out queries is human-written" in fine_tune_call(None, {"human": 0, "synthetic": 2}, 1)


def test_a_mostly_synthetic_evaluation_is_marked_optimistic_in_every_report(tmp_path: Path) -> None:
    assert optimistic_warning({"human": 5, "synthetic": 5}) is None
    origins = {"human": 0, "synthetic": 12, "synthetic_written_by": "local:m", "synthetic_filter": "bm25 top 10"}
    warning = optimistic_warning(origins)
    assert warning.startswith("12 of the 12 held-out queries are synthetic: the figures are optimistic")
    report = {
        "mode": "retrieval-only",
        "queries": {"n": 12, "origin": "all", "with_answers": 0, "origins": origins},
        "metrics": ["ndcg@10"],
        "configurations": {
            "rag_only": {
                "components": {"embedder": "base"},
                "metrics": {"ndcg@10": 0.5},
                "latency_ms_per_query": {"total_ms": 1.0},
            }
        },
        "skipped": {},
        "deltas": {},
        "verdicts": {},
        "fine_tune_note": fine_tune_call(None, origins, 1),
        "warnings": [warning],
        "bootstrap": {"samples": 10},
    }
    md = render_markdown(report)
    assert origin_line(origins) in md and "written by local:m" in md and "BM25 ranks their chunk in its top 10" in md
    assert f"> **Warning:** {warning}" in md
    assert render_table(report).splitlines()[-1] == f"WARNING: {warning}"

    # a data report without the held-out section claims nothing about who wrote the queries or how they were kept
    run = RunDir(tmp_path / "run")
    run.path("data").mkdir(parents=True)
    run.path("data/report.json").write_text(json.dumps({"synth": {"model": "local:m", "round_trip_k": 10}}))
    run.record("data", config_hash="h", inputs={}, outputs={"report": "data/report.json"}, started=0.0)
    bare = query_origins(run, [{"origin": "synthetic"}])
    assert bare["synthetic_written_by"] is None and bare["synthetic_filter"] is None
