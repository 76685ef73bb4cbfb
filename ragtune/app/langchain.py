"""LangChain adapters over a run's assembled stack (``pip install 'ragtune[langchain]'``).

- :class:`RagtuneRetriever` — a LangChain retriever over the engine's own retrieval: the tuned
  embedder's index (dense or hybrid, in the configured vector store), then the tuned cross-encoder
  fused with the retriever's scores at the weight the rerank stage recorded. Same objects as
  ``ragtune query``, so the same chunks in the same order.
- :class:`RagtuneChatModel` — a LangChain chat model over the engine's (RAFT-tuned) generator: the
  messages go through the tokenizer's chat template, then to the engine's LlamaIndex ``HuggingFaceLLM``
  (greedy, ``assemble.max_new_tokens``), exactly as ``ragtune query`` generates.

Example (a sketch over a finished run, not run as a doctest):
    retriever, chat = langchain_components("runs/demo")
    chain = (
        {"question": RunnablePassthrough(), "docs": retriever}
        | RunnableLambda(lambda x: raft_messages(x["question"], x["docs"]))
        | chat
        | StrOutputParser()
    )
    chain.invoke("how long do I have for a primary takeover?")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from langchain_core.callbacks import CallbackManagerForLLMRun, CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.retrievers import BaseRetriever
from llama_index.core.schema import QueryBundle
from pydantic import ConfigDict

from ragtune.app.assemble import RaftQueryEngine, build_query_engine
from ragtune.pipeline.config import load_config
from ragtune.pipeline.generator import chat_prompt
from ragtune.pipeline.nodes import chunk_id_of
from ragtune.pipeline.raft_format import build_messages
from ragtune.pipeline.rundir import CONFIG_RESOLVED, RunDir

ROLES = {"human": "user", "ai": "assistant", "system": "system"}


class RagtuneRetriever(BaseRetriever):
    """LangChain retriever: the engine's LlamaIndex retriever, then its fused reranker (if any).

    Each ``Document`` has the chunk text as ``page_content`` and ``chunk_id``, ``doc_id``, ``source``
    and the final ``score`` in its metadata.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)
    engine: RaftQueryEngine

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        bundle = QueryBundle(query)
        nodes = self.engine.retriever.retrieve(bundle)
        if self.engine.reranker is not None:
            nodes = self.engine.reranker.postprocess_nodes(nodes, query_bundle=bundle)
        return [
            Document(
                page_content=n.node.get_content(),
                metadata={
                    "chunk_id": chunk_id_of(n.node),
                    "doc_id": n.node.metadata.get("doc_id"),
                    "source": n.node.metadata.get("source"),
                    "score": n.score,
                },
            )
            for n in nodes
        ]


class RagtuneChatModel(BaseChatModel):
    """LangChain chat model over the engine's generator: chat template, then the engine's LlamaIndex LLM."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    llm: Any  # the engine's llama_index HuggingFaceLLM (greedy, max_new_tokens from assemble)
    tokenizer: Any

    @property
    def _llm_type(self) -> str:
        return "ragtune-generator"

    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        chat = [{"role": ROLES.get(m.type, m.type), "content": str(m.content)} for m in messages]
        text = self.llm.complete(chat_prompt(self.tokenizer, chat), formatted=True).text.strip()
        for marker in stop or []:
            text = text.split(marker, 1)[0]
        return ChatResult(generations=[ChatGeneration(message=AIMessage(content=text))])


def raft_messages(question: str, docs: list[Document]) -> list[BaseMessage]:
    """The RAFT prompt (the format the generator was tuned on) over retrieved documents, as LangChain messages."""
    turns = build_messages(question, [d.page_content for d in docs])
    kinds = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}
    return [kinds[t["role"]](content=t["content"]) for t in turns]


def langchain_components(run_path: str | Path) -> tuple[RagtuneRetriever, RagtuneChatModel]:
    """The retriever and chat model of a finished run (components as its ``assemble`` section chooses).

    Args:
        run_path: the run directory (reads ``config.resolved.yaml``).

    Returns:
        (retriever, chat model), sharing the engine ``ragtune query`` builds.
    """
    run = RunDir(run_path)
    cfg = load_config(run.path(CONFIG_RESOLVED), resolved=True)
    engine = build_query_engine(cfg, run)
    return components_of(engine)


def components_of(engine: RaftQueryEngine) -> tuple[RagtuneRetriever, RagtuneChatModel]:
    """LangChain wrappers over an engine already built (same retriever, reranker and generator objects).

    Raises:
        ValueError: the engine answers extractively (``assemble.generator: extractive``): it has no chat model.
    """
    if engine.llm is None:
        raise ValueError(
            "assemble.generator: extractive answers without an LLM, so there is no chat model to hand to LangChain; "
            "use the retriever, or set assemble.generator to base or tuned"
        )
    return RagtuneRetriever(engine=engine), RagtuneChatModel(llm=engine.llm, tokenizer=engine.tokenizer)
