"""What every stage entry point shares: argument parsing, logging, config loading, the run directory.

A stage module ends with ``if __name__ == "__main__": run_stage(main, "...")`` so that
``python -m stages.embed.train --config C`` and ``accelerate launch -m stages.embed.train --config C``
call the same ``main(cfg, run, force)`` that ``ragtune embed C`` calls in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from typing import Any

from pipeline.config import ConfigError, RagtuneConfig, dump_config, load_config
from pipeline.llm import DryRunFinished, LLMBackendError
from pipeline.models import ModelNotFoundError
from pipeline.rundir import (
    ManifestError,
    RunDir,
    RunLockedError,
    StageInputError,
    atomic_write_text,
    is_main_process,
)

StageMain = Callable[[RagtuneConfig, RunDir, bool], Any]


def setup_logging(verbose: bool = False) -> None:
    """One format for every process; other ranks only log warnings."""
    level = logging.DEBUG if verbose else logging.INFO
    logging.basicConfig(
        level=level if is_main_process() else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


def add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="domain config YAML")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. embed.epochs=3")
    parser.add_argument("--force", action="store_true", help="rerun even if finished and fresh")
    parser.add_argument("-v", "--verbose", action="store_true")


@contextlib.contextmanager
def open_run(config: str, overrides: list[str]) -> Iterator[tuple[RagtuneConfig, RunDir]]:
    """Load the config, hold its run directory (:meth:`RunDir.lock`) and write ``config.resolved.yaml``.

    Raises:
        RunLockedError: another ragtune process works in the same run directory.
    """
    cfg = load_config(config, overrides)
    run = RunDir.from_config(cfg)
    with run.lock():
        if is_main_process():
            atomic_write_text(run.path("config.resolved.yaml"), dump_config(cfg))
        yield cfg, run


USER_ERRORS = (
    ConfigError,
    StageInputError,
    RunLockedError,
    ManifestError,
    ModelNotFoundError,
    LLMBackendError,
    FileNotFoundError,
    ValueError,
)


def call_stage(stage: str, main: StageMain, cfg: RagtuneConfig, run: RunDir, force: bool) -> Any:
    """Run a stage's ``main``; a failure is recorded in the manifest (earlier outputs stay) and re-raised."""
    try:
        return main(cfg, run, force)
    except DryRunFinished:
        raise
    except BaseException as e:
        run.mark_failed(stage, f"{type(e).__name__}: {e}")
        raise


def run_stage(stage: str, main: StageMain, description: str, argv: list[str] | None = None) -> None:
    """Parse ``--config C [overrides] [--force]`` and run ``main``; user errors exit 2 with one line."""
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    try:
        with open_run(args.config, args.overrides) as (cfg, run):
            call_stage(stage, main, cfg, run, args.force)
    except DryRunFinished as e:
        print(e)
    except USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
