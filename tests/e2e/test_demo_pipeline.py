"""The demo domain end to end with the real bundled models, at minimal steps (`ragtune run`)."""

import json
from pathlib import Path

import pytest

from ragtune.app.cli import main as cli
from ragtune.pipeline.rundir import RunDir, read_jsonl

ROOT = Path(__file__).parents[2]
MINIMAL = [
    "synth.max_chunks=12",  # real SmolLM2 query generation, a handful of chunks (about a quarter yield one)
    "synth.resample_candidates=0",
    "embed.max_steps=2",
    "embed.batch_size=8",
    "embed.dev_fraction=0",
    "rerank.max_steps=2",
    "rerank.batch_size=2",
    "rerank.query_likelihood.max_length=64",
    "rerank.mining.num_negatives=2",
    "rerank.retrieve_top_k=5",
    "raft.max_samples=4",
    "raft.max_steps=1",
    "raft.batch_size=1",
    "eval.max_queries=4",
    "eval.bootstrap_samples=100",
    "assemble.top_k=5",
    "assemble.top_n=2",
    "assemble.max_new_tokens=16",
]


@pytest.mark.e2e
def test_demo_pipeline_with_bundled_models(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    cli(["run", "configs/demo.yaml", f"run.root={tmp_path}", *MINIMAL])
    run = RunDir(tmp_path / "demo")

    stages = run.load_manifest()
    for stage in ("data", "embed", "rerank", "raft_build", "raft", "eval"):
        assert stages[stage].status == "done", stage
    queries = read_jsonl(run.path("data/queries.jsonl"))
    assert any(q["origin"] == "synthetic" for q in queries) and any(q["split"] == "eval" for q in queries)
    for artifact in (
        "embed/model/model.safetensors",
        "embed/model/README.md",
        "embed/metrics.json",
        "rerank/model/ragtune_reranker.json",  # the bundled SmolLM2 as a query-likelihood reranker
        "rerank/model/adapter_model.safetensors",
        "rerank/negatives/report.json",
        "rerank/negatives/scores.png",
        "rerank/negatives/audit.md",
        "rerank/metrics.json",
        "raft/train.jsonl",
        "raft/adapter/adapter_config.json",
        "eval/report.md",
        "eval/per_query.csv",
    ):
        assert run.path(artifact).exists(), artifact
    report = json.loads(run.path("eval/report.json").read_text())
    assert set(report["configurations"]) >= {"rag_only", "embed", "embed_rerank", "full"}
    assert list(run.path("eval").glob("*.png"))
    assert "rag_only" in capsys.readouterr().out  # the table is printed

    # The assembled LlamaIndex engine answers from the persisted index with every tuned component.
    capsys.readouterr()
    cli(["query", str(run.root), "How long may a Millpond failover take?"])
    printed = capsys.readouterr().out
    assert printed.startswith("Answer:") and "Sources:" in printed and "  2. " in printed
    assert run.path("index/meta.json").exists()

    # Everything is finished and fresh: a second run skips every stage.
    ended = {name: rec.ended for name, rec in stages.items()}
    cli(["run", "configs/demo.yaml", f"run.root={tmp_path}", *MINIMAL])
    assert {name: rec.ended for name, rec in run.load_manifest().items()} == ended
