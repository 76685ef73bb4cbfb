"""The GPL round through the `ragtune` CLI: tiny BERT student (stage 1 simulated), tiny cross-encoder teacher."""

import json
import time
from pathlib import Path

import pytest
import torch
from fakes.upstream import launch_ddp, run_dir_of, simulate_embed_stage, simulate_rerank_stage
from safetensors.torch import load_file
from sentence_transformers import CrossEncoder, SentenceTransformer
from transformers import Trainer

import ragtune.stages.gpl.train as gpl_train
from ragtune.app.cli import main as cli
from ragtune.pipeline.components import resolve_components
from ragtune.pipeline.config import AssembleConfig, load_config
from ragtune.pipeline.dev_slice import assign_dev_ranks
from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever, hybrid_retrieval_metrics
from ragtune.pipeline.retrieval import DenseRetriever, retrieval_metrics
from ragtune.pipeline.rundir import RunDir, atomic_write_jsonl, read_jsonl
from ragtune.stages.gpl.hybrid_teacher import HybridTeacher

WORDS = ["heron", "tortoise", "ledgerfish", "pondview", "failover", "drain", "lease", "invoice", "shard", "window"]
# 8 eval documents, 32 train documents of which embed.dev_fraction=0.25 holds 8 out as stage 1's dev slice.
OVERRIDES = ["gpl.enabled=true", "embed.dev_fraction=0.25", "gpl.learning_rate=1e-3", "gpl.batch_size=8"]
STAGE_1 = {"dev_ndcg@10_base": 0.30, "dev_ndcg@10_tuned": 0.35, "dev_queries": 8}


def handmade_data_stage(run: RunDir) -> None:
    """40 one-chunk documents with one query each; chunk texts carry sentences for inverse-cloze queries."""
    corpus, queries = [], []
    for i in range(40):
        words = f"{WORDS[i % 10]} {WORDS[(i * 3) % 10]} {WORDS[(i * 7) % 10]}"
        text = f"The {words} note {i} is filed here. Operators read the {WORDS[(i * 7) % 10]} runbook before a change."
        corpus.append({"id": f"c{i}", "doc_id": f"d{i}", "source": f"d{i}", "text": text, "start": 0, "end": 1})
        split = "eval" if i < 8 else "train"
        queries.append({"qid": f"q{i}", "text": f"which {words} {i}?", "positives": [f"c{i}"], "doc_ids": [f"d{i}"]})
        queries[-1] |= {"relevance": {f"c{i}": 1}, "origin": "synthetic", "split": split}
    atomic_write_jsonl(run.path("data/corpus.jsonl"), corpus)
    atomic_write_jsonl(run.path("data/queries.jsonl"), assign_dev_ranks(queries, seed=42))
    outputs = {"corpus": "data/corpus.jsonl", "queries": "data/queries.jsonl"}
    run.record("data", config_hash="handmade", inputs={}, outputs=outputs, started=time.time())


@pytest.fixture
def upstream(tiny_config: Path, tiny_bert_dir: Path) -> RunDir:
    """A run with the hand-made data stage, stage 1 (the tiny BERT, dev figures given) and stage 2's teacher."""
    run = run_dir_of(tiny_config)
    handmade_data_stage(run)
    simulate_embed_stage(run, tiny_bert_dir, STAGE_1)
    simulate_rerank_stage(run, tiny_bert_dir, varied=True)  # a teacher whose margins are not all near 0
    return run


def test_gpl_round_trains_on_teacher_margins_never_on_eval_and_records_its_dev_figure(
    tiny_config: Path, upstream: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = upstream
    queries = read_jsonl(run.path("data/queries.jsonl"))
    eval_texts = {q["text"] for q in queries if q["split"] == "eval"}
    seen_by_student, seen_by_teacher = [], []
    encode, predict = SentenceTransformer.encode, CrossEncoder.predict

    def recording_encode(self, inputs, *args, **kwargs):
        seen_by_student.extend([inputs] if isinstance(inputs, str) else inputs)
        return encode(self, inputs, *args, **kwargs)

    def recording_predict(self, pairs, *args, **kwargs):
        seen_by_teacher.extend(q for q, _ in pairs)
        return predict(self, pairs, *args, **kwargs)

    monkeypatch.setattr(SentenceTransformer, "encode", recording_encode)
    monkeypatch.setattr(CrossEncoder, "predict", recording_predict)
    cli(["gpl", str(tiny_config), *OVERRIDES, "gpl.epochs=4", "gpl.pseudo_queries=6"])

    # The student moved away from stage 1's model, and the MarginMSE loss fell.
    before = load_file(run.path("embed/model/model.safetensors"))
    after = load_file(run.path("gpl/model/model.safetensors"))
    assert set(before) == set(after) and any(not torch.equal(before[k], after[k]) for k in before)
    report = json.loads(run.path("gpl/metrics.json").read_text())
    losses = [loss for _, loss in report["loss_history"]]
    third = max(len(losses) // 3, 1)
    assert sum(losses[-third:]) < sum(losses[:third])  # the loss fell (single-batch points are noisy)

    # Training queries: the 24 train queries outside stage 1's dev slice and 6 inverse-cloze ones, 4 negatives each.
    dev_qids = set(report["dev_qids"])
    assert len(dev_qids) == report["dev_queries"] == 8
    assert report["train_queries"] == 24 and report["pseudo_queries"] == 6 and report["train_triples"] == 30 * 4
    triples = read_jsonl(run.path("gpl/train.jsonl"))
    by_qid = {q["qid"]: q for q in queries}
    held_out_docs = {d for q in queries if q["split"] == "eval" or q["qid"] in dev_qids for d in q["doc_ids"]}
    doc_of = {c["id"]: c["doc_id"] for c in read_jsonl(run.path("data/corpus.jsonl"))}
    for t in triples:
        if t["qid"].startswith("ict-"):
            assert doc_of[t["positive_id"]] not in held_out_docs  # no pseudo-query from an eval or dev document
        else:
            assert by_qid[t["qid"]]["split"] == "train" and t["qid"] not in dev_qids
        assert t["negative_id"] != t["positive_id"]
        assert t["margin"] == pytest.approx(t["score_positive"] - t["score_negative"])
    # The eval split never fed the round: neither the teacher nor the student ever saw an eval query; the dev
    # queries are only encoded for the dev figure, never scored by the teacher.
    dev_texts = {by_qid[q]["text"] for q in dev_qids}
    assert not eval_texts & set(seen_by_student) and not (eval_texts | dev_texts) & set(seen_by_teacher)
    assert {t["query"] for t in triples} == set(seen_by_teacher)

    # The dev figures are stage 1's full-corpus figures, dense and hybrid, computed for the GPL model; stage 1's
    # come from its record.
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    retriever = DenseRetriever.encode(SentenceTransformer(str(run.path("gpl/model"))), corpus)
    cfg = load_config(tiny_config, OVERRIDES)
    dev_queries = [by_qid[q] for q in report["dev_qids"]]
    dev = retrieval_metrics(retriever, dev_queries, cfg.embed.k_values)
    depth = cfg.assemble.hybrid_depth
    bm25 = bm25_rankings(bm25_retriever(corpus, depth), [q["text"] for q in dev_queries])
    dev_hybrid = hybrid_retrieval_metrics(retriever, dev_queries, cfg.embed.k_values, bm25, depth)
    rec = run.load_manifest()["gpl"]
    assert rec.metrics["dev_ndcg@10_gpl"] == pytest.approx(dev["ndcg@10"])
    assert rec.metrics["dev_ndcg@10_gpl_hybrid"] == pytest.approx(dev_hybrid["ndcg@10"])
    assert rec.metrics["dev_ndcg@10_embed"] == STAGE_1["dev_ndcg@10_tuned"]
    assert rec.metrics["dev_ndcg@10_embed_hybrid"] is None  # this simulated stage 1 measured no hybrid figure
    assert set(rec.outputs) == {"model", "metrics", "train_data"}
    assert set(rec.inputs) == {"data/corpus", "data/queries", "embed/model", "rerank/model"}
    assert "Second round by ragtune (GPL)" in run.path("gpl/model/README.md").read_text()
    assert not run.path("gpl/checkpoints").exists()

    # Served as the tuned embedder exactly when it beat stage 1 on dev.
    served = resolve_components(cfg, run, AssembleConfig(embedder="tuned", reranker="none"), need_generator=False)
    beat = rec.metrics["dev_ndcg@10_gpl"] > STAGE_1["dev_ndcg@10_tuned"]
    assert served.embedder == str(run.path("gpl/model" if beat else "embed/model"))

    # Finished and fresh: skipped; a changed gpl setting reruns it.
    cli(["gpl", str(tiny_config), *OVERRIDES, "gpl.epochs=4", "gpl.pseudo_queries=6"])
    assert run.load_manifest()["gpl"].ended == rec.ended


@pytest.mark.ddp
@pytest.mark.slow
def test_the_round_under_two_process_ddp_shares_batches_and_writes_once(tiny_config: Path, upstream: RunDir) -> None:
    run = upstream
    proc = launch_ddp("ragtune.stages.gpl.train", tiny_config, [*OVERRIDES, "gpl.pseudo_queries=0"], 300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    # 24 train queries x 4 negatives = 96 triples, 12 length-grouped batches of 8: two ranks take 6 steps each.
    report = json.loads(run.path("gpl/metrics.json").read_text())
    assert report["train_triples"] == 96 and report["steps"] == 6
    assert run.load_manifest()["gpl"].status == "done"
    assert (run.path("gpl/model") / "model.safetensors").exists() and not run.path("gpl/checkpoints").exists()
    assert (proc.stdout + proc.stderr).count("gpl: dev nDCG@10") == 1  # only rank 0 evaluates and logs


def test_base_share_mixes_stage_1s_weights_back_into_the_trained_ones(tiny_config: Path, upstream: RunDir) -> None:
    run = upstream
    overrides = [*OVERRIDES, "gpl.pseudo_queries=0", "gpl.max_steps=3"]
    cli(["gpl", str(tiny_config), *overrides])
    trained = load_file(run.path("gpl/model/model.safetensors"))
    cli(["gpl", str(tiny_config), *overrides, "gpl.base_share=0.25"])  # a new setting: the round reruns
    mixed = load_file(run.path("gpl/model/model.safetensors"))
    start = load_file(run.path("embed/model/model.safetensors"))
    moved = [k for k in start if not torch.equal(start[k], trained[k])]
    assert moved  # training changed weights, and each mixed weight lies a quarter of the way back to the start
    for key in start:
        assert torch.allclose(mixed[key], 0.25 * start[key] + 0.75 * trained[key], atol=1e-5), key
    assert json.loads(run.path("gpl/metrics.json").read_text())["base_share"] == 0.25
    assert "25% of the start's weights mixed back" in run.path("gpl/model/README.md").read_text()


def test_a_killed_round_resumes_from_its_last_checkpoint_with_the_same_labels(
    tiny_config: Path, upstream: RunDir, monkeypatch: pytest.MonkeyPatch
) -> None:
    run = upstream
    overrides = [*OVERRIDES, "gpl.pseudo_queries=0", "gpl.max_steps=4", "gpl.checkpoint_steps=2"]
    other = [*overrides, "gpl.negatives_per_query=2"]
    step, label = Trainer.training_step, gpl_train.label_triples
    labelled: list[int] = []
    monkeypatch.setattr(gpl_train, "label_triples", lambda *a, **k: labelled.append(1) or label(*a, **k))

    def killed_after_checkpoint_2(config_overrides: list[str]) -> None:
        def dying_step(self, *args, **kwargs):
            if self.state.global_step == 3:
                raise KeyboardInterrupt
            return step(self, *args, **kwargs)

        monkeypatch.setattr(Trainer, "training_step", dying_step)
        with pytest.raises(SystemExit):
            cli(["gpl", str(tiny_config), *config_overrides])
        monkeypatch.setattr(Trainer, "training_step", step)
        assert run.path("gpl/checkpoints/checkpoint-2").is_dir()
        assert run.load_manifest()["gpl"].failure  # recorded as failed (beside a finished record, if any)

    # Another config's checkpoints are never resumed: they are removed and the triples labelled afresh.
    killed_after_checkpoint_2(overrides)
    cli(["gpl", str(tiny_config), *other])
    report = json.loads(run.path("gpl/metrics.json").read_text())
    assert len(labelled) == 2 and report["resumed_from"] is None and report["train_triples"] == 24 * 2
    assert not run.path("gpl/checkpoints").exists()

    # The same config resumes from its last checkpoint and reuses its labels.
    killed_after_checkpoint_2(overrides)
    labelled.clear()
    cli(["gpl", str(tiny_config), *overrides])
    report = json.loads(run.path("gpl/metrics.json").read_text())
    assert report["resumed_from"] == "checkpoint-2" and report["steps"] == 4 and not labelled
    assert report["train_triples"] == 24 * 4 and not run.path("gpl/checkpoints").exists()


def test_gpl_off_records_nothing_and_leaves_the_tuned_embedder_as_before(
    tiny_config: Path, upstream: RunDir, capsys
) -> None:
    run = upstream
    cfg = load_config(tiny_config)
    choice = AssembleConfig(embedder="tuned", reranker="none")
    before = resolve_components(cfg, run, choice, need_generator=False)
    manifest = run.manifest_path.read_bytes()

    cli(["gpl", str(tiny_config)])  # gpl.enabled is false by default
    assert run.manifest_path.read_bytes() == manifest and not run.path("gpl").exists()
    after = resolve_components(cfg, run, choice, need_generator=False)
    assert (
        (after.embedder, after.inputs)
        == (before.embedder, before.inputs)
        == (
            str(run.path("embed/model")),
            run.input_hashes("embed", "model"),
        )
    )

    # A GPL model that a later config turns off is not served either, and status says nothing of it.
    cli(["gpl", str(tiny_config), *OVERRIDES, "gpl.max_steps=1", "gpl.pseudo_queries=0"])
    assert "gpl" in run.load_manifest()
    off = resolve_components(cfg, run, choice, need_generator=False)
    assert (off.embedder, off.inputs) == (before.embedder, before.inputs)
    capsys.readouterr()
    cli(["status", str(run.root)])
    status = capsys.readouterr().out
    assert "GPL" in status.split("served by default")[1]  # the last command's config (config.resolved.yaml) had it on
    cli(["gpl", str(tiny_config)])  # the config without the override turns it off again
    capsys.readouterr()
    cli(["status", str(run.root)])
    assert "GPL" not in capsys.readouterr().out.split("served by default")[1]


def test_a_teacher_that_cannot_rank_is_refused_naming_gpl_teacher_and_its_labels_are_kept(
    tiny_config: Path, upstream: RunDir, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    run = upstream
    # A collapsed cross-encoder: the same score for every pair (margins 0), which auto scaling would blow up.
    monkeypatch.setattr(CrossEncoder, "predict", lambda self, pairs, **kwargs: [0.25] * len(pairs))
    with pytest.raises(SystemExit) as exit_info:
        cli(["gpl", str(tiny_config), *OVERRIDES, "gpl.pseudo_queries=0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "gpl.teacher" in err and "cannot tell a positive from a negative" in err and "gpl/train.jsonl" in err
    assert len(read_jsonl(run.path("gpl/train.jsonl"))) == 24 * 4  # the teacher's work is not lost
    assert not run.path("gpl/model").exists() and run.load_manifest()["gpl"].failure


def test_the_untrained_query_likelihood_reranker_can_teach_without_stage_2(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    """``gpl.teacher: base``: the LM with the stage's prompt labels the triples; stage 2 need not have run."""
    run = run_dir_of(tiny_config)
    handmade_data_stage(run)
    simulate_embed_stage(run, tiny_bert_dir, STAGE_1)
    overrides = [*OVERRIDES, "gpl.teacher=base", f"rerank.query_likelihood.generator={tiny_llama_dir}", "gpl.epochs=4"]
    cli(["gpl", str(tiny_config), *overrides, "gpl.pseudo_queries=2"])
    triples = read_jsonl(run.path("gpl/train.jsonl"))
    assert triples and len({round(t["margin"], 6) for t in triples}) > 1  # the LM tells passages apart
    rec = run.load_manifest()["gpl"]
    assert "teacher/model" in rec.inputs and "rerank/model" not in rec.inputs
    losses = [loss for _, loss in json.loads(run.path("gpl/metrics.json").read_text())["loss_history"]]
    third = max(len(losses) // 3, 1)
    assert sum(losses[-third:]) < sum(losses[:third])  # the loss fell (single-batch points are noisy)
    assert list(run.path("cache/rerank-scores").glob("untrained-*.jsonl"))  # its scores are cached by content


def test_the_untrained_hybrid_retriever_can_teach_without_stage_2(tiny_config: Path, tiny_bert_dir: Path) -> None:
    """``gpl.teacher: hybrid``: BM25 + the base embedder label the triples by fused rank; no LM, no stage 2."""
    run = run_dir_of(tiny_config)
    handmade_data_stage(run)
    simulate_embed_stage(run, tiny_bert_dir, STAGE_1)
    overrides = [*OVERRIDES, "gpl.teacher=hybrid", f"embed.base_model={tiny_bert_dir}", "gpl.epochs=4"]
    overrides += ["gpl.negatives_from=teacher", "gpl.negatives_top_k=3"]
    cli(["gpl", str(tiny_config), *overrides, "gpl.pseudo_queries=4"])
    triples = read_jsonl(run.path("gpl/train.jsonl"))
    # The negatives come from the teacher's own top 3 (BM25 + the base embedder), not from stage 1's model.
    corpus = read_jsonl(run.path("data/corpus.jsonl"))
    teacher = HybridTeacher(DenseRetriever.load(str(tiny_bert_dir), corpus), depth=50)
    queries = sorted({t["query"] for t in triples})
    _, ranked = teacher.search(queries, k=3 + 1)
    top = dict(zip(queries, ranked, strict=True))
    assert all(t["negative_id"] in top[t["query"]] for t in triples)
    assert any(t["qid"].startswith("ict-") for t in triples)  # inverse-cloze positives are ranked too
    assert triples and len({round(t["margin"], 6) for t in triples}) > 1
    assert sum(t["margin"] > 0 for t in triples) > len(triples) / 2  # BM25 finds the query's own note first
    rec = run.load_manifest()["gpl"]
    assert "teacher/model" in rec.inputs and "rerank/model" not in rec.inputs
    assert json.loads(run.path("gpl/metrics.json").read_text())["teacher"] == "hybrid"
    losses = [loss for _, loss in json.loads(run.path("gpl/metrics.json").read_text())["loss_history"]]
    third = max(len(losses) // 3, 1)
    assert sum(losses[-third:]) < sum(losses[:third])
