"""The HTML report's stage cards include the optional GPL round when it ran."""

import json

from ragtune.eval.html_report import stage_cards
from ragtune.pipeline.rundir import RunDir


def test_a_finished_gpl_round_gets_its_own_card_with_its_dev_figures_and_loss_curve(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    report = {"dev_ndcg@10_embed": 0.5676, "dev_ndcg@10_gpl": 0.125, "loss_history": [[1, 0.33], [2, 0.1]]}
    run.path("gpl/model").mkdir(parents=True)
    run.path("gpl/metrics.json").write_text(json.dumps(report | {"dev": {"ndcg@10": 0.125}, "dev_qids": ["q1"]}))
    outputs = {"model": "gpl/model", "metrics": "gpl/metrics.json"}
    run.record("gpl", config_hash="h", inputs={}, outputs=outputs, metrics={}, started=0.0)

    cards = dict(stage_cards(run))
    body = cards["gpl: stage 1's second round on a teacher's margins"]
    assert "dev_ndcg@10_gpl" in body and "0.125" in body and "<img" in body
    assert "dev_qids" not in body  # per-query lists stay in the JSON file
    assert not any(title.startswith("gpl") for title, _ in stage_cards(RunDir(tmp_path / "other")))
