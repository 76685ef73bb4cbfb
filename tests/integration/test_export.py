"""ragtune export: the models the promotion gate serves (``--all``: every finished one, marked), with cards
written for the Hub; a query-likelihood reranker loadable from its folder alone; the push mocked only at the
HTTP transport, and refused in one line without a token or a network."""

import base64
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import yaml
from fakes.upstream import (
    PROMOTING_RERANK_METRICS,
    cache_as_hub_model,
    record_tuned_reranker_and_adapter,
    run_dir_of,
    simulate_query_likelihood_stage,
    tiny_model_overrides,
)
from huggingface_hub import HfApi
from huggingface_hub.utils import _http as hf_http

from ragtune.app.cli import main as cli
from ragtune.app.export import EXAMPLE_PAIR, FOLDER_PLACEHOLDER, export_run, push_export
from ragtune.pipeline.models import ModelNotFoundError
from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker
from ragtune.pipeline.rundir import CONFIG_RESOLVED, RunDir, StageInputError, read_jsonl

ROOT = Path(__file__).parents[2]
HUB_ID = "ragtune-tests/tiny-llama"  # the tiny Llama as a Hub model, in a hub cache the test lays out


@pytest.fixture
def finished_run(tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path):
    overrides = [
        *tiny_model_overrides(tiny_bert_dir, tiny_llama_dir),
        "eval.generation=false",
        "eval.bootstrap_samples=100",
    ]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    shutil.copytree(tiny_bert_dir, run.path("embed/model"))
    run.record(
        "embed",
        config_hash="e1",
        inputs={},
        outputs={"model": "embed/model"},
        metrics={"after_ndcg@10": 0.5},
        started=time.time(),
    )
    record_tuned_reranker_and_adapter(run, tiny_bert_dir, tiny_llama_dir)
    cli(["eval", str(tiny_config), *overrides])
    return run


class FakeHub:
    """The Hub's HTTP API as far as create_repo and upload_folder use it; records every request."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.repos: dict[str, dict] = {}
        self.files: dict[str, dict[str, bytes]] = {}
        self.validated: list[str] = []

    def __call__(self, request: httpx2.Request) -> httpx2.Response:
        path = request.url.path
        self.requests.append((request.method, path))
        assert request.headers["authorization"] == "Bearer hf_fake"
        if path == "/api/whoami-v2":  # the token check before anything is uploaded
            return httpx2.Response(200, json={"name": "acme-bot", "type": "user"})
        if path == "/api/repos/create":
            body = json.loads(request.content)
            repo = f"{body['organization']}/{body['name']}"
            self.repos[repo] = body
            return httpx2.Response(200, json={"url": f"https://huggingface.co/{repo}"})
        if path == "/api/validate-yaml":  # upload_folder has the card's metadata checked; the fake accepts it
            self.validated.append(json.loads(request.content)["content"])
            return httpx2.Response(200, json={"errors": [], "warnings": []})
        if "/preupload/" in path:
            files = json.loads(request.content)["files"]
            modes = [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]
            return httpx2.Response(200, json={"files": modes})
        if "/commit/" in path:
            repo = path.split("/api/models/", 1)[1].split("/commit/", 1)[0]
            lines = [json.loads(line) for line in request.content.decode().splitlines() if line]
            self.files[repo] = {
                op["value"]["path"]: base64.b64decode(op["value"]["content"]) for op in lines if op["key"] == "file"
            }
            return httpx2.Response(
                200, json={"commitUrl": f"https://huggingface.co/{repo}/commit/1", "commitOid": "1" * 40}
            )
        return httpx2.Response(404, json={"error": f"unexpected {request.method} {path}"})


def test_export_all_writes_three_models_with_cards_and_pushes_them(
    finished_run, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    run = finished_run
    out = tmp_path / "exported"
    exported = export_run(run, out, include_unpromoted=True)  # this run has no dev figures: nothing is promoted
    assert list(exported) == ["embedder", "reranker", "generator"]
    assert exported["generator"]["output"] == "adapter"  # no merged model in this run
    meta = json.loads((out / "export.json").read_text())
    assert meta["run"] == "tiny" and meta["components"] == exported and meta["left_out"] == {}

    from peft import PeftConfig
    from sentence_transformers import CrossEncoder, SentenceTransformer

    a = SentenceTransformer(str(out / "embedder")).encode(["heron failover"])
    b = SentenceTransformer(str(run.path("embed/model"))).encode(["heron failover"])
    assert a.tolist() == b.tolist()
    CrossEncoder(str(out / "reranker"))
    names = {p.name for p in run.path("rerank/model").iterdir()} | {"README.md"}
    assert {p.name for p in (out / "reranker").iterdir()} == names  # every file of the stage's folder, with a card
    generator = PeftConfig.from_pretrained(str(out / "generator"))
    assert generator.peft_type.value == "LORA"
    assert generator.base_model_name_or_path == str(tiny_llama_dir)  # a base with no hub id keeps training's path

    # Cards: Hub metadata, the run's figures (stage metrics and the eval verdict) and lineage.
    embed_card = (out / "embedder" / "README.md").read_text()
    front = yaml.safe_load(embed_card.split("---")[1])
    assert front["library_name"] == "sentence-transformers" and "ragtune-embedder" in front["tags"]
    assert "`after_ndcg@10`: 0.5000" in embed_card and "eval, embed vs rag_only, ndcg@10" in embed_card
    assert "stage config hash `e1`" in embed_card and "run `tiny`" in embed_card
    assert "**not promoted: not measured: no dev slice (embed.dev_fraction" in embed_card
    assert "ragtune-not-promoted" in front["tags"]
    gen_card = (out / "generator" / "README.md").read_text()
    assert yaml.safe_load(gen_card.split("---")[1])["library_name"] == "peft"
    assert "# ragtune generator of run `tiny`" in gen_card
    assert "**not promoted: not measured: the RAFT stage recorded no dev answer F1**" in gen_card

    # Push: only the HTTP transport is fake; huggingface_hub does the rest.
    hub = FakeHub()
    hf_http.set_client_factory(lambda: httpx2.Client(transport=httpx2.MockTransport(hub)))
    try:
        urls = push_export(out, "acme/support-rag", api=HfApi(token="hf_fake"))
    finally:
        hf_http.set_client_factory(hf_http.default_client_factory)
    repos = ["acme/support-rag-embedder", "acme/support-rag-reranker", "acme/support-rag-generator"]
    assert urls == [f"https://huggingface.co/{r}" for r in repos]
    assert all(hub.repos[r]["visibility"] == "private" for r in repos)
    for repo, component in zip(repos, exported, strict=True):
        local = {
            str(p.relative_to(out / component)): p.read_bytes() for p in (out / component).rglob("*") if p.is_file()
        }
        assert hub.files[repo] == local  # every file, byte for byte
    assert len(hub.validated) == 3 and all("ragtune" in card for card in hub.validated)

    with pytest.raises(ValueError, match="expected ORG/PREFIX"):
        push_export(out, "no-org", api=HfApi(token="hf_fake"))


def test_export_command_reports_a_run_with_no_stage_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [sys.executable, "-m", "ragtune.app.export", str(tmp_path / "empty"), "--to", str(tmp_path / "x")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and proc.stderr.strip().startswith("error:") and "Traceback" not in proc.stderr


def test_export_writes_the_data_as_beir_and_llamaindex_that_the_data_stage_reads_back(
    tiny_config: Path, tmp_path: Path, capsys
) -> None:
    from ragtune.stages.data.formats import import_beir, import_llamaindex

    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    corpus = {c["id"]: c["text"] for c in read_jsonl(run.path("data/corpus.jsonl"))}
    queries = read_jsonl(run.path("data/queries.jsonl"))

    cli(["export", str(run.root), "--to", str(tmp_path / "beir"), "--format", "beir"])
    assert "exported the data as beir" in capsys.readouterr().out
    docs, questions = import_beir(tmp_path / "beir", ["train", "eval"])
    assert {d.doc_id: d.text for d in docs} == corpus
    assert {q["qid"]: (q["text"], q["doc_relevance"]) for q in questions} == {
        q["qid"]: (q["text"], q["relevance"]) for q in queries
    }
    header, *rows = (tmp_path / "beir" / "qrels" / "eval.tsv").read_text().splitlines()
    assert header == "query-id\tcorpus-id\tscore"
    assert {row.split("\t")[0] for row in rows} == {q["qid"] for q in queries if q["split"] == "eval"}

    cli(["export", str(run.root), "--to", str(tmp_path / "li"), "--format", "llamaindex"])
    for split in ("train", "eval"):
        docs, questions = import_llamaindex(tmp_path / "li" / f"{split}.json")
        assert {d.doc_id: d.text for d in docs} == corpus
        chosen = [q for q in queries if q["split"] == split]
        assert {q["qid"]: sorted(q["doc_relevance"]) for q in questions} == {
            q["qid"]: sorted(q["positives"]) for q in chosen
        }


def test_export_of_data_refuses_push_and_a_run_without_data(tiny_config: Path, tmp_path: Path, capsys) -> None:
    run = run_dir_of(tiny_config)
    with pytest.raises(SystemExit) as exit_info:
        cli(["export", str(run.root), "--to", str(tmp_path / "x"), "--format", "beir", "--push", "org/p"])
    assert exit_info.value.code == 2 and "--push uploads models only" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        cli(["export", str(run.root), "--to", str(tmp_path / "x"), "--format", "llamaindex"])
    assert exit_info.value.code == 2 and "stage 'data' has not finished" in capsys.readouterr().err


def test_export_takes_the_gpl_model_as_the_embedder_when_it_is_the_tuned_one(finished_run, tmp_path: Path) -> None:
    run = finished_run
    shutil.copytree(run.path("embed/model"), run.path("gpl/model"))
    run.path("gpl/model/gpl-marker.txt").write_text("the GPL round's model")
    metrics = {"dev_ndcg@10_embed": 0.50, "dev_ndcg@10_gpl": 0.60, "dev_queries": 8}
    inputs = run.input_hashes("embed", "model")
    run.record("gpl", config_hash="g", inputs=inputs, outputs={"model": "gpl/model"}, metrics=metrics, started=0.0)
    resolved = run.path("config.resolved.yaml")
    cfg = yaml.safe_load(resolved.read_text())

    off = export_run(run, tmp_path / "off", include_unpromoted=True)
    assert off["embedder"]["stage"] == "embed"  # gpl.enabled false in the run's config
    resolved.write_text(yaml.safe_dump(cfg | {"gpl": {**cfg.get("gpl", {}), "enabled": True}}))
    exported = export_run(run, tmp_path / "on", include_unpromoted=True)
    assert exported["embedder"]["stage"] == "gpl" and (tmp_path / "on/embedder/gpl-marker.txt").is_file()
    assert "stage `gpl`" in (tmp_path / "on/embedder/README.md").read_text()


def test_export_leaves_out_what_the_promotion_gate_does_not_serve(finished_run, tmp_path: Path) -> None:
    run = finished_run
    with pytest.raises(StageInputError, match=r"no finished component of .* is promoted .*--all exports them"):
        export_run(run, tmp_path / "none")

    outputs = {"model": "rerank/model", "untrained": "rerank/untrained"}
    metrics = PROMOTING_RERANK_METRICS
    run.record("rerank", config_hash="t", inputs={}, outputs=outputs, metrics=metrics, started=time.time())
    exported = export_run(run, tmp_path / "gate")
    assert list(exported) == ["reranker"] and exported["reranker"]["promoted"] is True
    assert sorted(p.name for p in (tmp_path / "gate").iterdir()) == ["export.json", "reranker"]
    left_out = json.loads((tmp_path / "gate" / "export.json").read_text())["left_out"]
    assert left_out["embedder"].startswith("not promoted: not measured: no dev slice")
    assert left_out["generator"] == "not promoted: not measured: the RAFT stage recorded no dev answer F1"
    card = (tmp_path / "gate" / "reranker" / "README.md").read_text()
    assert "promoted: `assemble.reranker: auto` serves it (fusion weight 0.5: dev nDCG@10 fused 0.6000" in card
    assert "ragtune-not-promoted" not in card

    # --all adds the rest, marked; a generator adapter over a bundled base names it by its hub id.
    resolved = run.path(CONFIG_RESOLVED)
    cfg = yaml.safe_load(resolved.read_text())
    resolved.write_text(yaml.safe_dump(cfg | {"raft": {**cfg["raft"], "base_model": "bundled:smollm2-135m-instruct"}}))
    assert list(export_run(run, tmp_path / "all", include_unpromoted=True)) == ["embedder", "reranker", "generator"]
    adapter = json.loads((tmp_path / "all" / "generator" / "adapter_config.json").read_text())
    assert adapter["base_model_name_or_path"] == "HuggingFaceTB/SmolLM2-135M-Instruct"
    gen_card = (tmp_path / "all" / "generator" / "README.md").read_text()
    front = yaml.safe_load(gen_card.split("---")[1])
    assert front["base_model"] == "HuggingFaceTB/SmolLM2-135M-Instruct" and "ragtune-not-promoted" in front["tags"]
    assert "**not promoted: not measured: the RAFT stage recorded no dev answer F1**" in gen_card


def _hub_env(hub_cache: Path) -> dict[str, str]:
    """This process's environment, offline, with the Hugging Face hub cache at ``hub_cache``."""
    return {**os.environ, "HF_HUB_CACHE": str(hub_cache), "HF_HUB_OFFLINE": "1"}


def _new_run(config: Path) -> RunDir:
    """An empty run directory of ``config`` with its resolved config (what export reads)."""
    run = run_dir_of(config)
    run.root.mkdir(parents=True)
    shutil.copy(config, run.path(CONFIG_RESOLVED))
    return run


# Runs every Python block of an exported card (its loader snippets), the folder put in for the placeholder.
RUN_THE_CARD = f"""
import re, sys
folder = sys.argv[1]
card = open(folder + "/README.md", encoding="utf-8").read()
for code in re.findall(r"```python\\n(.*?)```", card, re.S):
    exec(code.replace({FOLDER_PLACEHOLDER!r}, folder), {{}})
"""


def test_a_query_likelihood_reranker_exports_as_an_adapter_that_loads_from_its_folder_alone(
    tiny_config: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    """The base is a Hub model (found offline in a hub cache the test lays out): the export names it by its
    hub id, and a fresh process loads the reranker from the export folder alone, by the card's two snippets."""
    hub = tmp_path / "hub"
    cache_as_hub_model(tiny_llama_dir, hub, HUB_ID)
    run = _new_run(tiny_config)
    expected = simulate_query_likelihood_stage(run, tiny_llama_dir, HUB_ID).predict([EXAMPLE_PAIR])[0]
    assert HUB_ID not in (run.path("rerank/model/adapter_config.json")).read_text()  # training wrote a local path

    out = tmp_path / "exported"
    proc = subprocess.run(
        [sys.executable, "-m", "ragtune.app.export", str(run.root), "--to", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_hub_env(hub),
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    folder = out / "reranker"
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert json.loads((folder / "ragtune_reranker.json").read_text())["generator"] == HUB_ID
    assert json.loads((folder / "ragtune_fusion.json").read_text()) == {"fusion_weight": 0.5}
    assert (folder / "tokenizer.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    card = (folder / "README.md").read_text()
    front = yaml.safe_load(card.split("---")[1])
    assert front["library_name"] == "peft" and front["base_model"] == HUB_ID and "ragtune-reranker" in front["tags"]
    assert "promoted: `assemble.reranker: auto` serves it" in card and "The rerank stage's own card" in card

    # Nothing of the run is left, nor the base's local copy: only the export folder and the base by its hub id.
    shutil.rmtree(run.root)
    shutil.rmtree(tiny_llama_dir)
    proc = subprocess.run(
        [sys.executable, "-c", RUN_THE_CARD, str(folder)],
        capture_output=True,
        text=True,
        timeout=300,
        env=_hub_env(hub),
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    ragtune_score, peft_score = (float(line) for line in proc.stdout.split())
    assert ragtune_score == pytest.approx(expected, abs=1e-4) and peft_score == pytest.approx(expected, abs=1e-4)


def test_a_query_likelihood_reranker_on_a_local_base_names_its_path_and_loads_over_a_given_base(
    tiny_config: Path, tiny_llama_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A base with no hub id (a local folder, named relative to where the run was trained) keeps its path, made
    absolute; where that path is gone, ragtune's loader takes the base as an argument."""
    monkeypatch.chdir(tiny_llama_dir.parent)
    run = _new_run(tiny_config)
    expected = simulate_query_likelihood_stage(run, tiny_llama_dir, tiny_llama_dir.name).predict([EXAMPLE_PAIR])[0]

    export_run(run, tmp_path / "exported")
    folder = tmp_path / "exported" / "reranker"
    local = str(tiny_llama_dir.resolve())
    assert json.loads((folder / "adapter_config.json").read_text())["base_model_name_or_path"] == local
    assert json.loads((folder / "ragtune_reranker.json").read_text())["generator"] == local
    card = (folder / "README.md").read_text()
    assert f"The base `{tiny_llama_dir.name}` has no hub id" in card and f"local path `{local}`" in card
    assert "base_model" not in yaml.safe_load(card.split("---")[1])

    moved = tiny_llama_dir.rename(tmp_path / "moved")
    with pytest.raises(ModelNotFoundError):
        QueryLikelihoodReranker.load(folder)
    loaded = QueryLikelihoodReranker.load(folder, base=str(moved))
    assert loaded.predict([EXAMPLE_PAIR])[0] == pytest.approx(expected, abs=1e-4)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("case", ["no token", "no network"])
def test_push_without_a_token_or_a_network_is_one_error_line_and_exit_2(case: str, tmp_path: Path) -> None:
    """Checked before anything is exported: no token anywhere (HF_TOKEN unset, an empty HF_HOME), or a token and
    a Hub endpoint where nothing listens (a closed port on this machine: refused at once, as offline)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING_FACE_", "TRANSFORMERS_OFFLINE"))}
    env["HF_HOME"] = str(tmp_path / "hf_home")
    endpoint = f"http://127.0.0.1:{_closed_port()}"
    if case == "no network":
        env |= {"HF_TOKEN": "hf_fake", "HF_ENDPOINT": endpoint}
    command = ["-m", "ragtune.app.export", str(tmp_path / "run"), "--to", str(tmp_path / "out")]
    proc = subprocess.run(
        [sys.executable, *command, "--push", "acme/support-rag"],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=ROOT,
    )
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    [line] = [line for line in proc.stderr.splitlines() if line.strip()]
    if case == "no token":
        assert line == (
            "error: --push needs a Hugging Face token: set HF_TOKEN or run `hf auth login`; nothing was uploaded"
        )
    else:
        assert line.startswith(f"error: --push: cannot reach the Hub at {endpoint}; nothing was uploaded (")
        assert "ConnectError" in line
