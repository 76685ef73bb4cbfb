"""What a newcomer sees when a command cannot start or is stopped: one line, no traceback, nothing half-made."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.upstream import run_dir_of

from ragtune.app.cli import main as cli

ROOT = Path(__file__).parents[2]


def _cli(*argv: str, script: str = "") -> subprocess.CompletedProcess:
    """``ragtune ARGV`` in a fresh interpreter (after ``script``), printing which heavy modules it imported."""
    code = f"""
import sys
{script}
from ragtune.app.cli import main
try:
    main({list(argv)!r})
finally:
    heavy = ("torch", "sentence_transformers", "transformers", "ragtune.stages.embed.train",
    "ragtune.stages.rerank.train")
    print("IMPORTED", sorted(m for m in heavy if m in sys.modules))
"""
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)


def _stderr_lines(proc: subprocess.CompletedProcess) -> list[str]:
    return [line for line in proc.stderr.splitlines() if line.strip()]


def test_a_missing_docs_folder_is_one_line_and_no_run_folder_is_made(tiny_config: Path, tmp_path: Path) -> None:
    missing = tmp_path / "my-docs"
    proc = _cli("data", str(tiny_config), f"data.docs={missing}")
    assert proc.returncode == 2
    assert _stderr_lines(proc) == [f"error: data.docs: folder not found: {missing}"]
    assert not run_dir_of(tiny_config).root.parent.exists()  # not even the runs root

    proc = _cli("run", str(tiny_config), f"data.questions={tmp_path / 'q.jsonl'}")
    assert _stderr_lines(proc) == [f"error: data.questions: file not found: {tmp_path / 'q.jsonl'}"]
    assert not run_dir_of(tiny_config).root.parent.exists()


@pytest.mark.parametrize(
    ("stage", "missing"), [("embed", "data"), ("rerank", "data, embed"), ("raft", "data, embed, rerank")]
)
def test_a_stage_run_out_of_order_says_what_to_run_before_importing_any_model_library(
    tiny_config: Path, stage: str, missing: str
) -> None:
    proc = _cli(stage, str(tiny_config))
    assert proc.returncode == 2
    [line] = _stderr_lines(proc)
    assert line.startswith(f"error: {stage} needs the {missing} stage")
    assert f"run `ragtune data {tiny_config}` first, or `ragtune run {tiny_config}`" in line
    assert "IMPORTED []" in proc.stdout
    assert not run_dir_of(tiny_config).root.exists()


def test_a_stage_whose_upstream_finished_passes_the_order_check(tiny_config: Path) -> None:
    cli(["data", str(tiny_config), "synth.enabled=false"])
    proc = _cli("rerank", str(tiny_config), "synth.enabled=false")
    assert proc.returncode == 2 and "needs the embed stage finished first" in proc.stderr


def test_ctrl_c_prints_one_line_saying_what_is_kept_and_how_to_resume(tiny_config: Path, tmp_path: Path) -> None:
    started = tmp_path / "started"
    # the data stage sleeps in place of its work, so the signal arrives inside a running stage
    script = f"""
import pathlib, time
import ragtune.stages.data.prepare as prepare
def sleeping_stage(cfg, run, force):
    pathlib.Path({str(started)!r}).touch()
    time.sleep(60)
prepare.main = sleeping_stage
"""
    code = f"{script}\nfrom ragtune.app.cli import main\nmain(['data', {str(tiny_config)!r}])\n"
    # A runner started in the background (nohup, `cmd &`) hands its children SIGINT as ignored: give the child
    # the default disposition a terminal's Ctrl-C meets, so the test does not depend on how it was launched.
    proc = subprocess.Popen(
        [sys.executable, "-c", code],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.time() + 120
    while not started.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert started.exists(), proc.stderr.read() if proc.poll() is not None else "stage never started"
    os.kill(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    run = run_dir_of(tiny_config)
    lines = [line for line in stderr.splitlines() if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert proc.returncode == 130
    assert lines == [
        f"interrupted: finished stages, their files and cached LLM calls in {run.root} are kept; "
        "rerun the same command to resume"
    ]
    manifest = json.loads(run.manifest_path.read_text())
    assert manifest["stages"]["data"]["failure"]["error"] == "interrupted (Ctrl-C)"
    assert not (run.root / ".lock").read_text()  # released
