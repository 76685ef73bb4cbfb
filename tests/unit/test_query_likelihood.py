"""The query-likelihood reranker: its score is the query's mean token log-probability, batched, cached, trained."""

from pathlib import Path

import pytest
import torch

from ragtune.pipeline.components import load_reranker
from ragtune.pipeline.config import RerankConfig
from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker, is_query_likelihood, pack_left_padded
from ragtune.stages.rerank.likelihood import (
    ListCollator,
    build_query_likelihood,
    likelihood_lists,
    train_query_likelihood,
)

PAIRS = [
    ("how long is the failover window", "Millpond promotes to Elmstead within thirty minutes of a page."),
    ("who owns the ledger", "The ledger belongs to the finance platform team."),
    ("how long is the failover window", "Lunch is served at noon."),
]


@pytest.fixture
def reranker(tiny_llama_dir: Path) -> QueryLikelihoodReranker:
    torch.manual_seed(0)
    cfg = RerankConfig(query_likelihood={"generator": str(tiny_llama_dir), "dtype": "float32", "max_length": 32})
    return build_query_likelihood(cfg, train=False)


def naive_score(reranker: QueryLikelihoodReranker, query: str, passage: str) -> float:
    """The definition, one pair at a time and without padding: mean log P(query token | everything before it)."""
    context, target = reranker.encode([(query, passage)])[0]
    ids = torch.tensor([[*context, *target]])
    with torch.no_grad():
        log_probs = torch.log_softmax(reranker.causal_lm()(input_ids=ids).logits[0].float(), -1)
    positions = range(len(context) - 1, len(context) + len(target) - 1)
    return float(torch.stack([log_probs[p, ids[0, p + 1]] for p in positions]).mean())


def test_batched_left_padded_scores_equal_the_definition(reranker: QueryLikelihoodReranker) -> None:
    scores = reranker.predict(PAIRS, batch_size=3)
    assert scores == pytest.approx([naive_score(reranker, q, p) for q, p in PAIRS], abs=1e-4)
    assert all(s < 0 for s in scores)  # log-probabilities


def test_packing_marks_only_the_query_tokens() -> None:
    batch = pack_left_padded([([1, 2, 3], [4, 5]), ([1], [6])], pad_id=0)
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [0, 0, 0, 1, 6]]
    assert batch["target_mask"].tolist() == [[False, False, False, True, True], [False, False, False, False, True]]
    assert batch["attention_mask"][1].tolist() == [0, 0, 0, 1, 1]


def test_scores_are_memoised_until_the_weights_change(reranker: QueryLikelihoodReranker) -> None:
    first = reranker.predict(PAIRS)
    with torch.no_grad():
        next(reranker.lm.parameters()).add_(0.5)
    assert reranker.predict(PAIRS) == first  # frozen weights: served from the memo
    reranker.load_state_dict(reranker.state_dict())
    assert reranker.predict(PAIRS) != first  # loaded weights forget the memo


def test_saved_reranker_loads_with_its_adapter_and_a_disk_cache(tiny_llama_dir: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    cfg = RerankConfig(query_likelihood={"generator": str(tiny_llama_dir), "dtype": "float32", "max_length": 32})
    trained = build_query_likelihood(cfg, train=True)
    with torch.no_grad():  # a LoRA update that is not zero, as after training
        for name, p in trained.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    expected = trained.eval().predict(PAIRS)
    trained.save(tmp_path / "model", str(tiny_llama_dir), "float32")
    assert is_query_likelihood(tmp_path / "model") and (tmp_path / "model" / "adapter_config.json").is_file()

    loaded = load_reranker(str(tmp_path / "model"), 64, 0, tmp_path / "cache")
    assert isinstance(loaded, QueryLikelihoodReranker)
    assert loaded.predict(PAIRS) == pytest.approx(expected, abs=1e-4)  # the adapter was merged in
    cache_files = list((tmp_path / "cache").glob("*.jsonl"))
    assert len(cache_files) == 1
    again = load_reranker(str(tmp_path / "model"), 64, 0, tmp_path / "cache")
    assert again.memo and again.predict(PAIRS) == loaded.predict(PAIRS)  # served from the disk cache


def test_listwise_training_changes_the_adapter_and_lowers_the_loss(tiny_llama_dir: Path, tmp_path: Path) -> None:
    from transformers import TrainingArguments

    torch.manual_seed(0)
    cfg = RerankConfig(query_likelihood={"generator": str(tiny_llama_dir), "dtype": "float32", "max_length": 32})
    model = build_query_likelihood(cfg, train=True)
    corpus = {f"c{i}": {"text": p} for i, (_, p) in enumerate(PAIRS)}
    mined = [
        {"query": PAIRS[0][0], "positives": ["c0"], "relevance": {"c0": 1}, "negatives": ["c1", "c2"]},
        {"query": PAIRS[1][0], "positives": ["c1"], "relevance": {"c1": 1}, "negatives": ["c0", "c2"]},
    ]
    lists = likelihood_lists(mined, corpus)
    batch = ListCollator(model)(lists)
    with torch.no_grad():
        before = float(model.train()(**batch)["loss"])
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert lora and all("lora" in n for n in lora)  # only the adapter trains

    args = TrainingArguments(
        output_dir=str(tmp_path / "out"),
        max_steps=15,
        per_device_train_batch_size=2,
        learning_rate=5e-2,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        logging_steps=1,
    )
    train_query_likelihood(model, lists, args, [])
    with torch.no_grad():
        after = float(model.train()(**batch)["loss"])
    changed = [n for n, p in model.named_parameters() if p.requires_grad and not torch.equal(p.detach(), lora[n])]
    assert changed
    assert after < before


def test_the_score_cache_scores_a_repeated_pair_once_and_only_appends(tiny_llama_dir, tmp_path) -> None:
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker, read_score_cache

    cache = tmp_path / "scores.jsonl"
    reranker = QueryLikelihoodReranker.from_generator(
        str(tiny_llama_dir), "Passage: {passage}\nQuestion:", 64, "float32", cache_file=cache
    )
    pair = ("who owns Heron?", "Heron is owned by the routing team.")
    encoded: list[int] = []
    real_encode = reranker.encode
    reranker.encode = lambda pairs: encoded.append(len(pairs)) or real_encode(pairs)
    first = reranker.predict([pair, pair, ("q", "another passage")])
    assert encoded == [2] and first[0] == first[1]  # the repeated pair was scored once
    assert len(cache.read_text().splitlines()) == 2
    reranker.predict([pair, ("q", "a third passage")])
    assert encoded == [2, 1] and len(cache.read_text().splitlines()) == 3  # one line appended, nothing rewritten
    cache.write_text(cache.read_text() + '["cut sho')  # a killed process's half line is skipped
    assert len(read_score_cache(cache)) == 3
    fresh = QueryLikelihoodReranker.from_generator(
        str(tiny_llama_dir), "Passage: {passage}\nQuestion:", 64, "float32", cache_file=cache
    )
    fresh.encode = lambda pairs: pytest.fail("a cached pair was scored again")
    assert fresh.predict([pair]) == [first[0]]


def test_scores_after_cached_prefixes_equal_whole_pairs_for_any_budget(tiny_llama_dir: Path) -> None:
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker

    passages = [p for _, p in PAIRS] + ["A much longer passage about the billing engine, its standby site and TTLs."]
    queries = ["how long is the failover window", "who owns the ledger", "what is the standby site"]
    pairs = [(q, p) for q in queries for p in passages]
    prompt = "Passage: {passage}\nQuestion:"
    whole = QueryLikelihoodReranker.from_generator(str(tiny_llama_dir), prompt, 64, "float32", prefix_cache_mb=0)
    expected = whole.predict(pairs, batch_size=3)
    assert len(whole.prefixes) == 0
    cached = QueryLikelihoodReranker.from_generator(str(tiny_llama_dir), prompt, 64, "float32")
    assert cached.predict(pairs, batch_size=3) == pytest.approx(expected, abs=1e-5)
    assert len(cached.prefixes) == len(passages)  # one prefix per passage, shared by the three queries
    tiny = QueryLikelihoodReranker.from_generator(str(tiny_llama_dir), prompt, 64, "float32")
    tiny.prefixes.max_bytes = 3 * tiny._state_bytes_per_token() * 20  # room for about two prefixes: rounds, evictions
    assert tiny.predict(pairs, batch_size=2) == pytest.approx(expected, abs=1e-5)
    assert tiny.prefixes.nbytes <= tiny.prefixes.max_bytes


def test_a_passage_reranked_again_reads_only_the_new_query(tiny_llama_dir: Path) -> None:
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker

    reranker = QueryLikelihoodReranker.from_generator(
        str(tiny_llama_dir), "Passage: {passage}\nQuestion:", 64, "float32"
    )
    reranker.predict(PAIRS)
    read: list[int] = []
    decoder = reranker.causal_lm().get_decoder()
    hook = decoder.register_forward_pre_hook(
        lambda _, args, kwargs: read.append(kwargs["input_ids"].numel()), with_kwargs=True
    )
    reranker.predict([("a new question about the ledger", p) for _, p in PAIRS[:2]])
    hook.remove()
    assert len(read) == 1 and read[0] <= 2 * 12  # one pass over the two queries' tokens, no passage re-read
    reranker.train()
    assert len(reranker.prefixes) == 0  # weights about to change: the prefixes go with the memo


def test_the_prefix_store_evicts_the_least_recently_used_within_its_budget() -> None:
    from ragtune.pipeline.prefix_cache import PrefixStore

    def states(tokens: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [(torch.zeros(1, tokens, 2), torch.zeros(1, tokens, 2))]  # 4 float32 values per token: 16 bytes

    store = PrefixStore(max_bytes=80)  # two entries of 32 bytes fit, three do not
    store.put("a", states(2))
    store.put("b", states(2))
    assert store.get("a") is not None  # "a" is now the most recently used
    store.put("c", states(2))  # a, b and c would be 96 bytes: "b" goes
    assert store.get("b") is None and store.get("a") is not None and store.get("c") is not None
    assert store.nbytes == 64
    store.put("huge", states(10))  # larger than the whole budget: not kept, nothing evicted for it
    assert store.get("huge") is None and len(store) == 2


def test_warming_reads_passages_ahead_within_the_budget(tiny_llama_dir: Path) -> None:
    from ragtune.pipeline.query_likelihood import QueryLikelihoodReranker

    reranker = QueryLikelihoodReranker.from_generator(
        str(tiny_llama_dir), "Passage: {passage}\nQuestion:", 64, "float32"
    )
    passages = [p for _, p in PAIRS]
    assert reranker.warm([*passages, passages[0]], batch_size=2) == 3  # each distinct passage once
    read: list[int] = []
    decoder = reranker.causal_lm().get_decoder()
    hook = decoder.register_forward_pre_hook(
        lambda _, args, kwargs: read.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    reranker.predict(PAIRS)
    hook.remove()
    assert len(read) == 1 and read[0] <= 12  # the first query already reads only its own tokens
    small = QueryLikelihoodReranker.from_generator(str(tiny_llama_dir), "Passage: {passage}\nQuestion:", 64, "float32")
    first_prefix = len(small.encode([("", passages[0])])[0][0]) - 1
    small.prefixes.max_bytes = small._state_bytes_per_token() * first_prefix  # room for the first prefix alone
    assert small.warm(passages, batch_size=1) == 1 and small.prefixes.nbytes <= small.prefixes.max_bytes
