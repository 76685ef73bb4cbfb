"""scripts/heldout_check.py: the BEIR corpus as a documents folder, and metrics computed from the qrels alone."""

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BEIR = ROOT / "tests/fixtures/beir_tiny"


@pytest.fixture(scope="module")
def check(load_script):
    return load_script("heldout_check")


def test_the_corpus_becomes_a_folder_of_documents_and_the_queries_stay_aside(check, tmp_path: Path) -> None:
    names = check.write_documents(BEIR, tmp_path / "docs")
    assert names == {"d1.txt": "d1", "d2.txt": "d2", "d3_x.txt": "d3/x"}
    assert (tmp_path / "docs/d1.txt").read_text() == (
        "Heron failover\n\nThe heron router fails over to the standby site within two minutes.\n"
    )
    assert (tmp_path / "docs/d3_x.txt").read_text() == "Cafeteria hours\n"  # a title-only document
    queries, qrels = check.load_queries(BEIR)
    assert queries == {"q1": "How long does the heron failover take?", "q2": "When do badge readers sync?"}
    assert qrels == {"q1": {"d1": 1}, "q2": {"d2": 2}}  # grade 0 is not relevant; unjudged queries are left out


def test_metrics_from_the_qrels_match_hand_computed_values(check) -> None:
    qrels = {"q1": {"d1": 1}, "q2": {"d2": 2, "d3": 1}}
    chunk_rankings = [["c9", "c1", "c1b"], ["c3", "c2"]]
    document_of = {"c1": "d1", "c1b": "d1", "c9": "d9", "c2": "d2", "c3": "d3"}
    ranked = [check.documents_ranked(r, document_of) for r in chunk_rankings]
    assert ranked == [["d9", "d1"], ["d3", "d2"]]  # a document ranks where its best chunk does
    scores = check.score({"x": ranked}, ["q1", "q2"], qrels)["x"]
    ideal_q2 = 2 + 1 / 1.5849625007211562
    q2 = (1 + 2 / 1.5849625007211562) / ideal_q2
    assert scores["ndcg@10"] == pytest.approx(round((1 / 1.5849625007211562 + q2) / 2, 4))
    assert scores["mrr@10"] == 0.75 and scores["recall@100"] == 1.0 and scores["queries"] == 2
    assert check.score({"none": [[], []]}, ["q1", "q2"], qrels)["none"]["ndcg@10"] == 0.0


def test_the_config_drops_the_questions_and_moves_the_run(check, tmp_path: Path) -> None:
    import yaml

    config = check.write_config(ROOT / "configs/templates/cpu.yaml", tmp_path / "docs", tmp_path, "tiny")
    tree = yaml.safe_load(config.read_text())
    assert tree["data"]["docs"] == str(tmp_path / "docs") and tree["data"]["questions"] is None
    assert tree["run"]["name"] == "tiny" and tree["run"]["root"] == str(tmp_path / "runs")
