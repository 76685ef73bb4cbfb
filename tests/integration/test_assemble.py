"""Assembly: the persisted LlamaIndex index, top-k parity with the harness, and the RAFT-prompted engine."""

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from fakes.upstream import record_tuned_reranker_and_adapter

from ragtune.app.assemble import SentenceTransformerEmbedding, build_query_engine, load_vector_index
from ragtune.app.cli import main as cli
from ragtune.eval.rankings import retrieve
from ragtune.pipeline.config import load_config
from ragtune.pipeline.generator import generate_batched, load_generator
from ragtune.pipeline.nodes import chunk_id_of
from ragtune.pipeline.precision import inference_dtype
from ragtune.pipeline.raft_format import build_messages
from ragtune.pipeline.retrieval import DenseRetriever
from ragtune.pipeline.rundir import RunDir, read_jsonl


def _setup(tiny_config: Path, bert: Path, llama: Path) -> tuple:
    overrides = [
        "synth.enabled=false",
        f"embed.base_model={bert}",
        f"rerank.cross_encoder.base_model={bert}",
        f"rerank.query_likelihood.generator={llama}",
        f"raft.base_model={llama}",
        "assemble.max_new_tokens=6",
        # The simulated stages record no dev figures, so auto would serve the baselines (tests/unit/test_promotion).
        "assemble.embedder=tuned",
        "assemble.reranker=tuned",
        "assemble.generator=tuned",
    ]
    cli(["data", str(tiny_config), *overrides])
    cfg = load_config(tiny_config, overrides)
    return cfg, RunDir(Path(cfg.run.root) / cfg.run.name)


def _record_embedder(run: RunDir, model_dir: Path) -> None:
    shutil.rmtree(run.path("embed/model"), ignore_errors=True)
    shutil.copytree(model_dir, run.path("embed/model"))
    run.record("embed", config_hash="t", inputs={}, outputs={"model": "embed/model"}, started=time.time())


def test_index_persists_reloads_rebuilds_and_matches_harness_top_k(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, tmp_path: Path
) -> None:
    _, run = _setup(tiny_config, tiny_bert_dir, tiny_llama_dir)
    _record_embedder(run, tiny_bert_dir)
    path = str(run.path("embed/model"))
    embed = SentenceTransformerEmbedding(path)
    index = load_vector_index(run, embed, path)
    meta = json.loads(run.path("index/meta.json").read_text())
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    assert meta["chunks"] == len(corpus) and meta["embedder"] == path

    # The harness's batched exact top-k equals LlamaIndex's retriever on every query.
    queries = [q["text"] for q in read_jsonl(run.path("data/queries.jsonl"))]
    k = 4
    harness = retrieve(DenseRetriever.load(path, corpus, cache_dir=run.path("cache/embeddings")), queries, k)
    li_retriever = index.as_retriever(similarity_top_k=k)
    llama_index = [[n.node.node_id for n in li_retriever.retrieve(q)] for q in queries]
    assert harness.ranked == llama_index
    node = li_retriever.retrieve(queries[0])[0].node
    assert set(node.metadata) == {"doc_id", "source"} and node.get_content() in {c["text"] for c in corpus}

    # Reloaded, not rebuilt, while embedder and corpus are unchanged.
    load_vector_index(run, embed, path)
    assert json.loads(run.path("index/meta.json").read_text())["built"] == meta["built"]

    # A changed embedder rebuilds it.
    from sentence_transformers import SentenceTransformer

    changed = SentenceTransformer(str(tiny_bert_dir))
    with torch.no_grad():
        next(changed.parameters()).add_(0.01)
    changed.save(str(tmp_path / "changed"))
    _record_embedder(run, tmp_path / "changed")
    load_vector_index(run, SentenceTransformerEmbedding(path), path)
    rebuilt = json.loads(run.path("index/meta.json").read_text())
    assert rebuilt["embedder_hash"] != meta["embedder_hash"] and rebuilt["built"] > meta["built"]


def test_embedding_routes_queries_and_documents_like_the_harness(tiny_bert_dir: Path, tmp_path: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.base.modules import Dense, Router

    base = SentenceTransformer(str(tiny_bert_dir))
    modules = list(base)
    dim = base.get_sentence_embedding_dimension()
    torch.manual_seed(0)
    router = Router.for_query_document(query_modules=[*modules, Dense(dim, dim)], document_modules=modules)
    SentenceTransformer(modules=[router]).save(str(tmp_path / "adapter"))
    reference = SentenceTransformer(str(tmp_path / "adapter"))
    embed = SentenceTransformerEmbedding(str(tmp_path / "adapter"))
    query = embed.get_query_embedding("heron failover")
    text = embed.get_text_embedding("heron failover")
    assert query == pytest.approx(
        reference.encode_query(["heron failover"], normalize_embeddings=True)[0].tolist(), abs=1e-5
    )
    assert text == pytest.approx(
        reference.encode_document(["heron failover"], normalize_embeddings=True)[0].tolist(), abs=1e-5
    )
    assert query != pytest.approx(text, abs=1e-3)  # the query route (adapter) was taken


def test_query_engine_prompts_exactly_like_training_and_cli_prints_sources(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, capsys
) -> None:
    cfg, run = _setup(tiny_config, tiny_bert_dir, tiny_llama_dir)
    _record_embedder(run, tiny_bert_dir)
    record_tuned_reranker_and_adapter(run, tiny_bert_dir, tiny_llama_dir)
    question = "how long do I have to do a takeover when the router instance dies"

    engine = build_query_engine(cfg, run)
    response = engine.query(question)
    nodes = response.source_nodes
    assert len(nodes) == cfg.assemble.top_n  # reranked top_k down to top_n
    # The generator's prompt is build_messages over the reranked chunks + the adapter's chat template.
    dtype = inference_dtype(cfg.assemble.dtype)  # the engine's precision
    model, tokenizer = load_generator(str(tiny_llama_dir), str(run.path("raft/adapter")), dtype)
    messages = build_messages(question, [n.node.get_content() for n in nodes])
    assert response.metadata["prompt"] == tokenizer.apply_chat_template(
        messages, add_generation_prompt=True, tokenize=False
    )
    # ... and it answers as the harness's batched generation does for the same prompt (the adapter is on).
    harness_answer = generate_batched(model, tokenizer, [messages], cfg.assemble.max_new_tokens)[0]
    assert response.metadata["raw"] == harness_answer
    base_model, base_tokenizer = load_generator(str(tiny_llama_dir), None, dtype)
    assert generate_batched(base_model, base_tokenizer, [messages], cfg.assemble.max_new_tokens)[0] != harness_answer

    # Without a reranker the generator reads the retriever's top_n.
    plain = build_query_engine(cfg, run, cfg.assemble.model_copy(update={"reranker": "none", "generator": "base"}))
    assert plain.reranker is None and len(plain.query(question).source_nodes) == cfg.assemble.top_n

    capsys.readouterr()
    cli(["query", str(run.root), question])
    out = capsys.readouterr().out
    assert out.startswith("Answer:") and "Quotes:" in out and "Sources:" in out
    # Every source the engine retrieved, in rank order, with its document, file and chunk id.
    sources = out.split("Sources:\n", 1)[1].splitlines()
    for rank, (line, node) in enumerate(zip(sources, nodes, strict=False), 1):
        md = node.node.metadata
        assert line.startswith(f"  {rank}. {md['doc_id']} ({md['source']}) chunk {chunk_id_of(node.node)} score ")


def test_fused_reranker_orders_like_the_harness_at_the_recorded_weight(tiny_bert_dir: Path) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
    from sentence_transformers import CrossEncoder

    from ragtune.app.assemble import FusedSentenceTransformerRerank
    from ragtune.pipeline.ranking import fused_order

    texts = ["Heron fails over in minutes.", "Tortoise drains its queue.", "Marmot keeps snapshots.", "a b c"]
    retrieval = [0.9, 0.7, 0.4, 0.1]
    nodes = [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=s)
        for i, (t, s) in enumerate(zip(texts, retrieval, strict=True))
    ]
    query = "how does heron fail over"
    torch.manual_seed(0)
    ce_scores = CrossEncoder(str(tiny_bert_dir), num_labels=1).predict([(query, t) for t in texts]).tolist()
    for weight in (0.0, 0.5, 1.0):
        torch.manual_seed(0)  # the same fresh head as above
        reranker = FusedSentenceTransformerRerank(
            model=str(tiny_bert_dir), top_n=3, cross_encoder_kwargs={"num_labels": 1}, fusion_weight=weight
        )
        out = reranker.postprocess_nodes([n.model_copy() for n in nodes], query_bundle=QueryBundle(query))
        ids = [f"n{i}" for i in range(4)]
        assert [n.node.node_id for n in out] == fused_order(ids, retrieval, ce_scores, weight)[:3]


def test_fused_reranker_takes_a_query_likelihood_reranker_and_orders_by_its_scores(tiny_llama_dir: Path) -> None:
    from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode

    from ragtune.app.assemble import FusedSentenceTransformerRerank
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker
    from ragtune.pipeline.ranking import fused_order

    likelihood = QueryLikelihoodReranker(*load_generator(str(tiny_llama_dir), None, "float32"))
    texts = ["Heron fails over in minutes.", "Tortoise drains its queue.", "Marmot keeps snapshots."]
    retrieval = [0.9, 0.5, 0.1]
    nodes = [
        NodeWithScore(node=TextNode(id_=f"n{i}", text=t), score=s)
        for i, (t, s) in enumerate(zip(texts, retrieval, strict=True))
    ]
    query = "how does heron fail over"
    scores = likelihood.predict([(query, t) for t in texts])
    for weight in (0.5, 1.0):
        reranker = FusedSentenceTransformerRerank(
            model="query-likelihood", top_n=2, fusion_weight=weight, reranker=likelihood
        )
        out = reranker.postprocess_nodes([n.model_copy() for n in nodes], query_bundle=QueryBundle(query))
        assert [n.node.node_id for n in out] == fused_order(["n0", "n1", "n2"], retrieval, scores, weight)[:2]


def test_extractive_generator_answers_with_a_context_sentence_and_no_llm(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, capsys
) -> None:
    cfg, run = _setup(tiny_config, tiny_bert_dir, tiny_llama_dir)
    _record_embedder(run, tiny_bert_dir)
    engine = build_query_engine(
        cfg, run, cfg.assemble.model_copy(update={"reranker": "none", "generator": "extractive"})
    )
    assert engine.llm is None and engine.answerer is not None
    response = engine.query("how long do I have to do a takeover")
    context = [n.node.get_content() for n in response.source_nodes]
    assert response.metadata["well_formed"] and response.metadata["prompt"] == ""
    assert response.metadata["quotes"] == [response.response]
    assert any(" ".join(response.response.split()) in " ".join(chunk.split()) for chunk in context)

    capsys.readouterr()
    cli(
        [
            "query",
            str(run.root),
            "how long do I have to do a takeover",
            "assemble.reranker=none",
            "assemble.generator=extractive",
        ]
    )
    assert capsys.readouterr().out.startswith(f"Answer: {response.response}")


def test_truncate_dim_serves_cut_vectors_through_the_index_the_engine_and_the_server(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    from ragtune.app.serve import load_stack
    from ragtune.pipeline.config import ConfigError

    cfg, run = _setup(tiny_config, tiny_bert_dir, tiny_llama_dir)
    _record_embedder(run, tiny_bert_dir)
    served = ["assemble.reranker=none", "assemble.generator=extractive", "assemble.retrieval=dense"]
    # The server's stack (what /v1/embeddings encodes with) is the engine's, at the served dimension, normalised.
    stack = load_stack(run.root, [*served, "assemble.truncate_dim=16"])
    for input_type in ("query", "document"):
        [vector] = stack.embed(["heron failover"], input_type)
        assert len(vector) == 16 and torch.tensor(vector).norm().item() == pytest.approx(1.0, abs=1e-5)
    meta = json.loads(run.path("index/meta.json").read_text())
    assert meta["truncate_dim"] == 16
    # The index holds 16-dimensional vectors; the shared embedding cache still holds the full ones.
    stored = json.loads(run.path("index/default__vector_store.json").read_text())["embedding_dict"]
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    assert len(stored) == len(corpus) and {len(v) for v in stored.values()} == {16}
    [cached] = list(run.path("cache/embeddings").iterdir())
    assert torch.load(cached).shape == (len(corpus), 32)
    engine = stack.engine
    queries = [q["text"] for q in read_jsonl(run.path("data/queries.jsonl"))]
    # ... and it retrieves what the harness's retriever does at the same dimension.
    path = str(run.path("embed/model"))
    k = cfg.assemble.top_n
    harness = retrieve(
        DenseRetriever.load(path, corpus, cache_dir=run.path("cache/embeddings"), truncate_dim=16), queries, k
    )
    assert [[chunk_id_of(n.node) for n in engine.retriever.retrieve(q)] for q in queries] == harness.ranked
    full = retrieve(DenseRetriever.load(path, corpus, cache_dir=run.path("cache/embeddings")), queries, k)
    assert full.ranked != harness.ranked  # the cut changed some ranking: the engine did not serve full vectors

    # Back to the full dimension: the index is rebuilt at it.
    assert len(load_stack(run.root, served).embed(["heron failover"], "query")[0]) == 32
    rebuilt = json.loads(run.path("index/meta.json").read_text())
    assert rebuilt["truncate_dim"] is None and rebuilt["built"] > meta["built"]
    # A dimension above the embedder's is refused when it loads, naming the key.
    with pytest.raises(ConfigError, match=r"assemble\.truncate_dim: 64 exceeds the embedding dimension 32"):
        build_query_engine(
            cfg,
            run,
            cfg.assemble.model_copy(update={"reranker": "none", "generator": "extractive", "truncate_dim": 64}),
        )
