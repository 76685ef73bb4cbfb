"""Export a run's models ready to push to the Hugging Face Hub (opt-in), or its data in an outside format.

    ragtune export runs/demo --to exported/ [--all] [--push ORG/PREFIX]
    ragtune export runs/demo --to exported/ --format llamaindex|beir

Writes ``DIR/embedder`` (the tuned sentence-transformers model), ``DIR/reranker`` and ``DIR/generator`` (the
merged RAFT model, or the LoRA adapter over its base), each with a model card (``README.md``: Hub metadata, the
promotion gate's decision, the run's figures, lineage), and ``DIR/export.json`` listing what came from which
stage and what was left out. Only finished stages are exported, and of those only what the promotion gate
serves by default (:mod:`ragtune.pipeline.promotion`, as ``ragtune status`` shows it); ``--all`` adds the
unpromoted ones, their cards marked "not promoted: <why>".

The reranker of the default kind (query likelihood) is exported as a loadable artifact: its peft adapter, with
``adapter_config.json`` naming the base LM by its hub id (a bundled model's origin, see
:func:`ragtune.pipeline.models.hub_id`; an absolute local path when the base has none, which the card says),
the base's tokenizer, ``ragtune_reranker.json`` (prompt, passage length, precision) and ``ragtune_fusion.json``.
Its card shows how to load it from the folder alone, with ragtune's
:meth:`~ragtune.pipeline.query_likelihood.QueryLikelihoodReranker.load` or with peft and transformers only. A
cross-encoder reranker (``rerank.kind: cross_encoder``) is the stage's sentence-transformers folder as it is.
A generator adapter names its base the same way.

``--push ORG/PREFIX`` uploads each folder to ``ORG/PREFIX-embedder``, ``-reranker`` and ``-generator``
with ``huggingface_hub`` (creating private repos when missing; the token is huggingface_hub's own:
``HF_TOKEN`` or ``hf auth login``). Nothing leaves the machine without ``--push``. No token, no network or a
token the Hub refuses is one error line before anything is exported (exit 2).

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

from huggingface_hub import HfApi, ModelCard, ModelCardData, get_token
from huggingface_hub.errors import HfHubHTTPError, HTTPError

from ragtune.pipeline.models import hub_id, resolve_model
from ragtune.pipeline.promotion import Promotion, gpl_enabled_of, promotions, tuned_embedder
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
ADAPTER_CONFIG = "adapter_config.json"
FOLDER_PLACEHOLDER = "PATH/TO/THIS/FOLDER"  # where the card's loader snippets name the exported folder
EXAMPLE_PAIR = ("how do I rotate the signing key?", "The signing key rotates with `vault rotate` every 90 days.")
EXAMPLE = f"query, passage = {json.dumps(EXAMPLE_PAIR[0])}, {json.dumps(EXAMPLE_PAIR[1])}"
RAGTUNE_SNIPPET = f"""\
import json

from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker

folder = "{FOLDER_PLACEHOLDER}"  # or huggingface_hub.snapshot_download(REPO_ID) once pushed
reranker = QueryLikelihoodReranker.load(folder)  # base="<hub id or path>": the adapter on another copy of the base
fusion_weight = json.load(open(f"{{folder}}/ragtune_fusion.json"))["fusion_weight"]
# served: fusion_weight * reranker score + (1 - fusion_weight) * retriever score, each min-max scaled
{EXAMPLE}
print(reranker.predict([(query, passage)])[0])
"""
PEFT_SNIPPET = f"""\
import json

import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

folder = "{FOLDER_PLACEHOLDER}"  # or the repo id once pushed
model = AutoPeftModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()  # base: adapter_config.json
tokenizer = AutoTokenizer.from_pretrained(folder)
spec = json.load(open(f"{{folder}}/ragtune_reranker.json"))
head, tail = spec["prompt"].split("{{passage}}")


def ids(text, limit=None):
    return tokenizer(text, add_special_tokens=False).input_ids[:limit]


def score(query, passage):
    \"\"\"The mean log-probability of the query's tokens after the prompt holding the passage.\"\"\"
    context = ids(head) + ids(" " + passage, spec["max_length"]) + ids(tail)
    target = ids(" " + query, spec["max_length"])
    with torch.no_grad():
        logits = model(torch.tensor([context + target])).logits[0, len(context) - 1 : -1]
    return logits.log_softmax(-1).gather(1, torch.tensor(target)[:, None]).mean().item()


{EXAMPLE}
print(score(query, passage))
"""


def component_stage(component: str, manifest: dict[str, Any], cfg: dict) -> str:
    """The stage whose output is the tuned ``component``: for the embedder, the GPL round's when it is the tuned one."""
    if component == "embedder":
        return tuned_embedder(manifest, gpl_enabled_of(cfg)).stage
    return COMPONENTS[component][0]


def _base_model(cfg: dict, component: str) -> str:
    section = {"embedder": "embed", "reranker": "rerank", "generator": "raft"}[component]
    return str(cfg.get(section, {}).get("base_model", ""))


def base_name(base: str) -> str:
    """How an exported folder names its base model: the hub id (:func:`hub_id`), else its absolute local path.

    Raises:
        ModelNotFoundError: a base with no hub id that is not on this machine either.
    """
    return hub_id(base) or str(Path(resolve_model(base)).resolve())


def name_adapter_base(folder: Path, name: str) -> None:
    """Point the peft adapter in ``folder`` at its base ``name`` (training wrote the path it loaded it from)."""
    path = folder / ADAPTER_CONFIG
    config = json.loads(path.read_text(encoding="utf-8"))
    config["base_model_name_or_path"] = name
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def export_query_likelihood(folder: Path) -> tuple[str, list[str]]:
    """Make the copied query-likelihood reranker in ``folder`` loadable from the folder alone.

    The adapter names its base by :func:`base_name`; a base with no hub id is named by its absolute path in
    ``ragtune_reranker.json`` too (the folder no longer depends on the directory it was trained from); the
    base's tokenizer is saved beside the adapter.

    Returns:
        (the base model reference the card names, the card's "Loading" section as Markdown lines).
    """
    from transformers import AutoTokenizer

    from ragtune.pipeline.query_likelihood import SPEC_FILE

    spec_path = folder / SPEC_FILE
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    generator = spec["generator"]
    hub, name = hub_id(generator), base_name(generator)
    if hub is None:
        spec["generator"] = name
        spec_path.write_text(json.dumps(spec, indent=2) + "\n", encoding="utf-8")
    AutoTokenizer.from_pretrained(resolve_model(generator)).save_pretrained(str(folder))
    adapter = (folder / ADAPTER_CONFIG).is_file()
    if adapter:
        name_adapter_base(folder, name)
    lines = [
        "## Loading",
        "",
        "A query-likelihood reranker: the score of a (query, passage) pair is the mean log-probability of the "
        "query's tokens under the causal LM, after `ragtune_reranker.json`'s prompt holding the passage "
        "(higher: more relevant). `ragtune_fusion.json` holds the weight ragtune fuses it with the retriever at.",
        "",
    ]
    if hub is None:
        lines += [
            f"The base `{generator}` has no hub id: `ragtune_reranker.json` (and the adapter) name it by its local "
            f"path `{name}`, so load it where that path exists, or pass `base=` to ragtune's loader.",
            "",
        ]
    elif generator.startswith("bundled:"):
        lines += [
            f"The base is ragtune's bundled copy `{generator}` of `{hub}`: ragtune's loader uses that copy, the "
            "weights the run scored with. Loaded from the Hub, the base's weights may differ from it (ragtune's "
            "SmolLM2 is a Q4_1 GGUF conversion), and so may the scores, slightly.",
            "",
        ]
    lines += ["With ragtune:", "", "```python", *RAGTUNE_SNIPPET.splitlines(), "```", ""]
    if adapter:
        lines += [
            f"With peft and transformers only (the adapter over `{name}`; ragtune also "
            "neutralises chat-format tags in passages):",
            "",
            "```python",
            *PEFT_SNIPPET.splitlines(),
            "```",
            "",
        ]
    else:
        lines += ["No adapter: the reranker is the base LM as it is, with the prompt in `ragtune_reranker.json`.", ""]
    return spec["generator"], lines


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


def promotion_line(component: str, promotion: Promotion) -> str:
    """The card's line on the promotion gate's decision.

    Example:
        >>> promotion_line("reranker", Promotion(False, "no dev slice"))
        '**not promoted: no dev slice** (exported with `--all`; `assemble.reranker: auto` does not serve it)'
    """
    if promotion.promoted:
        return f"promoted: `assemble.{component}: auto` serves it ({promotion.reason})"
    return (
        f"**not promoted: {promotion.reason}** (exported with `--all`; `assemble.{component}: auto` does not serve it)"
    )


def model_card(
    run: RunDir,
    component: str,
    stage: str,
    folder: Path,
    cfg: dict,
    promotion: Promotion,
    base: str | None = None,
    library: str | None = None,
    loading: list[str] | None = None,
) -> ModelCard:
    """The card of one exported component: Hub metadata, the gate's decision, the run's figures and lineage, how to
    load it, then the stage's own card.

    Args:
        run: the run directory.
        component: ``embedder``, ``reranker`` or ``generator``.
        stage: the stage whose output it is (:func:`component_stage`).
        folder: the exported model folder (its ``README.md``, if any, is kept below ragtune's section).
        cfg: the run's resolved config as a mapping.
        promotion: the promotion gate's decision on the component.
        base: its base model reference (default: the stage's configured ``base_model``).
        library: the Hub's ``library_name`` (default: ``peft`` for an adapter, else the component's).
        loading: a "Loading" section's Markdown lines, or None.
    """
    record = run.load_manifest()[stage]
    existing = folder / "README.md"
    card = ModelCard.load(existing) if existing.is_file() else ModelCard("")
    data = card.data.to_dict() if card.data else {}
    base = base if base is not None else _base_model(cfg, component)
    if library is None:
        library = "peft" if (folder / ADAPTER_CONFIG).is_file() else COMPONENTS[component][2]
    tags = {*data.get("tags", []), "ragtune", f"ragtune-{component}"}
    data |= {"library_name": library, "tags": sorted(tags if promotion.promoted else {*tags, "ragtune-not-promoted"})}
    hub = hub_id(base) if base else None
    if hub:
        data["base_model"] = hub  # only a hub id is a valid base_model reference
    finished = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(record.ended))
    lineage = [
        f"- run `{run.root.name}`, stage `{stage}` finished {finished}",
        f"- base model: `{base}`" + (f" (on the Hub: `{hub}`)" if hub and hub != base else ""),
        f"- stage config hash `{record.config_hash}`; inputs: "
        + (", ".join(f"`{k}` {h}" for k, h in sorted(record.inputs.items())) or "none recorded"),
        "- versions: " + ", ".join(f"{k} {v}" for k, v in sorted(record.versions.items())),
    ]
    section = [
        f"# ragtune {component} of run `{run.root.name}`",
        "",
        promotion_line(component, promotion),
        "",
        "## Figures from the run",
        "",
        *_figures(run, component, record),
        "",
        "## Lineage",
        "",
        *lineage,
        "",
        *(loading or []),
    ]
    return ModelCard(f"---\n{ModelCardData(**data).to_yaml()}\n---\n" + "\n".join(section) + "\n" + (card.text or ""))


def export_run(run: RunDir, to: Path, include_unpromoted: bool = False) -> dict[str, dict]:
    """Copy each finished component the promotion gate serves into ``to/<component>`` with its card (a
    query-likelihood reranker made loadable: :func:`export_query_likelihood`); write ``to/export.json``.

    Args:
        include_unpromoted: export the finished components the gate did not promote too (``--all``).

    Returns:
        component -> ``{"stage", "output", "folder", "promoted"}`` for what was exported.

    Raises:
        StageInputError: no component's stage has finished, or (without ``include_unpromoted``) none is promoted.
    """
    import yaml

    from ragtune.pipeline.query_likelihood import is_query_likelihood  # torch: only once there are models to export

    cfg = yaml.safe_load(run.path(CONFIG_RESOLVED).read_text(encoding="utf-8")) or {}
    manifest = run.load_manifest()
    decided = promotions(run, gpl_enabled_of(cfg))
    exported: dict[str, dict] = {}
    left_out: dict[str, str] = {}
    for component, (_, keys, _) in COMPONENTS.items():
        stage = component_stage(component, manifest, cfg)
        if stage not in manifest:
            logger.info("export: %s skipped (stage %s has not finished)", component, stage)
            continue
        key = next(k for k in (*keys, None) if k is None or k in manifest[stage].outputs)
        if key is None:
            continue
        promotion = decided[component]
        if not promotion.promoted and not include_unpromoted:
            left_out[component] = f"not promoted: {promotion.reason}"
            logger.info("export: %s left out, not promoted (%s); --all exports it", component, promotion.reason)
            continue
        source = Path(run.require(stage, key)[key])
        target = to / component
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target)
        adapter = (target / ADAPTER_CONFIG).is_file()
        base, library, loading = None, None, None
        if is_query_likelihood(target):
            base, loading = export_query_likelihood(target)
            library = "peft" if adapter else "transformers"  # no adapter: the base LM as it is, with a prompt
        elif adapter and (hub := hub_id(_base_model(cfg, component))):  # no hub id: training's path is kept
            name_adapter_base(target, hub)
        card = model_card(run, component, stage, target, cfg, promotion, base, library, loading)
        card.save(target / "README.md")
        exported[component] = {"stage": stage, "output": key, "folder": component, "promoted": promotion.promoted}
    if not exported and left_out:
        reasons = "; ".join(f"{c}: {why}" for c, why in left_out.items())
        raise StageInputError(
            f"export: no finished component of {run.root} is promoted ({reasons}); --all exports them"
        )
    if not exported:
        raise StageInputError(f"export: no stage of {run.root} has finished (run `ragtune run CONFIG` first)")
    meta = {"run": run.root.name, "ragtune": version("ragtune"), "components": exported, "left_out": left_out}
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


class PushError(RuntimeError):
    """``--push`` has no token, or the Hub cannot be reached or refused it; the message is one line."""


def _hub_failure(what: str, error: Exception) -> PushError:
    """``error`` (huggingface_hub's, or its HTTP client's) as one line saying what failed."""
    reason = " ".join(str(error).split()) or "no message"
    return PushError(f"--push: {what} ({type(error).__name__}: {reason})")


def check_push(prefix: str, api: HfApi) -> None:
    """Refuse a push before anything is written: ``prefix`` must be ``ORG/PREFIX``, a token must be set, and
    the Hub must answer for it (``whoami``, cached by ``api``).

    Raises:
        ValueError: a malformed prefix.
        PushError: no token (``HF_TOKEN`` unset and no ``hf auth login``), no network, or the token refused.
    """
    if prefix.count("/") != 1 or not all(prefix.split("/")):
        raise ValueError(f"--push {prefix!r}: expected ORG/PREFIX, e.g. my-org/support-rag")
    if not (api.token or get_token()):
        raise PushError("--push needs a Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was uploaded")
    try:
        api.whoami(cache=True)
    except HfHubHTTPError as e:  # the Hub answered: an invalid or expired token
        raise _hub_failure(f"the Hub at {api.endpoint} refused the token; nothing was uploaded", e) from None
    except (HTTPError, OSError) as e:  # HTTPError: the HTTP client's (no network, refused connection)
        raise _hub_failure(f"cannot reach the Hub at {api.endpoint}; nothing was uploaded", e) from None


def push_export(to: Path, prefix: str, api: HfApi | None = None, private: bool = True) -> list[str]:
    """Upload each exported folder to ``<prefix>-<component>`` on the Hub; returns the repo URLs.

    Args:
        to: a folder written by :func:`export_run`.
        prefix: ``ORG/PREFIX``.
        api: the client (default ``HfApi()``, huggingface_hub's own token lookup).
        private: create missing repos as private.

    Raises:
        ValueError: a malformed prefix.
        PushError: no token, or the Hub refused or could not be reached (the repos pushed before it stay).
    """
    api = api or HfApi()
    check_push(prefix, api)
    exported = json.loads((to / "export.json").read_text(encoding="utf-8"))["components"]
    urls = []
    for component, info in exported.items():
        repo_id = f"{prefix}-{component}"
        try:
            url = api.create_repo(repo_id, private=private, exist_ok=True)
            api.upload_folder(repo_id=repo_id, folder_path=to / info["folder"], commit_message="ragtune export")
        except (HTTPError, OSError) as e:
            pushed = f", after {', '.join(urls)}" if urls else ""
            raise _hub_failure(f"uploading {repo_id} failed{pushed}", e) from None
        logger.info("export: pushed %s to %s", component, url)
        urls.append(str(url))
    return urls


def make_parser() -> argparse.ArgumentParser:
    """``ragtune export RUN --to DIR [--all] [--push ORG/PREFIX | --format llamaindex|beir]``."""
    parser = argparse.ArgumentParser(
        prog="ragtune export", description="export a run's models for the Hub, or its data as LlamaIndex or BEIR"
    )
    parser.add_argument("run_dir", help="a run directory (runs/<name>)")
    parser.add_argument("--to", required=True, type=Path, help="folder to write the models (or the data) into")
    parser.add_argument(
        "--all", action="store_true", help="also export the models the promotion gate did not promote (so marked)"
    )
    parser.add_argument("--push", metavar="ORG/PREFIX", help="also upload to ORG/PREFIX-{embedder,reranker,generator}")
    parser.add_argument(
        "--format", choices=("models", *DATA_FORMATS), default="models", help="models (default), or the data as one"
    )
    return parser


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m ragtune.app.export``; a missing run, a bad prefix, no token or no network exit 2
    with one line."""
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
        api = HfApi() if args.push else None
        if api is not None:
            check_push(args.push, api)
        exported = export_run(RunDir(args.run_dir), args.to, include_unpromoted=args.all)
        print(f"exported {', '.join(exported)} to {args.to}")
        if api is not None:
            for url in push_export(args.to, args.push, api):
                print(f"pushed {url}")
    except (*USER_ERRORS, PushError, OSError) as e:  # OSError: missing files
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
