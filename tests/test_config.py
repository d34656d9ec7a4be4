"""params.yaml loading: every error class is reported with its dotted key, all at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from gothic.config import SECTIONS, ConfigError, params_from_dict
from gothic.params_file import apply_overrides, load_params, read_params_dict

from conftest import committed_text

ROOT = Path(__file__).resolve().parent.parent


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    return info.value.problems


def test_project_params_yaml_is_valid_and_sets_every_field():
    """Code defaults never drive the pipeline: params.yaml spells out every field. Its values are the
    user's to change (an experiment applied and committed), so only its shape is checked here."""
    raw = yaml.safe_load(committed_text("params.yaml"))
    params_from_dict(raw)
    for name, cls in SECTIONS.items():
        assert set(raw[name]) == {f.name for f in dataclasses.fields(cls)}, name


# the seed README's defaults (its ModelConfig, TrainConfig and key-parameter table): the contract
SEED_DEFAULTS = {"tokenizer.vocab_size": 4096, "tokenizer.min_frequency": 2, "model.block_size": 512,
                 "model.n_layer": 8, "model.n_head": 8, "model.n_embd": 512, "train.max_iters": 10000,
                 "train.batch_size": 16, "train.grad_accum": 4, "train.learning_rate": 3e-4,
                 "train.warmup_iters": 1000}


def test_empty_params_gives_seed_defaults():
    """What the seed's CLIs train with when params.yaml leaves a field out."""
    params = params_from_dict({})
    for key, value in SEED_DEFAULTS.items():
        section, field = key.split(".")
        assert getattr(getattr(params, section), field) == pytest.approx(value), key


@pytest.mark.parametrize("raw, expected", [
    ({"model": {"n_layers": 4}}, "model.n_layers: unknown key (did you mean model.n_layer?)"),
    ({"tokeniser": {}}, "tokeniser: unknown section (did you mean tokenizer?)"),
    ({"train": {"learning_rate": "fast"}}, "train.learning_rate: expected float, got 'fast'"),
    ({"train": {"learning_rate": float("inf")}}, "train.learning_rate: expected a finite number, got inf"),
    ({"prepare": {"val_fraction": float("nan")}}, "prepare.val_fraction: expected a finite number, got nan"),
    ({"model": {"dropout": float("nan")}}, "model.dropout: expected a finite number, got nan"),
    ({"train": {"seed": -1}}, "train.seed must be between 0 and 4294967295, got -1"),
    ({"train": {"seed": 2**40}}, "train.seed must be between 0 and 4294967295, got 1099511627776"),
    ({"sample": {"seed": -1}}, "sample.seed must be between 0 and 4294967295, got -1"),
    ({"model": {"block_size": 10**9}}, "model.block_size=1000000000 must be <= 65536"),
    ({"train": {"batch_size": "16"}}, "train.batch_size: expected int, got '16'"),
    ({"train": {"batch_size": True}}, "train.batch_size: expected int, got True"),
    ({"tokenizer": {"vocab_size": -5}}, "tokenizer.vocab_size=-5 must be >= 257"),
    ({"model": {"n_embd": 384, "n_head": 5}}, "model.n_embd=384 must be divisible by model.n_head=5"),
    ({"train": {"min_lr": 1.0, "learning_rate": 0.1}}, "train.min_lr=1.0 must not exceed train.learning_rate=0.1"),
    ({"prepare": {"val_fraction": 0.0}}, "prepare.val_fraction=0.0 must be > 0.0"),
    ({"prepare": {"sources": ["builtin", "web"]}}, "prepare.sources: unknown source 'web'"),
    ({"train": {"compile": "yes"}}, "train.compile='yes' must be true, false or auto"),
    ({"train": {"schedule": "linear"}}, "train.schedule='linear' must be one of cosine, wsd"),
    ({"train": {"decay_frac": 1.5}}, "train.decay_frac=1.5 must be <= 1.0"),
    ({"train": {"ema": 1.0}}, "train.ema=1.0 must be below 1"),
    ({"train": {"ema": -0.1}}, "train.ema=-0.1 must be >= 0.0"),
    ({"train": {"sampling": "shuffle"}}, "train.sampling='shuffle' must be one of random, epochs"),
    ({"train": {"device": "gpu"}}, "train.device='gpu' must be auto, cpu, cuda, cuda:N or mps"),
    ({"sample": {"top_p": 1.5}}, "sample.top_p must be in (0, 1] (1 disables it), got 1.5"),
    ({"tokenizer": {"sample_bytes": 5000}}, "tokenizer.sample_bytes=5000 must be 0 (no sample) or >= 1000000"),
    ({"tokenizer": {"sample_bytes": -1}}, "tokenizer.sample_bytes=-1 must be 0 (no sample) or >= 1000000"),
    ({"evaluate": {"max_tokens": -1}}, "evaluate.max_tokens=-1 must be >= 0"),
    ({"model": "big"}, "model: expected a mapping of keys, got 'big'"),
])
def test_each_error_class_is_reported_with_its_key(raw, expected):
    assert any(p.startswith(expected) for p in problems_of(raw)), problems_of(raw)


def test_all_problems_reported_in_one_error():
    problems = problems_of({"model": {"n_layers": 3, "n_embd": 384, "n_head": 5},
                            "train": {"learning_rate": "fast", "batch_size": -1}})
    assert len(problems) == 4
    message = str(ConfigError(problems))
    assert "4 problem(s)" in message and "model.n_layers" in message and "train.batch_size" in message


def test_int_is_accepted_where_float_is_expected():
    assert params_from_dict({"train": {"grad_clip": 1}}).train.grad_clip == 1.0


def test_compile_accepts_bool_and_auto():
    assert params_from_dict({"train": {"compile": False}}).train.compile is False
    assert params_from_dict({"train": {"compile": "auto"}}).train.compile == "auto"


def test_malformed_yaml_names_the_file_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  max_iters: [1, 2\n")
    with pytest.raises(ConfigError, match=r"params.yaml: not valid YAML at line \d+"):
        load_params(path)


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        load_params(tmp_path / "nope.yaml")


def test_top_level_list_is_rejected(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_params(path)


def test_overrides_parse_values_as_yaml_and_validate():
    raw = apply_overrides({"train": {"max_iters": 10}}, ["train.max_iters=200", "train.learning_rate=1.0e-3"])
    params = params_from_dict(raw)
    assert params.train.max_iters == 200 and params.train.learning_rate == pytest.approx(1e-3)
    with pytest.raises(ConfigError, match="expected section.key=value"):
        apply_overrides({}, ["max_iters"])


def test_configs_are_frozen():
    params = params_from_dict({})
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.train.max_iters = 5


def test_a_bad_value_is_not_also_compared_with_its_default():
    """An infinite learning_rate is one problem, not also "min_lr exceeds learning_rate (the default)"."""
    assert problems_of({"train": {"learning_rate": float("inf"), "min_lr": 1.0e-3}}) == [
        "train.learning_rate: expected a finite number, got inf"]


YAML_1_2 = "train:\n  learning_rate: 3e-4\n  min_lr: 1e-5\n  compile: no\nprepare:\n  seed: 0x10\n"


def test_params_are_read_exactly_as_dvc_reads_them(tmp_path):
    """DVC reads params.yaml with ruamel.yaml (YAML 1.2): 3e-4 is a float, `no` a string. So does gothic."""
    from dvc.utils.serialize import load_yaml

    path = tmp_path / "params.yaml"
    path.write_text(YAML_1_2, encoding="utf-8")
    ours = read_params_dict(path)
    assert ours == load_yaml(str(path))
    assert ours["train"]["learning_rate"] == pytest.approx(3e-4) and ours["train"]["compile"] == "no"
    # the string "no" is refused as train.compile (true, false or auto), not read as false
    with pytest.raises(ConfigError, match="train.compile='no' must be true, false or auto"):
        params_from_dict(ours)


def test_set_reads_values_as_dvc_exp_run_does():
    from dvc.utils.serialize import loads_yaml

    for text in ("3e-4", "1e-05", "no", "yes", "true", ".inf", "0x10", "[1, 2]", "cuda:0", "~"):
        assert apply_overrides({}, [f"train.x={text}"])["train"]["x"] == loads_yaml(text), text
    params = params_from_dict(apply_overrides({}, ["train.learning_rate=3e-4", "train.min_lr=3e-5"]))
    assert params.train.learning_rate == pytest.approx(3e-4) and params.train.min_lr == pytest.approx(3e-5)


def test_set_learning_rate_3e_minus_4_trains_the_cli_way(tmp_path):
    """`gothic-train --set train.learning_rate=3e-4` is accepted (it used to be "expected float")."""
    path = tmp_path / "params.yaml"
    path.write_text(committed_text("params.yaml"), encoding="utf-8")
    params = load_params(path, ["train.learning_rate=3e-4", "train.seed=0"])
    assert params.train.learning_rate == pytest.approx(3e-4) and params.train.seed == 0


@pytest.mark.parametrize("text, message", [
    ("", "the file is empty"),
    ("# only a comment\n", "the file is empty"),
    ("train:\n  max_iters: 5\n", "missing or empty sections prepare, tokenizer, model, evaluate, sample"),
    ("prepare:\ntokenizer:\nmodel:\ntrain:\nevaluate:\nsample:\n", "missing or empty sections"),
])
def test_empty_file_or_missing_section_is_an_error_not_the_default(tmp_path, text, message):
    """Built-in defaults would silently train the 26M-parameter, 10,000-step seed model."""
    path = tmp_path / "params.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        load_params(path)


def test_a_command_may_require_only_the_sections_it_reads(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model:\n  n_layer: 2\ntrain:\n  max_iters: 5\n", encoding="utf-8")
    params = load_params(path, require=("model", "train"), values={"train.batch_size": 3})
    assert (params.model.n_layer, params.train.max_iters, params.train.batch_size) == (2, 5, 3)
    with pytest.raises(ConfigError, match="missing or empty section train "):
        load_params(_write(tmp_path / "m.yaml", "model:\n  n_layer: 2\n"), require=("model", "train"))


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_duplicate_keys_are_an_error(tmp_path):
    with pytest.raises(ConfigError, match="duplicate key"):
        load_params(_write(tmp_path / "params.yaml", "model:\n  n_layer: 2\n  n_layer: 3\n"))
