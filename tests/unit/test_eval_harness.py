from pathlib import Path

import pytest

from ragtune.eval.answers import score_generation
from ragtune.eval.comparison import compare, verdicts
from ragtune.eval.configurations import configuration_choices, select_queries
from ragtune.eval.judge import extractive_judge, judge_messages
from ragtune.eval.metrics import parse_judge_score
from ragtune.eval.probes import probe_similarities
from ragtune.eval.rankings import Ranking, rerank_ranking
from ragtune.eval.report import fine_tune_note, per_query_csv, render_markdown, render_table
from ragtune.pipeline.config import load_config
from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, format_answer

TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


def _q(qid: str, origin: str, split: str = "eval") -> dict:
    return {"qid": qid, "text": qid, "origin": origin, "split": split}


def test_query_selection_by_origin_and_seeded_cap() -> None:
    rows = [_q("h1", "human"), _q("s1", "synthetic"), _q("h2", "human"), _q("t1", "human", "train")]
    assert [q["qid"] for q in select_queries(rows, "auto", None, 0)[0]] == ["h1", "h2"]
    assert select_queries(rows, "auto", None, 0)[1] == "human"
    synthetic_only = [_q("s1", "synthetic"), _q("s2", "synthetic")]
    assert select_queries(synthetic_only, "auto", None, 0) == (synthetic_only, "all")
    many = [_q(f"q{i}", "human") for i in range(20)]
    capped, _ = select_queries(many, "human", 5, seed=3)
    assert len(capped) == 5 and capped == select_queries(many, "human", 5, seed=3)[0]
    assert [q["qid"] for q in capped] == sorted((q["qid"] for q in capped), key=lambda s: int(s[1:]))


def test_configurations_order_builtins_and_custom_inherit_sizes() -> None:
    cfg = load_config(
        TINY,
        ["eval.configurations=[embed, full]", "eval.custom={rerank_only: {embedder: base, reranker: base}}"],
    )
    choices = configuration_choices(cfg)
    assert list(choices) == ["rag_only", "embed", "full", "rerank_only"]  # the configured list, rag_only first
    assert (choices["embed"].embedder, choices["embed"].reranker, choices["embed"].generator) == (
        "tuned",
        "none",
        "base",
    )
    # Fields the custom entry does not set come from cfg.assemble (tiny: top_k 4, top_n 2; the generator's
    # default auto is resolved by the promotion gate when the components are loaded).
    custom = choices["rerank_only"]
    assert (custom.embedder, custom.reranker, custom.generator, custom.top_k, custom.top_n) == (
        "base",
        "base",
        "auto",
        4,
        2,
    )
    with pytest.raises(ValueError, match="unknown configuration 'nope'"):
        configuration_choices(load_config(TINY, ["eval.configurations=[nope]"]))


def test_configurations_measure_at_the_served_dimension_but_the_untrained_baselines() -> None:
    cfg = load_config(
        TINY, ["assemble.truncate_dim=16", "eval.custom={full_dim: {embedder: tuned, truncate_dim: null}}"]
    )
    dims = {name: choice.truncate_dim for name, choice in configuration_choices(cfg).items()}
    assert dims["rag_only"] is None and dims["rag_hybrid"] is None  # plain RAG: the base at its full dimension
    assert dims["embed"] == dims["embed_rerank"] == dims["full"] == 16  # what serves
    assert dims["full_dim"] is None  # a custom configuration sets its own


def test_the_hybrid_baseline_is_built_in_and_the_first_tuned_step_is_read_against_the_stronger_baseline() -> None:
    from ragtune.eval.comparison import compare, verdicts

    choices = configuration_choices(load_config(TINY, []))
    assert list(choices)[:2] == ["rag_only", "rag_hybrid"]
    assert (choices["rag_hybrid"].embedder, choices["rag_hybrid"].retrieval) == ("base", "hybrid")
    assert choices["rag_only"].retrieval == "dense"
    rows = {
        "rag_only": [{"ndcg@10": v} for v in (0.2, 0.3, 0.1, 0.2) * 5],
        "rag_hybrid": [{"ndcg@10": v} for v in (0.5, 0.6, 0.4, 0.5) * 5],
        "embed": [{"ndcg@10": v} for v in (0.4, 0.5, 0.3, 0.4) * 5],
    }
    deltas = compare(rows, ["rag_only", "rag_hybrid", "embed"], ["ndcg@10"], 200, 0)
    assert deltas["embed"]["vs_previous"]["reference"] == "rag_hybrid"  # the stronger untrained baseline
    read = {(v["vs"], v["verdict"]) for v in verdicts(deltas, ["ndcg@10"])["embed"]}
    assert read == {("rag_hybrid", "hurt"), ("rag_only", "gained")}


class _FirstWordScorer:
    """Stands in for a CrossEncoder: prefers passages starting with 'z'."""

    def predict(self, pairs, batch_size=64, show_progress_bar=False):
        return [float(p[1].startswith("z")) for p in pairs]


def test_rerank_reorders_top_k_and_keeps_the_tail() -> None:
    chunks = {c: {"id": c, "text": t} for c, t in [("a", "apple"), ("b", "zebra"), ("c", "cat"), ("d", "zoo")]}
    first = Ranking([["a", "b", "c", "d"]], seconds=0.5)
    out = rerank_ranking(_FirstWordScorer(), ["q"], first, chunks, top_k=3)
    assert out.ranked == [["b", "a", "c", "d"]]  # d is below top_k: not reranked, kept after
    assert out.seconds >= 0.5


def test_rerank_at_the_recorded_fusion_weight_orders_as_serving_does() -> None:
    chunks = {c: {"id": c, "text": t} for c, t in [("a", "apple"), ("b", "zebra"), ("c", "cat")]}
    first = Ranking([["a", "b", "c"]], seconds=0.0, scores=[[0.9, 0.5, 0.1]])
    # scaled retriever a 1, b 0.5, c 0; reranker b 1, others 0: weight 0.4 -> a 0.6, b 0.7; 0.2 -> a 0.8, b 0.6
    assert rerank_ranking(_FirstWordScorer(), ["q"], first, chunks, top_k=3, fusion_weight=0.4).ranked == [
        ["b", "a", "c"]
    ]
    assert rerank_ranking(_FirstWordScorer(), ["q"], first, chunks, top_k=3, fusion_weight=0.2).ranked == [
        ["a", "b", "c"]
    ]


def test_a_reranker_at_weight_0_keeps_the_retrievers_order_without_scoring() -> None:
    class Refusing:
        def predict(self, pairs, batch_size=64, show_progress_bar=False):
            raise AssertionError("a weight-0 reranker must not score")

    chunks = {c: {"id": c, "text": t} for c, t in [("a", "apple"), ("b", "zebra"), ("c", "cat")]}
    first = Ranking([["a", "b", "c"]], seconds=0.0, scores=[[0.9, 0.5, 0.1]])
    assert rerank_ranking(Refusing(), ["q"], first, chunks, top_k=3, fusion_weight=0.0).ranked == [["a", "b", "c"]]
    # the order fusing at weight 0 would give, scores or not
    assert rerank_ranking(_FirstWordScorer(), ["q"], first, chunks, top_k=3, fusion_weight=0.01).ranked == [
        ["a", "b", "c"]
    ]


def test_score_generation_hand_values() -> None:
    context = ["Heron fails over in 15 minutes.", "Tortoise drains."]
    gen = format_answer("The runbook:", ["Heron fails over in 15 minutes.", "invented"], "15 minutes")
    no_oracle = format_answer("Nothing here.", [], ABSTAIN_ANSWER)
    row = score_generation(gen, no_oracle, context, "15 minutes", ["Heron fails over in 15 minutes."])
    assert row == {
        "em": 1.0,
        "f1": 1.0,
        "quote_precision": 0.5,
        "oracle_citation": 1.0,
        "format_ok": 1.0,
        "abstain_with_evidence": 0.0,
        "abstain_no_oracle": 1.0,
    }
    # A free-form answer (no tags) is scored as a whole.
    free = score_generation("within 15 minutes", "no idea", context, "15 minutes", [])
    assert free["f1"] == pytest.approx(0.8) and free["format_ok"] == 0.0 and free["quote_precision"] is None


def test_extractive_judge_scores_from_token_f1() -> None:
    assert parse_judge_score(extractive_judge(judge_messages("q?", "15 minutes", "15 minutes"))) == 5
    assert parse_judge_score(extractive_judge(judge_messages("q?", "15 minutes", "within 15 minutes"))) == 4
    assert parse_judge_score(extractive_judge(judge_messages("q?", "15 minutes", "blue"))) == 1


def test_probes_cosines_and_gap(tiny_bert_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(tiny_bert_dir))
    out = probe_similarities(model, [("Heron failover", "Heron failover")], [("Heron", "ledgerfish shard lease")])
    assert out["pairs"][0]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert out["gap"] == pytest.approx(out["mean_close"] - out["mean_far"])
    assert probe_similarities(model, [], []) == {"pairs": [], "mean_close": None, "mean_far": None, "gap": None}


def _report(mode: str) -> dict:
    metrics = ["recall@10", "ndcg@10"] + (["em", "f1"] if mode != "retrieval-only" else [])
    conf = {
        "components": {"embedder": "base", "reranker": "none"},
        "metrics": dict.fromkeys(metrics, 0.5),
        "intervals": {},
        "latency_ms_per_query": {"total_ms": 12.0},
    }
    return {
        "mode": mode,
        "queries": {"n": 4, "origin": "human", "with_answers": 0},
        "metrics": metrics,
        "configurations": {"rag_only": conf},
        "skipped": {"embed": "stage 'embed' has not finished"},
        "deltas": {},
        "verdicts": {},
        "fine_tune_note": fine_tune_note(0.5),
        "probes": None,
        "bootstrap": {"samples": 100},
    }


def test_report_rendering_and_fine_tune_rule() -> None:
    assert "below 0.80" in fine_tune_note(0.79) and "pays" in fine_tune_note(0.79)
    assert "grey zone" in fine_tune_note(0.82)
    assert "rarely pays" in fine_tune_note(0.86)
    retrieval = render_table(_report("retrieval-only"))
    assert "nDCG@10" in retrieval and "F1" not in retrieval and "skipped embed" in retrieval
    md = render_markdown(_report("retrieval+generation"))
    assert "| rag_only |" in md and "F1" in md and "Only the baseline ran" in md
    assert per_query_csv([{"a": 1}, {"a": 2, "b": 3}]).splitlines() == ["a,b", "1,", "2,3"]


def test_verdicts_against_the_previous_step_come_first_with_the_reranker_weight() -> None:
    # embed_rerank's gain over rag_only is the embedder's alone: its own step (vs embed) changed nothing.
    gained = {"estimate": 0.04, "low": 0.01, "high": 0.07, "n": 77}
    flat = {"estimate": 0.0, "low": 0.0, "high": 0.0, "n": 77}
    deltas = {
        "embed": {"vs_rag_only": {"reference": "rag_only", "metrics": {"ndcg@10": gained}},
                  "vs_previous": {"reference": "rag_only", "metrics": {"ndcg@10": gained}}},
        "embed_rerank": {"vs_rag_only": {"reference": "rag_only", "metrics": {"ndcg@10": gained}},
                         "vs_previous": {"reference": "embed", "metrics": {"ndcg@10": flat}}},
    }  # fmt: skip
    found = verdicts(deltas, ["ndcg@10"])
    assert [(v["vs"], v["verdict"]) for v in found["embed_rerank"]] == [
        ("embed", "no significant change"),
        ("rag_only", "gained"),
    ]
    assert [v["vs"] for v in found["embed"]] == ["rag_only"]  # its previous step is rag_only itself
    report = _report("retrieval-only")
    report["configurations"] |= {
        "embed": {**report["configurations"]["rag_only"], "reranker_weight": None},
        "embed_rerank": {**report["configurations"]["rag_only"], "reranker_weight": 0.0},
    }
    report["verdicts"] = found
    rows = [line for line in render_markdown(report).splitlines() if line.startswith("| embed_rerank | 0.0 |")]
    assert rows[0] == (
        "| embed_rerank | 0.0 | ndcg@10 | embed (previous step) | no significant change | +0.000 [+0.000, +0.000] |"
    )


def test_a_tuned_stage_is_read_against_its_untrained_alternative_beside_the_step_before_it() -> None:
    names = ["rag_only", "rag_hybrid", "embed", "embed_rerank_untrained", "embed_rerank", "extractive", "full"]
    means = {"rag_only": 0.40, "rag_hybrid": 0.45, "embed": 0.50, "embed_rerank_untrained": 0.52,
             "embed_rerank": 0.56, "extractive": 0.56, "full": 0.56}  # fmt: skip
    rows = {name: [{"ndcg@10": means[name] + 0.01 * (i % 3)} for i in range(12)] for name in names}
    deltas = compare(rows, names, ["ndcg@10"], samples=200, seed=0)
    refs = {name: {label: entry["reference"] for label, entry in by_ref.items()} for name, by_ref in deltas.items()}
    assert refs["embed"] == {"vs_rag_only": "rag_only", "vs_previous": "rag_hybrid"}  # the stronger baseline
    assert refs["embed_rerank_untrained"] == {"vs_rag_only": "rag_only", "vs_previous": "embed"}
    assert refs["embed_rerank"] == {
        "vs_rag_only": "rag_only",
        "vs_previous": "embed",  # what the reranker adds over no reranker
        "vs_untrained_reranker": "embed_rerank_untrained",  # whether training it paid
    }
    assert refs["extractive"] == {"vs_rag_only": "rag_only", "vs_previous": "embed_rerank"}
    assert refs["full"] == {"vs_rag_only": "rag_only", "vs_previous": "embed_rerank", "vs_extractive": "extractive"}
    trained = deltas["embed_rerank"]["vs_untrained_reranker"]["metrics"]["ndcg@10"]
    assert trained["estimate"] == pytest.approx(0.04)
    found = verdicts(deltas, ["ndcg@10"])
    assert [v["label"] for v in found["embed_rerank"]] == ["vs_previous", "vs_rag_only", "vs_untrained_reranker"]
    assert found["embed_rerank"][2]["verdict"] == "gained"
