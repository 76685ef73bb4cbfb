"""Benchmark at scale: the eval harness, mining, the assembled index and RetrieverEvaluator over 100,000 chunks.

    nice -n 19 .venv/bin/python scripts/bench_scale.py [--chunks 100000] [--queries 1000] [--json out.json]

A generated corpus (seeded): ``--chunks`` chunks of 60-110 words, sentences recombined from the words of
one ``data/demo/docs`` document each, grouped ten chunks to a generated document with contiguous character
spans; ``--queries`` queries, each made of 6 content words of one known positive chunk (its relevance).

Every step runs in its own subprocess, so each figure is that process's wall time and its peak RSS
(``resource.getrusage(RUSAGE_SELF).ru_maxrss``, which sees torch's and faiss's allocations, unlike
tracemalloc); ``growth`` is the peak minus the RSS just before the timed part (imports, corpus read and,
where the step does not time it, the model load are in the baseline). Steps:

0. ``encode throughput`` — the real model (bundled all-MiniLM-L6-v2) encodes ``--probe-chunks`` chunks.
   When 100% of the corpus would take longer than ``--encode-budget-s`` at that rate, the steps where the
   model's quality does not matter encode with a small randomly initialised BERT of the same embedding
   dimension (one layer 128 wide, mean pooling, a linear layer to 384; WordPiece vocabulary trained on the
   demo documents; built in the work folder), and the table says which model each figure used.
1. ``harness cold`` / ``harness warm`` — what ``ragtune eval`` does per embedder (``eval.rankings.retrieve``
   over ``ragtune.pipeline.retrieval.DenseRetriever``, depth 10, ``ragtune.pipeline.ranking`` metrics): cold loads
   the model
   and encodes the corpus (writing the embedding cache), warm reads the cache (timed apart) and then
   encodes the queries, runs exact top-k and scores them.
2. ``mining (faiss)`` — ``ragtune.stages.rerank.mine.mine_hard_negatives`` with ``rerank.mining.use_faiss: true``
   and the section's other defaults, every query as a train query, a fresh embedding cache.
3. ``index build`` / ``index load`` — ``ragtune.app.vector_store.load_vector_index`` as
   ``ragtune.app.assemble.build_query_engine`` calls it (``SentenceTransformerEmbedding``, batch 64, the
   simple store): embeds the corpus into a ``VectorStoreIndex`` and persists it to ``index/``; then a
   second call that finds it fresh and loads it (what every ``ragtune query`` does).
4. ``RetrieverEvaluator`` — LlamaIndex's evaluator (hit_rate, mrr) over a ``VectorStoreIndex`` built from
   the harness's cached embeddings (not timed), on ``--li-queries`` of the queries, one ``evaluate`` each;
   its time is extrapolated linearly to all queries and compared with the harness's warm time (target:
   harness at least 20x faster). Both sides' hit@10 and MRR@10 on the subsample must agree.

Each step also reports the largest (queries x corpus) float matrix it holds at once, from the code it runs.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from ragtune.pipeline.rundir import atomic_write_jsonl, read_jsonl  # noqa: E402

DEMO_DOCS = ROOT / "data" / "demo" / "docs"
REAL_MODEL = "bundled:minilm-l6"
CHUNKS_PER_DOC = 10
QUERY_WORDS = 6
WORD = re.compile(r"[A-Za-z][A-Za-z0-9'-]*[A-Za-z0-9]")
STOP_WORDS = (
    "the a an of to in for with on by from and or is are was were be been it its this that these those as at "
    "if then than when after before not no but so we you they our your their can will may must should"
)
STOP = frozenset(STOP_WORDS.split())


# -- data -------------------------------------------------------------------------------------------
def demo_vocabularies() -> list[list[str]]:
    """The words of each demo document (markdown, text and HTML; tags stripped), in reading order."""
    vocabularies = []
    for path in sorted(DEMO_DOCS.rglob("*")):
        if path.suffix not in (".md", ".txt", ".html"):
            continue
        text = re.sub(r"<[^>]+>", " ", path.read_text(encoding="utf-8", errors="ignore"))
        words = WORD.findall(text)
        if len(words) >= 50:
            vocabularies.append(words)
    return vocabularies


def make_dataset(n_chunks: int, n_queries: int, seed: int) -> tuple[list[dict], list[dict]]:
    """Generated corpus rows (``id``, ``doc_id``, ``source``, ``text``, ``start``, ``end``) and query rows
    (``qid``, ``text``, ``positives``, ``relevance``, ``split`` = train) with one known positive each."""
    rng = random.Random(seed)
    vocabularies = demo_vocabularies()
    corpus, offset, vocab = [], 0, vocabularies[0]
    for i in range(n_chunks):
        if i % CHUNKS_PER_DOC == 0:
            vocab, offset = rng.choice(vocabularies), 0
        sentences, words = [], 0
        target = rng.randint(60, 110)
        while words < target:
            n = min(rng.randint(6, 16), target - words)
            sentence = [rng.choice(vocab) for _ in range(n)]
            sentences.append(" ".join([sentence[0].capitalize(), *(w.lower() for w in sentence[1:])]) + ".")
            words += n
        text = " ".join(sentences)
        doc = i // CHUNKS_PER_DOC
        corpus.append(
            {
                "id": f"c{i}",
                "doc_id": f"doc{doc}",
                "source": f"generated/doc{doc}.md",
                "text": text,
                "start": offset,
                "end": offset + len(text),
            }
        )
        offset += len(text) + 1
    queries = []
    for j, target in enumerate(rng.sample(range(n_chunks), n_queries)):
        words = [w.lower().strip(".") for w in corpus[target]["text"].split()]
        content = list(dict.fromkeys(w for w in words if w not in STOP and len(w) > 3))
        picked = rng.sample(content, min(QUERY_WORDS, len(content)))
        cid = corpus[target]["id"]
        queries.append(
            {"qid": f"q{j}", "text": " ".join(picked), "positives": [cid], "relevance": {cid: 1}, "split": "train"}
        )
    return corpus, queries


def build_random_bert(target: Path, dimension: int = 384, hidden: int = 128) -> Path:
    """A randomly initialised one-layer BERT sentence-transformer (``hidden`` wide, mean pooling, then a
    linear layer to ``dimension``, MiniLM's 384) with a WordPiece vocabulary trained on the demo documents;
    the stand-in encoder for the steps whose figures do not depend on the model's quality."""
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Dense, Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    torch.manual_seed(0)
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    lines = [" ".join(words) for words in demo_vocabularies()]
    tok.train_from_iterator(lines, trainers.WordPieceTrainer(vocab_size=4000, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    hf_dir = target / "hf"
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(hf_dir)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=hidden,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(hf_dir)
    encoder = Transformer(str(hf_dir), max_seq_length=256)
    pooling = Pooling(encoder.get_embedding_dimension(), "mean")
    project = Dense(hidden, dimension, activation_function=torch.nn.Identity())
    model = SentenceTransformer(modules=[encoder, pooling, project])
    st_dir = target / "st"
    model.save(str(st_dir))
    return st_dir


# -- measuring ----------------------------------------------------------------------------------------
def rss_mb() -> float:
    """This process's current resident set size in MiB (from /proc)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """This process's peak resident set size so far in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def score_rows(n_corpus: int) -> tuple[int, str]:
    """Queries per block of ``ragtune.pipeline.retrieval``'s exact scoring over ``n_corpus`` chunks, and why.

    The core bounds each block's (queries x corpus) float32 matrix by ``run.score_block_mb`` (its
    ``query_block``).
    """
    from ragtune.pipeline import retrieval

    budget = retrieval.SCORE_BLOCK_MB
    return retrieval.query_block(n_corpus, budget), f"score_block_mb default {budget:g} MiB"


def matrix_mb(rows: int, cols: int, itemsize: int = 4) -> float:
    return rows * cols * itemsize / 1e6


# -- steps (each in its own process) ---------------------------------------------------------------------
def step_throughput(work: Path, args: argparse.Namespace) -> dict:
    from sentence_transformers import SentenceTransformer

    from ragtune.pipeline.models import resolve_model

    texts = [c["text"] for c in read_jsonl(work / "corpus.jsonl")[: args.probe_chunks]]
    model = SentenceTransformer(resolve_model(REAL_MODEL))
    model.encode_document(texts[:64], batch_size=64, normalize_embeddings=True)  # warm-up
    before = rss_mb()
    started = time.perf_counter()
    model.encode_document(texts, batch_size=64, normalize_embeddings=True)
    seconds = time.perf_counter() - started
    return {"seconds": seconds, "rss_before_mb": before, "chunks": len(texts), "chunks_per_s": len(texts) / seconds}


def _metrics(ranked: list[list[str]], queries: list[dict]) -> dict:
    from ragtune.pipeline.ranking import mean_metrics, per_query_metrics

    rows = [per_query_metrics(r, q["relevance"], (1, 10)) for r, q in zip(ranked, queries, strict=True)]
    return mean_metrics(rows)


def step_harness(work: Path, args: argparse.Namespace, warm: bool) -> dict:
    from ragtune.eval.rankings import retrieve
    from ragtune.pipeline.retrieval import DenseRetriever

    corpus, queries = read_jsonl(work / "corpus.jsonl"), read_jsonl(work / "queries.jsonl")
    texts = [q["text"] for q in queries]
    cache = work / "cache" / "embeddings"
    before = rss_mb()
    started = time.perf_counter()
    retriever = DenseRetriever.load(args.encoder_path, corpus, cache_dir=cache)
    loaded = time.perf_counter() - started
    if warm:  # the warm figure is what every later configuration pays: load and cache read timed apart
        before = rss_mb()
        started = time.perf_counter()
    ranking = retrieve(retriever, texts, depth=10)
    metrics = _metrics(ranking.ranked, queries)
    seconds = time.perf_counter() - started
    block, source = score_rows(len(corpus))
    rows = min(block, len(queries))
    out = {
        "seconds": seconds,
        "rss_before_mb": before,
        "load_s": loaded,
        "metrics": metrics,
        "matrix": f"{rows} x {len(corpus)} fp32 = {matrix_mb(rows, len(corpus)):.0f} MB (exact_top_k; {source})",
        "embeddings_mb": matrix_mb(*retriever.embeddings.shape),
    }
    if warm:
        ranked = ranking.ranked[: args.li_queries]
        (work / "harness_subsample.json").write_text(json.dumps(ranked))
    return out


def step_mining(work: Path, args: argparse.Namespace) -> dict:
    from ragtune.pipeline.config import MiningConfig
    from ragtune.stages.rerank.mine import mine_hard_negatives

    corpus, queries = read_jsonl(work / "corpus.jsonl"), read_jsonl(work / "queries.jsonl")
    mining = MiningConfig(use_faiss=True)
    before = rss_mb()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=work) as cache:
        rows, report = mine_hard_negatives(corpus, queries, args.encoder_path, mining, Path(cache), seed=args.seed)
    seconds = time.perf_counter() - started
    window = mining.range_max + 1  # st's search keeps range_max + max_positives (1 here) per query
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "use_faiss": report["use_faiss"],
        "selected": report["selected"],
        "dropped": report["dropped"],
        "queries_mined": len(rows),
        "matrix": (
            f"none: faiss IndexFlatIP keeps {len(queries)} x {window} scores; its BLAS scoring works in "
            f"blocks of at most 4096 queries x 1024 chunks ({matrix_mb(min(4096, len(queries)), 1024):.1f} MB)"
        ),
    }


def step_index(work: Path, args: argparse.Namespace, load: bool) -> dict:
    from ragtune.app.assemble import SentenceTransformerEmbedding
    from ragtune.app.vector_store import load_vector_index
    from ragtune.pipeline.rundir import DATA_CORPUS, INDEX_DIR, RunDir

    run = RunDir(work / "run")
    if not load:
        corpus_path = run.path(DATA_CORPUS)
        corpus_path.parent.mkdir(parents=True, exist_ok=True)
        corpus_path.write_text((work / "corpus.jsonl").read_text(encoding="utf-8"), encoding="utf-8")
        run.record("data", config_hash="bench", inputs={}, outputs={"corpus": DATA_CORPUS}, started=time.time())
    embed_model = SentenceTransformerEmbedding(args.encoder_path, embed_batch_size=64)
    before = rss_mb()
    started = time.perf_counter()
    index = load_vector_index(run, embed_model, args.encoder_path, store="simple")
    seconds = time.perf_counter() - started
    index_dir = run.path(INDEX_DIR)
    size = sum(p.stat().st_size for p in index_dir.rglob("*") if p.is_file())
    n = len(index.vector_store.data.embedding_dict)
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "nodes": n,
        "index_disk_mb": size / 1e6,
        "matrix": "none: embeds in batches of 64; vectors held as Python float lists (SimpleVectorStore)",
    }


def step_llamaindex(work: Path, args: argparse.Namespace) -> dict:
    from llama_index.core import VectorStoreIndex
    from llama_index.core.evaluation import RetrieverEvaluator
    from llama_index.core.schema import TextNode

    from ragtune.app.assemble import SentenceTransformerEmbedding
    from ragtune.pipeline.retrieval import DenseRetriever

    corpus, queries = read_jsonl(work / "corpus.jsonl"), read_jsonl(work / "queries.jsonl")
    sample = queries[: args.li_queries]
    retriever = DenseRetriever.load(args.encoder_path, corpus, cache_dir=work / "cache" / "embeddings")
    nodes = [
        TextNode(id_=row["id"], text=row["text"], embedding=vector)
        for row, vector in zip(retriever.corpus, retriever.embeddings.tolist(), strict=True)
    ]
    embed = SentenceTransformerEmbedding(args.encoder_path, embed_batch_size=64)
    li_retriever = VectorStoreIndex(nodes, embed_model=embed).as_retriever(similarity_top_k=10)
    del nodes
    evaluator = RetrieverEvaluator.from_metric_names(["hit_rate", "mrr"], retriever=li_retriever)
    before = rss_mb()
    started = time.perf_counter()
    results = [evaluator.evaluate(q["text"], expected_ids=list(q["relevance"])) for q in sample]
    seconds = time.perf_counter() - started
    theirs = {
        "hit@10": sum(r.metric_vals_dict["hit_rate"] for r in results) / len(results),
        "mrr@10": sum(r.metric_vals_dict["mrr"] for r in results) / len(results),
    }
    ours = _metrics(json.loads((work / "harness_subsample.json").read_text()), sample)
    return {
        "seconds": seconds,
        "rss_before_mb": before,
        "queries_run": len(sample),
        "metrics": theirs,
        "metrics_harness_subsample": {k: ours[k] for k in theirs},
        "metrics_agree": all(abs(ours[k] - theirs[k]) < 1e-6 for k in theirs),
        "matrix": (
            f"1 x {len(corpus)} per query, but each query rebuilds the whole corpus matrix from Python lists: "
            f"np.array of {len(corpus)} x {retriever.embeddings.shape[1]} fp64 = "
            f"{matrix_mb(len(corpus), retriever.embeddings.shape[1], 8):.0f} MB (SimpleVectorStore)"
        ),
    }


STEPS = {
    "throughput": step_throughput,
    "harness_cold": lambda w, a: step_harness(w, a, warm=False),
    "harness_warm": lambda w, a: step_harness(w, a, warm=True),
    "mining": step_mining,
    "index_build": lambda w, a: step_index(w, a, load=False),
    "index_load": lambda w, a: step_index(w, a, load=True),
    "llamaindex": step_llamaindex,
}


def run_step(name: str, work: Path, args: argparse.Namespace, encoder_path: str) -> dict:
    """Run one step in a fresh interpreter and return what it reports (plus its peak RSS)."""
    command = [sys.executable, __file__, "--_step", name, "--_work", str(work), "--_encoder", encoder_path]
    command += ["--probe-chunks", str(args.probe_chunks), "--li-queries", str(args.li_queries)]
    command += ["--seed", str(args.seed)]
    print(f"... {name}", file=sys.stderr, flush=True)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr[-4000:])
        raise SystemExit(f"step {name} failed (exit {done.returncode})")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    result["process_s"] = time.perf_counter() - started
    return result


def child(args: argparse.Namespace) -> None:
    import logging

    logging.basicConfig(level=logging.WARNING)
    args.encoder_path = args._encoder
    result = STEPS[args._step](Path(args._work), args)
    result["peak_rss_mb"] = peak_rss_mb()
    result["growth_mb"] = result["peak_rss_mb"] - result["rss_before_mb"]
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--li-queries", type=int, default=50, help="queries RetrieverEvaluator runs (extrapolated)")
    parser.add_argument("--probe-chunks", type=int, default=2000, help="chunks the real model's throughput is read on")
    parser.add_argument("--encode-budget-s", type=float, default=600, help="above this, encode with the random BERT")
    parser.add_argument("--encoder", choices=("auto", "real", "random"), default="auto")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--_step", help=argparse.SUPPRESS)
    parser.add_argument("--_work", help=argparse.SUPPRESS)
    parser.add_argument("--_encoder", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._step:
        child(args)
        return
    args.li_queries = min(args.li_queries, args.queries)

    from ragtune.pipeline.models import resolve_model

    with tempfile.TemporaryDirectory(prefix="bench_scale-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        corpus, queries = make_dataset(args.chunks, args.queries, args.seed)
        generated = time.perf_counter() - started
        for name, rows in (("corpus", corpus), ("queries", queries)):
            atomic_write_jsonl(work / f"{name}.jsonl", rows)
        words = sum(len(c["text"].split()) for c in corpus) / len(corpus)
        print(
            f"corpus: {len(corpus):,} chunks ({words:.0f} words on average), {len(queries):,} queries, "
            f"generated in {generated:.1f} s",
            flush=True,
        )
        del corpus

        real = resolve_model(REAL_MODEL)
        probe = run_step("throughput", work, args, real)
        projected = args.chunks / probe["chunks_per_s"]
        use_random = args.encoder == "random" or (args.encoder == "auto" and projected > args.encode_budget_s)
        print(
            f"real model {REAL_MODEL}: {probe['chunks_per_s']:.1f} chunks/s on {probe['chunks']:,} chunks "
            f"-> {projected / 60:.1f} min for {args.chunks:,}",
            flush=True,
        )
        if use_random:
            encoder = str(build_random_bert(work / "random_bert"))
            encoder_name = "random BERT (1 layer, 128 wide, 384-d output)"
        else:
            encoder, encoder_name = real, f"{REAL_MODEL} (all-MiniLM-L6-v2)"
        print(f"encoder for steps 1-4: {encoder_name}\n", flush=True)

        results = {"throughput": probe}
        for name in ("harness_cold", "harness_warm", "mining", "index_build", "index_load", "llamaindex"):
            results[name] = run_step(name, work, args, encoder)
            shown = {k: v for k, v in results[name].items() if k != "matrix"}
            print(f"{name}: {json.dumps(shown)}", flush=True)

    scale = args.queries / results["llamaindex"]["queries_run"]
    li_full = results["llamaindex"]["seconds"] * scale
    speedup = li_full / results["harness_warm"]["seconds"]
    labels = {
        "throughput": f"encode {probe['chunks']:,} chunks (real model, batch 64)",
        "harness_cold": "(1) harness cold: load + encode corpus + queries + top-k + metrics",
        "harness_warm": "(1) harness warm: queries + top-k + metrics (cache read apart)",
        "mining": "(2) mine_hard_negatives, use_faiss: true (encodes corpus)",
        "index_build": "(3) assembled index build: embed + persist (simple store)",
        "index_load": "(3) assembled index load (fresh index/, as ragtune query)",
        "llamaindex": f"(4) RetrieverEvaluator, {results['llamaindex']['queries_run']} queries",
    }
    print(f"{'step':66s} {'model':8s} {'wall s':>9s} {'peak RSS MB':>12s} {'growth MB':>10s}")
    for name, label in labels.items():
        r = results[name]
        model = "MiniLM" if name == "throughput" or not use_random else "random"
        print(f"{label:66s} {model:8s} {r['seconds']:9.2f} {r['peak_rss_mb']:12.0f} {r['growth_mb']:10.0f}")
    print(
        f"{'(4) RetrieverEvaluator, extrapolated to ' + format(args.queries, ',') + ' queries':66s} "
        f"{'random' if use_random else 'MiniLM':8s} {li_full:9.2f}"
    )
    print("\nlargest queries x corpus float matrix held at once:")
    for name in ("harness_cold", "mining", "index_build", "llamaindex"):
        print(f"  {name:14s} {results[name]['matrix']}")
    print(
        f"\nharness warm: model load + cache read {results['harness_warm']['load_s']:.2f} s (apart), "
        f"corpus embeddings {results['harness_warm']['embeddings_mb']:.0f} MB"
    )
    print(f"index on disk: {results['index_build']['index_disk_mb']:.0f} MB, {results['index_build']['nodes']:,} nodes")
    print(
        f"mining: {results['mining']['selected']:,} negatives for {results['mining']['queries_mined']:,} queries "
        f"(use_faiss={results['mining']['use_faiss']}; dropped {results['mining']['dropped']})"
    )
    li = results["llamaindex"]
    print(
        f"metrics on the {li['queries_run']} subsample: harness {li['metrics_harness_subsample']}, "
        f"LlamaIndex {li['metrics']}, agree: {li['metrics_agree']}"
    )
    print(
        f"harness warm {results['harness_warm']['seconds']:.2f} s vs RetrieverEvaluator {li_full:.1f} s "
        f"(extrapolated): {speedup:.0f}x; target >= 20x: {'met' if speedup >= 20 else 'NOT met'}"
    )
    print(f"load average (1/5/15 min) at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    if args.json:
        figures = {
            "chunks": args.chunks,
            "queries": args.queries,
            "encoder": encoder_name,
            "llamaindex_extrapolated_s": li_full,
            "speedup_warm_vs_llamaindex": speedup,
            "load_average": os.getloadavg(),
            "steps": results,
        }
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
