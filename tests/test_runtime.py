"""Where and how things run: the precision training and generation choose for the machine."""

from __future__ import annotations

import pytest
import torch

import gothic.runtime
from gothic.errors import GothicError
from gothic.runtime import inference_dtype, resolve_precision

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
