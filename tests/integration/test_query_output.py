"""`ragtune query` prints the answer, its sources and timings, and no library chatter."""

import subprocess
import sys
from pathlib import Path

from fakes.upstream import (
    SHORT_RUN,
    record_tuned_reranker_and_adapter,
    run_dir_of,
    simulate_embed_stage,
    tiny_model_overrides,
)

from ragtune.app.cli import main as cli

ROOT = Path(__file__).parents[2]
CHATTER = (
    "Warning:",  # FutureWarning, DeprecationWarning, UserWarning
    "are different, please ensure",  # HuggingFaceLLM: model and tokenizer folders differ (the adapter's copy)
    "Batches",  # sentence-transformers encode bars, nested inside LlamaIndex's while the index is built
    "Loading weights",
    "bitsandbytes",
    " INFO sentence_transformers",
)


def test_query_output_is_the_answer_sources_and_timings_without_library_chatter(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path
) -> None:
    overrides = [
        *tiny_model_overrides(tiny_bert_dir, tiny_llama_dir),
        "assemble.max_new_tokens=6",
    ]
    cli(["data", str(tiny_config), *overrides])
    run = run_dir_of(tiny_config)
    simulate_embed_stage(run, tiny_bert_dir)
    record_tuned_reranker_and_adapter(run, tiny_bert_dir, tiny_llama_dir)  # the tokenizer comes from the adapter
    question = "how long do I have to do a takeover when the router instance dies"

    for first_use in (True, False):  # the first query builds and persists the index
        proc = subprocess.run(
            [sys.executable, "-m", "ragtune.app.cli", "query", str(run.root), question],
            capture_output=True,
            text=True,
            cwd=ROOT,
        )
        assert proc.returncode == 0, proc.stderr
        output = proc.stdout + proc.stderr
        # The first query encodes the corpus (no stage 1 ran here to cache the vectors): its one progress bar is
        # progress, not chatter; the second reads the persisted index and shows none.
        allowed = {"Batches"} if first_use else set()
        assert [c for c in CHATTER if c in output and c not in allowed] == []
        if first_use:
            assert "corpus embeddings of" in proc.stderr and "encoding" in proc.stderr
            assert "index: " in proc.stderr  # ragtune's own info line stays
        lines = proc.stdout.splitlines()
        assert lines[0].startswith("Answer:") and "Sources:" in lines
        assert lines[-1].startswith("Time: retrieve ") and ", generate " in lines[-1]

    verbose = subprocess.run(
        [sys.executable, "-m", "ragtune.app.cli", "query", str(run.root), question, "-v"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert "Batches" in verbose.stderr  # -v keeps the libraries' output


def test_run_ends_with_each_stage_time_and_headline_metrics(
    tiny_config: Path, tiny_bert_dir: Path, tiny_llama_dir: Path, capsys
) -> None:
    overrides = [
        *tiny_model_overrides(tiny_bert_dir, tiny_llama_dir),
        *SHORT_RUN,
    ]
    cli(["run", str(tiny_config), *overrides])
    table = capsys.readouterr().out.split("\n\n")[-1].splitlines()
    assert table[0].split()[:4] == ["stage", "status", "config", "time"]
    rows = {line.split()[0]: line for line in table[1:]}
    assert list(rows) == ["data", "embed", "rerank", "raft_build", "raft", "eval"]
    assert "before_ndcg@10=" in rows["embed"] and "after_ndcg@10=" in rows["embed"]
    assert "rag_only.ndcg@10=" in rows["eval"] and "hit@1" not in rows["eval"]
