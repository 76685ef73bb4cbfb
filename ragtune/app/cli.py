"""The `ragtune` command: run one stage, the whole pipeline, or look at a run.

ragtune data CONFIG [key=value ...] [--force]     one stage (likewise embed, rerank, gpl, raft, eval)
ragtune run CONFIG [key=value ...]                every stage in order, skipping finished ones
ragtune status RUN_DIR                            the manifest as a table, with the stage running or interrupted
ragtune query RUN_DIR "question" [key=value ...]  ask the assembled engine (answer, quotes, sources)
ragtune serve RUN_DIR [--host H --port P] [--api-key-env VAR]  OpenAI-compatible server (ragtune.app.serve)
ragtune export RUN_DIR --to DIR [--all] [--push ORG/PREFIX]  the served models with cards (ragtune.app.export)
ragtune export RUN_DIR --to DIR --format llamaindex|beir  the run's corpus and queries in an outside format
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys

from ragtune.pipeline.entry import (
    add_config_args,
    call_stage,
    exit_codes,
    open_run,
    quiet_libraries,
    setup_logging,
)
from ragtune.pipeline.promotion import format_promotions, gpl_enabled_in
from ragtune.pipeline.rundir import CONFIG_RESOLVED, RunDir, StageInputError, format_status

# Stage name -> module with main(cfg, run, force); only the top of the package imports stages.
STAGE_MODULES = {
    "data": "ragtune.stages.data.prepare",
    "embed": "ragtune.stages.embed.train",
    "rerank": "ragtune.stages.rerank.train",
    "gpl": "ragtune.stages.gpl.train",  # optional (gpl.enabled): records nothing when off
    "raft": "ragtune.stages.raft.train",
    "eval": "ragtune.eval.harness",
}


# Commands with their own parser (their modules' main(argv)); listed in `ragtune --help`.
DELEGATED = {
    "serve": ("ragtune.app.serve", "OpenAI-compatible server over a run's engine"),
    "export": (
        "ragtune.app.export",
        "export a run's models with cards (optionally pushed), or its data as LlamaIndex/BEIR",
    ),
}


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ragtune", description="Adapt a RAG stack to one domain.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in STAGE_MODULES:
        p = sub.add_parser(name, help=f"run the {name} stage")
        add_config_args(p)
    p = sub.add_parser("run", help="every stage in order, skipping finished ones")
    add_config_args(p)
    for name, (_, help_text) in DELEGATED.items():
        sub.add_parser(name, help=help_text, add_help=False)
    p = sub.add_parser("status", help="print a run's manifest as a table")
    p.add_argument("run_dir")
    p = sub.add_parser("query", help="ask the assembled query engine of a run")
    p.add_argument("run_dir")
    p.add_argument("question")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. assemble.reranker=none")
    p.add_argument("-v", "--verbose", action="store_true")
    return parser


def _normalize_argv(argv: list[str]) -> list[str]:
    """Accept `ragtune data CONFIG ...` as well as `ragtune data --config CONFIG ...`."""
    if len(argv) >= 2 and argv[0] not in ("status", "query") and not argv[1].startswith("-") and "=" not in argv[1]:
        return [argv[0], "--config", argv[1], *argv[2:]]
    return argv


def run_all(config: str, overrides: list[str], force: bool = False) -> None:
    """Every stage in order; each skips itself when finished and fresh. Ends with each stage's time and metrics."""
    with open_run(config, overrides, "run") as (cfg, run):
        for name, module in STAGE_MODULES.items():
            call_stage(name, importlib.import_module(module).main, cfg, run, force)
        print(f"\n{format_status(run)}")


def status(run_dir: str) -> None:
    """Print a run's stages (running, interrupted, finished) and what it serves by default; refuse a non-run."""
    run = RunDir(run_dir)
    run.check_is_run()
    print(format_status(run))
    print(format_promotions(run, gpl_enabled_in(run)))


def query(run_dir: str, question: str, overrides: list[str]) -> None:
    """Answer one question with the run's assembled engine (its config.resolved.yaml, plus overrides)."""
    from ragtune.app.assemble import build_query_engine, format_response
    from ragtune.pipeline.config import load_config

    run = RunDir(run_dir)
    if not run.path(CONFIG_RESOLVED).exists():
        raise StageInputError(f"{run.root}: not a ragtune run (no {CONFIG_RESOLVED}); `ragtune run CONFIG` makes it")
    cfg = load_config(run.path(CONFIG_RESOLVED), overrides, resolved=True)
    with run.lock():  # the engine writes index/ on first use
        print(format_response(build_query_engine(cfg, run).query(question)))


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in DELEGATED:
        importlib.import_module(DELEGATED[argv[0]][0]).main(argv[1:])
        return
    args = make_parser().parse_args(_normalize_argv(argv))
    setup_logging(getattr(args, "verbose", False))
    with exit_codes():
        if args.command == "status":
            status(args.run_dir)
        elif args.command == "query":
            with contextlib.nullcontext() if args.verbose else quiet_libraries():
                query(args.run_dir, args.question, args.overrides)
        elif args.command == "run":
            run_all(args.config, args.overrides, args.force)
        else:
            with open_run(args.config, args.overrides, args.command) as (cfg, run):
                stage_main = importlib.import_module(STAGE_MODULES[args.command]).main
                call_stage(args.command, stage_main, cfg, run, args.force)


if __name__ == "__main__":
    main()
