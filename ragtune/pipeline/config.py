"""Typed configuration: one YAML per domain drives every stage.

The YAML is validated once into :class:`RagtuneConfig`. Unknown or misspelled keys are errors that
name their dotted path; command-line overrides use dotted keys (``embed.epochs=3``). Each training
section has a ``trainer:`` mapping passed through untouched to the library's training arguments, so
the hundreds of trainer fields are not re-declared here.

Example:
    >>> cfg = load_config("configs/tiny.yaml", ["embed.epochs=2"])
    >>> cfg.embed.epochs
    2.0
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
import urllib.parse
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

ENV_VAR_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
SECRET_QUERY_WORDS = ("key", "token", "secret", "password", "auth", "signature", "sig")
# trainer settings that send data or credentials off the machine; ragtune has no setting enabling them
OFF_MACHINE_TRAINER_KEYS = ("push_to_hub", "hub_token", "hub_model_id", "hub_strategy", "hub_private_repo")


def url_credentials(url: str) -> list[str]:
    """The secrets inside ``url``: its password and the values of secret-looking query parameters.

    Example:
        >>> url_credentials("https://bob:hunter2@llm.example/v1?api_key=abc&x=1")
        ['hunter2', 'abc']
    """
    parts = urllib.parse.urlsplit(url)
    found = [parts.password] if parts.password else []
    query = urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    return found + [v for k, v in query if v and any(w in k.lower() for w in SECRET_QUERY_WORDS)]


def redact_url(url: str) -> str:
    """``url`` with its user:password and secret-looking query values replaced by ``***``.

    Example:
        >>> redact_url("https://bob:hunter2@llm.example/v1?api_key=abc&x=1")
        'https://***@llm.example/v1?api_key=***&x=1'
    """
    parts = urllib.parse.urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        netloc = "***@" + netloc.rsplit("@", 1)[1]
    query = [
        (k, "***" if any(w in k.lower() for w in SECRET_QUERY_WORDS) else v)
        for k, v in urllib.parse.parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=urllib.parse.urlencode(query, safe="*")))


class ConfigError(ValueError):
    """A config file or override is invalid; the message names the file and the dotted key."""


class Section(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LLMConfig(Section):
    """One LLM backend: query generation, the RAFT teacher and the optional judge all use this."""

    provider: Literal["extractive", "local", "openai"] = Field(
        "extractive",
        description="extractive: no LLM, deterministic (offline runs, tests); local: a transformers "
        "model with batched generation; openai: any OpenAI-compatible endpoint (OpenAI, vLLM, Ollama, TGI).",
    )
    model: str = Field(
        "bundled:smollm2-135m-instruct",
        description="Model reference: for local a bundled:<name>, hub id or path; for openai the served model name.",
    )
    base_url: str | None = Field(None, description="openai: endpoint base URL, e.g. http://localhost:8000/v1.")
    api_key_env: str | None = Field(
        None,
        description="openai: NAME of the environment variable holding the API key "
        "(the key itself never appears in config).",
    )
    concurrency: int = Field(16, ge=1, description="openai: requests in flight at once.")
    requests_per_minute: float | None = Field(None, gt=0, description="openai: rate limit; null for none.")
    max_retries: int = Field(5, ge=0, description="openai: retries on 429/5xx/timeouts/connection errors.")
    timeout_s: float = Field(60.0, gt=0, description="openai: per-request timeout in seconds.")
    backoff_base_s: float = Field(
        1.0, gt=0, description="openai: first retry delay; doubles each retry (Retry-After wins)."
    )
    max_retry_after_s: float = Field(
        120.0,
        gt=0,
        description="openai: longest Retry-After honoured; a longer one fails the item at once (a rerun retries it).",
    )
    max_failed_fraction: float = Field(
        0.1,
        ge=0,
        le=1,
        description="Fail the stage when more than this share of the calls in one batch fail "
        "(finished calls stay cached; a rerun retries only the failed ones).",
    )
    batch_size: int = Field(8, ge=1, description="local: prompts per generate() call (left-padded).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="local: the weights' precision. auto: bf16 where the hardware has native bf16 math (a "
        "bf16-capable GPU, a CPU with AVX512-BF16), else fp32; on the project's 2-core Xeon bf16 synthesised the "
        "demo's queries twice as fast with the same question rate and round-trip hit@10.",
    )
    max_new_tokens: int = Field(128, ge=1, description="Completion length cap.")
    temperature: float = Field(0.0, ge=0, description="0 means greedy.")
    budget_tokens: int | None = Field(None, ge=0, description="Stop cleanly before total tokens would exceed this.")
    budget_usd: float | None = Field(
        None, ge=0, description="Stop cleanly before the cost would exceed this (needs prices)."
    )
    price_prompt_per_1k: float = Field(0.0, ge=0, description="USD per 1,000 prompt tokens.")
    price_completion_per_1k: float = Field(0.0, ge=0, description="USD per 1,000 completion tokens.")
    dry_run: bool = Field(False, description="Print the number of calls and estimated tokens and cost; call nothing.")

    @field_validator("api_key_env")
    @classmethod
    def _env_var_name(cls, value: str | None) -> str | None:
        # the message never repeats the value: it may be a pasted key
        if value is not None and (not ENV_VAR_NAME.fullmatch(value) or (len(value) >= 32 and "_" not in value)):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, _), e.g. OPENAI_API_KEY, "
                "not the key itself; the value given is not shown"
            )
        return value


class RunConfig(Section):
    name: str = Field(
        ...,
        description="Run name; the run directory is <root>/<name>. One path component: letters, digits, "
        "'.', '_' and '-', starting with a letter or digit.",
    )
    root: str = Field("runs", description="Folder holding run directories (relative to the working directory).")
    seed: int = Field(42, description="Seed for every random choice in every stage.")
    remote_trackers: list[str] = Field(
        default_factory=list,
        description="Trackers that send run data off the machine (wandb, mlflow, comet_ml, ...) that a "
        "*.trainer.report_to may name; tensorboard (local files) needs no entry.",
    )
    score_block_mb: float = Field(
        256,
        gt=0,
        description="Memory bound of exact search: the largest queries x corpus float32 score matrix (MiB) a "
        "search, round trip or evaluation holds at once; queries are scored in blocks that fit.",
    )

    @field_validator("name")
    @classmethod
    def _one_safe_component(cls, value: str) -> str:
        if not RUN_NAME.fullmatch(value):
            raise ValueError(
                f"{value!r} is not a single safe folder name (letters, digits, '.', '_', '-', starting with "
                "a letter or digit; no '/', '..' or absolute path)"
            )
        return value


class DataConfig(Section):
    docs: str | None = Field(None, description="Folder of documents to ingest recursively.")
    extensions: list[str] = Field(
        [".txt", ".md", ".html", ".htm", ".pdf", ".json", ".jsonl"], description="File types to ingest."
    )
    json_text_field: str = Field("text", description="Field holding the text in .json / .jsonl documents.")
    chunk_size: int = Field(256, ge=16, description="SentenceSplitter chunk size in tokens.")
    chunk_overlap: int = Field(32, ge=0, description="SentenceSplitter overlap in tokens.")
    questions: str | None = Field(
        None, description="Human-labelled questions (ragtune JSONL: id, question, doc_ids, answer, evidence)."
    )
    beir: str | None = Field(None, description="BEIR-layout folder (corpus.jsonl, queries.jsonl, qrels/<split>.tsv).")
    beir_splits: list[str] = Field(["test"], description="BEIR qrels files to import.")
    llamaindex_dataset: str | None = Field(None, description="LlamaIndex EmbeddingQAFinetuneDataset JSON to import.")

    @model_validator(mode="after")
    def _overlap_below_size(self) -> DataConfig:
        if self.chunk_overlap >= self.chunk_size:
            raise ValueError("chunk_overlap must be smaller than chunk_size")
        return self


class SplitConfig(Section):
    eval_fraction: float = Field(0.5, gt=0, lt=1, description="Share of source documents whose queries are held out.")
    seed: int = Field(
        13, description="Seed of the document split (kept apart from run.seed so training seeds do not move it)."
    )
    eval_docs_from: Literal["human", "all"] = Field(
        "human",
        description="human: held-out documents are drawn among those that human questions cite "
        "(so eval is human-written); all: among all documents.",
    )
    human_train: bool = Field(
        True,
        description="Train on the human questions of training documents. false: the no-labels mode, in which "
        "stage 1 learns from synthetic queries alone; those questions are dropped (data report: human_unused) "
        "and only the held-out ones are used, for evaluation.",
    )
    dev_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of training documents whose synthetic queries pass BM25's round trip "
        "(synth.eval_round_trip) instead of the base embedder's, so that a dev slice can judge the base "
        "embedder without labels: embed, rerank, raft and gpl dev_fraction up to this value hold out only such "
        "queries (and human ones). 0: every training query is filtered by the base embedder.",
    )
    dev_min_queries: int = Field(
        30,
        ge=0,
        description="With no labelled question on the dev documents (split.dev_fraction), synthesis gives them "
        "just enough targets for this many queries (at the yield measured on the held-out share, with "
        "synth.held_out_margin), before the training share, so every promotion gate compares on a slice that can "
        "show a difference. 0: dev documents get only what the round robin over all training documents gives "
        "them. A stage whose dev_fraction is below split.dev_fraction reads part of them.",
    )


class SynthConfig(Section):
    enabled: bool = Field(True, description="Generate synthetic queries for train-split chunks.")
    queries_per_chunk: int = Field(1, ge=1, description="Queries asked for per chunk.")
    max_chunks: int | None = Field(
        None,
        ge=1,
        description="Cap on chunks to generate for (null: all), taken from every document in turn (a seeded "
        "stream of its own), so a small cap still covers many documents. With no labelled question held out, "
        "held-out documents get just enough of them for eval.min_queries (see held_out_yield), dev documents "
        "enough for split.dev_min_queries, and training documents the rest.",
    )
    held_out_yield: float = Field(
        0.4,
        gt=0,
        le=1,
        description="Kept queries per chunk assumed when sizing the first round of held-out synthesis (used only "
        "when no labelled question is held out), or of the dev share when there is no held-out share; later "
        "rounds, and a dev share after a held-out one, use the yield measured so far.",
    )
    held_out_margin: float = Field(
        1.25,
        ge=1,
        description="Factor on the chunks the yield says eval.min_queries (held-out share) or "
        "split.dev_min_queries (dev share) needs (a round that falls short costs another round).",
    )
    prompt: str | None = Field(
        None, description="Path to a prompt template replacing the built-in one ({examples}, {passage}, {n})."
    )
    examples: list[dict[str, str]] = Field(
        default_factory=list,
        description="Few-shot examples: [{passage: ..., query: ...}] (the built-in ones when empty).",
    )
    min_words: int = Field(3, ge=1, description="Drop queries shorter than this.")
    max_words: int = Field(25, ge=1, description="Drop queries longer than this.")
    near_duplicate_threshold: float = Field(
        0.85, gt=0, le=1, description="Word-set Jaccard above which a query is a near duplicate."
    )
    copy_ngram: int = Field(8, ge=3, description="Drop queries that copy this many consecutive words of their chunk.")
    round_trip_top_k: int | None = Field(
        10,
        ge=1,
        description="Keep a training query only if the base embedder ranks its chunk in the top k (null: off, "
        "for held-out queries too).",
    )
    eval_round_trip: Literal["bm25", "none"] = Field(
        "bm25",
        description="Filter of held-out synthetic queries (made when no human question is held out): bm25: BM25 "
        "must rank the query's chunk in its top round_trip_top_k; none: no round trip. Never an embedder: "
        "eval would be chosen by the model it judges.",
    )
    resample_candidates: int = Field(
        4,
        ge=0,
        description="Local provider, one query per chunk: samples drawn when the greedy query fails a filter "
        "(0: greedy only, about 3x faster).",
    )
    round_trip_model: str = Field(
        "bundled:minilm-l6", description="Base embedder for the round-trip filter (bundled:<name>, hub id or path)."
    )
    llm: LLMConfig = Field(default_factory=LLMConfig, description="The LLM backend that writes the queries.")


class LoraConfig(Section):
    r: int = Field(16, ge=1, description="LoRA rank: the inner dimension of each low-rank update.")
    alpha: int = Field(32, ge=1, description="LoRA scaling: updates are multiplied by alpha / r.")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA layers' input.")
    target_modules: list[str] | None = Field(None, description="null: the stage's default modules.")


class EmbedConfig(Section):
    base_model: str = Field("bundled:minilm-l6", description="Embedder to start from: bundled:<name>, hub id or path.")
    method: Literal["full", "lora", "linear_adapter"] = Field(
        "full",
        description="full fine-tuning; lora adapter on the encoder; query-side linear adapter over a frozen base.",
    )
    loss: Literal["mnrl", "cached_mnrl", "gist", "triplet"] = Field("mnrl", description="Training loss.")
    matryoshka_dims: list[int] | None = Field(
        None, description="Wrap the loss in MatryoshkaLoss with these dimensions."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA settings (method: lora).")
    epochs: float = Field(1.0, gt=0, description="Passes over the training pairs.")
    batch_size: int = Field(
        32, ge=2, description="Pairs per batch (per process); the other passages of a batch are its negatives."
    )
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate.")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: epochs decide).")
    k_values: list[int] = Field([1, 3, 5, 10], description="Cut-offs for hit@k and recall@k.")
    dev_fraction: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="Share of TRAIN documents whose queries form a dev slice for keeping the best checkpoint "
        "by nDCG@10 (0: no selection; the eval split is never used for selection).",
    )
    pseudo_queries: int = Field(
        1000,
        ge=0,
        description="Inverse-cloze pairs added to the training pairs: up to this many chunks of documents no "
        "held-out (eval or dev) query cites each give (one of its sentences, the chunk without it). 0: none.",
    )
    synthetic_queries: bool = Field(
        True,
        description="Train on the data stage's synthetic queries (true), or only on labelled queries and "
        "inverse-cloze pairs (false); synthetic queries still feed the dev slice and the eval split either way.",
    )
    hard_negatives: Literal["none", "bm25"] = Field(
        "none",
        description="none: in-batch negatives only; bm25: each pair also gets one of the 10 chunks BM25 ranks "
        "highest for its query (never one of the positive's document), meant to teach what BM25 gets wrong. "
        "Measured on a held-out corpus's human queries it hurt (docs/embed.md), so none is the default.",
    )
    tsdae_steps: int = Field(
        0,
        ge=0,
        description="TSDAE steps (denoising auto-encoder, embed.batch_size sentences each) on sentences of chunks "
        "no held-out query cites, before the pairs are trained on: unsupervised domain adaptation. 0: off; "
        "embed.method full only.",
    )
    dev_pool_top_k: int | None = Field(
        50,
        ge=10,
        description="Checkpoint selection ranks the dev queries among a fixed pool: their positives plus the "
        "base model's top k for each (one encode of the pool per evaluation, not of the corpus). null: the "
        "whole corpus. The base and final dev figures (the promotion gate) are always over the whole corpus.",
    )
    base_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the starting weights mixed back into the trained ones before the model is saved "
        "(weight-space ensemble, WiSE-FT): w = share x start + (1 - share) x trained. 0: the weights as trained. "
        "On a held-out corpus's human queries 0.5 kept each of twelve synthetic-query recipes at or above untrained "
        "hybrid retrieval (docs/embed.md); with labelled in-domain questions it gives up part of the gain. "
        "embed.method full or linear_adapter.",
    )
    trainer: dict[str, Any] = Field(default_factory=dict, description="Passed to SentenceTransformerTrainingArguments.")


class MiningConfig(Section):
    range_min: int = Field(0, ge=0, description="Skip the top range_min candidates.")
    range_max: int = Field(50, ge=1, description="Consider candidates up to this rank.")
    max_score: float | None = Field(
        None, description="Drop candidates scoring above this (likely unlabelled positives)."
    )
    relative_margin: float | None = Field(
        0.05, ge=0, description="Drop candidates scoring above (1 - margin) x the positive's score."
    )
    num_negatives: int = Field(5, ge=1, description="Hard negatives kept per query.")
    sampling_strategy: Literal["top", "random"] = Field(
        "top", description="Which of the filtered candidates become negatives: the hardest, or a seeded random draw."
    )
    random_negatives: int = Field(
        0,
        ge=0,
        description="Easy negatives per query drawn from the whole corpus (never a labelled chunk or its "
        "neighbour) and trained on beside the hard ones.",
    )
    use_faiss: bool | None = Field(None, description="null: faiss when the corpus is large.")
    audit_samples: int = Field(
        20, ge=0, description="(query, positive, negative) triples written for a person to read."
    )


QUERY_LIKELIHOOD_PROMPT = "Passage: {passage}\nPlease write a question based on this passage.\nQuestion:"


class QueryLikelihoodConfig(Section):
    """The query-likelihood reranker (``rerank.kind: query_likelihood``): a causal LM scores a passage by the
    mean log-probability of the query's tokens after a prompt holding the passage (UPR)."""

    generator: str = Field(
        "bundled:smollm2-135m-instruct", description="Causal LM that scores: bundled:<name>, hub id or path."
    )
    prompt: str = Field(
        QUERY_LIKELIHOOD_PROMPT,
        description="Text before the query; {passage} marks the passage (UPR's wording by default).",
    )
    max_length: int = Field(256, ge=16, description="Passage tokens the LM reads (a longer passage is cut).")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="Weights' precision: auto = bf16 where the hardware has native bf16 math, else fp32."
    )
    prefix_cache_mb: int = Field(
        1024,
        ge=0,
        description="Memory (MB) for passages' key/value prefixes: a passage's prompt is read once and every later "
        "query over it costs only its own tokens (same scores); least recently used out first; 0 reads every "
        "pair whole. About 23 KB per passage token for the bundled SmolLM2 in bf16.",
    )
    temperature: float = Field(
        0.1,
        gt=0,
        description="Training loss: softmax over each list's scores divided by this (mean token log-probabilities "
        "of a query's candidates differ by tenths of a nat).",
    )
    lora: LoraConfig = Field(
        default_factory=lambda: LoraConfig(r=8, alpha=16, dropout=0.0, target_modules=["q_proj", "v_proj"]),
        description="LoRA adapter trained on the mined lists (rerank.max_steps > 0).",
    )
    negatives: Literal["retriever", "scorer"] = Field(
        "retriever",
        description="A training list's negatives: the tuned embedder's highest-ranked mined candidates (retriever), "
        "or those the untrained LM itself scores highest among the embedder's top scorer_pool (scorer: negatives "
        "hard for the model being trained; one scoring pass over the pool, cached with the untrained scores).",
    )
    scorer_pool: int = Field(
        20, ge=2, description="negatives: scorer: the embedder's mined candidates per query the untrained LM scores."
    )

    @field_validator("prompt")
    @classmethod
    def _one_passage_slot(cls, prompt: str) -> str:
        if prompt.count("{passage}") != 1:
            raise ValueError(f"must contain {{passage}} exactly once (where the passage goes): {prompt!r}")
        return prompt


class CrossEncoderConfig(Section):
    """The cross-encoder reranker (``rerank.kind: cross_encoder``): a sentence-transformers ``CrossEncoder`` with one
    logit, trained on the mined hard negatives. Read only for that kind (and, for ``gpl.teacher: base``, its
    untrained form)."""

    base_model: str = Field(
        "bundled:minilm-l6",
        description="Cross-encoder base (a fresh one-logit head on an encoder, or a hub cross-encoder); with "
        "start_from: tuned_embedder only the untrained reranker (assemble.reranker: base) starts from it.",
    )
    start_from: Literal["base_model", "tuned_embedder"] = Field(
        "tuned_embedder",
        description="Encoder the cross-encoder starts from: rerank.cross_encoder.base_model, or stage 1's tuned "
        "embedder (which already knows the domain's words).",
    )
    head: Literal["classifier", "mean_pool"] = Field(
        "mean_pool",
        description="What scores the encoded pair: classifier (transformers' [CLS] pooler + one logit, as hub "
        "cross-encoders have) or mean_pool (a zero-initialised linear layer on the mean token state). A base "
        "that already is a cross-encoder keeps its own head.",
    )
    loss: Literal["bce", "lambda", "listnet", "mnrl"] = Field(
        "bce",
        description="bce: labelled pairs; lambda / listnet: listwise over each query's positives and negatives; "
        "mnrl: in-batch softmax (costly: every query against every passage of the batch).",
    )
    warm_start: Literal["none", "margin_mse", "mse"] = Field(
        "none",
        description="Before the hard-negative phase, distil the tuned embedder's scores over each training "
        "query's top rerank.cross_encoder.warm_start_pool chunks: margin_mse fits score differences, mse each score.",
    )
    warm_start_steps: int = Field(0, ge=0, description="Optimizer steps of the warm start (0: none).")
    warm_start_pool: int = Field(8, ge=2, description="Candidates per query the warm start distils over.")
    head_learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate of a fresh scoring head (null: rerank.learning_rate); a zero-initialised "
        "head passes no gradient to the encoder until it has grown.",
    )
    max_length: int = Field(256, ge=16, description="Tokens of (query, passage) the cross-encoder reads.")


# Keys of ``rerank`` that moved into ``rerank.cross_encoder``: an old config naming one is told where it went.
MOVED_KEYS = {f"rerank.{key}": f"rerank.cross_encoder.{key}" for key in CrossEncoderConfig.model_fields}


class RerankConfig(Section):
    kind: Literal["query_likelihood", "cross_encoder"] = Field(
        "query_likelihood",
        description="query_likelihood: a causal LM scores how likely a passage makes the query (ranks before "
        "training; rerank.query_likelihood); cross_encoder: a sentence-transformers CrossEncoder "
        "(rerank.cross_encoder).",
    )
    query_likelihood: QueryLikelihoodConfig = Field(
        default_factory=QueryLikelihoodConfig, description="The query-likelihood reranker (kind: query_likelihood)."
    )
    cross_encoder: CrossEncoderConfig = Field(
        default_factory=CrossEncoderConfig, description="The cross-encoder reranker (kind: cross_encoder)."
    )
    mining: MiningConfig = Field(
        default_factory=MiningConfig, description="Hard-negative mining with the tuned embedder."
    )
    pseudo_queries: int = Field(
        1000,
        ge=0,
        description="Inverse-cloze pseudo-queries (one sentence of a chunk, the chunk its positive) added to a "
        "cross-encoder's training queries (kind: cross_encoder), drawn from chunks of documents no eval or dev "
        "query cites (0: none). Either kind trains on them alone when the data stage left no train-split query.",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the mined training rows (max_steps wins when set).")
    batch_size: int = Field(16, ge=1, description="Training rows per step (a listwise row holds a whole list).")
    learning_rate: float | None = Field(
        None,
        gt=0,
        description="Peak learning rate (null: 1e-4 for the query-likelihood LoRA adapter; 1e-3 for a fresh head "
        "on an encoder, which barely moves at the usual 2e-5 within a CPU budget; 2e-5 when "
        "rerank.cross_encoder.base_model already is a cross-encoder).",
    )
    max_steps: int = Field(-1, description="Optimizer steps of the hard-negative phase (-1: rerank.epochs).")
    curve_points: int = Field(
        4, ge=0, description="Dev-slice evaluations during training for the learning curve (0: none)."
    )
    keep_best: bool = Field(
        True,
        description="Keep the weights of the learning-curve point with the best fused dev nDCG@10 (a later "
        "point wins a tie; the start counts), not those of the last step. Needs a dev slice and curve_points.",
    )
    retrieve_top_k: int = Field(20, ge=1, description="Held-out evaluation reranks the tuned retriever's top k.")
    fusion_weight: Annotated[float, Field(ge=0, le=1)] | Literal["auto"] = Field(
        "auto",
        description="Serving score = w·reranker + (1−w)·retriever (each min-max scaled per query); 1 = plain "
        "reranking. auto: the smallest w in 0, 0.1, …, 1 whose dev nDCG@10 is within one standard error of the "
        "best (0, the retriever's order, when there is no dev slice).",
    )
    dev_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of train documents whose queries are kept out of reranker training to choose the "
        "fusion weight on (split like embed.dev_fraction; the same value and seed give the same slice).",
    )
    trainer: dict[str, Any] = Field(default_factory=dict, description="Passed to CrossEncoderTrainingArguments.")


class GplConfig(Section):
    """The optional GPL round (Generative Pseudo Labeling, Wang et al. 2022): stage 1's embedder retrains on a
    cross-encoder teacher's score margins over (query, positive, hard negative) triples, after stage 2."""

    enabled: bool = Field(
        False,
        description="Run the GPL round (`ragtune gpl`, and `ragtune run` between rerank and raft). false: the stage "
        "records nothing and stage 1's model stays the tuned embedder.",
    )
    teacher: str = Field(
        "tuned",
        description="Reranker that labels the triples: tuned (stage 2's rerank/model), base (the untrained "
        "reranker of rerank.kind: with query likelihood, the LM with the stage's prompt, which ranks before any "
        "training), hybrid (BM25 + embed.base_model fused by reciprocal rank, as assemble.retrieval: hybrid serves "
        "them: a passage scores the fused rank it would get among the corpus chunks; no LM, no labels), or a "
        "cross-encoder bundled:<name>, hub id or path.",
    )
    max_length: int = Field(256, ge=16, description="Tokens of (query, passage) the teacher reads.")
    teacher_batch_size: int = Field(64, ge=1, description="(query, passage) pairs per teacher predict() batch.")
    negatives_per_query: int = Field(
        4,
        ge=1,
        description="Negatives per (query, positive): a seeded random draw from the top gpl.negatives_top_k of the "
        "ranking gpl.negatives_from names, its labelled relevant chunks excluded (GPL samples from the top 50).",
    )
    negatives_top_k: int = Field(50, ge=1, description="Depth of the ranking negatives come from.")
    negatives_from: Literal["embedder", "teacher"] = Field(
        "embedder",
        description="Ranking the negatives are drawn from: embedder (stage 1's tuned embedder, GPL's draw from the "
        "student's retriever) or teacher (the teacher's own ranking of the corpus: gpl.teacher hybrid only, the "
        "chunks BM25 and the base embedder rank highest).",
    )
    pseudo_queries: int = Field(
        1000,
        ge=0,
        description="Inverse-cloze queries added to the train-split queries (as embed.pseudo_queries: a sentence "
        "of a chunk of a document no eval or dev query cites, its chunk without the sentence the positive). 0: none.",
    )
    label_scale: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        "auto",
        description="Multiplier of the teacher's margins score(q, pos) - score(q, neg). The student scores by cosine "
        "(ragtune's retrieval normalises embeddings), whose margins lie in [-2, 2]; auto scales the largest |margin| "
        "to 2, keeping sign and zero (the paper's students score by dot product and take raw margins); a number is "
        "used as is (1: raw margins). A teacher whose margins all stay below 1e-3 is refused either way.",
    )
    epochs: float = Field(1.0, gt=0, description="Passes over the triples (max_steps wins when set).")
    batch_size: int = Field(32, ge=1, description="Triples per batch (per process); no in-batch negatives.")
    group_by_length: bool = Field(
        True,
        description="Put triples of similar length in one batch (blocks of 50 batches sorted by each triple's "
        "longest text, then the batches in a seeded random order), so less of each batch is padding. MarginMSE has "
        "no in-batch negatives, so what a triple contributes does not change. false: a plain seeded random order.",
    )
    learning_rate: float = Field(2e-5, gt=0, description="Peak learning rate.")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: epochs decide).")
    checkpoint_steps: int = Field(
        500,
        ge=0,
        description="Save a checkpoint to gpl/checkpoints every this many steps; a killed run with the same config "
        "and inputs resumes from the last one and reuses its teacher labels (0: none). Deleted once the model is "
        "saved.",
    )
    base_share: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="Share of the round's start (stage 1's model) mixed back into the trained weights before the "
        "model is saved, as embed.base_share: w = share x start + (1 - share) x trained. 0: the weights as "
        "trained. With the hybrid teacher on a held-out corpus's human queries, 0.5 kept the dense gain and put "
        "the model back above untrained hybrid retrieval inside hybrid (docs/embed.md).",
    )
    trainer: dict[str, Any] = Field(default_factory=dict, description="Passed to SentenceTransformerTrainingArguments.")

    @model_validator(mode="after")
    def _teacher_ranks_the_corpus(self) -> GplConfig:
        if self.negatives_from == "teacher" and self.teacher != "hybrid":
            raise ValueError(
                f"negatives_from: teacher needs a teacher that ranks the whole corpus (teacher: hybrid); teacher is "
                f"{self.teacher}: use negatives_from: embedder"
            )
        return self


class RaftConfig(Section):
    base_model: str = Field("bundled:smollm2-135m-instruct", description="Generator to tune.")
    oracle_fraction: float = Field(
        0.8, ge=0, le=1, description="Share of samples whose context holds the oracle chunk (P)."
    )
    no_oracle_target: Literal["memory", "abstain"] = Field(
        "abstain", description="Target when the oracle is left out: answer from memory (paper) or abstain."
    )
    target: Literal["reasoning", "quote_answer", "quote_span"] = Field(
        "reasoning",
        description="Form of the target answer: reasoning (the teacher's reasoning around its verified quotes, "
        "then the answer), quote_answer (the verified quotes alone, then the answer: fewer tokens to learn) or "
        "quote_span (the verified quotes, then the run of their words closest to the answer by token F1: an "
        "answer copied from the quote, not paraphrased; a quote sharing no word with the answer keeps the answer).",
    )
    distractor_pool: int = Field(20, ge=1, description="Retrieve this many candidates to draw hard distractors from.")
    dev_fraction: float = Field(
        0.2,
        ge=0,
        lt=1,
        description="Share of train documents whose questions (those with a reference answer) never become RAFT "
        "samples: after training, the base and the tuned generator answer them over the served context, and the "
        "promotion gate serves the tuned one only if its dev F1 is higher (split like embed.dev_fraction; 0: none).",
    )
    quote_sentences: int = Field(2, ge=1, description="Extractive teacher: oracle sentences to quote.")
    max_samples: int | None = Field(
        None, ge=1, description="Cap on RAFT samples built from train questions (null: every train question)."
    )
    synthetic_qa: int = Field(
        0,
        ge=0,
        description="Chunks of training documents (none that an eval or dev question cites) asked for one question "
        "with a short answer each, written by raft.qa_writer; an answer must be a verbatim span of its chunk. The "
        "pairs that pass become RAFT samples beside the train questions, past raft.max_samples (0: none).",
    )
    qa_writer: LLMConfig = Field(
        default_factory=LLMConfig,
        description="Who writes raft.synthetic_qa's pairs. extractive: cloze questions, no LLM (a sentence of the "
        "chunk with one answer-like span, a command, a number and its unit or a name, replaced by 'what'); local or "
        "openai: the LLM reads the chunk and copies the answer from it.",
    )
    teacher: LLMConfig = Field(
        default_factory=LLMConfig, description="The LLM backend that writes the chain-of-thought answers."
    )
    quantization: Literal["auto", "nf4", "none"] = Field("auto", description="auto: nf4 on CUDA, none on CPU.")
    lora: LoraConfig = Field(
        default_factory=lambda: LoraConfig(target_modules=["q_proj", "k_proj", "v_proj", "o_proj"]),
        description="LoRA settings of the generator's adapter (default: the attention projections).",
    )
    merge: bool = Field(False, description="Also save the adapter merged into a standalone model.")
    max_length: int = Field(1024, ge=64, description="Longest sample in tokens; longer samples are dropped.")
    epochs: float = Field(1.0, gt=0, description="Passes over the RAFT samples.")
    batch_size: int = Field(4, ge=1, description="Samples per batch (per process).")
    learning_rate: float = Field(2e-4, gt=0, description="Peak learning rate.")
    max_steps: int = Field(-1, description="Stop after this many steps (-1: epochs decide).")
    trainer: dict[str, Any] = Field(default_factory=dict, description="Passed to trl's SFTConfig.")


class AssembleConfig(Section):
    embedder: Literal["auto", "tuned", "base"] = Field(
        "auto", description="auto: the tuned embedder if it beat the base on the dev slice, else the base."
    )
    reranker: Literal["auto", "tuned", "base", "none"] = Field(
        "auto",
        description="auto: the tuned reranker if the dev slice gave it a fusion weight above 0, else none; base: "
        "the untrained reranker of rerank.kind (query likelihood: the LM with the stage's prompt; cross-encoder: "
        "rerank.cross_encoder.base_model) at the fusion weight stage 2 chose for it on the same dev slice.",
    )
    generator: Literal["auto", "tuned", "base", "extractive"] = Field(
        "auto",
        description="extractive: no LLM, the context sentence closest to the question under the served embedder. "
        "auto: whichever of base, tuned and extractive (with the quote assemble.quote allows) had the best dev "
        "answer F1 in the RAFT stage (base when it did not measure).",
    )
    quote: Literal["auto", "generator", "extractive"] = Field(
        "auto",
        description="Who writes the quote an LLM generator answers from. generator: the generator reasons and quotes "
        "(the RAFT format); extractive: the context sentence closest to the question under the served embedder (the "
        "extractive answerer's) is written in as the answer's quote, and the generator writes the final answer "
        "from it; auto: whichever the RAFT stage's dev check scored higher for the served generator (generator when "
        "it did not measure). No effect with generator: extractive.",
    )
    top_k: int = Field(10, ge=1, description="Chunks the retriever returns.")
    top_n: int = Field(
        3, ge=1, description="Chunks kept after reranking and given to the generator (RAFT samples use the same)."
    )
    max_new_tokens: int = Field(192, ge=1, description="Longest answer the generator writes, in tokens.")
    dtype: Literal["auto", "float32", "bfloat16"] = Field(
        "auto",
        description="The generator's weights when it answers (serving, eval, RAFT's dev check, the forgetting "
        "check): auto = bf16 where the hardware has native bf16 math (a LoRA adapter then stays unmerged, so its "
        "delta is not rounded away), else fp32.",
    )
    context_window: int = Field(2048, ge=256, description="Must fit the generator's positions.")
    vector_store: str = Field(
        "simple",
        description="Where the index lives: simple (LlamaIndex's in-memory store, JSON in index/, for small "
        "corpora), qdrant (Qdrant's embedded local mode in index/qdrant, no server), or the http(s):// URL of a "
        "running Qdrant server (collection ragtune-<run folder>, no credentials in the URL).",
    )
    retrieval: Literal["auto", "dense", "hybrid"] = Field(
        "auto",
        description="dense: the embedder alone; hybrid: BM25 and the embedder fused by reciprocal rank; auto: "
        "whichever (with whichever embedder assemble.embedder allows) had the best dev nDCG@10 in stage 1.",
    )
    hybrid_depth: int = Field(
        50, ge=1, description="hybrid: chunks each of BM25 and the embedder contributes before fusion (>= top_k)."
    )
    truncate_dim: int | None = Field(
        None,
        ge=1,
        description="Serve the embedder's vectors cut to their first truncate_dim dimensions and renormalised "
        "(sentence-transformers' truncate_dim): a smaller index and faster search, for an embedder trained with "
        "embed.matryoshka_dims. Checked against the embedder's dimension when it loads; null: the full dimension. "
        "Eval's configurations measure at it too, but for the untrained baselines (rag_only, rag_hybrid).",
    )

    @field_validator("vector_store")
    @classmethod
    def _known_store(cls, value: str) -> str:
        parts = urllib.parse.urlsplit(value)
        if value in ("simple", "qdrant"):
            return value
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise ValueError(f"{value!r} is not simple, qdrant or an http(s):// URL of a Qdrant server")
        if url_credentials(value) or parts.username:
            raise ValueError("credentials do not belong in the vector store URL (it is written to the run directory)")
        return value

    @model_validator(mode="after")
    def _hybrid_depth_covers_top_k(self) -> AssembleConfig:
        if self.retrieval != "dense" and self.hybrid_depth < self.top_k:
            raise ValueError(f"hybrid_depth ({self.hybrid_depth}) must be at least top_k ({self.top_k})")
        return self


class ProbeConfig(Section):
    close: list[tuple[str, str]] = Field(
        default_factory=list, description="Pairs that should embed close (codename, what it names)."
    )
    far: list[tuple[str, str]] = Field(default_factory=list, description="Pairs that should embed far apart.")


class EvalConfig(Section):
    configurations: list[str] = Field(
        ["rag_only", "rag_hybrid", "embed", "embed_rerank_untrained", "embed_rerank", "extractive", "full"],
        description="Named configurations to compare; custom ones are defined in `custom`. Built in: rag_only "
        "and rag_hybrid (the base embedder, dense and fused with BM25: the untrained baselines), embed, "
        "embed_rerank_untrained (the untrained reranker of rerank.kind at the fusion weight the dev slice chose for "
        "it), embed_rerank, extractive (embed_rerank's context answered by its best-matching sentence, no LLM: the "
        "floor a generator must clear) and full (retrieval mode as assemble.retrieval resolves it).",
    )
    custom: dict[str, AssembleConfig] = Field(
        default_factory=dict, description="Extra named combinations of components."
    )
    query_origin: Literal["human", "synthetic", "all", "auto"] = Field(
        "auto", description="Held-out queries to evaluate; auto: human ones when there are any."
    )
    k_values: list[int] = Field([1, 3, 5, 10], description="Cut-offs of the ranking metrics (10 is always added).")
    generation: bool = Field(True, description="Also generate answers (needs reference answers; off: retrieval only).")
    max_queries: int | None = Field(
        None, ge=1, description="Evaluate a seeded sample of this many held-out queries (null: all)."
    )
    generation_max_queries: int | None = Field(
        None,
        ge=1,
        description="Generate answers for a seeded sample of this many held-out queries (retrieval "
        "metrics still use every query; null: all). Generation dominates eval time on CPU.",
    )
    generation_batch_size: int = Field(
        8, ge=1, description="Prompts per left-padded generate() call when the harness generates answers."
    )
    generation_configurations: list[str] | None = Field(
        None,
        description="The configurations whose answers are generated and scored (the others get retrieval metrics "
        "alone). null: the ones the generation verdicts read (rag_only: plain RAG end to end; embed_rerank: the "
        "base generator over the tuned retrieval; extractive; full) and every custom configuration. The other "
        "built-ins differ from these in retrieval alone, which their retrieval metrics judge; each answered "
        "configuration costs two generation passes (with and without the evidence), the slow part on CPU.",
    )
    bootstrap_samples: int = Field(1000, ge=100, description="Resamples of the bootstrap intervals.")
    min_queries: int = Field(
        30,
        ge=1,
        description="Fewest held-out queries for a call on whether fine-tuning pays: with fewer, eval warns "
        "loudly and the report gives no such call (intervals from a handful of queries are too wide).",
    )
    probes: ProbeConfig = Field(
        default_factory=ProbeConfig, description="Text pairs whose similarity is reported for each embedder."
    )
    judge: LLMConfig | None = Field(None, description="Optional LLM judge of answers.")
    forgetting: bool = Field(
        True,
        description="When a RAFT generator is evaluated, also ask it and the base generator general-knowledge "
        "questions without context, and report the change in accuracy (did tuning cost what it knew?).",
    )
    forgetting_questions: str | None = Field(
        None,
        description="JSONL of {id, question, answers: [accepted answers]} for the forgetting check (null: the "
        "bundled set of 40 questions written by the team).",
    )
    forgetting_max_new_tokens: int = Field(24, ge=1, description="Completion cap of a forgetting-check answer.")

    @model_validator(mode="after")
    def _answered_configurations_exist(self) -> EvalConfig:
        known = {*self.configurations, *self.custom}
        unknown = [n for n in self.generation_configurations or () if n not in known]
        if unknown:
            raise ValueError(
                f"eval.generation_configurations: {', '.join(map(repr, unknown))} not in eval.configurations or "
                "eval.custom"
            )
        return self


class RagtuneConfig(Section):
    run: RunConfig = Field(description="The run: its name, seed and where its directory lives.")
    data: DataConfig = Field(default_factory=DataConfig, description="The documents, chunking and questions.")
    split: SplitConfig = Field(default_factory=SplitConfig, description="Which documents are held out for eval.")
    synth: SynthConfig = Field(default_factory=SynthConfig, description="Synthetic queries generated from the corpus.")
    embed: EmbedConfig = Field(default_factory=EmbedConfig, description="Stage 1: the embedder's fine-tuning.")
    rerank: RerankConfig = Field(default_factory=RerankConfig, description="Stage 2: the reranker.")
    gpl: GplConfig = Field(
        default_factory=GplConfig, description="Optional second round of stage 1 on a cross-encoder's margins (off)."
    )
    raft: RaftConfig = Field(default_factory=RaftConfig, description="Stage 3: RAFT data and the generator's adapter.")
    assemble: AssembleConfig = Field(default_factory=AssembleConfig, description="The served stack and its sizes.")
    eval: EvalConfig = Field(default_factory=EvalConfig, description="Plain RAG against the tuned stack.")

    @model_validator(mode="after")
    def _has_a_source(self) -> RagtuneConfig:
        if not (self.data.docs or self.data.beir or self.data.llamaindex_dataset):
            raise ValueError("data needs one of docs, beir or llamaindex_dataset")
        return self

    @model_validator(mode="after")
    def _trackers_stay_on_the_machine(self) -> RagtuneConfig:
        for name in ("embed", "rerank", "gpl", "raft"):
            trainer = getattr(self, name).trainer
            if "report_to" in trainer:
                check_trackers(name, trainer["report_to"], self.run.remote_trackers)
        return self


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is not a section")
        node = child
    node[keys[-1]] = value


def apply_overrides(tree: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` overrides to a raw config mapping; values are parsed as YAML scalars.

    Example:
        >>> apply_overrides({"embed": {"epochs": 1}}, ["embed.epochs=3", "run.name=x"])
        {'embed': {'epochs': 3}, 'run': {'name': 'x'}}
    """
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.subkey=value")
        key, raw = item.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def did_you_mean(key: str, known: Iterable[str]) -> str:
    """A ``"; did you mean 'x'?"`` hint naming the known key closest to ``key`` (difflib), or "".

    Example:
        >>> did_you_mean("chunk_sise", ["chunk_size", "chunk_overlap"])
        "; did you mean 'chunk_size'?"
    """
    close = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _section_at(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The config section class that holds the key at ``loc`` (a validation error's location), if any."""
    model: Any = RagtuneConfig
    for part in loc[:-1]:
        if isinstance(model, type) and issubclass(model, BaseModel):
            field = model.model_fields.get(str(part))
            if field is None:
                return None
            model = field.annotation
        elif typing.get_origin(model) is dict:
            model = typing.get_args(model)[1]  # a key of a mapping such as eval.custom
        else:
            return None
        # X | None and dict[str, X]: look through to the section X
        sections = [a for a in typing.get_args(model) if isinstance(a, type) and issubclass(a, BaseModel)]
        if typing.get_origin(model) is not dict and sections:
            model = sections[0]
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_errors(source: str, err: ValidationError) -> str:
    lines = [f"invalid config {source}:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden" and path in MOVED_KEYS:
            msg = f"moved to {MOVED_KEYS[path]}"
        elif e["type"] == "extra_forbidden":
            section = _section_at(e["loc"])
            hint = did_you_mean(str(e["loc"][-1]), section.model_fields) if section else ""
            msg = f"unknown key{hint or ' (misspelled?)'}"
        else:
            msg = e["msg"]
        if not e["loc"] and e["type"] == "value_error":  # a whole-config rule: its message names the keys
            lines.append(f"  {msg.removeprefix('Value error, ')}")
            continue
        lines.append(f"  {path}: {msg}")
    return "\n".join(lines)


def duplicate_key(document: yaml.Node | None) -> tuple[str, int, int] | None:
    """The first key a mapping of a composed YAML document holds twice: ``(dotted key, first line, second line)``.

    A plain YAML load keeps the last of two equal keys and drops the first without a word; this finds them
    before anything is constructed. Merge keys (``<<: *defaults``) are not duplicates: keys written beside
    one override what it merges, as YAML intends. A node reached twice through an alias is read once.

    Example:
        >>> duplicate_key(yaml.compose("embed:\\n  epochs: 1\\nrun: {}\\nembed:\\n  epochs: 2\\n"))
        ('embed', 1, 4)
        >>> duplicate_key(yaml.compose("embed:\\n  epochs: 1\\n  lr: 2\\n  epochs: 3\\n"))
        ('embed.epochs', 2, 4)
    """
    pending: list[tuple[yaml.Node, str]] = [(document, "")] if document is not None else []
    read: set[int] = set()
    while pending:
        node, path = pending.pop()
        if id(node) in read:
            continue
        read.add(id(node))
        children: list[tuple[yaml.Node, str]] = []
        if isinstance(node, yaml.MappingNode):
            lines: dict[tuple[str, str], int] = {}
            for key, value in node.value:
                if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
                    continue
                dotted, line = f"{path}.{key.value}" if path else key.value, key.start_mark.line + 1
                if (key.tag, key.value) in lines:
                    return dotted, lines[key.tag, key.value], line
                lines[key.tag, key.value] = line
                children.append((value, dotted))
        elif isinstance(node, yaml.SequenceNode):
            children = [(item, f"{path}[{i}]") for i, item in enumerate(node.value)]
        pending += reversed(children)  # depth first, in document order
    return None


def read_config_tree(path: Path) -> Any:
    """The YAML document of a config file, unvalidated; every way the file can be unusable is one line naming it.

    Raises:
        ConfigError: the file is missing, a folder, unreadable, not UTF-8 or not YAML, or holds a key twice.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"config {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config {path} is not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); save it as UTF-8"
        ) from None
    except OSError as e:
        raise ConfigError(f"config {path} cannot be read ({e.strerror or e})") from None
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if found := duplicate_key(node):
            key, first, second = found
            raise ConfigError(
                f"config {path}: key {key!r} appears twice, at lines {first} and {second} "
                "(the second would silently replace the first); keep one"
            )
        return loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as e:
        raise ConfigError(f"config {path} is not valid YAML: {e}") from None
    finally:
        loader.dispose()


def move_keys(tree: dict[str, Any]) -> dict[str, Any]:
    """Move the keys of :data:`MOVED_KEYS` to their new place in a raw config mapping (in place), for a run's
    ``config.resolved.yaml`` written before they moved; a user's own config is told where they went instead.

    Example:
        >>> move_keys({"rerank": {"max_length": 128, "kind": "cross_encoder"}})
        {'rerank': {'kind': 'cross_encoder', 'cross_encoder': {'max_length': 128}}}
    """
    for old, new in MOVED_KEYS.items():
        section, key = old.split(".")
        node = tree.get(section)
        if isinstance(node, dict) and key in node:
            _set_dotted(tree, new, node.pop(key))
    return tree


def load_config(path: str | Path, overrides: list[str] | None = None, resolved: bool = False) -> RagtuneConfig:
    """Load, override and validate a domain config; errors name the file and dotted key.

    Args:
        resolved: the file is a run's ``config.resolved.yaml``, which ragtune wrote, perhaps before some keys
            moved (:data:`MOVED_KEYS`): they are read at their new place. A user's config naming a moved key is an
            error saying where it went.
    """
    path = Path(path)
    tree = read_config_tree(path) or {}
    if not isinstance(tree, dict):
        raise ConfigError(f"config {path} must be a mapping at the top level")
    if resolved:
        move_keys(tree)
    apply_overrides(tree, overrides or [])
    try:
        return RagtuneConfig.model_validate(tree)
    except ValidationError as e:
        raise ConfigError(_format_errors(str(path), e)) from None


def _redact_base_urls(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {
            k: redact_url(v) if k == "base_url" and isinstance(v, str) else _redact_base_urls(v)
            for k, v in tree.items()
        }
    if isinstance(tree, list):
        return [_redact_base_urls(v) for v in tree]
    return tree


def dump_config(cfg: RagtuneConfig) -> str:
    """The resolved config as YAML (what ``config.resolved.yaml`` holds), credentials in ``base_url`` redacted."""
    return yaml.safe_dump(_redact_base_urls(cfg.model_dump(mode="json")), sort_keys=False, allow_unicode=True)


LOCAL_TRACKERS = {"tensorboard": "tensorboard"}  # report_to name -> the module it needs; writes files in the run


def check_trackers(section: str, report_to: Any, remote_trackers: Sequence[str] = ()) -> None:
    """Allow ``<section>.trainer.report_to`` only for trackers that stay on the machine, or remote ones named in
    ``run.remote_trackers``; a local tracker whose package is missing says how to install it.

    Raises:
        ConfigError: naming ``<section>.trainer.report_to`` and what to do.

    Example:
        >>> check_trackers("embed", "none"); check_trackers("raft", ["wandb"], ["wandb"])
        >>> try:
        ...     check_trackers("embed", "wandb")
        ... except ConfigError as e:
        ...     print(str(e)[:60])
        embed.trainer.report_to: 'wandb' sends run data off the mach
    """
    import importlib.util

    names = [report_to] if isinstance(report_to, str) or report_to is None else list(report_to)
    for name in names:
        if name in (None, "none"):
            continue
        if name in LOCAL_TRACKERS:
            if importlib.util.find_spec(LOCAL_TRACKERS[name]) is None:
                raise ConfigError(
                    f"{section}.trainer.report_to: {name!r} needs the {LOCAL_TRACKERS[name]} package: "
                    f"pip install 'ragtune[{name}]'"
                )
        elif name == "all":
            raise ConfigError(
                f"{section}.trainer.report_to: 'all' would include trackers that send run data off the machine; "
                f"name the ones you want (local: {', '.join(LOCAL_TRACKERS)})"
            )
        elif name not in remote_trackers:
            raise ConfigError(
                f"{section}.trainer.report_to: {name!r} sends run data off the machine; allow it by name with "
                f"run.remote_trackers: [{name}]"
            )


def check_trainer_keys(section: str, trainer: Mapping[str, Any], args_class: type) -> None:
    """Refuse ``<section>.trainer`` keys that ``args_class`` (a training-arguments dataclass) lacks.

    ``output_dir`` is refused too: ragtune always puts checkpoints inside the run directory. So are the hub
    settings (``push_to_hub``, ``hub_token``, ...), which send the model or a credential off the machine.
    ``report_to`` is checked when the config loads (:func:`check_trackers`, with ``run.remote_trackers``).

    Raises:
        ConfigError: naming ``<section>.trainer.<key>``.

    Example:
        >>> from transformers import TrainingArguments
        >>> try:
        ...     check_trainer_keys("embed", {"learning_rat": 1e-4}, TrainingArguments)
        ... except ConfigError as e:
        ...     print(e)
        embed.trainer.learning_rat: not a TrainingArguments field; did you mean 'learning_rate'?
    """
    known = {f.name for f in dataclasses.fields(args_class) if f.init}
    for key in trainer:
        if key == "output_dir":
            raise ConfigError(f"{section}.trainer.output_dir: set by ragtune inside the run directory; remove it")
        if key in OFF_MACHINE_TRAINER_KEYS:
            raise ConfigError(
                f"{section}.trainer.{key}: refused, it would send the model or a credential off the machine"
            )
        if key not in known:
            hint = did_you_mean(key, known) or " (misspelled?)"
            raise ConfigError(f"{section}.trainer.{key}: not a {args_class.__name__} field{hint}")
