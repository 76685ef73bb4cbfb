"""Shared fixtures: offline mode, tiny random models built once per session from fixture text.

- ``tiny_bert_dir``: a sentence-transformers folder (2-layer BERT, WordPiece vocab trained here).
- ``tiny_llama_dir``: a LlamaForCausalLM folder (2 layers) with a byte-level BPE tokenizer and a
  ChatML chat template like SmolLM2's.
Each test gets its own copy, so a test that trains one cannot disturb another.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

FIXTURES = Path(__file__).parent / "fixtures"
ROOT = Path(__file__).parent.parent
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' }}"
    "{% if message['role'] == 'assistant' %}{% generation %}{{ message['content'] + '<|im_end|>' }}{% endgeneration %}"
    "{% else %}{{ message['content'] + '<|im_end|>' }}{% endif %}{{ '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def fixture_text() -> list[str]:
    """Every line of the fixture documents and questions: the tiny tokenizers' training text."""
    lines = []
    for path in sorted(FIXTURES.rglob("*")):
        if path.is_file():
            lines += [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines


def build_tiny_bert(target: Path) -> Path:
    """A 2-layer BERT sentence-transformer with a WordPiece tokenizer trained on the fixture text."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok.train_from_iterator(fixture_text(), trainers.WordPieceTrainer(vocab_size=600, special_tokens=specials))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    hf_dir = target / "hf"
    BertTokenizerFast(tokenizer_object=tok).save_pretrained(hf_dir)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=512,
    )
    BertModel(config).save_pretrained(hf_dir)
    encoder = Transformer(str(hf_dir), max_seq_length=128)
    model = SentenceTransformer(modules=[encoder, Pooling(encoder.get_word_embedding_dimension(), "mean")])
    st_dir = target / "st"
    model.save(str(st_dir))
    return st_dir


def build_tiny_llama(target: Path) -> Path:
    """A 2-layer Llama with a byte-level BPE tokenizer (trained on fixture text) and a ChatML template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    trainer = trainers.BpeTrainer(
        vocab_size=800, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(fixture_text(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
    )
    tokenizer.chat_template = CHATML
    tokenizer.save_pretrained(target)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    LlamaForCausalLM(config).save_pretrained(target)
    return target


@pytest.fixture(scope="session")
def _tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    import torch

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("tiny_models")
    return {"bert": build_tiny_bert(root / "bert"), "llama": build_tiny_llama(root / "llama")}


@pytest.fixture
def tiny_bert_dir(_tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(_tiny_models["bert"], tmp_path / "tiny_bert"))


@pytest.fixture
def tiny_llama_dir(_tiny_models: dict[str, Path], tmp_path: Path) -> Path:
    return Path(shutil.copytree(_tiny_models["llama"], tmp_path / "tiny_llama"))


@pytest.fixture
def tiny_config(tmp_path: Path) -> Path:
    """configs/tiny.yaml with its run root moved into the test's temp dir and fixture paths absolute."""
    import yaml

    tree = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    tree["run"]["root"] = str(tmp_path / "runs")
    tree["data"]["docs"] = str(FIXTURES / "docs")
    tree["data"]["questions"] = str(FIXTURES / "questions.jsonl")
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


@pytest.fixture(scope="session")
def load_script():
    """Import ``scripts/<name>.py`` as a module (the scripts are not a package), for testing their functions."""
    import importlib.util

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / f"scripts/{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module

    return load
