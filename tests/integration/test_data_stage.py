"""The data stage through the `ragtune` CLI on the fixture domain."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from fakes.upstream import run_dir_of

from ragtune.app.cli import main as cli
from ragtune.pipeline.rundir import read_jsonl


def test_data_stage_writes_corpus_queries_split_and_manifest(tiny_config: Path, capsys) -> None:
    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    queries = read_jsonl(run.path("data/queries.jsonl"))
    assert {c["doc_id"] for c in corpus} == {
        "runbooks/heron-failover.md",
        "runbooks/tortoise-drain.md",
        "specs/ledgerfish.txt",
        "specs/pondview.html",
        "faq.jsonl#faq1",
        "faq.jsonl#faq2",
    }
    assert {q["qid"] for q in queries} == {f"t{i}" for i in range(1, 7)}
    assert {q["split"] for q in queries} == {"train", "eval"}
    chunk_doc = {c["id"]: c["doc_id"] for c in corpus}
    train_docs = {chunk_doc[c] for q in queries if q["split"] == "train" for c in q["relevance"]}
    eval_docs = {chunk_doc[c] for q in queries if q["split"] == "eval" for c in q["relevance"]}
    assert not train_docs & eval_docs
    # each train query carries its documents' seeded dev ranks (the embed and rerank dev slices select by them)
    ranks = {d: r for q in queries if q["split"] == "train" for d, r in q["dev_rank"].items()}
    assert set(ranks) == {d for q in queries if q["split"] == "train" for d in q["doc_ids"]}
    assert all(0 <= r < 1 for r in ranks.values()) and len(set(ranks.values())) == len(ranks)
    assert all("dev_rank" not in q for q in queries if q["split"] == "eval")
    assert (run.root / "config.resolved.yaml").exists()
    rec = run.load_manifest()["data"]
    assert rec.status == "done" and rec.metrics["chunks"] == len(corpus)
    assert set(rec.inputs) == {"file/docs", "file/questions"}

    # Finished and fresh: skipped; --force reruns; the same input gives the same ids.
    ended = rec.ended
    cli(["data", str(tiny_config), "synth.enabled=false"])
    assert run.load_manifest()["data"].ended == ended
    cli(["data", str(tiny_config), "synth.enabled=false", "--force"])
    assert run.load_manifest()["data"].ended > ended
    assert [c["id"] for c in read_jsonl(run.path("data/corpus.jsonl"))] == [c["id"] for c in corpus]

    # A config change makes it stale: it reruns.
    cli(["data", str(tiny_config), "synth.enabled=false", "data.chunk_size=48"])
    assert run.load_manifest()["data"].config_hash != rec.config_hash

    capsys.readouterr()
    cli(["status", str(run.root)])
    assert "data" in capsys.readouterr().out


def test_bad_config_and_bad_questions_exit_with_one_clear_line(tiny_config: Path, tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ragtune.app.cli", "data", str(tiny_config), "data.chunk_sise=3"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert "data.chunk_sise: unknown key" in proc.stderr and "Traceback" not in proc.stderr

    bad = tmp_path / "questions.jsonl"
    bad.write_text(json.dumps({"id": "x", "question": "q", "doc_ids": ["nowhere.md"]}) + "\n")
    with pytest.raises(SystemExit) as exit_info:
        cli(["data", str(tiny_config), "synth.enabled=false", f"data.questions={bad}"])
    assert exit_info.value.code == 2


def test_synthetic_queries_only_for_training_documents(tiny_config: Path) -> None:
    cli(["data", str(tiny_config)])  # tiny.yaml: extractive synthesis, no round trip
    run = run_dir_of(tiny_config)
    queries = read_jsonl(run.path("data/queries.jsonl"))
    synthetic = [q for q in queries if q["origin"] == "synthetic"]
    held_docs = {d for q in queries if q["split"] == "eval" for d in q["doc_ids"]}
    assert synthetic and all(q["split"] == "train" for q in synthetic)
    assert not {d for q in synthetic for d in q["doc_ids"]} & held_docs
    report = json.loads(run.path("data/report.json").read_text())
    assert report["synth"]["kept"] == len(synthetic)
    assert run.load_manifest()["data"].metrics["synthetic_train"] == len(synthetic)


def test_a_chunk_cap_spreads_synthetic_queries_across_documents(tiny_config: Path) -> None:
    cli(["data", str(tiny_config), "synth.max_chunks=3"])
    run = run_dir_of(tiny_config)
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    queries = read_jsonl(run.path("data/queries.jsonl"))
    held_docs = {d for q in queries if q["split"] == "eval" for d in q["doc_ids"]}
    train_docs = {c["doc_id"] for c in corpus} - held_docs
    assert len(train_docs) >= 3 and len([c for c in corpus if c["doc_id"] in train_docs]) > 3
    synthetic_docs = {d for q in queries if q["origin"] == "synthetic" for d in q["doc_ids"]}
    assert len(synthetic_docs) == 3  # the first 3 training chunks in path order come from 2 documents
    report = json.loads(run.path("data/report.json").read_text())["synth"]
    assert report["chunks"] == 3 and report["documents"] == 3


def test_dry_run_prints_estimate_and_records_nothing(tiny_config: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("RAGTUNE_TEST_KEY", "sk-do-not-print")
    cli(
        [
            "data",
            str(tiny_config),
            "synth.llm.provider=openai",
            "synth.llm.model=m",
            "synth.llm.dry_run=true",
            "synth.llm.base_url=http://127.0.0.1:9/v1",
            "synth.llm.api_key_env=RAGTUNE_TEST_KEY",
        ]
    )
    out = capsys.readouterr().out
    assert "dry run" in out and "nothing was called" in out and "sk-do-not-print" not in out
    run = run_dir_of(tiny_config)
    assert "data" not in run.load_manifest() and not run.path("data/queries.jsonl").exists()


def test_a_split_that_leaks_fails_the_stage_naming_query_and_document(tiny_config: Path, monkeypatch, capsys) -> None:
    from ragtune.stages.data import prepare, split

    leaked: list[dict] = []

    def leaky_split(queries: list[dict], eval_docs: set[str]) -> list[dict]:
        kept = split.assign_split(queries, eval_docs)
        leaked.append(next(q for q in kept if q["split"] == "train" and len(q["doc_ids"]) == 1))
        return [*kept, {**leaked[0], "qid": "leaky", "split": "eval"}]  # its document on both sides

    monkeypatch.setattr(prepare, "assign_split", leaky_split)
    with pytest.raises(SystemExit) as exit_info:
        cli(["data", str(tiny_config), "synth.enabled=false"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    doc = leaked[0]["doc_ids"][0]
    assert f"split leak: document {doc!r} is in train query" in err and "eval query 'leaky'" in err
    run = run_dir_of(tiny_config)
    assert run.load_manifest()["data"].status == "failed" and not run.path("data/queries.jsonl").exists()


def write_generated_corpus(folder: Path, n_docs: int, seed: int = 0) -> None:
    """``n_docs`` one-paragraph .txt documents of seeded random words (a user's folder, no questions)."""
    import random

    rng = random.Random(seed)
    words = [f"{a}{b}{c}" for a in "bcdfgklmnprst" for b in "aeiou" for c in "lmnrst"]
    folder.mkdir(parents=True)
    for i in range(n_docs):
        sentences = [" ".join(rng.choices(words, k=12)).capitalize() + "." for _ in range(3)]
        (folder / f"doc{i:04d}.txt").write_text(" ".join(sentences) + "\n", encoding="utf-8")


def test_without_labels_most_targets_are_training_chunks_and_eval_gets_min_queries(
    tiny_config: Path, tiny_bert_dir: Path, tmp_path: Path
) -> None:
    docs = tmp_path / "corpus"
    write_generated_corpus(docs, 1500)
    overrides = [
        f"data.docs={docs}",
        "data.questions=null",
        "split.eval_fraction=0.3",
        "synth.max_chunks=300",
        "synth.round_trip_top_k=2000",  # above the corpus: every query passes, the filters' sides are recorded
        f"synth.round_trip_model={tiny_bert_dir}",
    ]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    queries = read_jsonl(run.path("data/queries.jsonl"))
    shares = json.loads(run.path("data/report.json").read_text())["synth"]["shares"]
    assert shares["held_out"]["targets"] + shares["dev"]["targets"] + shares["train"]["targets"] == 300
    # Most targets are on training documents (the dev documents are held-out training documents).
    assert shares["dev"]["targets"] + shares["train"]["targets"] > 2 * shares["held_out"]["targets"]
    # The dev share is sized by the yield the held-out share measured, so it needs fewer rounds and targets.
    assert shares["dev"]["goal"] == 30 and shares["dev"]["rounds"] == 1
    assert shares["dev"]["targets"] < shares["held_out"]["targets"] < shares["train"]["targets"]
    held_out = [q for q in queries if q["split"] == "eval"]
    train = [q for q in queries if q["split"] == "train"]
    assert len(held_out) >= 30 == shares["held_out"]["goal"]  # eval.min_queries reached
    assert len(train) > len(held_out)
    # The dev documents' queries passed BM25's round trip, so the default dev slice judges without labels.
    from ragtune.pipeline.dev_slice import split_dev_queries

    _, dev = split_dev_queries(train, 0.2)
    assert len(dev) >= 30 and all(q["round_trip"] == "bm25" for q in dev)  # split.dev_min_queries reached
    assert {q["round_trip"] for q in held_out} == {"bm25"}
    assert shares["dev"]["kept"] == len(dev)
