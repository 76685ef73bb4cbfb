"""The RAFT stage through the `ragtune` CLI: data -> (simulated) embed and rerank -> raft build + train."""

import json
import time
from pathlib import Path

import pytest
import torch
from fakes.upstream import run_dir_of, simulate_embed_stage

from ragtune.app.cli import main as cli
from ragtune.pipeline.raft_format import ABSTAIN_ANSWER, parse_answer, quote_is_verbatim
from ragtune.pipeline.rundir import read_jsonl

TOP_N = 2  # configs/tiny.yaml assemble.top_n


def _lora_b_norm(adapter: Path, base: Path) -> float:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), str(adapter))
    weights = [p for name, p in model.named_parameters() if "lora_B" in name]
    assert len(weights) == 2 * 4  # 2 layers x q/k/v/o
    return float(sum(w.detach().float().abs().sum() for w in weights))


def test_raft_builds_verified_samples_and_trains_lora_and_qlora(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, capsys
) -> None:
    from sentence_transformers import CrossEncoder

    run = run_dir_of(tiny_config)
    raft_args = [f"raft.base_model={tiny_llama_dir}", "raft.max_steps=2", "raft.max_length=1024"]
    cli(["data", str(tiny_config), "synth.enabled=false"])
    simulate_embed_stage(run, tiny_bert_dir)

    # Without a finished rerank stage it refuses and names the command to run.
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        cli(["raft", str(tiny_config), *raft_args])
    assert exit_info.value.code == 2
    assert "ragtune rerank" in capsys.readouterr().err

    CrossEncoder(str(tiny_bert_dir), num_labels=1).save(str(run.path("rerank/model")))
    run.record("rerank", config_hash="simulated", inputs={}, outputs={"model": "rerank/model"}, started=time.time())
    cli(["raft", str(tiny_config), *raft_args, "raft.quantization=none"])

    # Samples: train split only, P share, top_n chunks, oracle present iff has_oracle, no relevant distractor.
    queries = {q["qid"]: q for q in read_jsonl(run.path("data/queries.jsonl"))}
    texts = {c["id"]: c["text"] for c in read_jsonl(run.path("data/corpus.jsonl"))}
    train_qids = {qid for qid, q in queries.items() if q["split"] == "train"}
    rows = read_jsonl(run.path("raft/train.jsonl"))
    assert {r["qid"] for r in rows} == train_qids and len(rows) == len(train_qids) >= 2
    assert sum(r["has_oracle"] for r in rows) == round(0.8 * len(train_qids))
    assert 0 < sum(r["has_oracle"] for r in rows) < len(rows)
    for r in rows:
        relevant = {c for c, g in queries[r["qid"]]["relevance"].items() if g > 0}
        assert len(r["chunk_ids"]) == TOP_N
        user = r["prompt"][1]["content"]
        assert f'<document index="{TOP_N}">' in user and f'<document index="{TOP_N + 1}">' not in user
        assert all(texts[c].strip() in user for c in r["chunk_ids"])
        assert set(r["oracle_ids"]) <= set(queries[r["qid"]]["positives"])
        assert (set(r["oracle_ids"]) <= set(r["chunk_ids"])) == r["has_oracle"]
        assert not (set(r["chunk_ids"]) - set(r["oracle_ids"])) & relevant
        parsed = parse_answer(r["completion"][0]["content"])
        assert parsed.well_formed
        if r["has_oracle"]:  # extractive teacher: quotes verbatim from the oracle, answer = the reference
            assert parsed.quotes and parsed.answer == queries[r["qid"]]["answer"]
            assert all(any(quote_is_verbatim(q, texts[o]) for o in r["oracle_ids"]) for q in parsed.quotes)
        else:
            assert parsed.answer == ABSTAIN_ANSWER and not parsed.quotes
    report = json.loads(run.path("raft/report.json").read_text())
    assert report["samples"] == len(rows) and report["teacher"]["valid"] == report["with_oracle"]
    assert report["eval_questions_excluded"] == len(queries) - len(train_qids)
    origins = [queries[r["qid"]].get("origin", "human") for r in rows]
    assert report["sources"] == {o: origins.count(o) for o in set(origins)}

    # Adapter: saved with a card, loads with PeftModel, its LoRA B matrices (zero at init) have moved.
    stages = run.load_manifest()
    rec = stages["raft"]
    assert rec.status == "done" and stages["raft_build"].status == "done"
    assert rec.metrics["steps"] == 2 and rec.metrics["quantization"] == "none"
    assert set(rec.inputs) == {"raft_build/train_data", "raft_build/dev_data"} and "adapter" in rec.outputs
    # The fixture's train split is below the dev slice's minimum: no dev questions, so no dev figure is claimed.
    assert read_jsonl(run.path("raft/dev.jsonl")) == [] and "dev_f1_tuned" not in rec.metrics
    card = run.path("raft/adapter/README.md").read_text()
    assert str(tiny_llama_dir) in card and f"{len(rows)} samples" in card
    assert _lora_b_norm(run.path("raft/adapter"), tiny_llama_dir) > 0
    assert run.require("raft", "adapter")["adapter"] == run.path("raft/adapter")

    # Finished and fresh: skipped. QLoRA (NF4) path, forced: rebuilds identical data, trains, saves.
    cli(["raft", str(tiny_config), *raft_args, "raft.quantization=none"])
    assert run.load_manifest()["raft"].ended == rec.ended
    cli(["raft", str(tiny_config), *raft_args, "raft.quantization=nf4", "--force"])
    assert read_jsonl(run.path("raft/train.jsonl")) == rows
    rec4 = run.load_manifest()["raft"]
    assert rec4.metrics["quantization"] == "nf4" and rec4.metrics["steps"] == 2
    assert rec4.outputs["adapter"]["hash"] != rec.outputs["adapter"]["hash"]
    assert torch.isfinite(torch.tensor(rec4.metrics["train_loss_last"]))
    assert _lora_b_norm(run.path("raft/adapter"), tiny_llama_dir) > 0
