"""The reranker's learning curve on the dev slice: is it learning, and when does it start to pay?

At evenly spaced steps of training (and before the first), the cross-encoder scores the tuned retriever's
top-k for every dev query (one batched ``predict``), and the curve records dev nDCG@10 of the reranker
alone and of the fused order at the weight the one-standard-error rule would choose then. The rerank stage
writes the points to rerank/metrics.json, the model card and the log, and draws rerank/learning_curve.png.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

from ragtune.pipeline.ranking import choose_fusion_weight
from ragtune.pipeline.retrieval import reranker_scores
from ragtune.pipeline.rundir import atomic_save_figure

logger = logging.getLogger(__name__)


@dataclass
class DevCandidates:
    """The dev queries' retrieved candidates, fixed for the whole run (the retriever does not change)."""

    texts: list[str]
    ids: list[list[str]]
    retriever: list[list[float]]
    chunks: list[list[Mapping[str, Any]]]
    relevance: list[Mapping[str, int]]


def dev_candidates(retriever: Any, queries: Sequence[Mapping[str, Any]], top_k: int) -> DevCandidates | None:
    """The retriever's top ``top_k`` for every query (one batched search); ``None`` without queries.

    The dev slice's candidates are fixed for the run; the eval split's are found the same way.
    """
    if not queries:
        return None
    texts = [q["text"] for q in queries]
    scores, ids = retriever.search(texts, top_k)
    by_id = {c["id"]: c for c in retriever.corpus}
    chunks = [[by_id[i] for i in row] for row in ids]
    return DevCandidates(texts, ids, scores, chunks, [q["relevance"] for q in queries])


def curve_point(model: Any, dev: DevCandidates, step: int) -> dict[str, float]:
    """One point of the curve: dev nDCG@10 of the retriever, the reranker alone and the two fused.

    Returns:
        ``{"step", "retriever", "reranker", "fused", "weight"}``; ``fused`` is at ``weight``, the smallest
        weight within one standard error of the best on these queries (:func:`choose_fusion_weight`).
    """
    scores = reranker_scores(model, dev.texts, dev.chunks)
    weight, curve = choose_fusion_weight(dev.ids, dev.retriever, scores, dev.relevance)
    return {"step": step, "retriever": curve[0.0], "reranker": curve[1.0], "fused": curve[weight], "weight": weight}


def curve_steps(total_steps: int, points: int) -> list[int]:
    """The training steps after which the curve is measured: ``points`` evenly spaced, the last step included.

    Example:
        >>> curve_steps(20, 4)
        [5, 10, 15, 20]
        >>> curve_steps(3, 4)
        [1, 2, 3]
    """
    if total_steps <= 0 or points <= 0:
        return []
    return sorted({max(1, round(total_steps * i / points)) for i in range(1, points + 1)})


class BestPoint:
    """The weights at the curve point with the best fused dev nDCG@10 (a later point wins a tie), kept on CPU.

    A fresh-head cross-encoder can learn, then overshoot (on the demo its dev figure rose above the
    retriever's and then collapsed to ties): :meth:`restore` puts back the best point's weights.

    Example:
        >>> import torch
        >>> model, best = torch.nn.Linear(1, 1), BestPoint()
        >>> _ = torch.nn.init.constant_(model.weight, 1.0); best.offer(model, {"step": 5, "fused": 0.6})
        >>> _ = torch.nn.init.constant_(model.weight, 2.0); best.offer(model, {"step": 9, "fused": 0.4})
        >>> best.restore(model), float(model.weight)
        (5, 1.0)
    """

    def __init__(self) -> None:
        self.point: dict[str, Any] | None = None
        self.state: dict[str, Any] | None = None

    def offer(self, model: Any, point: Mapping[str, Any]) -> None:
        """Snapshot ``model`` if ``point`` is at least as good as the best so far."""
        if self.point is None or point["fused"] >= self.point["fused"]:
            self.point = dict(point)
            self.state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def restore(self, model: Any) -> int | None:
        """Load the best point's weights into ``model``; returns its step (None when nothing was offered)."""
        if self.state is None or self.point is None:
            return None
        model.load_state_dict(self.state)
        return self.point["step"]


class DevCurveCallback(TrainerCallback):
    """Appends ``count`` evenly spaced :func:`curve_point` records of one training phase to ``points``.

    Only the main process evaluates; the others train on (the points are written by the main process only).
    Each point is offered to ``best`` (when given), which keeps the best point's weights.
    """

    def __init__(
        self, model: Any, dev: DevCandidates, count: int, phase: str, points: list[dict], best: BestPoint | None = None
    ) -> None:
        self.model, self.dev, self.count, self.phase, self.points = model, dev, count, phase, points
        self.best = best
        self.steps: set[int] = set()

    def on_train_begin(self, args, state, control, **kwargs):
        self.steps = set(curve_steps(state.max_steps, self.count))

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step in self.steps and state.is_world_process_zero:
            point = {"phase": self.phase, **curve_point(self.model, self.dev, state.global_step)}
            self.model.train()  # predict() switched it to eval mode
            self.points.append(point)
            if self.best is not None:
                self.best.offer(self.model, point)
            logger.info(
                "rerank %s step %d: dev nDCG@10 reranker %.4f, fused %.4f at weight %.1f (retriever %.4f)",
                self.phase,
                point["step"],
                point["reranker"],
                point["fused"],
                point["weight"],
                point["retriever"],
            )


def plot_learning_curve(points: Sequence[Mapping[str, Any]], path: Path) -> None:
    """Dev nDCG@10 of the retriever, the reranker alone and the fused order against training steps (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    offset, x = 0, []
    phases = list(dict.fromkeys(p["phase"] for p in points))
    for phase in phases:
        steps = [p["step"] for p in points if p["phase"] == phase]
        x += [offset + s for s in steps]
        if phase != phases[0] and offset > 0:
            ax.axvline(offset, color="grey", linestyle=":", linewidth=1)
            ax.text(offset, 0.02, f" {phase}", transform=ax.get_xaxis_transform(), fontsize=8, color="grey")
        offset += max(steps, default=0)
    for key, style in (("retriever", "k--"), ("reranker", "o-"), ("fused", "s-")):
        ax.plot(x, [p[key] for p in points], style, label=f"{key} (dev nDCG@10)", markersize=4)
    ax.set_xlabel("training step")
    ax.set_ylabel("dev nDCG@10")
    ax.set_title("Reranker learning curve on the dev slice")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    atomic_save_figure(fig, path, dpi=100)
