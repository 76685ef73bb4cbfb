"""Which precision training runs in on this machine: bf16 autocast where the hardware has native bf16 math.

A GPU with bf16 support trains in bf16 mixed precision, as usual. A CPU does too when it has native bf16
instructions (AVX512-BF16, which AMX-capable Xeons also have). Measured on the project's 2-core Xeon on the
demo: stage 1's training took 28 s instead of 57 s (same held-out and dev nDCG@10 to three decimals), stage 2's
59 s instead of 89 s (dev figures within run-to-run noise), and LoRA training of the bundled SmolLM2 read 1.4x
more tokens per second (``scripts/bench_raft.py``). Without them bf16 is emulated and slower, so such a CPU
stays in fp32. The master weights stay fp32 either way (autocast). Every stage's ``trainer:`` section can
override it (``bf16: false``).
"""

from __future__ import annotations


def bf16_training() -> bool:
    """True when training should use bf16 autocast: a bf16-capable GPU, or a CPU with native bf16 math.

    Example:
        >>> isinstance(bf16_training(), bool)
        True
    """
    import torch

    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    is_supported = getattr(torch.cpu, "_is_avx512_bf16_supported", None)  # torch has no public query yet
    return bool(is_supported and is_supported())


def inference_dtype(choice: str) -> str:
    """The weights' precision for a local LLM (``synth.llm.dtype``, ``raft.teacher.dtype``,
    ``rerank.query_likelihood.dtype``, ``assemble.dtype``).

    ``auto`` is bf16 wherever the hardware has native bf16 math (a bf16-capable GPU, a CPU with
    AVX512-BF16) and fp32 elsewhere; ``float32`` and ``bfloat16`` are taken as given. A LoRA adapter on bf16
    weights stays unmerged (:func:`ragtune.pipeline.generator.load_generator`), so no fine-tuned delta is rounded away.
    Measured on the project's 2-core Xeon: the demo's 120 synthesis chunks in 26.6 s instead of 53.5 s (the
    same question rate 1.00, copy rate 0.00 and round-trip hit@10 0.425); 16 RAFT dev answers of 64 tokens in
    19.0 s instead of 37.5 s (base) and 22.6 s instead of 35.4 s (with the unmerged adapter); 10 and 7 of the 16
    greedy answers are word for word the fp32 ones (bf16 rounding changes some argmax tokens).

    Example:
        >>> inference_dtype("float32")
        'float32'
    """
    if choice != "auto":
        return choice
    return "bfloat16" if bf16_training() else "float32"
