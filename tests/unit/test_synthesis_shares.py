"""The measuring shares of synthesis (held-out, dev) get just enough targets; training documents the rest."""

from ragtune.pipeline.config import SplitConfig
from ragtune.stages.data.prepare import dev_share_documents, synthesis_pools
from ragtune.stages.data.targets import synthesize_shares


def keeping(every: int):
    """A fake synthesizer that keeps one query per ``every`` chunks asked about, recording the calls."""
    calls: list[list[str]] = []

    def synthesize(chunks: list[dict]) -> tuple[list[dict], dict]:
        calls.append([c["id"] for c in chunks])
        rows = [{"text": c["id"], "doc_ids": [c["doc_id"]]} for i, c in enumerate(chunks) if i % every == 0]
        return rows, {"kept": len(rows), "parsed": len(chunks)}

    return synthesize, calls


def pool(prefix: str, n: int) -> list[dict]:
    return [{"id": f"{prefix}{i}", "doc_id": f"{prefix}{i}"} for i in range(n)]


def test_the_dev_share_is_sized_by_the_yield_the_held_out_share_measured() -> None:
    synthesize, calls = keeping(every=2)  # yield 0.5
    measured = {"held_out": (pool("h", 500), 30), "dev": (pool("d", 500), 30)}
    rows, train, out = synthesize_shares(measured, pool("t", 1000), 300, 0.4, 1.25, synthesize)
    shares = out["shares"]
    # held-out: a first round at the prior yield 0.4 (94 chunks) reaches the goal at 0.5.
    assert shares["held_out"] == {"targets": 94, "kept": 47, "rounds": 1, "goal": 30}
    # dev: sized at the measured 0.5, not the prior: ceil(30 * 1.25 / 0.5) = 75 chunks.
    assert shares["dev"] == {"targets": 75, "kept": 38, "rounds": 1, "goal": 30}
    assert shares["train"] == {"targets": 300 - 94 - 75, "kept": len(train)}
    assert len(rows["dev"]) == 38 and all(r["text"].startswith("d") for r in rows["dev"])
    assert [len(c) for c in calls] == [94, 75, 131]


def test_an_empty_share_takes_nothing_and_the_cap_bounds_every_share() -> None:
    synthesize, calls = keeping(every=10)  # yield 0.1: the held-out share alone would want the whole cap
    measured = {"held_out": (pool("h", 500), 30), "dev": ([], 30)}
    rows, train, out = synthesize_shares(measured, pool("t", 1000), 100, 0.4, 1.25, synthesize)
    assert out["shares"]["dev"] == {"targets": 0, "kept": 0, "rounds": 0, "goal": 0} and rows["dev"] == []
    assert out["shares"]["held_out"]["targets"] == 100 and out["shares"]["train"]["targets"] == 0
    assert sum(len(c) for c in calls) == 100 and train == []


def test_dev_documents_are_their_own_share_only_without_labelled_questions_on_them() -> None:
    rows = [{"id": f"{d}{i}", "doc_id": d} for d in "abcd" for i in range(3)]
    share = dev_share_documents(SplitConfig(), {"b"}, [])  # no labels
    held, dev, train = synthesis_pools(rows, {"a"}, share, False, seed=3)
    assert {c["doc_id"] for c in dev} == {"b"} and {c["doc_id"] for c in train} == {"c", "d"}
    labelled = [{"doc_ids": ["a"]}, {"doc_ids": ["b"]}]  # the demo's case: labelled questions on both sides
    held, dev, train = synthesis_pools(rows, {"a"}, dev_share_documents(SplitConfig(), {"b"}, labelled), True, seed=3)
    assert held == [] and dev == [] and {c["doc_id"] for c in train} == {"b", "c", "d"}
    # Their labelled questions dropped (the no-labels mode), the dev documents get their share again.
    assert dev_share_documents(SplitConfig(human_train=False), {"b"}, labelled) == {"b"}


def test_dev_min_queries_0_leaves_the_dev_documents_in_the_round_robin() -> None:
    rows = [{"id": f"{d}{i}", "doc_id": d} for d in "abcd" for i in range(3)]
    share = dev_share_documents(SplitConfig(dev_min_queries=0), {"b"}, [])
    _, dev, train = synthesis_pools(rows, {"a"}, share, False, seed=3)
    assert dev == [] and {c["doc_id"] for c in train} == {"b", "c", "d"}
