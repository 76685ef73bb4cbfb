"""Faults around a run through the CLI: a failing endpoint fails the stage, a second process is refused, a failed
rerun keeps the last good record."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fakes.openai_server import FakeOpenAIServer, Fault
from fakes.upstream import run_dir_of

from ragtune.app.cli import main as cli
from ragtune.pipeline.llm import CACHE_FILE

KEY_ENV = "RAGTUNE_TEST_LLM_KEY"


def _openai(base_url: str) -> list[str]:
    return [
        "synth.llm.provider=openai",
        "synth.llm.model=fake",
        f"synth.llm.base_url={base_url}",
        f"synth.llm.api_key_env={KEY_ENV}",
        "synth.llm.max_retries=0",
        "synth.llm.concurrency=1",
    ]


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=300)


def test_a_failing_endpoint_fails_the_data_stage_and_a_rerun_reuses_finished_calls(
    tiny_config: Path, monkeypatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "k")
    run = run_dir_of(tiny_config)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    proc = _cli("ragtune.app.cli", "data", str(tiny_config), *_openai(closed))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert closed in proc.stderr and "last error: APIConnectionError" in proc.stderr
    assert run.load_manifest()["data"].status == "failed" and not run.path("data/queries.jsonl").exists()

    with FakeOpenAIServer(reply=lambda messages: "1. Which runbook covers the failover drill?") as server:
        server.add_faults(*[Fault(status=503)] * 3)  # the first three calls fail: more than 10 %
        with pytest.raises(SystemExit) as exit_info:
            cli(["data", str(tiny_config), *_openai(server.base_url)])
        assert exit_info.value.code == 2 and run.load_manifest()["data"].status == "failed"
        finished = len(run.path(f"data/cache/{CACHE_FILE}").read_text().splitlines())
        calls = server.requests
        cli(["data", str(tiny_config), *_openai(server.base_url)])
        assert server.requests - calls == 3  # only the failed calls are repeated
    rec = run.load_manifest()["data"]
    assert rec.status == "done" and rec.failure is None
    report = json.loads(run.path("data/report.json").read_text())["synth"]
    assert report["llm"]["cached"] == finished and report["llm"]["calls"] == 3 and report["llm_failed"] == 0


def test_a_second_process_on_the_same_run_fails_at_once_naming_the_holder(tiny_config: Path) -> None:
    run = run_dir_of(tiny_config)
    with run.lock():
        start = time.monotonic()
        proc = _cli("ragtune.app.cli", "data", str(tiny_config), "synth.enabled=false")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"in use by another ragtune process (PID {os.getpid()})" in proc.stderr
    assert time.monotonic() - start < 60 and not run.path("data/corpus.jsonl").exists()


def test_a_failed_rerun_keeps_the_last_good_record_usable_downstream(tiny_config: Path, tmp_path: Path) -> None:
    run = run_dir_of(tiny_config)
    cli(["data", str(tiny_config), "synth.enabled=false"])
    good = run.load_manifest()["data"]
    with pytest.raises(SystemExit):  # a typo'd prompt path fails inside the stage
        cli(["data", str(tiny_config), f"synth.prompt={tmp_path / 'no-such-prompt.txt'}"])
    rec = run.load_manifest()["data"]
    assert (rec.status, rec.ended, rec.outputs) == ("done", good.ended, good.outputs)
    assert "no-such-prompt.txt" in rec.failure["error"]
    assert run.require("data", "corpus", "queries")  # the stages after it can still read it

    # a failing `python -m ragtune.stages.rerank.mine` (the embed model changed since) leaves a finished rerank
    # entry alone
    run.path("embed").mkdir()
    run.path("embed/model.txt").write_text("weights")
    run.record("embed", config_hash="h", inputs={}, outputs={"model": "embed/model.txt"}, started=time.time())
    run.path("embed/model.txt").write_text("other weights")
    run.record("rerank", config_hash="h", inputs={}, outputs={"corpus": "data/corpus.jsonl"}, started=time.time())
    proc = _cli("ragtune.stages.rerank.mine", "--config", str(tiny_config))
    assert proc.returncode == 2 and "ragtune embed CONFIG" in proc.stderr
    rec = run.load_manifest()["rerank"]
    assert rec.status == "done" and "embed" in rec.failure["error"]
