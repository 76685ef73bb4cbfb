"""RAFT build logic: oracle share, hard distractors with random fallback, targets, config hashing."""

from pathlib import Path

import pytest
import torch

from ragtune.pipeline.config import ConfigError, RaftConfig, RagtuneConfig
from ragtune.pipeline.precision import bf16_training
from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, ANSWER_TAG, format_answer, parse_answer
from ragtune.pipeline.rundir import RunDir
from ragtune.stages.raft.build import (
    CONFIG_SECTIONS,
    NOT_CHANGING_THE_DATA,
    RaftContext,
    build_targets,
    choose_contexts,
)
from ragtune.stages.raft.build import main as build_main
from ragtune.stages.raft.train import make_sft_config

CORPUS = [f"c{i}" for i in range(20)]


def _question(i: int) -> dict:
    # positives c{i}; c{i+1} is graded 1 (relevant, so never a distractor).
    return {
        "qid": f"q{i}",
        "text": f"question {i}",
        "positives": [f"c{i}"],
        "relevance": {f"c{i}": 2, f"c{i + 1}": 1},
        "answer": f"answer {i}",
    }


def test_oracle_share_chunk_count_and_hard_distractors() -> None:
    questions = [_question(i) for i in range(10)]
    # Ranked pool: the graded-1 chunk first, then the positive, then hard candidates.
    ranked = [[f"c{i + 1}", f"c{i}", f"c{(i + 5) % 20}", f"c{(i + 7) % 20}", f"c{(i + 9) % 20}"] for i in range(10)]
    contexts = choose_contexts(questions, ranked, CORPUS, top_n=3, oracle_fraction=0.8, seed=1)
    assert sum(c.has_oracle for c in contexts) == 8
    for i, ctx in enumerate(contexts):
        assert len(ctx.chunk_ids) == 3 and len(set(ctx.chunk_ids)) == 3
        assert ctx.oracle_ids == [f"c{i}"]
        assert (f"c{i}" in ctx.chunk_ids) == ctx.has_oracle
        assert f"c{i + 1}" not in ctx.chunk_ids  # relevance > 0 is never a distractor
        distractors = [c for c in ctx.chunk_ids if c != f"c{i}"]
        hard = [f"c{(i + 5) % 20}", f"c{(i + 7) % 20}", f"c{(i + 9) % 20}"]
        assert sorted(distractors) == sorted(hard[: len(distractors)])  # the best-ranked irrelevant ones
        assert ctx.random_distractors == 0
    # Seeded: the same seed gives the same samples; order inside a sample is shuffled.
    again = choose_contexts(questions, ranked, CORPUS, top_n=3, oracle_fraction=0.8, seed=1)
    assert [c.chunk_ids for c in again] == [c.chunk_ids for c in contexts]
    with_oracle = [c for c in contexts if c.has_oracle]
    assert any(c.chunk_ids[0] != c.oracle_ids[0] for c in with_oracle)
    assert any(c.chunk_ids[0] == c.oracle_ids[0] for c in with_oracle)


def test_random_fallback_only_when_too_few_hard_distractors() -> None:
    q = _question(0)
    ctx = choose_contexts([q], [["c0", "c1", "c5"]], CORPUS, top_n=4, oracle_fraction=1.0, seed=0)[0]
    assert len(ctx.chunk_ids) == 4 and "c5" in ctx.chunk_ids and "c1" not in ctx.chunk_ids
    assert ctx.random_distractors == 2
    # Oracle capped at top_n - 1 (best-ranked positives first), so a sample always has a distractor.
    multi = {**q, "positives": ["c0", "c2", "c3"], "relevance": {"c0": 2, "c2": 2, "c3": 2}}
    ctx = choose_contexts([multi], [["c3", "c9", "c0", "c2"]], CORPUS, top_n=3, oracle_fraction=1.0, seed=0)[0]
    assert ctx.oracle_ids == ["c3", "c0"] and sorted(ctx.chunk_ids) == ["c0", "c3", "c9"]


def test_build_targets_verifies_repairs_and_counts() -> None:
    texts = {"c0": "The grace period is 40 minutes.", "c1": "Unrelated text here."}
    contexts = [
        RaftContext("ok", "q", "40", ["c0"], ["c0", "c1"], has_oracle=True),
        RaftContext("bad", "q", "40", ["c0"], ["c1", "c0"], has_oracle=True),
        RaftContext("junk", "q", "40", ["c0"], ["c0", "c1"], has_oracle=True),
        RaftContext("fail", "q", "40", ["c0"], ["c0", "c1"], has_oracle=True),
        RaftContext("none", "q", "40", ["c0"], ["c1"], has_oracle=False),
    ]
    answers = {
        "ok": format_answer("r", ["The grace period is 40 minutes."], "40 minutes"),
        "bad": format_answer("r", ["Unrelated text here."], "40 minutes"),  # quotes a distractor
        "junk": "40 minutes",
        "fail": None,
    }
    kept, counts = build_targets(contexts, answers, texts, "abstain")
    assert [c.qid for c, _ in kept] == ["ok", "bad", "none"]
    assert counts == {
        "valid": 1,
        "repaired": 0,
        "replaced": 1,
        "malformed": 1,
        "failed": 1,
        "no_oracle_kept": 1,
        "no_oracle_dropped": 0,
    }
    assert parse_answer(kept[1][1]).quotes == ["The grace period is 40 minutes."]
    assert parse_answer(kept[2][1]).answer == ABSTAIN_ANSWER
    # memory mode with no teacher answer for the no-oracle sample: dropped and counted.
    _, counts = build_targets(contexts[4:], {}, texts, "memory")
    assert counts["no_oracle_dropped"] == 1


def test_quote_answer_targets_keep_the_verified_quotes_and_the_answer_only() -> None:
    texts = {"c0": "The grace period is 40 minutes.", "c1": "Unrelated text here."}
    contexts = [
        RaftContext("ok", "q", "40", ["c0"], ["c0", "c1"], has_oracle=True),
        RaftContext("none", "q", "40", ["c0"], ["c1"], has_oracle=False),
    ]
    teacher = format_answer("The runbook says, in its own words,", ["The grace period is 40 minutes."], "40 minutes")
    kept, counts = build_targets(contexts, {"ok": teacher}, texts, "abstain", "quote_answer")
    assert counts["valid"] == 1 and counts["no_oracle_kept"] == 1
    assert kept[0][1] == "##Reason: ##begin_quote##The grace period is 40 minutes.##end_quote##\n##Answer: 40 minutes"
    assert kept[1][1] == f"##Reason:\n##Answer: {ABSTAIN_ANSWER}"
    assert all(parse_answer(target).well_formed for _, target in kept)


def test_quote_span_targets_answer_with_the_words_of_the_quote_closest_to_the_answer() -> None:
    texts = {"c0": "By default the grace period is 40 minutes, then the job fails.", "c1": "Other text."}
    contexts = [
        RaftContext("span", "q", "x", ["c0"], ["c0", "c1"], has_oracle=True),
        RaftContext("apart", "q", "x", ["c0"], ["c0", "c1"], has_oracle=True),
        RaftContext("none", "q", "x", ["c0"], ["c1"], has_oracle=False),
    ]
    quote = "By default the grace period is 40 minutes, then the job fails."
    teacher = {
        "span": format_answer("It says", [quote], "Forty minutes (40 minutes) by default."),
        "apart": format_answer("It says", [quote], "Ask the on-call lead."),  # no word shared: the answer stays
    }
    kept, _ = build_targets(contexts, teacher, texts, "abstain", "quote_span")
    parsed = [parse_answer(target) for _, target in kept]
    assert parsed[0].quotes == [quote] and parsed[0].answer == "By default the grace period is 40 minutes,"
    assert parsed[0].answer in quote and kept[0][1].startswith("##Reason: ##begin_quote##")  # no prose
    assert parsed[1].answer == "Ask the on-call lead."
    assert parsed[2].answer == ABSTAIN_ANSWER and parsed[2].quotes == []


def test_build_hash_ignores_training_settings(tmp_path: Path) -> None:
    def build_config_hash(cfg: RagtuneConfig) -> str:
        return RunDir(tmp_path).freshness(cfg, CONFIG_SECTIONS, exclude=NOT_CHANGING_THE_DATA)[0]

    base = RagtuneConfig.model_validate({"run": {"name": "x"}, "data": {"docs": "d"}})
    trained = base.model_copy(deep=True)
    trained.raft.learning_rate = 1e-3
    trained.raft.lora.r = 4
    trained.raft.teacher.concurrency = 3
    trained.raft.teacher.dry_run = True
    assert build_config_hash(trained) == build_config_hash(base)
    changed = base.model_copy(deep=True)
    changed.raft.oracle_fraction = 0.5
    assert build_config_hash(changed) != build_config_hash(base)
    changed = base.model_copy(deep=True)
    changed.raft.target = "quote_answer"
    assert build_config_hash(changed) != build_config_hash(base)
    changed = base.model_copy(deep=True)
    changed.assemble.top_n = 5
    assert build_config_hash(changed) != build_config_hash(base)
    changed = base.model_copy(deep=True)
    changed.raft.teacher.max_new_tokens = 7
    assert build_config_hash(changed) != build_config_hash(base)


def test_trainer_pass_through_user_keys_win_and_unknown_keys_are_named(tmp_path: Path) -> None:
    args = make_sft_config(RaftConfig(trainer={"logging_steps": 7, "warmup_steps": 2}), tmp_path / "o", seed=3)
    assert (args.logging_steps, args.warmup_steps, args.seed, args.max_length) == (7, 2, 3, 1024)
    assert args.output_dir == str(tmp_path / "o")
    assert args.bf16 is bf16_training()  # bf16 autocast only where the hardware has native bf16 math
    assert make_sft_config(RaftConfig(trainer={"bf16": False}), tmp_path, seed=0).bf16 is False  # user keys win
    # activation checkpointing (trl's default) saves GPU memory; on a CPU it only reruns each forward
    assert args.gradient_checkpointing is torch.cuda.is_available()
    kept = make_sft_config(RaftConfig(trainer={"gradient_checkpointing": True}), tmp_path, seed=0)
    assert kept.gradient_checkpointing is True
    with pytest.raises(ConfigError, match=r"raft\.trainer\.warmup_stepz"):
        make_sft_config(RaftConfig(trainer={"warmup_stepz": 2}), tmp_path, seed=0)
    with pytest.raises(ConfigError, match=r"raft\.trainer\.output_dir"):
        make_sft_config(RaftConfig(trainer={"output_dir": "elsewhere"}), tmp_path, seed=0)


def test_build_runs_on_the_main_process_only(monkeypatch, tmp_path: Path) -> None:
    # A second rank of `accelerate launch` must not call (and bill) the teacher again, nor write anything.
    from ragtune.pipeline.rundir import RunDir

    monkeypatch.setenv("RANK", "1")
    run = RunDir(tmp_path / "run")
    assert (
        build_main(
            RagtuneConfig.model_validate(
                {"run": {"name": "r", "root": str(tmp_path)}, "data": {"docs": str(tmp_path)}}
            ),
            run,
        )
        == {}
    )
    assert not (tmp_path / "run").exists()


def test_dev_answer_f1_scores_base_and_tuned_on_the_same_prompts(monkeypatch) -> None:
    from ragtune.pipeline.config import AssembleConfig
    from ragtune.stages.raft import train

    rows = [
        {"qid": f"q{i}", "prompt": [{"role": "user", "content": f"Q{i}?"}], "answer": f"{i} minutes"} for i in range(4)
    ]
    monkeypatch.setattr(train, "load_for_inference", lambda model, adapter, dtype=None: (adapter, None))

    def fake_generate(model, tokenizer, requests, max_new_tokens, desc, stop):
        assert [r[0]["content"] for r in requests] == [f"Q{i}?" for i in range(4)] and max_new_tokens == 9
        # each completion stops once its answer is settled: a tag after the answer tag (the prefill's when guided)
        guided = requests[0][-1]["role"] == "assistant"
        assert stop(" 5 minutes\n##Reason:") is guided and not stop(" 5 minutes")
        assert guided or (stop("##Reason: r ##Answer: 5##Reason:") and not stop("##Reason: r ##Answer: 5"))
        if guided:  # the extractive quote is written in, the answer follows
            assert all(r[-1]["content"].endswith(ANSWER_TAG) for r in requests)
            return [" no idea"] * 4 if model is None else [f" {i} minutes" for i in range(4)]
        if model is None:  # the base generator: free-form, half right
            return ["0 minutes", "no idea", "2 minutes", "no idea"]
        return [f"##Reason: it says so. ##Answer: {i} minutes" for i in range(3)] + [
            format_answer("x", [], ABSTAIN_ANSWER)
        ]

    monkeypatch.setattr(train, "generate_batched", fake_generate)
    out = train.dev_answer_f1("base", "adapter", rows, AssembleConfig(max_new_tokens=9))
    assert out["dev_questions"] == 4
    assert (out["dev_f1_base"], out["dev_f1_tuned"]) == (0.5, 0.75)
    assert (out["dev_abstain_base"], out["dev_abstain_tuned"]) == (0.0, 0.25)
    assert "dev_f1_extractive" not in out  # rows built before the extractive answer existed
    assert train.dev_answer_f1("base", "adapter", [], AssembleConfig()) == {}
    # The build's extractive answers are scored as the third candidate of the gate.
    quoted = [format_answer("s", [f"It takes {i} minutes."], f"It takes {i} minutes.") for i in range(4)]
    out = train.dev_answer_f1(
        "base",
        "adapter",
        [r | {"extractive": a} for r, a in zip(rows, quoted, strict=True)],
        AssembleConfig(max_new_tokens=9),
    )
    assert out["dev_f1_extractive"] == pytest.approx(2 / 3)  # "{i} minutes" in "It takes {i} minutes.": P 1/2, R 1
    # Each generator also answers from the extractive quote written in (guided), scored on the whole answer.
    assert (out["dev_f1_base_guided"], out["dev_f1_tuned_guided"]) == (0.0, 1.0)
    assert (out["dev_f1_base"], out["dev_f1_tuned"]) == (0.5, 0.75)  # the unguided figures are unchanged
