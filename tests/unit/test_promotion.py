"""The promotion gate: under assemble.*: auto, a tuned component serves only if it beat its baseline on dev."""

from pipeline.config import AssembleConfig
from pipeline.promotion import (
    embedder_promotion,
    format_promotions,
    generator_promotion,
    promotions,
    reranker_promotion,
    resolve_auto,
)
from pipeline.rundir import RunDir


def _record(run: RunDir, stage: str, metrics: dict) -> None:
    out = run.path(f"{stage}/out.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(stage)
    run.record(stage, config_hash="h", inputs={}, outputs={"out": f"{stage}/out.txt"}, metrics=metrics, started=0.0)


def test_a_harmful_tuned_component_is_not_promoted(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    _record(run, "embed", {"dev_ndcg@10_base": 0.62, "dev_ndcg@10_tuned": 0.55, "dev_queries": 20})  # worse on dev
    _record(run, "rerank", {"fusion_weight": 0.0, "dev_ndcg@10_fused": 0.55, "dev_ndcg@10_retriever": 0.55})
    _record(run, "raft", {"dev_f1_base": 0.20, "dev_f1_tuned": 0.05, "dev_questions": 8})
    decided = promotions(run)
    assert not any(p.promoted for p in decided.values())
    assert decided["embedder"].reason == "dev nDCG@10 0.5500 vs base 0.6200 (20 queries)"
    served = resolve_auto(AssembleConfig(), run)
    assert (served.embedder, served.reranker, served.generator) == ("base", "none", "base")
    # A forced choice is left alone: the eval harness's ablations still measure the tuned parts.
    forced = resolve_auto(AssembleConfig(embedder="tuned", reranker="tuned", generator="tuned"), run)
    assert (forced.embedder, forced.reranker, forced.generator) == ("tuned", "tuned", "tuned")
    text = format_promotions(run)
    assert "embedder   baseline  (dev nDCG@10 0.5500 vs base 0.6200" in text


def test_components_that_beat_their_baselines_on_dev_are_promoted(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    _record(run, "embed", {"dev_ndcg@10_base": 0.50, "dev_ndcg@10_tuned": 0.58, "dev_queries": 20})
    _record(run, "rerank", {"fusion_weight": 0.4, "dev_ndcg@10_fused": 0.63, "dev_ndcg@10_retriever": 0.58})
    served = resolve_auto(AssembleConfig(generator="base"), run)
    assert (served.embedder, served.reranker, served.generator) == ("tuned", "tuned", "base")
    # raft has not run: not trained, so not promoted.
    assert promotions(run)["generator"].reason == "not trained: the raft stage has not finished"


def test_a_component_without_a_dev_figure_is_not_promoted() -> None:
    assert not embedder_promotion({"dev_ndcg@10_base": None, "dev_ndcg@10_tuned": None}).promoted
    assert not reranker_promotion({"fusion_weight": 0.0}).promoted
    assert not generator_promotion({"f1": 0.9}).promoted
    # A weight the user configured is their decision, and says it was not measured.
    configured = reranker_promotion({"fusion_weight": 0.5})
    assert configured.promoted and "not measured" in configured.reason


def test_an_unfinished_stage_is_not_promoted(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    _record(run, "embed", {"dev_ndcg@10_base": 0.50, "dev_ndcg@10_tuned": 0.58})
    run.mark_failed("rerank", "boom")
    assert promotions(run)["embedder"].promoted and not promotions(run)["reranker"].promoted
