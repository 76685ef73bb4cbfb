import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.rundir import (
    RunDir,
    StageInputError,
    atomic_dir,
    atomic_write_text,
    format_status,
    hash_path,
)


def _finish(run: RunDir, stage: str, rel: str, text: str, config_hash: str = "h1", inputs=None) -> None:
    atomic_write_text(run.path(rel), text)
    run.record(stage, config_hash=config_hash, inputs=inputs or {}, outputs={"out": rel}, started=time.time())


def test_record_and_require(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "data", "data/corpus.jsonl", "x\n")
    rec = run.load_manifest()["data"]
    assert rec.status == "done" and rec.outputs["out"]["hash"] == hash_path(run.path("data/corpus.jsonl"))
    assert "torch" in rec.versions and rec.ended >= rec.started
    assert run.require("data", "out") == {"out": run.path("data/corpus.jsonl")}


def test_missing_stage_names_the_command(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    with pytest.raises(StageInputError, match=r"ragtune embed CONFIG"):
        run.require("embed", "model")


def test_stale_input_refused(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "data", "data/corpus.jsonl", "x\n")
    run.path("data/corpus.jsonl").write_text("edited by hand\n")
    with pytest.raises(StageInputError, match="stale"):
        run.require("data", "out")


def test_freshness_follows_config_inputs_and_outputs(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "embed", "embed/m.txt", "m", config_hash="h1", inputs={"data/out": "abc"})
    assert run.is_fresh("embed", "h1", {"data/out": "abc"})
    assert not run.is_fresh("embed", "h2", {"data/out": "abc"})
    assert not run.is_fresh("embed", "h1", {"data/out": "changed"})
    run.path("embed/m.txt").unlink()
    assert not run.is_fresh("embed", "h1", {"data/out": "abc"})


def test_atomic_dir_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "model"
    with atomic_dir(target) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "a").write_text("2")
        raise RuntimeError("crash while saving")
    assert (target / "a").read_text() == "1"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


CRASHING_WRITER = """
import os, sys
import pipeline.rundir as rd
real_fsync = os.fsync
def die(fd):
    real_fsync(fd)
    os._exit(9)  # the process dies after writing the temp file, before the rename
rd.os.fsync = die
rd.atomic_write_text(rd.Path(sys.argv[1]), "NEW CONTENT " * 1000)
"""


def test_crash_in_the_middle_of_a_write_keeps_previous_state(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "data", "data/corpus.jsonl", "old\n")
    before = run.manifest_path.read_text()
    for target in (run.manifest_path, run.path("data/corpus.jsonl")):
        proc = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(target)], cwd=Path(__file__).parents[2])
        assert proc.returncode == 9
    assert run.manifest_path.read_text() == before
    assert json.loads(before)["stages"]["data"]["status"] == "done"
    assert run.path("data/corpus.jsonl").read_text() == "old\n"
    assert run.require("data", "out")  # still intact and not stale


def test_only_main_process_writes_manifest(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "r")
    atomic_write_text(run.path("x"), "x")
    monkeypatch.setenv("RANK", "1")
    run.record("data", config_hash="h", inputs={}, outputs={"out": "x"}, started=0.0)
    assert not run.manifest_path.exists()
    monkeypatch.setenv("RANK", "0")
    run.record("data", config_hash="h", inputs={}, outputs={"out": "x"}, started=0.0)
    assert run.manifest_path.exists()


def test_status_table(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    assert "no stage has run yet" in format_status(run)
    _finish(run, "data", "data/corpus.jsonl", "x\n")
    table = format_status(run)
    assert table.splitlines()[0].split()[:3] == ["stage", "status", "config"]
    assert table.splitlines()[1].split()[:2] == ["data", "done"]


def test_mark_failed_keeps_outputs(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "data", "data/corpus.jsonl", "x\n")
    run.mark_failed("data", "boom")
    assert run.load_manifest()["data"].status == "failed"
    assert run.path("data/corpus.jsonl").exists()
    with pytest.raises(StageInputError, match="has not finished"):
        run.require("data", "out")
    assert os.path.exists(run.manifest_path)
