"""Configurations compared: means with bootstrap intervals, paired deltas, and the verdicts read from them.

Every configuration is compared with ``rag_only`` and with the configuration before it, on the same
queries (paired bootstrap, :mod:`ragtune.eval.metrics`); a verdict says gained, no significant change or hurt.
"""

from __future__ import annotations

from collections.abc import Sequence

from ragtune.eval.metrics import Interval, bootstrap_mean, mean_defined, paired_bootstrap, verdict

VERDICT_METRICS = ("ndcg@10", "recall@10", "f1")
BASELINES = ("rag_only", "rag_hybrid")  # the untrained configurations (eval.configurations)
# Untrained alternatives of one stage, listed just before its tuned configuration: that configuration is read
# against the step before them (what the stage adds) and against them (whether training paid), under this label.
SIDE_BASELINES = {"embed_rerank_untrained": "vs_untrained_reranker", "extractive": "vs_extractive"}
LOWER_IS_BETTER = frozenset({"abstain_with_evidence"})


def summarize(rows: list[dict], metrics: Sequence[str], samples: int, seed: int) -> tuple[dict, dict]:
    """Mean of each metric over the rows (undefined values left out) and its bootstrap interval.

    Returns:
        (``{metric: mean}``, ``{metric: interval dict or None}``).
    """
    summary, intervals = {}, {}
    for metric in metrics:
        values = [r.get(metric) for r in rows]
        summary[metric] = mean_defined(values)
        iv = bootstrap_mean(values, samples, seed)
        intervals[metric] = iv.as_dict() if iv else None
    return summary, intervals


def stronger_baseline(rows: dict[str, list[dict]], names: Sequence[str], metric: str = "ndcg@10") -> str:
    """Of the untrained baselines evaluated (``rag_only``, ``rag_hybrid``), the one with the higher mean ``metric``.

    Ties and an unmeasured metric go to the first (``rag_only``).

    Example:
        >>> rows = {"rag_only": [{"ndcg@10": 0.4}], "rag_hybrid": [{"ndcg@10": 0.5}], "embed": [{"ndcg@10": 0.45}]}
        >>> stronger_baseline(rows, ["rag_only", "rag_hybrid", "embed"])
        'rag_hybrid'
    """
    present = [n for n in names if n in BASELINES]

    def mean(name: str) -> float:
        value = mean_defined([r.get(metric) for r in rows[name]])
        return -1.0 if value is None else value

    return max(present, key=lambda n: (mean(n), -present.index(n)))


def compare(
    rows: dict[str, list[dict]], names: list[str], metrics: Sequence[str], samples: int, seed: int
) -> dict[str, dict]:
    """Paired bootstrap deltas of every metric against ``rag_only`` and against the previous configuration.

    The first tuned configuration's previous step is the stronger untrained baseline (:func:`stronger_baseline`):
    stage 1 is read against hybrid retrieval where BM25 with the base embedder is the better untrained choice.
    A configuration after a side baseline (:data:`SIDE_BASELINES`) is read against the step before it and against
    the side baseline: ``embed_rerank`` against ``embed`` (what the tuned reranker adds) and against
    ``embed_rerank_untrained`` (whether training the reranker paid); ``full`` against ``embed_rerank`` (what the
    tuned generator adds over the base one) and against ``extractive`` (whether it beats quoting the best sentence).
    """
    deltas: dict[str, dict] = {}
    strongest = stronger_baseline(rows, names)
    for i, name in enumerate(names[1:], 1):
        previous = names[i - 1]
        if previous in BASELINES and name not in BASELINES:
            previous = strongest
        refs = {"vs_rag_only": names[0], "vs_previous": previous}
        if previous in SIDE_BASELINES and i >= 2:
            refs |= {"vs_previous": names[i - 2], SIDE_BASELINES[previous]: previous}
        deltas[name] = {}
        for label, ref in refs.items():
            intervals = {}
            for metric in metrics:
                iv = paired_bootstrap(
                    [r.get(metric) for r in rows[ref]], [r.get(metric) for r in rows[name]], samples, seed
                )
                intervals[metric] = iv.as_dict() if iv else None
            deltas[name][label] = {"reference": ref, "metrics": intervals}
    return deltas


def verdicts(deltas: dict[str, dict], metrics: Sequence[str]) -> dict[str, list[dict]]:
    """Gained / no significant change / hurt per configuration, metric and reference.

    Each configuration's verdicts against its previous step come first: they say what that step itself
    added (a tuned reranker over the tuned embedder), where the verdicts against ``rag_only`` also count
    every earlier step's gain.
    """
    out: dict[str, list[dict]] = {}
    for name, by_ref in deltas.items():
        out[name] = []
        for label, entry in sorted(by_ref.items(), key=lambda item: item[0] != "vs_previous"):
            if label == "vs_previous" and entry["reference"] == by_ref["vs_rag_only"]["reference"]:
                continue  # the first compared configuration's previous one is rag_only itself
            for metric in metrics:
                iv = entry["metrics"].get(metric)
                if iv is None:
                    continue
                word = verdict(Interval(**iv), higher_is_better=metric not in LOWER_IS_BETTER)
                out[name].append({"metric": metric, "vs": entry["reference"], "label": label, "verdict": word, **iv})
    return out
