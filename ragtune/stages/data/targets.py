"""Which chunks synthesis asks about: held-out documents get just enough, training documents the rest.

With no labelled question held out, the eval split is made of synthetic queries of held-out documents. They
need only ``eval.min_queries`` of them (plus a margin); every other target of ``synth.max_chunks`` is worth
more on a training document, where its query becomes a training pair. So the held-out share is synthesized
first, in rounds: the first round's size assumes ``synth.held_out_yield`` (kept queries per target chunk), each
later round is sized by the yield the earlier rounds measured, until the held-out queries reach the goal or
the held-out chunks run out. The training share takes what is left of the cap.

The order in which chunks are visited (:func:`document_round_robin`) comes from its
own random stream, seeded apart from the one that chooses the held-out documents: with one shared stream the
first documents visited would be exactly the held-out ones.

Example:
    >>> held_out_round_size(goal=30, kept=0, taken=0, prior_yield=0.4, margin=1.25)
    94
    >>> held_out_round_size(goal=30, kept=20, taken=40, prior_yield=0.4, margin=1.25)
    25
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

logger = logging.getLogger(__name__)

MAX_HELD_OUT_ROUNDS = 3  # a yield so low that three rounds miss the goal is reported, not chased
MIN_MEASURED_YIELD = 0.05  # a round that kept (almost) nothing must not ask for the whole corpus next


def document_round_robin(chunks: list[dict], seed: int | str) -> list[dict]:
    """Every chunk, in the order a round robin over documents takes them (seeded).

    Documents are visited in a seeded random order, one chunk each (a seeded random one of those not yet
    taken) per round, so any prefix of the result draws from as many documents as it can instead of the first
    few in path order.

    Args:
        chunks: corpus rows (``id``, ``doc_id``, ...).
        seed: seed of both random orders (an int or a string naming the stream).

    Returns:
        The same rows, in visiting order.

    Example:
        >>> rows = [{"id": f"{d}{i}", "doc_id": d} for d in "ab" for i in range(2)]
        >>> sorted(r["doc_id"] for r in document_round_robin(rows, seed=1)[:2])
        ['a', 'b']
    """
    rng = random.Random(seed)
    by_doc: dict[str, list[int]] = {}
    for i, chunk in enumerate(chunks):
        by_doc.setdefault(chunk["doc_id"], []).append(i)
    queues = [by_doc[d] for d in sorted(by_doc)]
    rng.shuffle(queues)
    for queue in queues:
        rng.shuffle(queue)
    order: list[int] = []
    while len(order) < len(chunks):
        order += [queue.pop() for queue in queues if queue]
    return [chunks[i] for i in order]


def targets_stream(seed: int) -> str:
    """The seed of the synthesis-target stream, apart from the split's (:mod:`ragtune.stages.data.split`) by name.

    Example:
        >>> targets_stream(13)
        'synthesis-targets/13'
    """
    return f"synthesis-targets/{seed}"


def held_out_round_size(goal: int, kept: int, taken: int, prior_yield: float, margin: float) -> int:
    """Held-out chunks to synthesize next so that ``goal`` queries are kept, at the yield measured so far.

    Args:
        goal: held-out queries wanted (``eval.min_queries``).
        kept: held-out queries kept by the rounds so far.
        taken: held-out chunks asked about so far.
        prior_yield: kept queries per chunk assumed before any round measured it.
        margin: factor on the chunks the yield says are needed (a round that falls short costs a round).

    Returns:
        The next round's chunk count (0 when the goal is reached).
    """
    missing = goal - kept
    if missing <= 0:
        return 0
    measured = kept / taken if taken else prior_yield
    return math.ceil(missing * margin / max(measured, MIN_MEASURED_YIELD))


def synthesize_shares(
    held_out_pool: list[dict],
    train_pool: list[dict],
    cap: int | None,
    goal: int,
    prior_yield: float,
    margin: float,
    synthesize: Callable[[list[dict]], tuple[list[dict], dict]],
) -> tuple[list[dict], list[dict], dict]:
    """Synthesize for held-out chunks until ``goal`` queries are kept, then for training chunks up to the cap.

    Args:
        held_out_pool: held-out chunks in visiting order (empty when labelled questions are held out).
        train_pool: training chunks in visiting order.
        cap: ``synth.max_chunks`` over both shares (None: every training chunk, and held-out ones as needed).
        goal: held-out queries wanted.
        prior_yield, margin: see :func:`held_out_round_size`.
        synthesize: chunks -> (query rows, synth report) (:func:`ragtune.stages.data.synthesize.synthesize_queries`).

    Returns:
        (held-out rows, training rows, the shares' report: targets, kept and rounds per share).
    """
    total = cap if cap is not None else len(held_out_pool) + len(train_pool)
    held_rows: list[dict] = []
    taken = rounds = 0
    reports = []
    while rounds < MAX_HELD_OUT_ROUNDS and taken < min(len(held_out_pool), total):
        size = held_out_round_size(goal, len(held_rows), taken, prior_yield, margin)
        size = min(size, len(held_out_pool) - taken, total - taken)
        if size <= 0:
            break
        rows, report = synthesize(held_out_pool[taken : taken + size])
        held_rows += rows
        reports.append(report)
        taken += size
        rounds += 1
        logger.info("synthesis, held-out round %d: %d queries kept for %d chunks so far", rounds, len(held_rows), taken)
    if held_out_pool and len(held_rows) < goal:
        logger.warning(
            "synthesis: %d held-out queries for eval.min_queries %d (%d held-out chunks asked about, %d round(s))",
            len(held_rows),
            goal,
            taken,
            rounds,
        )
    train_targets = train_pool[: max(total - taken, 0)]
    train_rows, train_report = synthesize(train_targets) if train_targets else ([], None)
    shares = {
        "held_out": {"targets": taken, "kept": len(held_rows), "rounds": rounds, "goal": goal if held_out_pool else 0},
        "train": {"targets": len(train_targets), "kept": len(train_rows)},
    }
    merged = merge_synth_reports([r for r in [*reports, train_report] if r is not None])
    return held_rows, train_rows, {"shares": shares, "report": merged}


def add_counts(a: dict, b: dict) -> dict:
    """Numbers added key by key (the LLM usage of two calls).

    Example:
        >>> add_counts({"calls": 1, "model": "m"}, {"calls": 2})
        {'calls': 3, 'model': 'm'}
    """
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            out[key] = round(out.get(key, 0) + value, 4)
        else:
            out.setdefault(key, value)
    return out


RATES = {  # rate key -> the count it is a share of
    "question_rate": "parsed",
    "copy_rate": "parsed",
    "round_trip_hit_at_k": "round_trip_checked",
    "eval_round_trip_hit_at_k": "eval_round_trip_checked",
}


def merge_synth_reports(reports: list[dict]) -> dict:
    """One synth report from several calls: counts added, rates weighted by the count each is a share of.

    Text fields (provider, recipe, round trips) come from the first report that sets them; the LLM usage is
    added key by key.

    Example:
        >>> a = {"recipe": "greedy", "kept": 2, "parsed": 4, "question_rate": 1.0, "llm": {"calls": 4}}
        >>> b = {"recipe": "greedy", "kept": 1, "parsed": 2, "question_rate": 0.5, "llm": {"calls": 2}}
        >>> merged = merge_synth_reports([a, b])
        >>> merged["kept"], merged["question_rate"], merged["llm"]
        (3, 0.8333, {'calls': 6})
    """
    if not reports:
        return {}
    merged: dict = {}
    for report in reports:
        for key, value in report.items():
            if key in RATES:
                continue
            if isinstance(value, bool) or value is None or isinstance(value, str):
                if merged.get(key) is None:
                    merged[key] = value
            elif isinstance(value, (int, float)):
                merged[key] = round(merged.get(key, 0) + value, 4)
            elif isinstance(value, dict):
                merged[key] = add_counts(merged.get(key) or {}, value)
    for rate, weight_key in RATES.items():
        pairs = [(r[rate], r.get(weight_key) or 0) for r in reports if r.get(rate) is not None]
        weight = sum(w for _, w in pairs)
        merged[rate] = round(sum(v * w for v, w in pairs) / weight, 4) if weight else None
    return merged
