"""The config templates a new user copies: what they need to run where they say they run."""

from pathlib import Path

from ragtune.pipeline.config import LLMConfig, load_config

ROOT = Path(__file__).parents[2]


def test_the_cpu_template_runs_offline_on_bundled_models_within_small_budgets() -> None:
    cfg = load_config(ROOT / "configs" / "templates" / "cpu.yaml")
    rerank = cfg.rerank
    models = [cfg.embed.base_model, rerank.cross_encoder.base_model, rerank.query_likelihood.generator]
    models.append(cfg.raft.base_model)
    models.append(cfg.synth.round_trip_model)
    assert all(ref.startswith("bundled:") for ref in models), models
    backends: list[LLMConfig] = [cfg.synth.llm, cfg.raft.teacher]
    assert all(b.provider in ("local", "extractive") for b in backends)
    assert all(b.provider == "extractive" or b.model.startswith("bundled:") for b in backends)
    assert cfg.synth.max_chunks and cfg.synth.resample_candidates == 0
    assert 0 < cfg.rerank.max_steps <= 50 and 0 < cfg.raft.max_steps <= 10 and cfg.raft.max_samples
    assert cfg.eval.generation_max_queries
    gpl = cfg.gpl  # on in the template: a teacher that needs no download, and at most about 45 batches of 32
    assert gpl.teacher in ("hybrid", "base", "tuned") or gpl.teacher.startswith("bundled:")
    assert gpl.negatives_per_query * (gpl.pseudo_queries + cfg.synth.max_chunks) <= 1400 and gpl.group_by_length
