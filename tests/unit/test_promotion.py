"""The promotion gate: under assemble.*: auto, a tuned component serves only if it beat its baseline on dev."""

from ragtune.pipeline.components import resolve_components
from ragtune.pipeline.config import AssembleConfig, RagtuneConfig, load_config
from ragtune.pipeline.models import resolve_model
from ragtune.pipeline.promotion import (
    EmbedFigures,
    GplFigures,
    RaftFigures,
    RerankFigures,
    embedder_promotion,
    format_promotions,
    generator_promotion,
    promotions,
    reranker_promotion,
    resolve_auto,
    tuned_embedder,
)
from ragtune.pipeline.rundir import RunDir


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


def _two_embedders(tmp_path, gpl_dev: float) -> tuple[RunDir, RagtuneConfig]:
    """A run whose stage 1 (dev 0.55, base 0.50) and GPL round (``gpl_dev``, on that stage 1 model) finished."""
    run = RunDir(tmp_path / "run")
    for stage in ("embed", "gpl"):
        run.path(f"{stage}/model").mkdir(parents=True)
        run.path(f"{stage}/model/weights.bin").write_text(stage)
    embed = {"dev_ndcg@10_base": 0.50, "dev_ndcg@10_tuned": 0.55, "dev_queries": 20}
    run.record("embed", config_hash="h", inputs={}, outputs={"model": "embed/model"}, metrics=embed, started=0.0)
    gpl = {"dev_ndcg@10_embed": 0.55, "dev_ndcg@10_gpl": gpl_dev, "dev_queries": 20}
    inputs = run.input_hashes("embed", "model")
    run.record("gpl", config_hash="h", inputs=inputs, outputs={"model": "gpl/model"}, metrics=gpl, started=0.0)
    return run, load_config("configs/tiny.yaml", ["gpl.enabled=true"])


def _served_embedder(cfg: RagtuneConfig, run: RunDir, embedder: str = "tuned") -> str:
    choice = AssembleConfig(embedder=embedder, reranker="none")
    return resolve_components(cfg, run, choice, need_generator=False).embedder


def test_a_gpl_model_that_does_worse_on_dev_than_stage_1_is_not_served(tmp_path) -> None:
    run, cfg = _two_embedders(tmp_path, gpl_dev=0.53)
    assert tuned_embedder(run.load_manifest(), gpl_enabled=True).stage == "embed"
    # `tuned` and a promoted `auto` both name stage 1's model; the gate says why, on which figures.
    assert _served_embedder(cfg, run) == _served_embedder(cfg, run, "auto") == str(run.path("embed/model"))
    decided = promotions(run, gpl_enabled=True)["embedder"]
    assert decided.promoted
    assert decided.reason == (
        "dev nDCG@10 0.5500 vs base 0.5000 (20 queries); "
        "stage 1's model: GPL dev nDCG@10 0.5300 did not beat its 0.5500 (dense)"
    )
    assert "embedder   tuned  (dev nDCG@10 0.5500 vs base" in format_promotions(run, gpl_enabled=True)


def test_a_gpl_model_that_beats_stage_1_on_dev_is_the_tuned_embedder(tmp_path) -> None:
    run, cfg = _two_embedders(tmp_path, gpl_dev=0.58)
    assert _served_embedder(cfg, run) == _served_embedder(cfg, run, "auto") == str(run.path("gpl/model"))
    decided = promotions(run, gpl_enabled=True)["embedder"]
    assert decided.promoted and decided.reason == (
        "GPL model, dev nDCG@10 0.5800 vs base 0.5000 (20 queries); "
        "GPL dev nDCG@10 0.5800 beat stage 1's 0.5500 (dense)"
    )
    # Which embedder serves is an input of what measures it: eval reruns when the GPL round does.
    comp = resolve_components(cfg, run, AssembleConfig(embedder="tuned", reranker="none"), need_generator=False)
    assert comp.inputs == run.input_hashes("gpl", "model")
    # Off in the config, or stale (stage 1 retrained since), it is not served.
    off = load_config("configs/tiny.yaml")
    assert _served_embedder(off, run) == str(run.path("embed/model"))
    assert promotions(run)["embedder"].reason == "dev nDCG@10 0.5500 vs base 0.5000 (20 queries)"
    run.path("embed/model/weights.bin").write_text("retrained")
    embed = run.load_manifest()["embed"].metrics
    run.record("embed", config_hash="h2", inputs={}, outputs={"model": "embed/model"}, metrics=embed, started=0.0)
    assert tuned_embedder(run.load_manifest(), gpl_enabled=True).reason.endswith("stale (stage 1 retrained since)")
    assert _served_embedder(cfg, run) == str(run.path("embed/model"))


def test_a_gpl_model_beating_stage_1_but_not_the_base_serves_only_when_forced(tmp_path) -> None:
    run, cfg = _two_embedders(tmp_path, gpl_dev=0.58)
    embed = {"dev_ndcg@10_base": 0.60, "dev_ndcg@10_tuned": 0.55, "dev_queries": 20}
    inputs = run.load_manifest()["embed"].inputs
    run.record("embed", config_hash="h", inputs=inputs, outputs={"model": "embed/model"}, metrics=embed, started=0.0)
    assert not promotions(run, gpl_enabled=True)["embedder"].promoted
    assert _served_embedder(cfg, run, "auto") == resolve_model(cfg.embed.base_model)
    assert _served_embedder(cfg, run, "tuned") == str(run.path("gpl/model"))


def test_a_gpl_model_worse_alone_but_better_inside_hybrid_is_the_tuned_embedder_where_hybrid_may_serve(
    tmp_path,
) -> None:
    run, cfg = _two_embedders(tmp_path, gpl_dev=0.53)
    hybrid = {"dev_ndcg@10_base_hybrid": 0.57, "dev_ndcg@10_tuned_hybrid": 0.56}
    embed = {"dev_ndcg@10_base": 0.50, "dev_ndcg@10_tuned": 0.55, "dev_queries": 20} | hybrid
    inputs = run.load_manifest()["embed"].inputs
    run.record("embed", config_hash="h", inputs=inputs, outputs={"model": "embed/model"}, metrics=embed, started=0.0)
    gpl = {"dev_ndcg@10_embed": 0.55, "dev_ndcg@10_gpl": 0.53, "dev_queries": 20}
    gpl |= {"dev_ndcg@10_embed_hybrid": 0.56, "dev_ndcg@10_gpl_hybrid": 0.59}
    inputs = run.input_hashes("embed", "model")
    run.record("gpl", config_hash="h", inputs=inputs, outputs={"model": "gpl/model"}, metrics=gpl, started=0.0)
    manifest = run.load_manifest()
    assert tuned_embedder(manifest, gpl_enabled=True).reason == (
        "GPL dev nDCG@10 0.5900 beat stage 1's 0.5600 (hybrid)"
    )
    # auto serves it inside hybrid retrieval: 0.59 beats base hybrid's 0.57 and both dense figures.
    decided = promotions(run, gpl_enabled=True)
    assert decided["embedder"].promoted and decided["retrieval"].promoted
    assert _served_embedder(cfg, run, "auto") == str(run.path("gpl/model"))
    # Dense retrieval fixed by the user: GPL's dense figure (0.53) does not beat stage 1's (0.55).
    assert tuned_embedder(manifest, gpl_enabled=True, retrieval="dense").stage == "embed"
    dense = cfg.model_copy(update={"assemble": cfg.assemble.model_copy(update={"retrieval": "dense"})})
    assert _served_embedder(dense, run) == str(run.path("embed/model"))
    assert not promotions(run, True, AssembleConfig(retrieval="dense"))["embedder"].reason.startswith("GPL model")


def test_without_a_dev_slice_the_gpl_round_is_the_tuned_embedder_but_auto_does_not_serve_it(tmp_path) -> None:
    run, cfg = _two_embedders(tmp_path, gpl_dev=0.58)
    inputs = run.load_manifest()["gpl"].inputs
    unmeasured = {"dev_ndcg@10_embed": None, "dev_ndcg@10_gpl": None, "dev_queries": 0}
    run.record("gpl", config_hash="h", inputs=inputs, outputs={"model": "gpl/model"}, metrics=unmeasured, started=0.0)
    run.record("embed", config_hash="h", inputs={}, outputs={"model": "embed/model"}, metrics={}, started=0.0)
    # the last round is kept, as stage 1 keeps its last step
    assert tuned_embedder(run.load_manifest(), gpl_enabled=True).stage == "gpl"
    assert _served_embedder(cfg, run, "tuned") == str(run.path("gpl/model"))
    assert not promotions(run, gpl_enabled=True)["embedder"].promoted  # no dev figure against the base
    assert _served_embedder(cfg, run, "auto") == resolve_model(cfg.embed.base_model)


def test_the_gate_chooses_hybrid_retrieval_and_the_tuned_embedder_inside_it_where_dev_says_so(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    figures = {"dev_ndcg@10_base": 0.50, "dev_ndcg@10_tuned": 0.49, "dev_queries": 20}
    _record(run, "embed", {**figures, "dev_ndcg@10_base_hybrid": 0.56, "dev_ndcg@10_tuned_hybrid": 0.58})
    served = resolve_auto(AssembleConfig(), run)
    assert (served.embedder, served.retrieval) == ("tuned", "hybrid")  # tuned adds to BM25 though worse alone
    assert resolve_auto(AssembleConfig(retrieval="dense"), run).embedder == "base"  # dense alone: base is better
    decided = promotions(run)
    assert decided["retrieval"].promoted and "tuned hybrid 0.5800" in decided["retrieval"].reason
    assert "retrieval  hybrid  (dev nDCG@10 base dense 0.5000" in format_promotions(run)
    # The eval harness's forced embedder still gets the better mode for it.
    assert resolve_auto(AssembleConfig(embedder="base"), run).retrieval == "hybrid"


def test_hybrid_serves_only_when_it_beats_dense_and_ties_keep_the_simpler_stage(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    figures = {"dev_ndcg@10_base": 0.5, "dev_ndcg@10_tuned": 0.6}
    _record(run, "embed", {**figures, "dev_ndcg@10_base_hybrid": 0.5, "dev_ndcg@10_tuned_hybrid": 0.6})
    served = resolve_auto(AssembleConfig(), run)
    assert (served.embedder, served.retrieval) == ("tuned", "dense")


def test_the_generator_gate_serves_the_extractive_answer_when_both_llms_lose_to_it(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    _record(run, "raft", {"dev_f1_base": 0.08, "dev_f1_tuned": 0.03, "dev_f1_extractive": 0.15, "dev_questions": 18})
    decided = promotions(run)["generator"]
    assert (decided.promoted, decided.serves) == (False, "extractive")
    assert decided.reason == "dev F1 extractive 0.1500 vs base 0.0800, tuned 0.0300 (18 questions)"
    assert resolve_auto(AssembleConfig(), run).generator == "extractive"
    assert "generator  extractive  (dev F1 extractive 0.1500" in format_promotions(run)
    # A forced choice is still the user's.
    assert resolve_auto(AssembleConfig(generator="tuned"), run).generator == "tuned"


def test_the_generator_gate_picks_the_best_of_three_and_ties_go_to_base_then_tuned() -> None:
    def served(base: float, tuned: float, extractive: float | None) -> str:
        p = generator_promotion({"dev_f1_base": base, "dev_f1_tuned": tuned, "dev_f1_extractive": extractive})
        return p.serves or ("tuned" if p.promoted else "base")

    assert served(0.2, 0.3, 0.1) == "tuned"
    assert served(0.3, 0.2, 0.1) == "base"
    assert served(0.1, 0.2, 0.3) == "extractive"
    assert served(0.2, 0.2, 0.2) == "base"
    assert served(0.1, 0.2, 0.2) == "tuned"
    assert served(0.1, 0.2, None) == "tuned"  # a run recorded before the extractive figure: two-way


GUIDED = {
    "dev_f1_base": 0.08,
    "dev_f1_tuned": 0.05,
    "dev_f1_extractive": 0.15,
    "dev_f1_base_guided": 0.10,
    "dev_f1_tuned_guided": 0.30,
    "dev_questions": 18,
}


def test_the_quote_gate_serves_the_tuned_generator_guided_when_it_beats_every_other_answerer(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    _record(run, "raft", GUIDED)
    served = resolve_auto(AssembleConfig(), run)
    assert (served.generator, served.quote) == ("tuned", "extractive")
    decided = promotions(run)
    assert decided["generator"].promoted and decided["quote"].promoted
    assert decided["quote"].reason == (
        "dev F1 tuned guided 0.3000 vs base 0.0800, tuned 0.0500, extractive 0.1500, base guided 0.1000 (18 questions)"
    )
    assert "quote      extractive  (dev F1 tuned guided 0.3000" in format_promotions(run)
    # A fixed quote narrows the generator's choice, and a fixed generator the quote's.
    assert resolve_auto(AssembleConfig(quote="generator"), run).generator == "extractive"
    base = resolve_auto(AssembleConfig(generator="base"), run)
    assert (base.generator, base.quote) == ("base", "extractive")
    assert resolve_auto(AssembleConfig(generator="base", quote="generator"), run).quote == "generator"
    # The extractive answerer has no generator to guide: serving it writes no quote in.
    assert resolve_auto(AssembleConfig(generator="extractive"), run).quote == "generator"


def test_the_quote_gate_keeps_the_generators_own_quote_unless_guided_answers_score_higher(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    _record(run, "raft", GUIDED | {"dev_f1_tuned": 0.35})
    served = resolve_auto(AssembleConfig(), run)
    assert (served.generator, served.quote) == ("tuned", "generator")
    # A run recorded before the guided figures: the quote is the generator's own.
    _record(run, "raft", {"dev_f1_base": 0.1, "dev_f1_tuned": 0.2, "dev_f1_extractive": 0.15, "dev_questions": 18})
    assert not promotions(run)["quote"].promoted
    assert resolve_auto(AssembleConfig(), run).quote == "generator"
    # Without the RAFT stage nothing is measured: the base generator writing its own quote.
    fresh = RunDir(tmp_path / "fresh")
    fresh.root.mkdir(parents=True)
    assert (resolve_auto(AssembleConfig(), fresh).generator, resolve_auto(AssembleConfig(), fresh).quote) == (
        "base",
        "generator",
    )


def test_each_stage_writes_its_gate_figures_under_the_keys_runs_already_hold() -> None:
    assert EmbedFigures.keys() == {
        "queries": "dev_queries",
        "base": "dev_ndcg@10_base",
        "tuned": "dev_ndcg@10_tuned",
        "base_hybrid": "dev_ndcg@10_base_hybrid",
        "tuned_hybrid": "dev_ndcg@10_tuned_hybrid",
    }
    assert set(RerankFigures.keys().values()) == {
        "dev_queries",
        "fusion_weight",
        "dev_ndcg@10_retriever",
        "dev_ndcg@10_fused",
    }
    assert set(GplFigures.keys().values()) == {
        "dev_queries",
        "dev_ndcg@10_embed",
        "dev_ndcg@10_gpl",
        "dev_ndcg@10_embed_hybrid",
        "dev_ndcg@10_gpl_hybrid",
    }
    assert set(RaftFigures.keys().values()) == {
        "dev_questions",
        "dev_f1_base",
        "dev_f1_tuned",
        "dev_f1_extractive",
        "dev_f1_base_guided",
        "dev_f1_tuned_guided",
    }
    figures = RaftFigures(questions=8, base=0.2, tuned=0.3)
    assert figures.as_metrics(skip_unmeasured=True) == {"dev_questions": 8, "dev_f1_base": 0.2, "dev_f1_tuned": 0.3}
    assert RaftFigures.from_metrics({"steps": 3, **figures.as_metrics()}) == figures  # other metrics are ignored
    # The gate reads what the record wrote: a tuned generator better on dev is promoted.
    assert generator_promotion(figures.as_metrics()).promoted
    assert embedder_promotion(EmbedFigures(queries=20, base=0.5, tuned=0.6).as_metrics()).promoted
    assert not reranker_promotion(
        RerankFigures(queries=9, fusion_weight=0.0, retriever=0.5, fused=0.5).as_metrics()
    ).promoted
