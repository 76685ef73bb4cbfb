"""Synthetic queries: parsing, filters, the report's counts, the small-model recipe, the round trip."""

import copy
import random
from collections import Counter

import pytest
from fakes.openai_server import FakeOpenAIServer
from fakes.upstream import ranker_giving

import ragtune.stages.data.synthesize as synth
from ragtune.pipeline.config import LLMConfig, SynthConfig
from ragtune.pipeline.llm import LLMUsage
from ragtune.pipeline.retrieval import DenseRetriever
from ragtune.stages.data.query_filters import LexicalRoundTrip, RoundTrip, copies_passage, drop_duplicates, jaccard
from ragtune.stages.data.query_generation import corpus_idf, keyword_query
from ragtune.stages.data.query_parsing import first_question, parse_queries, words
from ragtune.stages.data.synthesize import synthesize_queries
from ragtune.stages.data.targets import document_round_robin

CORPUS = [
    {
        "id": "c1",
        "doc_id": "d1",
        "source": "vpn.md",
        "text": "The Kestrel VPN token expires after ninety days. "
        "Renew the token in the Harbor portal before it lapses, or remote access stops.",
        "start": 0,
        "end": 120,
    },
    {
        "id": "c2",
        "doc_id": "d2",
        "source": "leave.md",
        "text": "Parental leave is sixteen weeks at full pay. Request it in Lantern at least a month ahead.",
        "start": 0,
        "end": 90,
    },
    {
        "id": "c3",
        "doc_id": "d3",
        "source": "deploy.md",
        "text": "Deploys to the Slipway cluster freeze on Fridays "
        "after noon. Hotfixes need approval from the on-call lead.",
        "start": 0,
        "end": 100,
    },
]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1. What is X?\n2) How does Y work?", ["What is X?", "How does Y work?"]),
        ("Sure! Here are two:\n- **What is X?**\n* How is Y?\nHope this helps.", ["What is X?", "How is Y?"]),
        ('```json\n["What is A?", "Where is B?"]\n```', ["What is A?", "Where is B?"]),
        ('{"queries": [{"query": "a b c?"}, {"question": "d e f?"}]}', ["a b c?", "d e f?"]),
        ("Query: how do I reset the VPN token?", ["how do I reset the VPN token?"]),
        ('Q1: "When is the freeze?"\nQ2: When is the freeze?', ["When is the freeze?"]),
        ("What is X? How is Y done?", ["What is X?", "How is Y done?"]),
        ("", []),
        ("Here are the questions:", []),
    ],
)
def test_parse_queries(text, expected):
    assert parse_queries(text) == expected


def test_first_question_cuts_at_the_question_mark():
    assert first_question("Question: What is the refund window? It is 30 days.\nMore") == "What is the refund window?"
    assert first_question("1. A statement") == "A statement"


def test_copy_and_near_duplicate_filters():
    passage = "All refunds are paid within thirty days of the return date."
    assert copies_passage("so refunds are paid within thirty days of the return?", passage, 8)
    assert not copies_passage("how long do refunds take after a return?", passage, 8)
    assert jaccard(set(words("how do I reset my password")), set(words("How do I reset my password?"))) >= 0.85
    assert jaccard(set(words("how do I reset my password")), set(words("how do I reset my token"))) < 0.85


def test_drop_duplicates_matches_brute_force():
    rng = random.Random(0)
    vocab = [f"w{i}" for i in range(12)]
    queries = [" ".join(rng.sample(vocab, rng.randint(3, 8))) for _ in range(150)]
    queries += queries[:5]
    for threshold in (0.5, 0.85):
        kept, exact, near = drop_duplicates(queries, threshold)
        brute: list[int] = []
        for i, q in enumerate(queries):
            if all(jaccard(set(words(q)), set(words(queries[j]))) < threshold for j in brute):
                brute.append(i)
        assert kept == brute and exact + near == len(queries) - len(kept)


def test_keyword_query_is_short_deterministic_and_no_long_copy():
    idf = corpus_idf(CORPUS)
    query = keyword_query(CORPUS[0]["text"], idf)
    assert query == keyword_query(CORPUS[0]["text"], idf) and 3 <= len(query.split()) <= 6
    assert "kestrel" in query and not copies_passage(query, CORPUS[0]["text"], 6)
    assert keyword_query(CORPUS[0]["text"], idf, rank=1) != query


def test_extractive_synthesis_rows_report_and_stable_ids(tmp_path):
    cfg = SynthConfig(queries_per_chunk=2, round_trip_top_k=None, llm=LLMConfig(provider="extractive"))
    chunks = copy.deepcopy(CORPUS)
    rows, report = synthesize_queries(chunks, CORPUS, cfg, tmp_path)
    assert chunks == CORPUS  # inputs untouched
    assert len(rows) == report["kept"] == 6 and report["chunks_without_query"] == 0
    for row in rows:
        cid = row["positives"][0]
        assert row["origin"] == "synthetic" and row["relevance"] == {cid: 1} and row["answer"] is None
        assert row["qid"] == synth.qid_for(cid, row["text"]) and row["doc_ids"] == [cid.replace("c", "d")]
    assert synthesize_queries(CORPUS, CORPUS, cfg, tmp_path)[0] == rows


def _chunk(cid: str) -> dict:
    return next(c for c in CORPUS if c["id"] == cid)


def test_list_path_counts_every_filter(tmp_path, monkeypatch):
    replies = {
        "c1": "Here you go:\n1. How long is the Kestrel VPN token valid?\n2. How long is the Kestrel VPN token valid?\n"
        "3. VPN?\n4. renew the token in the Harbor portal before it lapses?\n5. When is fresh sourdough sold?",
        "c2": "not a list at all, just text that rambles on and on and on for far more than twenty five words "
        "which makes it too long to be a query and it should be dropped by the length filter surely",
        "c3": '["When are Slipway deploys frozen?", "Who approves a Friday hotfix on Slipway?", '
        '"Extra one on Slipway?"]',
    }

    def reply(messages):
        return next(
            r
            for cid, r in replies.items()
            if next(c for c in CORPUS if c["id"] == cid)["text"] in messages[-1]["content"]
        )

    monkeypatch.setenv("RAGTUNE_TEST_LLM_KEY", "k")
    with FakeOpenAIServer(reply=reply) as server:
        llm = LLMConfig(provider="openai", model="fake", base_url=server.base_url, api_key_env="RAGTUNE_TEST_LLM_KEY")
        cfg = SynthConfig(queries_per_chunk=2, round_trip_top_k=None, copy_ngram=6, llm=llm)
        rows, report = synthesize_queries(CORPUS, CORPUS, cfg, tmp_path)
    assert [r["text"] for r in rows] == [
        "How long is the Kestrel VPN token valid?",
        "When are Slipway deploys frozen?",
        "Who approves a Friday hotfix on Slipway?",
    ]
    expected = {
        "generated": 3,
        "parsed": 8,
        "dropped_unparseable": 0,
        "dropped_length": 2,
        "dropped_copy": 1,
        "dropped_example_words": 1,
        "dropped_duplicate": 0,
        "dropped_near_duplicate": 0,
        "dropped_surplus": 1,
        "kept": 3,
        "chunks_without_query": 1,
    }
    # the duplicate of c1's first query is removed by the parser itself (distinct queries per answer)
    assert {k: report[k] for k in expected} == expected
    assert report["parsed"] == report["kept"] + sum(
        v for k, v in report.items() if k.startswith("dropped_") and k != "dropped_unparseable"
    )


class ScriptedBackend:
    """Stands in for the local LLM: greedy and sampled answers per chunk, keyed by a word of the chunk."""

    def __init__(self, greedy, sampled):
        self.greedy, self.sampled = greedy, sampled
        self.usage = LLMUsage()
        self.calls = []

    def _word(self, request):
        return next(w for w in ("Kestrel", "Parental", "Slipway") if w in request[-1]["content"])

    def generate(self, requests, *, max_new_tokens=None, temperature=None, desc="", accept=None):
        self.calls.append((len(requests), temperature))
        if temperature == 0:
            out = [self.greedy[self._word(r)] for r in requests]
        else:
            counters = {}
            out = []
            for r in requests:
                w = self._word(r)
                counters[w] = counters.get(w, -1) + 1
                out.append(self.sampled[w][counters[w]])
        self.usage.failed += out.count(None)
        self.usage.rejected += sum(t is not None and not accept(t) for t in out)
        return [t if t is None or accept(t) else None for t in out]


def test_local_recipe_greedy_then_best_sample(tmp_path, monkeypatch):
    backend = ScriptedBackend(
        greedy={
            "Kestrel": "How long does the Kestrel VPN token last? It lasts ninety days.",
            "Parental": "Parental leave is sixteen weeks at full pay.",  # no question: sample
            "Slipway": "When does the bakery open on Saturdays?",
        },  # borrows example words: sample
        sampled={
            "Parental": ["Leave?", "How long is parental leave?", "How much parental leave do I get?", None],
            "Slipway": [
                "Slipway.",
                "sixteen weeks",
                "What?",
                "Deploys to the Slipway cluster freeze on Fridays after noon?",
            ],
        },
    )
    monkeypatch.setattr(synth, "make_backend", lambda cfg, cache_dir, extractor=None: backend)

    class Ranker:  # prefers the longer of two passing candidates, so "best" is observable
        @classmethod
        def load(cls, model_ref, corpus, **kwargs):
            return cls()

        def ranks(self, queries, chunk_ids):
            return [1 if "much" in q or "Kestrel" in q else 2 for q in queries]

    monkeypatch.setattr("ragtune.pipeline.retrieval.DenseRetriever", Ranker)
    cfg = SynthConfig(llm=LLMConfig(provider="local"), round_trip_top_k=5)
    rows, report = synthesize_queries(CORPUS, CORPUS, cfg, tmp_path)
    assert {r["positives"][0]: r["text"] for r in rows} == {
        "c1": "How long does the Kestrel VPN token last?",
        "c2": "How much parental leave do I get?",
    }
    assert backend.calls == [(3, 0.0), (8, 0.5)]
    assert report["recipe"] == "greedy-then-sample" and report["chunks_without_query"] == 1
    assert report["generated"] == 10 and report["llm_failed"] == 1 and report["dropped_surplus"] == 1
    assert report["round_trip_hit_at_k"] == 1.0


@pytest.mark.parametrize(
    ("llm", "settings", "recipe", "calls"),
    [
        ({"provider": "local"}, {"resample_candidates": 0}, "greedy-only", [(3, 0.0)]),
        ({"provider": "local"}, {"resample_candidates": 2}, "greedy-then-sample", [(3, 0.0), (6, 0.5)]),
        ({"provider": "local"}, {"queries_per_chunk": 2}, "list", [(3, None)]),
    ],
)
def test_the_report_names_the_recipe_actually_used(tmp_path, monkeypatch, llm, settings, recipe, calls):
    chunk_words = ("Kestrel", "Parental", "Slipway")
    # greedy replies are no questions, so the sampling pass runs when the recipe has one
    backend = ScriptedBackend(
        greedy=dict.fromkeys(chunk_words, "No question."), sampled={w: [None] * 2 for w in chunk_words}
    )
    monkeypatch.setattr(synth, "make_backend", lambda cfg, cache_dir, extractor=None: backend)
    cfg = SynthConfig(llm=LLMConfig(**llm), round_trip_top_k=None, **settings)
    assert synthesize_queries(CORPUS, CORPUS, cfg, tmp_path)[1]["recipe"] == recipe
    assert backend.calls == calls


def test_extractive_synthesis_reports_its_recipe(tmp_path):
    cfg = SynthConfig(round_trip_top_k=None, llm=LLMConfig(provider="extractive"))
    assert synthesize_queries(CORPUS, CORPUS, cfg, tmp_path)[1]["recipe"] == "extractive-keywords"


def test_the_round_robin_visits_every_document_in_turn_seeded():
    rows = [{"id": f"{d}-{i}", "doc_id": d} for d in ("a", "b", "c", "d", "e") for i in range(4)]  # path order
    order = document_round_robin(rows, seed=13)
    assert sorted(r["id"] for r in order) == sorted(r["id"] for r in rows)  # every chunk, once
    assert sorted(r["doc_id"] for r in order[:5]) == ["a", "b", "c", "d", "e"]
    per_doc = Counter(r["doc_id"] for r in order[:7])
    assert set(per_doc) == set("abcde") and max(per_doc.values()) == 2
    assert document_round_robin(rows, seed=13) == order
    draws = {tuple(r["id"] for r in document_round_robin(rows, seed=s)[:7]) for s in range(10)}
    assert len(draws) > 1  # the seed decides which chunks


def test_round_trip_ranks_are_exact(tiny_bert_dir, tmp_path):
    cfg = SynthConfig(round_trip_model=str(tiny_bert_dir), round_trip_top_k=1)
    round_trip = RoundTrip(CORPUS, cfg, Counter(), tmp_path / "embeddings")
    queries = ["kestrel vpn token", "parental leave weeks", "slipway deploy freeze", "harbor portal"]
    chunk_ids = ["c1", "c2", "c3", "c3"]
    ranks = round_trip.ranks(queries, chunk_ids)
    retriever = round_trip.retriever
    assert isinstance(retriever, DenseRetriever) and len(list((tmp_path / "embeddings").iterdir())) == 1
    q = retriever.model.encode_query(queries, normalize_embeddings=True)
    c = retriever.model.encode_document([row["text"] for row in CORPUS], normalize_embeddings=True)
    scores = q @ c.T
    expected = [
        1 + sum(s > row[retriever.positions[cid]] for s in row) for row, cid in zip(scores, chunk_ids, strict=True)
    ]
    assert ranks == expected
    assert all(1 <= r <= 3 for r in expected)
    assert round_trip.counts == {"round_trip_checked": 4, "round_trip_hits": expected.count(1)}


def test_garbage_replies_are_unparseable_not_too_long_and_not_cached_as_final(tmp_path, monkeypatch):
    replies = {"c1": "x" * 300, "c2": "%%%% #### @@@@ !!!! ^^^^", "c3": "1. When are Slipway deploys frozen?"}

    def reply(messages):
        return next(r for cid, r in replies.items() if _chunk(cid)["text"] in messages[-1]["content"])

    monkeypatch.setenv("RAGTUNE_TEST_LLM_KEY", "k")
    with FakeOpenAIServer(reply=reply) as server:
        llm = LLMConfig(provider="openai", model="fake", base_url=server.base_url, api_key_env="RAGTUNE_TEST_LLM_KEY")
        cfg = SynthConfig(round_trip_top_k=None, llm=llm)
        rows, report = synthesize_queries(CORPUS, CORPUS, cfg, tmp_path)
        assert [r["text"] for r in rows] == ["When are Slipway deploys frozen?"]
        assert (report["dropped_unparseable"], report["dropped_length"], report["generated"]) == (2, 0, 1)
        assert report["llm"]["rejected"] == 2 and report["llm_failed"] == 0
        before = server.requests
        synthesize_queries(CORPUS, CORPUS, cfg, tmp_path)
        assert server.requests == before + 2  # the garbage is asked again, the good reply is cached


def test_budget_skips_are_counted_as_budget_skips(tmp_path, monkeypatch):
    monkeypatch.setenv("RAGTUNE_TEST_LLM_KEY", "k")
    with FakeOpenAIServer() as server:
        llm = LLMConfig(
            provider="openai",
            model="fake",
            base_url=server.base_url,
            api_key_env="RAGTUNE_TEST_LLM_KEY",
            budget_tokens=1,
        )
        _, report = synthesize_queries(CORPUS, CORPUS, SynthConfig(round_trip_top_k=None, llm=llm), tmp_path)
    assert (report["skipped_budget"], report["llm_failed"], report["generated"]) == (3, 0, 0)


RejectingRanker = ranker_giving(99)  # ranks every query's chunk last: its round trip would reject them all


def test_held_out_queries_pass_bm25_and_never_the_base_embedder(tmp_path, monkeypatch):
    # d3 is held out: its query is kept by BM25 although the base embedder would have rejected it, so the
    # base model's hit@k on held-out synthetic queries is not 1.0 by construction.
    RejectingRanker.seen = []
    monkeypatch.setattr("ragtune.pipeline.retrieval.DenseRetriever", RejectingRanker)
    cfg = SynthConfig(round_trip_top_k=1, llm=LLMConfig(provider="extractive"))
    rows, report = synthesize_queries(CORPUS, CORPUS, cfg, tmp_path, held_out={"d3"})
    assert sorted(RejectingRanker.seen) == ["c1", "c2"]  # the dense round trip never saw the held-out chunk
    assert [r["positives"] for r in rows] == [["c3"]]
    assert report["kept_lexical"] == report["lexical_chunks"] == 1
    assert report["eval_round_trip"] == "bm25 top 1" and report["eval_round_trip_hit_at_k"] == 1.0
    assert report["round_trip_hit_at_k"] == 0.0 and report["dropped_round_trip"] == 2

    # eval_round_trip: none keeps every held-out query unfiltered, and still never asks the base embedder
    RejectingRanker.seen = []
    none = cfg.model_copy(update={"eval_round_trip": "none"})
    rows, report = synthesize_queries(CORPUS, CORPUS, none, tmp_path, held_out={"d1", "d2", "d3"})
    assert RejectingRanker.seen == [] and len(rows) == 3 and report["eval_round_trip"] == "none"


def test_lexical_round_trip_ranks_by_bm25():
    counts = Counter()
    trip = LexicalRoundTrip(CORPUS, SynthConfig(round_trip_top_k=2), counts)
    queries = ["Kestrel VPN token renewal", "parental leave weeks", "Slipway deploy freeze"]
    # the second query shares no term with c1: BM25 scores it 0 there, outside the top k
    assert trip.ranks(queries, ["c1", "c1", "c3"]) == [1, 3, 1]
    assert counts == {"eval_round_trip_checked": 3, "eval_round_trip_hits": 2}
    off = LexicalRoundTrip(CORPUS, SynthConfig(eval_round_trip="none"), Counter())
    assert off.ranks(queries, ["c1", "c1", "c3"]) == [1, 1, 1] and off.retriever is None
