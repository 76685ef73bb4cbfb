"""What the training stages share in their training arguments: the common defaults of a sentence-transformers
trainer, and where tensorboard's event files go.

Local training curves:
``*.trainer.report_to: tensorboard`` is the one tracker allowed without opting in
(:func:`ragtune.pipeline.config.check_trackers`): its event files stay in the run. transformers writes them where
``TENSORBOARD_LOGGING_DIR`` says, else inside the checkpoint folder, which the stages remove when they
finish; :func:`route_tensorboard` points them at ``<stage>/tensorboard/`` beside it, where they are kept.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TENSORBOARD_DIR = "tensorboard"  # a stage folder's subfolder holding the event files


def common_training_args(epochs: float, max_steps: int, batch_size: int, learning_rate: float, seed: int) -> dict:
    """The training-argument defaults stage 1 and the GPL round share (the stage adds its own, then the user's
    ``trainer`` mapping wins): 10% warm-up, seeded data order, CPU when there is no GPU, bf16 autocast where the
    hardware has native bf16 math (:func:`ragtune.pipeline.precision.bf16_training`), no tracker."""
    import torch

    from ragtune.pipeline.precision import bf16_training

    return {
        "num_train_epochs": epochs,
        "max_steps": max_steps,
        "per_device_train_batch_size": batch_size,
        "learning_rate": learning_rate,
        "warmup_steps": 0.1,  # a float is a ratio of the total steps (transformers 5)
        "seed": seed,
        "data_seed": seed,
        "use_cpu": not torch.cuda.is_available(),
        "bf16": bf16_training(),
        "report_to": "none",
        "logging_first_step": True,
        "dataloader_drop_last": False,
    }


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
