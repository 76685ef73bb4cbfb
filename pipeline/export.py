"""Export a run's three models ready to push to the Hugging Face Hub (opt-in).

    ragtune export runs/demo --to exported/ [--push ORG/PREFIX]

Writes ``DIR/embedder`` (the tuned sentence-transformers model), ``DIR/reranker`` (the cross-encoder
and its ``ragtune_fusion.json``) and ``DIR/generator`` (the merged RAFT model, or the LoRA adapter
over its base), each with a model card (``README.md``: Hub metadata, the run's figures, lineage), and
``DIR/export.json`` listing what came from which stage. Only finished stages are exported.

``--push ORG/PREFIX`` uploads each folder to ``ORG/PREFIX-embedder``, ``-reranker`` and ``-generator``
with ``huggingface_hub`` (creating private repos when missing; the token is huggingface_hub's own:
``HF_TOKEN`` or ``hf auth login``). Nothing leaves the machine without ``--push``.
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from importlib.metadata import version
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, ModelCard, ModelCardData

from pipeline.rundir import RunDir, StageInputError

logger = logging.getLogger(__name__)

# component -> (stage, output keys tried in order, library name on the Hub)
COMPONENTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "embedder": ("embed", ("model",), "sentence-transformers"),
    "reranker": ("rerank", ("model",), "sentence-transformers"),
    "generator": ("raft", ("merged", "adapter"), "transformers"),
}
EVAL_PAIRS = {  # the eval comparison that shows each component's effect: (configuration, its reference)
    "embedder": ("embed", "rag_only"),
    "reranker": ("embed_rerank", "embed"),
    "generator": ("full", "embed_rerank"),
}


def _base_model(cfg: dict, component: str) -> str:
    section = {"embedder": "embed", "reranker": "rerank", "generator": "raft"}[component]
    return str(cfg.get(section, {}).get("base_model", ""))


def _figures(run: RunDir, component: str, record: Any) -> list[str]:
    """Markdown lines with the stage's recorded metrics and the eval delta that measures the component."""
    lines = [f"- `{k}`: {v:.4f}" if isinstance(v, float) else f"- `{k}`: {v}" for k, v in record.metrics.items()]
    report_path = run.path("eval/report.json")
    if report_path.is_file():
        report = json.loads(report_path.read_text(encoding="utf-8"))
        name, reference = EVAL_PAIRS[component]
        for v in report.get("verdicts", {}).get(name, []):
            if v["vs"] == reference:
                lines.append(
                    f"- eval, {name} vs {reference}, {v['metric']}: {v['estimate']:+.3f} "
                    f"[{v['low']:+.3f}, {v['high']:+.3f}] ({v['verdict']}, {v['n']} held-out queries)"
                )
    return lines


def model_card(run: RunDir, component: str, folder: Path, cfg: dict) -> ModelCard:
    """The card of one exported component: Hub metadata, the run's figures and lineage, then the stage's own card.

    Args:
        run: the run directory.
        component: ``embedder``, ``reranker`` or ``generator``.
        folder: the exported model folder (its ``README.md``, if any, is kept below ragtune's section).
        cfg: the run's resolved config as a mapping.
    """
    stage, _, library = COMPONENTS[component]
    record = run.load_manifest()[stage]
    existing = folder / "README.md"
    card = ModelCard.load(existing) if existing.is_file() else ModelCard("---\n---\n")
    data = card.data.to_dict() if card.data else {}
    base = _base_model(cfg, component)
    data |= {"library_name": library, "tags": sorted({*data.get("tags", []), "ragtune", f"ragtune-{component}"})}
    if base and not base.startswith(("bundled:", "/", ".")):
        data["base_model"] = base  # only a hub id is a valid base_model reference
    finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.ended))
    lineage = [
        f"- run `{run.root.name}`, stage `{stage}` finished {finished}",
        f"- base model: `{base}`",
        f"- stage config hash `{record.config_hash}`; inputs: "
        + (", ".join(f"`{k}` {h}" for k, h in sorted(record.inputs.items())) or "none recorded"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items())),
    ]
    section = [
        f"# ragtune {component} of run `{run.root.name}`",
        "",
        "## Figures from the run",
        "",
        *_figures(run, component, record),
        "",
        "## Lineage",
        "",
        *lineage,
        "",
    ]
    return ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n" + "\n".join(section) + "\n" + (card.text or ""))


def export_run(run: RunDir, to: Path) -> dict[str, dict]:
    """Copy each finished component into ``to/<component>`` with its card; write ``to/export.json``.

    Returns:
        component -> ``{"stage", "output", "folder"}`` for what was exported.

    Raises:
        StageInputError: no component's stage has finished.
    """
    import yaml

    cfg = yaml.safe_load(run.path("config.resolved.yaml").read_text(encoding="utf-8")) or {}
    manifest = run.load_manifest()
    exported: dict[str, dict] = {}
    for component, (stage, keys, _) in COMPONENTS.items():
        if stage not in manifest:
            logger.info("export: %s skipped (stage %s has not finished)", component, stage)
            continue
        key = next(k for k in (*keys, None) if k is None or k in manifest[stage].outputs)
        if key is None:
            continue
        source = Path(run.require(stage, key)[key])
        target = to / component
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        model_card(run, component, target, cfg).save(target / "README.md")
        exported[component] = {"stage": stage, "output": key, "folder": component}
    if not exported:
        raise StageInputError(f"export: no stage of {run.root} has finished (run `ragtune run CONFIG` first)")
    meta = {"run": run.root.name, "ragtune": version("ragtune"), "components": exported}
    (to / "export.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return exported


def push_export(to: Path, prefix: str, api: HfApi | None = None, private: bool = True) -> list[str]:
    """Upload each exported folder to ``<prefix>-<component>`` on the Hub; returns the repo URLs.

    Args:
        to: a folder written by :func:`export_run`.
        prefix: ``ORG/PREFIX``.
        api: the client (default ``HfApi()``, huggingface_hub's own token lookup).
        private: create missing repos as private.
    """
    if prefix.count("/") != 1 or not all(prefix.split("/")):
        raise ValueError(f"--push {prefix!r}: expected ORG/PREFIX, e.g. my-org/support-rag")
    api = api or HfApi()
    exported = json.loads((to / "export.json").read_text(encoding="utf-8"))["components"]
    urls = []
    for component, info in exported.items():
        repo_id = f"{prefix}-{component}"
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        api.upload_folder(repo_id=repo_id, folder_path=to / info["folder"], commit_message="ragtune export")
        logger.info("export: pushed %s to %s", component, url)
        urls.append(str(url))
    return urls


def make_parser() -> argparse.ArgumentParser:
    """``ragtune export RUN --to DIR [--push ORG/PREFIX]``."""
    parser = argparse.ArgumentParser(prog="ragtune export", description="export a run's models for the Hub")
    parser.add_argument("run_dir", help="a run directory (runs/<name>)")
    parser.add_argument("--to", required=True, type=Path, help="folder to write the three models into")
    parser.add_argument("--push", metavar="ORG/PREFIX", help="also upload to ORG/PREFIX-{embedder,reranker,generator}")
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m pipeline.export``; a missing run or bad prefix exits 2 with one line."""
    from pipeline.entry import USER_ERRORS, setup_logging

    setup_logging()
    args = make_parser().parse_args(argv)
    try:
        exported = export_run(RunDir(args.run_dir), args.to)
        print(f"exported {', '.join(exported)} to {args.to}")
        if args.push:
            for url in push_export(args.to, args.push):
                print(f"pushed {url}")
    except (*USER_ERRORS, ValueError, OSError) as e:  # OSError: huggingface_hub's HTTP errors, missing files
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
