"""Local training curves: where a stage's tensorboard event files go.

``*.trainer.report_to: tensorboard`` is the one tracker allowed without opting in
(:func:`pipeline.config.check_trackers`): its event files stay in the run. transformers writes them where
``TENSORBOARD_LOGGING_DIR`` says, else inside the checkpoint folder, which the stages remove when they
finish; :func:`route_tensorboard` points them at ``<stage>/tensorboard/`` beside it, where they are kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"  # a stage folder's subfolder holding the event files


def reports_to_tensorboard(trainer: Mapping[str, Any]) -> bool:
    """True when a ``<section>.trainer`` mapping's ``report_to`` names tensorboard.

    Example:
        >>> reports_to_tensorboard({"report_to": ["none", "tensorboard"]}), reports_to_tensorboard({})
        (True, False)
    """
    value = trainer.get("report_to")
    return value == "tensorboard" or (isinstance(value, list | tuple) and "tensorboard" in value)


def route_tensorboard(trainer: Mapping[str, Any], checkpoints: str | Path) -> Path | None:
    """Send tensorboard's event files to ``<stage>/tensorboard/`` (the checkpoint folder's sibling).

    Returns:
        The folder, or None when the trainer does not report to tensorboard.
    """
    if not reports_to_tensorboard(trainer):
        return None
    folder = Path(checkpoints).parent / TENSORBOARD_DIR
    os.environ["TENSORBOARD_LOGGING_DIR"] = str(folder)
    return folder
