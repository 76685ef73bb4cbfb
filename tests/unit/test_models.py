from pathlib import Path

import pytest

from ragtune.pipeline.models import ModelNotFoundError, resolve_model


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
