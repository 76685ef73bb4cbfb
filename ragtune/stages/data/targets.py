"""Which chunks synthesis asks about: the measuring shares get just enough, training documents the rest.

With no labelled question, two slices are made of synthetic queries: the eval split (queries of held-out
documents) and the dev slice the promotion gates read (queries of dev documents: held-out *training* documents,
``split.dev_fraction``). Each needs only so many queries to measure (``eval.min_queries``,
``split.dev_min_queries``, plus a margin); every other target of ``synth.max_chunks`` is worth more on a
training document, where its query becomes a training pair. So the measuring shares are synthesized first, in
rounds: the first round's size assumes ``synth.held_out_yield`` (kept queries per target chunk), each later
round is sized by the yield measured so far, until the share reaches its goal or its chunks run out. The
training share takes what is left of the cap.

The order in which chunks are visited (:func:`document_round_robin`) comes from its
own random stream, seeded apart from the one that chooses the held-out documents: with one shared stream the
first documents visited would be exactly the held-out ones.

Example:
    >>> round_size(goal=30, kept=0, taken=0, prior_yield=0.4, margin=1.25)
    94
    >>> round_size(goal=30, kept=20, taken=40, prior_yield=0.4, margin=1.25)
    25
"""

from __future__ import annotations

import logging
import math
import random
from collections.abc import Callable

logger = logging.getLogger(__name__)

MAX_SHARE_ROUNDS = 3  # a yield so low that three rounds miss a share's goal is reported, not chased
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


def round_size(goal: int, kept: int, taken: int, prior_yield: float, margin: float) -> int:
    """A share's chunks to synthesize next so that ``goal`` queries are kept, at the yield measured so far.

    Args:
        goal: the share's queries wanted (``eval.min_queries``, ``split.dev_min_queries``).
        kept: its queries kept by the rounds so far.
        taken: its chunks asked about so far.
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


def fill_share(
    name: str,
    pool: list[dict],
    goal: int,
    budget: int,
    prior_yield: float,
    margin: float,
    synthesize: Callable[[list[dict]], tuple[list[dict], dict]],
) -> tuple[list[dict], list[dict], dict]:
    """Synthesize for ``pool``'s chunks in rounds until ``goal`` queries are kept (or the pool, the budget or the
    rounds run out).

    Args:
        name: the share's name, for the log.
        pool: its chunks in visiting order.
        goal: queries wanted.
        budget: most chunks it may take (what is left of ``synth.max_chunks``).
        prior_yield, margin: see :func:`round_size`.
        synthesize: chunks -> (query rows, synth report).

    Returns:
        (query rows, the rounds' synth reports, ``{"targets", "kept", "rounds", "goal"}``).
    """
    rows: list[dict] = []
    reports: list[dict] = []
    taken = rounds = 0
    while rounds < MAX_SHARE_ROUNDS and taken < min(len(pool), budget):
        size = round_size(goal, len(rows), taken, prior_yield, margin)
        size = min(size, len(pool) - taken, budget - taken)
        if size <= 0:
            break
        got, report = synthesize(pool[taken : taken + size])
        rows += got
        reports.append(report)
        taken += size
        rounds += 1
        logger.info("synthesis, %s round %d: %d queries kept for %d chunks so far", name, rounds, len(rows), taken)
    if pool and len(rows) < goal:
        logger.warning(
            "synthesis: %d %s queries for a goal of %d (%d chunks asked about, %d round(s))",
            len(rows),
            name,
            goal,
            taken,
            rounds,
        )
    return rows, reports, {"targets": taken, "kept": len(rows), "rounds": rounds, "goal": goal if pool else 0}


def synthesize_shares(
    measured: dict[str, tuple[list[dict], int]],
    train_pool: list[dict],
    cap: int | None,
    prior_yield: float,
    margin: float,
    synthesize: Callable[[list[dict]], tuple[list[dict], dict]],
) -> tuple[dict[str, list[dict]], list[dict], dict]:
    """Synthesize for the measuring shares until each keeps its goal, then for training chunks up to the cap.

    The measuring shares (the held-out documents for the eval split, the dev documents for the promotion gates)
    are filled in order. Their queries pass the same round trip, so a later share's first round is sized by the
    yield an earlier one measured (``prior_yield`` until one has).

    Args:
        measured: share name -> (its chunks in visiting order, queries wanted); an empty pool skips the share.
        train_pool: training chunks in visiting order.
        cap: ``synth.max_chunks`` over every share (None: every training chunk, and measuring ones as needed).
        prior_yield, margin: see :func:`round_size`.
        synthesize: chunks -> (query rows, synth report) (:func:`ragtune.stages.data.synthesize.synthesize_queries`).

    Returns:
        (query rows per measuring share, training rows, ``{"shares": targets, kept, rounds and goal per share,
        "report": the merged synth report}``).
    """
    total = cap if cap is not None else sum(len(pool) for pool, _ in measured.values()) + len(train_pool)
    rows: dict[str, list[dict]] = {}
    reports: list[dict] = []
    shares: dict[str, dict] = {}
    used = kept = 0
    for name, (pool, goal) in measured.items():
        yield_now = kept / used if used else prior_yield
        rows[name], share_reports, shares[name] = fill_share(
            name, pool, goal, total - used, yield_now, margin, synthesize
        )
        reports += share_reports
        used += shares[name]["targets"]
        kept += shares[name]["kept"]
    train_targets = train_pool[: max(total - used, 0)]
    train_rows, train_report = synthesize(train_targets) if train_targets else ([], None)
    shares["train"] = {"targets": len(train_targets), "kept": len(train_rows)}
    merged = merge_synth_reports([r for r in [*reports, train_report] if r is not None])
    return rows, train_rows, {"shares": shares, "report": merged}


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
