"""eval/report.html: one self-contained page over a whole tiny run, rendered in headless Chromium."""

import base64
import csv
import json
import re
import shutil
import subprocess
from html import escape as _escape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fakes.upstream import run_dir_of, tiny_model_overrides

from ragtune.app.cli import main as cli
from ragtune.eval.html_report import render_html, write_html_report
from ragtune.eval.report import render_markdown


class _Collector(HTMLParser):
    """Tags, attributes and section headings of a page."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.headings: list[str] = []
        self._in_heading = False

    def handle_starttag(self, tag: str, attrs: list) -> None:
        self.tags.append((tag, dict(attrs)))
        self._in_heading = tag in ("h2", "h3", "h4")

    def handle_data(self, data: str) -> None:
        if self._in_heading and data.strip():
            self.headings.append(data.strip())
            self._in_heading = False


def _number(value: str) -> float | str:
    try:
        return float(value)
    except ValueError:
        return value


def _overrides(bert: Path, llama: Path) -> list[str]:
    return [
        *tiny_model_overrides(bert, llama),
        "embed.max_steps=3",
        "rerank.max_steps=2",
        "raft.max_steps=2",
        "raft.max_length=1024",
        "assemble.max_new_tokens=4",
        "eval.bootstrap_samples=100",
    ]


@pytest.fixture
def finished_run(tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path):
    cli(["run", str(tiny_config), *_overrides(tiny_bert_dir, tiny_llama_dir)])
    return run_dir_of(tiny_config)


def test_html_report_is_self_contained_with_every_stage_card_and_renders_in_chromium(
    finished_run, tmp_path: Path
) -> None:
    run = finished_run
    report = json.loads(run.path("eval/report.json").read_text())
    with run.path("eval/per_query.csv").open(newline="") as fh:
        per_query = [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(fh)]
    assert write_html_report(run, report, per_query) == {"html": "eval/report.html"}
    page = run.path("eval/report.html")
    text = page.read_text(encoding="utf-8")
    parsed = _Collector()
    parsed.feed(text)

    # Self-contained: no scripts, no stylesheets or images from anywhere else; every chart is an embedded PNG.
    assert not any(tag in ("script", "link", "iframe") for tag, _ in parsed.tags)
    images = [attrs["src"] for tag, attrs in parsed.tags if tag == "img"]
    assert len(images) >= 3  # metrics, deltas, stage 1 learning curve
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert not re.search(r"""(src|href)=["']?(https?:|//|file:)""", text)

    # The verdict table, each stage's card and its contents, the per-query table.
    for heading in ("Verdicts", "Configurations", "Stages", "Per query", "Hard-negative mining", "Audit samples"):
        assert heading in parsed.headings
    report_sections = [line[3:] for line in render_markdown(report).splitlines() if line.startswith("## ")]
    titles = [h for h in parsed.headings if ":" in h and h not in report_sections]  # the stage cards
    assert [t.split(":")[0] for t in titles] == ["data", "embed", "rerank", "raft"]
    assert "Sample 1" in parsed.headings and "[assistant]" in text and "##begin_quote##" in text
    for name in report["configurations"]:
        assert f"<td>{name}</td>" in text
    assert "stage 1 learning curve" in text and "<th>held-out metric</th>" in text  # embed: curve, before/after
    assert "<td>fusion_weight</td>" in text and "<td>train_loss_last</td>" in text  # rerank and raft figures
    # Everything report.md has: each of its sections is a section of the page too.
    assert {"Served by default (assemble.*: auto)", "Should you fine-tune?"} <= set(report_sections)
    assert set(report_sections) <= set(parsed.headings), set(report_sections) - set(parsed.headings)
    for name, p in report["promotion"].items():
        assert f"<td>{name}</td>" in text and _escape(p["reason"]) in text
    # A "hurt" verdict is marked as clearly as a "gained" one: its own row colour and a mark beside the word.
    hurt = json.loads(json.dumps(report))
    first = next(iter(hurt["verdicts"].values()))[0]
    first["verdict"] = "hurt"
    hurt_page = render_html(hurt, per_query, [])
    assert '<tr class="hurt">' in hurt_page and "▼ hurt" in hurt_page and ".hurt{" in hurt_page
    rows = text.split("<h2>Per query</h2>", 1)[1].count("<tr>") - 1  # minus the header row
    n_configs, n_queries = len(report["configurations"]), report["queries"]["n"]
    assert rows == n_configs * n_queries

    # Headless Chromium renders it: a tall page with the charts' coloured bars in it.
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium): the render check did not run")
    shot = tmp_path / "report.png"
    subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--screenshot={shot}",
            "--window-size=1280,2400",
            page.as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    import matplotlib.image

    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (2400, 1280)
    not_white = (pixels < 0.95).any(axis=2).mean()
    coloured = ((pixels.max(axis=2) - pixels.min(axis=2)) > 0.3).mean()
    assert not_white > 0.03 and coloured > 0.002  # text and tables drawn, and some coloured chart bars
