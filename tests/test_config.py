"""params.yaml loading: every error class is reported with its dotted key, all at once."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from gothic.config import SECTIONS, ConfigError, apply_overrides, load_params, params_from_dict

ROOT = Path(__file__).resolve().parent.parent


def problems_of(raw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        params_from_dict(raw)
    return info.value.problems


def test_project_params_yaml_is_valid_and_sets_every_field():
    """Code defaults never drive the pipeline: params.yaml spells out every field."""
    params = load_params(ROOT / "params.yaml")
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    for name, cls in SECTIONS.items():
        assert set(raw[name]) == {f.name for f in dataclasses.fields(cls)}, name
    assert params.model.n_layer == 8 and params.model.n_embd == 512 and params.tokenizer.vocab_size == 4096
    assert params.train.learning_rate == pytest.approx(3.0e-4)


def test_empty_params_gives_seed_defaults():
    params = params_from_dict({})
    assert params.train.batch_size == 16 and params.train.grad_accum == 4 and params.model.block_size == 512


@pytest.mark.parametrize("raw, expected", [
    ({"model": {"n_layers": 4}}, "model.n_layers: unknown key (did you mean model.n_layer?)"),
    ({"tokeniser": {}}, "tokeniser: unknown section (did you mean tokenizer?)"),
    ({"train": {"learning_rate": "3e-4"}}, "train.learning_rate: expected float, got '3e-4'"),
    ({"train": {"batch_size": "16"}}, "train.batch_size: expected int, got '16'"),
    ({"train": {"batch_size": True}}, "train.batch_size: expected int, got True"),
    ({"tokenizer": {"vocab_size": -5}}, "tokenizer.vocab_size=-5 must be >= 257"),
    ({"model": {"n_embd": 384, "n_head": 5}}, "model.n_embd=384 must be divisible by model.n_head=5"),
    ({"train": {"min_lr": 1.0, "learning_rate": 0.1}}, "train.min_lr=1.0 must not exceed train.learning_rate=0.1"),
    ({"prepare": {"val_fraction": 0.0}}, "prepare.val_fraction=0.0 must be > 0.0"),
    ({"prepare": {"sources": ["builtin", "web"]}}, "prepare.sources: unknown source 'web'"),
    ({"train": {"compile": "yes"}}, "train.compile='yes' must be true, false or auto"),
    ({"train": {"device": "gpu"}}, "train.device='gpu' must be auto, cpu, cuda, cuda:N or mps"),
    ({"sample": {"top_p": 1.5}}, "sample.top_p=1.5 must be <= 1.0"),
    ({"tokenizer": {"sample_bytes": 5000}}, "tokenizer.sample_bytes=5000 must be 0 (no sample) or >= 1000000"),
    ({"tokenizer": {"sample_bytes": -1}}, "tokenizer.sample_bytes=-1 must be 0 (no sample) or >= 1000000"),
    ({"evaluate": {"max_tokens": -1}}, "evaluate.max_tokens=-1 must be >= 0"),
    ({"model": "big"}, "model: expected a mapping of keys, got 'big'"),
])
def test_each_error_class_is_reported_with_its_key(raw, expected):
    assert any(p.startswith(expected) for p in problems_of(raw)), problems_of(raw)


def test_all_problems_reported_in_one_error():
    problems = problems_of({"model": {"n_layers": 3, "n_embd": 384, "n_head": 5},
                            "train": {"learning_rate": "3e-4", "batch_size": -1}})
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
