"""Run directory and manifest: where every artifact lives, and what is finished and fresh.

Every artifact has a named path relative to the run directory (``DATA_CORPUS``, ``EMBED_MODEL``, ... below);
no other module types one. A stage asks :meth:`RunDir.require` for its inputs (refused with a message naming
the stage to run when missing or stale) and reads them only at the paths it returns, builds its config and
input hashes with :meth:`RunDir.freshness` and checks :meth:`RunDir.is_fresh` to skip finished work, writes
its files with :func:`atomic_write_text` / :func:`atomic_dir` (temp name, then rename), and records itself
last with :meth:`RunDir.record`. A crash therefore never leaves a half-written artifact that looks finished.

Only the main process writes (see :func:`is_main_process`); other ranks read. One process at a time
works in a run directory (:meth:`RunDir.lock`); taking the lock also cleans temporary files and folders
left by a killed write. Every manifest write keeps the previous version beside it, and a manifest that
cannot be read is recovered from that version.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ragtune.pipeline.config import RagtuneConfig

logger = logging.getLogger(__name__)

STAGE_ORDER = ("data", "embed", "rerank", "gpl", "raft_build", "raft", "eval")
# raft_build is recorded by `ragtune raft` (build, then train) and by `python -m ragtune.stages.raft.build`.
STAGE_COMMANDS = {name: f"ragtune {name.removesuffix('_build')} CONFIG" for name in STAGE_ORDER}
STAGE_COMMANDS["gpl"] = "ragtune gpl CONFIG gpl.enabled=true"  # optional: off by default
TRACKED_PACKAGES = (
    "ragtune",
    "torch",
    "transformers",
    "sentence-transformers",
    "peft",
    "trl",
    "accelerate",
    "datasets",
    "llama-index-core",
)

# Where every artifact lives, relative to the run directory: the one place these paths are written down.
# A stage records its outputs under these names and writes its scratch files (caches, checkpoints) to them;
# a stage reads another stage's outputs only through the paths :meth:`RunDir.require` returns.
MANIFEST = "manifest.json"  # every stage's record: config hash, inputs, outputs, metrics
CONFIG_RESOLVED = "config.resolved.yaml"  # the validated config, overrides applied
EMBEDDING_CACHE = "cache/embeddings"  # corpus and query embeddings by model and content (ragtune.pipeline.retrieval)
SCORE_CACHE = "cache/rerank-scores"  # query-likelihood scores by reranker and (query, passage) content
DATA_CORPUS = "data/corpus.jsonl"
DATA_QUERIES = "data/queries.jsonl"
DATA_REPORT = "data/report.json"
DATA_LLM_CACHE = "data/cache"  # the query generator's per-item LLM cache
EMBED_MODEL = "embed/model"
EMBED_METRICS = "embed/metrics.json"
EMBED_CHECKPOINTS = "embed/checkpoints"
RERANK_NEGATIVES = "rerank/negatives"  # negatives.jsonl, report.json, histogram and audit
RERANK_MODEL = "rerank/model"
RERANK_UNTRAINED = "rerank/untrained"  # the untrained reranker of rerank.kind, with its own dev-chosen weight
RERANK_METRICS = "rerank/metrics.json"
RERANK_CHECKPOINTS = "rerank/checkpoints"
RERANK_LEARNING_CURVE = "rerank/learning_curve.png"
GPL_TRAIN_DATA = "gpl/train.jsonl"  # teacher-labelled (query, positive, negative, margin) triples
GPL_MODEL = "gpl/model"
GPL_METRICS = "gpl/metrics.json"
GPL_CHECKPOINTS = "gpl/checkpoints"
GPL_RESUME = "gpl/checkpoints/ragtune_resume.json"  # the config hash and teacher labels the checkpoints belong to
RAFT_TRAIN_DATA = "raft/train.jsonl"
RAFT_REPORT = "raft/report.json"
RAFT_DEV_DATA = "raft/dev.jsonl"
RAFT_TEACHER_CACHE = "raft/cache"  # the RAFT teacher's per-item LLM cache
RAFT_CHECKPOINTS = "raft/checkpoints"
RAFT_ADAPTER = "raft/adapter"
RAFT_MERGED = "raft/merged"
RAFT_COMPARE = "raft/compare.json"  # scripts/raft_compare.py
RAFT_BENCH = "raft/bench"  # scripts/bench_raft.py's trainer output
RAFT_CURVE = "raft/curve.jsonl"  # scripts/raft_curve.py's dev figures per checkpoint
INDEX_DIR = "index"  # the persisted LlamaIndex storage of the tuned stack
EVAL_REPORT = "eval/report.md"
EVAL_JSON = "eval/report.json"
EVAL_PER_QUERY = "eval/per_query.csv"
EVAL_METRICS_CHART = "eval/metrics.png"
EVAL_DELTAS_CHART = "eval/deltas.png"
EVAL_HTML = "eval/report.html"
EVAL_JUDGE_CACHE = "eval/cache"  # the judge's per-item LLM cache

LOCK_FILE = ".lock"
STARTED_FILE = ".started.json"  # the stages started and not yet ended: stage -> the PID and time it started
# What `ragtune status` shows per stage: the few metrics that say whether it worked.
HEADLINE_METRICS = {
    "data": ("documents", "chunks", "human_train", "human_eval", "synthetic_train", "synthetic_eval"),
    "embed": ("before_ndcg@10", "after_ndcg@10", "train_pairs", "steps"),
    "rerank": ("ndcg@10_retriever", "ndcg@10_reranked", "fusion_weight", "train_steps"),
    "gpl": ("dev_ndcg@10_embed", "dev_ndcg@10_gpl", "dev_ndcg@10_gpl_hybrid", "train_triples", "steps"),
    "raft_build": ("samples", "with_oracle", "without_oracle"),
    "raft": ("samples", "steps", "train_loss_first", "train_loss_last"),
    "eval": ("queries", "rag_only.ndcg@10", "embed.ndcg@10", "embed_rerank.ndcg@10", "full.ndcg@10"),
}


class StageInputError(RuntimeError):
    """A stage's input is missing or stale; the message names the stage to run first."""


class RunLockedError(RuntimeError):
    """Another process holds the run directory; the message names its PID."""


class ManifestError(RuntimeError):
    """The manifest and its previous version are both unreadable; the message names the file and what to do."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)
NEARLY_FULL_BYTES = 1 << 20  # a RuntimeError while the disk has less than this free is taken for a full disk


def format_bytes(size: int) -> str:
    """A size in bytes as people read it (binary units).

    Example:
        >>> format_bytes(0), format_bytes(1536), format_bytes(5 * 2**30)
        ('0 B', '1.5 KiB', '5.0 GiB')
    """
    value, unit = float(size), "B"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            break
        value /= 1024
    return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"


def free_bytes(path: Path) -> int | None:
    """Free space, for an ordinary user, on the disk of ``path`` or of its nearest existing parent (None: unknown)."""
    folder = next((p for p in (path, *path.parents) if p.exists()), None)
    try:
        return shutil.disk_usage(folder).free if folder is not None else None
    except OSError:
        return None


def is_disk_full(error: BaseException, path: Path) -> bool:
    """Whether ``error``, raised while writing at ``path``, comes from a full disk (or a full quota).

    Python raises ``OSError`` ENOSPC/EDQUOT; safetensors raises its own error, which quotes the OS's words
    (``No space left on device (os error 28)``); torch's writer raises a plain ``RuntimeError`` that says only
    ``file write failed`` or ``unexpected pos``, so a plain ``RuntimeError`` (not one of ragtune's subclasses)
    while the disk of ``path`` holds less than 1 MiB free counts too. A :class:`DiskFullError` is already
    reported, and not an error to convert.
    """
    if isinstance(error, DiskFullError) or not isinstance(error, Exception):
        return False
    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in DISK_FULL_ERRNOS:
            return True
        if any(os.strerror(number) in str(cause) for number in DISK_FULL_ERRNOS):
            return True
        cause = cause.__cause__ or cause.__context__
    free = free_bytes(path) if type(error) is RuntimeError else None
    return free is not None and free < NEARLY_FULL_BYTES


class DiskFullError(RuntimeError):
    """The disk filled up while writing ``path``; the message names it, the space free there and, when known,
    the space the write needed (``at_least``: only what was written before the disk filled)."""

    def __init__(self, path: Path, needed: int | None = None, *, at_least: bool = False) -> None:
        free = free_bytes(path)
        sizes = [f"{'more than ' if at_least else ''}{format_bytes(needed)} needed"] if needed else []
        sizes.append(f"{format_bytes(free)} free there" if free is not None else "free space unknown")
        super().__init__(
            f"no space left on device writing {path} ({', '.join(sizes)}): free some space and rerun the same "
            "command; finished stages and their files are kept"
        )
        self.path = path


@contextlib.contextmanager
def reporting_full_disk(path: Path, size: int | None = None) -> Iterator[None]:
    """Turn a full disk while writing at ``path`` into a :class:`DiskFullError` naming it (or the file the OS named).

    Args:
        path: the file or folder being written.
        size: the bytes the write needs, when known.
    """
    try:
        yield
    except Exception as e:
        if not is_disk_full(e, path):
            raise
        named = Path(os.fsdecode(e.filename)) if isinstance(e, OSError) and e.filename else path
        raise DiskFullError(named, size) from e


def _size_written(path: Path | None) -> int:
    """Bytes in a file, or in the files of a folder (0 when it is gone)."""
    if path is None or not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def input_key(stage: str, output: str) -> str:
    """The key under which a downstream record's ``inputs`` hold an upstream output's hash.

    Example:
        >>> input_key("embed", "model")
        'embed/model'
    """
    return f"{stage}/{output}"


def is_main_process() -> bool:
    """True on rank 0 (or when not distributed): only it writes files and the manifest."""
    return int(os.environ.get("RANK", "0")) == 0 and int(os.environ.get("LOCAL_RANK", "0")) == 0


def _read_umask() -> int:
    mask = os.umask(0o022)  # the only portable way to read it is to set it; put it straight back
    os.umask(mask)
    return mask


UMASK = _read_umask()  # read once at import, before any thread could create files meanwhile


def set_default_mode(path: str | Path) -> None:
    """Give a file or folder made by ``tempfile`` (0600 / 0700) the mode ``open``/``mkdir`` would give it.

    That is 0666 / 0777 less the process umask (0644 / 0755 with the usual umask 022), so run files stay
    readable by the other users and tools that ordinary files are readable by.
    """
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~UMASK)


@contextlib.contextmanager
def atomic_file(path: Path, size: int | None = None) -> Iterator[Path]:
    """Yield a temporary file beside ``path`` to write; on success it replaces ``path``, on error it is removed.

    The one temp-then-rename of the project's files: :func:`atomic_write_text` and :func:`atomic_save_figure`
    write through it. The file gets the mode ``open`` would give it, and a killed write leaves only a
    ``.<name>.<random>.tmp`` that :func:`clean_orphans` removes. A full disk raises :class:`DiskFullError`
    naming ``path`` and ``size`` (the bytes it needs, when the caller knows them), after the removal.

    Example:
        >>> target = Path(tempfile.mkdtemp()) / "notes.txt"
        >>> with atomic_file(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text(), [p.name for p in target.parent.iterdir()]
        ('done', ['notes.txt'])
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(name)
        yield tmp
        set_default_mode(tmp)
        os.replace(tmp, path)
    except BaseException as e:
        full, written = is_disk_full(e, path.parent), _size_written(tmp)  # before the removal frees the space
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if full:
            raise DiskFullError(path, size or written, at_least=size is None) from e
        raise


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through :func:`atomic_file` (as UTF-8), synced to disk before the rename."""
    data = text.encode("utf-8")
    with atomic_file(path, len(data)) as tmp, tmp.open("wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())


def atomic_save_figure(fig: Any, path: Path, dpi: int = 110) -> None:
    """Save a matplotlib figure as a PNG at ``path`` through :func:`atomic_file`; closes the figure."""
    import matplotlib.pyplot as plt

    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
        plt.close(fig)


def atomic_write_jsonl(path: Path, rows: list[dict[str, Any]]) -> None:
    """Write rows as JSON lines atomically."""
    atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read JSON lines; a bad line raises ValueError naming the file and line number."""
    rows = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
    return rows


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temp folder beside ``path``; on success it replaces ``path`` whole, on error it is removed.

    A full disk raises :class:`DiskFullError` naming ``path`` and what was written before the disk filled.

    Example:
        >>> target = Path(tempfile.mkdtemp()) / "model"
        >>> with atomic_dir(target) as tmp:
        ...     _ = (tmp / "weights.bin").write_bytes(b"0")
        >>> [p.name for p in target.iterdir()], [p.name for p in target.parent.iterdir()]
        (['weights.bin'], ['model'])
    """
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
        set_default_mode(tmp)
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException as e:
        full, written = is_disk_full(e, path.parent), _size_written(tmp)  # before the removal frees the space
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if full:
            raise DiskFullError(path, written, at_least=True) from e
        raise


def hash_path(path: Path) -> str:
    """Content hash of a file, or of a folder (relative names + file hashes, sorted)."""
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()[:16]
    if not path.is_dir():
        raise FileNotFoundError(path)
    for p in sorted(q for q in path.rglob("*") if q.is_file() and not q.name.startswith(".")):
        h.update(p.relative_to(path).as_posix().encode())
        h.update(hash_path(p).encode())
    return h.hexdigest()[:16]


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide an artifact's behaviour (for lineage)."""
    versions = {"python": platform.python_version()}
    for name in TRACKED_PACKAGES:
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[name] = metadata.version(name)
    return versions


@dataclass(frozen=True)
class StageStart:
    """A stage that a process started and has not yet ended (:meth:`RunDir.mark_started`)."""

    pid: int
    at: float


@dataclass(frozen=True)
class LockHolder:
    """The process a run directory's lock file names: ``alive`` while it holds the lock, else the lock is stale."""

    pid: int
    alive: bool


@dataclass
class StageRecord:
    """One stage's manifest entry."""

    status: str
    config_hash: str
    inputs: dict[str, str] = field(default_factory=dict)  # "stage/output" -> content hash
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)  # key -> {path, hash}
    metrics: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    started: float = 0.0
    ended: float = 0.0
    failure: dict[str, Any] | None = None  # the latest failed run since this record: {"error", "at"}


class RunDir:
    """A run directory ``<root>/<name>`` and its ``manifest.json``.

    Args:
        root: the run directory itself.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / MANIFEST
        self.previous_manifest_path = self.root / "manifest.prev.json"

    @classmethod
    def from_config(cls, cfg: Any) -> RunDir:
        return cls(Path(cfg.run.root) / cfg.run.name)

    def path(self, relative: str) -> Path:
        """Absolute path of an artifact by its named relative path (e.g. :data:`DATA_CORPUS`)."""
        return self.root / relative

    # -- one process at a time ----------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the run directory for this process (main process only), then clean orphaned temp files.

        The lock is an ``flock`` on ``<run>/.lock``, which holds the holder's PID: the kernel releases it
        when the process dies, so a lock left by a killed run is detected as stale and taken over.

        Raises:
            RunLockedError: another live process holds it (the message names its PID).
        """
        if not is_main_process():
            yield
            return
        lock_path = self.root / LOCK_FILE
        with reporting_full_disk(lock_path):
            self.root.mkdir(parents=True, exist_ok=True)
            fh = lock_path.open("a+", encoding="utf-8")
        with fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                raise RunLockedError(
                    f"{self.root} is in use by another ragtune process (PID {holder}); wait for it to finish "
                    "or stop it, then rerun"
                ) from None
            fh.seek(0)
            if stale := fh.read().strip():
                logger.warning("%s: taking over a stale lock of PID %s, which is no longer running", self.root, stale)
            with reporting_full_disk(lock_path):
                _write_holder(fh.fileno(), str(os.getpid()))
            try:
                clean_orphans(self.root)
                yield
            finally:
                _write_holder(fh.fileno(), "")  # empty: released cleanly
                fcntl.flock(fh, fcntl.LOCK_UN)

    def lock_holder(self) -> LockHolder | None:
        """The process the lock file names, and whether it still holds the lock; None when it was released cleanly.

        A process killed while holding it (``kill -9``) leaves its PID in the file: the kernel released the
        ``flock``, so that holder is not ``alive``. Alive means both: the PID runs, and the lock cannot be shared.
        """
        path = self.root / LOCK_FILE
        try:
            text = path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        if not text.isdigit():
            return None
        pid = int(text)
        return LockHolder(pid, _process_runs(pid) and _lock_is_held(path))

    def check_is_run(self) -> None:
        """Refuse a path that is not a run directory (``ragtune status`` on a mistyped path).

        Raises:
            StageInputError: naming the path and what a run directory holds.
        """
        if not self.root.is_dir():
            raise StageInputError(f"{self.root}: no such run directory")
        if not (self.path(CONFIG_RESOLVED).exists() or self.manifest_path.exists()):
            raise StageInputError(
                f"{self.root} is not a ragtune run (it holds no {CONFIG_RESOLVED} or {self.manifest_path.name}): "
                "give a run directory, <run.root>/<run.name>"
            )

    # -- stages started and not ended -------------------------------------------------------------
    def started_stages(self) -> dict[str, StageStart]:
        """The stages a process started and has not ended (:meth:`mark_started`); a killed one stays here."""
        try:
            raw = json.loads(self.path(STARTED_FILE).read_text(encoding="utf-8"))
            return {stage: StageStart(int(s["pid"]), float(s["at"])) for stage, s in raw.items()}
        except FileNotFoundError:
            return {}
        except (ValueError, KeyError, TypeError, AttributeError):
            logger.warning("%s is unreadable; ignoring it", self.path(STARTED_FILE))
            return {}

    def mark_started(self, stage: str) -> None:
        """Note that this process started ``stage`` (main process only), so ``ragtune status`` can say it runs."""
        if is_main_process():
            self._save_started(self.started_stages() | {stage: StageStart(os.getpid(), time.time())})

    def clear_started(self, stage: str) -> None:
        """Remove the note of :meth:`mark_started`: the stage ended, finished or failed (main process only)."""
        if is_main_process():
            self._save_started({k: v for k, v in self.started_stages().items() if k != stage})

    def _save_started(self, started: dict[str, StageStart]) -> None:
        if started:
            atomic_write_text(self.path(STARTED_FILE), json.dumps({k: v.__dict__ for k, v in started.items()}) + "\n")
        else:
            self.path(STARTED_FILE).unlink(missing_ok=True)  # needs no space: works on a full disk

    # -- manifest -------------------------------------------------------------------------------
    def load_manifest(self) -> dict[str, StageRecord]:
        """Stage records from ``manifest.json``; an unreadable one is recovered from the previous version.

        Raises:
            ManifestError: neither the manifest nor its previous version can be read.
        """
        if not self.manifest_path.exists():
            return {}
        try:
            return _parse_manifest(self.manifest_path)
        except ValueError as e:
            problem = f"{self.manifest_path} is unreadable ({e})"
        try:
            stages = _parse_manifest(self.previous_manifest_path)
        except FileNotFoundError:
            reason = "there is no previous version"
        except ValueError as e:
            reason = f"the previous version {self.previous_manifest_path} is unreadable too ({e})"
        else:
            logger.warning("%s; recovered from the previous version %s", problem, self.previous_manifest_path)
            if is_main_process():
                atomic_write_text(self.manifest_path, self.previous_manifest_path.read_text(encoding="utf-8"))
            return stages
        raise ManifestError(
            f"{problem} and {reason}: restore it, or move it aside to start the run afresh (every stage reruns; "
            "the LLM caches in the run directory are kept)"
        )

    def _save_manifest(self, stages: dict[str, StageRecord]) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            _parse_manifest(self.manifest_path)  # keep the current version only when it is readable
            atomic_write_text(self.previous_manifest_path, self.manifest_path.read_text(encoding="utf-8"))
        ordered = {n: stages[n].__dict__ for n in sorted(stages, key=_stage_rank)}
        atomic_write_text(self.manifest_path, json.dumps({"stages": ordered}, indent=2, sort_keys=False) + "\n")

    def record(
        self,
        stage: str,
        *,
        config_hash: str,
        inputs: dict[str, str],
        outputs: dict[str, str],
        metrics: dict[str, Any] | None = None,
        started: float,
    ) -> StageRecord:
        """Hash ``outputs`` (key -> path relative to the run dir) and write the stage's entry, last.

        Call this only after every output file is in place. Returns the record written.
        """
        rec = StageRecord(
            status="done",
            config_hash=config_hash,
            inputs=inputs,
            outputs={k: {"path": rel, "hash": hash_path(self.path(rel))} for k, rel in outputs.items()},
            metrics=metrics or {},
            versions=package_versions(),
            started=started,
            ended=time.time(),
        )
        if is_main_process():
            stages = self.load_manifest()
            stages[stage] = rec
            self._save_manifest(stages)
        return rec

    def mark_failed(self, stage: str, error: str) -> None:
        """Record that a stage failed, beside its last good record.

        A finished record stays ``done`` with its outputs, so the stages after it can still use them;
        the failure is kept in its ``failure`` field until the stage next finishes. A stage that never
        finished gets a ``failed`` record.
        """
        if not is_main_process():
            return
        stages = self.load_manifest()
        now = time.time()
        failure = {"error": error[:500], "at": now}
        previous = stages.get(stage)
        if previous is not None and previous.status == "done":
            previous.failure = failure
        else:
            stages[stage] = StageRecord(status="failed", config_hash="", started=now, ended=now, failure=failure)
        self._save_manifest(stages)

    # -- inputs and freshness ---------------------------------------------------------------------
    def require(self, stage: str, *outputs: str) -> dict[str, Path]:
        """Paths of ``outputs`` of a finished upstream ``stage``; refuse missing or stale ones.

        Returns:
            key -> absolute path. Use :meth:`input_hashes` to record what was read.

        Raises:
            StageInputError: naming the stage to run (or re-run) first.
        """
        rec = self.load_manifest().get(stage)
        run_it = f"run `{STAGE_COMMANDS.get(stage, stage)}` first"
        if rec is None or rec.status != "done":
            raise StageInputError(f"stage {stage!r} has not finished in {self.root}: {run_it}")
        found = {}
        for key in outputs:
            out = rec.outputs.get(key)
            if out is None:
                raise StageInputError(f"stage {stage!r} recorded no output {key!r}: re-run it ({run_it})")
            p = self.path(out["path"])
            if not p.exists():
                raise StageInputError(f"{p} (output {key!r} of stage {stage!r}) is missing: {run_it}")
            if hash_path(p) != out["hash"]:
                raise StageInputError(f"{p} changed since stage {stage!r} wrote it (stale): {run_it} again")
            found[key] = p
        return found

    def input_hashes(self, stage: str, *outputs: str) -> dict[str, str]:
        """``{"stage/key": hash}`` of upstream outputs as recorded, for a downstream record."""
        rec = self.load_manifest().get(stage)
        if rec is None:
            return {}
        return {input_key(stage, k): rec.outputs[k]["hash"] for k in outputs if k in rec.outputs}

    def freshness(
        self,
        cfg: RagtuneConfig,
        sections: Sequence[str],
        upstream: Mapping[str, Sequence[str]] | None = None,
        *,
        inputs: Mapping[str, str] | None = None,
        exclude: Sequence[str] = (),
    ) -> tuple[str, dict[str, str]]:
        """A stage's config hash and input hashes: what :meth:`is_fresh` compares and :meth:`record` keeps.

        Every stage builds both here. The hash covers the ``run`` section (name, root, seed), the config
        ``sections`` the stage uses and the content hashes of its inputs.

        Args:
            cfg: the validated config.
            sections: what the stage depends on: a section (``"embed"``) or one field of it, as a dotted
                path (``"assemble.top_n"``).
            upstream: stage -> output keys it reads; their hashes are taken as the manifest recorded them.
            inputs: input hashes the stage computed itself (``"file/docs"`` -> hash; chosen components).
            exclude: dotted paths inside ``sections`` that do not change the output (``"raft.teacher.dry_run"``).

        Returns:
            ``(config hash, {"stage/key": hash})``.
        """
        tree = cfg.model_dump(mode="json")
        payload: dict[str, Any] = {path: _config_value(tree, path, exclude) for path in ("run", *sections)}
        hashes = dict(inputs or {})
        for stage, keys in (upstream or {}).items():
            hashes |= self.input_hashes(stage, *keys)
        payload["inputs"] = hashes
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16], hashes

    def is_fresh(self, stage: str, config_hash: str, inputs: dict[str, str]) -> bool:
        """True when ``stage`` is done with this config hash and these input hashes, and its outputs are intact."""
        rec = self.load_manifest().get(stage)
        if rec is None or rec.status != "done" or rec.config_hash != config_hash or rec.inputs != inputs:
            return False
        return all(
            self.path(o["path"]).exists() and hash_path(self.path(o["path"])) == o["hash"] for o in rec.outputs.values()
        )


def _process_runs(pid: int) -> bool:
    """Whether a process with this PID exists (it may belong to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_held(path: Path) -> bool:
    """Whether some process holds the ``flock`` on ``path``: a shared lock cannot be had (it is let go at once)."""
    with path.open("rb") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        fcntl.flock(fh, fcntl.LOCK_UN)
        return False


def _write_holder(fd: int, holder: str) -> None:
    """Replace the lock file's text unbuffered, so a full disk fails here and not again when the file closes."""
    os.ftruncate(fd, 0)
    os.write(fd, holder.encode())


def _config_value(tree: dict[str, Any], path: str, exclude: Sequence[str]) -> Any:
    """The value at dotted ``path`` of a dumped config, less the dotted paths of ``exclude`` below it."""
    value: Any = tree
    for key in path.split("."):
        value = value[key]
    value = copy.deepcopy(value)
    for dropped in exclude:
        if dropped.startswith(path + "."):
            *parents, last = dropped[len(path) + 1 :].split(".")
            node = value
            for key in parents:
                node = node[key]
            del node[last]
    return value


def _parse_manifest(path: Path) -> dict[str, StageRecord]:
    """Stage records of one manifest file; ValueError says what is wrong with it."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        return {name: StageRecord(**rec) for name, rec in raw["stages"].items()}
    except json.JSONDecodeError as e:
        raise ValueError(f"not valid JSON at line {e.lineno}: {e.msg}") from None
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except (KeyError, TypeError, AttributeError) as e:
        raise ValueError(f"not a ragtune manifest ({type(e).__name__}: {e})") from None


def clean_orphans(root: Path) -> list[str]:
    """Remove the temporary files and folders a killed write left under ``root``; restore a half-swapped one.

    :func:`atomic_write_text` and :func:`atomic_dir` write ``.<name>.<random>.tmp``; :func:`atomic_dir`
    moves the old folder to ``.<name>.old`` for an instant. Where ``<name>`` is missing, the ``.old``
    folder is the last complete version and is moved back; otherwise it is removed.

    Returns:
        What was done, one line per entry (also logged).
    """
    done = []
    for folder, dirs, files in os.walk(root):
        for name in [*dirs, *files]:
            path = Path(folder) / name
            if not name.startswith(".") or not name.endswith((".tmp", ".old")):
                continue
            target = path.with_name(name[1:-4])
            if name.endswith(".old") and not target.exists():
                os.replace(path, target)
                done.append(f"restored {target} from {name}")
            else:
                shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()
                done.append(f"removed {path}")
        dirs[:] = [d for d in dirs if (Path(folder) / d).exists()]
    for line in done:
        logger.warning("left by an interrupted run: %s", line)
    return done


def _stage_rank(name: str) -> int:
    return STAGE_ORDER.index(name) if name in STAGE_ORDER else len(STAGE_ORDER)


def headline_metrics(stage: str, metrics: dict[str, Any]) -> str:
    """A stage's few telling metrics as ``key=value`` text (``HEADLINE_METRICS``; otherwise its first ones).

    Example:
        >>> headline_metrics("embed", {"before_hit@1": 1.0, "before_ndcg@10": 0.4651, "after_ndcg@10": 0.5172})
        'before_ndcg@10=0.465, after_ndcg@10=0.517'
    """
    keys = [k for k in HEADLINE_METRICS.get(stage, ()) if k in metrics]
    if not keys:
        keys = [k for k, v in metrics.items() if not isinstance(v, dict | list)][:4]
    return ", ".join(f"{k}={metrics[k]:.3f}" if isinstance(metrics[k], float) else f"{k}={metrics[k]}" for k in keys)


def _duration(seconds: float) -> str:
    minutes, secs = divmod(round(seconds), 60)
    return f"{minutes}m {secs:02d}s" if minutes else f"{secs}s"


def stage_states(
    stages: Mapping[str, StageRecord], started: Mapping[str, StageStart], holder: LockHolder | None
) -> dict[str, str]:
    """What became of each stage a process started and did not note as ended: ``running`` while that process
    holds the run directory, else ``interrupted`` (killed: a stale lock, or a start with no end recorded).

    A stage whose manifest entry ended or failed after the start is left out: it ended, and only the note's
    removal was cut short.

    Example:
        >>> started = {"embed": StageStart(pid=7, at=100.0), "rerank": StageStart(pid=5, at=50.0)}
        >>> stage_states({}, started, LockHolder(pid=7, alive=True))
        {'embed': 'running', 'rerank': 'interrupted'}
        >>> stage_states({}, started, LockHolder(pid=7, alive=False))
        {'embed': 'interrupted', 'rerank': 'interrupted'}
    """
    states = {}
    for stage, start in started.items():
        rec = stages.get(stage)
        if rec is not None and max(rec.ended, (rec.failure or {}).get("at", 0.0)) >= start.at:
            continue
        states[stage] = "running" if holder is not None and holder.alive and holder.pid == start.pid else "interrupted"
    return states


def _clock(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _unfinished_row(name: str, rec: StageRecord | None, state: str, start: StageStart) -> tuple[str, ...]:
    """A status row for a stage running now or interrupted; a finished record it reruns keeps its outputs."""
    done = rec is not None and rec.status == "done"
    if state == "running":
        detail, elapsed = f"PID {start.pid} since {_clock(start.at)}", _duration(time.time() - start.at)
    else:
        detail, elapsed = f"started {_clock(start.at)} by PID {start.pid}, which is gone (killed?): rerun it", ""
    return (
        name,
        f"done (rerun {state})" if done else state,
        rec.config_hash[:8] if rec else "",
        elapsed,
        ", ".join(rec.outputs) if done else "",
        detail,
    )


def _holder_note(holder: LockHolder | None, started: Mapping[str, StageStart], states: Mapping[str, str]) -> list[str]:
    """A line on a lock holder that no row names: a live one outside any stage, or one killed outside any stage.

    This process holding the lock (``ragtune run`` ending with the table) is no news.
    """
    if holder is None or holder.pid == os.getpid() or any(started[s].pid == holder.pid for s in states):
        return []
    if holder.alive:
        return [f"in use by PID {holder.pid}, outside any stage (between stages, or ragtune query)"]
    return [f"PID {holder.pid} was killed while it held the run, outside any stage; the next command takes over"]


def format_status(run: RunDir) -> str:
    """The manifest as a plain-text table (``ragtune status RUN``; ``ragtune run`` ends with it).

    A stage running now (its process holds the run directory) or interrupted (its process is gone and never
    recorded an end) has a row saying so, with the PID and the start time.
    """
    stages, started, holder = run.load_manifest(), run.started_stages(), run.lock_holder()
    states = stage_states(stages, started, holder)
    notes = _holder_note(holder, started, states)
    if not stages and not states:
        return "\n".join([f"{run.root}: no stage has run yet", *notes])
    header = ("stage", "status", "config", "time", "outputs", "metrics")
    rows = [header]
    for name in sorted(set(stages) | set(states), key=_stage_rank):
        rec = stages.get(name)
        if name in states:
            rows.append(_unfinished_row(name, rec, states[name], started[name]))
            continue
        metrics = headline_metrics(name, rec.metrics)
        if rec.failure:
            metrics = f"last run failed: {rec.failure['error']}"
        rows.append(
            (
                name,
                rec.status if rec.status != "done" or not rec.failure else "done (rerun failed)",
                rec.config_hash[:8],
                _duration(rec.ended - rec.started),
                ", ".join(rec.outputs),
                metrics if not rec.failure else metrics[:120],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    table = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(table + notes)
