"""ragtune[langchain]: an LCEL chain over the tiny run returns the LlamaIndex engine's sources and answer."""

import time
from pathlib import Path

import pytest
from fakes.upstream import record_tuned_reranker_and_adapter, run_dir_of, simulate_embed_stage, tiny_model_overrides
from langchain_core.output_parsers import StrOutputParser
from langchain_core.runnables import RunnableLambda, RunnablePassthrough

from ragtune.app.cli import main as cli
from ragtune.app.langchain import langchain_components, raft_messages
from ragtune.pipeline.nodes import chunk_id_of


@pytest.mark.parametrize("retrieval", ["dense", "hybrid"])
def test_lcel_chain_sources_and_answer_equal_the_llamaindex_engine(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, retrieval: str
) -> None:
    overrides = [
        *tiny_model_overrides(tiny_bert_dir, tiny_llama_dir),
        "assemble.embedder=tuned",  # serve the tuned components whatever the serving default
        "assemble.reranker=tuned",
        "assemble.generator=tuned",
        "assemble.max_new_tokens=6",
        f"assemble.retrieval={retrieval}",
        "assemble.hybrid_depth=6",
    ]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)
    record_tuned_reranker_and_adapter(run, tiny_bert_dir, tiny_llama_dir)
    (run.path("rerank/model") / "ragtune_fusion.json").write_text('{"fusion_weight": 0.5}')  # fused, not plain
    run.record("rerank", config_hash="t", inputs={}, outputs={"model": "rerank/model"}, started=time.time())

    retriever, chat = langchain_components(run.root)
    engine = retriever.engine
    assert engine.reranker.fusion_weight == 0.5
    question = "how long do I have to do a takeover when the router instance dies"
    chain = (
        {"question": RunnablePassthrough(), "docs": retriever}
        | RunnableLambda(lambda x: raft_messages(x["question"], x["docs"]))
        | chat
        | StrOutputParser()
    )
    answer = chain.invoke(question)
    docs = retriever.invoke(question)

    response = engine.query(question)
    assert [d.metadata["chunk_id"] for d in docs] == [chunk_id_of(n.node) for n in response.source_nodes]
    assert [d.metadata["score"] for d in docs] == pytest.approx([n.score for n in response.source_nodes])
    assert [d.page_content for d in docs] == [n.node.get_content() for n in response.source_nodes]
    assert len(docs) == engine.reranker.top_n and {d.metadata["doc_id"] for d in docs} <= {
        n.node.metadata["doc_id"] for n in response.source_nodes
    }
    assert answer == response.metadata["raw"]  # same prompt, same greedy generator
