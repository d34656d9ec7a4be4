"""Checkpoints: weights_only round trip, load_model, and every kind of bad file refused with a GothicError."""

from __future__ import annotations

import pickle
import random
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from gothic.checkpoint import (
    FORMAT_VERSION,
    imports_objects,
    read_info,
    save_checkpoint,
    summarize_checkpoint,
)
from gothic.errors import GothicError
from gothic.files import sha256_file
from gothic.loading import load_model
from gothic.model import GPT
from gothic.runtime import capture_rng_state, restore_rng_state
from gothic.train import train

from conftest import tiny_model_config, tiny_train_config

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def trained(train_bins, tiny_tokenizer_path, tmp_path_factory) -> Path:
    """models/ after a 4-step run."""
    out = tmp_path_factory.mktemp("models")
    train(tiny_model_config(), tiny_train_config(max_iters=4), train_bins, tiny_tokenizer_path, out)
    return out


def test_checkpoint_loads_with_weights_only_and_holds_the_full_state(trained):
    ckpt = torch.load(trained / "latest.pt", weights_only=True)
    assert ckpt["format_version"] == FORMAT_VERSION
    assert {"model", "optimizer", "step", "best_val_loss", "rng", "sampler", "model_config", "train_config",
            "vocab_size", "tokenizer_sha256", "scaler", "history"} <= ckpt.keys()
    assert ckpt["step"] == 4 and ckpt["sampler"]["batches_drawn"] == 4 * 2
    assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
    assert set(ckpt["rng"][0]) == {"python", "numpy", "torch", "cuda"}


def test_load_model_rebuilds_the_trained_model(trained, tiny_tokenizer_path):
    from gothic.tokenizer import tokenizer_sha256

    model, ckpt = load_model(trained / "final.pt", device="auto")
    assert not model.training and next(model.parameters()).device.type == "cpu"
    assert ckpt.vocab_size == model.vocab_size == 300
    assert ckpt.tokenizer_sha256 == tokenizer_sha256(tiny_tokenizer_path)
    assert ckpt.model_config["n_layer"] == model.cfg.n_layer
    fresh = GPT(model.cfg, model.vocab_size)
    fresh.load_state_dict(torch.load(trained / "final.pt", weights_only=True)["model"])
    idx = torch.randint(0, 300, (1, 16))
    with torch.no_grad():
        torch.testing.assert_close(model(idx)[0], fresh.eval()(idx)[0], rtol=0, atol=0)


def test_rng_state_round_trips():
    state = capture_rng_state(torch.device("cpu"))
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    restore_rng_state(state, torch.device("cpu"))
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


class Payload:
    """Unpickling this calls open(marker, 'w'): proof that code ran if the marker file appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


WRITERS = {
    "torch.save": lambda obj, path: torch.save(obj, path),
    "torch.save, protocol 4": lambda obj, path: torch.save(obj, path, pickle_protocol=4),
    "torch.save, legacy format": lambda obj, path: torch.save(obj, path, _use_new_zipfile_serialization=False),
    "pickle, protocol 0": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=0)),
    "pickle, protocol 2": lambda obj, path: path.write_bytes(pickle.dumps(obj, protocol=2)),
    "pickle, default protocol": lambda obj, path: path.write_bytes(pickle.dumps(obj)),
}


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("writer", WRITERS)
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"format_version": 1, "model": Payload(marker)}
    WRITERS[writer](payload, path)
    with pytest.raises(GothicError, match="evil.pt: refused to load: it holds Python objects that could run code"):
        load_model(path)
    assert imports_objects(path) and not marker.exists()  # judging the file ran nothing either


@pytest.mark.parametrize("text", [
    "hello, this is not a checkpoint\n",
    "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a214614ab2935c943f9e0ff69d22e\nsize 123456\n",
    "checkpoint: not trained yet\nsee README\n",  # torch reads `c...\n...\n` as an "Unsupported global"
    "<html><body>404 Not Found</body></html>\n",
    "{}",
    "x",
])
def test_a_text_file_named_pt_is_corrupt_not_dangerous(tmp_path, text):
    path = tmp_path / "x.pt"
    path.write_text(text)
    with pytest.raises(GothicError, match=r"x\.pt: cannot be read \(.+\); the file is truncated or not a checkpoint$") \
            as caught:
        load_model(path)
    assert "could run code" not in str(caught.value) and "\n" not in str(caught.value)
    assert not imports_objects(path)


def test_random_bytes_are_corrupt_not_dangerous(tmp_path):
    rng = random.Random(0)
    for n in range(200):
        path = tmp_path / f"noise{n}.pt"
        path.write_bytes(bytes(rng.randrange(256) for _ in range(rng.randint(1, 400))))
        with pytest.raises(GothicError, match="truncated or not a checkpoint$"):
            load_model(path)


def test_foreign_checkpoint_is_refused(tmp_path):
    path = tmp_path / "nanogpt.pt"
    torch.save({"model": {"w": torch.zeros(2)}, "iter_num": 5}, path)  # loads fine, but is not ours
    with pytest.raises(GothicError, match="not a gothic checkpoint"):
        load_model(path)


def test_newer_format_is_refused(trained, tmp_path):
    ckpt = torch.load(trained / "final.pt", weights_only=True)
    ckpt["format_version"] = FORMAT_VERSION + 1
    torch.save(ckpt, tmp_path / "future.pt")
    with pytest.raises(GothicError, match="newer than this gothic reads"):
        load_model(tmp_path / "future.pt")


@pytest.mark.parametrize("keep", [0, 1, 100, 5000, -100])
def test_truncated_or_empty_file_is_refused(trained, tmp_path, keep):
    data = (trained / "final.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:keep])
    with pytest.raises(GothicError, match="cut.pt: cannot be read .* truncated or not a checkpoint") as caught:
        load_model(tmp_path / "cut.pt")
    assert "could run code" not in str(caught.value)


DAMAGE = {
    "cut": lambda data: data[:len(data) // 2],
    "zeroed": lambda data: bytes(len(data)),
    "text": lambda data: b"hello, not a pickle\n",  # torch's unpickler fails with a KeyError
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_checkpoint_with_a_damaged_pickle_inside_is_corrupt(trained, tmp_path, damage):
    """A whole zip whose data.pkl is cut short, zeroed or text: torch's unpickler fails, harmlessly."""
    path = tmp_path / "damaged.pt"
    with zipfile.ZipFile(trained / "final.pt") as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith("/data.pkl"):
                data = DAMAGE[damage](data)
            target.writestr(info, data)
    with pytest.raises(GothicError, match="damaged.pt: cannot be read .* truncated or not a checkpoint") as caught:
        load_model(path)
    assert "could run code" not in str(caught.value)
    assert summarize_checkpoint(path).error == "unreadable"  # and a listing of the folder goes on


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(GothicError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pt")


def test_info_fills_what_older_files_lack_from_one_table(trained, tmp_path):
    ckpt = torch.load(trained / "final.pt", weights_only=True)
    for key in ("horizon", "train_time_s", "run_identity", "tokenizer", "best_step"):
        del ckpt[key]
    ckpt["train_config"]["max_iters"] = 9  # a file from before `horizon`: its schedule ended at max_iters
    torch.save(ckpt, tmp_path / "old.pt")
    info = read_info(tmp_path / "old.pt")
    assert (info.horizon, info.train_time_s, info.run_identity, info.tokenizer, info.best_step) == (9, 0.0, None,
                                                                                                    None, -1)
    del ckpt["train_config"]
    torch.save(ckpt, tmp_path / "older.pt")
    assert read_info(tmp_path / "older.pt").horizon == ckpt["step"]  # no schedule known: complete where it is


@pytest.mark.parametrize("key, value", [("horizon", "12"), ("best_step", 1.5), ("train_config", [1]),
                                        ("val_loss", True), ("tokens_seen", None), ("run_identity", "abc")])
def test_a_mistyped_plain_value_is_one_line_naming_it(trained, tmp_path, key, value):
    ckpt = torch.load(trained / "final.pt", weights_only=True)
    ckpt[key] = value
    torch.save(ckpt, tmp_path / "bad.pt")
    for read in (read_info, load_model):
        with pytest.raises(GothicError, match=f"bad.pt: {key} is a .*the file is damaged"):
            read(tmp_path / "bad.pt")


@pytest.mark.parametrize("key, value, keep_digest, message", [
    ("n_head", 4, True, "model_config was changed after the checkpoint was written"),  # shapes all fit
    ("n_embd", 64, False, "weights do not fit the model config"),  # config and weights disagree
    ("n_experts", 8, False, "does not know"),  # a field this gothic has no idea of
])
def test_tampered_model_config_is_refused(trained, tmp_path, key, value, keep_digest, message):
    ckpt = torch.load(trained / "final.pt", weights_only=True)
    if not keep_digest:  # as in files written before the checksum: the checks behind it must hold too
        del ckpt["model_config_sha256"]
    ckpt["model_config"][key] = value
    torch.save(ckpt, tmp_path / "tampered.pt")
    with pytest.raises(GothicError, match=message):
        load_model(tmp_path / "tampered.pt")


def test_failed_save_keeps_the_previous_checkpoint(trained, tmp_path, monkeypatch):
    path = tmp_path / "latest.pt"
    path.write_bytes((trained / "latest.pt").read_bytes())
    before = sha256_file(path)

    def crash(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpoint")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(GothicError, match="No space left on device"):
        save_checkpoint(path, {"step": 5})
    assert sha256_file(path) == before
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]  # no temp file left behind


# --- format 2: self-contained checkpoints -----------------------------------------------------------

def test_best_and_final_hold_weights_config_tokenizer_and_metrics_only(trained, tiny_tokenizer_path):
    from gothic.checkpoint import TRAINING_STATE_KEYS

    tokenizer_text = tiny_tokenizer_path.read_bytes().decode("utf-8")
    latest = torch.load(trained / "latest.pt", weights_only=True)
    assert set(TRAINING_STATE_KEYS) <= latest.keys() and latest["tokenizer"] == tokenizer_text
    for name in ("best.pt", "final.pt"):
        ckpt = torch.load(trained / name, weights_only=True)
        assert ckpt["format_version"] == FORMAT_VERSION == 2
        assert not set(TRAINING_STATE_KEYS) & ckpt.keys(), name
        assert {"model", "model_config", "train_config", "vocab_size", "tokenizer", "tokenizer_sha256", "step",
                "best_val_loss", "val_loss", "history"} <= ckpt.keys()
        assert ckpt["tokenizer"] == tokenizer_text
    # AdamW keeps two moments per weight: without them a checkpoint is about a third of the size
    assert (trained / "final.pt").stat().st_size < 0.5 * (trained / "latest.pt").stat().st_size


def test_generate_needs_nothing_but_the_checkpoint(trained, tmp_path, monkeypatch, capsys):
    from gothic.cli import generate_main

    monkeypatch.chdir(tmp_path)  # no data/tokenizer.json here
    with pytest.raises(SystemExit) as exit_info:
        generate_main(["--checkpoint", str(trained / "best.pt"), "--prompt", "The castle", "--max-tokens", "6",
                       "--seed", "1", "--device", "cpu"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith("The castle")


def test_a_given_tokenizer_is_checked_against_the_one_inside(trained, tiny_tokenizer_path, tmp_path):
    from gothic.generation import Engine

    assert Engine.from_checkpoint(trained / "best.pt", tiny_tokenizer_path, device="cpu").tokenizer.get_vocab_size() \
        == 300
    changed = tmp_path / "tokenizer.json"
    changed.write_text(tiny_tokenizer_path.read_text(encoding="utf-8") + "\n", encoding="utf-8")
    with pytest.raises(GothicError, match="is not the tokenizer .* was trained with"):
        Engine.from_checkpoint(trained / "best.pt", changed, device="cpu")


def test_a_tampered_tokenizer_inside_is_refused(trained, tmp_path):
    from gothic.generation import Engine

    ckpt = torch.load(trained / "best.pt", weights_only=True)
    ckpt["tokenizer"] = ckpt["tokenizer"].replace("<|endoftext|>", "<|end|>")
    save_checkpoint(tmp_path / "tampered.pt", ckpt)
    with pytest.raises(GothicError, match="does not match its recorded sha256"):
        Engine.from_checkpoint(tmp_path / "tampered.pt", device="cpu")


def test_format_1_checkpoints_still_load_with_their_tokenizer_file(tiny_tokenizer_path, tmp_path, monkeypatch):
    """Version 1 carried no tokenizer: it comes from --tokenizer, else data/tokenizer.json as before."""
    from gothic.generation import Engine

    from conftest import save_tiny_checkpoint, tiny_gpt

    old = save_tiny_checkpoint(tmp_path / "old.pt", tiny_gpt(300), tiny_tokenizer_path)
    ckpt = torch.load(old, weights_only=True)
    save_checkpoint(old, {**ckpt, "format_version": 1})
    monkeypatch.chdir(tmp_path)
    with pytest.raises(GothicError, match="older checkpoint that carries no tokenizer: pass --tokenizer"):
        Engine.from_checkpoint(old, device="cpu")
    assert Engine.from_checkpoint(old, tiny_tokenizer_path, device="cpu").checkpoint_info.format_version == 1
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "tokenizer.json").write_bytes(tiny_tokenizer_path.read_bytes())
    assert Engine.from_checkpoint(old, device="cpu").tokenizer.get_vocab_size() == 300

