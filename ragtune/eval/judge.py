"""The optional LLM judge (``eval.judge``): a 1-5 grade of each answer against the reference answer.

The judge goes through the LLM backend layer (:mod:`ragtune.pipeline.llm`), so its calls are cached and
budgeted like every other; provider ``extractive`` is an offline stand-in that follows token F1.
"""

from __future__ import annotations

import logging
import re

from ragtune.eval.metrics import parse_judge_score
from ragtune.pipeline.answer_metrics import token_f1
from ragtune.pipeline.config import RagtuneConfig
from ragtune.pipeline.llm import make_backend
from ragtune.pipeline.quoting import DATA_RULE, neutralise, quote_document
from ragtune.pipeline.raft_format import parse_answer
from ragtune.pipeline.rundir import EVAL_JUDGE_CACHE, RunDir

logger = logging.getLogger(__name__)

JUDGE_SYSTEM = (
    "You grade answers to questions about internal documentation. Compare the candidate answer with "
    "the reference answer and rate it from 1 (wrong or unrelated) to 5 (fully correct and complete). "
    "Reply with one line: 'Score: N'. The candidate answer may quote documents: "
    f"{DATA_RULE}"
)
_JUDGE_FIELDS = re.compile(
    r"Reference answer:\n<document>\n(.*?)\n</document>\n\nCandidate answer:\n<document>\n(.*?)\n</document>\n\nScore",
    re.DOTALL,
)
Messages = list[dict[str, str]]


def judge_messages(question: str, reference: str, answer: str) -> Messages:
    """Chat messages asking the judge for a 1-5 score of ``answer`` against ``reference`` (both delimited
    and neutralised like documents: an answer that copies a planted instruction is graded, not obeyed)."""
    user = (
        f"Question:\n{neutralise(question.strip())}\n\nReference answer:\n{quote_document(reference)}\n\n"
        f"Candidate answer:\n{quote_document(answer)}\n\nScore the candidate from 1 to 5."
    )
    return [{"role": "system", "content": JUDGE_SYSTEM}, {"role": "user", "content": user}]


def extractive_judge(messages: Messages) -> str:
    """Offline stand-in judge (provider ``extractive``): the score follows token F1, 1 + round(4 F1)."""
    match = _JUDGE_FIELDS.search(messages[-1]["content"])
    if match is None:
        raise ValueError("judge prompt without reference and candidate answers")
    return f"Score: {1 + round(4 * token_f1(match.group(2), match.group(1)))}"


def judge_answers(
    cfg: RagtuneConfig, run: RunDir, queries: list[dict], answered: list[int], names: list[str], rows: dict
) -> dict:
    """Score every answer 1-5 with the configured judge through the LLM backend layer (cached, budgeted).

    Each row of ``rows[name][i]`` (``i`` in ``answered``) gains ``judge``: the score, or None when the
    reply held no readable one.

    Returns:
        The judge's model, provider, unreadable count and usage, for the report.
    """
    backend = make_backend(cfg.eval.judge, run.path(EVAL_JUDGE_CACHE), extractor=extractive_judge)
    items = [(name, i) for name in names for i in answered]
    requests = [
        judge_messages(
            queries[i]["text"],
            queries[i]["answer"],
            parse_answer(rows[name][i]["answer"]).answer or rows[name][i]["answer"],
        )
        for name, i in items
    ]
    replies = backend.generate(requests, temperature=0.0, desc="judge")
    unreadable = 0
    for (name, i), reply in zip(items, replies, strict=True):
        score = parse_judge_score(reply)
        unreadable += score is None
        rows[name][i]["judge"] = score
    if unreadable:
        logger.warning("eval: %d judge replies had no readable 1-5 score (left out of the judge mean)", unreadable)
    return {"model": cfg.eval.judge.model, "provider": cfg.eval.judge.provider, "unreadable": unreadable} | {
        "usage": backend.usage.as_dict()
    }
