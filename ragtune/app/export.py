"""Export a run's three models ready to push to the Hugging Face Hub (opt-in), or its data in an outside format.

    ragtune export runs/demo --to exported/ [--push ORG/PREFIX]
    ragtune export runs/demo --to exported/ --format llamaindex|beir

Writes ``DIR/embedder`` (the tuned sentence-transformers model), ``DIR/reranker`` (the cross-encoder
and its ``ragtune_fusion.json``) and ``DIR/generator`` (the merged RAFT model, or the LoRA adapter
over its base), each with a model card (``README.md``: Hub metadata, the run's figures, lineage), and
``DIR/export.json`` listing what came from which stage. Only finished stages are exported.

``--push ORG/PREFIX`` uploads each folder to ``ORG/PREFIX-embedder``, ``-reranker`` and ``-generator``
with ``huggingface_hub`` (creating private repos when missing; the token is huggingface_hub's own:
``HF_TOKEN`` or ``hf auth login``). Nothing leaves the machine without ``--push``.

``--format llamaindex`` writes the data stage's corpus and queries as LlamaIndex
``EmbeddingQAFinetuneDataset`` files (``DIR/train.json``, ``DIR/eval.json``); ``--format beir`` writes the
BEIR layout (``DIR/corpus.jsonl``, ``DIR/queries.jsonl``, ``DIR/qrels/train.tsv``, ``DIR/qrels/eval.tsv``,
graded). Both are by chunk, and the data stage reads either back (``data.llamaindex_dataset``, ``data.beir``).
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

from ragtune.pipeline.promotion import gpl_enabled_of, tuned_embedder
from ragtune.pipeline.rundir import (
    CONFIG_RESOLVED,
    EVAL_JSON,
    RunDir,
    StageInputError,
    atomic_write_jsonl,
    atomic_write_text,
    read_jsonl,
)

logger = logging.getLogger(__name__)

# component -> (stage, output keys tried in order, library name on the Hub)
COMPONENTS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "embedder": ("embed", ("model",), "sentence-transformers"),
    "reranker": ("rerank", ("model",), "sentence-transformers"),
    "generator": ("raft", ("merged", "adapter"), "transformers"),
}
SPLITS = ("train", "eval")
DATA_FORMATS = ("llamaindex", "beir")
EVAL_PAIRS = {  # the eval comparison that shows each component's effect: (configuration, its reference)
    "embedder": ("embed", "rag_only"),
    "reranker": ("embed_rerank", "embed"),
    "generator": ("full", "embed_rerank"),
}


def component_stage(component: str, manifest: dict[str, Any], cfg: dict) -> str:
    """The stage whose output is the tuned ``component``: for the embedder, the GPL round's when it is the tuned one."""
    if component == "embedder":
        return tuned_embedder(manifest, gpl_enabled_of(cfg)).stage
    return COMPONENTS[component][0]


def _base_model(cfg: dict, component: str) -> str:
    section = {"embedder": "embed", "reranker": "rerank", "generator": "raft"}[component]
    return str(cfg.get(section, {}).get("base_model", ""))


def _figures(run: RunDir, component: str, record: Any) -> list[str]:
    """Markdown lines with the stage's recorded metrics and the eval delta that measures the component."""
    lines = [f"- `{k}`: {v:.4f}" if isinstance(v, float) else f"- `{k}`: {v}" for k, v in record.metrics.items()]
    report_path = run.path(EVAL_JSON)
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


def model_card(run: RunDir, component: str, stage: str, folder: Path, cfg: dict) -> ModelCard:
    """The card of one exported component: Hub metadata, the run's figures and lineage, then the stage's own card.

    Args:
        run: the run directory.
        component: ``embedder``, ``reranker`` or ``generator``.
        stage: the stage whose output it is (:func:`component_stage`).
        folder: the exported model folder (its ``README.md``, if any, is kept below ragtune's section).
        cfg: the run's resolved config as a mapping.
    """
    _, _, library = COMPONENTS[component]
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

    cfg = yaml.safe_load(run.path(CONFIG_RESOLVED).read_text(encoding="utf-8")) or {}
    manifest = run.load_manifest()
    exported: dict[str, dict] = {}
    for component, (_, keys, _) in COMPONENTS.items():
        stage = component_stage(component, manifest, cfg)
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
        model_card(run, component, stage, target, cfg).save(target / "README.md")
        exported[component] = {"stage": stage, "output": key, "folder": component}
    if not exported:
        raise StageInputError(f"export: no stage of {run.root} has finished (run `ragtune run CONFIG` first)")
    meta = {"run": run.root.name, "ragtune": version("ragtune"), "components": exported}
    (to / "export.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return exported


def export_llamaindex(path: Path, queries: list[dict], corpus: list[dict], split: str) -> None:
    """Write one split as an EmbeddingQAFinetuneDataset JSON that LlamaIndex users can load.

    Args:
        path: the JSON file to write.
        queries: rows of ``data/queries.jsonl``; only those of ``split`` are written.
        corpus: rows of ``data/corpus.jsonl`` (every chunk is written).
        split: ``train`` or ``eval``.
    """
    chosen = [q for q in queries if q["split"] == split]
    payload = {
        "queries": {q["qid"]: q["text"] for q in chosen},
        "corpus": {c["id"]: c["text"] for c in corpus},
        "relevant_docs": {q["qid"]: q["positives"] for q in chosen},
        "mode": "text",
    }
    atomic_write_text(path, json.dumps(payload, ensure_ascii=False, indent=1))


def export_beir(folder: Path, queries: list[dict], corpus: list[dict]) -> None:
    """Write the BEIR layout: corpus.jsonl (one row per chunk), queries.jsonl, qrels/<split>.tsv (graded).

    Args:
        folder: where to write.
        queries: rows of ``data/queries.jsonl`` (graded ``relevance`` per chunk; its ``positives`` otherwise).
        corpus: rows of ``data/corpus.jsonl``.
    """
    atomic_write_jsonl(folder / "corpus.jsonl", [{"_id": c["id"], "title": "", "text": c["text"]} for c in corpus])
    atomic_write_jsonl(folder / "queries.jsonl", [{"_id": q["qid"], "text": q["text"]} for q in queries])
    for split in SPLITS:
        rows = ["query-id\tcorpus-id\tscore"]
        for q in queries:
            if q["split"] == split:
                grades = q.get("relevance") or dict.fromkeys(q["positives"], 1)
                rows += [f"{q['qid']}\t{chunk}\t{grade}" for chunk, grade in grades.items()]
        atomic_write_text(folder / "qrels" / f"{split}.tsv", "\n".join(rows) + "\n")


def export_data(run: RunDir, to: Path, data_format: str) -> list[Path]:
    """Write the data stage's corpus and queries under ``to`` as ``llamaindex`` or ``beir``; returns the files.

    Raises:
        StageInputError: the data stage has not finished (or its outputs changed since).
    """
    data = run.require("data", "corpus", "queries")
    corpus, queries = read_jsonl(data["corpus"]), read_jsonl(data["queries"])
    if data_format == "llamaindex":
        files = [to / f"{split}.json" for split in SPLITS]
        for path, split in zip(files, SPLITS, strict=True):
            export_llamaindex(path, queries, corpus, split)
        return files
    export_beir(to, queries, corpus)
    return [to / "corpus.jsonl", to / "queries.jsonl", *(to / "qrels" / f"{split}.tsv" for split in SPLITS)]


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
    """``ragtune export RUN --to DIR [--push ORG/PREFIX | --format llamaindex|beir]``."""
    parser = argparse.ArgumentParser(
        prog="ragtune export", description="export a run's models for the Hub, or its data as LlamaIndex or BEIR"
    )
    parser.add_argument("run_dir", help="a run directory (runs/<name>)")
    parser.add_argument("--to", required=True, type=Path, help="folder to write the models (or the data) into")
    parser.add_argument("--push", metavar="ORG/PREFIX", help="also upload to ORG/PREFIX-{embedder,reranker,generator}")
    parser.add_argument(
        "--format", choices=("models", *DATA_FORMATS), default="models", help="models (default), or the data as one"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m ragtune.app.export``; a missing run or bad prefix exits 2 with one line."""
    from ragtune.pipeline.entry import USER_ERRORS, setup_logging

    setup_logging()
    parser = make_parser()
    args = parser.parse_args(argv)
    if args.push and args.format != "models":
        parser.error("--push uploads models only; leave it out with --format " + args.format)
    try:
        if args.format != "models":
            files = export_data(RunDir(args.run_dir), args.to, args.format)
            print(f"exported the data as {args.format}: {', '.join(str(f) for f in files)}")
            return
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
