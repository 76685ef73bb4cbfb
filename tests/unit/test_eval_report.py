from itertools import combinations
from pathlib import Path

import pytest

from ragtune.eval.html_report import render_html
from ragtune.eval.report import (
    CHART_METRICS,
    DIMENSIONS_TITLE,
    deltas_figure,
    fine_tune_note,
    metrics_figure,
    recall_label,
    render_markdown,
    render_table,
    too_few_queries_warning,
    write_report,
)
from ragtune.pipeline.rundir import UMASK, RunDir

NAMES = ("rag_only", "embed", "embed_rerank", "full")


def _interval(estimate: float) -> dict:
    return {"estimate": estimate, "low": estimate - 0.1, "high": estimate + 0.1}


def _full_report() -> dict:
    """A report with every charted metric and four configurations, as the harness writes it."""
    metrics = list(CHART_METRICS)
    configurations = {
        name: {
            "components": {"embedder": "base", "reranker": "none"},
            "metrics": dict.fromkeys(metrics, 0.5),
            "intervals": {m: _interval(0.5) for m in metrics},
            "latency_ms_per_query": {"total_ms": 10.0},
        }
        for name in NAMES
    }
    deltas = {
        name: {"vs_rag_only": {"reference": "rag_only", "metrics": {m: _interval(0.05) for m in metrics}}}
        for name in NAMES[1:]
    }
    return {
        "mode": "retrieval+generation",
        "queries": {"n": 40, "origin": "human", "with_answers": 8},
        "metrics": metrics,
        "configurations": configurations,
        "skipped": {},
        "deltas": deltas,
        "verdicts": {},
        "fine_tune_note": "note",
        "probes": None,
        "bootstrap": {"samples": 100},
    }


@pytest.mark.parametrize("make_figure", [metrics_figure, deltas_figure], ids=["metrics", "deltas"])
def test_chart_labels_and_legend_do_not_overlap(make_figure) -> None:
    import matplotlib.pyplot as plt

    fig = make_figure(_full_report())
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        ax = fig.axes[0]
        labels = [t.get_window_extent(renderer) for t in ax.get_xticklabels()]
        assert len(labels) == len(CHART_METRICS)
        for a, b in combinations(labels, 2):
            assert not a.overlaps(b)
        legend = ax.get_legend().get_window_extent(renderer)
        assert legend.x0 >= ax.get_window_extent(renderer).x1  # beside the bars, never over them
    finally:
        plt.close(fig)


def test_report_files_are_readable_like_ordinary_files(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    outputs = write_report(run, _full_report(), [{"configuration": "rag_only", "qid": "q1"}])
    for rel in outputs.values():
        assert run.path(rel).stat().st_mode & 0o777 == 0o666 & ~UMASK
    assert not list(run.path("eval").glob(".*"))  # no temporary file left behind


def test_below_min_queries_the_note_makes_no_call_and_the_warning_is_loud() -> None:
    label = recall_label({"k": 10, "level": "document", "chunk_queries": 0, "document_queries": 4})
    note = fine_tune_note(0.95, label, n_queries=4, min_queries=30)
    assert note.startswith("No call on fine-tuning: only 4 held-out queries (eval.min_queries: 30)")
    assert "rarely pays" not in note and "document recall@10" in note
    assert "rarely pays" in fine_tune_note(0.95, label, n_queries=30, min_queries=30)
    assert too_few_queries_warning(30, 30) is None
    report = _full_report() | {"warnings": [too_few_queries_warning(4, 30)]}
    assert render_table(report).splitlines()[-1].startswith("WARNING: only 4 held-out queries")
    assert render_markdown(report).splitlines()[2].startswith("> **Warning:** only 4 held-out queries")


def test_the_recall_label_says_which_labelling_it_measured() -> None:
    assert (
        recall_label({"k": 10, "level": "chunk"}) == "recall@10 of the evidence chunks (relevance labelled per chunk)"
    )
    mixed = recall_label({"k": 10, "level": "mixed", "chunk_queries": 12, "document_queries": 3})
    assert "evidence chunks for 12 queries, documents for 3" in mixed


def test_the_per_dimension_table_is_in_the_markdown_and_the_html_report_when_measured() -> None:
    report = _full_report()
    assert DIMENSIONS_TITLE not in render_markdown(report) and DIMENSIONS_TITLE not in render_html(report, [], [])
    report["dimensions"] = {
        "full_dimension": 32,
        "served_dimension": 16,
        "rows": [
            {"dimension": 32, "tuned": {"ndcg@10": 0.61, "recall@10": 0.8}, "base": {"ndcg@10": 0.4, "recall@10": 0.6}},
            {"dimension": 16, "tuned": {"ndcg@10": 0.55, "recall@10": 0.7}, "base": {"ndcg@10": 0.3, "recall@10": 0.5}},
            {"dimension": 8, "tuned": {"ndcg@10": 0.42, "recall@10": 0.6}, "base": None},
        ],
    }
    lines = render_markdown(report).splitlines()
    start = lines.index(f"## {DIMENSIONS_TITLE}")
    assert "Full dimension 32; served: 16." in lines[start + 2]
    assert lines[start + 4 : start + 9] == [
        "| dimension | tuned nDCG@10 | tuned R@10 | base nDCG@10 | base R@10 |",
        "|---|---|---|---|---|",
        "| 32 (full) | 0.610 | 0.800 | 0.400 | 0.600 |",
        "| 16 (served) | 0.550 | 0.700 | 0.300 | 0.500 |",
        "| 8 | 0.420 | 0.600 | – | – |",
    ]
    page = render_html(report, [], [])
    assert f"<h2>{DIMENSIONS_TITLE}</h2>" in page
    assert '<td>16 (served)</td><td class="num">0.550</td>' in page and "<td>8</td>" in page
