"""The eval report: a markdown table with verdicts, JSON, per-query CSV and bar charts with intervals.

Everything here renders a report dict built by :mod:`ragtune.eval.harness`; files are written atomically
into ``eval/`` of the run directory.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import textwrap
from pathlib import Path

from ragtune.pipeline.rundir import (
    EVAL_DELTAS_CHART,
    EVAL_JSON,
    EVAL_METRICS_CHART,
    EVAL_PER_QUERY,
    EVAL_REPORT,
    RunDir,
    atomic_save_figure,
    atomic_write_text,
)

logger = logging.getLogger(__name__)

TABLE_METRICS = (
    ("ndcg@10", "nDCG@10"),
    ("mrr@10", "MRR@10"),
    ("recall@10", "R@10"),
    ("hit@1", "hit@1"),
    ("hit@10", "hit@10"),
    ("em", "EM"),
    ("f1", "F1"),
    ("quote_precision", "quote prec"),
    ("oracle_citation", "oracle cite"),
    ("format_ok", "format"),
    ("abstain_no_oracle", "abstain (no oracle)"),
    ("judge", "judge 1-5"),
)
CHART_METRICS = ("ndcg@10", "recall@10", "mrr@10", "f1", "quote_precision", "abstain_no_oracle")
CHART_LABEL_WIDTH = 12  # characters per line of an x-axis label
FINE_TUNE_LOW, FINE_TUNE_HIGH = 0.80, 0.85


LATENCY_NOTE = "Latency is per query, amortised over batched retrieval, reranking and generation."
REFERENCE_WORDS = {  # what each comparison of the verdict table asks
    "vs_previous": "previous step",
    "vs_rag_only": "plain RAG",
    "vs_untrained_reranker": "tuned reranker vs untrained reranker",
    "vs_extractive": "tuned generator vs extractive answer",
}


def recall_label(baseline: dict) -> str:
    """What the fine-tune note's recall measured, from :func:`ragtune.eval.metrics.labelled_recall`'s summary.

    Example:
        >>> recall_label({"k": 10, "level": "document", "chunk_queries": 0, "document_queries": 5})
        'document recall@10 (relevance labelled per document: found when any of its chunks is in the top 10)'
    """
    k = baseline["k"]
    if baseline["level"] == "chunk":
        return f"recall@{k} of the evidence chunks (relevance labelled per chunk)"
    if baseline["level"] == "document":
        return f"document recall@{k} (relevance labelled per document: found when any of its chunks is in the top {k})"
    return (
        f"recall@{k} at each query's labelling (evidence chunks for {baseline['chunk_queries']} queries, "
        f"documents for {baseline['document_queries']})"
    )


def too_few_queries_warning(n_queries: int, min_queries: int) -> str | None:
    """The loud warning for an eval on fewer than ``eval.min_queries`` held-out queries (None otherwise)."""
    if n_queries >= min_queries:
        return None
    return (
        f"only {n_queries} held-out queries (eval.min_queries: {min_queries}): the intervals are too wide to say "
        "whether fine-tuning pays; add labelled questions (data.questions) or hold out more documents "
        "(split.eval_fraction)"
    )


def fine_tune_note(
    baseline_recall_at_10: float, label: str = "recall@10", n_queries: int | None = None, min_queries: int = 1
) -> str:
    """The rule of thumb on whether fine-tuning the retriever pays, from plain RAG's recall@10.

    Args:
        baseline_recall_at_10: rag_only's recall@10, measured as ``label`` says.
        label: what the recall counts (:func:`recall_label`; chunk- or document-level).
        n_queries: held-out queries it was measured on; below ``min_queries`` the note makes no call.
        min_queries: ``eval.min_queries``.

    Example:
        >>> fine_tune_note(0.62).startswith("Baseline recall@10 is 0.62 (below 0.80)")
        True
        >>> fine_tune_note(0.95, n_queries=4, min_queries=30).startswith("No call")
        True
    """
    r = baseline_recall_at_10
    if n_queries is not None and n_queries < min_queries:
        return (
            f"No call on fine-tuning: {too_few_queries_warning(n_queries, min_queries)}. "
            f"Baseline {label} is {r:.2f}, for information only."
        )
    if r < FINE_TUNE_LOW:
        return (
            f"Baseline {label} is {r:.2f} (below {FINE_TUNE_LOW:.2f}): the base retriever misses much of "
            "the evidence, and fine-tuning usually pays on such a domain."
        )
    if r > FINE_TUNE_HIGH:
        return (
            f"Baseline {label} is {r:.2f} (above {FINE_TUNE_HIGH:.2f}): the base retriever already finds "
            "most evidence; fine-tuning it rarely pays — look at the reranker and generator deltas."
        )
    return (
        f"Baseline {label} is {r:.2f} (between {FINE_TUNE_LOW:.2f} and {FINE_TUNE_HIGH:.2f}): a grey zone; "
        "decide by the measured deltas and their intervals."
    )


def _filter_text(origin: dict) -> str:
    """How the held-out synthetic queries were filtered, in words (``synthetic_filter`` of the data report)."""
    kind = origin.get("synthetic_filter")
    if kind == "none":
        return "not filtered by any retriever"
    if kind and kind.startswith("bm25"):
        return (
            f"kept where BM25 ranks their chunk in its {kind.removeprefix('bm25 ')}, a filter no compared "
            "embedder takes part in, but one that keeps queries sharing their chunk's words"
        )
    if kind and kind.startswith("base embedder"):
        return (
            f"kept where the base embedder ranks their chunk in its {kind.removeprefix('base embedder ')} (the "
            "round trip of a data stage older than the lexical filter): base hit@10 on them is high by "
            "construction; rerun `ragtune data --force`"
        )
    return "filter unknown"


def origin_line(origin: dict) -> str:
    """Where the held-out queries come from: counts of human and synthetic, and who wrote the synthetic ones.

    Example:
        >>> origin_line({"human": 77, "synthetic": 0})
        'Held-out queries: 77 human-written, 0 synthetic.'
        >>> origin = {"human": 0, "synthetic": 9, "synthetic_written_by": "local:m", "synthetic_filter": "none"}
        >>> line = origin_line(origin)
        >>> line.removeprefix("Held-out queries: 0 human-written, 9 synthetic (written by local:m from the chunk ")
        'each targets; not filtered by any retriever).'
    """
    line = f"Held-out queries: {origin['human']} human-written, {origin['synthetic']} synthetic"
    if origin["synthetic"]:
        writer = origin.get("synthetic_written_by") or "an unrecorded generator"
        line += f" (written by {writer} from the chunk each targets; {_filter_text(origin)})"
    return line + "."


# Measured with scripts/heldout_check.py on CACM (the cpu template, no labels; docs/embed.md has the table).
DEVELOPMENT_CORPUS_GAP = (
    "By how much, on a development corpus with human queries (CACM: 3,204 computer-science abstracts, 52 human "
    "requests): over 26 stage-1 variants the synthetic held-out queries put the dense nDCG@10 gain at +0.017 on "
    "average and the human ones at +0.001, and the two did not move together (correlation -0.08): a synthetic "
    "figure neither sizes nor ranks the gain."
)


def optimistic_warning(origin: dict) -> str | None:
    """The warning for an evaluation whose held-out queries are mostly synthetic (None otherwise).

    Example:
        >>> optimistic_warning({"human": 30, "synthetic": 10}) is None
        True
        >>> optimistic_warning({"human": 1, "synthetic": 9}).startswith("9 of the 10 held-out queries are synthetic")
        True
    """
    n = origin["human"] + origin["synthetic"]
    if not n or origin["synthetic"] * 2 <= n:
        return None
    return (
        f"{origin['synthetic']} of the {n} held-out queries are synthetic: the figures are optimistic. A synthetic "
        "query is written from the very chunk it targets and reuses its words, so it is easier to retrieve and "
        f"answer than a user's question; add human-written questions (data.questions) for figures to trust. "
        f"{DEVELOPMENT_CORPUS_GAP}"
    )


def dev_slice_line(dev: dict) -> str:
    """What the gates judged on, in words.

    Example:
        >>> dev_slice_line({"queries": 11, "human": 0, "synthetic": 11, "filter": "bm25"})[:60]
        'The dev slice: 11 queries, 0 human-written and 11 synthetic '
    """
    line = f"The dev slice: {dev['queries']} queries, {dev['human']} human-written and {dev['synthetic']} synthetic"
    if not dev["synthetic"]:
        return line + "."
    kept = "kept by BM25's round trip, never the base embedder's" if dev.get("filter") == "bm25" else "not filtered"
    return (
        f"{line} ({kept}): synthetic figures are optimistic in level, but every option is judged on the same queries."
    )


def circular_reranker_warning(origin: dict, scorer_wrote_them: bool) -> str | None:
    """The warning for synthetic held-out queries written by the query-likelihood reranker's own LM (None if not).

    Example:
        >>> circular_reranker_warning({"human": 0, "synthetic": 40}, True)[:56]
        'The query-likelihood reranker scores with the LM that wr'
    """
    if not (scorer_wrote_them and origin.get("synthetic")):
        return None
    return (
        "The query-likelihood reranker scores with the LM that wrote the synthetic held-out queries: they are likely "
        "under it by construction, so its configurations' figures on them are circular. On a development corpus with "
        "human queries (CACM) the fused order gained +0.06 nDCG@10 on such queries and lost 0.02 on the human ones; "
        "the promotion gate never judges the reranker on them."
    )


def fine_tune_call(baseline_human: dict | None, origin: dict, min_queries: int) -> str:
    """The fine-tune note from plain RAG's recall on the human-written held-out queries alone.

    Synthetic queries never count: they passed the data stage's own filters, so a recall on them is one the
    pipeline produced. With no human-written held-out query the rule is not applied.

    Args:
        baseline_human: :func:`ragtune.eval.metrics.labelled_recall` of rag_only on the human queries (None: none).
        origin: the held-out queries' origin counts (``human``, ``synthetic``).
        min_queries: ``eval.min_queries``, compared with the number of human queries.

    Example:
        >>> fine_tune_call(None, {"human": 0, "synthetic": 50}, 30).startswith("No call on fine-tuning: none")
        True
    """
    if not origin["human"] or baseline_human is None:
        return (
            f"No call on fine-tuning: none of the {origin['synthetic']} held-out queries is human-written. "
            "The rule of thumb (plain RAG's recall@10 below 0.80: fine-tuning usually pays; above 0.85: rarely) "
            "cannot be applied honestly to synthetic queries: they were written from their own chunk and kept by "
            "the data stage's filters, so their recall is one the pipeline produced. Add human-written questions "
            "(data.questions) and hold their documents out (split.eval_docs_from: human)."
        )
    label = recall_label(baseline_human)
    if origin["synthetic"]:
        label += f" on the {origin['human']} human-written held-out queries (synthetic ones left out)"
    return fine_tune_note(baseline_human["recall"], label, origin["human"], min_queries)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _columns(report: dict) -> list[tuple[str, str]]:
    return [(k, label) for k, label in TABLE_METRICS if k in report["metrics"]]


def render_table(report: dict) -> str:
    """The per-configuration table as aligned plain text (what ``ragtune eval`` prints)."""
    cols = _columns(report)
    header = ["configuration", *(label for _, label in cols), "ms/query"]
    rows = [header]
    for name, conf in report["configurations"].items():
        m = conf["metrics"]
        rows.append([name, *(_fmt(m.get(k)) for k, _ in cols), f"{conf['latency_ms_per_query']['total_ms']:.1f}"])
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [f"skipped {name}: {why}" for name, why in report["skipped"].items()]
    lines += [f"WARNING: {w}" for w in report.get("warnings", [])]
    return "\n".join(lines)


DIMENSIONS_TITLE = "Matryoshka dimensions (embed.matryoshka_dims)"


def dimensions_intro(table: dict) -> str:
    """What the per-dimension table (:func:`ragtune.eval.dimensions.dimension_table`) measured."""
    return (
        "Dense retrieval alone (no reranker) on the held-out queries, each embedder's vectors cut to the dimension "
        "and renormalised, as assemble.truncate_dim serves them: what a smaller index costs. Full dimension "
        f"{table['full_dimension']}; served: {table['served_dimension']}."
    )


def dimension_rows(table: dict) -> tuple[list[str], list[list]]:
    """The per-dimension table as a header and rows: the dimension's label, then each embedder's means (None where
    it is narrower than the row).

    Example:
        >>> table = {"full_dimension": 32, "served_dimension": 16, "rows": [
        ...     {"dimension": 32, "tuned": {"ndcg@10": 0.5, "recall@10": 0.75}, "base": None},
        ...     {"dimension": 16, "tuned": {"ndcg@10": 0.25, "recall@10": 0.5}, "base": None}]}
        >>> header, rows = dimension_rows(table)
        >>> header
        ['dimension', 'tuned nDCG@10', 'tuned R@10', 'base nDCG@10', 'base R@10']
        >>> rows
        [['32 (full)', 0.5, 0.75, None, None], ['16 (served)', 0.25, 0.5, None, None]]
    """
    labels = dict(TABLE_METRICS)
    metrics = ("ndcg@10", "recall@10")
    embedders = ("tuned", "base")
    header = ["dimension", *(f"{e} {labels[m]}" for e in embedders for m in metrics)]
    rows = []
    for row in table["rows"]:
        dim = row["dimension"]
        notes = [w for w, d in (("full", table["full_dimension"]), ("served", table["served_dimension"])) if d == dim]
        name = f"{dim} ({', '.join(notes)})" if notes else str(dim)
        rows.append([name, *((row[e] or {}).get(m) for e in embedders for m in metrics)])
    return header, rows


def interval_text(iv: dict | None) -> str:
    """``+0.012 [-0.003, +0.027]``, or – when there is no interval."""
    if iv is None:
        return "–"
    return f"{iv['estimate']:+.3f} [{iv['low']:+.3f}, {iv['high']:+.3f}]"


def render_markdown(report: dict) -> str:
    """The full report as markdown: queries, table, verdicts, deltas, the per-dimension table, probes, the
    fine-tune note."""
    q = report["queries"]
    cols = _columns(report)
    out = [
        "# ragtune evaluation",
        "",
        *(f"> **Warning:** {w}\n" for w in report.get("warnings", [])),
        f"Mode: **{report['mode']}** — {q['n']} held-out {q['origin']} queries"
        + (f", {q['with_answers']} with reference answers" if report["mode"] != "retrieval-only" else "")
        + f". Intervals: paired bootstrap, {report['bootstrap']['samples']} resamples, 95%.",
        "",
        *([origin_line(q["origins"]), ""] if q.get("origins") else []),
        "| configuration | components | " + " | ".join(label for _, label in cols) + " | ms/query |",
        "|---|---|" + "---|" * len(cols) + "---|",
    ]
    for name, conf in report["configurations"].items():
        comp = ", ".join(f"{k}={v}" for k, v in conf["components"].items() if k != "paths")
        m = conf["metrics"]
        cells = " | ".join(_fmt(m.get(k)) for k, _ in cols)
        out.append(f"| {name} | {comp} | {cells} | {conf['latency_ms_per_query']['total_ms']:.1f} |")
    if report["skipped"]:
        out += ["", "Skipped configurations:", ""]
        out += [f"- **{name}**: {why}" for name, why in report["skipped"].items()]
    out += ["", "## Verdicts", ""]
    if report["verdicts"]:
        origins = q.get("origins") or {}
        if origins.get("synthetic", 0) * 2 > origins.get("synthetic", 0) + origins.get("human", 0):
            out += [f"**On synthetic queries** ({origins['synthetic']} of {q['n']}): optimistic, see the warning.", ""]
        out += [
            "Each configuration's verdict against its previous step comes first: that is what the step itself added.",
            "",
            "| configuration | reranker weight | metric | vs | verdict | delta [95% CI] |",
            "|---|---|---|---|---|---|",
        ]
        for name, items in report["verdicts"].items():
            weight = report["configurations"].get(name, {}).get("reranker_weight")
            shown = "–" if weight is None else f"{weight:.1f}"
            for v in items:
                vs = f"{v['vs']} ({REFERENCE_WORDS.get(v['label'], v['label'])})"
                out.append(f"| {name} | {shown} | {v['metric']} | {vs} | {v['verdict']} | {interval_text(v)} |")
    else:
        out.append("Only the baseline ran: nothing to compare yet.")
    if report.get("promotion"):
        out += [
            "",
            "## Served by default (assemble.*: auto)",
            "",
            "A tuned component serves only if it beat its baseline on the dev slice (held-out train documents).",
            *([dev_slice_line(report["dev_slice"])] if report.get("dev_slice") else []),
            "",
            "| component | promoted | on |",
            "|---|---|---|",
        ]
        out += [
            f"| {name} | {'yes' if p['promoted'] else 'no'} | {p['reason']} |"
            for name, p in report["promotion"].items()
        ]
    if report.get("forgetting"):
        f = report["forgetting"]
        out += [
            "",
            "## Forgetting check",
            "",
            f"{f['questions']} general-knowledge questions written by the team, asked without documents: the share "
            "answered correctly by the base and the RAFT-tuned generator.",
            "",
            "| base | tuned | verdict | delta [95% CI] |",
            "|---|---|---|---|",
            f"| {_fmt(f['base'])} | {_fmt(f['tuned'])} | {f['verdict']} | {interval_text(f['delta'])} |",
        ]
    out += ["", "## Should you fine-tune?", "", report["fine_tune_note"]]
    if report["deltas"]:
        out += ["", "## Deltas against rag_only (all metrics: report.json)", ""]
        metrics = [k for k, _ in cols]
        out += ["| configuration | " + " | ".join(metrics) + " |", "|---|" + "---|" * len(metrics)]
        for name, by_ref in report["deltas"].items():
            ivs = by_ref["vs_rag_only"]["metrics"]
            out.append(f"| {name} | " + " | ".join(interval_text(ivs.get(m)) for m in metrics) + " |")
    if report.get("dimensions"):
        header, rows = dimension_rows(report["dimensions"])
        out += ["", f"## {DIMENSIONS_TITLE}", "", dimensions_intro(report["dimensions"]), ""]
        out += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        out += [f"| {row[0]} | " + " | ".join(_fmt(v) for v in row[1:]) + " |" for row in rows]
    if report.get("probes"):
        out += [
            "",
            "## Similarity probes (cosine)",
            "",
            "| embedder | mean close | mean far | gap |",
            "|---|---|---|---|",
        ]
        for label, p in report["probes"].items():
            out.append(f"| {label} | {_fmt(p['mean_close'])} | {_fmt(p['mean_far'])} | {_fmt(p['gap'])} |")
        out += [
            "",
            "| pair | kind | " + " | ".join(report["probes"]) + " |",
            "|---|---|" + "---|" * len(report["probes"]),
        ]
        first = next(iter(report["probes"].values()))["pairs"]
        for i, pair in enumerate(first):
            cells = " | ".join(_fmt(p["pairs"][i]["cosine"]) for p in report["probes"].values())
            out.append(f"| {pair['a']} ↔ {pair['b']} | {pair['kind']} | {cells} |")
    out += ["", LATENCY_NOTE, ""]
    return "\n".join(out)


def per_query_csv(rows: list[dict]) -> str:
    """Per-query rows as CSV text; columns are the union of keys in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def _interval_bars(ax, j: int, n_series: int, width: float, ivs: list[dict | None], label: str) -> None:
    """One series of grouped bars (estimates) with asymmetric error bars (the 95% interval); None -> 0."""
    heights = [iv["estimate"] if iv else 0.0 for iv in ivs]
    errors = [
        [iv["estimate"] - iv["low"] if iv else 0 for iv in ivs],
        [iv["high"] - iv["estimate"] if iv else 0 for iv in ivs],
    ]
    xs = [i + (j - (n_series - 1) / 2) * width for i in range(len(ivs))]
    ax.bar(xs, heights, width, yerr=errors, capsize=3, label=label)


def chart_label(metric: str) -> str:
    """A metric's axis label: its table heading, wrapped onto short lines so neighbours never touch.

    Example:
        >>> chart_label("abstain_no_oracle"), chart_label("ndcg@10")
        ('abstain\\n(no oracle)', 'nDCG@10')
    """
    label = dict(TABLE_METRICS).get(metric, metric.replace("_", " ")).replace(" (", "\n(")
    return "\n".join(textwrap.fill(line, CHART_LABEL_WIDTH) for line in label.splitlines())


def _bar_chart(metrics: list[str], names: list[str], intervals: dict[str, list[dict | None]], title: str):
    """One grouped-bar figure: a group per metric, a bar per configuration, legend outside the axes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.3 * len(metrics) + 1.5), 4))
    width = 0.8 / max(1, len(names))
    for j, name in enumerate(names):
        _interval_bars(ax, j, len(names), width, intervals[name], name)
    ax.set_xticks(range(len(metrics)), [chart_label(m) for m in metrics])
    ax.set_title(title)
    if names:
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig, ax


def metrics_figure(report: dict):
    """Grouped bars: each configuration's mean per metric, with its 95% bootstrap interval."""
    metrics = [m for m in CHART_METRICS if m in report["metrics"]]
    names = list(report["configurations"])
    intervals = {n: [report["configurations"][n]["intervals"].get(m) for m in metrics] for n in names}
    fig, ax = _bar_chart(metrics, names, intervals, "Per-configuration means (95% bootstrap interval)")
    ax.set_ylim(0, 1.05)
    return fig


def deltas_figure(report: dict):
    """Bars of each configuration's delta against rag_only per metric, with the paired 95% interval."""
    metrics = [m for m in CHART_METRICS if m in report["metrics"]]
    names = list(report["deltas"])
    intervals = {n: [report["deltas"][n]["vs_rag_only"]["metrics"].get(m) for m in metrics] for n in names}
    fig, ax = _bar_chart(metrics, names, intervals, "Delta vs rag_only (paired bootstrap 95% interval)")
    ax.axhline(0, color="black", linewidth=0.8)
    return fig


def _save_and_close(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    atomic_save_figure(fig, path)
    plt.close(fig)


def write_report(run: RunDir, report: dict, per_query: list[dict]) -> dict[str, str]:
    """Write report.md, report.json, per_query.csv and the charts under ``eval/``.

    Returns:
        Output key -> path relative to the run directory (for ``run.record``).
    """
    outputs = {
        "report": EVAL_REPORT,
        "json": EVAL_JSON,
        "per_query": EVAL_PER_QUERY,
        "metrics_chart": EVAL_METRICS_CHART,
        "deltas_chart": EVAL_DELTAS_CHART,
    }
    atomic_write_text(run.path(outputs["json"]), json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(run.path(outputs["per_query"]), per_query_csv(per_query))
    _save_and_close(metrics_figure(report), run.path(outputs["metrics_chart"]))
    _save_and_close(deltas_figure(report), run.path(outputs["deltas_chart"]))
    atomic_write_text(run.path(outputs["report"]), render_markdown(report))
    logger.info("eval: report written to %s", run.path(outputs["report"]))
    return outputs


def read_report(path: Path) -> dict:
    """A report written by :func:`write_report`."""
    return json.loads(path.read_text(encoding="utf-8"))
