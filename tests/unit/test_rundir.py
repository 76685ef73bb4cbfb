import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors import SafetensorError

from ragtune.pipeline.config import load_config
from ragtune.pipeline.rundir import (
    STARTED_FILE,
    DiskFullError,
    LockHolder,
    ManifestError,
    RunDir,
    RunLockedError,
    StageInputError,
    atomic_dir,
    atomic_write_text,
    format_status,
    hash_path,
    is_disk_full,
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
import ragtune.pipeline.rundir as rd
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


def test_status_shows_each_stage_time_and_its_telling_metrics_in_full(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    metrics = {f"before_hit@{k}": 1.0 for k in (1, 3, 5, 10)} | {"before_ndcg@10": 0.46512, "after_ndcg@10": 0.51749}
    atomic_write_text(run.path("embed/metrics.json"), "{}")
    run.record("embed", config_hash="h", inputs={}, outputs={"m": "embed/metrics.json"}, metrics=metrics, started=0)
    stages = run.load_manifest()
    stages["embed"].started, stages["embed"].ended = 100.0, 176.4
    run._save_manifest(stages)
    header, row = format_status(run).splitlines()
    assert header.split()[:4] == ["stage", "status", "config", "time"]
    assert row.split()[3:5] == ["1m", "16s"]
    assert row.endswith("before_ndcg@10=0.465, after_ndcg@10=0.517") and "hit@1" not in row


def test_a_failed_rerun_keeps_the_last_good_record_and_records_the_failure_beside_it(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "data", "data/corpus.jsonl", "x\n")
    run.mark_failed("data", "ConfigError: embed.trainer.learning_rat: not a field")
    rec = run.load_manifest()["data"]
    assert rec.status == "done" and "learning_rat" in rec.failure["error"]
    assert run.require("data", "out") == {"out": run.path("data/corpus.jsonl")}  # still usable downstream
    assert "done (rerun failed)" in format_status(run) and "learning_rat" in format_status(run)
    _finish(run, "data", "data/corpus.jsonl", "y\n")
    assert run.load_manifest()["data"].failure is None  # cleared when the stage next finishes
    # a stage that never finished is recorded as failed
    run.mark_failed("embed", "boom")
    assert run.load_manifest()["embed"].status == "failed"
    with pytest.raises(StageInputError, match="has not finished"):
        run.require("embed", "model")


def test_a_corrupt_manifest_is_recovered_from_the_previous_version(tmp_path: Path, caplog) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "data", "data/corpus.jsonl", "x\n")
    _finish(run, "embed", "embed/model.txt", "m\n")
    assert set(json.loads(run.previous_manifest_path.read_text())["stages"]) == {"data"}
    run.manifest_path.write_text(run.manifest_path.read_text()[:40])  # truncated
    assert set(run.load_manifest()) == {"data"}
    assert str(run.manifest_path) in caplog.text and "recovered from the previous version" in caplog.text
    assert set(json.loads(run.manifest_path.read_text())["stages"]) == {"data"}  # rewritten from it


@pytest.mark.parametrize("garbage", [b"{not json", b'{"stages": [1, 2]}', b"\xff\xfe", b"[]"])
def test_an_unrecoverable_manifest_is_a_clear_error_naming_it(tmp_path: Path, garbage: bytes) -> None:
    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    run.manifest_path.write_bytes(garbage)
    with pytest.raises(ManifestError) as err:
        run.load_manifest()
    assert str(run.manifest_path) in str(err.value) and "no previous version" in str(err.value)
    assert "move it aside" in str(err.value)


def test_the_run_lock_refuses_a_second_holder_naming_its_pid(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    with run.lock(), pytest.raises(RunLockedError, match=rf"PID {os.getpid()}\b"), RunDir(tmp_path / "r").lock():
        pass
    with run.lock():  # released on exit
        pass
    assert (run.root / ".lock").read_text() == ""


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path: Path, caplog) -> None:
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    (run.root / ".lock").write_text(dead.stdout.strip())  # a killed run never emptied it
    with run.lock():
        assert (run.root / ".lock").read_text() == str(os.getpid())
    assert f"stale lock of PID {dead.stdout.strip()}" in caplog.text


def test_taking_the_lock_cleans_what_a_killed_write_left(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    atomic_write_text(run.path("data/corpus.jsonl"), "x\n")
    atomic_write_text(run.path("data/.corpus.jsonl.k2j3.tmp"), "half")
    run.path("embed/.model.a1b2.tmp").mkdir(parents=True)
    atomic_write_text(run.path("embed/.model.old/weights.bin"), "last good")  # killed between the two renames
    atomic_write_text(run.path("rerank/.model.old/w"), "old")
    atomic_write_text(run.path("rerank/model/w"), "new")
    with run.lock():
        pass
    assert run.path("embed/model/weights.bin").read_text() == "last good"
    assert run.path("rerank/model/w").read_text() == "new"
    left = sorted(p.relative_to(run.root).as_posix() for p in run.root.rglob("*") if p.is_file())
    assert left == [".lock", "data/corpus.jsonl", "embed/model/weights.bin", "rerank/model/w"]


@pytest.mark.parametrize(
    ("umask", "file_mode", "dir_mode"), [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700)], ids=["umask022", "umask077"]
)
def test_atomic_writes_get_the_mode_the_umask_gives_ordinary_files(
    tmp_path: Path, umask: int, file_mode: int, dir_mode: int
) -> None:
    # tempfile makes 0600 files and 0700 folders; a run's files must be as readable as open() would make them
    script = f"""
import os, sys
os.umask({umask})
from pathlib import Path
from ragtune.pipeline.rundir import atomic_dir, atomic_write_text
root = Path(sys.argv[1])
atomic_write_text(root / "data" / "report.json", "{{}}")
with atomic_dir(root / "embed" / "model") as tmp:
    (tmp / "config.json").write_text("{{}}")
"""
    subprocess.run([sys.executable, "-c", script, str(tmp_path)], check=True)
    assert (tmp_path / "data" / "report.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "embed" / "model").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "embed" / "model" / "config.json").stat().st_mode & 0o777 == file_mode


def test_every_stage_hash_covers_the_run_section_its_sections_and_its_inputs(tmp_path: Path) -> None:
    from ragtune.eval.harness import CONFIG_SECTIONS as EVAL_SECTIONS
    from ragtune.stages.data.prepare import CONFIG_SECTIONS as DATA_SECTIONS
    from ragtune.stages.raft.build import CONFIG_SECTIONS as BUILD_SECTIONS

    run = RunDir(tmp_path / "run")
    base = load_config(Path("configs/tiny.yaml"))
    reseeded = load_config(Path("configs/tiny.yaml"), ["run.seed=7"])
    stages = [DATA_SECTIONS, ("embed",), ("rerank",), BUILD_SECTIONS, ("raft",), EVAL_SECTIONS]
    for sections in stages:
        assert run.freshness(reseeded, sections)[0] != run.freshness(base, sections)[0], sections
    # a section the stage does not use leaves its hash alone; one of its inputs changing does not
    retrained = load_config(Path("configs/tiny.yaml"), ["raft.learning_rate=0.001"])
    assert run.freshness(retrained, ("embed",)) == run.freshness(base, ("embed",))
    with_docs, inputs = run.freshness(base, ("embed",), inputs={"file/docs": "a"})
    assert inputs == {"file/docs": "a"}
    assert with_docs != run.freshness(base, ("embed",))[0]
    assert with_docs != run.freshness(base, ("embed",), inputs={"file/docs": "b"})[0]


def test_freshness_reads_upstream_hashes_from_the_manifest(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "run")
    (run.root / "data").mkdir(parents=True)
    (run.root / "data" / "queries.jsonl").write_text("{}\n")
    run.record("data", config_hash="h", inputs={}, outputs={"queries": "data/queries.jsonl"}, started=0.0)
    cfg = load_config(Path("configs/tiny.yaml"))
    config_hash, inputs = run.freshness(cfg, ("embed",), {"data": ("queries",)})
    assert inputs == {"data/queries": hash_path(run.path("data/queries.jsonl"))}
    (run.root / "data" / "queries.jsonl").write_text('{"changed": 1}\n')
    run.record("data", config_hash="h", inputs={}, outputs={"queries": "data/queries.jsonl"}, started=0.0)
    assert run.freshness(cfg, ("embed",), {"data": ("queries",)})[0] != config_hash


def _no_space(*args) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a write on a full disk raises it: no file name


def test_a_full_disk_while_writing_a_file_names_it_and_the_space_needed_and_keeps_the_old_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "data" / "corpus.jsonl"
    atomic_write_text(target, "last good\n")
    monkeypatch.setattr(os, "fsync", _no_space)
    with pytest.raises(DiskFullError) as err:
        atomic_write_text(target, "x" * 3000)
    assert re.fullmatch(
        rf"no space left on device writing {re.escape(str(target))} \(2.9 KiB needed, [\d.]+ [KMGT]?i?B free there\): "
        "free some space and rerun the same command; finished stages and their files are kept",
        str(err.value),
    )  # the free space is the disk's own, which other processes change
    assert target.read_text() == "last good\n" and [p.name for p in target.parent.iterdir()] == ["corpus.jsonl"]


def test_a_full_disk_while_saving_a_model_names_its_folder_and_keeps_the_last_one(tmp_path: Path) -> None:
    target = tmp_path / "embed" / "model"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("last good")
    full = pytest.raises(DiskFullError, match=rf"writing {target} \(more than 2.0 KiB needed, .* free there\)")
    with full, atomic_dir(target) as tmp:
        (tmp / "config.json").write_bytes(b"0" * 2048)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert (target / "weights").read_text() == "last good"
    assert [p.name for p in target.parent.iterdir()] == ["model"]


def test_torch_s_wordless_write_error_counts_as_a_full_disk_only_when_the_disk_is_nearly_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch_error = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert not is_disk_full(torch_error, tmp_path)  # plenty of space: some other fault, shown as it is
    monkeypatch.setattr(shutil, "disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 4096))
    assert is_disk_full(torch_error, tmp_path)
    assert not is_disk_full(StageInputError("run `ragtune data CONFIG` first"), tmp_path)  # ragtune's own
    assert not is_disk_full(ValueError("bad line"), tmp_path)
    with pytest.raises(DiskFullError, match=r"\(4.0 KiB free there\)"), atomic_dir(tmp_path / "m"):
        raise torch_error


def test_a_full_disk_while_taking_the_lock_names_the_lock_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = RunDir(tmp_path / "r")
    monkeypatch.setattr(os, "write", _no_space)
    with pytest.raises(DiskFullError, match=rf"writing {run.root / '.lock'} "), run.lock():
        pass


def _dead_pid() -> int:
    return int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True).stdout)


def test_a_stage_whose_process_is_gone_before_it_ended_shows_as_interrupted_until_it_ends(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    _finish(run, "data", "data/corpus.jsonl", "x\n")
    dead = _dead_pid()
    atomic_write_text(run.path(STARTED_FILE), json.dumps({"embed": {"pid": dead, "at": time.time()}}))
    (run.root / ".lock").write_text(str(dead))  # killed while it held the run: the lock is stale
    assert run.lock_holder() == LockHolder(dead, alive=False)
    rows = format_status(run).splitlines()
    assert rows[2].split()[:2] == ["embed", "interrupted"]
    assert rows[2].endswith(f"by PID {dead}, which is gone (killed?): rerun it") and len(rows) == 3

    with run.lock():  # the rerun takes the stale lock over and ends: its record is newer than the start
        _finish(run, "embed", "embed/metrics.json", "{}")
    assert [row.split()[:2] for row in format_status(run).splitlines()[1:]] == [["data", "done"], ["embed", "done"]]


def test_a_stage_marks_itself_started_until_it_ends_however_it_ends(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.mark_started("embed")
    run.mark_started("rerank")
    assert set(run.started_stages()) == {"embed", "rerank"} and run.started_stages()["embed"].pid == os.getpid()
    run.clear_started("embed")
    assert set(run.started_stages()) == {"rerank"}
    run.clear_started("rerank")
    assert not run.path(STARTED_FILE).exists()


def test_a_process_killed_while_holding_the_run_outside_any_stage_is_a_note(tmp_path: Path) -> None:
    run = RunDir(tmp_path / "r")
    run.root.mkdir()
    dead = _dead_pid()
    (run.root / ".lock").write_text(str(dead))
    assert format_status(run).splitlines() == [
        f"{run.root}: no stage has run yet",
        f"PID {dead} was killed while it held the run, outside any stage; the next command takes over",
    ]
    with run.lock():
        assert run.lock_holder() == LockHolder(os.getpid(), alive=True)
        assert format_status(run) == f"{run.root}: no stage has run yet"  # this process's own lock is no news
    assert run.lock_holder() is None


def test_only_a_run_directory_is_a_run(tmp_path: Path) -> None:
    with pytest.raises(StageInputError, match=rf"^{tmp_path / 'nowhere'}: no such run directory$"):
        RunDir(tmp_path / "nowhere").check_is_run()
    with pytest.raises(StageInputError, match=r"is not a ragtune run \(it holds no config.resolved.yaml or manifest"):
        RunDir(tmp_path).check_is_run()
    _finish(RunDir(tmp_path / "r"), "data", "data/corpus.jsonl", "x\n")
    RunDir(tmp_path / "r").check_is_run()
