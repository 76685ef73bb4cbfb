"""The rerank stage through the `ragtune` CLI on the fixture domain, with a simulated finished embed stage."""

import json
import re
import shutil
import time
from pathlib import Path

import pytest
from fakes.upstream import run_dir_of, simulate_embed_stage
from safetensors.torch import load_file

from ragtune.app.cli import main as cli
from ragtune.pipeline.config import load_config
from ragtune.pipeline.retrieval import FUSION_FILE, model_hash
from ragtune.pipeline.rundir import read_jsonl
from ragtune.stages.rerank.negatives import RULES

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_rerank_stage_mines_trains_evaluates_and_records(tiny_config: Path, tiny_bert_dir: Path, capsys) -> None:
    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    # The reranker starts from the tiny BERT; the random embedder's scores all sit within 5% of each other,
    # so the relative margin would drop nearly every candidate: switch it off to get negatives to check.
    # Counts below are for the labelled train queries alone; pseudo-queries are checked at the end.
    overrides = [
        "rerank.kind=cross_encoder",
        f"rerank.cross_encoder.base_model={tiny_bert_dir}",
        "rerank.mining.relative_margin=null",
        "rerank.pseudo_queries=0",
    ]

    # 1. Without a finished embed stage it refuses, naming the command to run first.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(["rerank", str(tiny_config), *overrides])
    assert exit_info.value.code == 2
    assert "ragtune embed" in capsys.readouterr().err
    assert not run.path("rerank/model").exists()

    # 2. With it, the whole stage runs.
    tuned = tiny_bert_dir.parent / "tuned"
    shutil.copytree(tiny_bert_dir, tuned)
    simulate_embed_stage(run, tuned)
    cli(["rerank", str(tiny_config), *overrides])

    # Mining used the tuned embedder (its cache is keyed by that model's hash) and only train queries.
    queries = {q["qid"]: q for q in read_jsonl(run.path("data/queries.jsonl"))}
    report = json.loads(run.path("rerank/negatives/report.json").read_text())
    assert report["embedder"] == "embed/model"
    assert run.path(f"cache/embeddings/mine-{model_hash(str(run.path('embed/model')))}").is_dir()
    train = {qid for qid, q in queries.items() if q["split"] == "train"}
    assert report["train_queries"] == len(train) == 4 and report["eval_queries_not_mined"] == 2
    mined = read_jsonl(run.path("rerank/negatives/negatives.jsonl"))
    assert {qid for row in mined for qid in row["qids"]} == train

    # Counts: 8 chunks, 4 train queries with one given positive each -> 7 candidates per query; t2 and t6
    # each label the other's chunk grade 1, so exactly 2 candidates are dropped as labelled positives.
    assert report["candidates"] == 28
    assert report["dropped"] == {"labelled_positive": 2, "same_source_span": 0, "max_score": 0, "relative_margin": 0}
    assert report["kept"] == report["candidates"] - sum(report["dropped"][r] for r in RULES) == 26
    assert report["selected"] == 4 * 2  # num_negatives 2 in configs/tiny.yaml
    for row in mined:
        relevant = {c for qid in row["qids"] for c, g in queries[qid]["relevance"].items() if g > 0}
        assert row["negatives"] and not relevant & set(row["negatives"])

    assert run.path("rerank/negatives/scores.png").read_bytes().startswith(PNG_MAGIC)
    audit = run.path("rerank/negatives/audit.md").read_text()
    triples = re.findall(r"## \d+\. query `([^`]+)`.*?\*\*Negative\*\* `([^`]+)`", audit, flags=re.S)
    assert 0 < len(triples) <= 20 and len(triples) == report["selected"]
    for qid, negative in triples:
        assert queries[qid]["split"] == "train"
        assert queries[qid]["relevance"].get(negative, 0) == 0

    # The reranker trained: encoder weights moved away from the base, a model card sits beside them.
    base = load_file(tiny_bert_dir / "model.safetensors")
    trained = load_file(run.path("rerank/model/model.safetensors"))
    trained = {name.removeprefix("bert."): w for name, w in trained.items()}  # a [CLS]-head model nests the encoder
    assert any(not trained[name].equal(w) for name, w in base.items())
    assert "cross-encoder" in run.path("rerank/model/README.md").read_text()

    metrics = json.loads(run.path("rerank/metrics.json").read_text())
    for system in ("retriever", "retriever+reranker"):
        assert {"ndcg@10", "mrr@10", "hit@1", "hit@10"} <= set(metrics["evaluation"][system])
        assert all(0.0 <= v <= 1.0 for v in metrics["evaluation"][system].values())
    assert metrics["evaluation"]["queries"] == 2 and metrics["eval_queries"] == 2
    assert metrics["ndcg@10_retriever"] == metrics["evaluation"]["retriever"]["ndcg@10"]
    assert metrics["ndcg@10_reranked"] == metrics["evaluation"]["retriever+reranker"]["ndcg@10"]
    assert metrics["train_examples"] == 12 and metrics["train_steps"] == 3  # 4 x (1 + 2) pairs, batches of 4
    # Four train queries are too few for a dev slice: the unmeasured reranker gets no say (weight 0), recorded
    # with the model for serving, and there is no learning curve to draw.
    assert metrics["dev_queries"] == 0 and metrics["fusion_weight"] == 0.0
    assert metrics["ndcg@10_reranked"] == metrics["ndcg@10_retriever"]
    fusion = json.loads(run.path(f"rerank/model/{FUSION_FILE}").read_text())
    assert fusion["fusion_weight"] == 0.0 and "no dev slice" in fusion["fusion_weight_source"]
    assert metrics["learning_curve"] == [] and not run.path("rerank/learning_curve.png").exists()
    assert not run.path("rerank/checkpoints").exists()  # no checkpoint was asked for: no empty folder left

    cfg = load_config(tiny_config, overrides)
    rec = run.load_manifest()["rerank"]
    upstream = {"data": ("corpus", "queries"), "embed": ("model",)}
    assert rec.status == "done" and rec.config_hash == run.freshness(cfg, ("rerank",), upstream)[0]
    assert set(rec.outputs) == {"model", "untrained", "negatives", "metrics"}
    # The untrained reranker (the base cross-encoder, seeded head) is saved with its own weight, by the same rule.
    assert json.loads(run.path(f"rerank/untrained/{FUSION_FILE}").read_text())["fusion_weight"] == 0.0
    assert metrics["untrained_fusion_weight"] == 0.0 and 0 <= metrics["ndcg@10_untrained_reranked"] <= 1
    assert set(rec.inputs) == {"data/corpus", "data/queries", "embed/model"}
    assert rec.metrics["ndcg@10_reranked"] == metrics["ndcg@10_reranked"]

    # 3. Finished and fresh: a rerun is skipped.
    cli(["rerank", str(tiny_config), *overrides])
    assert run.load_manifest()["rerank"].ended == rec.ended

    # 4. Inverse-cloze pseudo-queries come only from chunks of documents no held-out query cites.
    cli(["rerank", str(tiny_config), *overrides[:-1], "rerank.pseudo_queries=3", "rerank.max_steps=1", "--force"])
    report = json.loads(run.path("rerank/negatives/report.json").read_text())
    doc_of = {c["id"]: c["doc_id"] for c in read_jsonl(run.path("data/corpus.jsonl"))}
    held_out = {doc_of[c] for q in queries.values() if q["split"] == "eval" for c in q["relevance"]}
    pseudo = [r for r in read_jsonl(run.path("rerank/negatives/negatives.jsonl")) if r["qids"][0].startswith("ict-")]
    assert report["pseudo_queries"] == len(pseudo) > 0
    assert all(doc_of[p] not in held_out for r in pseudo for p in r["positives"])

    # 5. A misspelled trainer key is one clear line naming its path.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(["rerank", str(tiny_config), *overrides, "rerank.trainer.learning_rat=0.1"])
    assert exit_info.value.code == 2
    assert "rerank.trainer.learning_rat" in capsys.readouterr().err


def test_query_likelihood_rerank_stage_trains_an_adapter_saves_and_evaluates(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    from ragtune.pipeline.components import load_reranker, resolve_components
    from ragtune.pipeline.query_likelihood import SPEC_FILE, QueryLikelihoodReranker

    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)
    overrides = [
        f"rerank.query_likelihood.generator={tiny_llama_dir}",
        "rerank.mining.relative_margin=null",
        "rerank.max_steps=2",
        "rerank.batch_size=2",
    ]
    cli(["rerank", str(tiny_config), *overrides])

    metrics = json.loads(run.path("rerank/metrics.json").read_text())
    assert metrics["kind"] == "query_likelihood" and metrics["loss"] == "listwise query likelihood"
    assert metrics["train_steps"] == 2 and metrics["train_examples"] == 4  # one list per train query
    assert metrics["train_loss_first"] is not None
    assert json.loads(run.path("rerank/negatives/report.json").read_text())["pseudo_queries"] == 0
    model_dir = run.path("rerank/model")
    spec = json.loads((model_dir / SPEC_FILE).read_text())
    assert spec["generator"] == str(tiny_llama_dir) and "{passage}" in spec["prompt"]
    assert (model_dir / "adapter_config.json").is_file() and (model_dir / FUSION_FILE).is_file()
    assert "Query likelihood" in (model_dir / "README.md").read_text()
    entry = run.load_manifest()["rerank"]
    assert 0 <= entry.metrics["ndcg@10_reranked"] <= 1
    # The eval split's scores were cached by content: a consumer loading the reranker reuses them.
    assert isinstance(load_reranker(str(model_dir), 64, 0, run.path("cache/rerank-scores")), QueryLikelihoodReranker)
    caches = sorted(p.name for p in run.path("cache/rerank-scores").glob("*.jsonl"))
    assert len(caches) == 2 and caches[1].startswith("untrained-")  # the tuned and the untrained reranker's

    # The untrained reranker: the same LM and prompt without an adapter, its weight chosen by the same rule; it
    # loads and scores, and `assemble.reranker: base` serves it.
    untrained_dir = run.path("rerank/untrained")
    assert json.loads((untrained_dir / SPEC_FILE).read_text())["prompt"] == spec["prompt"]
    assert not (untrained_dir / "adapter_config.json").exists() and (untrained_dir / FUSION_FILE).is_file()
    untrained = load_reranker(str(untrained_dir), 64, 0, run.path("cache/rerank-scores"))
    pairs = [("who owns Heron?", "Heron is owned by the routing team."), ("who owns Heron?", "Lunch is at noon.")]
    untrained_scores = untrained.predict(pairs, batch_size=2, show_progress_bar=False)
    tuned_scores = load_reranker(str(model_dir), 64, 0).predict(pairs, batch_size=2, show_progress_bar=False)
    assert len(untrained_scores) == 2 and list(untrained_scores) != list(tuned_scores)  # the adapter moved it
    assert (
        entry.metrics["untrained_fusion_weight"]
        == json.loads((untrained_dir / FUSION_FILE).read_text())["fusion_weight"]
    )
    cfg = load_config(tiny_config, overrides)
    base = resolve_components(cfg, run, cfg.assemble.model_copy(update={"reranker": "base"}), need_generator=False)
    assert base.reranker == str(untrained_dir) and "rerank/untrained" in base.inputs


def test_without_any_train_query_rerank_and_raft_build_train_on_inverse_cloze_queries(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    """A corpus whose every query is held out used to stop the run at stage 2 ("no train-split query")."""
    from ragtune.pipeline.rundir import atomic_write_jsonl, read_jsonl

    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    queries = read_jsonl(run.path("data/queries.jsonl"))
    cited = {d for q in queries if q["split"] == "eval" for d in q["doc_ids"]}
    atomic_write_jsonl(run.path("data/queries.jsonl"), [q for q in queries if q["split"] == "eval"])
    data = run.load_manifest()["data"]
    outputs = {k: v["path"] for k, v in data.outputs.items()}
    run.record("data", config_hash=data.config_hash, inputs=data.inputs, outputs=outputs, started=time.time())
    simulate_embed_stage(run, tiny_bert_dir)
    overrides = [
        f"rerank.query_likelihood.generator={tiny_llama_dir}",
        "rerank.mining.relative_margin=null",
        "rerank.max_steps=1",
        "rerank.batch_size=2",
        "rerank.pseudo_queries=4",
    ]
    cli(["rerank", str(tiny_config), *overrides])
    report = json.loads(run.path("rerank/negatives/report.json").read_text())
    assert report["pseudo_queries_only"] and 0 < report["pseudo_queries"] <= 4
    assert run.load_manifest()["rerank"].status == "done"
    cli(
        [
            "raft",
            str(tiny_config),
            f"raft.base_model={tiny_llama_dir}",
            "raft.max_steps=1",
            "raft.max_samples=3",
            "raft.max_length=1024",
        ]
    )
    samples = read_jsonl(run.path("raft/train.jsonl"))
    assert 0 < len(samples) <= 3
    doc_of = {c["id"]: c["doc_id"] for c in read_jsonl(run.path("data/corpus.jsonl"))}
    assert all(s["qid"].startswith("ict-") for s in samples)
    assert not {doc_of[c] for s in samples for c in s["oracle_ids"]} & cited  # never a held-out document


def test_query_likelihood_trains_on_the_negatives_its_own_lm_scores_highest(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, monkeypatch
) -> None:
    from ragtune.pipeline.components import load_reranker
    from ragtune.stages.rerank import likelihood

    seen: list[list[dict]] = []
    monkeypatch.setattr(
        likelihood, "train_query_likelihood",
        lambda model, lists, args, callbacks, real=likelihood.train_query_likelihood: (
            seen.append(list(lists)) or real(model, lists, args, callbacks)),
    )  # fmt: skip
    cli(["data", str(tiny_config), "synth.enabled=false"])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)
    overrides = [
        f"rerank.query_likelihood.generator={tiny_llama_dir}",
        "rerank.query_likelihood.negatives=scorer",
        "rerank.query_likelihood.scorer_pool=4",
        "rerank.query_likelihood.dtype=float32",  # bf16 rounding differs with the batch layout: near ties could flip
        "rerank.mining.num_negatives=2",
        "rerank.mining.relative_margin=null",
        "rerank.max_steps=2",
        "rerank.batch_size=2",
    ]
    cli(["rerank", str(tiny_config), *overrides])

    # Mining kept the wider pool; training read, per list, the positive and the 2 the untrained LM rates highest.
    mined = read_jsonl(run.path("rerank/negatives/negatives.jsonl"))
    assert max(len(r["negatives"]) for r in mined) == 4
    untrained = load_reranker(str(run.path("rerank/untrained")), 64, 0)
    by_id = {c["id"]: c["text"] for c in read_jsonl(run.path("data/corpus.jsonl"))}
    for row, trained_on in zip(mined, seen[0], strict=True):
        pool = [by_id[c] for c in row["negatives"]]
        scores = untrained.predict([(row["query"], p) for p in pool], batch_size=4)
        hardest = [p for _, p in sorted(zip(scores, pool, strict=True), key=lambda t: -t[0])][:2]
        assert trained_on["passages"][1:] == hardest
    metrics = json.loads(run.path("rerank/metrics.json").read_text())
    assert metrics["train_steps"] == 2 and metrics["train_loss_first"] is not None
    pairs = [("who owns Heron?", "Heron is owned by the routing team.")]
    tuned = load_reranker(str(run.path("rerank/model")), 64, 0).predict(pairs, batch_size=1)
    assert list(tuned) != list(untrained.predict(pairs, batch_size=1))  # the adapter learned from them
