from pathlib import Path

import pytest

from pipeline.models import ModelNotFoundError, resolve_model


def test_bundled_minilm_resolves_to_sentence_transformers_folder() -> None:
    path = Path(resolve_model("bundled:minilm-l6"))
    assert (path / "modules.json").exists() and (path / "model.safetensors").exists()


def test_local_path_passes_through(tiny_bert_dir: Path) -> None:
    assert resolve_model(str(tiny_bert_dir)) == str(tiny_bert_dir)


def test_unknown_bundled_name_lists_the_bundled_ones() -> None:
    with pytest.raises(ModelNotFoundError, match="bundled:minilm-l6|minilm-l6"):
        resolve_model("bundled:gpt-5")


def test_missing_local_path_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model(str(tmp_path / "no-such-model"))


def test_uncached_hub_id_offline_says_downloads_are_disabled() -> None:
    with pytest.raises(ModelNotFoundError, match="downloads are disabled"):
        resolve_model("some-org/model-that-is-not-cached")


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
