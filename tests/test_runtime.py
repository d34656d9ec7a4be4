"""Where and how things run: the precision training and generation choose for the machine."""

from __future__ import annotations

import pytest
import torch

import gothic.runtime
from gothic.errors import GothicError
from gothic.runlog import TrainHooks
from gothic.runtime import inference_dtype, resolve_precision
from gothic.train import train

from conftest import tiny_model_config, tiny_train_config

CPU = torch.device("cpu")


@pytest.mark.parametrize("units", [True, False])
def test_bfloat16_training_follows_the_cpus_bf16_units(monkeypatch, units):
    """bf16 autocast where the CPU has bf16 units (and the startup line says why); fp32 where it
    would be emulated; float32 asked is float32 either way."""
    monkeypatch.setattr(gothic.runtime, "cpu_has_bf16_units", lambda: units)
    precision = resolve_precision("bfloat16", CPU)
    if units:
        assert precision.dtype == torch.bfloat16 and precision.describe().startswith("bfloat16 autocast (this CPU has")
    else:
        assert precision.dtype == torch.float32 and "no bf16 units" in precision.describe()
    assert resolve_precision("bfloat16", CPU, cpu_fallback=False).dtype == torch.bfloat16
    fp32 = resolve_precision("float32", CPU)
    assert fp32.dtype == torch.float32 and fp32.describe() == "float32" and fp32.scaler is None


@pytest.mark.parametrize("units", [True, False])
def test_inference_dtype_auto_is_native_bf16_or_fp32(monkeypatch, units):
    monkeypatch.setattr(gothic.runtime, "cpu_has_bf16_units", lambda: units)
    assert inference_dtype(CPU) == (torch.bfloat16 if units else torch.float32)
    assert inference_dtype(CPU, "float32") == torch.float32
    assert inference_dtype(CPU, "bfloat16") == torch.bfloat16
    with pytest.raises(GothicError, match="dtype 'fp8': use one of auto, float32, bfloat16"):
        inference_dtype(CPU, "fp8")


@pytest.mark.parametrize("built_for", ["12.8", None])
def test_an_nvidia_driver_without_cuda_is_named_with_the_fix(monkeypatch, built_for):
    """A driver too old for the CUDA torch was built for (or a CPU-only torch) leaves CUDA unavailable: say so."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", built_for)
    monkeypatch.setattr(gothic.runtime, "nvidia_driver", lambda: "/usr/bin/nvidia-smi")
    note = gothic.runtime.cuda_fallback_note()
    if built_for:
        assert "CUDA is unavailable: this torch is built for CUDA 12.8" in note and "update the NVIDIA driver" in note
    else:
        assert "the CPU-only build" in note and "make setup TORCH_SPEC=torch" in note
    monkeypatch.setattr(gothic.runtime, "nvidia_driver", lambda: None)
    assert gothic.runtime.cuda_fallback_note() == ""  # no NVIDIA GPU: the CPU is simply the device


def test_the_startup_line_says_why_auto_trains_on_the_cpu(monkeypatch, train_bins, tiny_tokenizer_path, tmp_path):
    monkeypatch.setattr(gothic.runtime, "nvidia_driver", lambda: "/usr/bin/nvidia-smi")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    lines: list[str] = []
    for device in ("auto", "cpu"):
        train(tiny_model_config(), tiny_train_config(device=device, max_iters=1, resume=False), train_bins,
              tiny_tokenizer_path, tmp_path / device, hooks=TrainHooks(log=lines.append))
    auto, cpu = [line for line in lines if line.startswith("train: cpu")]
    assert auto.startswith("train: cpu (an NVIDIA driver is installed but ")
    assert cpu.startswith("train: cpu | ")  # asked for the CPU: nothing to explain
