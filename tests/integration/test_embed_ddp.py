"""The embed stage under 2-process DDP on CPU (`accelerate launch --multi_gpu --num_processes 2`)."""

import json
import math
from pathlib import Path

import pytest
from fakes.upstream import launch_ddp, run_dir_of

from ragtune.app.cli import main as cli

pytestmark = [pytest.mark.ddp, pytest.mark.slow]


def test_two_process_ddp_trains_one_model_and_writes_the_manifest_once(tiny_config: Path, tiny_bert_dir: Path) -> None:
    cli(["data", str(tiny_config)])
    run = run_dir_of(tiny_config)
    data_manifest = run.manifest_path.read_text()

    # The timeout keeps this test under ~90 s even when a rank hangs on a collective.
    # No inverse-cloze pairs: on 8 tiny chunks they share positives, so batches come out short and DDP's forced
    # drop_last would drop them, which the step count below does not model.
    overrides = [f"embed.base_model={tiny_bert_dir}", "embed.epochs=2", "embed.pseudo_queries=0"]
    proc = launch_ddp("ragtune.stages.embed.train", tiny_config, overrides, 90)
    assert proc.returncode == 0, proc.stderr[-3000:]

    stages = json.loads(run.manifest_path.read_text())["stages"]
    assert stages["data"] == json.loads(data_manifest)["stages"]["data"]
    assert stages["embed"]["status"] == "done"
    report = json.loads(run.path("embed/metrics.json").read_text())
    # Two ranks split every batch sampler's batches between them: half the steps of one process.
    assert report["steps"] == 2 * math.ceil(math.ceil(report["train_pairs"] / 4) / 2)
    # One model, one summary line (only rank 0 writes and logs), no temp folder left behind.
    assert sorted(p.name for p in run.path("embed").iterdir()) == ["metrics.json", "model"]
    assert (proc.stdout + proc.stderr).count("embed: held-out nDCG@10") == 1
