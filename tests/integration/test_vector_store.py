"""assemble.vector_store: the index round-trips through Qdrant's embedded mode and retrieves as the harness does."""

import json
import shutil
import time
from pathlib import Path

import pytest

from ragtune.app.assemble import SentenceTransformerEmbedding
from ragtune.app.cli import main as cli
from ragtune.app.vector_store import close_vector_index, collection_name, load_vector_index
from ragtune.eval.rankings import retrieve
from ragtune.pipeline.config import ConfigError, load_config
from ragtune.pipeline.nodes import chunk_id_of, corpus_nodes
from ragtune.pipeline.retrieval import DenseRetriever
from ragtune.pipeline.rundir import RunDir, read_jsonl


def _run_with_embedder(tiny_config: Path, bert: Path) -> RunDir:
    cli(["data", str(tiny_config), "synth.enabled=false", f"embed.base_model={bert}"])
    cfg = load_config(tiny_config)
    run = RunDir(Path(cfg.run.root) / cfg.run.name)
    shutil.copytree(bert, run.path("embed/model"))
    run.record("embed", config_hash="t", inputs={}, outputs={"model": "embed/model"}, started=time.time())
    return run


def _ranked(index, queries: list[str], k: int) -> list[list[str]]:
    retriever = index.as_retriever(similarity_top_k=k)
    return [[chunk_id_of(n.node) for n in retriever.retrieve(q)] for q in queries]


def test_index_round_trips_through_embedded_qdrant_and_matches_harness(tiny_config: Path, tiny_bert_dir: Path) -> None:
    run = _run_with_embedder(tiny_config, tiny_bert_dir)
    path = str(run.path("embed/model"))
    embed = SentenceTransformerEmbedding(path)
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    queries = [q["text"] for q in read_jsonl(run.path("data/queries.jsonl"))]
    k = 4

    built = load_vector_index(run, embed, path, store="qdrant")
    first = _ranked(built, queries, k)
    close_vector_index(built)
    meta = json.loads(run.path("index/meta.json").read_text())
    assert meta["vector_store"] == "qdrant" and meta["collection"] == collection_name(run)
    assert meta["chunks"] == len(corpus) and (run.path("index/qdrant") / "collection").is_dir()
    assert not run.path("index/docstore.json").exists()  # the texts live in Qdrant, not in LlamaIndex's JSON

    # Reopened from disk, not rebuilt, and it returns the chunks (texts, metadata) the harness ranks.
    reloaded = load_vector_index(run, embed, path, store="qdrant")
    assert json.loads(run.path("index/meta.json").read_text())["built"] == meta["built"]
    assert _ranked(reloaded, queries, k) == first
    harness = retrieve(DenseRetriever.load(path, corpus, cache_dir=run.path("cache/embeddings")), queries, k)
    assert first == harness.ranked
    node = reloaded.as_retriever(similarity_top_k=1).retrieve(queries[0])[0].node
    row = next(c for c in corpus if c["id"] == chunk_id_of(node))
    assert node.get_content() == row["text"] and node.metadata["doc_id"] == row["doc_id"]
    close_vector_index(reloaded)

    # Switching the store rebuilds the index in the simple store, which ranks the same.
    simple = load_vector_index(run, embed, path, store="simple")
    switched = json.loads(run.path("index/meta.json").read_text())
    assert switched["vector_store"] == "simple" and switched["built"] > meta["built"]
    assert _ranked(simple, queries, k) == first


def test_qdrant_nodes_keep_the_chunk_id_beside_a_uuid() -> None:
    corpus = [{"id": "c1", "text": "Heron fails over.", "doc_id": "d", "source": "a.md"}]
    (node,) = corpus_nodes(corpus, uuid_ids=True)
    assert node.node_id != "c1" and len(node.node_id) == 36 and chunk_id_of(node) == "c1"
    assert node.node_id == corpus_nodes(corpus, uuid_ids=True)[0].node_id  # stable across builds
    (plain,) = corpus_nodes(corpus)
    assert plain.node_id == "c1" and chunk_id_of(plain) == "c1" and set(plain.metadata) == {"doc_id", "source"}
    assert "c1" not in node.get_content(metadata_mode="embed")  # the id stays out of what is embedded


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("chroma", "is not simple, qdrant or an http(s):// URL"),
        ("http://admin:hunter2@qdrant.internal:6333", "credentials do not belong"),
        ("https://qdrant.internal:6333/?api_key=abc", "credentials do not belong"),
    ],
)
def test_vector_store_values_are_checked(tiny_config: Path, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match="assemble.vector_store") as err:
        load_config(tiny_config, [f"assemble.vector_store={value}"])
    assert message in str(err.value)
    assert load_config(tiny_config, ["assemble.vector_store=http://127.0.0.1:6333"]).assemble.vector_store
