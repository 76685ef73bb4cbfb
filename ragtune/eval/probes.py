"""Similarity probes: does an embedder put a codename close to what it names, and unrelated pairs far?

``eval.probes.close`` lists pairs that should embed close (``["PTO", "Primary Takeover"]``) and
``eval.probes.far`` pairs that should not. The first item of a pair is encoded as a query and the
second as a document, the way retrieval meets them (a query-side adapter is therefore exercised).
The gap ``mean(close) - mean(far)`` should grow when fine-tuning taught the model the domain.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def probe_similarities(model, close: Sequence[Sequence[str]], far: Sequence[Sequence[str]]) -> dict:
    """Cosine similarity of every probe pair, the close and far means, and their gap.

    Args:
        model: a loaded ``SentenceTransformer`` (``encode_query`` / ``encode_document``).
        close: (a, b) pairs that should be similar.
        far: (a, b) pairs that should be dissimilar.

    Returns:
        ``{"pairs": [{"a", "b", "kind", "cosine"}], "mean_close", "mean_far", "gap"}``; a mean is
        None when its list is empty, and so is the gap unless both are defined.

    Example (with a loaded model, not run as a doctest):
        probe_similarities(model, [("PTO", "Primary Takeover")], [("PTO", "lunch menu")])["gap"]
        # -> 0.41...
    """
    pairs = [(a, b, "close") for a, b in close] + [(a, b, "far") for a, b in far]
    if not pairs:
        return {"pairs": [], "mean_close": None, "mean_far": None, "gap": None}
    queries = model.encode_query([a for a, _, _ in pairs], convert_to_tensor=True, normalize_embeddings=True)
    documents = model.encode_document([b for _, b, _ in pairs], convert_to_tensor=True, normalize_embeddings=True)
    cosines = torch.sum(queries * documents, dim=1).cpu().tolist()
    rows = [{"a": a, "b": b, "kind": kind, "cosine": cos} for (a, b, kind), cos in zip(pairs, cosines, strict=True)]

    def _mean(kind: str) -> float | None:
        values = [r["cosine"] for r in rows if r["kind"] == kind]
        return sum(values) / len(values) if values else None

    mean_close, mean_far = _mean("close"), _mean("far")
    gap = mean_close - mean_far if mean_close is not None and mean_far is not None else None
    return {"pairs": rows, "mean_close": mean_close, "mean_far": mean_far, "gap": gap}
