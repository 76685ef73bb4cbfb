"""Benchmark: the data stage's local query synthesis against LlamaIndex's query generator, same chunks, same model.

Both sides ask the bundled generator for one question per chunk, greedy, with the same ``max_new_tokens``
(the config's ``synth.llm``), over the same chunks: the first ``--chunks`` synthesis targets of the config's
documents, chunked and chosen as the data stage does (training documents, spread across documents).

- **ragtune**: the data stage's code path: its prompts (``prompt_builder``) and ``recipe_candidates`` through
  the ``local`` backend (``ragtune.pipeline.llm.local``) and ``generate_batched`` (batches of ``synth.llm.batch_size``,
  sorted by length, the prompts' shared start computed once and its key/value cache reused by every batch,
  each row stopped once its first question is settled). Each run gets a fresh, empty LLM cache folder, so
  every completion is really generated. The round trip filter is left out of the timing (LlamaIndex has
  none); the same round trip is measured for both sides below.
- **ragtune, no early stop**: the same, generating every row to its end of sequence or ``max_new_tokens``
  (the code before the stop rule); its parsed queries must equal the first side's (greedy decoding).
- **ragtune, no shared prefix**: the same with every prompt computed in full (the code before the prefix
  cache); its parsed queries are compared with the first side's.
- **LlamaIndex**: ``generate_qa_embedding_pairs``' loop (one ``llm.complete`` per chunk with the question
  generation prompt, the reply split into lines, list numbers stripped, every non-empty line a question)
  through ``llama_index.llms.huggingface.HuggingFaceLLM`` loading the same model folder itself, the prompt
  wrapped in the model's chat template. llama-index-core 0.14 no longer ships that function (it moved to
  llama-index-finetuning, not installed here), so the loop runs here over core's own question-generation
  prompt (``llama_index.core.evaluation.dataset_generation``), the same wording.

Precision (``--precision``): by default each side loads the model as it does for its users: ragtune in
``synth.llm.dtype`` (``auto``: bf16 where the hardware has native bf16 math), ``HuggingFaceLLM`` with
transformers' default (the checkpoint's own dtype: bf16 for SmolLM2). ``float32`` or ``bfloat16`` loads
both sides in that dtype, to compare the loops alone. The table names each side's dtype.

Chunks per second exclude model loading (each model is loaded once, before any timing); they are given per
wall-clock second and per CPU second of this process (``time.process_time``: steadier than wall time on
shared cores). Quality,
per chunk's first question: question rate (the project's ``is_question``), copy rate (``copies_passage`` with
``synth.copy_ngram``) and round-trip hit@k (the chunk in the top k of ``synth.round_trip_model`` over the whole
corpus; no question counts as a miss).

    HF_HUB_OFFLINE=1 nice -n 19 .venv/bin/python scripts/bench_synth.py configs/demo.yaml --chunks 16

(the README's figure; the default is 40 chunks, five batches, which took too long on busy shared cores).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragtune.pipeline import generator  # noqa: E402
from ragtune.pipeline.config import load_config  # noqa: E402
from ragtune.pipeline.generator import chat_prompt, load_generator  # noqa: E402
from ragtune.pipeline.llm import make_backend, request_key  # noqa: E402
from ragtune.pipeline.models import resolve_model  # noqa: E402
from ragtune.pipeline.precision import inference_dtype  # noqa: E402
from ragtune.stages.data import prepare, query_generation  # noqa: E402
from ragtune.stages.data.formats import attach_chunks  # noqa: E402
from ragtune.stages.data.ingest import chunk_documents  # noqa: E402
from ragtune.stages.data.prepare import held_out_documents, load_sources  # noqa: E402
from ragtune.stages.data.query_filters import CandidateFilters, copies_passage, is_question  # noqa: E402
from ragtune.stages.data.query_parsing import first_question  # noqa: E402

logger = logging.getLogger(__name__)


def make_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(ROOT / "configs" / "demo.yaml"))
    parser.add_argument("--chunks", type=int, default=40, help="synthesis targets to ask about (the first N)")
    parser.add_argument("--skip-llamaindex", action="store_true", help="ragtune sides only")
    parser.add_argument("--skip-no-stop", action="store_true", help="leave out the no-early-stop side")
    parser.add_argument("--skip-no-prefix", action="store_true", help="leave out the no-shared-prefix side")
    parser.add_argument(
        "--precision",
        choices=["default", "float32", "bfloat16"],
        default="default",
        help="default: each side loads the model as it does itself; otherwise both sides in this dtype",
    )
    return parser


def synthesis_targets(cfg) -> tuple[list[dict], list[dict]]:
    """(the data stage's training synthesis targets, the whole corpus), as ``ragtune.stages.data.prepare`` visits
    them."""
    docs, questions, _ = load_sources(cfg)
    corpus = chunk_documents(docs, cfg.data.chunk_size, cfg.data.chunk_overlap)
    labelled = attach_chunks(questions, corpus, {d.doc_id: d.text for d in docs})
    eval_docs, has_labelled_eval = held_out_documents(cfg, docs, labelled)
    train_pool = prepare.synthesis_pools(corpus, eval_docs, has_labelled_eval, cfg.split.seed)[1]
    return train_pool[: cfg.synth.max_chunks], corpus


def run_ragtune(
    cfg, model, tokenizer, chunks: list[dict], stop: bool, share_prefix: bool = True
) -> tuple[tuple[float, float], list[str], int]:
    """((wall, CPU) seconds, raw greedy completions, completion tokens) of the data stage's recipe, fresh cache."""
    requests = [query_generation.prompt_builder(cfg.synth)(c["text"]) for c in chunks]
    filters = CandidateFilters(cfg.synth, cfg.synth.examples or query_generation.BUILTIN_EXAMPLES, True)
    max_new = min(cfg.synth.llm.max_new_tokens, query_generation.RECIPE_MAX_NEW_TOKENS)
    with tempfile.TemporaryDirectory() as cache:
        backend = make_backend(cfg.synth.llm, Path(cache))
        backend._model, backend._tokenizer = model, tokenizer  # loaded once, outside the timing
        rule = query_generation.RECIPE_STOP if stop else None
        min_prefix = generator.MIN_SHARED_PREFIX if share_prefix else math.inf
        with (
            mock.patch.object(query_generation, "RECIPE_STOP", rule),
            mock.patch.object(generator, "MIN_SHARED_PREFIX", min_prefix),
        ):
            started, cpu = time.perf_counter(), time.process_time()
            query_generation.recipe_candidates(
                backend, requests, chunks, cfg.synth, filters, lambda queries, ids: [1] * len(queries)
            )
            seconds = (time.perf_counter() - started, time.process_time() - cpu)
        if backend.usage.cached:
            raise RuntimeError("the fresh cache answered a request: the timing is not of generation")
        tokens = backend.usage.completion_tokens
        # the completions themselves (cached above, final or not): read back without generating again
        rows = {}
        for line in (Path(cache) / "llm.jsonl").read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            rows[row["key"]] = row["text"]
        params = {"max_new_tokens": max_new, "temperature": 0.0}
        texts = [rows[request_key(cfg.synth.llm.provider, cfg.synth.llm.model, params, r)] for r in requests]
    return seconds, texts, tokens


def load_llamaindex(cfg, path: str, dtype: str | None):
    """``HuggingFaceLLM`` loading the model folder itself (``dtype`` None: transformers' default for it)."""
    import torch
    from llama_index.llms.huggingface import HuggingFaceLLM

    llm = HuggingFaceLLM(
        model_name=path,
        tokenizer_name=path,
        max_new_tokens=cfg.synth.llm.max_new_tokens,
        context_window=2048,
        generate_kwargs={"do_sample": False, "temperature": None, "top_p": None, "top_k": None},
        device_map="cpu",
        model_kwargs={"dtype": getattr(torch, dtype)} if dtype else {},
    )
    llm.completion_to_prompt = lambda text: chat_prompt(llm._tokenizer, [{"role": "user", "content": text}])
    return llm


def run_llamaindex(cfg, llm, chunks: list[dict]) -> tuple[tuple[float, float], list[list[str]], int]:
    """((wall, CPU) seconds, questions per chunk as LlamaIndex keeps them, raw replies): one ``complete`` per chunk."""
    from llama_index.core.evaluation.dataset_generation import DEFAULT_QUESTION_GENERATION_PROMPT
    from llama_index.core.schema import MetadataMode, TextNode

    tokenizer = llm._tokenizer
    n = 1  # num_questions_per_chunk
    query = (
        f"You are a Teacher/ Professor. Your task is to setup {n} questions for an upcoming quiz/examination. "
        "The questions should be diverse in nature across the document. Restrict the questions to the context "
        'information provided."'
    )
    nodes = [TextNode(text=c["text"], id_=c["id"]) for c in chunks]
    questions: list[list[str]] = []
    tokens = 0
    started, cpu = time.perf_counter(), time.process_time()
    for node in nodes:
        prompt = DEFAULT_QUESTION_GENERATION_PROMPT.format(
            context_str=node.get_content(metadata_mode=MetadataMode.NONE), query_str=query
        )
        response = llm.complete(prompt)
        reply = str(response).strip()
        tokens += len(tokenizer(response.text, add_special_tokens=False)["input_ids"])
        lines = [re.sub(r"^\d+[\).\s]", "", line).strip() for line in reply.split("\n")]
        questions.append([line for line in lines if line])
    return (time.perf_counter() - started, time.process_time() - cpu), questions, tokens


def quality(cfg, retriever, chunks: list[dict], queries: list[str]) -> dict[str, float]:
    """Question rate, copy rate and round-trip hit@k of one query per chunk ("" = none)."""
    k = cfg.synth.round_trip_top_k or 10
    asked = [(q, c) for q, c in zip(queries, chunks, strict=True) if q]
    ranks = retriever.ranks([q for q, _ in asked], [c["id"] for _, c in asked]) if asked else []
    n = len(chunks)
    return {
        "questions": sum(is_question(q) for q, _ in asked) / n,
        "copies": sum(copies_passage(q, c["text"], cfg.synth.copy_ngram) for q, c in asked) / n,
        "hit": sum(r <= k for r in ranks) / n,
    }


def main(args: argparse.Namespace) -> None:
    logging.basicConfig(level=logging.WARNING)
    cfg = load_config(args.config)
    targets, corpus = synthesis_targets(cfg)
    chunks = targets[: args.chunks]
    path = resolve_model(cfg.synth.llm.model)
    forced = None if args.precision == "default" else args.precision
    model, tokenizer = load_generator(path, dtype=forced or inference_dtype(cfg.synth.llm.dtype))
    print(
        f"{len(chunks)} chunks of {len(corpus)} ({len(targets)} synthesis targets), {cfg.synth.llm.model}, "
        f"batch {cfg.synth.llm.batch_size}, max_new_tokens {cfg.synth.llm.max_new_tokens}, greedy; "
        f"model load excluded; ragtune in {model.dtype}"
    )
    rows: list[tuple[str, tuple[float, float], list[str], str]] = []

    def done(name: str, seconds: tuple[float, float], queries: list[str], note: str) -> None:
        rows.append((name, seconds, queries, note))
        print(f"{name}: {seconds[0]:.1f} s wall, {seconds[1]:.1f} s CPU, {note}", flush=True)

    seconds, texts, tokens = run_ragtune(cfg, model, tokenizer, chunks, stop=True)
    stopped = [first_question(t) for t in texts]
    done("ragtune", seconds, stopped, f"{model.dtype}; {tokens} tokens")
    if not args.skip_llamaindex:
        llm = load_llamaindex(cfg, path, forced)
        seconds_li, questions, tokens_li = run_llamaindex(cfg, llm, chunks)
        extra = sum(max(len(q) - 1, 0) for q in questions)
        first = [q[0] if q else "" for q in questions]
        note = f"{llm._model.dtype}; {tokens_li} tokens; +{extra} more lines kept as questions"
        done("LlamaIndex", seconds_li, first, note)
        del llm
    if not args.skip_no_stop:
        seconds_full, texts_full, tokens_full = run_ragtune(cfg, model, tokenizer, chunks, stop=False)
        full = [first_question(t) for t in texts_full]
        done("ragtune, no early stop", seconds_full, full, f"{tokens_full} tokens")
        changed = sum(a != b for a, b in zip(stopped, full, strict=True))
        print(f"early stop: parsed queries changed for {changed} of {len(chunks)} chunks (must be 0)")
    if not args.skip_no_prefix:
        seconds_np, texts_np, tokens_np = run_ragtune(cfg, model, tokenizer, chunks, stop=True, share_prefix=False)
        plain = [first_question(t) for t in texts_np]
        done("ragtune, no shared prefix", seconds_np, plain, f"{model.dtype}; {tokens_np} tokens")
        changed = sum(a != b for a, b in zip(stopped, plain, strict=True))
        print(f"shared prefix: parsed queries changed for {changed} of {len(chunks)} chunks (float rounding only)")

    from ragtune.pipeline.retrieval import DenseRetriever

    retriever = DenseRetriever.load(cfg.synth.round_trip_model, corpus)
    k = cfg.synth.round_trip_top_k or 10
    n = len(chunks)
    print(
        f"\n| side | wall s | CPU s | chunks/s (wall) | chunks/s (CPU) | question rate | copy rate | hit@{k} | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (wall, cpu), queries, note in rows:
        q = quality(cfg, retriever, chunks, queries)
        print(
            f"| {name} | {wall:.1f} | {cpu:.1f} | {n / wall:.3f} | {n / cpu:.3f} | {q['questions']:.2f} "
            f"| {q['copies']:.2f} | {q['hit']:.2f} | {note} |"
        )

    def ratio(a: int, b: int) -> str:
        return f"{rows[a][1][0] / rows[b][1][0]:.2f}x wall, {rows[a][1][1] / rows[b][1][1]:.2f}x CPU"

    names = [row[0] for row in rows]
    if "LlamaIndex" in names:
        print(f"\nragtune vs LlamaIndex, chunks/s: {ratio(names.index('LlamaIndex'), 0)} (target >= 5x)")
    if "ragtune, no early stop" in names:
        print(f"early stop vs none, chunks/s: {ratio(names.index('ragtune, no early stop'), 0)}")
    if "ragtune, no shared prefix" in names:
        print(f"shared prefix vs none, chunks/s: {ratio(names.index('ragtune, no shared prefix'), 0)}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min)")


if __name__ == "__main__":
    main(make_parser().parse_args())
