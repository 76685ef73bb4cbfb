"""The one loader of a configuration's models (ragtune.pipeline.stack): each model loaded once, shared by all."""

from pathlib import Path

import pytest
import torch

import ragtune.pipeline.stack as stack_module
from ragtune.pipeline.components import Components
from ragtune.pipeline.config import AssembleConfig, ConfigError, RagtuneConfig
from ragtune.pipeline.extractive import EXTRACTIVE
from ragtune.pipeline.stack import StackLoader


def config() -> RagtuneConfig:
    return RagtuneConfig(run={"name": "x"}, data={"docs": "d"})


def counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Count the loader's calls of its underlying load functions (each stands in with a fresh object)."""
    calls: list[tuple] = []

    def fake(name):
        return lambda *args: calls.append((name, *args)) or ((object(), object()) if name == "generator" else object())

    monkeypatch.setattr(stack_module, "load_reranker", fake("reranker"))
    monkeypatch.setattr(stack_module, "load_generator", fake("generator"))
    return calls


def test_a_shared_embedder_loads_once_and_each_dimension_is_a_view_of_its_weights(tiny_bert_dir: Path) -> None:
    loader = StackLoader(config())
    full = loader.embedder(str(tiny_bert_dir))
    cut = loader.embedder(str(tiny_bert_dir), 16)
    assert loader.embedder(str(tiny_bert_dir)) is full and loader.embedder(str(tiny_bert_dir), 16) is cut
    assert (full.truncate_dim, cut.truncate_dim) == (None, 16)
    assert next(cut.parameters()) is next(full.parameters())  # one copy of the weights
    vectors, cut_vectors = full.encode(["heron fails over"]), cut.encode(["heron fails over"])
    assert cut_vectors.shape[-1] == 16 and torch.allclose(torch.tensor(cut_vectors), torch.tensor(vectors[:, :16]))
    with pytest.raises(ConfigError, match=r"assemble\.truncate_dim: 64 exceeds the embedding dimension 32"):
        loader.embedder(str(tiny_bert_dir), 64)


def test_configurations_sharing_models_load_each_once(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    calls = counting(monkeypatch)
    monkeypatch.setattr(stack_module, "load_embedder", lambda path: calls.append(("embedder", path)) or object())
    (tmp_path / "rerank").mkdir()
    (tmp_path / "rerank" / "ragtune_fusion.json").write_text('{"fusion_weight": 0.4}')
    loader = StackLoader(config(), tmp_path / "scores")
    choice = AssembleConfig(dtype="float32")
    tuned = Components("embed", str(tmp_path / "rerank"), "llama", "adapter")
    stacks = [
        loader.stack(Components("base", None, "llama"), choice),
        loader.stack(tuned, choice, generator=False),
        loader.stack(tuned, choice),
        loader.stack(Components("embed", str(tmp_path / "rerank"), EXTRACTIVE), choice),
    ]
    assert stacks[1].reranker is stacks[2].reranker is stacks[3].reranker and stacks[2].fusion_weight == 0.4
    assert stacks[1].generator is None and stacks[3].generator is None and stacks[3].extractive
    assert calls == [
        ("embedder", "base"),
        ("generator", "llama", None, "float32"),
        ("embedder", "embed"),
        ("reranker", str(tmp_path / "rerank"), 256, 42, tmp_path / "scores", 1024),  # prefix_cache_mb
        ("generator", "llama", "adapter", "float32"),
    ]


def test_one_generator_stays_loaded_unless_asked_for_more(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = counting(monkeypatch)
    loader = StackLoader(config())
    first = loader.generator("a")
    assert loader.generator("a") is first and len(calls) == 1
    loader.generator("b")
    loader.generator("a")  # "a" went when "b" came: loaded again
    assert [c[1] for c in calls] == ["a", "b", "a"]
    loader.release_generators()
    loader.generator("a")
    assert len(calls) == 4
    two = StackLoader(config(), resident_generators=2)
    two.generator("a"), two.generator("b"), two.generator("a")
    assert len(calls) == 6
