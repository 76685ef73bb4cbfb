"""The small-model recipe's early stop: the rule fires only once the parsed first question is settled, and the
local backend applies it to both recipe calls (greedy and sampled) and to nothing else."""

from pathlib import Path

import pytest

from ragtune.pipeline.config import LLMConfig, SynthConfig
from ragtune.pipeline.llm import make_backend
from ragtune.pipeline.llm.local import LocalBackend, stop_when
from ragtune.stages.data import query_generation
from ragtune.stages.data.query_filters import CandidateFilters
from ragtune.stages.data.query_parsing import first_question, first_question_done

REPLIES = [
    "How long does the Kestrel VPN token last? It lasts ninety days.",
    '"When is the Slipway freeze?" he asked.\nNext line?',
    "1. What is the refund window?\n2. Who approves it?",
    "Question: Where do I file a leave request?",
    "**Search question:** How is parental leave paid?**",
    "\n\n  Which team owns the ledger?  \n",
    "Parental leave is sixteen weeks at full pay.\nHow long is it?",
    "No question at all, and no line break",
    "   \r\nWho signs off?\r\nNobody.",
    "- bullet? then more",
    "   ",
    "",
]


@pytest.mark.parametrize("reply", REPLIES)
def test_the_stop_rule_fires_only_once_the_first_question_is_settled(reply: str) -> None:
    fired = [cut for cut in range(len(reply) + 1) if first_question_done(reply[:cut])]
    # once it fires it keeps firing (a stopped row stays stopped), and the parse of the cut equals the full one
    assert fired == list(range(fired[0], len(reply) + 1)) if fired else True
    for cut in fired:
        assert first_question(reply[:cut]) == first_question(reply), (reply, cut)
    # it fires as early as it can: at the first "?" or line break after the first non-blank character
    head = len(reply) - len(reply.lstrip())
    ends = [i + 1 for i, ch in enumerate(reply) if i >= head and (ch == "?" or ch in "\r\n")]
    assert (fired[0] if fired else None) == (ends[0] if ends else None)


def test_no_stop_before_a_question_ends() -> None:
    assert not first_question_done("How long does the Kestrel VPN token")
    assert not first_question_done("\n\n")  # blank lines first: the question has not started
    assert first_question_done("Which team owns the ledger\n")  # the first line ended without a "?"


def test_stop_when_applies_to_local_backends_only_and_restores(tmp_path: Path) -> None:
    local = make_backend(LLMConfig(provider="local"), tmp_path / "a")
    other = make_backend(LLMConfig(provider="extractive"), tmp_path / "b", extractor=lambda m: "x")
    assert isinstance(local, LocalBackend) and local.stop is None
    with stop_when(local, first_question_done), stop_when(other, first_question_done):
        assert local.stop is first_question_done and not hasattr(other, "stop")
    assert local.stop is None


def test_recipe_generates_with_the_stop_rule_greedy_and_sampled(tmp_path: Path, monkeypatch) -> None:
    backend = make_backend(LLMConfig(provider="local"), tmp_path)
    seen = []

    def complete(todo, max_new_tokens, temperature, on_done):  # records the rule each call generates under
        seen.append((temperature, backend.stop))
        for key, _ in todo:
            on_done(key, "Parental leave is sixteen weeks.", 10, 5)  # no question: the sampled call follows

    monkeypatch.setattr(backend, "_complete", complete)
    cfg = SynthConfig(llm=LLMConfig(provider="local"), resample_candidates=2, round_trip_top_k=None)
    chunks = [{"id": "c1", "doc_id": "d", "text": "Parental leave is sixteen weeks at full pay."}]
    requests = [query_generation.prompt_builder(cfg)(c["text"]) for c in chunks]
    filters = CandidateFilters(cfg, query_generation.BUILTIN_EXAMPLES, require_question=True)
    query_generation.recipe_candidates(backend, requests, chunks, cfg, filters, lambda q, ids: [1] * len(q))
    assert seen == [(0.0, first_question_done), (query_generation.SAMPLE_TEMPERATURE, first_question_done)]
    assert backend.stop is None  # the list recipe and other callers generate to the end
