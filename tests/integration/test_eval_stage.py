"""The eval stage through the `ragtune` CLI: all four configurations, any subset of stages, BEIR retrieval-only."""

import csv
import json
from pathlib import Path

import pytest
import torch
from fakes.upstream import record_tuned_reranker_and_adapter, run_dir_of, simulate_embed_stage, tiny_model_overrides

from ragtune.app.cli import main as cli
from ragtune.pipeline.raft_format import parse_answer, quote_prefill
from ragtune.pipeline.rundir import RunDir

FIXTURES = Path(__file__).parents[1] / "fixtures"


def finish_upstream(run: RunDir, bert: Path, llama: Path) -> None:
    """Simulate finished embed, rerank and raft stages with tiny models."""
    simulate_embed_stage(run, bert)
    record_tuned_reranker_and_adapter(run, bert, llama)


def _overrides(bert: Path, llama: Path) -> list[str]:
    return [
        *tiny_model_overrides(bert, llama),
        "assemble.max_new_tokens=6",
        "eval.bootstrap_samples=100",
        "eval.forgetting_max_new_tokens=3",
    ]


def test_eval_compares_every_configuration_and_records_the_stage(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, capsys
) -> None:
    overrides = _overrides(tiny_bert_dir, tiny_llama_dir)
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    finish_upstream(run, tiny_bert_dir, tiny_llama_dir)
    capsys.readouterr()
    extra = [
        "eval.custom={rerank_base: {embedder: base, reranker: tuned, generator: base}, "
        "guided: {embedder: tuned, reranker: tuned, generator: tuned, quote: extractive}}",
        "eval.judge={provider: extractive}",
        "eval.probes.close=[[PTO, Primary Takeover]]",
        "eval.probes.far=[[PTO, batch queue]]",
    ]
    cli(["eval", str(tiny_config), *overrides, *extra])
    printed = capsys.readouterr().out
    assert "configuration" in printed and "full" in printed and "nDCG@10" in printed

    report = json.loads(run.path("eval/report.json").read_text())
    names = ["rag_only", "rag_hybrid", "embed", "embed_rerank_untrained", "embed_rerank", "extractive", "full"]
    names += ["rerank_base", "guided"]
    assert list(report["configurations"]) == names and report["skipped"] == {}
    assert report["mode"] == "retrieval+generation"
    n = report["queries"]["n"]
    assert n == report["queries"]["with_answers"] >= 1
    confs = report["configurations"]
    # Each configuration used the components it names.
    assert confs["rag_only"]["components"]["paths"] == {
        "embedder": str(tiny_bert_dir),
        "generator": str(tiny_llama_dir),
    }
    assert confs["embed"]["components"]["paths"]["embedder"] == str(run.path("embed/model"))
    assert confs["embed_rerank"]["components"]["paths"]["reranker"] == str(run.path("rerank/model"))
    assert confs["full"]["components"]["paths"]["adapter"] == str(run.path("raft/adapter"))
    assert confs["extractive"]["components"]["paths"]["generator"] == "extractive"  # no LLM
    # The untrained reranker at the weight stage 2 chose for it; the tuned one read against it and against none.
    untrained = confs["embed_rerank_untrained"]
    assert untrained["components"]["paths"]["reranker"] == str(run.path("rerank/untrained"))
    assert untrained["reranker_weight"] == 0.5
    assert report["deltas"]["embed_rerank"]["vs_untrained_reranker"]["reference"] == "embed_rerank_untrained"
    assert report["deltas"]["embed_rerank"]["vs_previous"]["reference"] == "embed"
    assert confs["rerank_base"]["top_k"] == 4  # custom entries inherit sizes from assemble
    # Answers for the configurations the generation verdicts read and the custom one; retrieval alone for the rest.
    answered = ["rag_only", "embed_rerank", "extractive", "full", "rerank_base", "guided"]
    for name, conf in confs.items():
        m = conf["metrics"]
        assert {"hit@1", "mrr@10", "ndcg@10", "recall@10", "em", "f1", "format_ok", "abstain_no_oracle"} <= set(m)
        assert 0 <= m["ndcg@10"] <= 1
        if name in answered:
            assert 1 <= m["judge"] <= 5 and m["f1"] is not None
            assert conf["latency_ms_per_query"]["generation_ms"] > 0
        else:
            assert m["f1"] is m["judge"] is m["abstain_no_oracle"] is None
            assert "generation_ms" not in conf["latency_ms_per_query"] and "generator" not in conf["components"]
    # Deltas: against rag_only and the previous configuration, paired intervals around the estimate.
    assert report["deltas"]["full"]["vs_previous"]["reference"] == "embed_rerank"  # what the tuned generator adds
    assert report["deltas"]["full"]["vs_extractive"]["reference"] == "extractive"  # and whether it beats a quote
    for by_ref in report["deltas"].values():
        for entry in by_ref.values():
            iv = entry["metrics"]["ndcg@10"]
            assert iv["low"] <= iv["estimate"] <= iv["high"] and iv["n"] == n
    # Each verdict is what its interval says: above 0 gained, below 0 hurt, else no significant change.
    listed = 0
    for name, rows_of in report["verdicts"].items():
        for v in rows_of:
            iv = report["deltas"][name][v["label"]]["metrics"][v["metric"]]
            assert (v["low"], v["high"], v["estimate"], v["vs"]) == (
                iv["low"],
                iv["high"],
                iv["estimate"],
                report["deltas"][name][v["label"]]["reference"],
            )
            expected = "gained" if iv["low"] > 0 else "hurt" if iv["high"] < 0 else "no significant change"
            assert v["verdict"] == expected
            listed += 1
    # one per measured verdict metric and reference; rag_hybrid has rag_only only, and so has embed when rag_only is
    # the stronger untrained baseline (its previous step); F1 only between answered configurations
    expected = 0
    for by_ref in report["deltas"].values():
        entries = {e["reference"]: e for e in by_ref.values()}.values()
        expected += sum(e["metrics"].get(m) is not None for e in entries for m in ("ndcg@10", "recall@10", "f1"))
    assert listed == expected
    assert report["deltas"]["embed"]["vs_rag_only"]["metrics"]["f1"] is None
    assert report["deltas"]["full"]["vs_previous"]["metrics"]["f1"] is not None
    assert report["deltas"]["embed"]["vs_previous"]["reference"] in ("rag_only", "rag_hybrid")
    assert confs["rag_hybrid"]["retrieval"] == "hybrid" and confs["rag_only"]["retrieval"] == "dense"
    assert "full" in report["verdicts"] and report["fine_tune_note"].startswith("No call on fine-tuning")
    assert set(report["probes"]) == {"base", "tuned"} and report["probes"]["base"]["gap"] is not None
    # The forgetting check asked the base and the RAFT generator every bundled general question.
    forgetting = report["forgetting"]
    assert forgetting["questions"] == len(forgetting["per_question"]) == 40
    assert forgetting["delta"]["low"] <= forgetting["delta"]["estimate"] <= forgetting["delta"]["high"]
    assert forgetting["delta"]["estimate"] == pytest.approx(forgetting["tuned"] - forgetting["base"])
    assert "## Forgetting check" in run.path("eval/report.md").read_text()

    # Per-query rows: one per configuration and query; the RAFT adapter changes the answers.
    with run.path("eval/per_query.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(names) * n
    answers = {name: [r["answer"] for r in rows if r["configuration"] == name] for name in names}
    assert answers["full"] != answers["embed_rerank"]
    # The extractive answers quote one sentence of the context and give it as the answer.
    for answer in answers["extractive"]:
        parsed = parse_answer(answer)
        assert parsed.well_formed and len(parsed.quotes) == 1 and parsed.answer == parsed.quotes[0]
    # A guided answer starts with the extractive answer's quote over the same context; the generator wrote the rest.
    assert (
        confs["guided"]["components"]["quote"] == "extractive" and confs["full"]["components"]["quote"] == "generator"
    )
    assert confs["guided"]["metrics"]["quote_precision"] == 1.0
    for guided, extractive in zip(answers["guided"], answers["extractive"], strict=True):
        assert (
            guided.startswith(quote_prefill(extractive))
            and parse_answer(guided).quotes == parse_answer(extractive).quotes
        )
    for chart in ("metrics", "deltas"):
        assert run.path(f"eval/{chart}.png").read_bytes()[:4] == b"\x89PNG"
    md = run.path("eval/report.md").read_text()
    assert "## Verdicts" in md and "Should you fine-tune" in md and "| full |" in md

    rec = run.load_manifest()["eval"]
    assert {"report", "json", "per_query", "metrics_chart", "deltas_chart"} <= set(rec.outputs)
    assert {"data/corpus", "data/queries", "embed/model", "rerank/model", "raft/adapter"} <= set(rec.inputs)
    assert rec.metrics["evaluated"] == names

    # Finished and fresh: skipped (and the table printed again).
    cli(["eval", str(tiny_config), *overrides, *extra])
    assert run.load_manifest()["eval"].ended == rec.ended
    assert "full" in capsys.readouterr().out


def test_eval_loads_each_model_once_whatever_the_configurations_share(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import sentence_transformers

    import ragtune.eval.forgetting
    import ragtune.pipeline.stack

    overrides = [*_overrides(tiny_bert_dir, tiny_llama_dir), "eval.generation_max_queries=2"]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    finish_upstream(run, tiny_bert_dir, tiny_llama_dir)
    loads: list[tuple] = []
    real_init = sentence_transformers.SentenceTransformer.__init__

    def st_init(self, *args, **kwargs):
        loads.append(("SentenceTransformer",))  # any embedder load at all, through the loader or not
        real_init(self, *args, **kwargs)

    def counted(module, name: str):
        load = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *args: loads.append((name, *args[:2])) or load(*args))

    monkeypatch.setattr(sentence_transformers.SentenceTransformer, "__init__", st_init)
    for name in ("load_embedder", "load_reranker", "load_generator"):
        counted(ragtune.pipeline.stack, name)
    counted(ragtune.eval.forgetting, "load_generator")  # the forgetting check's own loads (none: it asks the loaded)
    extra = ["eval.probes.close=[[PTO, Primary Takeover]]", "eval.custom={base_embedder: {embedder: base}}"]
    cli(["eval", str(tiny_config), *overrides, *extra, "assemble.truncate_dim=16"])
    report = json.loads(run.path("eval/report.json").read_text())
    # Seven built-in configurations and a custom one over two embedders (the tuned one at two dimensions), two
    # rerankers and two generators (base, base + adapter), probed and checked for forgetting: each loaded once.
    assert len(report["configurations"]) == 8 and report["forgetting"]["questions"] == 40
    assert set(report["probes"]) == {"base", "tuned"}
    embed, rerank = str(run.path("embed/model")), str(run.path("rerank"))
    assert sorted(loads, key=repr) == sorted(
        [
            ("SentenceTransformer",),
            ("SentenceTransformer",),
            ("load_embedder", str(tiny_bert_dir)),
            ("load_embedder", embed),
            ("load_generator", str(tiny_llama_dir), None),
            ("load_generator", str(tiny_llama_dir), str(run.path("raft/adapter"))),
            ("load_reranker", f"{rerank}/model", 256),
            ("load_reranker", f"{rerank}/untrained", 256),
        ],
        key=repr,
    )


def test_generation_sample_keeps_retrieval_on_every_query(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    overrides = _overrides(tiny_bert_dir, tiny_llama_dir)
    cli(["data", str(tiny_config), *overrides])
    cli(["eval", str(tiny_config), *overrides, "eval.generation_max_queries=1", "eval.configurations=[rag_only]"])
    run = run_dir_of(tiny_config)
    report = json.loads(run.path("eval/report.json").read_text())
    assert report["queries"]["with_answers"] == 1 < report["queries"]["n"]
    with run.path("eval/per_query.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == report["queries"]["n"]
    ndcg = [float(r["ndcg@10"]) for r in rows]
    assert all(0 <= x <= 1 for x in ndcg)
    assert sum(ndcg) / len(ndcg) == pytest.approx(report["configurations"]["rag_only"]["metrics"]["ndcg@10"])
    scored = [float(r["f1"]) for r in rows if r["f1"] != ""]
    assert len(scored) == 1 and 0 <= scored[0] <= 1
    assert scored[0] == pytest.approx(report["configurations"]["rag_only"]["metrics"]["f1"])


def test_eval_after_data_only_runs_the_baseline_and_says_what_was_skipped(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, caplog
) -> None:
    overrides = _overrides(tiny_bert_dir, tiny_llama_dir)
    cli(["data", str(tiny_config), *overrides])
    cli(["eval", str(tiny_config), *overrides, "eval.generation=false"])
    report = json.loads(run_dir_of(tiny_config).path("eval/report.json").read_text())
    assert list(report["configurations"]) == ["rag_only", "rag_hybrid"]  # the untrained baselines
    assert set(report["skipped"]) == {"embed", "embed_rerank_untrained", "embed_rerank", "extractive", "full"}
    assert "ragtune embed" in report["skipped"]["embed"]
    assert "skipping configuration 'embed'" in caplog.text
    assert report["mode"] == "retrieval-only" and set(report["verdicts"]) == {"rag_hybrid"}  # baselines only
    assert report["forgetting"] is None  # no tuned generator was evaluated
    run = run_dir_of(tiny_config)
    assert set(run.load_manifest()["eval"].inputs) == {"data/corpus", "data/queries"}  # what was evaluated

    # Stage 1 finishing makes the evaluation stale: it reruns and now compares `embed` too.
    simulate_embed_stage(run, tiny_bert_dir)
    cli(["eval", str(tiny_config), *overrides, "eval.generation=false"])
    report = json.loads(run.path("eval/report.json").read_text())
    assert list(report["configurations"]) == ["rag_only", "rag_hybrid", "embed"] and "embed" in report["verdicts"]
    assert "embed/model" in run.load_manifest()["eval"].inputs


def test_too_few_held_out_queries_warn_loudly_and_the_note_names_its_recall(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, tmp_path: Path, capsys
) -> None:
    overrides = [*_overrides(tiny_bert_dir, tiny_llama_dir), "eval.generation=false"]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    capsys.readouterr()
    cli(["eval", str(tiny_config), *overrides])  # the fixture holds out a handful of questions: fewer than 30
    printed = capsys.readouterr().out
    report = json.loads(run.path("eval/report.json").read_text())
    n = report["queries"]["n"]
    assert 1 <= n < 30
    warning = f"only {n} held-out queries (eval.min_queries: 30)"
    assert f"WARNING: {warning}" in printed.splitlines()[-1]
    assert f"> **Warning:** {warning}" in run.path("eval/report.md").read_text()
    assert report["fine_tune_note"].startswith("No call on fine-tuning") and "pays on" not in report["fine_tune_note"]
    # the fixture's questions carry evidence: the note's recall counts evidence chunks, and says so
    assert report["baseline_recall"]["level"] == "chunk"

    cli(["eval", str(tiny_config), *overrides, "eval.min_queries=1"])
    report = json.loads(run.path("eval/report.json").read_text())
    assert report["warnings"] == [] and "recall@10 of the evidence chunks" in report["fine_tune_note"]

    # Questions without evidence are labelled per document: the note reads document recall.
    no_evidence = tmp_path / "no_evidence.jsonl"
    rows = [json.loads(line) for line in (FIXTURES / "questions.jsonl").read_text().splitlines() if line.strip()]
    no_evidence.write_text("".join(json.dumps({k: v for k, v in q.items() if k != "evidence"}) + "\n" for q in rows))
    doc_level = [*overrides, f"data.questions={no_evidence}", "eval.min_queries=1"]
    cli(["data", str(tiny_config), *doc_level])
    cli(["eval", str(tiny_config), *doc_level])
    report = json.loads(run.path("eval/report.json").read_text())
    assert report["baseline_recall"]["level"] == "document"
    assert report["fine_tune_note"].startswith("Baseline document recall@10 (relevance labelled per document")


def test_beir_dataset_without_answers_evaluates_retrieval_only(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    beir = tmp_path / "beir"
    (beir / "qrels").mkdir(parents=True)
    docs = {
        "d1": "Heron fails over to the standby router within fifteen minutes.",
        "d2": "Tortoise drains the batch queue with a forty minute grace period.",
        "d3": "Ledgerfish shard leases expire after ninety days unless renewed.",
        "d4": "Pondview dashboards refresh every five minutes from the metrics store.",
    }
    (beir / "corpus.jsonl").write_text(
        "".join(json.dumps({"_id": k, "title": "", "text": v}) + "\n" for k, v in docs.items())
    )
    queries = {"q1": "router failover time", "q2": "queue drain grace", "q3": "lease expiry", "q4": "dashboard refresh"}
    (beir / "queries.jsonl").write_text("".join(json.dumps({"_id": k, "text": v}) + "\n" for k, v in queries.items()))
    qrels = "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t{1 + i % 2}\n" for i in range(1, 5))
    (beir / "qrels" / "test.tsv").write_text(qrels)

    overrides = [*_overrides(tiny_bert_dir, tiny_llama_dir), "data.docs=", "data.questions=", f"data.beir={beir}"]
    cli(["data", str(tiny_config), *overrides])
    cli(["eval", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    report = json.loads(run.path("eval/report.json").read_text())
    assert report["mode"] == "retrieval-only"
    assert report["queries"]["with_answers"] == 0 and report["queries"]["n"] >= 1
    assert not {"em", "f1", "judge", "abstain_no_oracle"} & set(report["metrics"])
    assert {"ndcg@10", "mrr@10", "recall@10", "hit@1"} <= set(report["configurations"]["rag_only"]["metrics"])
    assert "F1" not in run.path("eval/report.md").read_text()
    with run.path("eval/per_query.csv").open() as fh:
        assert "answer" not in next(csv.reader(fh))


def test_with_matryoshka_dims_the_report_measures_each_dimension_and_the_served_one(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    overrides = [
        *_overrides(tiny_bert_dir, tiny_llama_dir),
        "eval.generation=false",
        "eval.configurations=[rag_only, embed]",
        "embed.matryoshka_dims=[16, 4]",
        "assemble.truncate_dim=8",
    ]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)
    cli(["eval", str(tiny_config), *overrides])
    report = json.loads(run.path("eval/report.json").read_text())
    table = report["dimensions"]
    assert (table["full_dimension"], table["served_dimension"]) == (32, 8)
    rows = {row["dimension"]: row for row in table["rows"]}
    assert list(rows) == [32, 16, 8, 4]  # the full one, the trained ones and the served one, widest first
    confs = report["configurations"]
    # The tuned embedder serves at assemble.truncate_dim, and the table's row at it is that configuration's figures;
    # plain RAG is the base at its full dimension, the table's full row.
    assert confs["embed"]["components"]["truncate_dim"] == 8 and "truncate_dim" not in confs["rag_only"]["components"]
    for metric in ("ndcg@10", "recall@10"):
        assert rows[8]["tuned"][metric] == pytest.approx(confs["embed"]["metrics"][metric], abs=1e-9)
        assert rows[32]["base"][metric] == pytest.approx(confs["rag_only"]["metrics"][metric], abs=1e-9)
    assert rows[4]["tuned"] != rows[32]["tuned"]  # a four-dimensional cut of a random tiny model ranks otherwise
    markdown = run.path("eval/report.md").read_text()
    assert "## Matryoshka dimensions (embed.matryoshka_dims)" in markdown and "| 8 (served) |" in markdown
    assert "Matryoshka dimensions" in run.path("eval/report.html").read_text()
    # Corpus embeddings were cached once per model, at the full dimension.
    assert [torch.load(p).shape[1] for p in run.path("cache/embeddings").iterdir()] == [32]
