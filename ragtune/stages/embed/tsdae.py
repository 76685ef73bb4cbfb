"""Unsupervised domain adaptation before the contrastive step: TSDAE (Wang et al., 2021).

The encoder embeds a sentence with 60% of its words deleted, and a decoder tied to the encoder must rebuild
the whole sentence from that one vector (sentence-transformers' ``DenoisingAutoEncoderLoss``), so the
embedding has to carry the domain's words. The sentences come from chunks of documents no held-out (eval
or dev) query cites. ``embed.tsdae_steps`` (0: off) runs this for that many steps of ``embed.batch_size``
sentences before the pairs are trained on; the GPL paper reports it adds about 1.4 nDCG@10 before GPL.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from datasets import Dataset
from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.losses import DenoisingAutoEncoderLoss
from sentence_transformers.sentence_transformer.trainer import SentenceTransformerTrainer
from sentence_transformers.sentence_transformer.training_args import SentenceTransformerTrainingArguments

from ragtune.pipeline.precision import bf16_training
from ragtune.pipeline.pseudo_queries import sentences_of

logger = logging.getLogger(__name__)
DELETION_RATIO = 0.6  # the TSDAE paper's best noise


def damage(sentence: str, rng: random.Random, ratio: float = DELETION_RATIO) -> str:
    """Delete ``ratio`` of the words at random (at least one word stays), as TSDAE's noise does.

    Example:
        >>> damage("the standby router takes over within thirty seconds", random.Random(0))
        'the standby thirty'
    """
    words = sentence.split()
    keep = [w for w in words if rng.random() >= ratio]
    return " ".join(keep or [rng.choice(words)])


def adaptation_sentences(
    corpus: Sequence[Mapping[str, Any]], held_out_docs: Collection[str], limit: int, seed: int
) -> list[str]:
    """Up to ``limit`` distinct sentences (4..60 words) of chunks whose document no held-out query cites, seeded.

    Example:
        >>> corpus = [{"doc_id": "a", "text": "Heron fails over in thirty seconds. Ok."},
        ...           {"doc_id": "b", "text": "x y z w v."}]
        >>> adaptation_sentences(corpus, {"b"}, 10, seed=0)
        ['Heron fails over in thirty seconds.']
    """
    found = dict.fromkeys(s for c in corpus if c["doc_id"] not in held_out_docs for s in sentences_of(c["text"], 4, 60))
    sentences = list(found)
    random.Random(seed).shuffle(sentences)
    return sentences[:limit]


def adapt_with_tsdae(
    model: SentenceTransformer,
    decoder_path: str,
    sentences: Sequence[str],
    steps: int,
    batch_size: int,
    output_dir: Path,
    seed: int,
    learning_rate: float = 3e-5,
) -> dict[str, Any]:
    """Train ``model`` in place for ``steps`` TSDAE steps on ``sentences`` (damaged, original) pairs.

    The decoder is built from ``decoder_path`` (the base model: same architecture) and tied to the encoder.

    Returns:
        ``{"steps", "sentences", "first_loss", "last_loss", "seconds"}``.
    """
    rng = random.Random(seed)
    data = Dataset.from_dict({"damaged": [damage(s, rng) for s in sentences], "original": list(sentences)})
    args = SentenceTransformerTrainingArguments(
        output_dir=str(output_dir),
        max_steps=steps,
        per_device_train_batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        use_cpu=not torch.cuda.is_available(),
        bf16=bf16_training(),
        report_to="none",
        save_strategy="no",
        logging_steps=max(1, steps // 10),
        logging_first_step=True,
    )
    loss = DenoisingAutoEncoderLoss(model, decoder_name_or_path=decoder_path, tie_encoder_decoder=True)
    started = time.time()
    trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=data, loss=loss)
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    report = {
        "steps": trainer.state.global_step,
        "sentences": len(sentences),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "seconds": round(time.time() - started, 1),
    }
    logger.info("embed: TSDAE adaptation %s", report)
    return report
