"""Hostile input through the data stage and the `ragtune` CLI: every case ends in a clear error (exit 2, a message
naming the file, line or config key, no traceback) or in a skip counted with its reason in data/report.json.

The docs folder of tests/fakes/hostile.py (unreadable files and folders, a 21 MB single-line file, a 1,000-level
folder, symlink loops, symlinks leading outside data.docs, a PDF that makes pypdf raise, non-UTF-8 names, JSONL
records without the text field, a dot-folder in the docs path) goes through one data stage run; each bad config,
labelled file, run-directory state, full disk and endpoint goes through the CLI on its own; so do a full disk
while stage 1 saves its model, `ragtune status` while a stage runs and once it was killed, and `ragtune status`
piped to a reader that has gone.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from fakes.hostile import KEPT, OUTSIDE_TEXT, SKIPPED, build_hostile_docs, permission_denied, remove_tree
from fakes.upstream import run_dir_of

from ragtune.app.cli import main as cli
from ragtune.pipeline.entry import BROKEN_PIPE_EXIT
from ragtune.pipeline.rundir import LockHolder, RunDir

ROOT = Path(__file__).parents[2]
KEY_ENV = "RAGTUNE_TEST_LLM_KEY"
PASTED_KEY = "sk-proj-HOSTILE0123456789abcdef"


def run_cli(argv: list[str]) -> tuple[int, str]:
    """Run the CLI in-process: (exit code, stdout + stderr). Any exception but SystemExit is a traceback and fails."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            cli(argv)
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
    return code, out.getvalue()


# -- the docs folder, through one data stage run ------------------------------------------------------------


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("hostile")
    docs = build_hostile_docs(tmp)
    questions = tmp / "questions.jsonl"
    questions.write_text(
        json.dumps({"id": "h1", "question": "Where do orders go?", "doc_ids": ["good.md"], "answer": "the berth",
                    "evidence": ["a sentence that is not in good.md"]}) + "\n"
    )  # fmt: skip
    config = tmp / "hostile.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "run": {"name": "hostile", "root": str(tmp / "runs")},
                "data": {"docs": str(docs), "questions": str(questions)},
                "split": {"eval_docs_from": "all"},
                "synth": {"enabled": False},
            }
        )
    )
    try:
        with pytest.MonkeyPatch.context() as mp, permission_denied(mp):
            code, output = run_cli(["data", str(config)])
        run = run_dir_of(config)
        report = json.loads(run.path("data/report.json").read_text()) if code == 0 else {}
        yield code, output, report, run
    finally:
        remove_tree(tmp / ".config")  # pytest's own clean-up cannot delete 1,000 levels


def test_the_data_stage_finishes_over_the_hostile_docs_folder(hostile_run) -> None:
    code, output, _, run = hostile_run
    assert code == 0 and "Traceback" not in output, output[-2000:]
    assert run.load_manifest()["data"].status == "done"
    corpus = run.path("data/corpus.jsonl").read_text()
    assert OUTSIDE_TEXT not in corpus  # the symlink out of data.docs was not followed


@pytest.mark.parametrize("source", sorted(SKIPPED))
def test_every_bad_entry_is_listed_with_its_reason(hostile_run, source: str) -> None:
    skipped = {s["source"]: s["reason"] for s in hostile_run[2]["ingest"]["skipped"]}
    assert skipped[source].startswith(SKIPPED[source])


@pytest.mark.parametrize("doc_id", KEPT, ids=lambda d: d[-20:])
def test_every_usable_document_is_read(hostile_run, doc_id: str) -> None:
    assert doc_id in {row["doc_id"] for row in map(json.loads, hostile_run[3].path("data/corpus.jsonl").open())}


def test_evidence_not_found_is_a_counted_warning(hostile_run) -> None:
    assert [e["qid"] for e in hostile_run[2]["labelled"]["evidence_not_found"]] == ["h1"]


# -- one CLI run per bad config, labelled file, run-directory state or endpoint --------------------------------


@dataclass
class Case:
    """``argv(tmp, config)`` builds the inputs and the command; the run must exit ``code`` printing ``expect``."""

    name: str
    argv: Callable[[Path, Path], list[str]]
    expect: list[str]
    code: int = 2
    never: list[str] = field(default_factory=list)  # must not appear in the output
    check: Callable[[RunDir], None] | None = None  # extra checks on the run directory
    locked: bool = False  # this process holds the run directory while the command runs
    fault: Callable[[pytest.MonkeyPatch, Path, Path], None] | None = None  # (patch, tmp, config): set up after argv


def _file(tmp: Path, name: str, text: str | bytes) -> Path:
    path = tmp / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def _questions(tmp: Path, *lines: str) -> str:
    return f"data.questions={_file(tmp, 'bad/questions.jsonl', ''.join(line + chr(10) for line in lines))}"


GOOD_Q = json.dumps({"id": "x1", "question": "q?", "doc_ids": ["faq.jsonl#faq1"], "answer": "a"})


def _beir(tmp: Path, corpus: str, queries: str, qrels: str) -> str:
    _file(tmp, "beir/corpus.jsonl", corpus)
    _file(tmp, "beir/queries.jsonl", queries)
    _file(tmp, "beir/qrels/test.tsv", qrels)
    return f"data.beir={tmp / 'beir'}"


BEIR_CORPUS = '{"_id": "b1", "text": "beir document"}\n'
BEIR_QUERIES = '{"_id": "bq1", "text": "which beir document"}\n'


def _closed_port_url(userinfo: str = "") -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://{userinfo}127.0.0.1:{sock.getsockname()[1]}/v1"


def _openai(url: str) -> list[str]:
    return [
        "synth.llm.provider=openai",
        "synth.llm.model=fake",
        f"synth.llm.base_url={url}",
        f"synth.llm.api_key_env={KEY_ENV}",
        "synth.llm.max_retries=0",
    ]


def _corrupt_manifest(tmp: Path, config: Path, keep_previous: bool) -> list[str]:
    run = run_dir_of(config)
    assert run_cli(["data", str(config), "synth.enabled=false"])[0] == 0
    if keep_previous:
        assert run_cli(["data", str(config), "synth.enabled=false", "--force"])[0] == 0
    else:
        run.previous_manifest_path.unlink(missing_ok=True)
    run.manifest_path.write_text('{"stages": {"data": {"status": "do')  # truncated mid-write
    return ["data", str(config), "synth.enabled=false"]


def _after_data(config: Path, *argv: str) -> list[str]:
    """``argv``, once the data stage has finished (a later stage refuses to start before it)."""
    assert run_cli(["data", str(config), "synth.enabled=false"])[0] == 0
    return list(argv)


def _orphans(tmp: Path, config: Path) -> list[str]:
    run = run_dir_of(config)
    _file(run.root, "data/.corpus.jsonl.k2j3.tmp", "half-written")
    _file(run.root, "embed/.model.a1b2.tmp/weights", "half-written")
    return ["data", str(config), "synth.enabled=false"]


def _no_orphans(run: RunDir) -> None:
    assert not [p for p in run.root.rglob("*.tmp")]


def _redacted(run: RunDir) -> None:
    assert "PW-hostile" not in run.path("config.resolved.yaml").read_text()


def _config_unreadable(patch: pytest.MonkeyPatch, tmp: Path, config: Path) -> None:
    """Reading the config is refused (as chmod 000 would be; the tests run as root, where it is not)."""
    read_text = Path.read_text

    def denied(self: Path, *args, **kwargs) -> str:
        if self == config:
            raise PermissionError(13, "Permission denied", str(self))
        return read_text(self, *args, **kwargs)

    patch.setattr(Path, "read_text", denied)


def _disk_full_at(name: str) -> Callable[[pytest.MonkeyPatch, Path, Path], None]:
    """The disk fills up while a file whose path holds ``name`` is written (ENOSPC shows at the latest on sync)."""

    def fault(patch: pytest.MonkeyPatch, tmp: Path, config: Path) -> None:
        fsync = os.fsync

        def full(fd: int) -> None:
            if name in os.readlink(f"/proc/self/fd/{fd}"):
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            fsync(fd)

        patch.setattr(os, "fsync", full)

    return fault


def _rerun_data(tmp: Path, config: Path) -> list[str]:
    """A rerun of a finished data stage; the manifest it starts from is kept as ``manifest.before``."""
    argv = _after_data(config, "data", str(config), "synth.enabled=false", "--force")
    shutil.copy(run_dir_of(config).manifest_path, tmp / "manifest.before")
    return argv


def _last_good_data_kept(run: RunDir) -> None:
    rec = run.load_manifest()["data"]
    assert rec.status == "done" and rec.failure["error"].startswith("DiskFullError: no space left on device writing")
    assert run.require("data", "corpus", "queries", "report")  # the last good outputs, intact
    _no_orphans(run)


def _manifest_unchanged(run: RunDir) -> None:
    assert run.manifest_path.read_bytes() == (run.root.parents[1] / "manifest.before").read_bytes()
    _no_orphans(run)


def _nothing_recorded(run: RunDir) -> None:
    assert not run.manifest_path.exists()
    _no_orphans(run)


def _status_of_corrupt_run(tmp: Path, config: Path) -> list[str]:
    _corrupt_manifest(tmp, config, keep_previous=False)
    return ["status", str(run_dir_of(config).root)]


CASES = [
    Case("questions line not an object", lambda t, c: ["data", str(c), _questions(t, GOOD_Q, "[1, 2]")],
         ["questions.jsonl:2: expected a JSON object, got list"]),
    Case("questions line not JSON", lambda t, c: ["data", str(c), _questions(t, "{oops")],
         ["questions.jsonl:1: not valid JSON"]),
    Case("doc_ids not a list",
         lambda t, c: ["data", str(c), _questions(t, GOOD_Q.replace('["faq.jsonl#faq1"]', '"faq"'))],
         ["questions.jsonl:1: 'doc_ids' must be a list of non-empty strings"]),
    Case("numeric and string ids collide",
         lambda t, c: ["data", str(c), _questions(t, GOOD_Q.replace('"x1"', "7"), GOOD_Q.replace('"x1"', '"7"'))],
         ["questions.jsonl:2: duplicate question id '7'"]),
    Case("question cites an unknown document",
         lambda t, c: ["data", str(c), _questions(t, GOOD_Q.replace("faq.jsonl#faq1", "ghost.md"))],
         ["questions.jsonl:1: question 'x1' cites unknown document(s) ['ghost.md']"]),
    Case("BEIR corpus row without _id",
         lambda t, c: ["data", str(c), _beir(t, BEIR_CORPUS + '{"text": "no id"}\n', BEIR_QUERIES, "bq1\tb1\t1\n")],
         ["corpus.jsonl:2: missing '_id'"]),
    Case("BEIR query row without text",
         lambda t, c: ["data", str(c), _beir(t, BEIR_CORPUS, '{"_id": "bq1"}\n', "bq1\tb1\t1\n")],
         ["queries.jsonl:1: missing 'text'"]),
    Case("BEIR qrels score not an integer",
         lambda t, c: ["data", str(c), _beir(t, BEIR_CORPUS, BEIR_QUERIES, "qid\tdid\tscore\nbq1\tb1\t0.5\n")],
         ["test.tsv:2: score '0.5' is not an integer"]),
    Case("api_key_env holds a pasted key",
         lambda t, c: ["data", str(c), f"synth.llm.api_key_env={PASTED_KEY}"],
         ["synth.llm.api_key_env: ", "NAME of an environment variable"], never=[PASTED_KEY]),
    Case("run.name climbs out of the root", lambda t, c: ["data", str(c), "run.name=../escape"], ["run.name: "]),
    Case("run.name is an absolute path", lambda t, c: ["data", str(c), "run.name=/tmp/elsewhere"], ["run.name: "]),
    Case("run.name is empty", lambda t, c: ["data", str(c), "run.name=''"], ["run.name: "]),
    Case("trainer pushes to the hub", lambda t, c: _after_data(c, "embed", str(c), "embed.trainer.push_to_hub=true"),
         ["embed.trainer.push_to_hub: refused"]),
    Case("trainer carries a hub token", lambda t, c: _after_data(c, "embed", str(c), "embed.trainer.hub_token=hf_x"),
         ["embed.trainer.hub_token: refused"], never=["hf_x"]),
    Case("trainer reports to a tracker", lambda t, c: _after_data(c, "embed", str(c), "embed.trainer.report_to=wandb"),
         ["embed.trainer.report_to: 'wandb' sends run data off the machine"]),
    Case("misspelled config key", lambda t, c: ["data", str(c), "data.chunk_sise=3"],
         ["data.chunk_sise: unknown key"]),
    Case("config is not YAML", lambda t, c: ["data", str(_file(t, "broken.yaml", "run: [unclosed\n"))],
         ["is not valid YAML"]),
    Case("config file missing", lambda t, c: ["data", str(t / "nowhere.yaml")], ["config file not found"]),
    Case("config path is a folder", lambda t, c: ["data", str(t)], [" is a folder, not a YAML file"]),
    Case("config is not UTF-8", lambda t, c: ["data", str(_file(t, "latin1.yaml", b"run:\n  name: caf\xe9\n"))],
         ["latin1.yaml is not UTF-8 text (byte 0xe9 at offset 16); save it as UTF-8"]),
    Case("config unreadable", lambda t, c: ["data", str(c)], ["tiny.yaml cannot be read (Permission denied)"],
         fault=_config_unreadable),
    Case("config holds a section twice",
         lambda t, c: ["data", str(_file(t, "twice.yaml", c.read_text() + "embed:\n  batch_size: 64\n"))],
         ["twice.yaml: key 'embed' appears twice, at lines ", "(the second would silently replace the first)"]),
    Case("config holds a key twice inside a section",
         lambda t, c: ["data", str(_file(t, "nested.yaml", "run:\n  name: a\n  seed: 1\n  name: b\n"))],
         ["nested.yaml: key 'run.name' appears twice, at lines 2 and 4"]),
    Case("docs folder missing", lambda t, c: ["data", str(c), f"data.docs={t / 'no-docs'}"],
         ["data.docs: folder not found: "]),
    Case("questions file missing", lambda t, c: ["data", str(c), f"data.questions={t / 'no.jsonl'}"],
         ["data.questions: ", "not found: "]),
    Case("endpoint unreachable", lambda t, c: ["data", str(c), *_openai(_closed_port_url())],
         ["calls failed", "last error: APIConnectionError"]),
    Case("credentials in base_url", lambda t, c: ["data", str(c), *_openai(_closed_port_url("bob:PW-hostile@"))],
         ["http://***@127.0.0.1"], never=["PW-hostile"], check=_redacted),
    Case("manifest truncated, previous version kept", lambda t, c: _corrupt_manifest(t, c, keep_previous=True),
         ["recovered from the previous version"], code=0),
    Case("manifest truncated, no previous version", lambda t, c: _corrupt_manifest(t, c, keep_previous=False),
         ["manifest.json is unreadable", "move it aside"]),
    Case("a second process on the run", lambda t, c: ["data", str(c), "synth.enabled=false"],
         [f"in use by another ragtune process (PID {os.getpid()})"], locked=True),
    Case("temp files left by a killed write", _orphans, ["left by an interrupted run"], code=0, check=_no_orphans),
    Case("disk full writing the corpus", _rerun_data, ["error: no space left on device writing ",
         "/data/corpus.jsonl (", " needed, ", " free there): free some space and rerun"],
         fault=_disk_full_at("corpus.jsonl"), check=_last_good_data_kept),
    Case("disk full writing the data report", _rerun_data, ["no space left on device writing ", "/data/report.json ("],
         fault=_disk_full_at("report.json"), check=_last_good_data_kept),
    Case("disk full writing the manifest", _rerun_data,
         ["no space left on device writing ", "manifest.prev.json (", "failure is not recorded in the manifest"],
         fault=_disk_full_at("manifest"), check=_manifest_unchanged),
    Case("disk full before the first stage", lambda t, c: ["data", str(c), "synth.enabled=false"],
         ["no space left on device writing ", "config.resolved.yaml ("],
         fault=_disk_full_at("config.resolved"), check=_nothing_recorded),
    Case("status of a folder that is not a run", lambda t, c: ["status", str(t)],
         ["is not a ragtune run (it holds no config.resolved.yaml or manifest.json)"]),
    Case("status of a missing run", lambda t, c: ["status", str(t / "runs" / "typo")], ["no such run directory"]),
    Case("status of a run with a corrupt manifest", _status_of_corrupt_run, ["manifest.json is unreadable"]),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_cli_case_ends_in_a_clear_error_or_a_counted_recovery(
    case: Case, tiny_config: Path, tmp_path: Path, caplog, monkeypatch
) -> None:
    monkeypatch.setenv(KEY_ENV, "k")
    caplog.set_level("WARNING")
    argv = case.argv(tmp_path, tiny_config)
    if case.fault:
        case.fault(monkeypatch, tmp_path, tiny_config)
    with run_dir_of(tiny_config).lock() if case.locked else contextlib.nullcontext():
        code, output = run_cli(argv)
    output += caplog.text
    assert code == case.code, output[-2000:]
    assert "Traceback" not in output
    for text in case.expect:
        assert text in output, output[-2000:]
    for text in case.never:
        assert text not in output
    if case.check:
        case.check(run_dir_of(tiny_config))


def test_a_full_disk_while_saving_the_stage_1_model_is_one_line_and_keeps_the_manifest(
    tiny_config: Path, tiny_bert_dir: Path, monkeypatch
) -> None:
    from safetensors import SafetensorError
    from sentence_transformers import SentenceTransformer

    def save_on_a_full_disk(self, path: str, *args, **kwargs) -> None:  # what safetensors raises on ENOSPC
        (Path(path) / "model.safetensors").write_bytes(b"0" * 4096)
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")

    run = run_dir_of(tiny_config)
    assert run_cli(["data", str(tiny_config), "synth.enabled=false"])[0] == 0
    data = run.load_manifest()["data"]
    monkeypatch.setattr(SentenceTransformer, "save", save_on_a_full_disk)
    code, output = run_cli(["embed", str(tiny_config), f"embed.base_model={tiny_bert_dir}", "embed.max_steps=1"])
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert code == 2 and "Traceback" not in output, output[-2000:]
    assert len(errors) == 1 and re.fullmatch(
        rf"error: no space left on device writing {re.escape(str(run.path('embed/model')))} \(more than 4.0 KiB "
        r"needed, [\d.]+ [KMGT]?i?B free there\): free some space and rerun the same command; finished stages and "
        r"their files are kept",
        errors[0],
    ), errors  # the free space is the disk's own, which other processes change
    stages = run.load_manifest()
    assert stages["data"] == data and stages["embed"].status == "failed"
    assert "DiskFullError" in stages["embed"].failure["error"]
    assert not run.path("embed/model").exists() and not list(run.root.rglob("*.tmp"))


# A stage that runs until it is killed: open_run and call_stage as `ragtune embed` uses them.
STAGE_UNTIL_KILLED = """
import sys, time
from ragtune.pipeline.entry import call_stage, open_run
with open_run(sys.argv[1], ["synth.enabled=false"], "embed") as (cfg, run):
    call_stage("embed", lambda cfg, run, force: (print("started", flush=True), time.sleep(300)), cfg, run, False)
"""


def _stage_row(output: str, stage: str) -> str:
    return next(line for line in output.splitlines() if line.split()[:1] == [stage])


def test_status_says_which_stage_runs_and_which_was_killed(tiny_config: Path) -> None:
    run = run_dir_of(tiny_config)
    assert run_cli(["data", str(tiny_config), "synth.enabled=false"])[0] == 0
    stage = subprocess.Popen(
        [sys.executable, "-c", STAGE_UNTIL_KILLED, str(tiny_config)], cwd=ROOT, stdout=subprocess.PIPE, text=True
    )
    try:
        assert stage.stdout.readline() == "started\n"
        code, output = run_cli(["status", str(run.root)])
        assert code == 0 and re.fullmatch(
            rf"embed +running +\d+s +PID {stage.pid} since [-\d]+ [:\d]+", _stage_row(output, "embed")
        )
    finally:
        stage.kill()  # kill -9: no clean-up runs
        stage.wait()
    code, output = run_cli(["status", str(run.root)])
    assert code == 0 and _stage_row(output, "data").split()[:2] == ["data", "done"]
    assert re.fullmatch(
        rf"embed +interrupted +started [-\d]+ [:\d]+ by PID {stage.pid}, which is gone \(killed\?\): rerun it",
        _stage_row(output, "embed"),
    )
    assert run.lock_holder() == LockHolder(stage.pid, alive=False)  # the stale lock names it


def test_status_piped_to_a_reader_that_has_gone_is_quiet(tiny_config: Path) -> None:
    assert run_cli(["data", str(tiny_config), "synth.enabled=false"])[0] == 0
    status = subprocess.Popen(
        [sys.executable, "-m", "ragtune.app.cli", "status", str(run_dir_of(tiny_config).root)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    status.stdout.close()  # `| head -1` that has read its line and gone before ragtune wrote the rest
    assert status.stderr.read() == "" and status.wait() == BROKEN_PIPE_EXIT
