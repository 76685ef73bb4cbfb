"""ragtune export: three models with cards written for the Hub; the push mocked only at the HTTP transport."""

import base64
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import pytest
import yaml
from fakes.upstream import record_tuned_reranker_and_adapter, run_dir_of, tiny_model_overrides
from huggingface_hub import HfApi
from huggingface_hub.utils import _http as hf_http

from ragtune.app.cli import main as cli
from ragtune.app.export import export_run, push_export
from ragtune.pipeline.rundir import read_jsonl


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


def test_export_writes_three_models_with_cards_and_pushes_them(finished_run, tmp_path: Path) -> None:
    run = finished_run
    out = tmp_path / "exported"
    exported = export_run(run, out)
    assert list(exported) == ["embedder", "reranker", "generator"]
    assert exported["generator"]["output"] == "adapter"  # no merged model in this run
    meta = json.loads((out / "export.json").read_text())
    assert meta["run"] == "tiny" and meta["components"] == exported

    from peft import PeftConfig
    from sentence_transformers import CrossEncoder, SentenceTransformer

    a = SentenceTransformer(str(out / "embedder")).encode(["heron failover"])
    b = SentenceTransformer(str(run.path("embed/model"))).encode(["heron failover"])
    assert a.tolist() == b.tolist()
    CrossEncoder(str(out / "reranker"))
    names = {p.name for p in run.path("rerank/model").iterdir()} | {"README.md"}
    assert {p.name for p in (out / "reranker").iterdir()} == names  # every file of the stage's folder, with a card
    assert PeftConfig.from_pretrained(str(out / "generator")).peft_type.value == "LORA"

    # Cards: Hub metadata, the run's figures (stage metrics and the eval verdict) and lineage.
    embed_card = (out / "embedder" / "README.md").read_text()
    front = yaml.safe_load(embed_card.split("---")[1])
    assert front["library_name"] == "sentence-transformers" and "ragtune-embedder" in front["tags"]
    assert "`after_ndcg@10`: 0.5000" in embed_card and "eval, embed vs rag_only, ndcg@10" in embed_card
    assert "stage config hash `e1`" in embed_card and "run `tiny`" in embed_card
    gen_card = (out / "generator" / "README.md").read_text()
    assert yaml.safe_load(gen_card.split("---")[1])["library_name"] == "transformers"
    assert "# ragtune generator of run `tiny`" in gen_card

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

    assert export_run(run, tmp_path / "off")["embedder"]["stage"] == "embed"  # gpl.enabled false in the run's config
    resolved.write_text(yaml.safe_dump(cfg | {"gpl": {**cfg.get("gpl", {}), "enabled": True}}))
    exported = export_run(run, tmp_path / "on")
    assert exported["embedder"]["stage"] == "gpl" and (tmp_path / "on/embedder/gpl-marker.txt").is_file()
    assert "stage `gpl`" in (tmp_path / "on/embedder/README.md").read_text()
