"""scripts/bench_raft.py reads the samples a run's RAFT build wrote, within raft.max_length."""

import json
import time
from pathlib import Path

from transformers import AutoTokenizer

from ragtune.pipeline.config import RagtuneConfig
from ragtune.pipeline.raft_format import build_messages, format_answer
from ragtune.pipeline.rundir import RAFT_TRAIN_DATA, RunDir


def test_samples_are_the_builds_within_max_length(load_script, tiny_llama_dir: Path, tmp_path: Path) -> None:
    bench = load_script("bench_raft")
    completion = [{"role": "assistant", "content": format_answer("", ["It is 40 minutes."], "40 minutes")}]
    short = {"prompt": build_messages("grace period?", ["It is 40 minutes."]), "completion": completion}
    long = {"prompt": build_messages("grace period?", ["grace period " * 400]), "completion": completion}
    run = RunDir(tmp_path / "run")
    (run.root / "raft").mkdir(parents=True)
    run.path(RAFT_TRAIN_DATA).write_text("".join(json.dumps(s) + "\n" for s in (short, long)))
    run.record("raft_build", config_hash="x", inputs={}, outputs={"train_data": RAFT_TRAIN_DATA}, started=time.time())
    cfg = RagtuneConfig.model_validate({"run": {"name": "run"}, "data": {"docs": "d"}, "raft": {"max_length": 512}})
    assert bench._samples(cfg, run, AutoTokenizer.from_pretrained(tiny_llama_dir)) == [short]
