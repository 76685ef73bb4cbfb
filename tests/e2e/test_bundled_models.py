"""The bundled generator's real weights: converted from GGUF once, and they answer (about 270 MB loaded)."""

from pathlib import Path

import pytest

from ragtune.pipeline.models import resolve_model


@pytest.mark.e2e
def test_bundled_smollm2_converts_once_and_generates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The GGUF is converted into a transformers folder once; the second call reuses it."""
    monkeypatch.setenv("RAGTUNE_CACHE", str(tmp_path / "cache"))
    path = Path(resolve_model("bundled:smollm2-135m-instruct"))
    stamp = (path / "config.json").stat().st_mtime_ns
    assert resolve_model("bundled:smollm2-135m-instruct") == str(path)
    assert (path / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]

    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    inputs = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=12, do_sample=False)
    answer = tok.decode(out[0][inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "Paris" in answer
