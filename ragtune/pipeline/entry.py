"""What every stage entry point shares: argument parsing, logging, config loading, the run directory.

A stage module ends with ``if __name__ == "__main__": run_stage(main, "...")`` so that
``python -m ragtune.stages.embed.train --config C`` and ``accelerate launch -m ragtune.stages.embed.train --config C``
call the same ``main(cfg, run, force)`` that ``ragtune embed C`` calls in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from ragtune.pipeline.config import ConfigError, RagtuneConfig, dump_config, load_config
from ragtune.pipeline.llm import DryRunFinished, LLMBackendError
from ragtune.pipeline.models import ModelNotFoundError
from ragtune.pipeline.rundir import (
    CONFIG_RESOLVED,
    DiskFullError,
    ManifestError,
    RunDir,
    RunLockedError,
    StageInputError,
    atomic_write_text,
    is_main_process,
    reporting_full_disk,
)

logger = logging.getLogger(__name__)

StageMain = Callable[[RagtuneConfig, RunDir, bool], Any]
# The stages whose outputs each stage reads through the manifest: checked before its heavy imports.
UPSTREAM = {
    "embed": ("data",),
    "rerank": ("data", "embed"),
    "gpl": ("data", "embed"),  # and rerank when the teacher is stage 2's model (the stage asks for it)
    "raft_build": ("data", "embed", "rerank"),
    "raft": ("data", "embed", "rerank"),
    "eval": ("data",),
}
FOLDER_SOURCES = ("docs", "beir")  # data.<key> is a folder; data.questions and data.llamaindex_dataset are files
INTERRUPTED_EXIT = 130  # what a shell reports for Ctrl-C
BROKEN_PIPE_EXIT = 141  # what a shell reports for a command whose reader went away (`cat FILE | head -1`)


class RunInterrupted(RuntimeError):
    """Ctrl-C inside a run; the message says what is kept and how to resume."""


def setup_logging(verbose: bool = False) -> None:
    """One format for every process; other ranks only log warnings."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if is_main_process() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep a command's output to what ragtune says: no library chatter (``ragtune query`` without ``-v``).

    Off while inside: the libraries' info logs, their progress bars (model loading; encode batches, which
    nest inside LlamaIndex's own bar while an index is built), FutureWarning/DeprecationWarning from inside
    them and bitsandbytes' notice about optional CPU kernels. ragtune's own info lines and every other
    warning stay. Everything is put back on exit.
    """
    import warnings

    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as transformers_logging

    levels = {name: logging.getLogger(name).level for name in ("", "ragtune", "bitsandbytes")}
    verbosity, hub_bars = transformers_logging.get_verbosity(), not are_progress_bars_disabled()
    bars = transformers_logging.is_progress_bar_enabled()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        logging.getLogger().setLevel(logging.WARNING)  # sentence-transformers shows its bars only at INFO
        logging.getLogger("ragtune").setLevel(logging.INFO)  # ours: the one package
        logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
        transformers_logging.set_verbosity_error()
        transformers_logging.disable_progress_bar()
        disable_progress_bars()
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
            transformers_logging.set_verbosity(verbosity)
            if bars:
                transformers_logging.enable_progress_bar()
            if hub_bars:
                enable_progress_bars()


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="domain config YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. embed.epochs=3")
    parser.add_argument("--force", action="store_true", help="rerun even if finished and fresh")
    parser.add_argument("-v", "--verbose", action="store_true")


def check_sources(cfg: RagtuneConfig) -> None:
    """Refuse a configured data source that does not exist, naming its config key and path.

    Raises:
        ConfigError: e.g. ``data.docs: folder not found: PATH``.
    """
    for key in ("docs", "questions", "beir", "llamaindex_dataset"):
        value = getattr(cfg.data, key)
        if not value:
            continue
        path = Path(value)
        if key in FOLDER_SOURCES and not path.is_dir():
            raise ConfigError(f"data.{key}: {'not a folder' if path.exists() else 'folder not found'}: {path}")
        if key not in FOLDER_SOURCES and not path.exists():
            raise ConfigError(f"data.{key}: file not found: {path}")


def check_stage_order(stage: str, run: RunDir, config: str) -> None:
    """Refuse ``stage`` when a stage it reads from has not finished, suggesting ``ragtune run``.

    Only the manifest's status is read (cheap, before any model library is imported); the stage itself
    still checks its inputs' hashes through :meth:`RunDir.require`.

    Raises:
        StageInputError: naming the first unfinished upstream stage and the commands to run.
    """
    stages = run.load_manifest()
    missing = [name for name in UPSTREAM.get(stage, ()) if name not in stages or stages[name].status != "done"]
    if missing:
        raise StageInputError(
            f"{stage} needs the {', '.join(missing)} stage{'s' * (len(missing) > 1)} finished first in {run.root}: "
            f"run `ragtune {missing[0]} {config}` first, or `ragtune run {config}` to run every stage in order"
        )


@contextlib.contextmanager
def open_run(config: str, overrides: list[str], stage: str | None = None) -> Iterator[tuple[RagtuneConfig, RunDir]]:
    """Load the config, hold its run directory (:meth:`RunDir.lock`) and write ``config.resolved.yaml``.

    Before the run directory is created: a ``stage`` that runs the data stage (``data``, ``run``) has its
    sources checked (:func:`check_sources`), any other its upstream stages (:func:`check_stage_order`).

    Raises:
        ConfigError, StageInputError: from those checks; nothing was written.
        RunLockedError: another ragtune process works in the same run directory.
        RunInterrupted: Ctrl-C while the run was held.
    """
    cfg = load_config(config, overrides)
    run = RunDir.from_config(cfg)
    if stage in ("data", "run"):
        check_sources(cfg)
    elif stage is not None:
        check_stage_order(stage, run, config)
    try:
        with run.lock():
            if is_main_process():
                atomic_write_text(run.path(CONFIG_RESOLVED), dump_config(cfg))
            yield cfg, run
    except KeyboardInterrupt:
        raise RunInterrupted(
            f"interrupted: finished stages, their files and cached LLM calls in {run.root} are kept; "
            "rerun the same command to resume"
        ) from None


USER_ERRORS = (
    ConfigError,
    DiskFullError,
    StageInputError,
    RunLockedError,
    ManifestError,
    ModelNotFoundError,
    LLMBackendError,
    FileNotFoundError,
    ValueError,
)


def call_stage(stage: str, main: StageMain, cfg: RagtuneConfig, run: RunDir, force: bool) -> Any:
    """Run a stage's ``main``; a failure is recorded in the manifest (earlier outputs stay) and re-raised.

    While it runs, the stage is noted as started (:meth:`RunDir.mark_started`), so ``ragtune status`` says it
    runs, and once its process is killed, that it was interrupted. A full disk is re-raised as
    :class:`DiskFullError` (one line naming the path); when the manifest cannot record the failure for want of
    space either, it keeps its last good version and a warning says so.
    """
    run.mark_started(stage)
    try:
        with reporting_full_disk(run.root):
            return main(cfg, run, force)
    except DryRunFinished:
        raise
    except BaseException as e:
        error = "interrupted (Ctrl-C)" if isinstance(e, KeyboardInterrupt) else f"{type(e).__name__}: {e}"
        try:
            run.mark_failed(stage, error)
        except DiskFullError as unrecorded:
            logger.warning("the %s stage's failure is not recorded in the manifest: %s", stage, unrecorded)
        raise
    finally:
        with contextlib.suppress(DiskFullError):  # the manifest says the stage ended, or failed, after this start
            run.clear_started(stage)


def exit_quietly_on_closed_pipe() -> NoReturn:
    """Stop without a traceback when stdout's reader went away (``ragtune status RUN | head -1``).

    stdout is pointed at /dev/null first, so that Python's own flush at exit does not fail a second time.
    """
    with contextlib.suppress(OSError, ValueError):  # io.UnsupportedOperation (no file descriptor) is both
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    sys.exit(BROKEN_PIPE_EXIT)


@contextlib.contextmanager
def exit_codes() -> Iterator[None]:
    """How a command ends for the user, one rule for ``ragtune`` and every ``python -m`` stage: a user error is one
    line and exit 2, an interruption says what was kept (exit 130), a reader gone from the pipe ends quietly, and
    a teacher dry run prints its summary."""
    try:
        yield
        sys.stdout.flush()  # a reader gone from the pipe shows here, not in Python's flush at exit
    except BrokenPipeError:
        exit_quietly_on_closed_pipe()
    except DryRunFinished as e:
        print(e)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except (RunInterrupted, KeyboardInterrupt) as e:
        print(str(e) or "interrupted", file=sys.stderr)
        sys.exit(INTERRUPTED_EXIT)


def run_stage(stage: str, main: StageMain, description: str, argv: list[str] | None = None) -> None:
    """Parse ``--config C [overrides] [--force]`` and run ``main``; user errors exit 2 with one line."""
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    with exit_codes(), open_run(args.config, args.overrides, stage) as (cfg, run):
        call_stage(stage, main, cfg, run, args.force)
        leave_process_group()


def leave_process_group() -> None:
    """Wait for every rank of an ``accelerate launch``, then tear its process group down; nothing when not distributed.

    A rank that exits while the group is still up (a non-main rank is done long before the main one has evaluated
    and saved) can abort in a C++ destructor at interpreter exit ("terminate called without an active exception"),
    and the launcher then kills the main rank mid-save. The wait is bounded by the group's timeout, which a stage's
    ``trainer.ddp_timeout`` sets (30 minutes by default). torch is only looked up, never imported, here.
    """
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
