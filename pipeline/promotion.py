"""The promotion gate: a tuned component serves by default only if it beat its baseline on the dev slice.

``assemble.embedder``, ``assemble.reranker`` and ``assemble.generator`` default to ``auto``. Each stage
records its dev-slice figures (queries of held-out train documents, never trained on) in the manifest, and
the rules below read them:

- embedder: promoted when its dev nDCG@10 beats the base embedder's (``embed.dev_fraction`` > 0);
- reranker: promoted when the dev slice gave it a fusion weight above 0 (the one-standard-error rule: the
  fused order clearly beat the tuned retriever's), or a configured ``rerank.fusion_weight`` above 0;
- generator: promoted when its dev answer F1 beats the base generator's.

A component without a dev figure is not promoted: it cannot have shown that it helps. ``tuned``, ``base``
(and ``none`` for the reranker) still force a choice; the eval harness's built-in configurations always do.

Example:
    >>> embedder_promotion({"dev_ndcg@10_base": 0.50, "dev_ndcg@10_tuned": 0.55, "dev_queries": 28}).promoted
    True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from pipeline.config import AssembleConfig
from pipeline.rundir import RunDir


@dataclass(frozen=True)
class Promotion:
    """Whether a tuned component serves under ``auto``, and the dev figure that decided it."""

    promoted: bool
    reason: str


def embedder_promotion(metrics: Mapping[str, Any]) -> Promotion:
    """The tuned embedder serves when its dev nDCG@10 is above the base embedder's.

    Example:
        >>> embedder_promotion({"dev_ndcg@10_base": 0.5, "dev_ndcg@10_tuned": 0.45, "dev_queries": 20}).reason
        'dev nDCG@10 0.4500 vs base 0.5000 (20 queries)'
    """
    base, tuned = metrics.get("dev_ndcg@10_base"), metrics.get("dev_ndcg@10_tuned")
    if base is None or tuned is None:
        return Promotion(
            False, "not measured: no dev slice (embed.dev_fraction; or too few dev queries the base did not choose)"
        )
    return Promotion(tuned > base, f"dev nDCG@10 {tuned:.4f} vs base {base:.4f} ({metrics.get('dev_queries')} queries)")


def reranker_promotion(metrics: Mapping[str, Any]) -> Promotion:
    """The tuned reranker serves when its fusion weight is above 0 (chosen on the dev slice, or configured).

    Example:
        >>> m = {"fusion_weight": 0.3, "dev_ndcg@10_fused": 0.6, "dev_ndcg@10_retriever": 0.55, "dev_queries": 9}
        >>> reranker_promotion(m)
        Promotion(promoted=True, reason='fusion weight 0.3: dev nDCG@10 fused 0.6000 vs retriever 0.5500 (9 queries)')
    """
    weight = float(metrics.get("fusion_weight") or 0.0)
    fused, retriever = metrics.get("dev_ndcg@10_fused"), metrics.get("dev_ndcg@10_retriever")
    if fused is None or retriever is None:
        if weight > 0:
            return Promotion(True, f"fusion weight {weight:.1f} as configured (rerank.fusion_weight), not measured")
        return Promotion(False, "not measured: no dev slice (rerank.dev_fraction)")
    figure = f"dev nDCG@10 fused {fused:.4f} vs retriever {retriever:.4f} ({metrics.get('dev_queries')} queries)"
    return Promotion(weight > 0, f"fusion weight {weight:.1f}: {figure}")


def generator_promotion(metrics: Mapping[str, Any]) -> Promotion:
    """The tuned generator serves when its dev answer F1 is above the base generator's.

    Example:
        >>> generator_promotion({}).promoted
        False
    """
    base, tuned = metrics.get("dev_f1_base"), metrics.get("dev_f1_tuned")
    if base is None or tuned is None:
        return Promotion(False, "not measured: the RAFT stage recorded no dev answer F1")
    return Promotion(tuned > base, f"dev F1 {tuned:.4f} vs base {base:.4f} ({metrics.get('dev_questions')} questions)")


RULES = {
    "embedder": ("embed", embedder_promotion),
    "reranker": ("rerank", reranker_promotion),
    "generator": ("raft", generator_promotion),
}


def promotions(run: RunDir) -> dict[str, Promotion]:
    """The gate's decision for every component, from the finished stages' manifest metrics."""
    manifest = run.load_manifest()
    decided = {}
    for component, (stage, rule) in RULES.items():
        record = manifest.get(stage)
        if record is None or record.status != "done":
            decided[component] = Promotion(False, f"not trained: the {stage} stage has not finished")
        else:
            decided[component] = rule(record.metrics)
    return decided


def resolve_auto(choice: AssembleConfig, run: RunDir) -> AssembleConfig:
    """``choice`` with every ``auto`` replaced by ``tuned`` (promoted) or the baseline (``base``; reranker ``none``)."""
    fields = ("embedder", "reranker", "generator")
    if all(getattr(choice, f) != "auto" for f in fields):
        return choice
    decided = promotions(run)
    baseline = {"embedder": "base", "reranker": "none", "generator": "base"}
    update = {f: ("tuned" if decided[f].promoted else baseline[f]) for f in fields if getattr(choice, f) == "auto"}
    return choice.model_copy(update=update)


def promotion_report(run: RunDir) -> dict[str, dict[str, Any]]:
    """The gate's decisions as plain dicts (for report.json and ``ragtune status``)."""
    return {component: asdict(p) for component, p in promotions(run).items()}


def format_promotions(run: RunDir) -> str:
    """What ``assemble.*: auto`` serves, one line per component (``ragtune status``)."""
    lines = ["", "served by default (assemble.*: auto):"]
    for component, p in promotions(run).items():
        lines.append(f"  {component:<9}  {'tuned' if p.promoted else 'baseline'}  ({p.reason})")
    return "\n".join(lines)
