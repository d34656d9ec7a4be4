"""Checkpoints: weights_only round trip, load_model, and every kind of bad file refused with a GothicError."""

from __future__ import annotations

import pickle
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from gothic.checkpoint import (
    FORMAT_VERSION,
    capture_rng_state,
    load_model,
    restore_rng_state,
    save_checkpoint,
)
from gothic.errors import GothicError
from gothic.files import sha256_file
from gothic.model import GPT
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
    assert ckpt["vocab_size"] == model.vocab_size == 300
    assert ckpt["tokenizer_sha256"] == tokenizer_sha256(tiny_tokenizer_path)
    assert ckpt["model_config"]["n_layer"] == model.cfg.n_layer
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


@pytest.mark.parametrize("writer", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"format_version": 1, "model": Payload(marker)}
    if writer == "torch.save":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=2))
    with pytest.raises(GothicError, match="refused to load"):
        load_model(path)
    assert not marker.exists()


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


@pytest.mark.parametrize("keep", [0, 100, 5000, -100])
def test_truncated_or_empty_file_is_refused(trained, tmp_path, keep):
    data = (trained / "final.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:keep])
    with pytest.raises(GothicError, match="cut.pt: cannot be read .* truncated or not a checkpoint"):
        load_model(tmp_path / "cut.pt")


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(GothicError, match="checkpoint not found"):
        load_model(tmp_path / "nope.pt")


def test_weights_that_do_not_fit_the_recorded_config_are_refused(trained, tmp_path):
    ckpt = torch.load(trained / "final.pt", weights_only=True)
    ckpt["model_config"]["n_embd"] = 64
    torch.save(ckpt, tmp_path / "mixed.pt")
    with pytest.raises(GothicError, match="weights do not fit the model config"):
        load_model(tmp_path / "mixed.pt")


def test_unknown_model_config_field_is_refused(trained, tmp_path):
    ckpt = torch.load(trained / "final.pt", weights_only=True)
    ckpt["model_config"]["n_experts"] = 8
    torch.save(ckpt, tmp_path / "odd.pt")
    with pytest.raises(GothicError, match="does not know"):
        load_model(tmp_path / "odd.pt")


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
