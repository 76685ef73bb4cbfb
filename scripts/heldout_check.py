"""Does the no-labels pipeline pay on a corpus nobody here wrote? Run it without the queries, score with them.

    python scripts/heldout_check.py BEIR_DIR [--config configs/templates/cpu.yaml] [--work DIR]
                                    [--score-only] [key=value ...]

BEIR_DIR holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` and ``qrels/test.tsv``.
1. The corpus becomes a folder of documents (one .txt each: title, blank line, text), as a user's would be.
2. ``ragtune run`` of the template (``data.docs`` that folder, no questions, the overrides applied) in
   ``WORK/runs/<name>``, timed. ``--score-only`` skips it and scores the finished run.
3. The human queries rank the run's chunks under: BM25; the base embedder, dense and hybrid (BM25 fused by
   reciprocal rank); the tuned embedder, dense and hybrid; and the stack ``assemble.*: auto`` serves (its
   embedder, retrieval mode and reranker at its fusion weight). A document ranks where its best chunk does.
4. Metrics come from the qrels alone (nDCG@10, MRR@10, recall@100, computed here, not by the run's eval), and
   one table prints them beside the run's own figures on its synthetic held-out queries. ``WORK/heldout.json``
   keeps them.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPTH = 100  # chunks ranked per query: recall@100 and the hybrid lists
CUTOFF = 10


def document_file(corpus_id: str) -> str:
    """The file name a corpus id gets in the documents folder (safe characters only).

    Example:
        >>> document_file("MED-10/a b")
        'MED-10_a_b.txt'
    """
    return re.sub(r"[^A-Za-z0-9._-]", "_", corpus_id) + ".txt"


def write_documents(beir_dir: Path, docs_dir: Path) -> dict[str, str]:
    """Write every corpus row as ``docs_dir/<id>.txt`` (title, blank line, text); return file name -> corpus id."""
    docs_dir.mkdir(parents=True, exist_ok=True)
    names: dict[str, str] = {}
    with (beir_dir / "corpus.jsonl").open(encoding="utf-8") as rows:
        for line in rows:
            row = json.loads(line)
            title, text = (row.get("title") or "").strip(), (row.get("text") or "").strip()
            name = document_file(str(row["_id"]))
            names[name] = str(row["_id"])
            body = f"{title}\n\n{text}" if title and text else title or text
            path = docs_dir / name
            if not path.exists() or path.read_text(encoding="utf-8") != body + "\n":
                path.write_text(body + "\n", encoding="utf-8")
    return names


def load_queries(beir_dir: Path, split: str = "test") -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    """The queries that have judgements, and the qrels (query id -> corpus id -> grade; grade 0 dropped)."""
    qrels: dict[str, dict[str, int]] = {}
    with (beir_dir / "qrels" / f"{split}.tsv").open(encoding="utf-8") as rows:
        for line in rows:
            parts = line.rstrip("\n").split("\t")
            if len(parts) != 3 or parts[0] == "query-id" or int(parts[2]) <= 0:
                continue
            qrels.setdefault(parts[0], {})[parts[1]] = int(parts[2])
    with (beir_dir / "queries.jsonl").open(encoding="utf-8") as rows:
        texts = {str(q["_id"]): q["text"] for q in map(json.loads, rows)}
    return {q: texts[q] for q in qrels if q in texts}, qrels


def documents_ranked(chunk_ids: Sequence[str], document_of: Mapping[str, str]) -> list[str]:
    """Documents in the order of their best chunk.

    Example:
        >>> documents_ranked(["c2", "c1", "c3"], {"c1": "a", "c2": "b", "c3": "a"})
        ['b', 'a']
    """
    return list(dict.fromkeys(document_of[c] for c in chunk_ids))


def ndcg(ranked: Sequence[str], grades: Mapping[str, int], k: int = CUTOFF) -> float:
    """nDCG@k with linear gains (BEIR's pytrec_eval convention): sum of grade / log2(rank + 1), normalised.

    Example:
        >>> round(ndcg(["x", "a"], {"a": 1, "b": 1}), 4)
        0.3869
    """
    dcg = sum(grades.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sum(g / math.log2(i + 2) for i, g in enumerate(sorted(grades.values(), reverse=True)[:k]))
    return dcg / ideal if ideal else 0.0


def reciprocal_rank(ranked: Sequence[str], grades: Mapping[str, int], k: int = CUTOFF) -> float:
    """1 / rank of the first relevant document within the top k (0 when none).

    Example:
        >>> reciprocal_rank(["x", "a"], {"a": 1})
        0.5
    """
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:k]) if grades.get(d, 0) > 0), 0.0)


def recall(ranked: Sequence[str], grades: Mapping[str, int], k: int = DEPTH) -> float:
    """Share of the relevant documents within the top k.

    Example:
        >>> recall(["a", "x"], {"a": 1, "b": 2}, k=2)
        0.5
    """
    relevant = {d for d, g in grades.items() if g > 0}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def score(rankings: Mapping[str, Sequence[Sequence[str]]], qids: Sequence[str], qrels: Mapping) -> dict:
    """Mean nDCG@10, MRR@10 and recall@100 of each ranking (documents per query, in ``qids`` order).

    Example:
        >>> score({"bm25": [["a", "x"], ["x", "y"]]}, ["1", "2"], {"1": {"a": 1}, "2": {"y": 1}})["bm25"]
        {'ndcg@10': 0.8155, 'mrr@10': 0.75, 'recall@100': 1.0, 'queries': 2}
    """
    out = {}
    for name, ranked in rankings.items():
        per_query = zip(ranked, qids, strict=True)
        rows = [(ndcg(r, qrels[q]), reciprocal_rank(r, qrels[q]), recall(r, qrels[q])) for r, q in per_query]
        means = [round(sum(col) / len(rows), 4) for col in zip(*rows, strict=True)]
        out[name] = {"ndcg@10": means[0], "mrr@10": means[1], "recall@100": means[2], "queries": len(rows)}
    return out


def write_config(template: Path, docs_dir: Path, work: Path, name: str) -> Path:
    """The template with ``data.docs`` the documents folder, no questions, the run under ``work/runs/name``."""
    tree = yaml.safe_load(template.read_text(encoding="utf-8"))
    tree["run"] = {**tree.get("run", {}), "name": name, "root": str(work / "runs")}
    tree["data"] = {**tree.get("data", {}), "docs": str(docs_dir), "questions": None}
    config = work / f"{name}.yaml"
    config.write_text(yaml.safe_dump(tree, sort_keys=False), encoding="utf-8")
    return config


def served_rankings(config: Path, overrides: list[str], texts: list[str]) -> tuple[dict, dict, dict]:
    """Chunk rankings of the human queries under each retriever and the served stack; the run's eval figures.

    Returns:
        (name -> chunk ids per query, chunk id -> document file, what the gate serves and its eval figures).
    """
    sys.path.insert(0, str(ROOT))
    from ragtune.eval.rankings import rank_configurations
    from ragtune.pipeline.components import resolve_components
    from ragtune.pipeline.config import load_config
    from ragtune.pipeline.hybrid import bm25_rankings, bm25_retriever
    from ragtune.pipeline.promotion import resolve_auto
    from ragtune.pipeline.rundir import EVAL_JSON, SCORE_CACHE, RunDir, read_jsonl
    from ragtune.pipeline.stack import StackLoader

    cfg = load_config(config, overrides)
    run = RunDir(Path(cfg.run.root) / cfg.run.name)
    corpus = read_jsonl(run.require("data", "corpus")["corpus"])
    served = resolve_auto(cfg.assemble, run, cfg.gpl.enabled)
    plain = cfg.assemble.model_copy(update={"reranker": "none", "top_k": DEPTH})  # hybrid at the served depth
    choices = {
        "base dense": plain.model_copy(update={"embedder": "base", "retrieval": "dense"}),
        "base hybrid": plain.model_copy(update={"embedder": "base", "retrieval": "hybrid"}),
        "tuned dense": plain.model_copy(update={"embedder": "tuned", "retrieval": "dense"}),
        "tuned hybrid": plain.model_copy(update={"embedder": "tuned", "retrieval": "hybrid"}),
        "served": served,
    }
    components = {name: resolve_components(cfg, run, c, need_generator=False) for name, c in choices.items()}
    loader = StackLoader(cfg, run.path(SCORE_CACHE))
    rankings, _ = rank_configurations(run, corpus, texts, components, choices, DEPTH, loader, cfg.run.score_block_mb)
    out = {"bm25": bm25_rankings(bm25_retriever(corpus, DEPTH), texts)}
    out |= {name: r.ranked for name, r in rankings.items()}
    report_path = run.path(EVAL_JSON)
    own = json.loads(report_path.read_text(encoding="utf-8")) if report_path.exists() else {}
    gate = {
        "served": served.model_dump(include={"embedder", "reranker", "retrieval"}),
        "own_eval": {name: c["metrics"].get("ndcg@10") for name, c in (own.get("configurations") or {}).items()},
    }
    return out, {c["id"]: c["doc_id"] for c in corpus}, gate


def format_table(scores: Mapping[str, Mapping[str, float]]) -> str:
    """One line per ranking: nDCG@10, MRR@10, recall@100."""
    lines = [f"{'ranking':<14} {'nDCG@10':>8} {'MRR@10':>8} {'R@100':>8}"]
    for name, m in scores.items():
        lines.append(f"{name:<14} {m['ndcg@10']:>8.3f} {m['mrr@10']:>8.3f} {m['recall@100']:>8.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("beir_dir", type=Path)
    parser.add_argument("--config", type=Path, default=ROOT / "configs/templates/cpu.yaml")
    parser.add_argument("--work", type=Path, default=None, help="default: runs/heldout-<corpus folder name>")
    parser.add_argument("--name", default=None, help="run name (default: the corpus folder's name)")
    parser.add_argument("--score-only", action="store_true", help="score the finished run; do not run it")
    parser.add_argument("overrides", nargs="*", help="dotted config overrides for the run, e.g. synth.max_chunks=200")
    args = parser.parse_intermixed_args(argv)  # overrides may follow the flags
    name = args.name or args.beir_dir.resolve().name
    work = (args.work or ROOT / "runs" / f"heldout-{name}").resolve()

    # 1. The corpus as a user's folder of documents; the queries kept aside.
    file_to_id = write_documents(args.beir_dir, work / "docs")
    queries, qrels = load_queries(args.beir_dir)
    config = write_config(args.config, work / "docs", work, name)

    # 2. The pipeline, without the queries.
    seconds = None
    if not args.score_only:
        started = time.time()
        subprocess.run([sys.executable, "-m", "ragtune.app.cli", "run", str(config), *args.overrides], check=True)
        seconds = round(time.time() - started)

    # 3-4. Rank with every retriever and the served stack; score on the qrels.
    qids = list(queries)
    chunk_rankings, doc_of, gate = served_rankings(config, args.overrides, [queries[q] for q in qids])
    document_of = {c: file_to_id[Path(d).name] for c, d in doc_of.items()}
    rankings = {name: [documents_ranked(r, document_of) for r in ranked] for name, ranked in chunk_rankings.items()}
    scores = score(rankings, qids, qrels)
    result = {"corpus": str(args.beir_dir), "run_seconds": seconds, "human": scores, **gate}
    (work / "heldout.json").write_text(json.dumps(result, indent=2), encoding="utf-8")
    print(f"{len(qids)} human queries, {len(file_to_id)} documents; run {seconds} s; served {gate['served']}")
    print(format_table(scores))
    print(f"the run's own eval (synthetic held-out queries), nDCG@10: {gate['own_eval']}")


if __name__ == "__main__":
    main()
