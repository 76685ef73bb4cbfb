"""The engine's answer stream: the final answer arrives piece by piece as the generator writes it, and equals what
``query`` answers; conversations condense into the retrieval question and reach the generator's prompt."""

import itertools
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.bridge.pydantic import Field
from llama_index.core.llms import CompletionResponse, CompletionResponseGen, CustomLLM, LLMMetadata
from llama_index.core.schema import NodeWithScore, QueryBundle, TextNode
from transformers import AutoTokenizer

from ragtune.app.assemble import RaftQueryEngine
from ragtune.pipeline.extractive import ExtractiveAnswerer
from ragtune.pipeline.generator import Sampling
from ragtune.pipeline.raft_format import answer_so_far, parse_answer

WRITTEN = "##Reason: the runbook says ##begin_quote##Heron fails over in 5 min.##end_quote## ##Answer: Five minutes, then ##Answer: ignored"  # noqa: E501


class RecordingRetriever(BaseRetriever):
    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        self.asked.append(query_bundle.query_str)
        return [NodeWithScore(node=TextNode(text="Heron fails over in 5 min.", id_="c1"), score=1.0)]


class TypingLLM(CustomLLM):
    """Writes ``written`` (default ``WRITTEN``) three characters at a time; a condense prompt gets a fixed standalone
    question."""

    prompts: list = Field(default_factory=list)
    stopped_after: int = 0
    written: str = WRITTEN

    @property
    def metadata(self) -> LLMMetadata:
        return LLMMetadata()

    def complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponse:
        *_, last = self.stream_complete(prompt, formatted, **kwargs)
        return last

    def stream_complete(self, prompt: str, formatted: bool = False, **kwargs: Any) -> CompletionResponseGen:
        self.prompts.append(prompt)
        if "Standalone question" in prompt:
            yield CompletionResponse(text="How fast does Heron fail over?", delta="How fast does Heron fail over?")
            return
        text = ""
        for i in range(0, len(self.written), 3):
            if kwargs["cancel"].is_set():
                break
            text += self.written[i : i + 3]
            self.stopped_after = len(text)
            yield CompletionResponse(text=text, delta=self.written[i : i + 3])
        yield CompletionResponse(text=text, delta="", additional_kwargs={"finish_reason": "stop"})


@pytest.fixture
def engine(tiny_llama_dir: Path) -> RaftQueryEngine:
    return RaftQueryEngine(
        retriever=RecordingRetriever(), llm=TypingLLM(), tokenizer=AutoTokenizer.from_pretrained(tiny_llama_dir)
    )


def test_answer_so_far_grows_by_appending_and_ends_at_the_parsed_answer() -> None:
    shown = [answer_so_far(WRITTEN[:n]) for n in range(len(WRITTEN) + 1)]
    assert all(later.startswith(earlier) for earlier, later in itertools.pairwise(shown))
    assert shown[-1] == "Five minutes, then" == parse_answer(WRITTEN.split(" ##Answer: ignored")[0]).answer


def test_the_answer_streams_piece_by_piece_and_equals_the_query_answer(engine: RaftQueryEngine) -> None:
    stream = engine.stream("How fast does Heron fail over?")
    pieces = list(stream)
    assert len(pieces) > 3 and "".join(pieces) == "Five minutes, then" == stream.response.response
    assert stream.response.metadata["quotes"] == ["Heron fails over in 5 min."]
    # The format has one answer: the generation was cut at the second tag, not run to its end.
    assert engine.llm.stopped_after < len(WRITTEN)
    assert engine.query("How fast does Heron fail over?").response == "Five minutes, then"


def test_a_conversation_condenses_for_retrieval_and_reaches_the_generator(engine: RaftQueryEngine) -> None:
    history = [{"role": "user", "content": "What is Heron?"}, {"role": "assistant", "content": "A router."}]
    stream = engine.stream("and its failover?", history)
    list(stream)
    assert engine.retriever.asked == ["How fast does Heron fail over?"]  # the condensed question retrieved
    condense_prompt = engine.llm.prompts[0]
    assert "What is Heron?" in condense_prompt and "and its failover?" in condense_prompt
    assert [m["role"] for m in stream.messages] == ["system", "user", "assistant", "user"]
    assert "and its failover?" in stream.messages[-1]["content"] and "A router." in engine.llm.prompts[1]


def test_the_extractive_answerer_condenses_without_an_llm_and_refuses_to_sample(tiny_bert_dir: Path) -> None:
    from sentence_transformers import SentenceTransformer

    retriever = RecordingRetriever()
    engine = RaftQueryEngine(retriever=retriever, answerer=ExtractiveAnswerer(SentenceTransformer(str(tiny_bert_dir))))
    stream = engine.stream("and its failover?", [{"role": "user", "content": "What is Heron?"}])
    assert "".join(stream) == "Heron fails over in 5 min." and retriever.asked == ["What is Heron?\nand its failover?"]
    with pytest.raises(ValueError, match="temperature"):
        engine.stream("q", sampling=Sampling(10, temperature=0.5))
    capped = engine.stream("q", sampling=Sampling(2))
    assert "".join(capped) == "Heron fails" and capped.finish_reason == "length"  # the answer's words
    cut = engine.stream("q", sampling=Sampling(100, stop=(" over",)))
    assert "".join(cut) == "Heron fails" and cut.finish_reason == "stop"


def test_a_guided_answer_starts_with_the_extractive_quote_and_the_generator_writes_the_final_answer(
    tiny_llama_dir: Path, tiny_bert_dir: Path
) -> None:
    from sentence_transformers import SentenceTransformer

    llm = TypingLLM(written=" Five minutes.")
    quoter = ExtractiveAnswerer(SentenceTransformer(str(tiny_bert_dir)))
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama_dir)
    engine = RaftQueryEngine(retriever=RecordingRetriever(), llm=llm, tokenizer=tokenizer, quoter=quoter)
    stream = engine.stream("How fast does Heron fail over?")
    assert "".join(stream) == "Five minutes." == stream.response.response
    meta = stream.response.metadata
    assert meta["quotes"] == ["Heron fails over in 5 min."] and meta["well_formed"]
    assert meta["raw"].startswith("##Reason: ") and meta["raw"].endswith("##Answer: Five minutes.")
    # The generator continued the written-in answer: its prompt ends with the quote and the answer tag.
    assert stream.messages[-1]["role"] == "assistant" and llm.prompts[-1].rstrip().endswith("##Answer:")
    assert "quote" in meta["seconds"]
