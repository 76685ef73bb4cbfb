"""eval/report.html: the whole evaluation in one self-contained file (no network, no scripts).

Charts are PNGs embedded as ``data:`` URIs; styles are inline. The page holds the verdict table, the
per-configuration table and charts, one card per stage that has run (data quality, stage 1
before/after and its learning curve, the hard-negative mining report with its audit samples and
the fusion weight, the RAFT data and training figures with sample prompts) and the per-query table.
Everything it shows is read from the eval report and the run directory's manifest outputs.

Example (a sketch over a finished run, not run as a doctest):
    write_html_report(run, report, per_query)
    # -> {'html': 'eval/report.html'}
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
from collections.abc import Iterable, Mapping
from typing import Any

from ragtune.eval import report as report_io
from ragtune.pipeline.rundir import EVAL_HTML, RunDir, atomic_write_text, read_jsonl

logger = logging.getLogger(__name__)

CARD_ROWS = 40  # figures per stage card; the JSON files hold the rest
RAFT_SAMPLES = 2
MESSAGE_CHARS = 600
STYLE = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:2rem auto;max-width:1200px;color:#1d2433;
padding:0 1rem}
h1{margin-bottom:.2rem}h2{border-bottom:2px solid #dde3ee;padding-bottom:.2rem;margin-top:2rem}
table{border-collapse:collapse;margin:.6rem 0;font-size:.9rem}
th,td{border:1px solid #d5dbe6;padding:.25rem .55rem;text-align:left;vertical-align:top}
th{background:#eef2f8}td.num{text-align:right;font-variant-numeric:tabular-nums}
.gained{background:#d9f2df}.hurt{background:#f8d7da;font-weight:600}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:1rem}
.card{border:1px solid #d5dbe6;border-radius:8px;padding:.4rem 1rem 1rem;background:#fafbfd;overflow:auto}
pre{white-space:pre-wrap;background:#f1f4f9;padding:.6rem;border-radius:6px;font-size:.8rem;max-height:28rem;
overflow:auto}
img{max-width:100%}.muted{color:#5b6578}
"""


def _e(value: Any) -> str:
    return html.escape(str(value))


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f'<td class="num">{value:.3f}</td>'
    if isinstance(value, int) and not isinstance(value, bool):
        return f'<td class="num">{value}</td>'
    return f"<td>{_e('–' if value is None else value)}</td>"


def _table(header: Iterable[str], rows: Iterable[Iterable[Any]], row_classes: Iterable[str] | None = None) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in header)
    classes = list(row_classes) if row_classes is not None else None
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(_cell(v) for v in row) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def figure_data_uri(fig) -> str:
    """A matplotlib figure as a ``data:image/png;base64,...`` URI (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _img(uri: str, alt: str) -> str:
    return f'<img src="{uri}" alt="{_e(alt)}">'


def flatten(tree: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """Scalar leaves of a nested mapping as (dotted key, value); lists of scalars joined, longer lists counted.

    Example:
        >>> flatten({"a": {"b": 1, "c": [1, 2]}, "d": [{"x": 1}]})
        [('a.b', 1), ('a.c', '1, 2'), ('d', '1 items')]
    """
    out: list[tuple[str, Any]] = []
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out += flatten(value, name + ".")
        elif isinstance(value, list):
            scalars = all(not isinstance(v, Mapping | list) for v in value)
            if not value:
                out.append((name, "none"))
            else:
                out.append((name, ", ".join(map(str, value)) if scalars and len(value) <= 8 else f"{len(value)} items"))
        else:
            out.append((name, value))
    return out


def loss_curve_uri(history: list[list[float]], title: str) -> str:
    """A training-loss curve from ``[[step, loss], ...]`` as an embedded PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 2.6))
    ax.plot([s for s, _ in history], [loss for _, loss in history], marker="o", markersize=3)
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.set_title(title)
    return figure_data_uri(fig)


def _output(entry: Any, key: str) -> str | None:
    """The run-relative path of one output of a manifest entry (None when it has no such output)."""
    out = entry.outputs.get(key)
    return out["path"] if out else None


def _read_json(run: RunDir, relative: str | None) -> dict | None:
    if relative is None or not run.path(relative).is_file():
        return None
    return json.loads(run.path(relative).read_text(encoding="utf-8"))


def _figures(pairs: list[tuple[str, Any]]) -> str:
    shown = pairs[:CARD_ROWS]
    more = (
        f'<p class="muted">{len(pairs) - len(shown)} more figures in the JSON file.</p>'
        if len(pairs) > len(shown)
        else ""
    )
    return _table(["figure", "value"], shown) + more


def stage_cards(run: RunDir) -> list[tuple[str, str]]:
    """(title, HTML body) per finished stage, from the files its manifest entry lists."""
    manifest = run.load_manifest()
    cards = []
    if "data" in manifest:
        data = _read_json(run, _output(manifest["data"], "report")) or {}
        cards.append(("data: corpus, queries and their quality", _figures(flatten(data))))
    if "embed" in manifest:
        embed = _read_json(run, _output(manifest["embed"], "metrics")) or {}
        body = ""
        before, after = embed.get("before", {}), embed.get("after", {})
        keys = [k for k in before if k in after]
        if keys:
            body += _table(["held-out metric", "base", "tuned"], [(k, before[k], after[k]) for k in keys])
        if embed.get("loss_history"):
            body += _img(loss_curve_uri(embed["loss_history"], "stage 1 training loss"), "stage 1 learning curve")
        rest = {k: v for k, v in embed.items() if k not in ("before", "after", "loss_history")}
        cards.append(("embed: the tuned embedder", body + _figures(flatten(rest))))
    if "rerank" in manifest:
        entry, negatives = manifest["rerank"], _output(manifest["rerank"], "negatives")
        metrics = _read_json(run, _output(entry, "metrics")) or dict(entry.metrics)
        body = _figures(flatten({k: v for k, v in metrics.items() if k != "mining"}))
        mining = metrics.get("mining") or _read_json(run, f"{negatives}/report.json" if negatives else None)
        if mining:
            body += "<h4>Hard-negative mining</h4>" + _figures(flatten(mining))
        audit = run.path(f"{negatives}/audit.md") if negatives else None
        if audit is not None and audit.is_file():
            body += "<h4>Audit samples</h4><pre>" + _e(audit.read_text(encoding="utf-8")) + "</pre>"
        cards.append(("rerank: mining, training and the fusion weight", body))
    if "gpl" in manifest:
        gpl = _read_json(run, _output(manifest["gpl"], "metrics")) or dict(manifest["gpl"].metrics)
        body = ""
        if gpl.get("loss_history"):
            body += _img(loss_curve_uri(gpl["loss_history"], "GPL round training loss"), "GPL learning curve")
        rest = {k: v for k, v in gpl.items() if k not in ("dev", "loss_history", "dev_qids")}
        cards.append(("gpl: stage 1's second round on a teacher's margins", body + _figures(flatten(rest))))
    if "raft_build" in manifest or "raft" in manifest:
        body = ""
        if "raft_build" in manifest:
            build = _read_json(run, _output(manifest["raft_build"], "report")) or {}
            body += "<h4>RAFT data</h4>" + _figures(flatten(build))
        if "raft" in manifest:
            body += "<h4>Training</h4>" + _figures(flatten(dict(manifest["raft"].metrics)))
        entry = manifest.get("raft_build") or manifest["raft"]
        samples_path = _output(entry, "train_data")
        if samples_path and run.path(samples_path).is_file():
            for n, sample in enumerate(read_jsonl(run.path(samples_path))[:RAFT_SAMPLES], 1):
                text = "\n\n".join(
                    f"[{m.get('role')}] {m.get('content', '')[:MESSAGE_CHARS]}" for m in _messages(sample)
                )
                body += f"<h4>Sample {n}</h4><pre>{_e(text)}</pre>"
        cards.append(("raft: the generator's training data and run", body))
    return cards


def _messages(sample: Mapping[str, Any]) -> list[dict]:
    """The chat turns of one RAFT sample (``messages``, or ``prompt`` + ``completion``)."""
    if "messages" in sample:
        return list(sample["messages"])
    return [*sample.get("prompt", []), *sample.get("completion", [])]


VERDICT_MARKS = {"gained": "▲ gained", "hurt": "▼ hurt"}  # as visible as each other, not by colour alone


def _weight(report: dict, name: str) -> str:
    weight = report["configurations"].get(name, {}).get("reranker_weight")
    return "–" if weight is None else f"{weight:.1f}"


def served_by_default(report: dict) -> list[str]:
    """The promotion gate's table (what ``assemble.*: auto`` serves, on which dev figure), as report.md has it."""
    if not report.get("promotion"):
        return []
    rows = [(name, "yes" if p["promoted"] else "no", p["reason"]) for name, p in report["promotion"].items()]
    dev = [f"<p>{_e(report_io.dev_slice_line(report['dev_slice']))}</p>"] if report.get("dev_slice") else []
    return [
        "<h2>Served by default (assemble.*: auto)</h2>",
        "<p>A tuned component serves only if it beat its baseline on the dev slice (held-out train documents).</p>",
        *dev,
        _table(["component", "promoted", "on"], rows),
    ]


def forgetting(report: dict) -> list[str]:
    """The forgetting check's table, as report.md has it."""
    f = report.get("forgetting")
    if not f:
        return []
    delta = report_io.interval_text(f["delta"])
    return [
        "<h2>Forgetting check</h2>",
        f"<p>{f['questions']} general-knowledge questions written by the team, asked without documents: the share "
        "answered correctly by the base and the RAFT-tuned generator.</p>",
        _table(
            ["base", "tuned", "verdict", "delta [95% CI]"],
            [(f["base"], f["tuned"], VERDICT_MARKS.get(f["verdict"], f["verdict"]), delta)],
            [f["verdict"]],
        ),
    ]


def deltas_against_rag_only(report: dict, cols: list[tuple[str, str]]) -> list[str]:
    """Every configuration's deltas against rag_only per metric, as report.md has them."""
    if not report["deltas"]:
        return []
    metrics = [k for k, _ in cols]
    rows = [
        [name, *(report_io.interval_text(by_ref["vs_rag_only"]["metrics"].get(m)) for m in metrics)]
        for name, by_ref in report["deltas"].items()
    ]
    return ["<h2>Deltas against rag_only (all metrics: report.json)</h2>", _table(["configuration", *metrics], rows)]


def dimensions(report: dict) -> list[str]:
    """The embedders' retrieval at each Matryoshka dimension, as report.md has it."""
    table = report.get("dimensions")
    if not table:
        return []
    header, rows = report_io.dimension_rows(table)
    return [
        f"<h2>{_e(report_io.DIMENSIONS_TITLE)}</h2>",
        f"<p>{_e(report_io.dimensions_intro(table))}</p>",
        _table(header, rows),
    ]


def probes(report: dict) -> list[str]:
    """The similarity probes (means and every pair), as report.md has them."""
    if not report.get("probes"):
        return []
    means = [(label, p["mean_close"], p["mean_far"], p["gap"]) for label, p in report["probes"].items()]
    first = next(iter(report["probes"].values()))["pairs"]
    pairs = [
        [f"{pair['a']} ↔ {pair['b']}", pair["kind"], *(p["pairs"][i]["cosine"] for p in report["probes"].values())]
        for i, pair in enumerate(first)
    ]
    return [
        "<h2>Similarity probes (cosine)</h2>",
        _table(["embedder", "mean close", "mean far", "gap"], means),
        _table(["pair", "kind", *report["probes"]], pairs),
    ]


def render_html(report: dict, per_query: list[dict], cards: list[tuple[str, str]]) -> str:
    """The self-contained page for one eval report, its per-query rows and the stage cards."""
    q = report["queries"]
    cols = [(k, label) for k, label in report_io.TABLE_METRICS if k in report["metrics"]]
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>ragtune evaluation</title>",
        f"<style>{STYLE}</style></head><body>",
        "<h1>ragtune evaluation</h1>",
        f"<p class='muted'>Mode {_e(report['mode'])}: {q['n']} held-out {_e(q['origin'])} queries"
        + (f", {q['with_answers']} with reference answers" if report["mode"] != "retrieval-only" else "")
        + f". Intervals: paired bootstrap, {report['bootstrap']['samples']} resamples, 95%.</p>",
        *([f"<p>{_e(report_io.origin_line(q['origins']))}</p>"] if q.get("origins") else []),
        *(f"<p><strong>Warning:</strong> {_e(w)}</p>" for w in report.get("warnings", [])),
        "<h2>Verdicts</h2>",
    ]
    origins = q.get("origins") or {}
    if report["verdicts"] and origins.get("synthetic", 0) * 2 > origins.get("synthetic", 0) + origins.get("human", 0):
        parts.append(f"<p><strong>On synthetic queries</strong> ({origins['synthetic']} of {q['n']}): optimistic.</p>")
    verdict_rows = [
        (
            name,
            _weight(report, name),
            v["metric"],
            f"{v['vs']} ({report_io.REFERENCE_WORDS.get(v['label'], v['label'])})",
            VERDICT_MARKS.get(v["verdict"], v["verdict"]),
            f"{v['estimate']:+.3f} [{v['low']:+.3f}, {v['high']:+.3f}]",
        )
        for name, items in report["verdicts"].items()
        for v in items
    ]
    if verdict_rows:
        verdicts = [v["verdict"] for items in report["verdicts"].values() for v in items]
        classes = [word if word in ("gained", "hurt") else "" for word in verdicts]
        header = ["configuration", "reranker weight", "metric", "vs", "verdict", "delta [95% CI]"]
        parts.append(_table(header, verdict_rows, classes))
    else:
        parts.append("<p>Only the baseline ran: nothing to compare yet.</p>")
    parts += served_by_default(report) + forgetting(report)
    parts.append(f"<h2>Should you fine-tune?</h2><p>{_e(report['fine_tune_note'])}</p>")
    parts.append("<h2>Configurations</h2>")
    conf_rows = []
    for name, conf in report["configurations"].items():
        comp = ", ".join(f"{k}={v}" for k, v in conf["components"].items() if k != "paths")
        retrieval = conf.get("retrieval", "dense")
        ms = f"{conf['latency_ms_per_query']['total_ms']:.1f}"
        conf_rows.append([name, f"{comp}, retrieval={retrieval}", *(conf["metrics"].get(k) for k, _ in cols), ms])
    parts.append(_table(["configuration", "components", *(label for _, label in cols), "ms/query"], conf_rows))
    parts.append(_img(figure_data_uri(report_io.metrics_figure(report)), "per-configuration means"))
    if report["deltas"]:
        parts.append(_img(figure_data_uri(report_io.deltas_figure(report)), "deltas against rag_only"))
    for name, why in report["skipped"].items():
        parts.append(f"<p class='muted'>Skipped {_e(name)}: {_e(why)}</p>")
    parts += deltas_against_rag_only(report, cols) + dimensions(report) + probes(report)
    parts.append(f"<p class='muted'>{_e(report_io.LATENCY_NOTE)}</p>")
    parts.append("<h2>Stages</h2><div class='cards'>")
    parts += [f"<section class='card'><h3>{_e(title)}</h3>{body}</section>" for title, body in cards]
    parts.append("</div><h2>Per query</h2>")
    if per_query:
        columns = ["configuration", "question"] + [k for k, _ in cols if k in per_query[0]]
        columns += [c for c in ("answer",) if c in per_query[0]]
        parts.append(_table(columns, [[row.get(c) for c in columns] for row in per_query]))
    parts.append("</body></html>")
    return "\n".join(parts)


def write_html_report(run: RunDir, report: dict, per_query: list[dict]) -> dict[str, str]:
    """Write ``eval/report.html`` (atomically); returns ``{"html": path}`` for ``run.record``."""
    atomic_write_text(run.path(EVAL_HTML), render_html(report, per_query, stage_cards(run)))
    logger.info("eval: HTML report written to %s", run.path(EVAL_HTML))
    return {"html": EVAL_HTML}
