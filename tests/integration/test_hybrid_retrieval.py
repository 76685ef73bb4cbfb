"""assemble.retrieval: hybrid — served by the engine and evaluated by the harness with the same fused order."""

import json
import shutil
import time
from pathlib import Path

import pytest
from fakes.upstream import run_dir_of, tiny_model_overrides

from ragtune.app.assemble import build_query_engine
from ragtune.app.cli import main as cli
from ragtune.eval.rankings import retrieve
from ragtune.pipeline.config import ConfigError, load_config
from ragtune.pipeline.hybrid import HybridRetriever, bm25_rankings, bm25_retriever, fuse_rankings
from ragtune.pipeline.nodes import chunk_id_of
from ragtune.pipeline.ranking import per_query_metrics
from ragtune.pipeline.retrieval import DenseRetriever
from ragtune.pipeline.rundir import RunDir, read_jsonl


def _overrides(bert: Path, llama: Path) -> list[str]:
    return [
        *tiny_model_overrides(bert, llama),
        "assemble.max_new_tokens=4",
        "assemble.hybrid_depth=6",
        "eval.bootstrap_samples=100",
    ]


def _record_embedder(run: RunDir, bert: Path) -> None:
    shutil.copytree(bert, run.path("embed/model"))
    run.record("embed", config_hash="t", inputs={}, outputs={"model": "embed/model"}, started=time.time())


@pytest.mark.parametrize("store", ["simple", "qdrant"])
def test_served_hybrid_order_equals_the_harness_fusion(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, store: str
) -> None:
    overrides = [*_overrides(tiny_bert_dir, tiny_llama_dir), f"assemble.vector_store={store}"]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    _record_embedder(run, tiny_bert_dir)
    cfg = load_config(tiny_config, overrides)
    choice = cfg.assemble.model_copy(update={"retrieval": "hybrid", "reranker": "none", "generator": "base"})
    engine = build_query_engine(cfg, run, choice)
    assert isinstance(engine.retriever, HybridRetriever)

    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    queries = [q["text"] for q in read_jsonl(run.path("data/queries.jsonl"))]
    dense = retrieve(DenseRetriever.load(str(run.path("embed/model")), corpus), queries, choice.hybrid_depth)
    sparse = bm25_rankings(bm25_retriever(corpus, choice.hybrid_depth), queries)
    expected, _ = fuse_rankings(dense.ranked, sparse, choice.hybrid_depth, choice.top_n)
    served = [[chunk_id_of(n.node) for n in engine.retriever.retrieve(q)] for q in queries]
    assert served == expected
    assert any(e != d[: choice.top_n] for e, d in zip(expected, dense.ranked, strict=True))  # BM25 changed some
    response = engine.query(queries[0])
    assert [chunk_id_of(n.node) for n in response.source_nodes] == expected[0]


def test_hybrid_is_an_eval_configuration_measured_on_the_tiny_run(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, capsys
) -> None:
    overrides = [*_overrides(tiny_bert_dir, tiny_llama_dir), "eval.generation=false"]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    _record_embedder(run, tiny_bert_dir)
    custom = "eval.custom={embed_hybrid: {embedder: tuned, reranker: none, retrieval: hybrid}}"
    cli(["eval", str(tiny_config), *overrides, "eval.configurations=[rag_only, embed]", custom])
    report = json.loads(run.path("eval/report.json").read_text())
    confs = report["configurations"]
    # Same components as `embed`, so only the retrieval setting keeps it from being skipped as a twin.
    assert list(confs) == ["rag_only", "embed", "embed_hybrid"] and report["skipped"] == {}
    assert confs["embed_hybrid"]["retrieval"] == "hybrid" and confs["embed"]["retrieval"] == "dense"

    # Its metrics are those of the fused ranking, computed here independently.
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    queries = [q for q in read_jsonl(run.path("data/queries.jsonl")) if q["split"] == "eval"]
    texts = [q["text"] for q in queries]
    depth = 10
    dense = retrieve(DenseRetriever.load(str(run.path("embed/model")), corpus), texts, depth)
    fused, _ = fuse_rankings(dense.ranked, bm25_rankings(bm25_retriever(corpus, depth), texts), 6, depth)
    rows = [per_query_metrics(r, q["relevance"], report["k_values"]) for r, q in zip(fused, queries, strict=True)]
    expected = sum(r["ndcg@10"] for r in rows) / len(rows)
    assert confs["embed_hybrid"]["metrics"]["ndcg@10"] == pytest.approx(expected)
    print(
        f"\ntiny run nDCG@10: embed {confs['embed']['metrics']['ndcg@10']:.3f}, "
        f"embed_hybrid {confs['embed_hybrid']['metrics']['ndcg@10']:.3f} ({len(queries)} queries)"
    )


def test_hybrid_depth_below_top_k_is_an_error_naming_the_key(tiny_config: Path) -> None:
    with pytest.raises(ConfigError, match="assemble") as err:
        load_config(tiny_config, ["assemble.retrieval=hybrid", "assemble.hybrid_depth=2"])
    assert "hybrid_depth (2) must be at least top_k (4)" in str(err.value)
