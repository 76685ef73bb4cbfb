from pathlib import Path

import pytest
import yaml

from ragtune.pipeline.config import ConfigError, apply_overrides, check_trainer_keys, dump_config, load_config
from ragtune.pipeline.rundir import RunDir

CONFIGS = sorted((Path(__file__).parents[2] / "configs").rglob("*.yaml"))
DOMAIN_CONFIGS = [p for p in CONFIGS if "accelerate" not in p.parts]


@pytest.mark.parametrize("path", DOMAIN_CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_validates(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.run.name


def test_shipped_configs_include_tiny_and_demo() -> None:
    names = {p.name for p in DOMAIN_CONFIGS}
    assert {"tiny.yaml", "demo.yaml"} <= names


def test_override_sets_typed_value() -> None:
    cfg = load_config(Path("configs/tiny.yaml"), ["embed.epochs=3", "embed.loss=gist", "synth.llm.concurrency=4"])
    assert cfg.embed.epochs == 3.0
    assert cfg.embed.loss == "gist"
    assert cfg.synth.llm.concurrency == 4


def test_unknown_key_names_its_dotted_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {name: x}\ndata: {docs: d}\nrerank:\n  mining:\n    num_negativs: 3\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "rerank.mining.num_negativs" in str(err.value)
    assert str(bad) in str(err.value)


def test_a_query_likelihood_prompt_without_its_passage_slot_names_the_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("run: {name: x}\ndata: {docs: d}\nrerank:\n  query_likelihood:\n    prompt: 'Question:'\n")
    with pytest.raises(ConfigError) as err:
        load_config(bad)
    assert "rerank.query_likelihood.prompt" in str(err.value) and "{passage}" in str(err.value)


@pytest.mark.parametrize(
    ("override", "line"),
    [
        ("synt.enabled=false", "synt: unknown key; did you mean 'synth'?"),
        ("data.chunk_sise=3", "data.chunk_sise: unknown key; did you mean 'chunk_size'?"),
        ("rerank.mining.num_negativs=3", "rerank.mining.num_negativs: unknown key; did you mean 'num_negatives'?"),
        ("eval.custom.mine.embeder=tuned", "eval.custom.mine.embeder: unknown key; did you mean 'embedder'?"),
        ("eval.judge.providr=local", "eval.judge.providr: unknown key; did you mean 'provider'?"),
        ("embed.zqxwv=1", "embed.zqxwv: unknown key (misspelled?)"),  # nothing close: no guess
    ],
)
def test_a_misspelled_key_gets_a_did_you_mean_from_its_own_section(override: str, line: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Path("configs/tiny.yaml"), [override])
    assert f"  {line}" in str(err.value).splitlines()


@pytest.mark.parametrize("key", ["base_model", "start_from", "head", "loss", "warm_start_steps", "max_length"])
def test_a_cross_encoder_setting_at_its_old_place_says_where_it_moved(tmp_path: Path, key: str) -> None:
    old = tmp_path / "old.yaml"
    old.write_text(f"run: {{name: x}}\ndata: {{docs: d}}\nrerank:\n  kind: cross_encoder\n  {key}: 1\n")
    with pytest.raises(ConfigError) as err:
        load_config(old)
    assert f"  rerank.{key}: moved to rerank.cross_encoder.{key}" in str(err.value).splitlines()
    with pytest.raises(ConfigError, match=rf"rerank\.{key}: moved to rerank\.cross_encoder\.{key}"):
        load_config(Path("configs/tiny.yaml"), [f"rerank.{key}=1"])


def test_a_runs_resolved_config_written_before_the_move_still_loads(tmp_path: Path) -> None:
    tree = yaml.safe_load(dump_config(load_config(Path("configs/tiny.yaml"), ["rerank.cross_encoder.loss=lambda"])))
    tree["rerank"] |= tree["rerank"].pop("cross_encoder")  # the flat layout of a config.resolved.yaml from before
    old = tmp_path / "config.resolved.yaml"
    old.write_text(yaml.safe_dump(tree))
    with pytest.raises(ConfigError, match="moved to rerank.cross_encoder.loss"):
        load_config(old)
    assert load_config(old, resolved=True).rerank.cross_encoder.loss == "lambda"


def test_an_answered_configuration_must_be_one_eval_compares() -> None:
    with pytest.raises(ConfigError, match=r"eval\.generation_configurations: 'ful' not in eval\.configurations"):
        load_config(Path("configs/tiny.yaml"), ["eval.generation_configurations=[rag_only, ful]"])
    cfg = load_config(Path("configs/tiny.yaml"), ["eval.generation_configurations=[embed]"])
    assert cfg.eval.generation_configurations == ["embed"]


def test_a_misspelled_trainer_key_gets_a_did_you_mean() -> None:
    from transformers import TrainingArguments

    with pytest.raises(
        ConfigError,
        match=r"^rerank\.trainer\.gradient_acumulation_steps: .*; did you mean 'gradient_accumulation_steps'\?$",
    ):
        check_trainer_keys("rerank", {"gradient_acumulation_steps": 4}, TrainingArguments)


def test_bad_value_names_key_and_override_typo_rejected() -> None:
    with pytest.raises(ConfigError, match=r"embed\.method"):
        load_config(Path("configs/tiny.yaml"), ["embed.method=qlora"])
    with pytest.raises(ConfigError, match="embed.epoks"):
        load_config(Path("configs/tiny.yaml"), ["embed.epoks=1"])
    with pytest.raises(ConfigError, match="key.subkey=value"):
        load_config(Path("configs/tiny.yaml"), ["embed.epochs"])


def test_apply_overrides_parses_yaml_scalars() -> None:
    tree = apply_overrides({}, ["a.b=1", "a.c=true", "a.d=[1, 2]", "a.e=null"])
    assert tree == {"a": {"b": 1, "c": True, "d": [1, 2], "e": None}}


def test_resolved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(Path("configs/tiny.yaml"), ["rerank.cross_encoder.loss=lambda"])
    out = tmp_path / "resolved.yaml"
    out.write_text(dump_config(cfg))
    again = load_config(out)
    assert again == cfg
    run = RunDir(tmp_path / "run")
    assert run.freshness(again, ("rerank",)) == run.freshness(cfg, ("rerank",))
    assert run.freshness(again, ("rerank",)) != run.freshness(load_config(Path("configs/tiny.yaml")), ("rerank",))


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("run: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(broken)


TINY = Path(__file__).parents[2] / "configs" / "tiny.yaml"


def test_a_section_written_twice_is_refused_naming_it_and_both_lines(tmp_path: Path) -> None:
    lines = TINY.read_text().splitlines()
    first = 1 + next(i for i, line in enumerate(lines) if line.startswith("embed:"))
    config = tmp_path / "twice.yaml"
    config.write_text("\n".join([*lines, "embed:", "  batch_size: 64", ""]))
    with pytest.raises(ConfigError) as err:
        load_config(config)
    assert str(err.value) == (
        f"config {config}: key 'embed' appears twice, at lines {first} and {len(lines) + 1} "
        "(the second would silently replace the first); keep one"
    )


def test_a_key_written_twice_inside_a_section_is_refused_by_its_dotted_path(tmp_path: Path) -> None:
    config = tmp_path / "twice.yaml"
    nested = "embed:\n  epochs: 1\n  trainer:\n    warmup_ratio: 0.1\n    warmup_ratio: 0.2\n"
    config.write_text(TINY.read_text().replace("embed:\n  epochs: 1\n", nested))
    with pytest.raises(ConfigError, match=r"key 'embed.trainer.warmup_ratio' appears twice, at lines 21 and 22 "):
        load_config(config)


def test_keys_beside_a_yaml_merge_override_it_without_counting_as_duplicates(tmp_path: Path) -> None:
    config = tmp_path / "merge.yaml"
    config.write_text(TINY.read_text().replace("embed:\n", "embed:\n  <<: {learning_rate: 0.5, epochs: 7}\n"))
    cfg = load_config(config)
    assert (cfg.embed.learning_rate, cfg.embed.epochs) == (0.5, 1.0)  # the key written beside the merge wins


def test_an_unusable_config_file_is_one_line_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "configs"
    folder.mkdir()
    latin1 = tmp_path / "latin1.yaml"
    latin1.write_bytes("run:\n  name: caf\xe9\n".encode("latin-1"))
    expected = {
        folder: f"config {folder} is a folder, not a YAML file",
        latin1: f"config {latin1} is not UTF-8 text (byte 0xe9 at offset 16); save it as UTF-8",
        tmp_path / "missing.yaml": f"config file not found: {tmp_path / 'missing.yaml'}",
    }
    for path, message in expected.items():
        with pytest.raises(ConfigError) as err:
            load_config(path)
        assert str(err.value) == message

    def denied(self: Path, *args, **kwargs) -> str:
        raise PermissionError(13, "Permission denied", str(self))  # the tests run as root, where chmod 000 does not

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError) as err:
        load_config(TINY)
    assert str(err.value) == f"config {TINY} cannot be read (Permission denied)"


def test_config_reference_doc_is_up_to_date() -> None:
    import subprocess
    import sys

    root = Path(__file__).parents[2]
    proc = subprocess.run(
        [sys.executable, "scripts/config_reference.py", "--check"], cwd=root, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("value", ["sk-proj-7f3aQ9c2e5bXYZ", "abcdef0123456789abcdef0123456789abcd", "MY KEY", "$KEY"])
def test_a_key_pasted_into_api_key_env_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(Path("configs/tiny.yaml"), [f"synth.llm.api_key_env={value}"])
    assert "synth.llm.api_key_env" in str(err.value) and "NAME of an environment variable" in str(err.value)
    assert value not in str(err.value)
    assert load_config(Path("configs/tiny.yaml"), ["synth.llm.api_key_env=OPENAI_API_KEY"]).synth.llm.api_key_env


@pytest.mark.parametrize("name", ["", "..", ".", "a/b", "/tmp/x", "../up", ".hidden", "a\\b"])
def test_run_name_must_be_one_safe_path_component(name: str) -> None:
    with pytest.raises(ConfigError, match=r"run\.name"):
        load_config(Path("configs/tiny.yaml"), [f"run.name='{name}'"])
    assert load_config(Path("configs/tiny.yaml"), ["run.name=demo-2.v1_x"]).run.name == "demo-2.v1_x"


@pytest.mark.parametrize(
    ("trainer", "key"),
    [
        ({"push_to_hub": True}, "push_to_hub"),
        ({"hub_token": "hf_x"}, "hub_token"),
    ],
)
def test_trainer_settings_that_leave_the_machine_are_refused(trainer: dict, key: str) -> None:
    from transformers import TrainingArguments

    with pytest.raises(ConfigError, match=rf"embed\.trainer\.{key}: "):
        check_trainer_keys("embed", trainer, TrainingArguments)
    check_trainer_keys("embed", {"report_to": "none", "logging_steps": 5}, TrainingArguments)


def test_tensorboard_is_allowed_and_remote_trackers_only_by_name(monkeypatch) -> None:
    tiny = Path("configs/tiny.yaml")
    cfg = load_config(tiny, ["embed.trainer.report_to=tensorboard", "raft.trainer.report_to=[none, tensorboard]"])
    assert cfg.embed.trainer["report_to"] == "tensorboard"
    for value in ("wandb", "[tensorboard, mlflow]", "all"):
        with pytest.raises(ConfigError, match=r"rerank\.trainer\.report_to: .*off the machine") as err:
            load_config(tiny, [f"rerank.trainer.report_to={value}"])
        assert "Value error" not in str(err.value)
    cfg = load_config(tiny, ["run.remote_trackers=[wandb]", "gpl.trainer.report_to=wandb"])
    assert cfg.gpl.trainer["report_to"] == "wandb"  # the user opted in by name
    # A local tracker whose package is missing says how to install it.
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ConfigError, match=r"pip install 'ragtune\[tensorboard\]'"):
        load_config(tiny, ["embed.trainer.report_to=tensorboard"])


def test_every_config_field_has_a_description() -> None:
    import inspect

    from pydantic import BaseModel

    import ragtune.pipeline.config as config

    sections = [
        obj
        for obj in vars(config).values()
        if inspect.isclass(obj) and issubclass(obj, BaseModel) and obj.__module__ == config.__name__
    ]
    missing = [f"{s.__name__}.{f}" for s in sections for f, info in s.model_fields.items() if not info.description]
    assert len(sections) > 10 and missing == []


@pytest.mark.parametrize("value", ["0", "-8"])
def test_assemble_truncate_dim_must_be_positive_and_the_error_names_it(value: str) -> None:
    with pytest.raises(ConfigError, match=r"assemble\.truncate_dim: Input should be greater than or equal to 1"):
        load_config(Path("configs/tiny.yaml"), [f"assemble.truncate_dim={value}"])
    assert load_config(Path("configs/tiny.yaml"), ["assemble.truncate_dim=16"]).assemble.truncate_dim == 16
    assert load_config(Path("configs/tiny.yaml")).assemble.truncate_dim is None  # the full dimension by default
