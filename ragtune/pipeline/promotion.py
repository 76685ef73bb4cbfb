"""The promotion gate: a tuned component serves by default only if it beat its baseline on the dev slice.

``assemble.embedder``, ``assemble.reranker`` and ``assemble.generator`` default to ``auto``. Each stage
records its dev-slice figures (queries of held-out train documents, never trained on) in the manifest, and
the rules below read them:

- embedder: promoted when its dev nDCG@10 beats the base embedder's (``embed.dev_fraction`` > 0). With the
  GPL round on (``gpl.enabled``), the tuned embedder is the GPL model when that stage finished on stage 1's
  current model and its dev nDCG@10 (the same dev slice, the same full-corpus figure) beats stage 1's tuned
  figure, else stage 1's model (:func:`tuned_embedder`); ``tuned`` names it, and ``auto`` serves it when its
  figure beats the base's;
- reranker: promoted when the dev slice gave it a fusion weight above 0 (the one-standard-error rule: the
  fused order clearly beat the tuned retriever's), or a configured ``rerank.fusion_weight`` above 0;
- generator and quote (``assemble.quote``): of the base generator and the tuned one, each writing its own quote
  or answering from the extractive answerer's quote written in (guided), and the extractive answerer alone
  (no LLM: the context sentence closest to the question), the one with the best dev answer F1 serves; so no
  user is served answers worse than a quote. Ties go to base, then tuned, then extractive
  (:func:`generator_choice`).

A component without a dev figure is not promoted: it cannot have shown that it helps. ``tuned``, ``base``
(and ``none`` for the reranker) still force a choice; the eval harness's built-in configurations always do.

Example:
    >>> embedder_promotion({"dev_ndcg@10_base": 0.50, "dev_ndcg@10_tuned": 0.55, "dev_queries": 28}).promoted
    True
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

import yaml

from ragtune.pipeline.config import AssembleConfig
from ragtune.pipeline.rundir import CONFIG_RESOLVED, RunDir, input_key


def figure(key: str) -> Any:
    """A field of a :class:`GateFigures` record, kept in the stage's manifest metrics under ``key``."""
    return field(default=None, metadata={"key": key})


@dataclass(frozen=True)
class GateFigures:
    """The dev figures one stage records for the promotion gate: the stage builds the record and writes
    :meth:`as_metrics` into its manifest metrics; the gate reads it back with :meth:`from_metrics`. The metrics keys
    are written once, in the fields below (the keys runs already hold), so a misspelled key is caught here.

    Example:
        >>> RerankFigures(queries=9, fusion_weight=0.3).as_metrics()["dev_queries"]
        9
        >>> RerankFigures.from_metrics({"fusion_weight": 0.3, "dev_ndcg@10_fused": 0.6}).fused
        0.6
    """

    @classmethod
    def keys(cls) -> dict[str, str]:
        """Field name -> its key in the stage's manifest metrics."""
        return {f.name: f.metadata["key"] for f in fields(cls)}

    def as_metrics(self, skip_unmeasured: bool = False) -> dict[str, Any]:
        """The record as the stage's metrics entries (``skip_unmeasured``: leave out the figures that are None)."""
        return {
            key: getattr(self, name)
            for name, key in self.keys().items()
            if not (skip_unmeasured and getattr(self, name) is None)
        }

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any]) -> Self:
        """The record a stage wrote into ``metrics`` (a figure it did not write is None)."""
        return cls(**{name: metrics.get(key) for name, key in cls.keys().items()})


@dataclass(frozen=True)
class EmbedFigures(GateFigures):
    """Stage 1's dev nDCG@10 of the base and the tuned embedder, dense and hybrid: the embedder and retrieval gates."""

    queries: int | None = figure("dev_queries")
    base: float | None = figure("dev_ndcg@10_base")
    tuned: float | None = figure("dev_ndcg@10_tuned")
    base_hybrid: float | None = figure("dev_ndcg@10_base_hybrid")
    tuned_hybrid: float | None = figure("dev_ndcg@10_tuned_hybrid")


@dataclass(frozen=True)
class RerankFigures(GateFigures):
    """Stage 2's serving fusion weight and, at the kept curve point, the dev nDCG@10 of the tuned retriever and of
    the fused order: the reranker gate."""

    queries: int | None = figure("dev_queries")
    fusion_weight: float | None = figure("fusion_weight")
    retriever: float | None = figure("dev_ndcg@10_retriever")
    fused: float | None = figure("dev_ndcg@10_fused")


@dataclass(frozen=True)
class GplFigures(GateFigures):
    """The GPL round's dev nDCG@10 and stage 1's tuned one on the same slice, dense and hybrid: which model is the
    tuned embedder."""

    queries: int | None = figure("dev_queries")
    embed: float | None = figure("dev_ndcg@10_embed")
    gpl: float | None = figure("dev_ndcg@10_gpl")
    embed_hybrid: float | None = figure("dev_ndcg@10_embed_hybrid")
    gpl_hybrid: float | None = figure("dev_ndcg@10_gpl_hybrid")

    def serving(self, model: str, retrieval: str = "auto") -> tuple[float | None, str]:
        """``model``'s (``gpl`` or ``embed``) dev figure where it would serve, and that retrieval mode: under
        ``auto`` the better of dense and hybrid (hybrid counts only where both models have its figure, so the two
        are compared alike), else the mode ``retrieval`` fixes (dense where hybrid is not measured for both).

        Example:
            >>> figures = GplFigures(embed=0.91, gpl=0.90, embed_hybrid=0.92, gpl_hybrid=0.93)
            >>> figures.serving("gpl"), figures.serving("embed"), figures.serving("gpl", "dense")
            ((0.93, 'hybrid'), (0.92, 'hybrid'), (0.9, 'dense'))
            >>> GplFigures(embed=0.91, gpl=0.95, embed_hybrid=0.92).serving("embed")  # a round without hybrid
            (0.91, 'dense')
        """
        hybrid = self.gpl_hybrid is not None and self.embed_hybrid is not None
        if retrieval == "auto":
            modes = ["dense", "hybrid"] if hybrid else ["dense"]
        else:
            modes = ["hybrid"] if retrieval == "hybrid" and hybrid else ["dense"]
        value = {"dense": getattr(self, model), "hybrid": getattr(self, f"{model}_hybrid")}
        if value["dense"] is None:
            return None, "dense"
        mode = max(modes, key=lambda m: value[m])
        return value[mode], mode


@dataclass(frozen=True)
class RaftFigures(GateFigures):
    """Stage 3's dev answer F1 of the base and the tuned generator (writing their own quotes, and guided: answering
    from the extractive answerer's quote) and of the extractive answerer: the generator and quote gates."""

    questions: int | None = figure("dev_questions")
    base: float | None = figure("dev_f1_base")
    tuned: float | None = figure("dev_f1_tuned")
    extractive: float | None = figure("dev_f1_extractive")
    base_guided: float | None = figure("dev_f1_base_guided")
    tuned_guided: float | None = figure("dev_f1_tuned_guided")


@dataclass(frozen=True)
class Promotion:
    """Whether a tuned component serves under ``auto``, and the dev figure that decided it."""

    promoted: bool
    reason: str
    serves: str | None = None  # what ``auto`` resolves to when neither the tuned part nor the baseline serves


FIRST_STAGES: dict[tuple[str, str], str] = {  # (embedder, retrieval) -> its EmbedFigures field; ties go to the first
    ("base", "dense"): "base",
    ("base", "hybrid"): "base_hybrid",
    ("tuned", "dense"): "tuned",
    ("tuned", "hybrid"): "tuned_hybrid",
}


def first_stage_choice(
    metrics: Mapping[str, Any], embedder: str = "auto", retrieval: str = "auto"
) -> tuple[str, str, str]:
    """The embedder and retrieval mode with the best dev nDCG@10 among those ``embedder`` and ``retrieval`` allow.

    Stage 1 records the dev figure of the base and the tuned embedder, dense and hybrid (BM25 fused by reciprocal
    rank). ``auto`` lets the figures choose; ties go to the simpler side (base before tuned, dense before hybrid),
    so a tuned embedder or BM25 serves only where it measurably helps. Unmeasured options are left out; with
    none measured the choice is the base embedder, dense.

    Returns:
        (embedder ``base``/``tuned``, retrieval ``dense``/``hybrid``, the reason, with the figures compared).

    Example:
        >>> m = {"dev_ndcg@10_base": 0.50, "dev_ndcg@10_base_hybrid": 0.56, "dev_ndcg@10_tuned": 0.55,
        ...      "dev_ndcg@10_tuned_hybrid": 0.58, "dev_queries": 20}
        >>> first_stage_choice(m)[:2], first_stage_choice(m, retrieval="dense")[:2]
        (('tuned', 'hybrid'), ('tuned', 'dense'))
        >>> first_stage_choice(m, embedder="base")[2]
        'dev nDCG@10 base dense 0.5000, base hybrid 0.5600 (20 queries)'
        >>> first_stage_choice({"dev_ndcg@10_base": 0.5, "dev_ndcg@10_tuned": 0.45, "dev_queries": 20})[2]
        'dev nDCG@10 0.4500 vs base 0.5000 (20 queries)'
    """
    figures = EmbedFigures.from_metrics(metrics)
    allowed = [key for key in FIRST_STAGES if embedder in ("auto", key[0]) and retrieval in ("auto", key[1])]
    measured = {key: getattr(figures, FIRST_STAGES[key]) for key in allowed}
    measured = {key: value for key, value in measured.items() if value is not None}
    if not measured:
        fixed = (embedder if embedder != "auto" else "base", retrieval if retrieval != "auto" else "dense")
        return (
            *fixed,
            "not measured: no dev slice (embed.dev_fraction; or too few dev queries the base did not choose)",
        )
    best = max(measured, key=lambda key: (measured[key], -allowed.index(key)))
    queries = f"({figures.queries} queries)"
    if set(measured) == {("base", "dense"), ("tuned", "dense")}:  # the figures of a stage 1 without hybrid
        tuned, base = measured[("tuned", "dense")], measured[("base", "dense")]
        return (*best, f"dev nDCG@10 {tuned:.4f} vs base {base:.4f} {queries}")
    figures = ", ".join(f"{e} {r} {value:.4f}" for (e, r), value in measured.items())
    return (*best, f"dev nDCG@10 {figures} {queries}")


def embedder_promotion(metrics: Mapping[str, Any], retrieval: str = "auto") -> Promotion:
    """The tuned embedder serves when it is in the first stage with the best dev nDCG@10 (:func:`first_stage_choice`).

    Example:
        >>> embedder_promotion({"dev_ndcg@10_base": 0.5, "dev_ndcg@10_tuned": 0.45, "dev_queries": 20}).reason
        'dev nDCG@10 0.4500 vs base 0.5000 (20 queries)'
    """
    embedder, _, reason = first_stage_choice(metrics, "auto", retrieval)
    return Promotion(embedder == "tuned", reason)


def retrieval_promotion(metrics: Mapping[str, Any], embedder: str = "auto") -> Promotion:
    """Hybrid retrieval serves when it is in the first stage with the best dev nDCG@10 (:func:`first_stage_choice`).

    Example:
        >>> m = {"dev_ndcg@10_base": 0.5, "dev_ndcg@10_base_hybrid": 0.6, "dev_queries": 20}
        >>> retrieval_promotion(m).promoted
        True
    """
    _, retrieval, reason = first_stage_choice(metrics, embedder, "auto")
    return Promotion(retrieval == "hybrid", reason)


def reranker_promotion(metrics: Mapping[str, Any]) -> Promotion:
    """The tuned reranker serves when its fusion weight is above 0 (chosen on the dev slice, or configured).

    Example:
        >>> m = {"fusion_weight": 0.3, "dev_ndcg@10_fused": 0.6, "dev_ndcg@10_retriever": 0.55, "dev_queries": 9}
        >>> reranker_promotion(m).reason
        'fusion weight 0.3: dev nDCG@10 fused 0.6000 vs retriever 0.5500 (9 queries)'
    """
    figures = RerankFigures.from_metrics(metrics)
    weight = float(figures.fusion_weight or 0.0)
    fused, retriever = figures.fused, figures.retriever
    if fused is None or retriever is None:
        if weight > 0:
            return Promotion(True, f"fusion weight {weight:.1f} as configured (rerank.fusion_weight), not measured")
        return Promotion(False, "not measured: no dev slice (rerank.dev_fraction)")
    measured = f"dev nDCG@10 fused {fused:.4f} vs retriever {retriever:.4f} ({figures.queries} queries)"
    return Promotion(weight > 0, f"fusion weight {weight:.1f}: {measured}")


ANSWERERS: dict[tuple[str, str], str] = {  # (generator, quote) -> its RaftFigures field; ties go to the first
    ("base", "generator"): "base",
    ("tuned", "generator"): "tuned",
    ("extractive", "extractive"): "extractive",
    ("base", "extractive"): "base_guided",
    ("tuned", "extractive"): "tuned_guided",
}
ANSWERER_NAMES = {"base_guided": "base guided", "tuned_guided": "tuned guided"}  # in reasons


def generator_choice(metrics: Mapping[str, Any], generator: str = "auto", quote: str = "auto") -> tuple[str, str, str]:
    """The generator and quote source with the best dev answer F1 among those ``generator`` and ``quote`` allow.

    The RAFT stage's dev check scores the base and the tuned generator writing their own quotes, the same two
    answering from the extractive answerer's quote written in (guided: ``quote`` ``extractive``), and the
    extractive answerer alone. The extractive answerer is a candidate whatever ``quote`` says (no user is served
    answers worse than a quote). Ties go to the earlier of base, tuned, extractive, base guided, tuned guided.
    Without the base and tuned figures nothing is measured: the base generator writing its own quote.

    Returns:
        (generator ``base``/``tuned``/``extractive``, quote ``generator``/``extractive``, the reason).

    Example:
        >>> m = {"dev_f1_base": 0.08, "dev_f1_tuned": 0.05, "dev_f1_extractive": 0.15, "dev_questions": 18,
        ...      "dev_f1_base_guided": 0.10, "dev_f1_tuned_guided": 0.30}
        >>> generator_choice(m)[:2], generator_choice(m, quote="generator")[:2], generator_choice(m, "base")[:2]
        (('tuned', 'extractive'), ('extractive', 'extractive'), ('base', 'extractive'))
        >>> generator_choice(m, "base", "generator")[2]
        'dev F1 base 0.0800 (18 questions)'
    """
    figures = RaftFigures.from_metrics(metrics)
    if figures.base is None or figures.tuned is None:
        fixed = (generator if generator != "auto" else "base", quote if quote != "auto" else "generator")
        return (*fixed, "not measured: the RAFT stage recorded no dev answer F1")
    allowed = [
        key
        for key in ANSWERERS
        if generator in ("auto", key[0]) and (quote in ("auto", key[1]) or key[0] == "extractive")
    ]
    measured = {key: getattr(figures, ANSWERERS[key]) for key in allowed}
    measured = {key: value for key, value in measured.items() if value is not None}
    best = max(measured, key=lambda key: (measured[key], -allowed.index(key)))
    name = {key: ANSWERER_NAMES.get(ANSWERERS[key], ANSWERERS[key]) for key in measured}
    others = ", ".join(f"{name[key]} {value:.4f}" for key, value in measured.items() if key != best)
    versus = f" vs {others}" if others else ""
    return (*best, f"dev F1 {name[best]} {measured[best]:.4f}{versus} ({figures.questions} questions)")


def generator_promotion(metrics: Mapping[str, Any], quote: str = "auto") -> Promotion:
    """The tuned generator serves when it is in the answerer with the best dev F1 (:func:`generator_choice`); when
    the extractive answerer is, ``serves`` says so. A run recorded before the extractive or the guided figures
    existed chooses among those it has.

    Example:
        >>> generator_promotion({}).promoted
        False
        >>> m = {"dev_f1_base": 0.08, "dev_f1_tuned": 0.05, "dev_f1_extractive": 0.15, "dev_questions": 18}
        >>> p = generator_promotion(m)
        >>> p.promoted, p.serves, p.reason
        (False, 'extractive', 'dev F1 extractive 0.1500 vs base 0.0800, tuned 0.0500 (18 questions)')
    """
    generator, _, reason = generator_choice(metrics, "auto", quote)
    return Promotion(generator == "tuned", reason, serves=generator if generator == "extractive" else None)


def quote_promotion(metrics: Mapping[str, Any], generator: str = "auto") -> Promotion:
    """The extractive quote is written in when an LLM generator answering from it has the best dev F1
    (:func:`generator_choice`).

    Example:
        >>> m = {"dev_f1_base": 0.08, "dev_f1_tuned": 0.05, "dev_f1_extractive": 0.15, "dev_questions": 18,
        ...      "dev_f1_base_guided": 0.10, "dev_f1_tuned_guided": 0.30}
        >>> quote_promotion(m).promoted, quote_promotion(m, generator="extractive").promoted
        (True, False)
    """
    chosen, quote, reason = generator_choice(metrics, generator, "auto")
    return Promotion(quote == "extractive" and chosen != "extractive", reason)


@dataclass(frozen=True)
class TunedEmbedder:
    """Which stage's model ``assemble.embedder: tuned`` names (``embed`` or ``gpl``), and why."""

    stage: str
    reason: str


def tuned_embedder(manifest: Mapping[str, Any], gpl_enabled: bool, retrieval: str = "auto") -> TunedEmbedder:
    """The tuned embedder: the GPL round's model when it is on, finished, fresh and better on dev; else stage 1's.

    The GPL model must stand on stage 1's current model (its recorded ``embed/model`` input hash is the one
    the manifest holds now) and its dev nDCG@10 must beat stage 1's tuned one on the same dev slice, each where
    it would serve (:meth:`GplFigures.serving`: the better of dense and hybrid under ``retrieval: auto``, else the
    mode ``assemble.retrieval`` fixes). Without a dev slice neither figure exists and the last round, GPL's, is
    the tuned embedder (stage 1 likewise keeps its last step); ``auto`` still does not promote it, having no dev
    figure against the base. With ``gpl_enabled`` false the answer is stage 1's, with no reason given.

    Args:
        manifest: stage name -> record (``RunDir.load_manifest()``).
        gpl_enabled: ``gpl.enabled`` of the config in use.

    Example:
        >>> from ragtune.pipeline.rundir import StageRecord
        >>> embed = StageRecord("done", "h", outputs={"model": {"path": "embed/model", "hash": "e1"}})
        >>> gpl = StageRecord("done", "h", inputs={"embed/model": "e1"},
        ...                   metrics={"dev_ndcg@10_embed": 0.55, "dev_ndcg@10_gpl": 0.58})
        >>> tuned_embedder({"embed": embed, "gpl": gpl}, gpl_enabled=True)
        TunedEmbedder(stage='gpl', reason="GPL dev nDCG@10 0.5800 beat stage 1's 0.5500 (dense)")
        >>> tuned_embedder({"embed": embed, "gpl": gpl}, gpl_enabled=False).stage
        'embed'
        >>> gpl.metrics |= {"dev_ndcg@10_embed_hybrid": 0.60, "dev_ndcg@10_gpl_hybrid": 0.57}
        >>> tuned_embedder({"embed": embed, "gpl": gpl}, gpl_enabled=True).reason
        "stage 1's model: GPL dev nDCG@10 0.5800 (dense) did not beat its 0.6000 (hybrid)"
    """
    if not gpl_enabled:
        return TunedEmbedder("embed", "")
    gpl, embed = manifest.get("gpl"), manifest.get("embed")
    if gpl is None or gpl.status != "done":
        return TunedEmbedder("embed", "stage 1's model: the GPL round has not finished")
    current = (embed.outputs.get("model") or {}).get("hash") if embed is not None else None
    if current is None or gpl.inputs.get(input_key("embed", "model")) != current:
        return TunedEmbedder("embed", "stage 1's model: the GPL round is stale (stage 1 retrained since)")
    figures = GplFigures.from_metrics(gpl.metrics)
    (ours, our_mode), (theirs, their_mode) = figures.serving("gpl", retrieval), figures.serving("embed", retrieval)
    if ours is None or theirs is None:  # no dev slice: the last round is kept, as stage 1 keeps its last step
        return TunedEmbedder("gpl", "GPL model: no dev slice to compare it with stage 1's, so the last round is kept")
    ours_shown = f"{ours:.4f}" if our_mode == their_mode else f"{ours:.4f} ({our_mode})"
    theirs_shown = f"{theirs:.4f} ({their_mode})"
    if ours > theirs:
        return TunedEmbedder("gpl", f"GPL dev nDCG@10 {ours_shown} beat stage 1's {theirs_shown}")
    return TunedEmbedder("embed", f"stage 1's model: GPL dev nDCG@10 {ours_shown} did not beat its {theirs_shown}")


def stage_one_figures(
    manifest: Mapping[str, Any], gpl_enabled: bool, retrieval: str = "auto"
) -> tuple[dict[str, Any], str]:
    """Stage 1's dev figures with the tuned ones those of the tuned embedder :func:`tuned_embedder` names.

    A GPL round that recorded no hybrid dev figure (one from before it measured hybrid) leaves the tuned hybrid
    figure out when its model is the tuned embedder. Returns the figures and the reason the tuned embedder is the
    one it is ("" without GPL).
    """
    metrics = dict(manifest["embed"].metrics)
    tuned = tuned_embedder(manifest, gpl_enabled, retrieval)
    if tuned.stage == "gpl":
        figures = EmbedFigures.from_metrics(metrics)
        gpl = GplFigures.from_metrics(manifest["gpl"].metrics)
        metrics |= dataclasses.replace(figures, tuned=gpl.gpl, tuned_hybrid=gpl.gpl_hybrid).as_metrics()
    return metrics, tuned.reason


def _with_reason(decided: Promotion, why: str, gpl: bool) -> Promotion:
    """The embedder's decision with the reason its tuned embedder is the one it is (GPL's or stage 1's)."""
    reason = f"GPL model, {decided.reason}" if gpl else decided.reason
    return Promotion(decided.promoted, f"{reason}; {why}" if why else reason)


def promotions(run: RunDir, gpl_enabled: bool = False, choice: AssembleConfig | None = None) -> dict[str, Promotion]:
    """The gate's decision for every component, from the finished stages' manifest metrics.

    ``gpl_enabled`` (``gpl.enabled``): the embedder's decision is about the tuned embedder :func:`tuned_embedder`
    names, and its reason says which model that is. ``choice`` (default: all ``auto``): a fixed embedder or
    retrieval mode narrows the other's decision (:func:`first_stage_choice`).
    """
    choice = choice or AssembleConfig()
    manifest = run.load_manifest()
    record = manifest.get("embed")
    decided = {}
    if record is None or record.status != "done":
        decided["embedder"] = Promotion(False, "not trained: the embed stage has not finished")
        decided["retrieval"] = Promotion(False, "not measured: the embed stage has not finished")
    else:
        metrics, why = stage_one_figures(manifest, gpl_enabled, choice.retrieval)
        gpl = tuned_embedder(manifest, gpl_enabled, choice.retrieval).stage == "gpl"
        decided["embedder"] = _with_reason(embedder_promotion(metrics, choice.retrieval), why, gpl)
        decided["retrieval"] = retrieval_promotion(metrics, choice.embedder)
    record = manifest.get("rerank")
    if record is None or record.status != "done":
        decided["reranker"] = Promotion(False, "not trained: the rerank stage has not finished")
    else:
        decided["reranker"] = reranker_promotion(record.metrics)
    record = manifest.get("raft")
    if record is None or record.status != "done":
        decided["generator"] = Promotion(False, "not trained: the raft stage has not finished")
        decided["quote"] = Promotion(False, "not measured: the raft stage has not finished")
    else:
        decided["generator"] = generator_promotion(record.metrics, choice.quote)
        decided["quote"] = quote_promotion(record.metrics, choice.generator)
    return decided


BASELINE_CHOICE = {
    "embedder": "base",
    "retrieval": "dense",
    "reranker": "none",
    "generator": "base",
    "quote": "generator",
}
PROMOTED_CHOICE = {
    "embedder": "tuned",
    "retrieval": "hybrid",
    "reranker": "tuned",
    "generator": "tuned",
    "quote": "extractive",
}


def resolve_auto(choice: AssembleConfig, run: RunDir, gpl_enabled: bool = False) -> AssembleConfig:
    """``choice`` with every ``auto`` replaced by ``tuned`` (promoted) or the baseline (``base``; reranker ``none``);
    ``retrieval: auto`` by ``hybrid`` (promoted) or ``dense``; ``quote: auto`` by ``extractive`` (promoted) or
    ``generator``."""
    fields = tuple(BASELINE_CHOICE)
    if all(getattr(choice, f) != "auto" for f in fields):
        return choice
    decided = promotions(run, gpl_enabled, choice)
    update = {
        f: decided[f].serves or (PROMOTED_CHOICE[f] if decided[f].promoted else BASELINE_CHOICE[f])
        for f in fields
        if getattr(choice, f) == "auto"
    }
    return choice.model_copy(update=update)


def promotion_report(run: RunDir, gpl_enabled: bool = False) -> dict[str, dict[str, Any]]:
    """The gate's decisions as plain dicts (for report.json and ``ragtune status``)."""
    return {component: asdict(p) for component, p in promotions(run, gpl_enabled).items()}


def gpl_enabled_of(tree: Any) -> bool:
    """``gpl.enabled`` of a parsed config mapping (false when the section or the mapping is missing).

    Example:
        >>> gpl_enabled_of({"gpl": {"enabled": True}}), gpl_enabled_of({}), gpl_enabled_of(None)
        (True, False, False)
    """
    section = tree.get("gpl") if isinstance(tree, dict) else None
    return bool(isinstance(section, dict) and section.get("enabled"))


def gpl_enabled_in(run: RunDir) -> bool:
    """``gpl.enabled`` of the run's last resolved config (``config.resolved.yaml``; false when there is none).

    ``ragtune status RUN`` has no config of its own: it reports what the last command's config serves.
    """
    path = run.path(CONFIG_RESOLVED)
    if not path.is_file():
        return False
    try:
        return gpl_enabled_of(yaml.safe_load(path.read_text(encoding="utf-8")))
    except yaml.YAMLError:
        return False


def format_promotions(run: RunDir, gpl_enabled: bool = False) -> str:
    """What ``assemble.*: auto`` serves, one line per component (``ragtune status``)."""
    lines = ["", "served by default (assemble.*: auto):"]
    for component, p in promotions(run, gpl_enabled).items():
        if component in ("retrieval", "quote"):
            served = PROMOTED_CHOICE[component] if p.promoted else BASELINE_CHOICE[component]
        else:
            served = p.serves or ("tuned" if p.promoted else "baseline")
        lines.append(f"  {component:<9}  {served}  ({p.reason})")
    return "\n".join(lines)
